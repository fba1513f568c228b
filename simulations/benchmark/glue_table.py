"""The federated GLUE table, printed the way the papers print theirs: one column per task with its metric, the average.

    python -m simulations.benchmark.glue_table                       # docs/results/glue (+ glue-central) -> glue_table.md
    python -m simulations.benchmark.glue_table --results DIR --central DIR --out FILE

Reads the run stores of presets ``glue`` (10 label-skewed clients) and ``glue-central`` (one client, IID: the
ceiling); works on a partial store (a missing cell is "–"). Per method and task: the headline score x100 on GLUE's
dev set, mean ± std over seeds (MNLI: matched/mismatched); the GLUE average over the tasks a row has (the score of a
row missing a task is not averaged); bytes up and down per client-round; MB (all clients, up + down, handshake
included) to reach 95 % of full's final score on each task; and the issue's targets, measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from simulations import REPO
from simulations.benchmark.lib.scores import final_score, headline, score_of

ORDER = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte")  # GLUE's own column order
TITLE = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B", "qqp": "QQP", "mnli": "MNLI-m/mm",
         "qnli": "QNLI", "rte": "RTE"}
METRIC = {"matthews": "MCC", "accuracy": "acc", "f1": "F1", "spearman": "Spearman", "pearson": "Pearson"}
METHODS = ("pafi", "full", "lora", "bitfit", "random", "magnitude")
SHARE_OF_FULL = 0.95


def load_runs(store: Path) -> list[dict]:
    """Every finished run of ``store``/runs: its summary, history and run-config."""
    out = []
    for folder in sorted((store / "runs").glob("*")) if (store / "runs").is_dir() else []:
        if not (folder / "summary.json").is_file():
            continue
        summary = json.loads((folder / "summary.json").read_text())
        history = json.loads((folder / "history.json").read_text())
        config = json.loads((folder / "run_config.json").read_text()) if (folder / "run_config.json").is_file() else {}
        out.append({"name": folder.name, "method": summary["method"], "task": summary.get("dataset"),
                    "summary": summary, "history": history, "config": config})
    return out


def mb_to(history: list[dict], target: float) -> float | None:
    """MB (up + down, every client, from the handshake) until the first round whose score reaches ``target``."""
    total = 0.0
    for rec in history:
        total += rec["bytes_up"] + rec["bytes_down"]
        if rec["round"] >= 1 and score_of(rec) >= target:
            return total / 1e6
    return None


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def cells(runs: list[dict]) -> dict[tuple[str, str], dict]:
    """(method, task) -> the cell's figures over its seeds."""
    grouped: dict[tuple[str, str], list[dict]] = {}
    for run in runs:
        grouped.setdefault((run["method"], run["task"]), []).append(run)
    out = {}
    for key, group in grouped.items():
        scores = [final_score(r["summary"]) for r in group]
        mismatched = [r["summary"].get("metrics", {}).get("accuracy_mismatched") for r in group]
        out[key] = {"runs": group, "score": _mean_std(scores), "seeds": len(group),
                    "metric": headline(group[0]["summary"]),
                    "mismatched": _mean_std([m for m in mismatched if m is not None]) if all(
                        m is not None for m in mismatched) else None,
                    "up": statistics.fmean(r["summary"]["bytes_up_per_client_round"] for r in group),
                    "down": statistics.fmean(r["summary"]["bytes_down_per_client_round"] for r in group)}
    return out


def _fmt(cell: dict | None) -> str:
    if cell is None:
        return "–"
    (mean, std), n = cell["score"], cell["seeds"]
    text = f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if n > 1 else "")
    if cell["mismatched"] is not None:
        text += f" / {100 * cell['mismatched'][0]:.1f}"
    return text


def table(fed: dict, central: dict) -> tuple[str, dict]:
    """The markdown table and the figures the targets read."""
    tasks = [t for t in ORDER if any(k[1] == t for k in (*fed, *central))]
    metric_of = {t: next(c["metric"] for k, c in (*fed.items(), *central.items()) if k[1] == t) for t in tasks}
    head = "| method | " + " | ".join(f"{TITLE[t]} ({METRIC.get(metric_of[t], metric_of[t])})" for t in tasks)
    head += " | avg | up B/client-round | down B/client-round |"
    lines = [head, "|" + "---|" * (len(tasks) + 4)]
    averages: dict[str, float] = {}
    rows = [(m, fed) for m in METHODS] + [(f"{m} (central)", central) for m in ("pafi", "full")]
    for label, source in rows:
        method = label.split(" ")[0]
        row = [source.get((method, t)) for t in tasks]
        if not any(row):
            continue
        present = [c["score"][0] for c in row if c is not None]
        avg = statistics.fmean(present)
        complete = all(c is not None for c in row)
        averages[label] = avg if complete else float("nan")
        one = next(c for c in row if c is not None)
        lines.append(f"| {label} | " + " | ".join(_fmt(c) for c in row)
                     + f" | {100 * avg:.1f}{'' if complete else '*'} | {one['up']:,.0f} | {one['down']:,.0f} |")
    return "\n".join(lines), {"averages": averages, "tasks": tasks}


def mb_table(fed: dict, tasks: list[str]) -> str:
    """MB to reach 95 % of full's final score, per method and task (mean over seeds that reach it)."""
    lines = ["| method | " + " | ".join(TITLE[t] for t in tasks) + " |", "|" + "---|" * (len(tasks) + 1)]
    for method in METHODS:
        row = []
        for task in tasks:
            cell, ref = fed.get((method, task)), fed.get(("full", task))
            if cell is None or ref is None:
                row.append("–")
                continue
            target = SHARE_OF_FULL * ref["score"][0]
            reached = [mb_to(r["history"], target) for r in cell["runs"]]
            got = [m for m in reached if m is not None]
            row.append(f"{statistics.fmean(got):,.1f}" + (f" ({len(got)}/{len(reached)})" if len(got) < len(reached)
                                                         else "") if got else "not reached")
        if any(c != "–" for c in row):
            lines.append(f"| {method} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def targets(fed: dict, figures: dict) -> list[str]:
    avg = figures["averages"]
    out = []
    if "pafi" in avg and "full" in avg and avg["pafi"] == avg["pafi"] and avg["full"] == avg["full"]:
        gap = 100 * (avg["pafi"] - avg["full"])
        out.append(f"- pafi's GLUE average vs full's: {gap:+.2f} pts (target ≥ −1.0): {'met' if gap >= -1.0 else 'MISSED'}")
        for other in ("lora", "bitfit"):
            if other in avg and avg[other] == avg[other]:
                lead = 100 * (avg["pafi"] - avg[other])
                out.append(f"- pafi ahead of {other}: {lead:+.2f} pts: {'met' if lead > 0 else 'MISSED'}")
    ratios = [fed[("full", t)]["up"] / fed[("pafi", t)]["up"] for t in figures["tasks"]
              if ("full", t) in fed and ("pafi", t) in fed]
    if ratios:
        low = min(ratios)
        out.append(f"- full's bytes up per client-round over pafi's: {low:,.0f}x at the least "
                   f"(target ≥ 400x): {'met' if low >= 400 else 'MISSED'}")
    return out or ["- not measurable yet: the table lacks pafi's or full's complete row"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=REPO / "docs/results/glue")
    parser.add_argument("--central", type=Path, default=REPO / "docs/results/glue-central")
    parser.add_argument("--out", type=Path, default=None, help="markdown file (default: <results>/glue_table.md)")
    args = parser.parse_args(argv)
    fed, central = cells(load_runs(args.results)), cells(load_runs(args.central))
    text, figures = table(fed, central)
    doc = ["# The federated GLUE table", "",
           "Bundled MiniLM, 10 clients, Dirichlet α = 0.5 (STS-B: over 5 bins of its score); scores ×100 on GLUE's dev "
           "sets (mean ± std over seeds where there are several); MNLI: matched / mismatched; `(central)`: one client "
           "holding the whole train split (the ceiling). `*`: the average of the tasks the row has so far.", "",
           text, "", f"## MB to reach {SHARE_OF_FULL:.0%} of full's final score (all clients, up + down)", "",
           mb_table(fed, figures["tasks"]), "", "## Targets", "", *targets(fed, figures), "",
           "Made by `python -m simulations.benchmark.glue_table` from the run stores of presets `glue` and "
           "`glue-central`."]
    out = args.out or args.results / "glue_table.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(doc) + "\n")
    print("\n".join(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
