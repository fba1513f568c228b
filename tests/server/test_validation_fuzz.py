"""Property-based fuzzing of the reply wall: >= 10,000 generated replies, none crashes it, none slips in.

Three properties:
1. ``validate_reply`` on arbitrary arrays/metrics/config either raises one of its named errors or
   returns an update that meets the spec (shapes, finite, num-examples in range).
2. ``SparseStrategy.aggregate_train`` on real ``flwr.app.Message`` replies that are each broken in
   one of many ways rejects every one, counts it, never raises, and leaves the global state
   bit-for-bit unchanged.
3. Mixed good and bad replies: exactly the good ones are aggregated (the state equals the update
   computed from the good replies alone).
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from server.server_opt import server_step
from server.strategy import GlobalState, SparseStrategy
from server.validation import MAX_NUM_EXAMPLES, validate_reply
from wire.codec import MalformedUpdateError
from shared.config import RunConfig
from shared.masks import MaskMismatchError
from wire.protocol import UP_KEYS, Update
from tests.server.replies import FP, H, K, expected, good_parts, message

DTYPES = ("float32", "float16", "bfloat16", "int8")
FUZZ = settings(deadline=None, suppress_health_check=list(HealthCheck), database=None)
COUNT = {"pure": 0, "bad-msgs": 0, "mixed": 0, "replies": 0}


def _corrupt_values(arrays: dict, key: str, dtype: str, pos: int, kind: str) -> dict:
    out = dict(arrays)
    if dtype == "int8":
        target = f"{key}.scales" if kind != "int8-min" else key
        arr = out[target].copy()
        arr[pos % arr.size] = {"nan": np.nan, "inf": np.inf, "neg": -1.0, "int8-min": -128}[kind]
    else:
        arr = out[key].copy()
        if dtype == "bfloat16":
            arr[pos % arr.size] = {"nan": 0x7FC0, "inf": 0x7F80, "neg": 0xFF80, "int8-min": 0x7FC1}[kind]
        else:
            arr[pos % arr.size] = {"nan": np.nan, "inf": np.inf, "neg": -np.inf, "int8-min": np.nan}[kind]
    out[target if dtype == "int8" else key] = arr
    return out


MUTATIONS = ("fingerprint", "no-fingerprint", "fp-type", "num-zero", "num-neg", "num-huge", "num-nan", "num-frac",
             "num-missing", "loss-nan", "truncate", "extend", "dtype", "two-d", "nonfinite", "extra-key",
             "missing-key", "no-arrays", "no-config", "swap-records", "random-bytes", "oversize", "error", "empty")


@st.composite
def bad_reply(draw, node: int, dtype: str) -> Message:
    """A real Message broken in exactly one drawn way (each way is invalid by the protocol)."""
    arrays, metrics, config = good_parts(dtype, draw(st.integers(0, 2**16)))
    how = draw(st.sampled_from(MUTATIONS))
    key = draw(st.sampled_from(UP_KEYS))
    big = draw(st.integers(MAX_NUM_EXAMPLES + 1, 2**62))
    if how == "fingerprint":
        config["fingerprint"] = draw(st.text(max_size=70).filter(lambda s: s != FP))
    elif how == "no-fingerprint":
        config = {}
    elif how == "fp-type":
        config["fingerprint"] = draw(st.one_of(st.integers(-2**63, 2**63 - 1), st.binary(max_size=64),
                                                    st.lists(st.integers(-9, 9))))
    elif how.startswith("num-"):
        vals = {"num-zero": 0, "num-neg": -draw(st.integers(1, 2**40)), "num-huge": big, "num-nan": float("nan"),
                "num-frac": draw(st.floats(0.01, 0.99)) + draw(st.integers(0, 99))}
        if how == "num-missing":
            del metrics["num-examples"]
        else:
            metrics["num-examples"] = vals[how]
    elif how == "loss-nan":
        metrics["train-loss"] = draw(st.sampled_from([float("nan"), float("inf"), -float("inf")]))
    elif how in ("truncate", "extend"):
        arr = arrays[key]
        cut = draw(st.integers(0, arr.size - 1))
        arrays[key] = arr[:cut].copy() if how == "truncate" else np.concatenate([arr, arr[: draw(st.integers(1, 9))]])
    elif how == "dtype":
        other = draw(st.sampled_from([d for d in ("float64", "float32", "float16", "int8", "int32", "uint16", "uint8")
                                      if np.dtype(d) != arrays[key].dtype]))
        arrays[key] = arrays[key].astype(other)
    elif how == "two-d":
        arrays[key] = arrays[key].reshape(-1, 2) if arrays[key].size % 2 == 0 else arrays[key][None, :]
    elif how == "nonfinite":
        arrays = _corrupt_values(arrays, key, dtype, draw(st.integers(0, 99)),
                                 draw(st.sampled_from(["nan", "inf", "neg", "int8-min"])))
    elif how == "extra-key":
        arrays[draw(st.sampled_from(["indices", "delta.extra", "head", "x" * draw(st.integers(1, 30))]))] = \
            np.zeros(draw(st.integers(1, 8)), np.float32)
    elif how == "missing-key":
        del arrays[key]
    elif how == "no-arrays":
        arrays = None
    elif how == "no-config":
        config = None
    elif how == "random-bytes":
        arrays[key] = Array(dtype="float32", shape=(K,), stype="numpy.ndarray", data=draw(st.binary(max_size=200)))
    elif how == "oversize":
        arrays[key] = np.zeros(draw(st.integers(1025, 5000)), arrays[key].dtype)
    elif how == "error":
        return message(node, None, None, None, error=draw(st.text(max_size=50)))
    elif how == "empty":
        arrays, metrics, config = None, None, None
    return message(node, arrays, metrics, config, swap_records=how == "swap-records")


def make_strategy(dtype: str, nodes: int, aggregator: str = "fedavg") -> SparseStrategy:
    g = torch.Generator().manual_seed(1)
    state = GlobalState(torch.randn(K, generator=g), torch.randn(H, generator=g))
    strategy = SparseStrategy(RunConfig(aggregator=aggregator, min_train_replies=1), state, expected(dtype))
    strategy.partitions = {100 + i: i for i in range(nodes)}
    return strategy


def test_fuzz_pure_validation_never_accepts_off_spec():
    keys = st.sampled_from(["delta", "head-delta", "delta.scales", "head-delta.scales", "x"]) | st.text(max_size=8)
    array = hnp.arrays(hnp.scalar_dtypes(), hnp.array_shapes(min_dims=0, max_dims=2, max_side=20))
    anything = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8),
                         st.lists(st.integers(), max_size=3))

    @settings(FUZZ, max_examples=4000)
    @given(dtype=st.sampled_from(DTYPES), arrays=st.dictionaries(keys, array, max_size=5),
           n=anything | st.integers(-5, 5), loss=anything, fp=st.sampled_from([FP, None, "x", 3]))
    def run(dtype, arrays, n, loss, fp):
        COUNT["pure"] += 1
        try:
            up = validate_reply(arrays, {"num-examples": n, "train-loss": loss}, {"fingerprint": fp}, expected(dtype))
        except (MalformedUpdateError, MaskMismatchError):
            return
        assert isinstance(up, Update) and fp == FP  # accepted: it must meet the whole spec
        assert up.delta.shape == (K,) and up.head_delta.shape == (H,)
        assert torch.isfinite(up.delta).all() and torch.isfinite(up.head_delta).all()
        assert 0 < up.num_examples <= MAX_NUM_EXAMPLES and np.isfinite(up.train_loss)

    run()
    assert COUNT["pure"] >= 4000


def test_fuzz_all_bad_replies_leave_state_unchanged():
    @settings(FUZZ, max_examples=5000)
    @given(data=st.data(), dtype=st.sampled_from(DTYPES), n=st.integers(1, 4),
           aggregator=st.sampled_from(["fedavg", "median", "trimmed-mean", "fedadam"]))
    def run(data, dtype, n, aggregator):
        COUNT["bad-msgs"] += 1
        COUNT["replies"] += n
        strategy = make_strategy(dtype, n, aggregator)
        before = GlobalState(strategy.state.values.clone(), strategy.state.head.clone())
        replies = [data.draw(bad_reply(100 + i, dtype)) for i in range(n)]
        result = strategy.aggregate_train(1, replies)
        log = strategy.current
        assert result == (None, None) and not log.aggregated and log.replied == 0
        assert log.rejected + log.failed == n and len(log.reasons) == n + 1  # + the "round skipped" note
        assert torch.equal(strategy.state.values, before.values) and torch.equal(strategy.state.head, before.head)
        assert strategy.opt_state == {}

    run()
    assert COUNT["bad-msgs"] >= 5000


def test_fuzz_mixed_replies_aggregate_exactly_the_good_ones():
    @settings(FUZZ, max_examples=1500)
    @given(data=st.data(), dtype=st.sampled_from(DTYPES), good=st.integers(1, 3), bad=st.integers(0, 3),
           aggregator=st.sampled_from(["fedavg", "median", "trimmed-mean", "fedyogi", "fedavgm"]))
    def run(data, dtype, good, bad, aggregator):
        COUNT["mixed"] += 1
        COUNT["replies"] += good + bad + 1
        strategy = make_strategy(dtype, good + bad, aggregator)
        before = GlobalState(strategy.state.values.clone(), strategy.state.head.clone())
        nodes = data.draw(st.permutations(range(good + bad)))
        parts = [good_parts(dtype, data.draw(st.integers(0, 2**16)), data.draw(st.integers(1, 1000)))
                 for _ in range(good)]
        replies = [message(100 + nodes[i], *p) for i, p in enumerate(parts)]
        replies += [data.draw(bad_reply(100 + nodes[good + j], dtype)) for j in range(bad)]
        replies.append(message(100 + nodes[0], *parts[0]))  # a duplicate reply from a good node
        strategy.aggregate_train(3, data.draw(st.permutations(replies)))
        assert strategy.current.replied == good and strategy.current.rejected + strategy.current.failed == bad + 1
        ordered = sorted(zip(nodes[:good], parts))  # aggregation order is by partition id
        ups = [validate_reply(*p, expected(dtype)) for _, p in ordered]
        stack = torch.stack([torch.cat([u.delta, u.head_delta]) for u in ups])
        weights = torch.tensor([u.num_examples for u in ups], dtype=torch.float64)
        step, _ = server_step(stack, weights, {}, strategy.server, 3)
        assert torch.equal(strategy.state.values, before.values + step[:K])
        assert torch.equal(strategy.state.head, before.head + step[K:])

    run()
    assert COUNT["mixed"] >= 1500
    print(f"\nfuzz: {COUNT['pure']} pure + {COUNT['bad-msgs']} all-bad + {COUNT['mixed']} mixed examples "
          f"= {COUNT['pure'] + COUNT['bad-msgs'] + COUNT['mixed']}; {COUNT['replies']} Messages through aggregate_train")
