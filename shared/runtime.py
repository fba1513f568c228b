"""One base model, tokenizer, mask and tuner per process, shared by every client the process runs.

Flower's simulation reuses worker processes across virtual clients; loading the base model and
deriving the mask once per (model, method, density, ...) key keeps a client's own state O(k).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from shared.config import RunConfig
from shared.device import resolve_device
from shared.data import encode, held_out, partition, partition_size, run_splits, Encoded
from shared.tasks import task_of
from shared.knobs import knobs
from shared.methods import get_method
from shared.methods.base import Method, Tuner
from shared.model import BaseModel, base_weights_digest, load_base_model


@dataclass
class Runtime:
    """The per-process state of a run: base model (with the tuner installed), the tuner and its method."""

    base: BaseModel
    tuner: Tuner
    num_labels: int
    method: Method
    head0: dict[str, tuple[torch.nn.Parameter, torch.Tensor]] = field(default_factory=dict)  # name -> (live, as built)

    def reset(self) -> None:
        """Forget an earlier run of this process: the head as loaded (a client here may have trained it), then
        the tuner's own state. The server calls this before a run, so two runs in one process start alike."""
        with torch.no_grad():
            for live, pristine in self.head0.values():
                live.copy_(pristine)
        self.tuner.reset()


_LOCK = threading.Lock()
_RUNTIMES: dict[tuple, Runtime] = {}
# Tokenized partitions, least recently used first, bounded in bytes: a worker running many clients
# keeps what fits (all of one run's partitions together are one tokenized copy of the train split,
# ~60 MB for SST-2) and drops the oldest beyond that, so memory never grows with clients or runs.
_PARTITIONS: OrderedDict[tuple, Encoded] = OrderedDict()
PARTITION_CACHE_BYTES = 256 * 2**20


def _encoded_bytes(enc: Encoded) -> int:
    return sum(t.numel() * t.element_size() for t in (enc.input_ids, enc.attention_mask, enc.labels))


def num_labels_for(cfg: RunConfig) -> int:
    """Outputs of the task's head: ``num-labels`` if set, else the task's (its classes, or 1 for a regression)."""
    return cfg.num_labels or task_of(cfg).num_labels


def runtime_key(cfg: RunConfig) -> tuple:
    """Everything a tuner is built from: the model, the mask settings and the method's own knobs."""
    method = get_method(cfg.method)
    own = tuple((key, repr(cfg.options.get(key))) for key in knobs(method.settings))
    task = task_of(cfg)
    return (cfg.model, num_labels_for(cfg), task.model_kind, task.problem_type, cfg.seed, cfg.method,
            cfg.mask_density, cfg.mask_scope, cfg.sparse_grad,
            cfg.batch_size, own, str(resolve_device(cfg.device)))


def get_runtime(cfg: RunConfig, capacity: int = 1) -> Runtime:
    """The cached runtime for ``cfg``'s model and mask settings (built on first use). ``capacity``: how many
    runtimes the process keeps (a multi-task run's nodes and server keep one per head shape: its task count);
    beyond it the least recently used goes."""
    key = runtime_key(cfg)
    with _LOCK:
        if key not in _RUNTIMES:
            while _RUNTIMES and len(_RUNTIMES) >= max(1, capacity):
                _RUNTIMES.pop(next(iter(_RUNTIMES)))  # one base model per process unless the run needs more
            _RUNTIMES[key] = build_runtime(cfg)
        _RUNTIMES[key] = _RUNTIMES.pop(key)  # most recently used last
        return _RUNTIMES[key]


def build_runtime(cfg: RunConfig) -> Runtime:
    """Load the base model, derive the method's tuner from its weights and install it (uncached).

    The mask is derived on the CPU (the same bytes on every node, whatever its device); then the
    model and the tuner's compute tensors move to ``device``. The mask itself stays on the CPU:
    merges, artifacts and checkpoints are made there.
    """
    device = resolve_device(cfg.device)  # an unavailable device is refused before any model loads
    method = get_method(cfg.method)
    n_labels = num_labels_for(cfg)
    task = task_of(cfg)  # the task picks the head: a classifier's, or a causal LM's (tied to the embeddings)
    base = load_base_model(cfg.model, n_labels, cfg.seed, kind=task.model_kind, problem_type=task.problem_type)
    digest = base_weights_digest(base.model, base.head_names)
    params = dict(base.model.named_parameters())
    head0 = {n: (params[n], params[n].detach().clone()) for n in base.head_names}  # before a tuner wraps the model
    tuner = method.build(base, cfg, digest)
    if device.type != "cpu":
        base.model.to(device)  # in place: the head's parameters in head0 stay the live ones
        tuner.to(device)
    return Runtime(base=base, tuner=tuner, num_labels=n_labels, method=method, head0=head0)


def client_partition(cfg: RunConfig, tokenizer, partition_id: int, num_partitions: int) -> Encoded:
    """Tokenized training partition of one client (cached per process, up to ``PARTITION_CACHE_BYTES``)."""
    key = (task_of(cfg).name, cfg.data_dir, cfg.eval_split, cfg.validation_fraction, cfg.partitioner,
           cfg.dirichlet_alpha, cfg.seed, cfg.max_length,
           cfg.model, partition_id, num_partitions)
    with _LOCK:
        if key in _PARTITIONS:
            _PARTITIONS.move_to_end(key)
            return _PARTITIONS[key]
        train = run_splits(cfg)["train"]
        part = partition(train, num_partitions, partition_id, cfg.partitioner, cfg.dirichlet_alpha, cfg.seed)
        _PARTITIONS[key] = encode(part, tokenizer, cfg.max_length, task=task_of(cfg))
        while len(_PARTITIONS) > 1 and sum(map(_encoded_bytes, _PARTITIONS.values())) > PARTITION_CACHE_BYTES:
            _PARTITIONS.popitem(last=False)
        return _PARTITIONS[key]


def client_partition_size(cfg: RunConfig, partition_id: int, num_partitions: int) -> int:
    """Rows of one client's training partition, counted without tokenizing it (the handshake's figure)."""
    train = run_splits(cfg)["train"]
    return partition_size(train, num_partitions, partition_id, cfg.partitioner, cfg.dirichlet_alpha, cfg.seed)


def test_split(cfg: RunConfig, tokenizer) -> Encoded:
    """Tokenized held-out split (first ``max-eval-examples`` rows if set; a causal-LM task's first prompts, all
    their references, or its first token blocks)."""
    test = held_out(run_splits(cfg), cfg.eval_split, cfg.data_dir)
    return encode(test, tokenizer, cfg.max_length, limit=cfg.max_eval_examples, task=task_of(cfg))


def extra_held_out(cfg: RunConfig, tokenizer) -> dict[str, Encoded]:
    """Where the run scores on ``test``: the task's further held-out splits the data has (MNLI's
    ``test_mismatched``), tokenized like ``test``; scored once, on the final state."""
    if cfg.eval_split != "test":
        return {}
    splits = run_splits(cfg)
    return {name: encode(splits[name], tokenizer, cfg.max_length, limit=cfg.max_eval_examples, task=task_of(cfg))
            for name in task_of(cfg).held_out[1:] if name in splits}
