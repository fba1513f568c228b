"""Server optimizers (Reddi et al. 2021 formulas) and the server step pipeline."""

from __future__ import annotations

import math

import pytest
import torch

from server.aggregation import AGGREGATORS as REGISTERED, AggregationError
from server.server_opt import OPTIMIZERS, PLANS, ServerSettings, plan, adam_step, avgm_step, server_step, yogi_step
from shared.config import AGGREGATORS, ConfigError, RunConfig


def test_fedadam_two_steps_match_the_formulas_by_hand():
    hp = ServerSettings(aggregator="fedadam", lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    g1, g2 = torch.tensor([0.5, -2.0], dtype=torch.float64), torch.tensor([0.1, 1.0], dtype=torch.float64)
    up1, st1 = adam_step(g1, {}, hp)
    up2, st2 = adam_step(g2, st1, hp)
    for i in range(2):
        m = 0.1 * g1[i].item()
        v = 0.99 * 1e-6 + 0.01 * g1[i].item() ** 2
        assert math.isclose(up1[i].item(), 0.1 * m / (math.sqrt(v) + 1e-3), rel_tol=1e-12)
        m = 0.9 * m + 0.1 * g2[i].item()
        v = 0.99 * v + 0.01 * g2[i].item() ** 2
        assert math.isclose(up2[i].item(), 0.1 * m / (math.sqrt(v) + 1e-3), rel_tol=1e-12)
    assert set(st2) == {"m", "v"}


def test_fedyogi_second_moment_moves_additively_toward_g2():
    hp = ServerSettings(lr=1.0, beta1=0.0, beta2=0.9, tau=0.0)
    g = torch.tensor([2.0], dtype=torch.float64)
    _, st = yogi_step(g, {"m": torch.zeros(1, dtype=torch.float64), "v": torch.tensor([1.0], dtype=torch.float64)}, hp)
    assert st["v"].item() == pytest.approx(1.0 + 0.1 * 4.0)  # v < g^2: v grows by (1-b2) g^2
    _, st = yogi_step(g, {"m": torch.zeros(1, dtype=torch.float64), "v": torch.tensor([9.0], dtype=torch.float64)}, hp)
    assert st["v"].item() == pytest.approx(9.0 - 0.1 * 4.0)


def test_fedavgm_accumulates_momentum():
    hp = ServerSettings(lr=0.5, momentum=0.9)
    g = torch.ones(3, dtype=torch.float64)
    up, st = avgm_step(g, {}, hp)
    up, st = avgm_step(g, st, hp)
    assert torch.allclose(up, torch.full((3,), 0.5 * 1.9, dtype=torch.float64))


def test_server_step_plans_and_config_knobs():
    cfg = RunConfig(aggregator="fedyogi", server_lr=0.05, server_tau=0.01, trim_fraction=0.2)
    hp = ServerSettings.from_config(cfg)
    assert (hp.lr, hp.tau, hp.trim_fraction, hp.aggregator) == (0.05, 0.01, 0.2, "fedyogi")
    assert set(PLANS.values()) <= {(a, o) for a in REGISTERED for o in OPTIMIZERS}
    deltas, w = torch.randn(4, 6), torch.ones(4)
    state: dict = {}
    for rnd in (1, 2):
        up, state = server_step(deltas, w, state, hp, rnd)
        assert up.dtype == torch.float32 and up.shape == (6,) and torch.isfinite(up).all()
    fedavg, _ = server_step(deltas, w, {}, ServerSettings(), 1)
    assert torch.allclose(fedavg, deltas.mean(0))
    with pytest.raises(ConfigError, match="aggregator"):  # refused when the config is built, before any work
        RunConfig(aggregator="nope")
    with pytest.raises(ConfigError, match="dp-clip-norm"):
        RunConfig(dp_noise_multiplier=1.0)
    with pytest.raises(AggregationError):
        plan("nope")


def test_every_aggregator_value_of_the_config_has_a_plan():
    assert set(AGGREGATORS) == set(PLANS)
