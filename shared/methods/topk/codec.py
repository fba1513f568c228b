"""``topk``'s update codec: the index-carrying format a shared mask avoids.

Up: a client sends the ``upload_k`` largest-|delta| entries of its dense update: ``delta-index`` int32
(strictly increasing) and ``delta`` in ``value-dtype``, plus ``head-delta`` as usual.
Down: the server sends the global state's changed entries (every position where the global change
from the base is non-zero): ``values-index`` int32 and ``values``, plus ``head``. A client that was
never sampled before needs the whole change since the base, so the downlink grows with the union of
all accepted uploads (bounded by N); its bytes show it. Decoding returns dense (N,) vectors (an entry
a client did not send is 0 for that client), so every aggregator, DP and guard of the one server
path applies unchanged; the updates are not aligned, so secure summation cannot apply.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from wire.codec import MalformedUpdateError, decode_values, encode_values, expected_keys
from wire.index import INDEX_SUFFIX, decode_index, decode_sparse, encode_sparse, to_dense
from wire.protocol import DOWN_KEYS, UP_KEYS, UpdateCodec


def top_entries(delta: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (int64, ascending) and values of the ``k`` largest |delta| entries of a (N,) vector."""
    k = min(int(k), delta.numel())
    idx = torch.sort(torch.topk(delta.detach().abs(), k, sorted=False).indices).values
    return idx, delta.detach()[idx].float()


def changed_entries(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (int64, ascending) and values of the non-zero entries of a (N,) vector."""
    idx = torch.nonzero(values).flatten()
    return idx, values[idx].float()


def _strict_keys(arrays: Mapping[str, np.ndarray], sparse: str, dense: str, dtype: str) -> None:
    want = expected_keys(dtype, sparse) | {sparse + INDEX_SUFFIX} | expected_keys(dtype, dense)
    if set(arrays) != want:
        raise MalformedUpdateError(f"arrays are {sorted(arrays)[:5]}, a {dtype} topk message needs exactly "
                                   f"{sorted(want)}")


class TopkCodec(UpdateCodec):
    """Positions + values up (``upload_k`` of them) and down (the changed entries); dense after decoding."""

    aligned = False
    max_arrays = 5

    def __init__(self, upload_k: int):
        self.upload_k = int(upload_k)

    def encode_down(self, values: torch.Tensor, head: torch.Tensor, dtype: str, block: int) -> dict[str, np.ndarray]:
        idx, vals = changed_entries(values)
        arrays = encode_sparse(idx, vals, dtype, DOWN_KEYS[0], block)
        arrays.update(encode_values(head, dtype, DOWN_KEYS[1], block))
        return arrays

    def decode_down(self, arrays, dtype: str, k: int, h: int, block: int) -> tuple[torch.Tensor, torch.Tensor]:
        _strict_keys(arrays, DOWN_KEYS[0], DOWN_KEYS[1], dtype)
        idx, vals = decode_sparse(arrays, DOWN_KEYS[0], dtype, k, block)
        head = decode_values(arrays, dtype, h, DOWN_KEYS[1], block)
        return to_dense(idx, vals, k), head

    def encode_up(self, delta: torch.Tensor, head_delta: torch.Tensor, dtype: str, block: int) -> dict[str, np.ndarray]:
        idx, vals = top_entries(delta, self.upload_k)
        arrays = encode_sparse(idx, vals, dtype, UP_KEYS[0], block)
        arrays.update(encode_values(head_delta, dtype, UP_KEYS[1], block))
        return arrays

    def decode_up(self, arrays, dtype: str, k: int, h: int, block: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Exactly ``min(upload_k, N)`` strictly increasing int32 positions < N, their values, the head."""
        _strict_keys(arrays, UP_KEYS[0], UP_KEYS[1], dtype)
        idx = decode_index(arrays, UP_KEYS[0], k, min(self.upload_k, k))
        _, vals = decode_sparse(arrays, UP_KEYS[0], dtype, k, block, idx.numel())
        head = decode_values(arrays, dtype, h, UP_KEYS[1], block)
        return to_dense(idx, vals, k), head

    def payload_bytes(self, k: int, h: int, bytes_per_value: int) -> int:
        """``upload_k`` values with their int32 positions, and the head."""
        return self.upload_k * (int(bytes_per_value) + 4) + int(h) * int(bytes_per_value)
