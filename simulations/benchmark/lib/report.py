"""Benchmark figures from the runs' own outputs: one row per run, one row per run-round, targets.

Input: ``<out>/runs/<name>/{summary.json,history.json}`` as the ServerApp writes them (byte
counts there are measured from the serialized messages). Output in ``<out>``: ``runs.csv``,
``groups.csv`` (one row over the seeds of each run, see :mod:`simulations.benchmark.lib.seeds`), ``rounds.csv``,
``results.json`` and ``results.md``. Pure functions over dicts; no Flower.

Scores are the task's headline metric (:mod:`simulations.benchmark.lib.scores`: accuracy for SST-2, Matthews
correlation for CoLA, ...), and every row names its task and metric. Runs of several tasks are reported task by
task: each task has its own reference ``full`` run, target and checks, and a section of its own in results.md.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from simulations.benchmark.lib.runs import (MB, ReportError, RunResult, cumulative_bytes, fmt_cell, load_run,
                                             reach_target, split_by_task)
from simulations.benchmark.lib.scores import (LEGACY_METRIC, best_of, final_score, long_label, score_of, short_label,
                                              short_name, target_for, unit)
from simulations.benchmark.lib.seeds import (GROUP_COLUMNS, TAIL_ROUNDS, group_rows, markdown_groups, markdown_paired,
                                             tail_score)

__all__ = ["MB", "ReportError", "RunResult", "cumulative_bytes", "load_run", "reach_target", "run_row",
           "write_report"]

RUN_COLUMNS = ("name", "task", "metric", "method", "value_dtype", "mask_density", "num_params", "num_trainable",
               "bytes_up_per_client_round", "bytes_down_per_client_round", "reduction_up", "reduction_down",
               "reduction_reference", "total_bytes", "target_score", "round_to_target", "bytes_to_target",
               "final_score", "best_score", "tail_score", "score_vs_reference", "codec_rel_error",
               "rounds", "seconds_per_round", "wall_seconds")
ROUND_COLUMNS = ("name", "task", "metric", "method", "value_dtype", "round", "score", "loss", "train_loss", "bytes_up",
                 "bytes_down", "cumulative_bytes", "codec_rel_error", "sampled", "replied", "rejected",
                 "failed", "round_seconds")


def pick_reference(runs: Iterable[RunResult]) -> RunResult | None:
    """The ``full`` run to compare against: non-IID and float32 if there is one, else the first ``full`` run."""
    fulls = [r for r in runs if r.summary.get("method") == "full"]
    fulls = [r for r in fulls if r.config.get("partitioner") != "iid"] or fulls
    f32 = [r for r in fulls if r.summary.get("value_dtype") == "float32"]
    return (f32 or fulls or [None])[0]


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _mean_codec_error(history: list[dict[str, Any]]) -> float | None:
    errs = [r["codec_rel_error"] for r in history if r.get("codec_rel_error") is not None]
    return sum(errs) / len(errs) if errs else None


def run_row(run: RunResult, ref: RunResult | None, target: float | None) -> dict[str, Any]:
    """The table row of one run. Reductions are against ``ref`` (measured, a run of the same task), else against
    dense N*4; ``target``: the task's target score."""
    s, h = run.summary, run.history
    up, down = s.get("bytes_up_per_client_round"), s.get("bytes_down_per_client_round")
    if ref is not None:
        ref_up, ref_down = ref.summary["bytes_up_per_client_round"], ref.summary["bytes_down_per_client_round"]
        reference = f"{ref.name} (measured)"
    else:
        ref_up = ref_down = s.get("dense_bytes_per_client_round")
        reference = "dense N*4 bytes (no full run)"
    rnd, nbytes = reach_target(h, target, run.metric)
    scores = [x for x in (score_of(r, run.metric) for r in h if r.get("round", 0) >= 1) if x is not None]
    final = final_score(s)
    ref_final = final_score(ref.summary) if ref is not None else None
    return {
        "name": run.name, "task": run.task, "metric": run.metric, "method": s.get("method"),
        "value_dtype": s.get("value_dtype"),
        "mask_density": s.get("mask_density"), "num_params": s.get("num_params"),
        "num_trainable": s.get("num_trainable"), "bytes_up_per_client_round": up,
        "bytes_down_per_client_round": down, "reduction_up": _ratio(ref_up, up),
        "reduction_down": _ratio(ref_down, down), "reduction_reference": reference,
        "total_bytes": cumulative_bytes(h)[-1] if h else 0, "target_score": target,
        "round_to_target": rnd, "bytes_to_target": nbytes, "final_score": final,
        "best_score": best_of(run.metric, scores) if scores else None, "tail_score": tail_score(h, metric=run.metric),
        "score_vs_reference": (final - ref_final) if final is not None and ref_final is not None else None,
        "codec_rel_error": _mean_codec_error(h), "rounds": s.get("rounds"),
        "seconds_per_round": s.get("seconds_per_round"), "wall_seconds": s.get("wall_seconds"),
    }


def round_rows(run: RunResult) -> list[dict[str, Any]]:
    """One row per history record of ``run`` (round 0 = handshake)."""
    rows = []
    for rec, cum in zip(run.history, cumulative_bytes(run.history)):
        row = {c: rec.get(c) for c in ROUND_COLUMNS}
        row.update(name=run.name, task=run.task, metric=run.metric, method=run.summary.get("method"),
                   value_dtype=run.summary.get("value_dtype"), score=score_of(rec, run.metric), cumulative_bytes=cum)
        rows.append(row)
    return rows


def write_csv(path: Path, rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _table(metric: str) -> tuple[tuple[str, str, str], ...]:
    """(header, column, format) of the run table; the score columns name ``metric``."""
    m = short_label(metric)
    return (
        ("run", "name", ""), ("trainable", "num_trainable", ""),
        ("up B/client-round", "bytes_up_per_client_round", "bytes"),
        ("down B/client-round", "bytes_down_per_client_round", "bytes"), ("up reduction", "reduction_up", "x"),
        ("down reduction", "reduction_down", "x"), ("round to target", "round_to_target", ""),
        ("MB to target", "bytes_to_target", "mb"), ("total MB", "total_bytes", "mb"),
        (f"final {m}", "final_score", "pct"), (f"last-{TAIL_ROUNDS} {m}", "tail_score", "pct"),
        (f"Δ {short_name(metric)} vs full (pts)", "score_vs_reference", "pts"),
        ("codec rel. error", "codec_rel_error", "sci"), ("s/round", "seconds_per_round", ""), ("rounds", "rounds", ""),
    )


def markdown_table(rows: list[dict[str, Any]], metric: str = LEGACY_METRIC) -> str:
    """The run table as GitHub Markdown."""
    table = _table(metric)
    lines = ["| " + " | ".join(h for h, _, _ in table) + " |", "|" + "---|" * len(table)]
    for row in rows:
        lines.append("| " + " | ".join(fmt_cell(row.get(col), kind) for _, col, kind in table) + " |")
    return "\n".join(lines)


def _target_text(target: float | None, metric: str) -> str:
    """``Target accuracy: 80.00 %`` / ``Target Matthews correlation: 40.00 (×100)``."""
    value = fmt_cell(target, "pct")
    return f"Target {long_label(metric)}: {value}" + (" %" if unit(metric) == "%" else " (×100)")


def markdown_body(rows: list[dict[str, Any]], checks: list[dict[str, Any]], groups: list[dict[str, Any]] | None,
                  reference: str | None, metric: str = LEGACY_METRIC, level: int = 2) -> list[str]:
    """The sections of one task: the table over seeds (if any run has several), the gaps paired seed by seed
    (``reference``: the group the Δ columns are taken against), the run table, what the columns mean, and the
    target checks; headings at ``level``."""
    h = "#" * level
    name, short = long_label(metric), short_name(metric)
    target = next((r["target_score"] for r in rows if r.get("target_score") is not None), None)
    ref = rows[0]["reduction_reference"] if rows else "–"
    parts: list[str] = []
    if groups and any(g["seeds"] > 1 for g in groups):
        parts += [f"{h} Over seeds", "", markdown_groups(groups, metric), "",
                  "Mean ± sample standard deviation over the seeds of each run; MB to target is the mean over the "
                  "seeds that reached the target (seeds at target counts them); Δ final vs full is against the "
                  f"mean of the non-IID full run's seeds; gain in the last quarter is the mean {name} of the last "
                  "quarter of the rounds minus that of the quarter before (near zero: the run had plateaued; with an "
                  "lr decay, of the rounds before it); "
                  f"last-{TAIL_ROUNDS} is the mean {name} of the last {TAIL_ROUNDS} rounds, which one noisy "
                  "round does not move. The target "
                  "checks below are made on these means.", ""]
        table = markdown_paired(groups, reference)
        if table:
            parts += [f"{h} Paired over seeds", "", table, "",
                      "Each line sets two runs against each other seed by seed, on the seeds both were made on: "
                      "the same seed gives both methods the same partition and the same sampled clients, so the "
                      "partition's own difficulty cancels out of the gap. Mean ± sample std of the per-seed gaps; the "
                      "95 % confidence interval of the mean gap uses Student's t with n − 1 degrees of freedom "
                      "(wide with 2-3 seeds: an interval that holds 0 has not separated the two); seeds ahead "
                      "counts the seeds on which the first run is higher.", ""]
        parts += [f"{h} Every run", ""]
    parts += [markdown_table(rows, metric), "",
              f"Bytes are measured from the serialized Flower messages (per sampled client and round, rounds ≥ 1). "
              f"Reductions are against {ref}. {_target_text(target, metric)}; MB to target and total MB "
              f"count up + down traffic of every client, handshake included. Codec rel. error: mean over rounds of "
              f"|dec(enc(u)) − u| / |u| for the aggregated update u with the run's value-dtype. Last-{TAIL_ROUNDS} "
              f"{short}: the mean {name} of the last {TAIL_ROUNDS} rounds (– for a shorter run).", ""]
    if checks:
        parts += [f"{h} Targets", "", "| target | run | measured | required | met |", "|---|---|---|---|---|"]
        parts += [f"| {c['target']} | {c['run']} | {c['measured']} | {c['required']} | "
                  f"{'yes' if c['met'] else 'NO'} |" for c in checks]
    return parts


def markdown_report(rows: list[dict[str, Any]], checks: list[dict[str, Any]], title: str,
                    groups: list[dict[str, Any]] | None = None, made_by: str | None = None,
                    reference: str | None = None, metric: str = LEGACY_METRIC) -> str:
    """The whole results.md of one task: what made it (``made_by``, if given), then :func:`markdown_body`."""
    parts = [f"# {title}", ""] + ([made_by, ""] if made_by else [])
    parts += markdown_body(rows, checks, groups, reference, metric)
    return "\n".join(parts) + "\n"


@dataclass
class TaskReport:
    """The report of the runs of one task: its rows, rows over seeds, checks and reference group."""

    task: str
    metric: str
    rows: list[dict[str, Any]]
    groups: list[dict[str, Any]]
    checks: list[dict[str, Any]]
    reference: str | None


def task_report(task: str, metric: str, runs: list[RunResult], target: float | None) -> TaskReport:
    """Rows, rows over seeds and target checks of the runs of one task, against that task's ``full`` run."""
    from simulations.benchmark.lib.targets import check_targets  # the targets, kept apart from the writer

    ref = pick_reference(runs)
    groups = group_rows(runs, ref, target)
    checks = check_targets([g for g in groups if g.get("partitioner") != "iid"], metric)  # on the means, non-IID
    return TaskReport(task, metric, [run_row(r, ref, target) for r in runs], groups,
                      [dict(c, task=task, metric=metric) for c in checks], ref.group if ref is not None else None)


def markdown_tasks(reports: list[TaskReport], title: str, made_by: str | None = None) -> str:
    """results.md over several tasks: one section per task, its scores in its own metric."""
    if len(reports) == 1:
        r = reports[0]
        return markdown_report(r.rows, r.checks, title, r.groups, made_by, r.reference, r.metric)
    parts = [f"# {title}", ""] + ([made_by, ""] if made_by else [])
    parts += [f"Runs of {len(reports)} tasks, each reported in its own headline metric against its own full run: "
              + ", ".join(f"`{r.task or '?'}` ({long_label(r.metric)})" for r in reports) + ".", ""]
    for r in reports:
        parts += [f"## Task `{r.task or '?'}`: {long_label(r.metric)}", ""]
        parts += markdown_body(r.rows, r.checks, r.groups, r.reference, r.metric, level=3)
        parts.append("")
    return "\n".join(parts).rstrip("\n") + "\n"


def write_report(out: Path, runs: list[RunResult], target: float | Mapping[str, float] | None,
                 title: str = "Communication-cost benchmark", extra: dict[str, Any] | None = None,
                 made_by: str | None = None) -> list[dict[str, Any]]:
    """Write runs.csv, groups.csv, rounds.csv, results.json and results.md into ``out``, task by task; return the run
    rows. ``target``: the target score, one for every task or a table by task."""
    reports = [task_report(task, metric, members, target_for(target, task))
               for (task, metric), members in split_by_task(runs).items()]
    rows = [row for r in reports for row in r.rows]
    groups = [g for r in reports for g in r.groups]
    checks = [c for r in reports for c in r.checks]
    per_round = [row for r in runs for row in round_rows(r)]
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "runs.csv", rows, RUN_COLUMNS)
    write_csv(out / "groups.csv", [dict(g, rounds="/".join(map(str, g["rounds"]))) for g in groups], GROUP_COLUMNS)
    write_csv(out / "rounds.csv", per_round, ROUND_COLUMNS)
    (out / "results.json").write_text(json.dumps({"runs": rows, "groups": groups, "rounds": per_round,
                                                  "targets": checks, **(extra or {})}, indent=2))
    (out / "results.md").write_text(markdown_tasks(reports, title, made_by))
    return rows
