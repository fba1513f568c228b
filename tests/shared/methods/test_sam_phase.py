"""Validation of sam selection-phase replies (pure, no Grid)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shared.methods.sam.phase import validate_stats
from wire.codec import MalformedUpdateError, encode_values
from shared.masks import MaskMismatchError
from wire.index import encode_sparse


def test_dense_statistics_decode_and_bad_ones_are_rejected():
    g = torch.randn(100)
    idx, vals = validate_stats(encode_values(g, "float32", "grad"), {"fingerprint": "r"}, "r", 100, "dense", 2**20)
    assert idx is None and torch.equal(vals, g)
    with pytest.raises(MaskMismatchError):
        validate_stats(encode_values(g, "float32", "grad"), {"fingerprint": "x"}, "r", 100, "dense", 2**20)
    with pytest.raises(MalformedUpdateError):  # wrong length
        validate_stats(encode_values(g[:99], "float32", "grad"), {"fingerprint": "r"}, "r", 100, "dense", 2**20)
    bad = encode_values(g, "float32", "grad")
    bad["grad"] = bad["grad"].copy()
    bad["grad"][3] = np.nan
    with pytest.raises(MalformedUpdateError):
        validate_stats(bad, {"fingerprint": "r"}, "r", 100, "dense", 2**20)
    with pytest.raises(MalformedUpdateError):  # over the size limit
        validate_stats(encode_values(g, "float32", "grad"), {"fingerprint": "r"}, "r", 100, "dense", 100)


def test_local_top_statistics_carry_positions():
    arrays = encode_sparse(torch.tensor([2, 5, 9]), torch.tensor([1.0, -2.0, 3.0]), "float32", "grad", 256)
    idx, vals = validate_stats(arrays, {"fingerprint": "r"}, "r", 10, "local-top", 2**20)
    assert idx.tolist() == [2, 5, 9] and vals.tolist() == [1.0, -2.0, 3.0]
    arrays["grad-index"] = np.array([2, 5, 10], dtype=np.int32)
    with pytest.raises(MalformedUpdateError):
        validate_stats(arrays, {"fingerprint": "r"}, "r", 10, "local-top", 2**20)
