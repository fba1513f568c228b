"""The task contract: what a task is, so that the server, the client and the methods never test a task's name.

A task says how its data is read (a local folder in the task's official layout, and the Hugging Face Hub through
``datasets.load_dataset``), its input form (one text, or a pair encoded with the tokenizer's pair encoding), its
head and loss (classification over ``label_names``; regression with one output and MSE), its metrics (computed by
scikit-learn and SciPy, :mod:`shared.tasks.metrics`) and the headline metric its runs report. Every split a task
reads has the columns ``text`` (str), ``text_pair`` (str, pair tasks only) and ``label`` (int class index, or float
for regression). Splits: ``train``, ``test`` (what papers report on: GLUE's dev set) and, where the data has them,
``validation`` and further held-out sets (MNLI's ``test_mismatched``).

A causal-LM task (``kind="causal-lm"``, :mod:`shared.tasks.causal_lm`) loads the model with its LM head
(:attr:`Task.model_kind`), names the columns its splits carry (``columns``), encodes them itself (the ``encoder`` hook:
per-token labels, -100 where no loss is taken) and evaluates itself (the ``evaluator`` hook: token loss, perplexity,
generation); ``skew`` names what a Dirichlet partition skews (None: no such attribute, IID only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from datasets import Dataset

from shared.tasks.metrics import KNOWN, score

KINDS = ("classification", "regression", "causal-lm")
MODEL_KINDS = {"classification": "sequence-classification", "regression": "sequence-classification",
               "causal-lm": "causal-lm"}  # task kind -> shared.model.load_base_model's kind
LocalReader = Callable[["Task", Path], dict[str, Dataset]]


class TaskError(RuntimeError):
    """A task's data cannot be read as the task needs it (the message names the file or column and the fix)."""


@dataclass(frozen=True)
class HubSource:
    """Where a task lives on the Hugging Face Hub: ``load_dataset(path, config)``, our split -> theirs, and the
    Hub's column names for ``text``, ``text_pair`` and ``label`` (or the task's ``columns``); ``convert`` turns a
    renamed split into the task's form where it is not a labelled one (E2E's attribute, Alpaca's optional input)."""

    path: str
    config: str | None = None
    splits: Mapping[str, str] = field(default_factory=lambda: {"train": "train", "test": "validation"})
    columns: Mapping[str, str] = field(default_factory=lambda: {"text": "sentence", "label": "label"})
    convert: Callable[[Dataset], Dataset] | None = None  # our columns from the renamed ones (else: conform labels)


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
    # causal-LM tasks (the hooks the data, training and server code call instead of testing a name):
    columns: tuple[str, ...] = ()  # the columns every split carries; () = text [, text_pair], label
    encoder: Callable[..., Any] | None = None  # (split, tokenizer, max_length, limit) -> shared.data.Encoded
    evaluator: Callable[..., Any] | None = None  # (model, Encoded, task, batch_size, precision, max_new_tokens,
    #                                              num_beams=...)
    skew: str | None = "label"  # what partitioner='dirichlet' skews (the column 'label' holds it); None: IID only
    folder: str = ""  # the task's folder in its benchmark's layout (GLUE: "MNLI"); '' = its name (tasks=..., multitask)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"task {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        unknown = [m for m in self.metrics if m not in KNOWN]
        if unknown or self.headline not in self.metrics:
            raise ValueError(f"task {self.name!r}: metrics {unknown} unknown or headline {self.headline!r} not "
                             f"among {self.metrics}; known metrics: {sorted(KNOWN)}")
        if (self.kind == "classification") != bool(self.label_names):
            raise ValueError(f"task {self.name!r}: a classification task names its labels, other kinds have none")
        if (self.kind == "causal-lm") != (self.encoder is not None and self.evaluator is not None):
            raise ValueError(f"task {self.name!r}: a causal-LM task (only) brings its own encoder and evaluator")

    @property
    def model_kind(self) -> str:
        """The head the base model loads with (``shared.model.load_base_model``'s ``kind``)."""
        return MODEL_KINDS[self.kind]

    @property
    def num_labels(self) -> int:
        """Outputs of the head: the classes, 1 for a regression, 0 for a causal LM (its head is the vocabulary)."""
        return {"classification": len(self.label_names), "regression": 1}.get(self.kind, 0)

    @property
    def problem_type(self) -> str | None:
        """``transformers``' ``problem_type`` of the head, so a merged model loads and predicts in plain transformers
        (None for a causal LM: its loss is the next-token cross-entropy)."""
        return {"classification": "single_label_classification", "regression": "regression"}.get(self.kind)

    @property
    def text_columns(self) -> tuple[str, ...]:
        return ("text", "text_pair") if self.pair else ("text",)

    @property
    def required_columns(self) -> tuple[str, ...]:
        """The columns every split of the task carries."""
        return self.columns or (*self.text_columns, "label")

    def predictions(self, logits: np.ndarray) -> np.ndarray:
        """(n,) predictions from (n, num_labels) outputs: the argmax class, or the regression's value."""
        logits = np.asarray(logits)
        return logits.argmax(axis=-1) if self.kind == "classification" else logits.reshape(-1)

    def score(self, logits: np.ndarray, labels: Sequence[float]) -> dict[str, float]:
        """Every metric of the task on (n, num_labels) ``logits`` against the (n,) ``labels``."""
        return score(self.metrics, self.predictions(logits), np.asarray(labels))
