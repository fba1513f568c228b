"""The index codec: int32 positions travelling beside a value vector (what a shared mask avoids).

``{prefix}-index``: int32 (n,), strictly increasing positions; ``{prefix}`` (+ ``.scales``): their
values in any value codec. Used by ``topk``'s updates and ``sam``'s selection phase.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from wire.codec import MalformedUpdateError, decode_values, encode_values

INDEX_SUFFIX = "-index"


def encode_sparse(idx: torch.Tensor, vals: torch.Tensor, dtype: str, prefix: str, block: int) -> dict[str, np.ndarray]:
    """``{prefix}-index``: int32 positions, ``{prefix}`` (+ scales): the values in ``dtype``."""
    if idx.numel() and int(idx.max()) >= 2**31:
        raise MalformedUpdateError("positions beyond int32; the index codec needs N < 2^31")
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
