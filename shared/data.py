"""Datasets: load a task's splits (shared/tasks: its local layout or the Hub), partition (flwr-datasets), tokenize,
batch.

Splits used: ``train`` (partitioned among clients) and ``test`` (held out, evaluated by the server; for GLUE tasks
the labelled dev set, the split papers report on). ``validation`` is the split to choose learning rates on
(run-config ``eval-split = "validation"``) so that ``test`` is never tuned on: the data's own where it has one
(../shared/data/sst2's validation.tsv: rows of the GLUE training set kept out of train.tsv), else carved from train
under the seed (:func:`run_splits`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner

from shared.tasks import Task, TaskError, get_task, read_local, task_of
from shared.tasks.hub import HubUnavailable, fetch, hub_splits


class DataLoadError(RuntimeError):
    """A dataset could not be loaded or partitioned."""


@functools.lru_cache(maxsize=4)
def load_splits(dataset: str, data_dir: str) -> dict[str, Dataset]:
    """The registered task ``dataset``'s splits (``shared.tasks``): ``train``, ``test`` and whatever else the data
    holds, each with columns ``text`` [, ``text_pair``] and ``label``; from ``data_dir`` in the task's layout, or the
    Hub when it is empty. Cached per process."""
    try:
        task = get_task(dataset)
        if data_dir:
            return read_local(task, Path(data_dir))
    except TaskError as exc:
        raise DataLoadError(str(exc)) from None
    return _load_from_hub(task)


def run_splits(cfg) -> dict[str, Dataset]:
    """A run's splits (``cfg``: a :class:`shared.config.RunConfig`): its task's (:func:`load_splits`), and where the
    run scores on ``validation`` and the data has none, a validation split carved out of train under the seed
    (``validation-fraction`` of its rows; they leave train, so no client trains on them). Cached per process."""
    task = task_of(cfg)
    carve = cfg.eval_split == "validation"
    return _run_splits(task.name, cfg.data_dir, carve, cfg.seed if carve else 0,
                       cfg.validation_fraction if carve else 0.0)


@functools.lru_cache(maxsize=4)
def _run_splits(task: str, data_dir: str, carve: bool, seed: int, fraction: float) -> dict[str, Dataset]:
    splits = load_splits(task, data_dir)
    if not carve or "validation" in splits:
        return splits
    return carve_validation(splits, fraction, seed)


def carve_validation(splits: dict[str, Dataset], fraction: float, seed: int) -> dict[str, Dataset]:
    """``splits`` with ``validation`` = a seeded ``fraction`` of train's rows (at least one) and train the rest, both
    in file order."""
    train = splits["train"]
    n = len(train)
    m = min(n - 1, max(1, round(n * fraction)))
    if m < 1:
        raise DataLoadError(f"a validation split cannot be carved from {n} training row(s); use eval-split='test'")
    perm = np.random.default_rng(int(seed)).permutation(n)
    return {**splits, "train": train.select(np.sort(perm[m:]).tolist()),
            "validation": train.select(np.sort(perm[:m]).tolist())}


SPLIT_FILES = ("train.tsv", "validation.tsv", "test.tsv", "dev.tsv", "dev_matched.tsv", "dev_mismatched.tsv",
               # a custom task's files (shared/tasks/custom), after the TSV names: a TSV folder hashes as it always has
               *(f"{split}.{ext}" for ext in ("csv", "json", "jsonl") for split in ("train", "validation", "test")),
               "devset.csv", "testset_w_refs.csv", "input.txt")  # the causal-LM tasks' (E2E, plain text)


def data_fingerprint(data_dir: str) -> str:
    """What a run's data *is*, not where it lies: SHA-256 over the split files' names and bytes ("" = the Hub copy).

    Two clones of the project see the same SST-2 at different paths; results and checkpoints made on one are
    valid on the other, so stored runs compare this, not the ``data-dir`` string."""
    if not data_dir:
        return ""
    root = Path(data_dir).expanduser()
    present = [name for name in SPLIT_FILES if (root / name).is_file()]
    if not present:
        return f"missing:{root}"  # two absent folders are not the same data
    h = hashlib.sha256()
    for name in present:
        h.update(f"|{name}|".encode())
        h.update((root / name).read_bytes())
    return h.hexdigest()


def held_out(splits: dict[str, Dataset], name: str, data_dir: str) -> Dataset:
    """The split the server scores on: ``test`` or ``validation`` (:func:`run_splits` carves one where the data
    has none)."""
    if name not in splits:
        where = f"data-dir {data_dir}" if data_dir else "the Hugging Face Hub copy"
        raise DataLoadError(f"eval-split={name!r} but {where} has no {name} split; use eval-split='test'")
    return splits[name]


def _load_from_hub(task: Task) -> dict[str, Dataset]:
    hint = f"pass data-dir=<the task's folder>, e.g. --run-config \"data-dir='../shared/data/{task.name}'\""
    try:
        return hub_splits(task, fetch(task.hub))
    except HubUnavailable as exc:
        raise DataLoadError(f"dataset {task.name!r} {exc}; {hint}") from exc.__cause__
    except TaskError as exc:
        raise DataLoadError(str(exc)) from None


def partition(train: Dataset, num_partitions: int, partition_id: int, partitioner: str, alpha: float,
              seed: int) -> Dataset:
    """Client ``partition_id``'s share of ``train`` (deterministic under ``seed``)."""
    if not 0 <= partition_id < num_partitions:
        raise DataLoadError(f"partition-id {partition_id} is outside 0..{num_partitions - 1}; fix the node config")
    if num_partitions > len(train):
        raise DataLoadError(f"{num_partitions} partitions for {len(train)} training rows; use fewer clients")
    part = _partitioner(train, num_partitions, partitioner, alpha, seed).load_partition(partition_id)
    return part.remove_columns(BIN) if BIN in part.column_names else part


def partition_size(train: Dataset, num_partitions: int, partition_id: int, partitioner: str, alpha: float,
                   seed: int) -> int:
    """Rows of client ``partition_id``'s share of ``train``, without building or tokenizing it."""
    if not 0 <= partition_id < num_partitions or num_partitions > len(train):
        return len(partition(train, num_partitions, partition_id, partitioner, alpha, seed))  # the one-line error
    part = _partitioner(train, num_partitions, partitioner, alpha, seed)
    if isinstance(part, EqualDirichletPartitioner):
        return part.partition_size(partition_id)
    return len(part.load_partition(partition_id))


_PARTITIONERS: dict[tuple, object] = {}
BIN = "label_bin"  # a regression's Dirichlet partitions are drawn over bins of its target
REGRESSION_BINS = 5


@contextlib.contextmanager
def quiet_datasets():
    """``datasets``' progress bars off for the block (a federation's logs are one line per round, per node)."""
    from datasets.utils import logging as ds_logging

    was = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            ds_logging.enable_progress_bar()


def is_regression(ds: Dataset) -> bool:
    """Whether ``ds``'s labels are real numbers (a regression's targets), not class indices."""
    feature = ds.features.get("label")
    return feature is not None and str(getattr(feature, "dtype", "")).startswith("float")


def label_bins(labels, bins: int = REGRESSION_BINS) -> np.ndarray:
    """(n,) int bin of each real-valued label: its quantile bin among ``bins`` equal-count bins (ties share a bin).
    Dirichlet partitioning of a regression skews each client's mix of these bins (STS-B: quintiles of the 0-5
    score), as it skews a classification's mix of classes."""
    values = np.asarray(labels, dtype=np.float64)
    edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1]))
    return np.searchsorted(edges, values, side="right").astype(np.int64)


def _partitioner(train: Dataset, num_partitions: int, partitioner: str, alpha: float, seed: int):
    """A flwr-datasets partitioner over ``train``, built once per process and configuration."""
    key = (train._fingerprint, num_partitions, partitioner, alpha, seed)
    if key in _PARTITIONERS:
        return _PARTITIONERS[key]
    if partitioner == "dirichlet" and is_regression(train):
        with quiet_datasets():  # a carved train is an index mapping: adding a column flattens it, with a progress bar
            train = train.add_column(BIN, label_bins(train["label"]).tolist())
    if partitioner == "iid":
        p = IidPartitioner(num_partitions=num_partitions)
        p.dataset = train.shuffle(seed=seed)
    elif partitioner == "dirichlet":
        p = _dirichlet(train, num_partitions, alpha, seed)
    else:
        raise DataLoadError(f"unknown partitioner {partitioner!r}; use 'iid' or 'dirichlet'")
    _PARTITIONERS[key] = p
    return p


def _dirichlet(train: Dataset, num_partitions: int, alpha: float, seed: int):
    """Label-skewed partitions: flwr-datasets' Dirichlet partitioner, with a fallback for many clients.

    With many partitions (e.g. 1000 clients on SST-2's 60k rows, alpha 0.5) the Dirichlet draw
    leaves some partitions (nearly) empty and the partitioner gives up after 10 attempts; then
    every client gets an (almost) equal share whose label mix is drawn from Dirichlet(alpha)
    (:class:`EqualDirichletPartitioner`), so no client is empty and the skew stays controlled by
    alpha. Below ``FALLBACK_ROWS_PER_PARTITION`` rows per partition the draw is not attempted:
    it fails there, and its ten attempts cost O(partitions) each (26 s at 10,000 partitions).
    """
    if len(train) < FALLBACK_ROWS_PER_PARTITION * num_partitions:
        return EqualDirichletPartitioner(train, num_partitions, alpha, seed)
    min_size = max(1, min(10, len(train) // (4 * num_partitions)))
    by = BIN if BIN in train.column_names else "label"
    p = DirichletPartitioner(num_partitions=num_partitions, partition_by=by, alpha=alpha, seed=seed,
                             min_partition_size=min_size, self_balancing=False)
    p.dataset = train
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # one warning per failed attempt
            p.load_partition(0)  # the draw happens here, once per partitioner
        return p
    except ValueError:
        return EqualDirichletPartitioner(train, num_partitions, alpha, seed)


FALLBACK_ROWS_PER_PARTITION = 100


class EqualDirichletPartitioner:
    """Equal-size partitions (within the number of classes) with Dirichlet(alpha) label mixes, vectorized.

    Each partition i wants ``s_i * p_i`` rows of each class (s_i = n / num_partitions, p_i ~
    Dirichlet(alpha)); Sinkhorn scaling makes that (P, C) table match both the partition sizes and
    the class supplies, and rounding each class's cumulative sum gives integer counts that use
    every row exactly once. O(P·C) work: 10,000 partitions take well under a second, where
    flwr-datasets' ``InnerDirichletPartitioner`` took 150 s. Deterministic under ``seed``.
    """

    def __init__(self, train: Dataset, num_partitions: int, alpha: float, seed: int):
        labels = np.asarray(train[BIN if BIN in train.column_names else "label"])
        classes = np.unique(labels)
        rng = np.random.default_rng(int(seed))
        sizes = np.full(num_partitions, len(labels) / num_partitions)
        supply = np.array([(labels == c).sum() for c in classes], dtype=np.float64)
        table = sizes[:, None] * rng.dirichlet(np.full(len(classes), float(alpha)), size=num_partitions)
        table += 1e-9  # a class no partition wants still has to go somewhere
        for _ in range(200):
            table *= (supply / table.sum(0))[None, :]
            table *= (sizes / table.sum(1))[:, None]
        edges = np.rint(np.vstack([np.zeros((1, len(classes))), np.cumsum(table, 0)])).astype(np.int64)
        edges[-1] = supply.astype(np.int64)  # every row used exactly once
        counts = np.diff(edges, axis=0)  # (P, C) >= 0
        rows_of = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
        self.num_partitions = num_partitions
        self.dataset = train
        self._indices = [np.sort(np.concatenate([rows_of[j][edges[i, j]:edges[i, j] + counts[i, j]]
                                                 for j in range(len(classes))])) for i in range(num_partitions)]

    def partition_size(self, partition_id: int) -> int:
        return int(self._indices[partition_id].size)

    def load_partition(self, partition_id: int) -> Dataset:
        return self.dataset.select(self._indices[partition_id].tolist())


@dataclass
class Generation:
    """What a generation task's held-out slice is scored on: one entry per prompt (an E2E meaning representation),
    its text, its token ids (no padding) and every reference it has; ``tokenizer`` decodes what the model
    generates."""

    prompts: list[str]
    prompt_ids: list[list[int]]
    references: list[list[str]]
    tokenizer: Any = field(repr=False, default=None)

    def __len__(self) -> int:
        return len(self.prompts)


@dataclass
class Encoded:
    """A tokenized split as padded tensors: ``input_ids``/``attention_mask`` (n, L) int64, ``labels`` (n,) (a class or
    a score per row) or (n, L) int64 (a causal LM's next-token targets per position, -100 where no loss is taken:
    prompt and padding). For a pair on a tokenizer with segments (BERT's), ``token_type_ids`` (n, L): 0 on the first
    text, 1 on the second. ``generation``: the prompts a generation task's evaluation generates from (None else)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    token_type_ids: torch.Tensor | None = None
    generation: Generation | None = None

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def lengths(self) -> torch.Tensor:
        """(n,) int64: each row's real tokens (its attention mask's sum)."""
        return self.attention_mask.sum(1)

    def eval_batches(self, batch_size: int) -> list[torch.Tensor]:
        """Every row once, in batches of rows of similar length (longest first), so little padding is run.

        The rows' order does not change any per-example loss or prediction, only the batches' widths.
        """
        order = torch.argsort(self.lengths, descending=True, stable=True)
        return list(order.split(max(1, batch_size)))

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        ids, am, labels = self.input_ids[idx], self.attention_mask[idx], self.labels[idx]
        width = int(am.sum(1).max()) if len(idx) else 1  # trim padding shared by the whole batch (right-padded)
        if labels.dim() == 2:
            labels = labels[:, :width]
        out = {"input_ids": ids[:, :width], "attention_mask": am[:, :width], "labels": labels}
        if self.token_type_ids is not None:
            out["token_type_ids"] = self.token_type_ids[idx][:, :width]
        return out


def encode(ds: Dataset, tokenizer, max_length: int, limit: int = 0, task: Task | None = None) -> Encoded:
    """Tokenize ``text`` (and ``text_pair``, with the tokenizer's pair encoding) to fixed-length tensors; keep the
    first ``limit`` rows if ``limit`` > 0. A pair longer than ``max_length`` is cut from its longer side first
    (``longest_first``), so both sides keep tokens, and keeps its segment ids where the tokenizer has them.
    Labels: int64 class indices, or float32 for a regression. A ``task`` with its own encoder (a causal LM:
    prompt/target or text blocks) encodes the split itself (its ``limit`` counts what it evaluates on: prompts,
    blocks)."""
    if task is not None and task.encoder is not None:
        return task.encoder(ds, tokenizer, max_length, limit)
    if limit and limit < len(ds):
        ds = ds.select(range(limit))
    pairs = list(ds["text_pair"]) if "text_pair" in ds.column_names else None
    enc = tokenizer(list(ds["text"]), pairs, truncation="longest_first" if pairs else True, max_length=max_length,
                    padding="max_length", return_tensors="pt")
    floats = is_regression(ds)  # a regression's scores
    segments = enc.get("token_type_ids") if pairs else None  # a single text is all segment 0: the model's default
    return Encoded(enc["input_ids"], enc["attention_mask"],
                   torch.tensor(ds["label"], dtype=torch.float32 if floats else torch.long), segments)


MEGA_BATCH = 50  # batches per length-sorted chunk (Hugging Face Trainer's ``group_by_length``)


def batch_indices(n: int, batch_size: int, steps: int, seed: int,
                  lengths: torch.Tensor | None = None) -> list[torch.Tensor]:
    """``steps`` batches of row indices drawn by walking seeded passes over 0..n-1.

    ``lengths`` None: each pass is a seeded permutation cut into full batches (the tail that does not
    fill a batch is left to a later pass). ``lengths`` given ((n,) tokens per row): length-grouped
    passes (:func:`grouped_pass`), every row exactly once per pass, so a batch pads to a width
    close to its rows' own lengths.
    """
    gen = torch.Generator().manual_seed(int(seed))
    size = min(batch_size, n)
    if lengths is not None:
        out: list[torch.Tensor] = []
        while len(out) < steps:
            out += grouped_pass(lengths, size, gen)
        return out[:steps]
    out, perm, pos = [], torch.randperm(n, generator=gen), 0
    for _ in range(steps):
        if pos + size > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        out.append(perm[pos:pos + size])
        pos += size
    return out


def grouped_pass(lengths: torch.Tensor, batch_size: int, gen: torch.Generator,
                 mega_batch: int = MEGA_BATCH) -> list[torch.Tensor]:
    """One pass over all rows: shuffle, cut into chunks of ``mega_batch`` batches, sort each chunk by
    length (longest first, stable), cut it into batches, then shuffle the batches' order.

    Every row appears exactly once; only the last batch of a chunk may be short. Deterministic
    under ``gen``'s state.
    """
    n = int(lengths.numel())
    perm = torch.randperm(n, generator=gen)
    batches: list[torch.Tensor] = []
    for chunk in perm.split(mega_batch * batch_size):
        order = torch.argsort(lengths[chunk], descending=True, stable=True)
        batches += list(chunk[order].split(batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]
