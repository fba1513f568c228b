"""The causal-LM tasks' data, read into our columns.

* E2E NLG (``data-dir=../shared/data/e2e``): ``devset.csv`` is trained on and ``testset_w_refs.csv`` scored on, as
  the issue that brought the data asks (the folder holds no README of its own); both have the columns ``mr`` (the
  meaning representation, ``name[The Vaults], eatType[pub], food[English], ...``) and ``ref`` (one human text), one
  row per (MR, reference): the test set's 4,693 rows are 630 MRs with 1 to 16 references each. Our columns:
  ``text`` (the MR), ``target`` (the reference) and ``label``: the MR's ``food`` value as a class (0: no food
  attribute, then :data:`FOOD` in order), not a target; it is what ``partitioner='dirichlet'`` skews (the dev set
  has two eatType values, coffee shop and none, three food values: English, Chinese, none).
* Plain text (tinyshakespeare, ``input.txt``): its passages (blank-line separated), the first 90 % of the
  characters train and the rest test (nanoGPT's split); column ``text``.
* Instruction data in the Alpaca format: ``train`` and ``test`` (and optionally ``validation``) files, .json or
  .jsonl, objects with ``instruction``, ``input`` (may be absent or empty) and ``output``.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from datasets import Dataset

from shared.tasks.base import Task, TaskError
from shared.tasks.custom.files import read_table, split_files

E2E_FILES = {"train": "devset.csv", "test": "testset_w_refs.csv"}
FOOD = ("Chinese", "English", "Fast food", "French", "Indian", "Italian", "Japanese")  # E2E's food values
SKEW_ATTRIBUTE = "food"


def mr_attribute(mr: str, attribute: str) -> str | None:
    """The value of ``attribute`` in a meaning representation (``food[English]`` -> ``English``); None if absent."""
    found = re.search(rf"(?:^|,)\s*{re.escape(attribute)}\[([^\]]*)\]", mr)
    return found[1].strip() if found else None


def food_class(mr: str) -> int:
    """0 for an MR without a food attribute, else 1 + its index in :data:`FOOD`."""
    value = mr_attribute(mr, SKEW_ATTRIBUTE)
    if value is None:
        return 0
    if value not in FOOD:
        raise TaskError(f"meaning representation {mr!r}: food[{value}] is not one of E2E's {list(FOOD)}")
    return 1 + FOOD.index(value)


def e2e_rows(mrs: list[str], refs: list[str]) -> Dataset:
    return Dataset.from_dict({"text": list(mrs), "target": list(refs), "label": [food_class(m) for m in mrs]})


def read_e2e(task: Task, folder: Path) -> dict[str, Dataset]:
    """E2E's dev set (train) and test set with references (test), one row per (MR, reference), in file order."""
    out = {}
    for split, name in E2E_FILES.items():
        path = folder / name
        if not path.is_file():
            raise TaskError(f"data-dir {folder} lacks {name}: E2E's folder holds devset.csv (trained on) and "
                            f"testset_w_refs.csv (scored on), columns mr,ref")
        with open(path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.DictReader(fh)
            if not {"mr", "ref"} <= set(reader.fieldnames or ()):
                raise TaskError(f"{path}: columns {reader.fieldnames}, E2E's are mr,ref")
            rows = [(r["mr"], r["ref"]) for r in reader]
        out[split] = e2e_rows([m for m, _ in rows], [r for _, r in rows])
    return out


def e2e_from_hub(split: Dataset) -> Dataset:
    """A Hub copy of E2E (``tuetschek/e2e_nlg``: meaning_representation, human_reference) in our columns."""
    return e2e_rows(split["text"], split["target"])


def group_references(split: Dataset) -> tuple[list[str], list[list[str]]]:
    """The distinct prompts (``text``) of a split in order of first appearance, and every ``target`` of each."""
    groups: dict[str, list[str]] = {}
    for text, target in zip(split["text"], split["target"]):
        groups.setdefault(text, []).append(target)
    return list(groups), list(groups.values())


TRAIN_FRACTION = 0.9


def read_plain_text(task: Task, folder: Path) -> dict[str, Dataset]:
    """``input.txt``'s passages: those in the first 90 % of its characters train, the rest test."""
    path = folder / "input.txt"
    if not path.is_file():
        raise TaskError(f"data-dir {folder} lacks input.txt, the plain-text corpus (e.g. ../shared/data/"
                        f"tinyshakespeare)")
    passages = [p for p in path.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    if len(passages) < 2:
        raise TaskError(f"{path} holds {len(passages)} passage(s); separate at least two with a blank line")
    ends, total = [], 0
    for p in passages:
        total += len(p) + 2
        ends.append(total)
    cut = min(len(passages) - 1, max(1, sum(e <= TRAIN_FRACTION * total for e in ends)))
    return {"train": Dataset.from_dict({"text": passages[:cut]}), "test": Dataset.from_dict({"text": passages[cut:]})}


INSTRUCTION_COLUMNS = ("instruction", "input", "output")


def instruction_rows(table: dict[str, list], where: str) -> Dataset:
    """Alpaca-format rows (``input`` optional, empty where absent), checked for the columns the format needs."""
    missing = [c for c in ("instruction", "output") if c not in table]
    if missing:
        raise TaskError(f"{where} has no column(s) {missing}: instruction data needs instruction, output (and "
                        f"optionally input) in the Alpaca format; it has {sorted(table)}")
    n = len(table["instruction"])
    inputs = table.get("input") or [""] * n
    return Dataset.from_dict({"instruction": [str(v) for v in table["instruction"]],
                              "input": ["" if v is None else str(v) for v in inputs],
                              "output": [str(v) for v in table["output"]]})


def read_instruction(task: Task, folder: Path) -> dict[str, Dataset]:
    """Instruction data from a folder of ``train``/``test`` (/``validation``) .json or .jsonl files."""
    out = {}
    for split, path in split_files(folder).items():
        if path.suffix not in (".json", ".jsonl"):
            raise TaskError(f"{path}: instruction data is read from .json or .jsonl (Alpaca's format)")
        out[split] = instruction_rows(read_table(path), str(path))
    return out


def instruction_from_hub(split: Dataset) -> Dataset:
    return instruction_rows({c: split[c] for c in split.column_names}, "the Hub dataset")
