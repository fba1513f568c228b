"""Where a run's minutes go: `make run`'s federation timed from the command to its exit, split into start-up, rounds
(the clients' phase, the server's evaluation and its reference update) and the end.

It runs the launcher exactly as `make run` does (10 SuperNodes, one CPU per client, the app's own defaults with
only the data folder and the output folder; ``-c`` adds overrides), measures the wall clock around it, and reads
the run's ``history.json`` and ``summary.json``. Or, with ``--from DIR --wall SECONDS``, it splits a run already
made (e.g. ``outputs/run`` after a ``time make run``).

    python -m simulations.performance.first_run                     # a make-run federation, timed and split
    python -m simulations.performance.first_run --from outputs/run --wall 312
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from simulations import REPO, SST2


def split(out: Path, wall: float) -> dict:
    """The figures of the run in ``out`` made in ``wall`` seconds (command to exit)."""
    history = json.loads((out / "history.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    app = float(summary["wall_seconds"])
    rounds = [r for r in history if r["round"] >= 1]
    zero = next((r for r in history if r["round"] == 0), None)
    total = lambda key: sum(float(r.get(key) or 0.0) for r in rounds)  # noqa: E731
    in_rounds = total("round_seconds")
    evals, refs = total("eval_seconds"), total("reference_seconds")
    return {
        "wall_seconds": wall,
        "outside_server_app": wall - app,  # launcher checks, SuperLink, flwr run, Ray start, teardown
        "round_0": float(zero["round_seconds"]) if zero else 0.0,  # model, mask, handshake, first evaluation
        "rounds": len(rounds), "rounds_seconds": in_rounds,
        "clients_phase": in_rounds - evals - refs,  # sending, local training (in waves), replies, aggregation
        "clients_training_summed": total("train_seconds"),
        "evaluation": evals, "reference_update": refs,
        "end": app - in_rounds - (float(zero["round_seconds"]) if zero else 0.0),  # final evaluation, model, files
        "final_score": summary.get("final_score"), "final_eval": summary.get("final_eval"),
        "per_round": [round(float(r["score"]), 4) for r in history],
    }


def show(fig: dict) -> str:
    rows = [("command to exit", fig["wall_seconds"]), ("  outside the ServerApp (launcher, SuperLink, Ray)",
                                                      fig["outside_server_app"]),
            ("  round 0 (model, mask, handshake, evaluation)", fig["round_0"]),
            (f"  {fig['rounds']} rounds", fig["rounds_seconds"]),
            ("    clients' phase (training in waves, messages, aggregation)", fig["clients_phase"]),
            ("    server evaluation", fig["evaluation"]),
            ("    server reference update (bound, trust weights)", fig["reference_update"]),
            ("  end (final evaluation, merged model, files)", fig["end"])]
    lines = [f"{name:<64} {sec:8.1f} s" for name, sec in rows]
    lines.append(f"{'clients local training, summed over clients':<64} {fig['clients_training_summed']:8.1f} s")
    lines.append(f"final score {fig['final_score']:.4f} ({fig['final_eval']}); per round: "
                 + " ".join(f"{s:.3f}" for s in fig["per_round"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "outputs" / "first_run", help="the run's output folder")
    ap.add_argument("--data-dir", type=Path, default=SST2)
    ap.add_argument("-c", "--run-config", default="", help="overrides, as make run's RUN_CONFIG")
    ap.add_argument("--from", dest="source", type=Path, default=None, help="split a run already made in this folder")
    ap.add_argument("--wall", type=float, default=None, help="with --from: its seconds from command to exit")
    args = ap.parse_args(argv)
    if args.source is not None:
        if args.wall is None or not (args.source / "summary.json").is_file():
            print("fedsparse: error: --from needs a finished run's folder (its summary.json) and --wall SECONDS",
                  file=sys.stderr)
            return 2
        print(show(split(args.source, args.wall)))
        return 0
    t0 = time.perf_counter()  # the launcher in its own process, as `make run` starts it
    rc = subprocess.call([sys.executable, "-m", "simulations.engines.launcher", "--num-supernodes", "10",
                          "--cpus-per-client", "1", "-c",
                          f"data-dir='{args.data_dir.resolve()}' output-dir='{args.out.resolve()}' {args.run_config}"],
                         cwd=REPO)
    wall = time.perf_counter() - t0
    if rc != 0:
        return rc
    fig = split(args.out, wall)
    (args.out / "first_run.json").write_text(json.dumps(fig, indent=2))
    print(show(fig))
    return 0


if __name__ == "__main__":
    sys.exit(main())
