"""Inference cost of a model: measured forward time and counted FLOPs on a fixed synthetic batch.

Used to compare a merged or pruned model with its base. Timings are wall-clock medians on this
CPU (noisy on a shared machine); FLOPs come from torch's ``FlopCounterMode`` (the dense ops that
actually run) plus a count of the linear layers' non-zero weights (what sparse kernels could skip).
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from shared.architectures import PROJECTIONS


def synthetic_batch(vocab_size: int, batch_size: int = 32, length: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    """``input_ids`` (batch, length) int64 drawn from a seeded generator, all-ones ``attention_mask``."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, max(1001, vocab_size), (batch_size, length), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@torch.inference_mode()
def forward_seconds(models: dict[str, nn.Module], batch: dict[str, torch.Tensor], repeats: int = 7,
                    warmup: int = 2) -> dict[str, float]:
    """Median wall-clock seconds of one eval-mode forward pass over ``batch``, per named model.

    The models take turns within every repetition, so load changes on a shared machine hit them alike.
    """
    modes = {name: m.training for name, m in models.items()}
    for m in models.values():
        m.eval()
    times: dict[str, list[float]] = {name: [] for name in models}
    try:
        for i in range(warmup + repeats):
            for name, m in models.items():
                t0 = time.perf_counter()
                m(**batch)
                if i >= warmup:
                    times[name].append(time.perf_counter() - t0)
    finally:
        for name, m in models.items():
            m.train(modes[name])
    return {name: statistics.median(t) for name, t in times.items()}


@torch.inference_mode()
def count_flops(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, int]:
    """FLOPs of one forward pass over ``batch``.

    ``dense``: every op as executed (FlopCounterMode). ``linear_dense`` / ``linear_nonzero``: the
    ``nn.Linear`` (and GPT-2 ``Conv1D``) layers' share, counting all weights or only the non-zero ones.
    ``sparse_aware``: dense − linear_dense + linear_nonzero, i.e. what skipping zero weights costs.
    """
    linear = {"dense": 0, "nonzero": 0}

    def hook(mod: nn.Module, inputs, _output) -> None:
        tokens = inputs[0].numel() // inputs[0].shape[-1]
        linear["dense"] += 2 * tokens * mod.weight.numel()
        linear["nonzero"] += 2 * tokens * int(torch.count_nonzero(mod.weight))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, PROJECTIONS)]
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(**batch)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    dense = int(counter.get_total_flops())
    return {"dense": dense, "linear_dense": linear["dense"], "linear_nonzero": linear["nonzero"],
            "sparse_aware": dense - linear["dense"] + linear["nonzero"]}


def num_params(model: nn.Module) -> int:
    """Number of parameter entries."""
    return sum(p.numel() for p in model.parameters())
