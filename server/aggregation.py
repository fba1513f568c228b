"""Aggregation of aligned value vectors: pure functions over stacked (n, k) tensors.

Because every client's update is in the same mask order, aggregation is plain column-wise
arithmetic; no index bookkeeping, O(n*k) work, never anything of the model's size N.
A new aggregator is one function ``fn(deltas (n, k), weights (n,), **options) -> (k,)`` and one
registry line. The robust ones (median, trimmed mean) ignore the weights on purpose: a client's
claimed ``num-examples`` must not buy it influence over a coordinate's order statistics.
Server optimizers (FedAdam, FedYogi, FedAvgM), which need state, live in ``server/server_opt.py``.
"""

from __future__ import annotations

import math
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


def weighted_mean(deltas: torch.Tensor, weights: torch.Tensor, **_: float) -> torch.Tensor:
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


def coordinate_median(deltas: torch.Tensor, weights: torch.Tensor, **_: float) -> torch.Tensor:
    """Coordinate-wise median (Yin et al. 2018); even n averages the two middle values. (k,) float32."""
    _check(deltas, weights)
    n = deltas.shape[0]
    ordered = deltas.double().sort(dim=0).values
    mid = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
    return mid.float()


def trimmed_mean(deltas: torch.Tensor, weights: torch.Tensor, trim_fraction: float = 0.1,
                 **_: float) -> torch.Tensor:
    """Coordinate-wise trimmed mean: drop the ``floor(trim_fraction * n)`` lowest and highest per column.

    ``trim_fraction`` in [0, 0.5); with too few updates to trim anything it is the plain mean.
    """
    _check(deltas, weights)
    if not 0.0 <= trim_fraction < 0.5:
        raise AggregationError(f"trim-fraction must be in [0, 0.5), got {trim_fraction}")
    n = deltas.shape[0]
    cut = int(math.floor(trim_fraction * n))
    ordered = deltas.double().sort(dim=0).values
    return ordered[cut:n - cut].mean(dim=0).float()


Aggregator = Callable[..., torch.Tensor]

AGGREGATORS: dict[str, Aggregator] = {
    "fedavg": weighted_mean,
    "median": coordinate_median,
    "trimmed-mean": trimmed_mean,
}


def aggregate(name: str, deltas: torch.Tensor, weights: torch.Tensor, **options: float) -> torch.Tensor:
    """Apply the aggregator registered under ``name`` to stacked updates (``options`` e.g. trim_fraction)."""
    if name not in AGGREGATORS:
        raise AggregationError(f"unknown aggregator {name!r}; choose one of {sorted(AGGREGATORS)} (key 'aggregator')")
    return AGGREGATORS[name](deltas, weights, **options)
