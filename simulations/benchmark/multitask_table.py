"""One mask, many tasks: the multi-task federation against one federation per task, and the transfer to a new task.

From the run store of preset ``multitask`` (issue 39, docs/multitask.md).

    python -m simulations.benchmark.multitask_table                      # docs/results/multitask -> multitask_table.md
    python -m simulations.benchmark.multitask_table --results DIR --out FILE

Per task: its headline metric (x100) in the multi-task federation and in its own single-task federation, and the
difference; the average over the tasks. Bytes: every message of a run, up + down, handshake included (the
single-task federations summed against the one). Storage (float32): one value vector + a head per task against one
vector + head per task. Transfer: the held-out task's final score from the shared values against the same budget from
the base model, the head alone and values + head. Works on a partial store (a missing run is "–").
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from simulations import REPO

TITLE = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B", "qqp": "QQP", "mnli": "MNLI",
         "qnli": "QNLI", "rte": "RTE"}
TRANSFER = {"head": ("head-shared", "head-base"), "values + head": ("tune-shared", "tune-base")}


def load(store: Path) -> dict[str, dict]:
    """Run name without its seed suffix -> its summary and history (finished runs only; the first seed)."""
    out: dict[str, dict] = {}
    for folder in sorted((store / "runs").glob("*")) if (store / "runs").is_dir() else []:
        if (folder / "summary.json").is_file():
            name = folder.name.rsplit("-s", 1)[0] if folder.name.rsplit("-s", 1)[-1].isdigit() else folder.name
            out.setdefault(name, {"summary": json.loads((folder / "summary.json").read_text()),
                                  "history": json.loads((folder / "history.json").read_text())})
    return out


def total_mb(run: dict) -> float:
    """Every message of the run, up + down, handshake included, in MB."""
    return sum(r["bytes_up"] + r["bytes_down"] for r in run["history"]) / 1e6


def _pts(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def comparison(runs: dict[str, dict], multi: str = "pafi-multitask") -> tuple[str, dict]:
    """The per-task table (markdown) and its figures: per task (multi, single), both averages, bytes, storage."""
    m = runs.get(multi)
    tasks = list(m["summary"]["tasks"]) if m else [name.split("-", 1)[1] for name in runs
                                                   if name.count("-") == 1 and name != multi]
    lines = ["| task | metric | single-task federation | multi-task federation | Δ (pts) |", "|---|---|---|---|---|"]
    fig = {"tasks": {}, "single_mb": 0.0, "single_storage": 0, "complete": bool(m)}
    for task in tasks:
        single = runs.get(f"{multi.split('-')[0]}-{task}")
        metric = (m["summary"]["tasks"][task]["headline_metric"] if m else single["summary"]["headline_metric"])
        s = single["summary"]["final_score"] if single else None
        mt = m["summary"]["metrics"][task][metric] if m else None
        fig["tasks"][task] = (mt, s)
        fig["complete"] &= single is not None
        if single:
            fig["single_mb"] += total_mb(single)
            fig["single_storage"] += 4 * single["summary"]["num_trainable"]
        delta = f"{100 * (mt - s):+.1f}" if mt is not None and s is not None else "–"
        lines.append(f"| {TITLE.get(task, task)} | {metric} | {_pts(s)} | {_pts(mt)} | {delta} |")
    done = [(mt, s) for mt, s in fig["tasks"].values() if mt is not None and s is not None]
    fig["multi_avg"] = sum(mt for mt, _ in done) / len(done) if done else None
    fig["single_avg"] = sum(s for _, s in done) / len(done) if done else None
    delta = (f"{100 * (fig['multi_avg'] - fig['single_avg']):+.2f}" if done else "–")
    lines.append(f"| **average** | | {_pts(fig['single_avg'])} | {_pts(fig['multi_avg'])} | {delta} |")
    fig["multi_mb"] = total_mb(m) if m else None
    fig["multi_storage"] = m["summary"]["storage_bytes"]["multitask"] if m else None
    lines += ["", "| | one federation per task (summed) | one multi-task federation |", "|---|---|---|",
              "| total MB (up + down, every message) | " + (f"{fig['single_mb']:,.1f}" if fig["single_storage"] else "–")
              + " | "
              + ("–" if m is None else f"{fig['multi_mb']:,.1f}") + " |",
              "| stored (float32 values + heads) | " + (f"{fig['single_storage']:,} B" if fig["single_storage"] else "–")
              + " | "
              + ("–" if m is None else f"{fig['multi_storage']:,} B") + " |"]
    return "\n".join(lines), fig


def transfer(runs: dict[str, dict], task: str = "rte", method: str = "pafi") -> tuple[str, dict]:
    """The held-out task from the shared values against the same budget from the base model."""
    lines = [f"| {TITLE.get(task, task)} (held out), 10 rounds | from the shared values | from the base model | "
             f"Δ (pts) |", "|---|---|---|---|"]
    fig = {}
    for label, (shared, base) in TRANSFER.items():
        a, b = (runs.get(f"{method}-{task}-{suffix}") for suffix in (shared, base))
        sa, sb = (r["summary"]["final_score"] if r else None for r in (a, b))
        fig[label] = (sa, sb)
        delta = f"{100 * (sa - sb):+.1f}" if sa is not None and sb is not None else "–"
        lines.append(f"| {label} | {_pts(sa)} | {_pts(sb)} | {delta} |")
    return "\n".join(lines), fig


def targets(fig: dict, moved: dict) -> list[str]:
    """The issue's targets, measured (or why not yet)."""
    out = []
    if fig["multi_avg"] is not None and fig["complete"]:
        gap = 100 * (fig["multi_avg"] - fig["single_avg"])
        out.append(f"- multi-task average vs the single-task federations': {gap:+.2f} pts (target within 0.5): "
                   + ("met" if gap >= -0.5 else "missed"))
    else:
        out.append("- multi-task average within 0.5 pt of the single-task federations': not all runs are finished")
    rte = fig["tasks"].get("rte", (None, None))
    if None not in rte:
        out.append(f"- RTE in the multi-task federation vs alone: {100 * (rte[0] - rte[1]):+.1f} pts (target > 0): "
                   + ("met" if rte[0] > rte[1] else "missed"))
    for label, (shared, base) in moved.items():
        if shared is not None and base is not None:
            out.append(f"- held-out task, {label}, from the shared values vs the base: {100 * (shared - base):+.1f} pts "
                       f"(target > 0): " + ("met" if shared > base else "missed"))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=REPO / "docs/results/multitask")
    parser.add_argument("--out", type=Path, default=None, help="markdown file (default: <results>/multitask_table.md)")
    args = parser.parse_args(argv)
    runs = load(args.results)
    table, fig = comparison(runs)
    moved_table, moved = transfer(runs)
    text = "\n\n".join(["# One mask, many tasks (preset `multitask`)", table, "## Transfer to a task never seen",
                        moved_table, "## Targets (issue 39)", "\n".join(targets(fig, moved))]) + "\n"
    out = args.out or args.results / "multitask_table.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
