"""A user's own data folder: ``train`` and ``test`` files, and optionally ``validation``, each one file of .csv,
.tsv, .json or .jsonl, with a header (CSV/TSV) or keys (JSON) naming the columns.

CSV is read with the ``csv`` module's usual quoting (a quoted field may hold commas and newlines); TSV without
quoting (a tab ends a field; quote characters are text, as in GLUE's files); .json is a JSON array of objects or
JSON lines, .jsonl JSON lines. Every value of a CSV/TSV file is text (so ``"007"`` stays a text); JSON values keep
their types. A table is returned as column -> list of values, rows in file order.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from shared.tasks.base import TaskError

SPLITS = ("train", "validation", "test")
REQUIRED = ("train", "test")
FORMATS = ("csv", "tsv", "json", "jsonl")

Table = dict[str, list]


def split_files(folder: Path) -> dict[str, Path]:
    """Split -> its file in ``folder`` (exactly one per split; train and test required)."""
    if not folder.is_dir():
        raise TaskError(f"data-dir {folder} is not a folder; pass the folder that holds your train and test files "
                        f"({', '.join('.' + f for f in FORMATS)})")
    out = {}
    for split in SPLITS:
        found = [folder / f"{split}.{ext}" for ext in FORMATS if (folder / f"{split}.{ext}").is_file()]
        if len(found) > 1:
            raise TaskError(f"data-dir {folder} holds {' and '.join(p.name for p in found)}: keep one file per "
                            f"split (remove or rename the others)")
        if found:
            out[split] = found[0]
        elif split in REQUIRED:
            names = ", ".join(f"{split}.{ext}" for ext in FORMATS[:-1]) + f" or {split}.{FORMATS[-1]}"
            held = sorted(p.name for p in folder.iterdir())[:12]
            raise TaskError(f"data-dir {folder} has no {split} file: put {names} there (it holds {held})")
    return out


def read_table(path: Path) -> Table:
    """Column -> values of one file (header names, or the JSON objects' keys in order of first appearance)."""
    try:
        table = _read_json(path) if path.suffix in (".json", ".jsonl") else _read_delimited(path)
    except UnicodeDecodeError as exc:
        raise TaskError(f"{path} is not UTF-8 text (invalid byte at offset {exc.start}); save it as UTF-8") from None
    if not table or not next(iter(table.values())):
        raise TaskError(f"{path} has no rows; give each split at least one row")
    return table


def _read_delimited(path: Path) -> Table:
    tsv = path.suffix == ".tsv"
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with open(path, encoding="utf-8-sig", newline="") as fh:
        rows = csv.reader(fh, delimiter="\t" if tsv else ",", quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL)
        try:
            header = next(rows, None)
            if header is None:
                return {}
            header = [h.strip() for h in header]
            if len(set(header)) < len(header):
                raise TaskError(f"{path}: its header {header} names a column twice; give each column its own name")
            table: Table = {h: [] for h in header}
            for row in rows:
                if not row:
                    continue
                if len(row) != len(header):
                    raise TaskError(f"{path}, row {len(table[header[0]]) + 1} (line {rows.line_num}): {len(row)} "
                                    f"field(s) for the header's {len(header)} {header}; fix the row"
                                    + ("" if tsv else " (quote a field that holds a comma)"))
                for h, value in zip(header, row):
                    table[h].append(value)
        except csv.Error as exc:
            kind = "TSV" if tsv else "CSV"
            raise TaskError(f"{path}, line {rows.line_num}: not readable as {kind} ({exc})") from None
    return table


def _read_json(path: Path) -> Table:
    text = path.read_text(encoding="utf-8-sig")
    rows: list
    try:
        whole = json.loads(text) if path.suffix == ".json" and text.lstrip().startswith("[") else None
    except json.JSONDecodeError as exc:
        raise TaskError(f"{path}, line {exc.lineno}: not a JSON array ({exc.msg}); fix the file or write JSON "
                        f"lines (one object per line)") from None
    if whole is not None:
        rows, lines = whole, list(range(1, len(whole) + 1))
        what = "element"
    else:
        rows, lines, what = [], [], "line"
        for n, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise TaskError(f"{path}, line {n}: not a JSON object ({exc.msg}); write one object per line "
                                    f"(JSON lines) or a JSON array of objects") from None
                lines.append(n)
    table: Table = {}
    for i, (row, n) in enumerate(zip(rows, lines)):
        if not isinstance(row, dict):
            raise TaskError(f"{path}, {what} {n}: a {type(row).__name__}, not an object of column -> value")
        for key in row:
            if key not in table:
                table[key] = [None] * i
        for key, values in table.items():
            values.append(row.get(key))
    return table
