"""The index codec: int32 positions beside values, strict checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shared.methods.topk.codec import top_entries
from wire.codec import MalformedUpdateError
from wire.index import decode_sparse, encode_sparse


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "int8"])
def test_encode_decode_round_trip_carries_int32_indices(dtype):
    delta = torch.randn(1000)
    idx, vals = top_entries(delta, 50)
    arrays = encode_sparse(idx, vals, dtype, "delta", 16)
    assert arrays["delta-index"].dtype == np.int32 and arrays["delta-index"].shape == (50,)
    got_idx, got_vals = decode_sparse(arrays, "delta", dtype, 1000, 16, length=50)
    assert torch.equal(got_idx, idx)
    tol = {"float32": 0, "float16": 1e-3, "bfloat16": 2e-2, "int8": 2e-2}[dtype]
    assert torch.allclose(got_vals, vals, atol=tol * float(vals.abs().max()) + 1e-7)
    index_bytes = arrays["delta-index"].nbytes
    assert index_bytes == 4 * 50  # the overhead a shared mask avoids


@pytest.mark.parametrize("bad", [
    np.array([3, 1, 7], dtype=np.int32),        # not increasing
    np.array([1, 1, 7], dtype=np.int32),        # duplicate
    np.array([1, 2, 100], dtype=np.int32),      # out of range
    np.array([-1, 2, 7], dtype=np.int32),       # negative
    np.array([1, 2, 7], dtype=np.int64),        # wrong dtype
    np.array([1, 2], dtype=np.int32),           # wrong length
])
def test_malformed_indices_are_rejected(bad):
    arrays = encode_sparse(torch.tensor([1, 2, 7]), torch.ones(3), "float32", "delta", 256)
    arrays["delta-index"] = bad
    with pytest.raises(MalformedUpdateError):
        decode_sparse(arrays, "delta", "float32", 100, 256, length=3)
