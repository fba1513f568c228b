"""Wire truth: do the benchmark's byte counts match what crosses a real socket?

Runs one configuration in Flower's Deployment Engine on 127.0.0.1: a real ``flower-superlink``
(insecure), two ``flower-supernode`` processes that reach it only through a counting TCP proxy
(:mod:`simulations.performance.lib.proxy`), and ``flwr run`` against that SuperLink. Each time history.json gains a
round, the proxy's counters are read, so every round's TCP payload bytes (SuperNodes <-> SuperLink,
both directions) sit next to the bytes the ServerApp reported for it. Overhead % = (TCP payload -
reported) / reported: HTTP framing, protobuf envelopes, heartbeats and polling.

    python -m simulations.performance.wire_truth [--out outputs/wire-truth] [-c "num-server-rounds=3 value-dtype='int8'"]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

from simulations.engines import (REPO, flower_env, format_run_config, free_port, parse_overrides,
                                 stop_tree, wait_port, write_connection)
from simulations.performance.lib.proxy import CountingProxy

DEFAULTS = {"data-dir": str((REPO / ".." / "shared" / "data" / "sst2").resolve()), "method": "pafi",
            "mask-density": 0.005, "value-dtype": "float16", "num-server-rounds": 3, "fraction-train": 1.0,
            "local-steps": 2, "batch-size": 8, "max-eval-examples": 64, "partitioner": "iid"}


def _spawn(cmd: list[str], home: Path, log_name: str) -> subprocess.Popen:
    home.mkdir(parents=True, exist_ok=True)
    with open(home / log_name, "ab") as log:
        return subprocess.Popen(cmd, env=flower_env(home), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


@contextmanager
def deployment(work: Path, num_supernodes: int = 2, lifetime_s: float = 1800.0) -> Iterator[tuple[str, CountingProxy]]:
    """SuperLink + proxy + N SuperNodes (through the proxy); yields (SuperLink address, proxy)."""
    link_port, proxy_port = free_port(), free_port()
    procs: list[subprocess.Popen] = []
    with ExitStack() as stack:
        stack.callback(lambda: [stop_tree(p.pid) for p in reversed(procs)])
        link = _spawn(["flower-superlink", "--insecure", "--isolation", "subprocess", "--host", "127.0.0.1",
                       "--port", str(link_port)], work / "superlink", "superlink.log")
        procs.append(link)
        wait_port(link_port, link, work / "superlink" / "superlink.log")
        proxy = stack.enter_context(CountingProxy(proxy_port, link_port, lifetime_s=lifetime_s))
        for i in range(num_supernodes):
            procs.append(_spawn(["flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{proxy_port}",
                                 "--isolation", "subprocess", "--host", "127.0.0.1", "--port", str(free_port()),
                                 "--node-config", f"partition-id={i} num-partitions={num_supernodes}"],
                                work / f"supernode-{i}", "supernode.log"))
        yield f"127.0.0.1:{link_port}", proxy


def _read_history(path: Path) -> list[dict[str, Any]]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return []


def follow_run(proc: subprocess.Popen, history_path: Path, proxy: CountingProxy, timeout: float) -> list[dict]:
    """Until ``flwr run`` exits: on each new history record, read the proxy counters."""
    marks: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        finished = proc.poll() is not None
        history = _read_history(history_path)
        for rec in history[len(marks):]:
            up, down = proxy.snapshot()
            marks.append({"round": rec["round"], "reported_up": rec["bytes_up"], "reported_down": rec["bytes_down"],
                          "tcp_up_total": up, "tcp_down_total": down, "accuracy": rec.get("accuracy")})
        if finished:
            return marks
        time.sleep(0.05)  # short: the next round's download starts right after the record
    raise TimeoutError(f"flwr run did not finish within {timeout:.0f}s")


def per_round(marks: list[dict]) -> list[dict]:
    """Per-round TCP bytes (difference of counter snapshots) next to the reported bytes."""
    rows, prev_up, prev_down = [], 0, 0
    for m in marks:
        tcp_up, tcp_down = m["tcp_up_total"] - prev_up, m["tcp_down_total"] - prev_down
        prev_up, prev_down = m["tcp_up_total"], m["tcp_down_total"]
        reported = m["reported_up"] + m["reported_down"]
        rows.append({"round": m["round"], "reported_up": m["reported_up"], "reported_down": m["reported_down"],
                     "tcp_up": tcp_up, "tcp_down": tcp_down,
                     "overhead_up_pct": _pct(tcp_up, m["reported_up"]),
                     "overhead_down_pct": _pct(tcp_down, m["reported_down"]),
                     "overhead_pct": _pct(tcp_up + tcp_down, reported)})
    return rows


def _pct(measured: int, reported: int) -> float | None:
    return 100.0 * (measured - reported) / reported if reported else None


def summarize(rows: list[dict]) -> dict[str, Any]:
    """Totals over the training rounds (>= 1); round 0 also carries registration and the FAB download."""
    train = [r for r in rows if r["round"] >= 1]
    tot = {k: sum(r[k] for r in train) for k in ("reported_up", "reported_down", "tcp_up", "tcp_down")}
    return {**tot, "rounds": len(train), "overhead_up_pct": _pct(tot["tcp_up"], tot["reported_up"]),
            "overhead_down_pct": _pct(tot["tcp_down"], tot["reported_down"]),
            "overhead_pct": _pct(tot["tcp_up"] + tot["tcp_down"], tot["reported_up"] + tot["reported_down"])}


def measure(run_config: Mapping[str, Any], out: Path, num_supernodes: int = 2, timeout: float = 900.0) -> dict:
    """Run ``run_config`` in the Deployment Engine behind the proxy; return per-round and total figures."""
    out.mkdir(parents=True, exist_ok=True)
    config = {**DEFAULTS, **run_config, "output-dir": str(out / "run"),
              "min-available-nodes": num_supernodes}
    history_path = out / "run" / "history.json"
    history_path.unlink(missing_ok=True)
    with deployment(out / "flwr", num_supernodes, lifetime_s=timeout + 120) as (address, proxy):
        cli_home = out / "flwr" / "cli"
        cli_home.mkdir(parents=True, exist_ok=True)
        write_connection(cli_home, "fedsparse-deploy", address)
        cmd = ["flwr", "run", str(REPO), "fedsparse-deploy", "--stream", "--run-config", format_run_config(config)]
        with open(out / "flwr-run.log", "wb") as log:
            proc = subprocess.Popen(cmd, env=flower_env(cli_home), stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        try:
            marks = follow_run(proc, history_path, proxy, timeout)
        finally:
            stop_tree(proc.pid)
        connections = proxy.counts.connections
    if proc.returncode != 0 or not marks:
        raise RuntimeError(f"flwr run failed (exit {proc.returncode}); see {out / 'flwr-run.log'} and {out / 'flwr'}")
    rows = per_round(marks)
    result = {"config": config, "num_supernodes": num_supernodes, "proxy_connections": connections,
              "rounds": rows, "total": summarize(rows)}
    (out / "wire_truth.json").write_text(json.dumps(result, indent=2))
    (out / "wire_truth.md").write_text(markdown(result))
    return result


def markdown(result: dict) -> str:
    """Per-round table of reported vs TCP bytes, and the overhead over the training rounds."""
    c, t = result["config"], result["total"]
    lines = [f"# Wire truth: {c['method']} · {c['value-dtype']} · density {c['mask-density']} · "
             f"{result['num_supernodes']} SuperNodes (Deployment Engine, 127.0.0.1, insecure)", "",
             "| round | reported up B | TCP up B | up overhead % | reported down B | TCP down B | down overhead % |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rounds"]:
        note = " (handshake, registration, FAB)" if r["round"] == 0 else ""
        lines.append(f"| {r['round']}{note} | {r['reported_up']:,} | {r['tcp_up']:,} | {_f(r['overhead_up_pct'])} | "
                     f"{r['reported_down']:,} | {r['tcp_down']:,} | {_f(r['overhead_down_pct'])} |")
    lines += ["", f"Rounds 1–{t['rounds']}: reported {t['reported_up'] + t['reported_down']:,} B, TCP payload "
              f"{t['tcp_up'] + t['tcp_down']:,} B: framing overhead {_f(t['overhead_pct'])} % "
              f"(up {_f(t['overhead_up_pct'])} %, down {_f(t['overhead_down_pct'])} %)."]
    return "\n".join(lines) + "\n"


def _f(x: float | None) -> str:
    return "–" if x is None else f"{x:+.2f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "outputs" / "wire-truth")
    ap.add_argument("-c", "--run-config", default="", help="run-config overrides, e.g. \"value-dtype='int8'\"")
    ap.add_argument("--num-supernodes", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=900.0)
    args = ap.parse_args(argv)
    result = measure(parse_overrides(args.run_config), args.out.resolve(), args.num_supernodes, args.timeout)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
