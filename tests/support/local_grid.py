"""The in-process Grid lives in simulations/engines/lib/inprocess.py (public through simulations.engines) (the attack benchmark runs on it too)."""

from simulations.engines import SERVER_NODE_ID, LocalGrid

__all__ = ["LocalGrid", "SERVER_NODE_ID"]
