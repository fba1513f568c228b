"""Aggregation of aligned value vectors: pure functions over stacked (n, k) tensors.

Because every client's update is in the same mask order, aggregation is plain column-wise
arithmetic; no index bookkeeping, O(n*k) work, never anything of the model's size N.
A new aggregator is one function ``fn(deltas (n, k), weights (n,), **options) -> (k,)`` and one
registry line. The robust ones (median, trimmed mean, centered clipping, Multi-Krum) ignore the
weights on purpose: a client's claimed ``num-examples`` must not buy it influence.
Coordinate-wise rules (median, trimmed mean) fall to attacks that stay inside every coordinate's
honest range ("a little is enough", inner-product manipulation); centered clipping and Multi-Krum
look at whole vectors (docs/robustness.md measures all of them against real attacks).
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


def trim_count(n: int, trim_fraction: float) -> int:
    """Replies cut at each end of a column: ``max(1, floor(trim_fraction * n))`` when ``trim_fraction`` > 0.

    At least one per side whenever trimming is asked for (floor(0.1 * 5) = 0 would trim nothing);
    with fewer than 3 replies nothing can be cut and still leave a value, so the count is 0.
    """
    if trim_fraction <= 0 or n < 3:
        return 0
    return min(max(1, int(math.floor(trim_fraction * n))), (n - 1) // 2)


def trimmed_mean(deltas: torch.Tensor, weights: torch.Tensor, trim_fraction: float = 0.1,
                 **_: float) -> torch.Tensor:
    """Coordinate-wise trimmed mean: drop the :func:`trim_count` lowest and highest per column. (k,) float32.

    ``trim_fraction`` in [0, 0.5). With 1 or 2 replies it is their plain (unweighted) mean, which is
    also their median; set ``min-train-replies`` >= 3 so that a round never aggregates untrimmed.
    """
    _check(deltas, weights)
    if not 0.0 <= trim_fraction < 0.5:
        raise AggregationError(f"trim-fraction must be in [0, 0.5), got {trim_fraction}")
    n = deltas.shape[0]
    cut = trim_count(n, trim_fraction)
    ordered = deltas.double().sort(dim=0).values
    return ordered[cut:n - cut].mean(dim=0).float()


def _block_width(per_column: int) -> int:
    """Columns per block so that float64 temporaries of ``per_column`` values a column stay ~8 MB."""
    return max(1, _CHUNK_ELEMENTS // max(1, per_column))


def _distances_to(deltas: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """L2 distance of every row of (n, k) ``deltas`` to the (k,) ``center``; (n,) float64."""
    n, k = deltas.shape
    sq = torch.zeros(n, dtype=torch.float64)
    step = _block_width(n)
    for s in range(0, k, step):
        sq += (deltas[:, s:s + step].double() - center[s:s + step]).square().sum(dim=1)
    return sq.sqrt()


def centered_clip(deltas: torch.Tensor, start: torch.Tensor, tau: float, iterations: int) -> torch.Tensor:
    """``iterations`` times v <- v + mean_i clip_tau(x_i - v), from ``start`` (k,); (k,) float64.

    clip_tau(z) = z * min(1, tau / ||z||): a reply moves the centre by at most tau / n per iteration.
    """
    v = start.double().clone()
    n, k = deltas.shape
    for _ in range(iterations):
        dist = _distances_to(deltas, v)
        scale = torch.where(dist > tau, tau / dist.clamp(min=1e-300), torch.ones_like(dist)) / n
        step = _block_width(n)
        for s in range(0, k, step):  # v += sum_i scale_i * (x_i - v), block by block
            block = deltas[:, s:s + step].double()
            v[s:s + step] += torch.mv(block.t(), scale) - v[s:s + step] * scale.sum()
    return v


def centered_clipping(deltas: torch.Tensor, weights: torch.Tensor, cc_tau: float = 0.0, cc_iterations: int = 3,
                      **_: float) -> torch.Tensor:
    """Centered clipping (Karimireddy, He, Jaggi, ICML 2021) from the round's coordinate median. (k,) float32.

    ``cc_tau`` > 0 is the clipping radius; 0 = adaptive: the (lower) median distance of the replies to the
    start, so about half of them are clipped in the first iteration. O(n*k) per iteration.
    """
    _check(deltas, weights)
    if cc_tau < 0 or cc_iterations < 1:
        raise AggregationError(f"need cc-tau >= 0 and cc-iterations >= 1, got {cc_tau} and {cc_iterations}")
    start = coordinate_median(deltas, weights).double()
    tau = float(cc_tau) if cc_tau > 0 else float(_distances_to(deltas, start).median())
    if tau <= 0:  # every reply equals the median: nothing to clip toward
        return start.float()
    return centered_clip(deltas, start, tau, int(cc_iterations)).float()


def pairwise_sq_distances(deltas: torch.Tensor) -> torch.Tensor:
    """||x_i - x_j||^2 for every pair of rows, from exact differences (no Gram cancellation); (n, n) float64."""
    n, k = deltas.shape
    out = torch.zeros(n, n, dtype=torch.float64)
    step = _block_width(n * n)
    for s in range(0, k, step):
        block = deltas[:, s:s + step].double()
        out += (block[:, None, :] - block[None, :, :]).square().sum(dim=2)
    return out


def krum_scores(deltas: torch.Tensor, f: int) -> torch.Tensor:
    """Krum score of each row: the sum of its squared distances to its n - f - 2 nearest others; (n,) float64."""
    n = deltas.shape[0]
    d = pairwise_sq_distances(deltas)
    d.fill_diagonal_(float("inf"))  # a reply is not its own neighbour
    return d.sort(dim=1).values[:, :n - f - 2].sum(dim=1)


def multi_krum(deltas: torch.Tensor, weights: torch.Tensor, krum_f: int = 1, krum_m: int = 0,
               **_: float) -> torch.Tensor:
    """Multi-Krum (Blanchard et al., NeurIPS 2017): the plain mean of the m lowest Krum scores. (k,) float32.

    ``krum_f`` attackers assumed (needs n > 2f + 2); ``krum_m`` replies averaged, 0 = n - f, and never
    more than n - f. Ties in the score go to the earlier row. O(n^2 * k).
    """
    _check(deltas, weights)
    n, f = deltas.shape[0], int(krum_f)
    if f < 0 or krum_m < 0:
        raise AggregationError(f"need krum-f >= 0 and krum-m >= 0, got {krum_f} and {krum_m}")
    if n <= 2 * f + 2:
        raise AggregationError(f"multi-krum with krum-f={f} needs more than {2 * f + 2} replies, got {n}; "
                               f"lower krum-f to {max(0, (n - 3) // 2)} or raise min-train-replies/fraction-train")
    m = n - f if krum_m == 0 else min(int(krum_m), n - f)
    order = torch.sort(krum_scores(deltas, f), stable=True).indices[:m]
    chosen = torch.zeros(n, dtype=torch.float64)
    chosen[order] = 1.0
    return weighted_mean(deltas, chosen)


Aggregator = Callable[..., torch.Tensor]

AGGREGATORS: dict[str, Aggregator] = {
    "fedavg": weighted_mean,
    "median": coordinate_median,
    "trimmed-mean": trimmed_mean,
    "centered-clipping": centered_clipping,
    "multi-krum": multi_krum,
}


def aggregate(name: str, deltas: torch.Tensor, weights: torch.Tensor, **options: float) -> torch.Tensor:
    """Apply the aggregator registered under ``name`` to stacked updates (``options`` e.g. trim_fraction)."""
    if name not in AGGREGATORS:
        raise AggregationError(f"unknown aggregator {name!r}; choose one of {sorted(AGGREGATORS)} (key 'aggregator')")
    return AGGREGATORS[name](deltas, weights, **options)
