"""The clients' lr over server rounds: the factors, their checks, and which runs may continue under a new one."""

from __future__ import annotations

import math

import pytest

from shared.config import ConfigError, RunConfig
from shared.schedule import describe, factors, full_rate_rounds, lr_factor, same_factors


def test_constant_is_one_in_every_round_and_round_zero_is_not_scaled():
    assert [lr_factor(r, 5) for r in range(0, 6)] == [1.0] * 6
    assert lr_factor(0, 10, "cosine") == 1.0 and lr_factor(-1, 10, "linear", 3) == 1.0


def test_warmup_ramps_below_the_full_rate_then_holds_it():
    got = [lr_factor(r, 10, "constant", warmup_rounds=3) for r in range(1, 11)]
    assert got[:3] == [0.25, 0.5, 0.75] and got[3:] == [1.0] * 7


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_decays_over_every_round_after_the_warmup_without_a_round_at_zero(schedule):
    got = [lr_factor(r, 10, schedule, warmup_rounds=2) for r in range(1, 11)]
    assert got[:2] == [1 / 3, 2 / 3]
    tail = got[2:]
    assert all(a > b for a, b in zip(tail, tail[1:])) and 0 < tail[-1] < 0.15 and tail[0] < 1
    if schedule == "linear":
        assert tail == pytest.approx([1 - i / 9 for i in range(1, 9)])
    else:
        assert tail == pytest.approx([0.5 * (1 + math.cos(math.pi * i / 9)) for i in range(1, 9)])


def test_a_decay_over_the_last_rounds_keeps_the_rounds_before_it_at_the_full_rate():
    got = factors({"num-server-rounds": 140, "lr-schedule": "cosine", "lr-decay-rounds": 20}, 140)
    assert got[:120] == [1.0] * 120 and all(a > b for a, b in zip(got[119:], got[120:]))
    assert describe("cosine", 140, 0, 20) == "cosine decay over rounds 121-140"
    assert describe("constant", 140) == "constant" and describe("linear", 10, 2) == \
        "warm-up over rounds 1-2, linear decay over rounds 3-10"


def test_which_runs_may_continue_under_another_schedule():
    plateau = {"num-server-rounds": 120}  # made before the schedule keys existed: constant
    annealed = {"num-server-rounds": 140, "lr-schedule": "cosine", "lr-decay-rounds": 20}
    assert same_factors(plateau, annealed, 120)  # the 20 added rounds decay: the same first 120 rounds
    assert not same_factors(plateau, {**annealed, "lr-decay-rounds": 30}, 120)  # would lower rounds 111-120
    linear = {"num-server-rounds": 40, "lr-schedule": "linear"}
    assert not same_factors(linear, {**linear, "num-server-rounds": 80}, 10)  # a longer decay changes every round
    assert same_factors({"num-server-rounds": 3}, {"num-server-rounds": 9}, 3)


@pytest.mark.parametrize("changes, needle", [
    ({"lr_schedule": "step"}, "lr-schedule"),
    ({"lr_schedule": "constant", "lr_decay_rounds": 3}, "needs lr-schedule linear or cosine"),
    ({"lr_schedule": "cosine", "lr_decay_rounds": 8, "lr_warmup_rounds": 3, "num_server_rounds": 10},
     "exceed num-server-rounds (10)"),
    ({"lr_warmup_rounds": -1}, "lr-warmup-rounds"),
])
def test_a_schedule_that_cannot_run_is_refused_in_one_line(changes, needle):
    with pytest.raises(ConfigError) as info:
        RunConfig(**changes)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_the_rounds_at_the_full_rate_end_where_the_decay_starts():
    assert full_rate_rounds({"num-server-rounds": 140}) is None  # no decay: every round counts
    assert full_rate_rounds({"num-server-rounds": 140, "lr-schedule": "cosine", "lr-decay-rounds": 20}) == 120
    assert full_rate_rounds({"num-server-rounds": 10, "lr-schedule": "linear", "lr-warmup-rounds": 2}) == 2
