"""A task's metrics, computed by well-kept libraries (scikit-learn, SciPy), never by hand.

Each metric takes (predictions (n,), labels (n,)) as numpy arrays and returns a float: class indices for the
classification metrics, real values for the correlations. GLUE's: accuracy, F1 of the positive class (MRPC, QQP),
Matthews correlation (CoLA), Pearson and Spearman correlation (STS-B).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

Metric = Callable[[np.ndarray, np.ndarray], float]


def _correlation(fn) -> Metric:
    def metric(pred: np.ndarray, labels: np.ndarray) -> float:
        if len(pred) < 2 or np.ptp(pred) == 0 or np.ptp(labels) == 0:
            return 0.0  # a constant prediction (or label) has no correlation; SciPy would warn and return nan
        return float(fn(pred, labels)[0])
    return metric


METRICS: dict[str, Metric] = {  # name -> metric; one line each
    "accuracy": lambda p, y: float(accuracy_score(y, p)),
    "f1": lambda p, y: float(f1_score(y, p, pos_label=1, average="binary", zero_division=0.0)),
    "matthews": lambda p, y: float(matthews_corrcoef(y, p)),
    "pearson": _correlation(pearsonr),
    "spearman": _correlation(spearmanr),
}


def score(names: Sequence[str], predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """``{name: value}`` for each metric in ``names``, on (n,) predictions against (n,) labels."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    return {name: METRICS[name](predictions, labels) for name in names}


SHORT = {"accuracy": "acc"}  # a metric's name in a round's log line, where shorter


def short_name(metric: str) -> str:
    return SHORT.get(metric, metric)


def score_of(record: dict) -> float:
    """A history record's headline value: ``score``, or ``accuracy`` in a record made before tasks had metrics."""
    return record["score"] if "score" in record else record["accuracy"]
