"""A finished run as the report reads it, and the figures every table needs (no Flower).

``<out>/runs/<name>/{summary.json,history.json}`` as the ServerApp writes them, plus the benchmark's
``run_config.json``; cumulative bytes, the round and bytes to a target score (the task's headline metric, read
through :mod:`simulations.benchmark.lib.scores`), cell formatting.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulations.benchmark.lib.scores import headline, reaches, score_of, task_of

MB = 1e6


class ReportError(ValueError):
    """A run folder lacks the files the report needs."""


@dataclass
class RunResult:
    """One finished run: its name, summary.json and history.json (round 0 = handshake).

    ``group``: the row over seeds it belongs to (default: its own name); ``config``: its run-config
    (run_config.json, when the benchmark wrote one); ``variant``: a variant or diagnostic of a main row (the preset
    marks it), drawn in a figure of its own.
    """

    name: str
    summary: dict[str, Any]
    history: list[dict[str, Any]]
    group: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    variant: bool = False

    def __post_init__(self) -> None:
        self.group = self.group or self.name

    @property
    def task(self) -> str:
        """The run's task (``dataset``; ``""`` for a run that names none)."""
        return task_of(self.summary, self.config)

    @property
    def metric(self) -> str:
        """The name of the run's headline metric."""
        return headline(self.summary)


def load_run(run_dir: Path, group: str = "", variant: bool = False) -> RunResult:
    """Read a run folder written by the ServerApp (and the benchmark's run_config.json if present)."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        history = json.loads((run_dir / "history.json").read_text())
        config_path = run_dir / "run_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    except (OSError, json.JSONDecodeError) as exc:
        raise ReportError(f"{run_dir} has no readable summary.json/history.json ({exc}); rerun the benchmark") from exc
    return RunResult(run_dir.name, summary, sorted(history, key=lambda r: r["round"]), group, config, variant)


def split_by_task(runs: list[RunResult]) -> dict[tuple[str, str], list[RunResult]]:
    """Runs by (task, headline metric), in the order they first appear: the report and the plots never set the
    scores of different tasks or metrics against each other (no mean, no reference, no shared axis)."""
    out: dict[tuple[str, str], list[RunResult]] = {}
    for r in runs:
        out.setdefault((r.task, r.metric), []).append(r)
    return out


def cumulative_bytes(history: list[dict[str, Any]]) -> list[int]:
    """Up + down bytes of all rounds so far (round 0's handshake included), per history record."""
    total, out = 0, []
    for rec in history:
        total += int(rec.get("bytes_up", 0)) + int(rec.get("bytes_down", 0))
        out.append(total)
    return out


def reach_target(history: list[dict[str, Any]], target: float | None,
                 metric: str | None = None) -> tuple[int | None, int | None]:
    """(first round whose score reaches target, cumulative bytes through that round), or (None, None); reaching is
    in the metric's direction (a perplexity reaches its target from above)."""
    if target is None:
        return None, None
    for rec, cum in zip(history, cumulative_bytes(history)):
        score = score_of(rec, metric)
        if rec.get("round", 0) >= 1 and score is not None and reaches(metric or "", score, target):
            return int(rec["round"]), cum
    return None, None


def fmt_cell(value: Any, kind: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if kind == "bytes":
        return f"{value:,.0f}"
    if kind == "mb":
        return f"{value / MB:,.3f}"
    if kind == "pct":
        return f"{100 * value:.2f}"
    if kind == "x":
        return f"{value:,.0f}×" if value >= 10 else f"{value:.2f}×"
    if kind == "pts":
        return f"{100 * value:+.2f}"
    if kind == "sci":
        return f"{value:.1e}"
    if isinstance(value, float):
        return f"{value:.2f}"
    return f"{value:,}" if isinstance(value, int) else str(value)
