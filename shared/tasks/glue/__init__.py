"""GLUE (Wang et al., 2019), all eight tasks with GLUE's own metrics, from the official layout or the Hub.

Headline metrics follow BERT's GLUE table (Devlin et al., 2019): F1 for MRPC and QQP, Spearman for STS-B, Matthews
correlation for CoLA, accuracy elsewhere (MNLI: matched; mismatched is scored too). ``test`` is GLUE's labelled dev
set, the split the PaFi, DSEE and SAM papers report on. STS-B is a regression of the 0-5 similarity score.
"""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset

from shared.tasks.base import HubSource, Task
from shared.tasks.glue.reader import Layout, reader
from shared.tasks.tsv import has_layout, read_tsv_folder

DEV = {"train": "train.tsv", "test": "dev.tsv"}
NLI = ("entailment", "not_entailment")


def _glue(name: str, help: str, layout: Layout, hub_columns: dict, *, labels: tuple[str, ...] = ("0", "1"),
          metrics: tuple[str, ...] = ("accuracy",), headline: str = "accuracy", kind: str = "classification",
          hub_splits: dict | None = None, held_out: tuple[str, ...] = ("test",), either: bool = False,
          folder: str = "") -> Task:
    hub = HubSource("nyu-mll/glue", name, hub_splits or {"train": "train", "test": "validation"}, hub_columns)
    read = _either_layout(reader(layout)) if either else reader(layout)
    return Task(name, help, kind, labels, layout.text_pair is not None, metrics, headline, hub, read, held_out,
                folder=folder or name.upper())


def _either_layout(glue):
    """SST-2's reader: the labelled-TSV layout of ../shared/data/sst2 (train, validation, test = GLUE dev) where the
    folder holds test.tsv, else GLUE's official folder (train.tsv, dev.tsv)."""
    def read(task: Task, folder: Path) -> dict[str, Dataset]:
        return read_tsv_folder(task, folder) if has_layout(folder) else glue(task, folder)
    return read


TASKS = (
    _glue("cola", "CoLA: grammatical acceptability (Matthews correlation)", Layout(DEV, text=3, label=1),
          {"text": "sentence", "label": "label"}, metrics=("matthews", "accuracy"), headline="matthews", folder="CoLA"),
    _glue("sst2", "SST-2: sentence sentiment (accuracy); data-dir: a GLUE SST-2 folder or ../shared/data/sst2",
          Layout(DEV, text="sentence", label="label"), {"text": "sentence", "label": "label"},
          labels=("negative", "positive"), either=True, folder="SST-2"),
    _glue("mrpc", "MRPC: paraphrase pairs (F1, accuracy)",
          Layout(DEV, text="#1 String", text_pair="#2 String", label="Quality"),
          {"text": "sentence1", "text_pair": "sentence2", "label": "label"}, metrics=("f1", "accuracy"),
          headline="f1"),
    _glue("stsb", "STS-B: sentence-pair similarity 0-5, a regression (Pearson, Spearman)",
          Layout(DEV, text="sentence1", text_pair="sentence2", label="score"),
          {"text": "sentence1", "text_pair": "sentence2", "label": "label"}, labels=(), kind="regression",
          metrics=("pearson", "spearman"), headline="spearman", folder="STS-B"),
    _glue("qqp", "QQP: duplicate question pairs (F1, accuracy)",
          Layout(DEV, text="question1", text_pair="question2", label="is_duplicate"),
          {"text": "question1", "text_pair": "question2", "label": "label"}, metrics=("f1", "accuracy"),
          headline="f1"),
    _glue("mnli", "MNLI: entailment, 3 classes (accuracy on the matched and the mismatched dev set)",
          Layout({"train": "train.tsv", "test": "dev_matched.tsv", "test_mismatched": "dev_mismatched.tsv"},
                 text="sentence1", text_pair="sentence2", label="gold_label"),
          {"text": "premise", "text_pair": "hypothesis", "label": "label"},
          labels=("entailment", "neutral", "contradiction"),
          hub_splits={"train": "train", "test": "validation_matched", "test_mismatched": "validation_mismatched"},
          held_out=("test", "test_mismatched")),
    _glue("qnli", "QNLI: does the sentence answer the question (accuracy)",
          Layout(DEV, text="question", text_pair="sentence", label="label"),
          {"text": "question", "text_pair": "sentence", "label": "label"}, labels=NLI),
    _glue("rte", "RTE: textual entailment, 2 classes (accuracy)",
          Layout(DEV, text="sentence1", text_pair="sentence2", label="label"),
          {"text": "sentence1", "text_pair": "sentence2", "label": "label"}, labels=NLI),
)
