"""Aggregation of aligned value vectors: pure functions over stacked (n, k) tensors.

Because every client's update is in the same mask order, aggregation is plain column-wise
arithmetic; no index bookkeeping, O(n*k) work, never anything of the model's size N.
A new aggregator is one function ``fn(deltas (n, k), weights (n,)) -> (k,)`` and one registry line.
"""

from __future__ import annotations

from typing import Callable

import torch


class AggregationError(ValueError):
    """Aggregation inputs are inconsistent (shapes, weights)."""


def _check(deltas: torch.Tensor, weights: torch.Tensor) -> None:
    if deltas.dim() != 2 or deltas.shape[0] == 0:
        raise AggregationError(f"need a non-empty (n, k) stack of updates, got shape {tuple(deltas.shape)}")
    if weights.shape != (deltas.shape[0],):
        raise AggregationError(f"need one weight per update: {tuple(weights.shape)} vs n={deltas.shape[0]}")
    if not torch.isfinite(weights).all() or (weights < 0).any() or float(weights.sum()) <= 0:
        raise AggregationError("weights must be finite, non-negative and not all zero")


def weighted_mean(deltas: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """FedAvg: sum_i w_i * delta_i / sum_i w_i, computed in float64 for order-independent sums."""
    _check(deltas, weights)
    w = weights.double() / weights.double().sum()
    n, k = deltas.shape
    out = torch.empty(k, dtype=torch.float32)
    step = max(256, _CHUNK_ELEMENTS // n)  # cache-sized float64 temporaries (~8 MB), never n*k of them
    for s in range(0, k, step):
        out[s:s + step] = torch.mv(deltas[:, s:s + step].double().t(), w)
    return out


_CHUNK_ELEMENTS = 1 << 20


Aggregator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

AGGREGATORS: dict[str, Aggregator] = {
    "fedavg": weighted_mean,
}


def aggregate(name: str, deltas: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Apply the aggregator registered under ``name`` to stacked updates."""
    if name not in AGGREGATORS:
        raise AggregationError(f"unknown aggregator {name!r}; choose one of {sorted(AGGREGATORS)} (key 'aggregator')")
    return AGGREGATORS[name](deltas, weights)
