"""The labelled-TSV layout of a single-text task: ``train.tsv``, ``test.tsv`` and optionally ``validation.tsv``,
each row ``text<TAB>label`` (an optional header whose last column is ``label``; a text holding tabs keeps them).

The layout of ``../shared/data/sst2`` and ``../shared/data/agnews`` (and of a user's own folder of that shape);
rows are read in file order, so a run on it reads the very rows runs have always read.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from datasets import Dataset

from shared.tasks.base import Task, TaskError

SPLITS = ("train", "validation", "test")


def _label(raw: str, names: tuple[str, ...], path: Path, line: int) -> int:
    raw = raw.strip()
    if re.fullmatch(r"-?[0-9]+", raw):
        value = int(raw)
        if not 0 <= value < len(names):
            raise TaskError(f"{path}:{line}: label {value} outside 0..{len(names) - 1}")
        return value
    if raw in names:
        return names.index(raw)
    raise TaskError(f"{path}:{line}: unknown label {raw!r}; expected an index or one of {list(names)}")


def read_labelled_tsv(path: Path, names: tuple[str, ...]) -> Dataset:
    """One ``text<TAB>label`` file as a Dataset with columns ``text`` and ``label``."""
    texts: list[str] = []
    labels: list[int] = []
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            for line, row in enumerate(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
                if not row:
                    continue
                if line == 1 and row[-1].strip().lower() == "label":
                    continue  # header
                if len(row) < 2:
                    raise TaskError(f"{path}:{line}: expected 'text<TAB>label', got {len(row)} column(s)")
                texts.append("\t".join(row[:-1]))
                labels.append(_label(row[-1], names, path, line))
    except UnicodeDecodeError as exc:
        raise TaskError(f"{path} is not UTF-8 text (invalid byte at offset {exc.start}); save it as UTF-8") from None
    if not texts:
        raise TaskError(f"{path} has no rows")
    return Dataset.from_dict({"text": texts, "label": labels})


def has_layout(folder: Path) -> bool:
    """Whether ``folder`` is in this layout (it holds ``test.tsv``; GLUE's official folders hold ``dev.tsv``)."""
    return (folder / "test.tsv").is_file()


def read_tsv_folder(task: Task, folder: Path) -> dict[str, Dataset]:
    """Every split the folder holds; ``train.tsv`` and ``test.tsv`` are required."""
    if not (folder / "train.tsv").is_file() or not (folder / "test.tsv").is_file():
        raise TaskError(f"data-dir {folder} must hold train.tsv and test.tsv (labelled TSV layout); "
                        f"e.g. data-dir=../shared/data/{task.name}")
    return {split: read_labelled_tsv(folder / f"{split}.tsv", task.label_names) for split in SPLITS
            if (folder / f"{split}.tsv").is_file()}
