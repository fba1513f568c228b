"""Reply validation: wrong fingerprint / length / NaN / dtype are rejected and the state is unchanged."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from flwr.app import Metadata, RecordDict
from flwr.app.message import make_message

from server.strategy import GlobalState, SparseStrategy
from server.validation import Expected, validate_reply
from wire.records import to_recorddict
from wire.codec import MalformedUpdateError
from shared.config import RunConfig
from shared.masks import MaskMismatchError
from wire.protocol import UP_KEYS, encode_pair

K, H = 50, 6
EXP = Expected(fingerprint="f" * 64, value_dtype="float16", k=K, head_size=H)


def good_parts(scale: float = 1.0, n: int = 10):
    arrays = encode_pair(torch.full((K,), scale), torch.full((H,), scale), UP_KEYS, "float16", 256)
    return arrays, {"num-examples": n, "train-loss": 0.5}, {"fingerprint": EXP.fingerprint}


def reply(node: int, arrays, metrics, config) -> "Message":
    meta = Metadata(run_id=1, message_id=f"m{node}", src_node_id=node, dst_node_id=0, reply_to_message_id="x",
                    group_id="1", created_at=time.time(), ttl=60.0, message_type="train")
    return make_message(meta, to_recorddict(arrays, config, metrics))


def test_good_reply_decodes():
    upd = validate_reply(*good_parts(2.0), EXP)
    assert torch.equal(upd.delta, torch.full((K,), 2.0)) and upd.num_examples == 10


def _mutations():
    a, m, c = good_parts()
    yield "fingerprint", (a, m, {"fingerprint": "0" * 64}), MaskMismatchError
    yield "length", ({**a, "delta": a["delta"][:-1]}, m, c), MalformedUpdateError
    yield "nan", ({**a, "delta": np.full(K, np.nan, np.float16)}, m, c), MalformedUpdateError
    yield "dtype", ({**a, "delta": a["delta"].astype(np.float32)}, m, c), MalformedUpdateError
    yield "missing", ({"delta": a["delta"]}, m, c), MalformedUpdateError
    yield "extra", ({**a, "indices": np.arange(K, dtype=np.int32)}, m, c), MalformedUpdateError
    yield "num-examples", (a, {**m, "num-examples": 0}, c), MalformedUpdateError
    yield "huge", (a, {**m, "num-examples": 10**12}, c), MalformedUpdateError


@pytest.mark.parametrize("name,parts,err", list(_mutations()), ids=[x[0] for x in _mutations()])
def test_bad_replies_are_rejected_with_a_reason(name, parts, err):
    with pytest.raises(err):
        validate_reply(*parts, EXP)


def _strategy() -> SparseStrategy:
    st = SparseStrategy(RunConfig(value_dtype="float16"), GlobalState(torch.zeros(K), torch.zeros(H)), EXP)
    st.partitions = {11: 0, 12: 1, 13: 2}
    return st


def test_strategy_drops_bad_replies_and_averages_the_rest():
    st = _strategy()
    a, m, c = good_parts(1.0, n=10)
    bad = dict(a, delta=np.full(K, np.inf, np.float16))
    st.aggregate_train(1, [reply(11, a, m, c), reply(12, bad, m, c), reply(13, *good_parts(3.0, n=30))])
    assert st.current.replied == 2 and st.current.rejected == 1
    assert "partition 1" in st.current.reasons[0]
    assert torch.allclose(st.state.values, torch.full((K,), 2.5))  # (1*10 + 3*30) / 40


def test_all_bad_replies_leave_the_global_state_unchanged():
    st = _strategy()
    before = st.state
    a, m, c = good_parts()
    replies = [reply(11, a, m, {"fingerprint": "x"}), reply(12, {"delta": a["delta"]}, m, c),
               reply(13, a, {"num-examples": -5}, c)]
    assert st.aggregate_train(1, replies) == (None, None)
    assert st.state is before and st.current.rejected == 3 and st.current.replied == 0
