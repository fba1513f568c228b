"""topk replies through the one server wall (``validate_reply`` with the method's codec; pure, no Grid)."""

from __future__ import annotations

import pytest
import torch

from server.validation import Expected, validate_reply
from shared.masks import MaskMismatchError
from shared.methods.topk.codec import TopkCodec, top_entries
from wire.codec import MalformedUpdateError, encode_values
from wire.index import encode_sparse, to_dense

EXP = Expected(fingerprint="fp", value_dtype="float32", k=200, head_size=6, codec=TopkCodec(10))


def _reply(k=10):
    idx, vals = top_entries(torch.randn(200), k)
    arrays = encode_sparse(idx, vals, "float32", "delta", 256)
    arrays.update(encode_values(torch.zeros(6), "float32", "head-delta"))
    return arrays, {"num-examples": 5, "train-loss": 0.3}, {"fingerprint": "fp"}, idx, vals


def test_valid_reply_decodes_to_the_dense_update():
    arrays, metrics, config, idx, vals = _reply()
    update = validate_reply(arrays, metrics, config, EXP)
    assert torch.equal(update.delta, to_dense(idx, vals, 200))
    assert update.num_examples == 5 and update.head_delta.shape == (6,)


def test_wrong_count_fingerprint_missing_index_or_extra_array_is_rejected():
    arrays, metrics, config, _, _ = _reply(k=9)
    with pytest.raises(MalformedUpdateError):
        validate_reply(arrays, metrics, config, EXP)
    arrays, metrics, _, _, _ = _reply()
    with pytest.raises(MaskMismatchError):
        validate_reply(arrays, metrics, {"fingerprint": "other"}, EXP)
    extra = dict(arrays, **{"values": arrays["delta"]})
    with pytest.raises(MalformedUpdateError):
        validate_reply(extra, metrics, {"fingerprint": "fp"}, EXP)
    del arrays["delta-index"]
    with pytest.raises(MalformedUpdateError):
        validate_reply(arrays, metrics, {"fingerprint": "fp"}, EXP)


def test_codec_round_trips_both_directions():
    codec, values = TopkCodec(10), torch.zeros(200)
    values[[3, 50, 199]] = torch.tensor([1.0, -2.0, 0.5])
    down = codec.encode_down(values, torch.ones(6), "float16", 256)
    got, head = codec.decode_down(down, "float16", 200, 6, 256)
    assert torch.equal(got, values) and torch.equal(head, torch.ones(6))
    assert codec.payload_bytes(200, 6, 4) == 10 * 8 + 6 * 4
