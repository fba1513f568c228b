"""The one place the benchmark reads a run's score: its task's headline metric, old runs included.

A history record of the ServerApp carries ``metrics`` (every metric of the task on the eval split that round) and
``score`` (the headline metric's value); a summary carries ``metrics``, ``headline_metric`` (its name: ``accuracy``,
``matthews``, ``f1``, ``spearman``, ...) and ``final_score``. Runs made before tasks had metrics of their own hold
only ``accuracy`` / ``final_accuracy``: their headline is accuracy. ``accuracy`` keys stay where a task has
accuracy, but nothing else in the benchmark reads them; everything goes through the functions here.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from shared.tasks.metrics import higher_is_better

LEGACY_METRIC = "accuracy"  # the headline of a run whose outputs name none

# metric -> (short name for a column header, unit of the value x 100): GLUE prints every metric x 100
_SHORT = {"accuracy": ("acc", "%"), "f1": ("F1", "%"), "matthews": ("MCC", "×100"),
          "spearman": ("Spearman", "×100"), "pearson": ("Pearson", "×100")}
_LONG = {"accuracy": "accuracy", "f1": "F1", "matthews": "Matthews correlation", "spearman": "Spearman correlation",
         "pearson": "Pearson correlation", "accuracy_mismatched": "accuracy (mismatched)"}


def headline(summary: Mapping[str, Any]) -> str:
    """The name of the run's headline metric (``accuracy`` for a run whose summary names none)."""
    return str(summary.get("headline_metric") or LEGACY_METRIC)


def final_score(summary: Mapping[str, Any]) -> float | None:
    """The headline metric's final value: ``final_score``, else (an old summary) ``final_accuracy``; None if absent."""
    if "final_score" in summary:
        return summary["final_score"]
    if "headline_metric" in summary:  # new outputs name their metric: never stand accuracy in for it
        return (summary.get("metrics") or {}).get(summary["headline_metric"])
    return summary.get("final_accuracy")


def score_of(record: Mapping[str, Any], metric: str | None = None) -> float | None:
    """One history record's headline value: ``score``, else ``metrics[metric]`` of a record with metrics, else (an
    old record, no ``metrics``) its ``accuracy``; None where the round has none (e.g. an unevaluated round 0)."""
    if "score" in record:
        return record["score"]
    if "metrics" in record:
        return (record["metrics"] or {}).get(metric) if metric else None
    return record.get("accuracy")


def best_of(metric: str, values: Iterable[float]) -> float:
    """The best of ``values`` in ``metric``'s direction (the lowest perplexity, the highest accuracy)."""
    return max(values) if higher_is_better(metric) else min(values)


def reaches(metric: str, score: float, target: float) -> bool:
    """Whether ``score`` is at or beyond ``target`` in ``metric``'s direction."""
    return score >= target if higher_is_better(metric) else score <= target


def with_score(record: Mapping[str, Any], value: float | None) -> dict[str, Any]:
    """A copy of ``record`` whose score reads ``value`` (the plots' trailing means; None: the round has none)."""
    return {**record, "score": value}


def task_of(summary: Mapping[str, Any], config: Mapping[str, Any] | None = None) -> str:
    """The run's task (its ``dataset``), from the summary, else its run-config; ``""`` when neither names one."""
    return str(summary.get("dataset") or (config or {}).get("dataset") or "")


def short_name(metric: str) -> str:
    """``acc``, ``MCC``, ``F1``: the metric's short name."""
    return _SHORT.get(metric, (metric, ""))[0]


def short_label(metric: str) -> str:
    """``acc %``, ``MCC ×100``, ``F1 %``: the metric in a column header (values are printed x 100)."""
    short, unit = _SHORT.get(metric, (metric, "×100"))
    return f"{short} {unit}"


def long_label(metric: str) -> str:
    """``accuracy``, ``Matthews correlation``: the metric in prose and on an axis."""
    return _LONG.get(metric, metric.replace("_", " "))


def unit(metric: str) -> str:
    """``%`` for a rate (accuracy, F1), ``×100`` for a correlation."""
    return _SHORT.get(metric, (metric, "×100"))[1]


def target_for(target: float | Mapping[str, float] | None, task: str) -> float | None:
    """The target score of ``task``: one number for every task, or a table by task (a task it lacks has none)."""
    if isinstance(target, Mapping):
        value = target.get(task)
        return float(value) if value is not None else None
    return target
