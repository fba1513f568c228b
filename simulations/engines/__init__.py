"""How a federation runs: the commands ``launcher``, ``deployment`` and ``ray_cluster``; ``lib/`` holds the
SuperLink machinery and the in-process grid.

The public names other rooms use (importing them never imports a command module):
"""

from simulations import REPO
from simulations.engines.lib.inprocess import SERVER_NODE_ID, LocalGrid
from simulations.engines.lib.superlink import (federation_config, flower_env, format_run_config, free_port,
                                               parse_overrides, run_simulation, run_to_end, stop_tree, wait_port,
                                               write_connection)

__all__ = ["REPO", "SERVER_NODE_ID", "LocalGrid", "federation_config", "flower_env", "format_run_config", "free_port",
           "parse_overrides", "run_simulation", "run_to_end", "stop_tree", "wait_port", "write_connection"]
