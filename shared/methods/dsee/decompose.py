"""Low-rank + sparse decomposition of a pre-trained matrix (GreBsmo-style), and DSEE's sparse positions.

DSEE (Chen et al.) places its sparse update S where a decomposition W ≈ L + S of the *pre-trained*
weight puts the largest |S|: the entries a rank-r approximation explains worst. We decompose with
Greedy Bilateral Smoothing (Zhou & Tao's GreBsmo) in its plain form: the rank of L grows greedily in
steps, L = U·V is refitted by bilateral QR updates on W − S, and S is the soft-thresholded residual.

Everything runs in float64 from a deterministic start (the residual's top singular vectors, no
random sketch) on one thread (BLAS reductions can change order with the thread count), so every
node that holds the same base bytes gets the same positions.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

THRESHOLD = 0.01  # soft threshold of S (DSEE's GreBsmo setting)
ITERATIONS = 100  # bilateral updates in total (DSEE's setting)


class DecompositionError(ValueError):
    """The decomposition cannot run on this input (not a matrix, bad rank or count)."""


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one intra-op thread, restoring the setting afterwards.

    Small (hundreds-wide) factorizations gain nothing from threads, and on a busy machine the
    thread pool's spinning makes them tens of times slower; one thread also fixes the summation order.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _soft_threshold(x: torch.Tensor, tau: float) -> torch.Tensor:
    return torch.sign(x) * torch.clamp(x.abs() - tau, min=0.0)


def _top_right_vectors(x: torch.Tensor, count: int, power: int = 4) -> torch.Tensor:
    """Approximately the ``count`` leading right singular vectors of ``x`` (m, n), as rows (count, n).

    Subspace iteration from a deterministic start (the ``count`` rows of ``x`` with the largest
    norms, ties to the lower row) instead of GreBsmo's random sketch: cheap and reproducible.
    """
    start = torch.sort(-x.norm(dim=1), stable=True).indices[:count]
    q, _ = torch.linalg.qr(x[start].T)  # (n, count)
    for _ in range(power):
        q, _ = torch.linalg.qr(x.T @ (x @ q))
    return q.T


def lowrank_sparse_decompose(weight: torch.Tensor, rank: int, tau: float = THRESHOLD,
                             iterations: int = ITERATIONS, step: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``weight`` (m, n) into low-rank L (rank <= ``rank``) and sparse S, both float64 (m, n).

    The rank grows by ``step`` (default ``max(1, rank // 4)``) at evenly spaced iterations; each
    iteration refits U (m, r) and V (r, n) on W − S by one bilateral QR update and sets
    S = soft_threshold(W − U·V, tau).
    """
    if weight.dim() != 2:
        raise DecompositionError(f"expected a matrix, got shape {tuple(weight.shape)}")
    if not 1 <= rank <= min(weight.shape):
        raise DecompositionError(f"rank {rank} must be in 1..{min(weight.shape)} for shape {tuple(weight.shape)}")
    x = weight.detach().to(torch.float64)
    step = step or max(1, rank // 4)
    stages = -(-rank // step)  # ceil: how many times the rank grows
    per_stage = max(1, iterations // stages)
    s = torch.zeros_like(x)
    v = torch.zeros(0, x.shape[1], dtype=torch.float64)
    low = torch.zeros_like(x)
    for it in range(max(iterations, stages)):
        if it % per_stage == 0 and v.shape[0] < rank:  # greedy step: add the residual's top directions
            grow = min(step, rank - v.shape[0])
            v = torch.cat([v, _top_right_vectors(x - low - s, grow)])
        r_mat = x - s
        u, _ = torch.linalg.qr(r_mat @ v.T)  # (m, r) orthonormal basis of the column space
        v = u.T @ r_mat  # (r, n)
        low = u @ v
        s = _soft_threshold(x - low, tau)
    return low, s


def top_abs_positions(s: torch.Tensor, count: int) -> torch.Tensor:
    """Sorted flat indices of the ``count`` largest |s|; ties go to the lower index (deterministic)."""
    if not 0 < count <= s.numel():
        raise DecompositionError(f"cannot keep {count} positions of a {s.numel()}-entry matrix")
    order = torch.sort(-s.abs().flatten(), stable=True).indices[:count]
    return torch.sort(order).values


def sparse_positions(weight: torch.Tensor, rank: int, count: int, tau: float = THRESHOLD,
                     iterations: int = ITERATIONS) -> torch.Tensor:
    """DSEE's sparse support for ``weight``: the ``count`` largest-|S| entries of its decomposition.

    Returns int64 flat indices into ``weight`` (row-major), sorted ascending, shape (count,).
    """
    with single_thread():
        _, s = lowrank_sparse_decompose(weight, rank, tau, iterations)
    return top_abs_positions(s, count)
