"""Safe by default: under the settings a user does not touch, one hostile client cannot poison the federation.

Whole runs through the real ServerApp ``main`` and ClientApp over the in-process grid (tiny BERT, real SST-2 rows),
the attacker's replies rewritten in flight (simulations.robustness's ``AttackingGrid``); and the strategy's
adoption rule on real messages.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from server.strategy import GlobalState, SparseStrategy
from server.validation import Expected
from shared.config import RunConfig
from simulations.robustness.lib.adversary import run_cell
from tests.server.replies import message
from wire.protocol import UP_KEYS, encode_pair

NODES = 4


@pytest.fixture()
def rc(tiny_model_dir, sst2_dir) -> dict:
    return {"method": "pafi", "model": str(tiny_model_dir), "data-dir": str(sst2_dir), "mask-density": 0.05,
            "local-steps": 2, "batch-size": 8, "max-length": 32, "max-eval-examples": 64, "fraction-train": 1.0,
            "num-server-rounds": 2, "lr": 0.05}


def _reasons(out) -> list[str]:
    return [r for rec in json.loads((out / "history.json").read_text()) for r in rec["rejected_reasons"]]


@pytest.mark.parametrize("bound", ["adaptive", "none"])
def test_a_huge_finite_update_never_becomes_the_global_state(rc, tmp_path, bound):
    """1e30 per value (finite in float32) from one node of four, every round: before, the global values became
    ~2.5e29 and every later round diverged. Under the defaults the adaptive bound clips it to a few times the
    server's reference norm; with the bound off the state check refuses the exploded state. delta.safetensors
    stays finite either way."""
    cell = run_cell("huge", "fedavg", {**rc, "update-bound": bound}, NODES, 1, tmp_path / "run")
    assert cell["rewritten"] == 2
    delta = load_file(str(tmp_path / "run" / "delta.safetensors"))
    assert all(torch.isfinite(t).all() for t in delta.values())
    assert float(delta["values"].abs().max()) < 1.0
    assert all(math.isfinite(a) for a in cell["accuracy"])
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    if bound == "adaptive":
        assert all(r["aggregated"] and r["norm_bound"] < 10 for r in history[1:])
        assert sum("over the bound" in n and "clipped" in n for n in _reasons(tmp_path / "run")) == 2
    else:
        assert sum("not adopted" in r for r in _reasons(tmp_path / "run")) == 2  # both rounds skipped, state kept


def _strategy(ratio: float, vet) -> SparseStrategy:
    s = SparseStrategy(RunConfig(state_loss_ratio=ratio), GlobalState(torch.zeros(4), torch.zeros(2)),
                       Expected("f" * 64, "float32", 4, 2))
    s.partitions = {100: 0}
    s.vet = vet
    return s


def _reply(delta: torch.Tensor):
    arrays = encode_pair(delta, torch.zeros(2), UP_KEYS, "float32", 8)
    return message(100, arrays, {"num-examples": 5, "train-loss": 0.1}, {"fingerprint": "f" * 64})


def test_a_state_whose_loss_explodes_is_not_adopted_and_a_loss_that_rises_within_the_ratio_is():
    loss = lambda state: 0.5 + float(state.values.abs().sum())  # noqa: E731 - a deterministic loss of the state
    s = _strategy(10.0, loss)
    assert s.aggregate_train(1, [_reply(torch.full((4,), 1.0))]) != (None, None)  # 4.5 <= 10 x 0.5: adopted
    assert torch.equal(s.state.values, torch.ones(4)) and s.adopted_loss == 4.5
    kept = s.state
    assert s.aggregate_train(2, [_reply(torch.full((4,), 20.0))]) == (None, None)  # 84.5 > 10 x 4.5
    assert s.state is kept and "evaluation loss 84.5 is over state-loss-ratio 10" in s.current.reasons[-1]
    assert s.aggregate_train(3, [_reply(torch.full((4,), 0.0))]) != (None, None)
    nan = _strategy(10.0, lambda state: float("nan") if state.values.abs().sum() > 0 else 0.7)
    assert nan.aggregate_train(1, [_reply(torch.ones(4))]) == (None, None) and torch.equal(nan.state.values,
                                                                                            torch.zeros(4))
    off = _strategy(0.0, loss)  # state-loss-ratio = 0: every finite state is adopted, the loss never computed
    off.vet = lambda state: pytest.fail("vetted with the check off")
    assert off.aggregate_train(1, [_reply(torch.full((4,), 20.0))]) != (None, None)


# ---- the default bound, on real messages through the strategy (the server's reference norm fixed at 0.05) ------
REF = 0.05
DTYPES = ("float32", "float16", "bfloat16", "int8")


def _bounded_strategy(nodes: int, dtype: str = "float32", **cfg) -> SparseStrategy:
    from tests.server.replies import FP, H, K

    cfg = {"lr_schedule": "constant", **cfg}  # the bound follows the round's lr factor: 1 every round here
    s = SparseStrategy(RunConfig(value_dtype=dtype, **cfg), GlobalState(torch.zeros(K), torch.zeros(H)),
                       Expected(FP, dtype, K, H, block=8, max_bytes=4096))
    s.partitions = {100 + i: i for i in range(nodes)}
    s.declared = {100 + i: 50 for i in range(nodes)}
    s.adaptive.reference = lambda state, rnd: REF
    return s


def _row(node: int, delta: torch.Tensor, dtype: str, n: int = 50):
    from tests.server.replies import FP, K

    arrays = encode_pair(delta[:K], delta[K:], UP_KEYS, dtype, 8)
    return message(node, arrays, {"num-examples": n, "train-loss": 0.5}, {"fingerprint": FP})


def _honest(i: int, rnd: int) -> torch.Tensor:
    from tests.server.replies import H, K

    g = torch.Generator().manual_seed(1_000 * rnd + i)
    return torch.randn(K + H, generator=g) * (REF / (K + H) ** 0.5)  # honest norms ~ the reference's


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dtype=st.sampled_from(DTYPES), attackers=st.integers(1, 3), value=st.floats(1e3, 1e38),
       sign=st.sampled_from([1.0, -1.0]), rounds=st.integers(1, 4))
def test_huge_finite_values_never_move_the_state_by_more_than_the_bound(dtype, attackers, value, sign, rounds):
    """Attackers send the largest finite values the wire carries (any dtype), every round, alone or as a majority
    of a round's replies (3 of 5): each round the state moves by at most the round's bound, and the bound never
    grows by more than 1.5x a round."""
    from server.guards import BOUND_STEP
    from tests.server.replies import H, K
    from wire.codec import representable

    s = _bounded_strategy(5, dtype)
    big = torch.full((K + H,), sign * value)
    if not representable(big, dtype):
        big = torch.full((K + H,), sign * 6e4 if dtype == "float16" else sign * 100.0)
    last = None
    for rnd in range(1, rounds + 1):
        s.current.round = rnd
        before = torch.cat([s.state.values, s.state.head])
        replies = [_row(100 + i, big if i < attackers else _honest(i, rnd), dtype) for i in range(5)]
        s.aggregate_train(rnd, replies)
        moved = float((torch.cat([s.state.values, s.state.head]) - before).double().norm())
        bound = s.current.norm_bound
        assert bound is not None and moved <= bound * (1 + 1e-3) + 1e-6
        if last is not None:
            assert bound <= last * BOUND_STEP * (1 + 1e-9)
        last = bound
        assert bound <= 3.0 * REF * BOUND_STEP ** rnd * (1 + 1e-9)


def test_a_lone_reply_and_zeros_cannot_set_the_bound():
    """A round's replies never set their own bound: a lone 1e30 reply is clipped to 3x the reference norm; three
    attackers sending zeros pull the trusted scale down by at most 1.5x a round, never to zero."""
    from tests.server.replies import H, K

    s = _bounded_strategy(1)
    s.current.round = 1
    s.aggregate_train(1, [_row(100, torch.full((K + H,), 1e30), "float32")])
    assert s.current.norm_bound == pytest.approx(3 * REF)
    assert float(torch.cat([s.state.values, s.state.head]).norm()) == pytest.approx(3 * REF, rel=1e-4)
    z = _bounded_strategy(5)
    for rnd in range(1, 4):
        z.current.round = rnd
        replies = [_row(100 + i, torch.zeros(K + H) if i < 3 else _honest(i, rnd), "float32") for i in range(5)]
        z.aggregate_train(rnd, replies)
        assert z.adaptive.scale == pytest.approx(REF / 1.5 ** rnd)  # owned median: down 1.5x a round, not to zero
    assert not any("rejected" in r for r in z.current.reasons)  # honest updates are clipped at worst, never refused


def test_the_trusted_scale_is_checkpointed_and_restored():
    """AdaptiveBound: nothing to save before the reference sets the scale; what it saves restores the same scale."""
    from server.guards import SCALE_KEY, AdaptiveBound

    s = _bounded_strategy(5)
    assert s.adaptive.saved() == {}
    s.current.round = 1
    s.aggregate_train(1, [_row(100 + i, _honest(i, 1), "float32") for i in range(5)])
    saved = s.adaptive.saved()
    assert list(saved) == [SCALE_KEY] and saved[SCALE_KEY].dtype == torch.float64
    again = AdaptiveBound(s.cfg)
    again.load(saved)
    assert again.scale == s.adaptive.scale != REF  # moved toward the round's median after round 1
    again.load({})
    assert again.scale is None


@settings(max_examples=80, deadline=None)
@given(claim=st.integers(1, 10**9), honest=st.lists(st.integers(20, 200), min_size=4, max_size=9))
def test_a_declaration_of_any_size_buys_at_most_the_documented_share(claim, honest):
    """Under the default examples-cap-multiple (10), a node's weight is at most 10x the median declaration: its
    share of a round is at most 10 m / (10 m + sum of the others' weights)."""
    import statistics

    from tests.server.replies import FP, H, K

    nodes = len(honest) + 1
    s = SparseStrategy(RunConfig(), GlobalState(torch.zeros(K), torch.zeros(H)), Expected(FP, "float32", K, H, block=8,
                                                                                         max_bytes=4096))
    s.partitions = {100 + i: i for i in range(nodes)}
    s.declared = {100: claim, **{101 + i: n for i, n in enumerate(honest)}}
    liar = torch.full((K + H,), 0.01)
    replies = [_row(100, liar, "float32", n=claim)] + [_row(101 + i, torch.zeros(K + H), "float32", n=n)
                                                       for i, n in enumerate(honest)]
    s.aggregate_train(1, replies)
    moved = float(s.state.values[0]) / 0.01  # the liar's share of the weighted mean
    cap = 10 * statistics.median([claim] + honest)
    assert moved <= min(claim, cap) / (min(claim, cap) + sum(honest)) + 1e-6
