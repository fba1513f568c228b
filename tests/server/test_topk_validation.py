"""Server-side validation of topk replies (pure, no Grid)."""

from __future__ import annotations

import pytest
import torch

from server.topk import validate_topk_reply
from server.validation import Expected
from shared.codec import MalformedUpdateError, encode_values
from shared.masks import MaskMismatchError
from shared.topk import encode_sparse, top_entries

EXP = Expected(fingerprint="fp", value_dtype="float32", k=200, head_size=6)


def _reply(k=10):
    idx, vals = top_entries(torch.randn(200), k)
    arrays = encode_sparse(idx, vals, "float32", "delta", 256)
    arrays.update(encode_values(torch.zeros(6), "float32", "head-delta"))
    return arrays, {"num-examples": 5, "train-loss": 0.3}, {"fingerprint": "fp"}, idx, vals


def test_valid_reply_decodes_positions_and_values():
    arrays, metrics, config, idx, vals = _reply()
    got_idx, update = validate_topk_reply(arrays, metrics, config, EXP, 10)
    assert torch.equal(got_idx, idx) and torch.equal(update.delta, vals)
    assert update.num_examples == 5 and update.head_delta.shape == (6,)


def test_wrong_count_fingerprint_or_missing_index_is_rejected():
    arrays, metrics, config, _, _ = _reply(k=9)
    with pytest.raises(MalformedUpdateError):
        validate_topk_reply(arrays, metrics, config, EXP, 10)
    arrays, metrics, _, _, _ = _reply()
    with pytest.raises(MaskMismatchError):
        validate_topk_reply(arrays, metrics, {"fingerprint": "other"}, EXP, 10)
    del arrays["delta-index"]
    with pytest.raises(MalformedUpdateError):
        validate_topk_reply(arrays, metrics, {"fingerprint": "fp"}, EXP, 10)
