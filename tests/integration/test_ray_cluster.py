"""The Simulation Engine on an existing Ray cluster: a head and one worker on this machine, 4 clients, 2 rounds.

The cluster is started with ``ray start --head`` / ``ray start --address=...`` (1 CPU each, private
temp dirs, free ports); the run attaches through ``simulations.engines.launcher``'s ``ray_address`` (RAY_ADDRESS
in the SuperLink's environment). Each train reply reports the Ray node it ran on: clients must have
run on both nodes. Every process the test started (Ray's daemons and workers, the SuperLink tree) is
stopped by PID and checked gone. Heavy: run it under the shared lock.
"""

from __future__ import annotations

import json
import re
import subprocess

import psutil
import pytest

from simulations.engines import run_simulation
from simulations.engines.ray_cluster import _ray_env, ray_cluster, worker_counts

pytestmark = pytest.mark.integration


def _cluster_nodes(address: str) -> set[str]:
    out = subprocess.run(["ray", "status", "--address", address], env=_ray_env(), capture_output=True, text=True,
                         timeout=60).stdout
    active = out.split("Active:", 1)[1].split("Pending:", 1)[0]
    return {m[len("node_"):] for m in re.findall(r"node_[0-9a-f]+", active)}


def test_clients_run_on_both_nodes_of_an_existing_ray_cluster(tmp_path, tiny_model_dir, sst2_dir):
    conf = {"model": str(tiny_model_dir), "data-dir": str(sst2_dir), "num-server-rounds": 2, "fraction-train": 1.0,
            "local-steps": 2, "batch-size": 8, "max-length": 32, "max-eval-examples": 32, "min-available-nodes": 4,
            "output-dir": str(tmp_path / "run")}
    started: list[psutil.Process] = []
    with ray_cluster(workers=1, cpus_per_node=1, keep_dir=tmp_path) as address:
        nodes = _cluster_nodes(address)
        assert len(nodes) == 2
        rc = run_simulation(conf, num_supernodes=4, cpus_per_client=1, ray_address=address,
                            flwr_home=tmp_path / ".flwr", quiet=True, timeout=900)
        me = psutil.Process()
        started = me.children(recursive=True)  # the `ray start --block` trees (the SuperLink's is gone already)
        assert started
    assert rc == 0, (tmp_path / ".flwr" / "superlink.log").read_text()[-3000:]
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [r["round"] for r in history] == [0, 1, 2] and all(r["replied"] == 4 for r in history[1:])
    counts = worker_counts(history)
    assert set(counts) == nodes, (counts, nodes)  # both Ray nodes ran clients
    assert sum(counts.values()) == 8 and min(counts.values()) >= 1
    print(f"train replies per Ray node: {counts}")
    _, alive = psutil.wait_procs(started, timeout=10)
    assert not alive, [p.pid for p in alive]
