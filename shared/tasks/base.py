"""The task contract: what a task is, so that the server, the client and the methods never test a task's name.

A task says how its data is read (a local folder in the task's official layout, and the Hugging Face Hub through
``datasets.load_dataset``), its input form (one text, or a pair encoded with the tokenizer's pair encoding), its
head and loss (classification over ``label_names``; regression with one output and MSE), its metrics (computed by
scikit-learn and SciPy, :mod:`shared.tasks.metrics`) and the headline metric its runs report. Every split a task
reads has the columns ``text`` (str), ``text_pair`` (str, pair tasks only) and ``label`` (int class index, or float
for regression). Splits: ``train``, ``test`` (what papers report on: GLUE's dev set) and, where the data has them,
``validation`` and further held-out sets (MNLI's ``test_mismatched``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
from datasets import Dataset

from shared.tasks.metrics import METRICS, score

KINDS = ("classification", "regression")
LocalReader = Callable[["Task", Path], dict[str, Dataset]]


class TaskError(RuntimeError):
    """A task's data cannot be read as the task needs it (the message names the file or column and the fix)."""


@dataclass(frozen=True)
class HubSource:
    """Where a task lives on the Hugging Face Hub: ``load_dataset(path, config)``, our split -> theirs, and the
    Hub's column names for ``text``, ``text_pair`` and ``label``."""

    path: str
    config: str | None = None
    splits: Mapping[str, str] = field(default_factory=lambda: {"train": "train", "test": "validation"})
    columns: Mapping[str, str] = field(default_factory=lambda: {"text": "sentence", "label": "label"})


@dataclass(frozen=True)
class Task:
    """One task (frozen: a registry entry). ``read_local`` reads a folder in the task's official layout."""

    name: str
    help: str
    kind: str
    label_names: tuple[str, ...]
    pair: bool
    metrics: tuple[str, ...]
    headline: str
    hub: HubSource
    read_local: LocalReader
    held_out: tuple[str, ...] = ("test",)  # the held-out splits scored at the end (the first one every round)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"task {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown or self.headline not in self.metrics:
            raise ValueError(f"task {self.name!r}: metrics {unknown} unknown or headline {self.headline!r} not "
                             f"among {self.metrics}; known metrics: {sorted(METRICS)}")
        if (self.kind == "regression") != (not self.label_names):
            raise ValueError(f"task {self.name!r}: a classification task names its labels, a regression has none")

    @property
    def num_labels(self) -> int:
        """Outputs of the head: the classes, or 1 for a regression."""
        return len(self.label_names) if self.kind == "classification" else 1

    @property
    def problem_type(self) -> str:
        """``transformers``' ``problem_type`` of the head, so a merged model loads and predicts in plain transformers."""
        return "single_label_classification" if self.kind == "classification" else "regression"

    @property
    def text_columns(self) -> tuple[str, ...]:
        return ("text", "text_pair") if self.pair else ("text",)

    def predictions(self, logits: np.ndarray) -> np.ndarray:
        """(n,) predictions from (n, num_labels) outputs: the argmax class, or the regression's value."""
        logits = np.asarray(logits)
        return logits.argmax(axis=-1) if self.kind == "classification" else logits.reshape(-1)

    def score(self, logits: np.ndarray, labels: Sequence[float]) -> dict[str, float]:
        """Every metric of the task on (n, num_labels) ``logits`` against the (n,) ``labels``."""
        return score(self.metrics, self.predictions(logits), np.asarray(labels))
