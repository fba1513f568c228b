"""The index-carrying wire format of ``topk`` (what a shared mask avoids), as pure functions.

Up: a client sends the k largest-|delta| entries of its dense update: ``delta-index`` int32 (k,)
(strictly increasing) and ``delta`` (k,) in ``value-dtype``, plus ``head-delta`` as usual.
Down: the server sends the global state's changed entries (every position where the global change
from the base is non-zero): ``values-index`` int32 (nnz,) and ``values`` (nnz,), plus ``head``.
A client that was never sampled before needs the whole change since the base, so the downlink grows
with the union of all accepted uploads (bounded by N); its bytes show it.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from shared.codec import MalformedUpdateError, decode_values, encode_values

INDEX_SUFFIX = "-index"


def top_entries(delta: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (int64, ascending) and values of the ``k`` largest |delta| entries of a (N,) vector."""
    k = min(int(k), delta.numel())
    idx = torch.sort(torch.topk(delta.detach().abs(), k, sorted=False).indices).values
    return idx, delta.detach()[idx].float()


def changed_entries(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (int64, ascending) and values of the non-zero entries of a (N,) vector."""
    idx = torch.nonzero(values).flatten()
    return idx, values[idx].float()


def encode_sparse(idx: torch.Tensor, vals: torch.Tensor, dtype: str, prefix: str, block: int) -> dict[str, np.ndarray]:
    """``{prefix}-index``: int32 positions, ``{prefix}`` (+ scales): the values in ``dtype``."""
    if idx.numel() and int(idx.max()) >= 2**31:
        raise MalformedUpdateError("positions beyond int32; the topk wire format needs N < 2^31")
    arrays = encode_values(vals, dtype, prefix, block)
    arrays[prefix + INDEX_SUFFIX] = idx.to(torch.int32).numpy().copy()
    return arrays


def decode_index(arrays: Mapping[str, np.ndarray], prefix: str, n: int, length: int | None = None) -> torch.Tensor:
    """Strictly decode ``{prefix}-index``: int32, 1-D, strictly increasing, within [0, n), optional exact length."""
    key = prefix + INDEX_SUFFIX
    arr = arrays.get(key)
    if not isinstance(arr, np.ndarray) or arr.dtype != np.int32 or arr.ndim != 1:
        raise MalformedUpdateError(f"array '{key}' must be a 1-D int32 array of positions")
    if length is not None and arr.shape[0] != length:
        raise MalformedUpdateError(f"array '{key}' has {arr.shape[0]} positions, expected exactly {length}")
    idx = torch.from_numpy(arr.astype(np.int64))
    if idx.numel() and (int(idx[0]) < 0 or int(idx[-1]) >= n or bool((idx[1:] <= idx[:-1]).any())):
        raise MalformedUpdateError(f"array '{key}' must hold strictly increasing positions in [0, {n})")
    return idx


def decode_sparse(arrays: Mapping[str, np.ndarray], prefix: str, dtype: str, n: int, block: int,
                  length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions and float32 values under ``prefix``; raises :class:`MalformedUpdateError` on any defect."""
    idx = decode_index(arrays, prefix, n, length)
    vals = decode_values({k: v for k, v in arrays.items() if k != prefix + INDEX_SUFFIX}, dtype, idx.numel(),
                         prefix, block)
    return idx, vals


def to_dense(idx: torch.Tensor, vals: torch.Tensor, n: int) -> torch.Tensor:
    """A (n,) float32 vector with ``vals`` at ``idx`` and zeros elsewhere."""
    out = torch.zeros(n)
    out[idx] = vals.float()
    return out


def scatter_mean(updates: list[tuple[torch.Tensor, torch.Tensor]], weights: torch.Tensor, n: int) -> torch.Tensor:
    """Weighted FedAvg of sparse updates: sum_i w_i scatter(idx_i, vals_i) / sum_i w_i, float64 sums, (n,) float32.

    An entry a client did not send counts as zero for that client (its update is its top-k only).
    """
    w = weights.double() / weights.double().sum()
    acc = torch.zeros(n, dtype=torch.float64)
    for (idx, vals), wi in zip(updates, w):
        acc.index_add_(0, idx, vals.double() * wi)
    return acc.float()
