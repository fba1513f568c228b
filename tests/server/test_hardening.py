"""Replies that are well-formed and hostile, through the real strategy and real Messages (property-based).

Huge-but-finite values in every value dtype never crash and never leave a non-finite or unrepresentable
state; an inflated num-examples never buys more than the node's declaration; handshake garbage never
crashes; the norm policy clips or rejects; replies from nodes not sampled this round are refused.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.guards import bound_updates, capped_weights, example_caps
from server.strategy import GlobalState, SparseStrategy
from server.validation import Expected
from shared.config import RunConfig
from tests.server.replies import FP, H, K, message
from wire.codec import representable
from wire.protocol import UP_KEYS, encode_pair

MAX = {"float32": 3.4028e38, "float16": 65504.0, "bfloat16": 3.38e38, "int8": 3.4028e38}


def _strategy(nodes: int, dtype: str = "float32", **cfg) -> SparseStrategy:
    s = SparseStrategy(RunConfig(value_dtype=dtype, **cfg), GlobalState(torch.zeros(K), torch.zeros(H)),
                       Expected(FP, dtype, K, H, block=8, max_bytes=1 << 20))
    s.partitions = {100 + i: i for i in range(nodes)}
    s.declared = {100 + i: 50 for i in range(nodes)}
    return s


def _reply(node: int, delta: torch.Tensor, dtype: str = "float32", n: int = 50) -> Message:
    arrays = encode_pair(delta, torch.zeros(H), UP_KEYS, dtype, 8)
    return message(node, arrays, {"num-examples": n, "train-loss": 0.1}, {"fingerprint": FP})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dtype=st.sampled_from(list(MAX)), scale=st.floats(0.3, 1.0), sign=st.sampled_from([1.0, -1.0]),
       rounds=st.integers(1, 3), attackers=st.integers(1, 3))
def test_huge_finite_values_never_leave_an_unrepresentable_state(dtype, scale, sign, rounds, attackers):
    s = _strategy(4, dtype)
    for rnd in range(1, rounds + 1):
        huge = torch.full((K,), sign * scale * MAX[dtype])
        honest = [_reply(100 + i, torch.full((K,), 0.01), dtype) for i in range(attackers, 4)]
        s.aggregate_train(rnd, [_reply(100 + i, huge, dtype) for i in range(attackers)] + honest)
        assert representable(s.state.values, dtype) and representable(s.state.head, dtype)
        s.encoded_global()  # the next broadcast encodes: nothing outside the wall raises


@settings(max_examples=40, deadline=None)
@given(claim=st.integers(1, 10**9))
def test_an_inflated_num_examples_buys_no_more_than_the_declaration(claim):
    honest = [_reply(101 + i, torch.full((K,), 1.0)) for i in range(3)]
    s = _strategy(4)
    s.aggregate_train(1, [_reply(100, torch.full((K,), -1.0), n=claim)] + honest)
    fair = _strategy(4)
    fair.aggregate_train(1, [_reply(100, torch.full((K,), -1.0), n=min(claim, 50))] + honest)
    assert torch.equal(s.state.values, fair.state.values)
    assert float(s.state.values[0]) >= 0.5 - 1e-6  # the attacker (-1) weighs at most as much as one honest (+1)


def test_caps_at_a_multiple_of_the_median_declaration_and_uniform_weighting():
    caps = example_caps({1: 50, 2: 60, 3: 10**9}, 2.0)
    assert caps == {1: 50, 2: 60, 3: 120}
    w, notes = capped_weights([(1, 50), (3, 10**9)], caps, "examples")
    assert w.tolist() == [50.0, 120.0] and "capped" in notes[1] and not notes[0]
    assert capped_weights([(1, 50), (3, 10**9)], caps, "uniform")[0].tolist() == [1.0, 1.0]


def test_norm_policy_clips_or_rejects_against_the_bound():
    stack = torch.tensor([[3.0, 4.0], [0.3, 0.4], [30.0, 40.0]])
    rows, keep, notes = bound_updates(stack, 1.0, 0.0, "clip")
    assert keep == [True] * 3 and torch.allclose(rows.norm(dim=1), torch.tensor([1.0, 0.5, 1.0]))
    rows, keep, notes = bound_updates(stack, 0.0, 2.0, "reject")  # 2 x median norm (5) = 10
    assert keep == [True, True, False] and "rejected" in notes[2] and rows.shape == (2, 2)
    same, _, _ = bound_updates(stack, 0.0, 0.0, "clip")
    assert same is stack


def test_a_scaled_attacker_is_clipped_in_the_strategy():
    s = _strategy(4, update_norm_multiple=2.0)
    honest = [_reply(101 + i, torch.full((K,), 0.01)) for i in range(3)]
    s.aggregate_train(1, [_reply(100, torch.full((K,), -20.0))] + honest)
    assert s.current.aggregated and s.current.replied == 4
    assert any("clipped" in r for r in s.current.reasons)
    assert float(s.state.values.norm()) < 0.05


def test_replies_from_nodes_not_sampled_this_round_are_refused():
    s = _strategy(4)
    s.round_nodes = {100, 101}
    s.aggregate_train(1, [_reply(100 + i, torch.full((K,), 0.01)) for i in range(4)])
    assert s.current.replied == 2 and s.current.rejected == 2
    assert sum("not sampled this round" in r for r in s.current.reasons) == 2


class _HandshakeGrid:
    """Answers the handshake with the given (metrics, config) per node; None = no records at all."""

    def __init__(self, answers: dict[int, tuple | None]):
        from flwr.supercore.task_identity import TaskIdentity

        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 0
        self.answers = answers

    def get_node_ids(self):
        return list(self.answers)

    def send_and_receive(self, msgs, timeout=None):
        out = []
        for m in msgs:
            ans = self.answers[m.metadata.dst_node_id]
            metrics, config, swap = ans if ans is not None else (None, None, False)
            out.append(message(m.metadata.dst_node_id, None, metrics, config, swap_records=swap))
        return out


# What a MetricRecord can carry (ints, floats incl. NaN/inf, lists); swapped in a ConfigRecord also text and bools.
_NUMBER = st.one_of(st.integers(-5, 12), st.floats(allow_nan=True, allow_infinity=True), st.integers(10**8, 10**18),
                    st.lists(st.integers(0, 3), max_size=2))
_ANY = st.one_of(_NUMBER, st.booleans(), st.text(max_size=3))
_KEYS = ("partition-id", "num-partitions", "num-examples")


def _answer(values):
    return st.tuples(st.fixed_dictionaries({}, optional={k: values for k in _KEYS}),
                     st.sampled_from([{"fingerprint": FP}, {}, {"fingerprint": 7}]), st.just(values is _ANY))


@settings(max_examples=80, deadline=None)
@given(raw=st.lists(st.one_of(st.none(), _answer(_NUMBER), _answer(_ANY)), min_size=1, max_size=5))
def test_handshake_garbage_never_crashes_and_admits_only_valid_unique_partitions(raw):
    answers = {200 + i: ans for i, ans in enumerate(raw)}
    s = _strategy(0)
    s.partitions, s.declared = {}, {}
    try:
        s.handshake(_HandshakeGrid(answers), 1, 1)
    except RuntimeError as exc:
        assert "no node passed the handshake" in str(exc)
    pids = list(s.partitions.values())
    assert len(pids) == len(set(pids)) and all(isinstance(p, int) and p >= 0 for p in pids)
    assert set(s.declared) == set(s.partitions)


def test_a_duplicate_partition_id_never_evicts_the_node_that_claimed_it_first():
    good = {"partition-id": 1, "num-partitions": 4, "num-examples": 10}
    answers = {300: (good, {"fingerprint": FP}, False), 301: (dict(good), {"fingerprint": FP}, False),
               302: ({**good, "partition-id": 2}, {"fingerprint": FP}, False)}
    s = _strategy(0)
    s.handshake(_HandshakeGrid(answers), 1, 1)
    assert s.partitions == {300: 1, 302: 2}
    assert [r.split(": ", 1)[1] for r in s.current.reasons if "held by" in r] == [
        "partition id 1 is held by node 300, which claimed it first"]


@settings(max_examples=60, deadline=None)
@given(order=st.permutations(range(6)), pids=st.lists(st.integers(0, 2), min_size=6, max_size=6))
def test_duplicates_never_evict_the_first_holder_and_some_node_always_passes(order, pids):
    """Any pattern of clashing ids, in any arrival order: each id stays with its first claimant."""
    answers = {400 + i: ({"partition-id": pids[i], "num-partitions": 3, "num-examples": 10}, {"fingerprint": FP},
                         False) for i in order}
    grid = _HandshakeGrid(answers)
    arrival = grid.send_and_receive
    grid.send_and_receive = lambda msgs, timeout=None: sorted(  # replies arrive in `order`, not by node id
        arrival(msgs, timeout), key=lambda m: order.index(m.metadata.src_node_id - 400))
    s = _strategy(0)
    s.handshake(grid, 1, 1)
    first = {}
    for i in order:
        first.setdefault(pids[i], 400 + i)
    assert s.partitions == {node: pid for pid, node in first.items()}
    assert s.current.rejected == 6 - len(first)


def test_a_handshake_nobody_passes_is_one_line():
    from server.handshake import HandshakeError

    answers = {500: ({"partition-id": 0, "num-partitions": 1, "num-examples": 1}, {"fingerprint": "other"}, False)}
    s = _strategy(0)
    with pytest.raises(HandshakeError) as err:
        s.handshake(_HandshakeGrid(answers), 1, 1)
    assert "no node passed the handshake" in str(err.value) and "\n" not in str(err.value)


def test_history_json_is_strict(tmp_path):
    import json

    from server.outputs import write_json

    write_json(tmp_path / "h.json", [{"round": 1, "loss": float("nan"), "accuracy": 0.5}])
    text = (tmp_path / "h.json").read_text()
    assert "NaN" not in text and json.loads(text) == [{"round": 1, "loss": None, "accuracy": 0.5,
                                                      "nonfinite": ["loss"]}]
    assert np.isfinite(0.5)
