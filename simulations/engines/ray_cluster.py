"""A Ray cluster on this machine (a head and N workers), and the same simulation on it and on local Ray.

Flower's Ray backend calls ``ray.init()`` without an address; with ``RAY_ADDRESS`` set in the
SuperLink's environment (``simulations.engines.launcher --ray-address``) it attaches to a running cluster.
:func:`ray_cluster` starts one for tests and measurements: ``ray start --head --block`` plus one
``ray start --address=... --block`` per worker, each with its own free ports and a private temp
dir, and stops every process it started by PID (never ``ray stop``, which stops every Ray of the
machine). Ray binds to the host's IP, not 127.0.0.1: the address is the one the head reports.

    flock /work/heavy.lock python -m simulations.engines.ray_cluster --workers 1 --model /tmp/tiny
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from simulations import SST2
from simulations.engines import REPO, free_port, stop_tree


class RayClusterError(RuntimeError):
    """The local Ray cluster did not come up."""


def host_ip() -> str:
    """The address Ray binds to on this machine (the host's outbound interface, not loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent; picks the interface
            return str(s.getsockname()[0])
        except OSError:
            return "127.0.0.1"


def _node_ports() -> list[str]:
    """Every port a Ray node opens, fixed to free ones (two nodes on one machine must not share any)."""
    return ["--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),
            "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
            "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port())]
    # worker ports stay Ray's random choice (a fixed range could overlap the ports above)


def _ray_env() -> dict[str, str]:
    env = os.environ.copy()
    env.pop("RAY_ADDRESS", None)
    env.update(RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO), env.get("PYTHONPATH", "")) if p))
    return env


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as fh:
        return subprocess.Popen(cmd, env=_ray_env(), stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_nodes(address: str, count: int, procs: list[subprocess.Popen], logs: list[Path], timeout: float) -> None:
    """Until ``ray status`` at ``address`` lists ``count`` alive nodes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc, log in zip(procs, logs):
            if proc.poll() is not None:
                raise RayClusterError(f"`ray start` exited with {proc.returncode}; see {log}")
        out = subprocess.run(["ray", "status", "--address", address], env=_ray_env(), capture_output=True,
                             text=True, timeout=60).stdout
        active = out.split("Active:", 1)[1].split("Pending:", 1)[0] if "Active:" in out else ""
        if len(re.findall(r"node_[0-9a-f]+", active)) >= count:
            return
        time.sleep(1.0)
    raise RayClusterError(f"the Ray cluster at {address} did not reach {count} nodes in {timeout:.0f}s")


@contextmanager
def ray_cluster(workers: int = 1, cpus_per_node: int = 1, timeout: float = 120.0,
                keep_dir: Path | None = None) -> Iterator[str]:
    """A head and ``workers`` worker nodes of ``cpus_per_node`` CPUs each; yields ``IP:PORT``; stops all by PID.

    Ray's temp dirs go under a short private folder in the system temp dir (Ray's socket paths must
    stay under 107 bytes) and are removed afterwards; the ``ray start`` logs go to ``keep_dir`` if given.
    """
    root = Path(tempfile.mkdtemp(prefix="fsray-"))
    logs_dir = Path(tempfile.mkdtemp(prefix="fedsparse-ray-", dir=keep_dir)) if keep_dir else root
    ip, port = host_ip(), free_port()
    address = f"{ip}:{port}"
    procs: list[subprocess.Popen] = []
    logs = [logs_dir / "head.log"] + [logs_dir / f"worker{i}.log" for i in range(workers)]
    try:
        procs.append(_start(["ray", "start", "--head", "--block", "--node-ip-address", ip, "--port", str(port),
                             "--num-cpus", str(cpus_per_node), "--num-gpus", "0", "--include-dashboard", "false",
                             "--disable-usage-stats", "--ray-client-server-port", str(free_port()),
                             "--temp-dir", str(root / "head")] + _node_ports(), logs[0]))
        _wait_nodes(address, 1, procs, logs[:1], timeout)
        for i in range(workers):
            procs.append(_start(["ray", "start", "--block", "--address", address, "--node-ip-address", ip,
                                 "--num-cpus", str(cpus_per_node), "--num-gpus", "0", "--disable-usage-stats",
                                 "--temp-dir", str(root / f"worker{i}")] + _node_ports(), logs[i + 1]))
        _wait_nodes(address, workers + 1, procs, logs, timeout)
        yield address
    finally:
        for proc in reversed(procs):  # workers first, then the head; every process each one started
            stop_tree(proc.pid, timeout=15.0)
        shutil.rmtree(root, ignore_errors=True)


def worker_counts(history: list[dict]) -> dict[str, int]:
    """Train replies per Ray node over all rounds of a history.json."""
    counts: dict[str, int] = {}
    for rec in history:
        for node, n in (rec.get("worker_nodes") or {}).items():
            counts[node] = counts.get(node, 0) + n
    return counts


def compare(args) -> dict:
    """The same simulation on a local Ray cluster (head + workers) and on Flower's own local Ray."""
    from simulations.engines import run_simulation

    conf = {"model": args.model, "data-dir": str(args.data_dir), "num-server-rounds": args.rounds,
            "fraction-train": 1.0, "local-steps": args.local_steps, "min-available-nodes": args.clients,
            "max-eval-examples": 64, "batch-size": 8, "max-length": 32}
    out: dict = {}
    for where in ("cluster", "local"):
        conf["output-dir"] = str(args.out / where)
        t0 = time.perf_counter()
        if where == "cluster":
            with ray_cluster(workers=args.workers, cpus_per_node=1) as address:
                rc = run_simulation(conf, num_supernodes=args.clients, cpus_per_client=1, ray_address=address,
                                    flwr_home=args.out / where / ".flwr", quiet=True, timeout=args.timeout)
        else:
            rc = run_simulation(conf, num_supernodes=args.clients, cpus_per_client=1,
                                flwr_home=args.out / where / ".flwr", quiet=True, timeout=args.timeout)
        wall = time.perf_counter() - t0
        history = json.loads((args.out / where / "history.json").read_text())
        summary = json.loads((args.out / where / "summary.json").read_text())
        out[where] = {"rc": rc, "wall_seconds": wall, "run_wall_seconds": summary["wall_seconds"],
                      "seconds_per_round": summary["seconds_per_round"], "worker_nodes": worker_counts(history),
                      "final_score": summary["final_score"], "headline_metric": summary["headline_metric"]}
        print(where, json.dumps(out[where]), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=1, help="Ray worker nodes beside the head (1 CPU each)")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--local-steps", type=int, default=2)
    ap.add_argument("--model", required=True, help="model (a tiny checkpoint folder keeps this quick)")
    ap.add_argument("--data-dir", type=Path, default=SST2)
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--out", type=Path, default=REPO / "outputs" / "ray-cluster")
    args = ap.parse_args(argv)
    args.out = args.out.resolve()
    res = compare(args)
    (args.out / "compare.json").write_text(json.dumps(res, indent=2))
    return 0 if all(r["rc"] == 0 for r in res.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
