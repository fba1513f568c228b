"""Labels as a task trains on them: a class index (int64) for a classification, a real number (float32) for a
regression, whatever form the data gives them in.

A class label may be an integer index (``3``, ``"3"``, ``3.0``) or one of the task's class names (``"positive"``);
a regression target any finite number (``4.2``, ``"4.2"``). A label that is neither is refused in one line naming
where it lies (``where(i)``: a file and row, or a Hub split and row) and what to pass.
"""

from __future__ import annotations

import math
import re
from typing import Callable, Sequence

from datasets import Dataset, Value

from shared.tasks.base import Task, TaskError

Where = Callable[[int], str]  # row index (0-based) -> "train.csv, row 3"
_INT = re.compile(r"-?[0-9]+")


def as_index(value) -> int | None:
    """``value`` as an integer, if it is one (an int, an integral float, or a string of digits); else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INT.fullmatch(value.strip()):
        return int(value.strip())
    return None


def derive_names(values: Sequence) -> tuple[str, ...]:
    """The classes of a train split's labels: ``"0".."max"`` where every label is an integer, else the sorted
    distinct labels (as text)."""
    indices = [as_index(v) for v in values]
    if indices and all(i is not None for i in indices):
        return tuple(str(i) for i in range(max(max(indices), 0) + 1))
    return tuple(sorted({str(v).strip() for v in values if v is not None}))


def class_index(value, names: tuple[str, ...], where: str, source: str = "") -> int:
    """``value``'s class index among ``names`` (a name, else an index in range); ``source`` says where the names
    came from (e.g. ``"label-names"``), for the message."""
    if isinstance(value, str) and value.strip() in names:
        return names.index(value.strip())
    index = as_index(value)
    if index is not None and 0 <= index < len(names):
        return index
    fix = (f"add it to {source}" if source == "label-names" else
           "pass label-names=<every class, comma-separated, in index order>") + " or fix the row"
    origin = f" ({source})" if source else ""
    raise TaskError(f"{where}: label {value!r} is neither an index 0..{len(names) - 1} nor one of the classes "
                    f"{list(names)}{origin}; {fix}")


def number(value, where: str) -> float:
    """``value`` as a finite real number (a regression's target)."""
    out = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        out = float(value)
    elif isinstance(value, str):
        try:
            out = float(value.strip())
        except ValueError:
            pass
    if out is None or not math.isfinite(out):
        raise TaskError(f"{where}: target {value!r} is not a number; a regression (task-type=regression) needs a "
                        f"numeric label column: fix the row, or pass task-type=classification")
    return out


def encode_labels(values: Sequence, task: Task, where: Where, source: str = "") -> list:
    """Every label of a split in the task's form: class indices (classification) or floats (regression)."""
    if task.kind == "regression":
        return [number(v, where(i)) for i, v in enumerate(values)]
    return [class_index(v, task.label_names, where(i), source) for i, v in enumerate(values)]


def conform_labels(split: Dataset, task: Task, where: Where, source: str = "") -> Dataset:
    """``split`` with its ``label`` column in the task's form: class indices in range, or real targets (float32
    where they are rewritten). A column of integers (classification) or floats (regression) is checked, not
    rewritten: the Hub's ClassLabel columns and float64 scores stay as they are."""
    dtype = str(getattr(split.features["label"], "dtype", ""))
    if task.kind == "classification" and dtype.startswith("int"):
        labels = split["label"]
        bad = next((i for i, v in enumerate(labels) if not 0 <= v < task.num_labels), None)
        if bad is not None:
            class_index(labels[bad], task.label_names, where(bad), source)  # raises, naming the row
        return split
    if task.kind == "regression" and dtype.startswith("float"):
        labels = split["label"]
        bad = next((i for i, v in enumerate(labels) if v is None or not math.isfinite(v)), None)
        if bad is not None:
            number(labels[bad], where(bad))
        return split
    encoded = encode_labels(split["label"], task, where, source)
    feature = Value("float32" if task.kind == "regression" else "int64")
    return split.remove_columns("label").add_column("label", encoded, feature=feature)
