"""Reading a GLUE task folder in the official ``glue_data/<TASK>/`` layout (what ``download_glue_data.py`` writes).

Tab-separated, no quoting (GLUE's text holds bare quote characters), UTF-8 (MRPC's header carries a BOM); a header
row names the columns, except CoLA's (source, label, original label, sentence). A row with too few fields (the full
QQP and MNLI training files hold a few) is skipped and counted; a label that is neither a known name nor a valid
index, or a regression score that is not a number, is refused with its file and line.
"""

from __future__ import annotations

import csv
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from datasets import Dataset

from shared.tasks.base import Task, TaskError


@dataclass(frozen=True)
class Layout:
    """A task's files (our split -> file name) and columns (header names, or indices where there is no header)."""

    files: Mapping[str, str]
    text: str | int
    label: str | int
    text_pair: str | int | None = None


def _label(raw: str, task: Task, path: Path, line: int) -> int | float:
    raw = raw.strip()
    if task.kind == "regression":
        try:
            return float(raw)
        except ValueError:
            raise TaskError(f"{path}:{line}: score {raw!r} is not a number; task {task.name!r} is a regression "
                            f"over a numeric column") from None
    if raw in task.label_names:
        return task.label_names.index(raw)
    if re.fullmatch(r"-?[0-9]+", raw) and 0 <= int(raw) < len(task.label_names):
        return int(raw)
    raise TaskError(f"{path}:{line}: label {raw!r} is neither one of {list(task.label_names)} nor an index "
                    f"0..{len(task.label_names) - 1}; fix the file or pass the task it belongs to (key 'dataset')")


def _index(header: list[str] | None, column: str | int, path: Path) -> int:
    if isinstance(column, int):
        return column
    if header is None or column not in header:
        raise TaskError(f"{path}: no column {column!r} in its header {header}; is this the task's official GLUE "
                        f"file (data-dir = the task's folder, e.g. ../shared/data/glue/RTE)?")
    return header.index(column)


def read_glue_file(path: Path, task: Task, layout: Layout) -> Dataset:
    """One GLUE file as a Dataset with the task's columns (``text`` [, ``text_pair``], ``label``)."""
    cols: dict[str, list] = {name: [] for name in (*task.text_columns, "label")}
    skipped = 0
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            rows = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = None if isinstance(layout.text, int) else next(rows, None)
            where = {"text": _index(header, layout.text, path), "label": _index(header, layout.label, path)}
            if task.pair:
                where["text_pair"] = _index(header, layout.text_pair, path)
            need = max(where.values()) + 1
            for line, row in enumerate(rows, start=2 if header is not None else 1):
                if len(row) < need:
                    skipped += bool(row)
                    continue
                for name, i in where.items():
                    cols[name].append(_label(row[i], task, path, line) if name == "label" else row[i])
    except UnicodeDecodeError as exc:
        raise TaskError(f"{path} is not UTF-8 text (invalid byte at offset {exc.start}); save it as UTF-8") from None
    if skipped:
        warnings.warn(f"{path}: {skipped} row(s) with too few fields skipped", stacklevel=2)
    if not cols["label"]:
        raise TaskError(f"{path} has no rows")
    return Dataset.from_dict(cols)


OFFICIAL_FOLDERS = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B", "qqp": "QQP", "mnli": "MNLI",
                    "qnli": "QNLI", "rte": "RTE"}  # glue_data/<folder>/, as download_glue_data.py names them


def reader(layout: Layout):
    """The task's ``read_local``: every split of ``layout`` that the folder holds; train and test are required."""
    def read(task: Task, folder: Path) -> dict[str, Dataset]:
        missing = [layout.files[s] for s in ("train", "test") if not (folder / layout.files[s]).is_file()]
        if missing:
            raise TaskError(f"data-dir {folder} lacks {', '.join(missing)} (task {task.name!r}, the official GLUE "
                            f"layout); pass the task's folder, e.g. data-dir=../shared/data/glue/"
                            f"{OFFICIAL_FOLDERS.get(task.name, task.name.upper())}")
        return {split: read_glue_file(folder / name, task, layout) for split, name in layout.files.items()
                if (folder / name).is_file()}
    return read
