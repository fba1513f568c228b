"""Scale benchmark: does a round cost what the clients *sampled* cost, whatever the clients that exist?

For each federation size N (``--clients 1000,10000``) it runs a real simulation through
``simulations.engines.launcher`` with ``fraction-train = sampled / N`` (100 clients per round by default),
``--local-steps`` local steps and ``--rounds`` rounds on the bundled MiniLM and SST-2, and reports:
the handshake (round 0: every node is asked for its partition once), each round's wall time
(``round_seconds`` in history.json) split into the sampled clients' summed local-training seconds
(``train_seconds``, which a loaded machine stretches) and the rest (the federation's own cost), the whole run's wall time and the peak RSS of the whole
process tree (SuperLink, SuperExec, simulation process with the ServerApp, Ray GCS/raylet/workers;
RSS summed over processes, sampled every 0.2 s by psutil). Figures go to ``--out/scale.json``.

    flock /work/heavy.lock python -m simulations.performance.scale_benchmark --clients 1000,10000
    python -m simulations.performance.scale_benchmark --show          # print the stored table only
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from simulations import REPO, SST2
from simulations.performance.lib.rss import run_with_peak_rss


def run_size(args, clients: int) -> dict:
    """One simulation of ``clients`` virtual clients; its figures (history rounds, wall, peak RSS)."""
    out = args.out / f"n{clients}"
    conf = {"data-dir": str(args.data_dir), "output-dir": str(out), "num-server-rounds": args.rounds,
            "fraction-train": args.sampled / clients, "local-steps": args.local_steps,
            "min-available-nodes": clients, "max-eval-examples": args.eval_examples}
    if args.model:
        conf["model"] = args.model
    run = run_with_peak_rss(conf, clients, args.timeout, cpus_per_client=args.cpus_per_client,
                            gpus_per_client=args.gpus_per_client, ray_address=args.ray_address,
                            flwr_home=out / ".flwr", quiet=not args.verbose)
    history = json.loads((out / "history.json").read_text()) if (out / "history.json").is_file() else []
    rounds = [{"round": r["round"], "seconds": r["round_seconds"], "sampled": r["sampled"], "replied": r["replied"],
               "train_seconds": r.get("train_seconds", 0.0), "eval_seconds": r.get("eval_seconds", 0.0)}
              for r in history]
    trained = [r for r in rounds if r["round"] >= 1]
    return {"clients": clients, "rc": run["rc"], "peak_rss_gib": run["peak_rss_bytes"] / 2**30,
            "processes_at_peak": run["processes_at_peak"], "wall_seconds": run["wall_seconds"],
            "handshake_seconds": rounds[0]["seconds"] if rounds and rounds[0]["round"] == 0 else None,
            "seconds_per_round": sum(r["seconds"] for r in trained) / len(trained) if trained else None,
            "rounds": rounds, "sampled_per_round": args.sampled, "local_steps": args.local_steps,
            "cpus_per_client": args.cpus_per_client, "model": args.model or "bundled MiniLM"}


def show(results: dict) -> None:
    table = Table(title="scale: s/round and peak RSS vs clients that exist (sampled per round fixed)")
    cols = ("clients", "sampled/round", "rc", "handshake s", "rounds s", "s/round", "clients' training s/round",
            "rest s/round", "wall s", "peak RSS GiB")
    for col in cols:
        table.add_column(col, justify="right")
    for key in sorted(results, key=int):
        r = results[key]
        per = " / ".join(f"{x['seconds']:.1f}" for x in r["rounds"] if x["round"] >= 1)
        spr = f"{r['seconds_per_round']:.1f}" if r["seconds_per_round"] is not None else "-"
        hs = f"{r['handshake_seconds']:.1f}" if r["handshake_seconds"] is not None else "-"
        trained = [x for x in r["rounds"] if x["round"] >= 1]
        train = sum(x["train_seconds"] for x in trained) / max(1, len(trained))
        rest = sum(x["seconds"] - x["train_seconds"] for x in trained) / max(1, len(trained))
        table.add_row(f"{r['clients']:,}", str(r["sampled_per_round"]), str(r["rc"]), hs, per, spr, f"{train:.1f}",
                      f"{rest:.1f}", f"{r['wall_seconds']:.0f}", f"{r['peak_rss_gib']:.2f}")
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", default="1000,10000", help="comma-separated federation sizes")
    ap.add_argument("--sampled", type=int, default=100, help="clients sampled per round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--local-steps", type=int, default=1)
    ap.add_argument("--eval-examples", type=int, default=256, help="server-side evaluation rows per round")
    ap.add_argument("--model", default="", help="model (empty = the bundled MiniLM)")
    ap.add_argument("--data-dir", type=Path, default=SST2)
    ap.add_argument("--cpus-per-client", type=int, default=2)
    ap.add_argument("--gpus-per-client", type=float, default=0.0)
    ap.add_argument("--ray-address", default=None, help="run on an existing Ray cluster")
    ap.add_argument("--timeout", type=float, default=5400.0)
    ap.add_argument("--out", type=Path, default=REPO / "outputs" / "scale")
    ap.add_argument("--show", action="store_true", help="print the stored figures and exit")
    ap.add_argument("--verbose", action="store_true", help="stream the run's log")
    args = ap.parse_args(argv)
    args.out = args.out.resolve()
    store = args.out / "scale.json"
    results = json.loads(store.read_text()) if store.is_file() else {}
    if not args.show:
        for n in (int(x) for x in args.clients.split(",") if x.strip()):
            results[str(n)] = run_size(args, n)
            args.out.mkdir(parents=True, exist_ok=True)
            store.write_text(json.dumps(results, indent=2))
            print(json.dumps({k: v for k, v in results[str(n)].items() if k != "rounds"}), flush=True)
    show(results)
    return 0 if all(r["rc"] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
