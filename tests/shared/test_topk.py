"""topk wire format: top entries, encode/decode with int32 indices, strict index checks, scatter-mean."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shared.codec import MalformedUpdateError
from shared.topk import changed_entries, decode_sparse, encode_sparse, scatter_mean, to_dense, top_entries


def test_top_entries_are_the_largest_magnitudes_in_ascending_position_order():
    delta = torch.tensor([0.1, -5.0, 0.0, 3.0, -0.2, 4.0])
    idx, vals = top_entries(delta, 3)
    assert idx.tolist() == [1, 3, 5]
    assert vals.tolist() == [-5.0, 3.0, 4.0]


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


def test_scatter_mean_is_a_weighted_average_with_missing_entries_as_zero():
    a = (torch.tensor([0, 2]), torch.tensor([1.0, 2.0]))
    b = (torch.tensor([2, 3]), torch.tensor([4.0, 8.0]))
    out = scatter_mean([a, b], torch.tensor([1.0, 3.0]), 5)
    assert torch.allclose(out, torch.tensor([0.25, 0.0, 0.5 + 3.0, 6.0, 0.0]))


def test_changed_entries_and_dense_round_trip():
    v = torch.tensor([0.0, 1.5, 0.0, -2.0])
    idx, vals = changed_entries(v)
    assert idx.tolist() == [1, 3]
    assert torch.equal(to_dense(idx, vals, 4), v)
