"""``dataset='custom'``: a task the user describes with run-config keys, on their own data (docs/tasks.md).

The description: where the data is (``data-dir``, a folder of train/test files, :mod:`.files`; or ``hub-dataset``
and ``hub-config``, through ``datasets.load_dataset``), ``text-columns`` (one, or two for a pair), ``label-column``,
``task-type``, ``task-metrics`` and ``label-names``. It is checked against the data when the run's settings are
parsed: every split is read and every label encoded, so a bad file, column, label or metric fails at start in one
line (:class:`TaskError`, a ``ConfigError`` at parse) that names the file or column and what to pass.

The task is named ``custom-<8 hex>``, a SHA-256 of the description and the classes it found, and
``shared.tasks.task_of`` registers it under that name once: the same description on the same data gives the same
task (and ``shared.data.load_splits`` finds it, and caches its splits, by that name).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset, Features, Value

from shared.tasks.base import HubSource, Task, TaskError
from shared.tasks.custom.files import FORMATS, SPLITS, read_table, split_files
from shared.tasks.hub import HubUnavailable, fetch, hub_splits
from shared.tasks.labels import derive_names, encode_labels
from shared.tasks.metrics import METRICS

REGRESSION_METRICS = ("pearson", "spearman")  # the rest score classes
DEFAULT_METRICS = {"classification": ("accuracy",), "regression": ("spearman", "pearson")}


@dataclass(frozen=True)
class Description:
    """A custom task as the run config describes it (checked: :func:`describe`)."""

    data_dir: str  # resolved folder; "" = the Hub
    hub: str
    hub_config: str
    text_columns: tuple[str, ...]
    label_column: str
    kind: str
    metrics: tuple[str, ...]
    label_names: tuple[str, ...]  # () = the distinct labels of train

    @property
    def columns(self) -> dict[str, str]:
        """Ours -> the data's column names."""
        return {**dict(zip(("text", "text_pair"), self.text_columns)), "label": self.label_column}

    @property
    def source(self) -> str:
        """Where class names come from, for messages."""
        return "label-names" if self.label_names else "the distinct labels of train"


def custom_task(cfg) -> Task:
    """The task that ``cfg``'s custom-data keys describe, built and checked once per description and data (the same
    object again after); :class:`TaskError` in one line where the description does not fit the data.
    ``shared.tasks.task_of`` registers it."""
    d = describe(cfg)
    key = (d, _stamp(d.data_dir))
    if key not in _BUILT:
        if len(_BUILT) > 16:
            _BUILT.clear()
        _BUILT[key] = _from_folder(d) if d.data_dir else _from_hub(d)
    return _BUILT[key]


_BUILT: dict[tuple, Task] = {}


def describe(cfg) -> Description:
    """The custom-data keys of ``cfg``, checked for what they say on their own (before any data is read)."""
    data_dir, hub = cfg.data_dir.strip(), cfg.hub_dataset.strip()
    if not data_dir and not hub:
        raise TaskError("dataset='custom' needs its data: pass data-dir=<a folder with train and test files "
                        "(.csv, .tsv, .json or .jsonl)> or hub-dataset=<a Hugging Face dataset id>")
    if data_dir and hub:
        raise TaskError(f"dataset='custom' reads data-dir or hub-dataset, not both (data-dir={data_dir!r}, "
                        f"hub-dataset={hub!r}); leave one empty")
    if cfg.hub_config and not hub:
        raise TaskError(f"hub-config={cfg.hub_config!r} is set without hub-dataset; pass the dataset's id as "
                        f"hub-dataset, or leave hub-config empty")
    texts = tuple(c.strip() for c in cfg.text_columns.split(","))
    if not 1 <= len(texts) <= 2 or not all(texts):
        raise TaskError(f"text-columns={cfg.text_columns!r}: pass one column name (a single text) or two "
                        f"comma-separated (a sentence pair), e.g. text-columns='premise,hypothesis'")
    label = cfg.label_column.strip()
    if not label or label in texts:
        raise TaskError(f"label-column={cfg.label_column!r} must name the target column, apart from the "
                        f"text-columns {list(texts)}")
    kind = cfg.task_type
    names = tuple(n.strip() for n in cfg.label_names.split(",")) if cfg.label_names.strip() else ()
    if names and kind == "regression":
        raise TaskError(f"label-names={cfg.label_names!r} names classes, and task-type=regression has none; "
                        f"leave label-names empty (or pass task-type=classification)")
    if len(set(names)) < len(names) or not all(names):
        raise TaskError(f"label-names={cfg.label_names!r}: give each class once, comma-separated, in index order")
    folder = str(Path(data_dir).expanduser().resolve()) if data_dir else ""
    return Description(folder, hub, cfg.hub_config.strip(), texts, label, kind, _metrics(cfg.task_metrics, kind),
                       names)


def _metrics(text: str, kind: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(m.strip() for m in text.split(",") if m.strip())) or DEFAULT_METRICS[kind]
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise TaskError(f"task-metrics: unknown metric(s) {unknown}; known: {sorted(METRICS)} (comma-separated, "
                        f"the first the headline)")
    wrong = [m for m in names if (m in REGRESSION_METRICS) != (kind == "regression")]
    if wrong:
        fits = [m for m in sorted(METRICS) if (m in REGRESSION_METRICS) == (kind == "regression")]
        other = "classification" if kind == "regression" else "regression"
        raise TaskError(f"task-metrics: {wrong} score a {other}, and task-type={kind}; use "
                        f"{', '.join(fits[:-1])} or {fits[-1]} "
                        f"(or task-type={other})")
    return names


def _stamp(folder: str) -> tuple:
    """What a folder's data files are now (name, size, mtime): a changed file is read and checked again."""
    if not folder:
        return ()
    files = [Path(folder) / f"{s}.{ext}" for s in SPLITS for ext in FORMATS]
    return tuple((p.name, st.st_size, st.st_mtime_ns) for p in files if p.is_file() for st in [p.stat()])


def _from_folder(d: Description) -> Task:
    folder = Path(d.data_dir)
    tables = {split: (path, read_table(path)) for split, path in split_files(folder).items()}
    for path, table in tables.values():
        _check_columns(list(table), d, str(path))
    names = ()
    if d.kind == "classification":
        names = d.label_names or derive_names(tables["train"][1][d.label_column])
        _check_classes(d, names)
    task = _task(d, names, HubSource("", None, {}, d.columns))
    splits = {split: _assemble(table, task, str(path), d.source) for split, (path, table) in tables.items()}
    _READ[(task.name, d.data_dir, _stamp(d.data_dir))] = splits
    return task


def _from_hub(d: Description) -> Task:
    where = f"hub-dataset {d.hub!r}" + (f" (hub-config {d.hub_config!r})" if d.hub_config else "")
    try:
        ds = fetch(HubSource(d.hub, d.hub_config or None))
    except HubUnavailable as exc:
        raise TaskError(f"{where} {exc}; check hub-dataset and hub-config, or pass data-dir=<a folder with "
                        f"train and test files>") from None
    splits = _hub_split_names(ds, d, where)
    for theirs in splits.values():
        _check_columns(ds[theirs].column_names, d, f"split {theirs!r} of {where}")
    train = ds[splits["train"]]
    feature = train.features[d.label_column]
    names = ()
    if d.kind == "classification":
        names = d.label_names or tuple(getattr(feature, "names", None) or ()) or derive_names(train[d.label_column])
        _check_classes(d, names)
    task = _task(d, names, HubSource(d.hub, d.hub_config or None, splits, d.columns))
    hub_splits(task, ds, d.source)  # every label checked now, in one line naming the split and row
    return task


def _hub_split_names(ds, d: Description, where: str) -> dict[str, str]:
    """Ours -> the Hub's: train; test = its 'test' if labelled, else 'validation'; validation where both exist."""
    have = sorted(ds)
    test = "test" if "test" in ds and _labelled(ds["test"], d.label_column) else "validation"
    if "train" not in ds or test not in ds:
        missing = "train" if "train" not in ds else "labelled test (or validation)"
        raise TaskError(f"{where} has no {missing} split (it has {have}); dataset='custom' trains on 'train' and "
                        f"scores on 'test', else 'validation': pick a configuration that has them (hub-config), or "
                        f"save the splits as files and pass data-dir")
    out = {"train": "train", "test": test}
    if test == "test" and "validation" in ds:
        out["validation"] = "validation"
    return out


def _labelled(split: Dataset, column: str) -> bool:
    """Whether a split carries labels (the Hub's unlabelled test splits hold -1 or nothing)."""
    return column not in split.column_names or any(v not in (-1, None) for v in split[column])


def _check_columns(have: list[str], d: Description, where: str) -> None:
    for key, column in [*(("text-columns", c) for c in d.text_columns), ("label-column", d.label_column)]:
        if column not in have:
            raise TaskError(f"{where}: no column {column!r} ({key}); its columns are {have}; pass {key}="
                            + ("<one or two of them, comma-separated>" if key == "text-columns" else "<one of them>"))


def _check_classes(d: Description, names: tuple[str, ...]) -> None:
    if len(names) < 2:
        where = "label-names lists" if d.label_names else f"label-column {d.label_column!r} has, in train,"
        raise TaskError(f"{where} a single class {list(names)}; a classifier needs two or more: pass "
                        f"label-names=<every class, comma-separated, in index order> (or task-type=regression for a "
                        f"numeric target)")
    if "f1" in d.metrics and len(names) != 2:
        raise TaskError(f"task-metrics: f1 is the binary F1 of class 1 and the data has {len(names)} classes "
                        f"{list(names)[:10]}; use accuracy or matthews")


def _task(d: Description, names: tuple[str, ...], hub: HubSource) -> Task:
    """The task of ``d`` with classes ``names``, named by a hash of both."""
    blob = json.dumps([d.data_dir or d.hub, d.hub_config, d.text_columns, d.label_column, d.kind, d.metrics, names])
    name = "custom-" + hashlib.sha256(blob.encode()).hexdigest()[:8]
    help = f"your data: {d.data_dir or d.hub} ({d.kind}, text-columns {','.join(d.text_columns)}, " \
           f"label-column {d.label_column})"
    return Task(name, help, d.kind, names, len(d.text_columns) == 2, d.metrics, d.metrics[0], hub, read_custom)


def read_custom(task: Task, folder: Path) -> dict[str, Dataset]:
    """A custom task's ``read_local``: its splits from ``folder`` (read once per process while the files stay the
    same; ``task.hub.columns`` names the data's columns)."""
    folder = Path(folder).expanduser().resolve()
    key = (task.name, str(folder), _stamp(str(folder)))
    if key not in _READ:
        if len(_READ) > 8:
            _READ.clear()
        tables = {split: (path, read_table(path)) for split, path in split_files(folder).items()}
        _READ[key] = {split: _assemble(table, task, str(path)) for split, (path, table) in tables.items()}
    return _READ[key]


_READ: dict[tuple, dict[str, Dataset]] = {}


def _assemble(table: dict[str, list], task: Task, path: str, source: str = "") -> Dataset:
    """A split with our columns from a file's table: texts as str, labels encoded (rows named on error)."""
    columns = task.hub.columns
    missing = [c for c in columns.values() if c not in table]
    if missing:
        raise TaskError(f"{path}: no column(s) {missing}; its columns are {list(table)}")
    out = {ours: ["" if v is None else str(v) for v in table[theirs]] for ours, theirs in columns.items()
           if ours != "label"}
    out["label"] = encode_labels(table[columns["label"]], task, lambda i: f"{path}, row {i + 1}", source)
    label = Value("float32" if task.kind == "regression" else "int64")
    return Dataset.from_dict(out, features=Features({**{c: Value("string") for c in out if c != "label"},
                                                     "label": label}))
