"""Defences against attacks that beat coordinate-wise rules: centered clipping, Multi-Krum, trimming at
least one per side; the attack benchmark's core on synthetic aligned vectors; knob ranges at start."""

from __future__ import annotations

import math

import pytest
import torch

from server.aggregation import (AggregationError, aggregate, centered_clip, centered_clipping, krum_scores,
                                multi_krum, trim_count, trimmed_mean)
from server.server_opt import ServerSettings, server_step
from shared.config import ConfigError, RunConfig
from shared.settings import parse_run_config
from simulations.robustness.attack_benchmark import alie_z_max, attack_matrix, make_scenario

ONES5 = torch.ones(5)


def honest_cohort(n: int = 10, k: int = 4000, noise: float = 1.0, seed: int = 0):
    """Honest deltas mu + noise * |mu|-sized Gaussian spread, equal example counts; (n, k), (n,)."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(k, generator=g) * 0.01
    return mu + noise * 0.01 * torch.randn(n, k, generator=g), torch.full((n,), 100.0, dtype=torch.float64)


# ---- exact small cases --------------------------------------------------------------------------------
def test_multi_krum_scores_and_selection_by_hand():
    d = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [100.0, 100.0]])
    # n=5, f=1: sum of each row's n-f-2 = 2 nearest squared distances; corners: 1 + 1; the outlier: to (1,1), (1,0)
    assert torch.equal(krum_scores(d, 1), torch.tensor([2.0, 2.0, 2.0, 2.0, 2 * 99.0**2 + 99.0**2 + 100.0**2],
                                                       dtype=torch.float64))
    assert torch.equal(multi_krum(d, ONES5, krum_f=1), torch.tensor([0.5, 0.5]))  # m = n - f = 4 corners
    assert torch.equal(multi_krum(d, ONES5, krum_f=1, krum_m=1), torch.tensor([0.0, 0.0]))  # tie -> first row
    assert torch.equal(multi_krum(d, ONES5, krum_f=1, krum_m=99), torch.tensor([0.5, 0.5]))  # capped at n - f
    assert torch.equal(multi_krum(d, torch.tensor([1.0, 1, 1, 1, 1e9]), krum_f=1), torch.tensor([0.5, 0.5]))


def test_multi_krum_refuses_too_few_replies_in_one_line():
    d = torch.zeros(4, 3)
    with pytest.raises(AggregationError, match=r"krum-f=1 needs more than 4 replies, got 4; lower krum-f to 0") as e:
        multi_krum(d, torch.ones(4), krum_f=1)
    assert "\n" not in str(e.value)
    assert torch.equal(multi_krum(d[:3], torch.ones(3), krum_f=0), torch.zeros(3))  # f=0: n > 2 is enough


def test_centered_clipping_one_iteration_by_hand():
    d = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [100.0, 100.0]])
    # start = coordinate median (1, 1); tau = 1: diffs (-1,-1) -> (-1,-1)/sqrt2, (0,-1), (-1,0), (0,0),
    # (99,99) -> (1,1)/sqrt2; v = (1,1) + (-1,-1)/5
    got = centered_clipping(d, ONES5, cc_tau=1.0, cc_iterations=1)
    torch.testing.assert_close(got, torch.tensor([0.8, 0.8]), rtol=0, atol=1e-7)
    # adaptive tau: the median distance to the start, here 1 as well
    torch.testing.assert_close(centered_clipping(d, ONES5, cc_tau=0.0, cc_iterations=1), got, rtol=0, atol=0)
    # a radius no reply reaches is the plain mean after one iteration
    torch.testing.assert_close(centered_clipping(d, ONES5, cc_tau=1e6, cc_iterations=1), d.mean(0), rtol=0, atol=1e-5)
    assert torch.equal(centered_clipping(torch.ones(3, 4), torch.ones(3)), torch.ones(4))  # all equal: tau 0


def test_centered_clip_iterations_contract_toward_the_honest_cluster_and_are_deterministic():
    g = torch.Generator().manual_seed(1)
    honest = 0.1 * torch.randn(7, 300, generator=g)
    d = torch.cat([honest, torch.full((3, 300), 50.0)])
    start, center = torch.full((300,), 2.0, dtype=torch.float64), honest.double().mean(0)
    errs = [float((centered_clip(d, start, 3.0, it) - center).norm()) for it in (0, 1, 3, 10, 30)]
    assert errs == sorted(errs, reverse=True) and len(set(errs)) == 5
    assert errs[-1] < 3 * 3.0 / 7 + 0.2  # at the fixed point 3 clipped attackers (<= tau each) pull against 7
    assert torch.equal(centered_clipping(d, torch.ones(10)), centered_clipping(d, torch.ones(10)))
    perm = torch.randperm(10, generator=g)
    torch.testing.assert_close(centered_clipping(d[perm], torch.ones(10)), centered_clipping(d, torch.ones(10)),
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("n,frac,cut", [(5, 0.1, 1), (10, 0.1, 1), (10, 0.3, 3), (20, 0.1, 2), (3, 0.1, 1),
                                        (4, 0.49, 1), (5, 0.0, 0), (2, 0.4, 0), (1, 0.3, 0)])
def test_trimmed_mean_trims_at_least_one_per_side(n, frac, cut):
    assert trim_count(n, frac) == cut
    col = torch.arange(n, dtype=torch.float32)[:, None] ** 3  # skewed: the mean moves with every cut
    expected = col[cut:n - cut].double().mean(0).float()
    assert torch.equal(trimmed_mean(col, torch.ones(n), trim_fraction=frac), expected)


def test_trimmed_mean_with_five_replies_drops_the_outlier_at_the_default_fraction():
    five = torch.tensor([[1.0], [2.0], [3.0], [4.0], [1000.0]])
    assert torch.equal(trimmed_mean(five, ONES5, trim_fraction=0.1), torch.tensor([3.0]))  # floor(0.5) = 0 before
    assert torch.equal(trimmed_mean(five[:2], torch.ones(2), trim_fraction=0.1), torch.tensor([1.5]))  # too few: mean


# ---- config: knobs, plans, one-line refusals ---------------------------------------------------------
@pytest.mark.parametrize("conf,key", [({"cc-tau": -1.0}, "cc-tau"), ({"cc-iterations": 0}, "cc-iterations"),
                                      ({"cc-iterations": 1000}, "cc-iterations"), ({"krum-f": -1}, "krum-f"),
                                      ({"krum-m": -2}, "krum-m"), ({"krum-f": 1.5}, "krum-f"),
                                      ({"trim-fraction": -0.1}, "trim-fraction")])
def test_bad_robust_knobs_are_refused_at_start_in_one_line(conf, key):
    with pytest.raises(ConfigError, match=f"'{key}'") as err:
        parse_run_config(conf)
    assert "\n" not in str(err.value)


def test_robust_knobs_reach_the_server_step():
    cfg = RunConfig(aggregator="multi-krum", krum_f=2, krum_m=3, min_train_replies=7, cc_tau=0.5, cc_iterations=4)
    hp = ServerSettings.from_config(cfg)
    assert (hp.krum_f, hp.krum_m, hp.cc_tau, hp.cc_iterations) == (2, 3, 0.5, 4)
    d = torch.cat([torch.zeros(6, 5), torch.full((1, 5), 9.0)])
    up, _ = server_step(d, torch.ones(7), {}, hp, 1)
    assert torch.equal(up, torch.zeros(5))
    cc_hp = ServerSettings.from_config(cfg.replace(aggregator="centered-clipping"))
    cc, _ = server_step(d, torch.ones(7), {}, cc_hp, 1)
    assert torch.equal(cc, aggregate("centered-clipping", d, torch.ones(7), cc_tau=0.5, cc_iterations=4))


def test_multi_krum_needs_min_train_replies_above_2f_plus_2_at_start():
    """Refused where the settings are parsed, before any model loads (multi-krum's defaults: krum-f 1, min 1)."""
    with pytest.raises(ConfigError, match="min-train-replies >= 5") as err:
        parse_run_config({"aggregator": "multi-krum"})
    assert "\n" not in str(err.value)
    assert ServerSettings.from_config(RunConfig(aggregator="multi-krum", krum_f=1, min_train_replies=5)).krum_f == 1


# ---- the benchmark's core: aggregate vs honest mean under attack ---------------------------------------
def test_alie_z_max_of_baruch_et_al():
    assert alie_z_max(10, 3) == pytest.approx(0.5244, abs=1e-4)  # s = 6 - 3, Phi^-1(7/10)
    assert alie_z_max(50, 12) == pytest.approx(0.5828, abs=1e-4)  # s = 26 - 12, Phi^-1(36/50)


def test_scenarios_replace_only_the_attackers():
    d, w = honest_cohort(k=50)
    sc = make_scenario("alie-1.0", d, w, 3)
    assert torch.equal(sc.deltas[3:], d[3:]) and sc.honest.tolist() == [False] * 3 + [True] * 7
    h = d[3:].double()
    torch.testing.assert_close(sc.deltas[0], (h.mean(0) - h.std(0)).float())
    wc = make_scenario("weight-claim", d, w, 3)
    assert wc.honest.sum() == 9 and wc.weights[0] == 1e6 and torch.equal(wc.deltas[0], -d[0])


@pytest.mark.parametrize("noise", [0.5, 1.0, 3.0])
def test_new_defences_beat_fedavg_and_median_under_scaling(noise):
    err = attack_matrix(*honest_cohort(noise=noise), 3, attacks=("scale-20", "sign-flip"))
    for attack, row in err.items():
        print(f"\n{attack} noise {noise}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()))
        for rule in ("centered-clipping", "multi-krum"):
            assert row[rule] < row["median"] and row[rule] < row["fedavg"], (attack, rule)
    assert err["scale-20"]["centered-clipping"] < err["scale-20"]["fedavg"] / 5
    assert err["scale-20"]["multi-krum"] < 0.3  # it keeps the 7 honest replies


@pytest.mark.parametrize("noise", [0.5, 1.0, 3.0])
def test_under_a_little_is_enough_centered_clipping_beats_median_and_stays_near_the_mean(noise):
    """ALIE sits inside every coordinate's honest range: median and trimmed mean follow it. No rule that
    keeps the attackers can do better than the mean's f/n share of the shift; centered clipping stays close
    to that bound, while Multi-Krum picks the three identical attackers first (the paper's finding)."""
    err = attack_matrix(*honest_cohort(noise=noise), 3, attacks=("alie-zmax", "alie-1.0"))
    for attack, row in err.items():
        print(f"\n{attack} noise {noise}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()))
        assert row["centered-clipping"] < row["median"] and row["centered-clipping"] < row["trimmed-mean"]
        assert row["centered-clipping"] < 1.4 * row["fedavg"]
        assert row["multi-krum"] > row["fedavg"]
    # the mean moves by f/n * z * ||sigma||; ||honest mean|| ~ ||mu|| * sqrt(1 + noise^2 / 7)
    expected = 0.3 * alie_z_max(10, 3) * noise / math.sqrt(1 + noise ** 2 / 7)
    assert err["alie-zmax"]["fedavg"] == pytest.approx(expected, rel=0.1)


def test_a_huge_num_examples_claim_buys_no_influence_over_the_robust_rules():
    row = attack_matrix(*honest_cohort(), 3, attacks=("weight-claim",))["weight-claim"]
    assert row["fedavg"] > 1.5
    assert max(row[r] for r in ("median", "trimmed-mean", "centered-clipping", "multi-krum", "norm-clip")) < 0.5
