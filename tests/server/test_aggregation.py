"""Aggregators on stacked aligned updates, and robustness to a minority of attackers."""

from __future__ import annotations

import pytest
import torch

from server.aggregation import AggregationError, aggregate, coordinate_median, trimmed_mean, weighted_mean


def test_median_odd_even_and_trimmed_mean_by_hand():
    d = torch.tensor([[1.0, 10.0], [2.0, -5.0], [100.0, 0.0]])
    w = torch.ones(3, dtype=torch.float64)
    assert torch.equal(coordinate_median(d, w), torch.tensor([2.0, 0.0]))
    assert torch.equal(coordinate_median(d[:2], w[:2]), torch.tensor([1.5, 2.5]))
    five = torch.tensor([[1.0], [2.0], [3.0], [4.0], [1000.0]])
    assert torch.equal(trimmed_mean(five, torch.ones(5), trim_fraction=0.2), torch.tensor([3.0]))
    assert torch.allclose(trimmed_mean(five, torch.ones(5), trim_fraction=0.0), five.mean(0))


def test_weighted_mean_weights_and_errors():
    d = torch.tensor([[0.0], [3.0]])
    assert torch.equal(weighted_mean(d, torch.tensor([1.0, 2.0])), torch.tensor([2.0]))
    with pytest.raises(AggregationError):
        aggregate("krum", d, torch.ones(2))
    with pytest.raises(AggregationError):
        trimmed_mean(d, torch.ones(2), trim_fraction=0.5)
    with pytest.raises(AggregationError):
        weighted_mean(d, torch.tensor([0.0, 0.0]))


def _clients(attack: str, n: int = 10, bad: int = 3, k: int = 2000, seed: int = 0):
    """Honest deltas = true + N(0, 0.1^2); the first ``bad`` clients attack. Returns (deltas, true)."""
    g = torch.Generator().manual_seed(seed)
    true = torch.randn(k, generator=g) * 0.05
    deltas = true + 0.1 * torch.randn(n, k, generator=g) * true.abs().mean()
    if attack == "scaled":
        deltas[:bad] = deltas[:bad] * -20.0  # boosted, reversed update (model replacement style)
    elif attack == "sign-flip":
        deltas[:bad] = -deltas[:bad]
    return deltas, true


def attack_errors(attack: str) -> dict[str, float]:
    """Relative L2 error ||agg - true|| / ||true|| per aggregator, 3 attackers of 10, equal weights."""
    deltas, true = _clients(attack)
    w = torch.full((deltas.shape[0],), 100.0)
    out = {}
    for name in ("fedavg", "median", "trimmed-mean"):
        agg = aggregate(name, deltas, w, trim_fraction=0.3)
        out[name] = float((agg - true).norm() / true.norm())
    return out


@pytest.mark.parametrize("attack", ["scaled", "sign-flip"])
def test_median_and_trimmed_mean_resist_a_minority_of_attackers(attack):
    err = attack_errors(attack)
    print(f"\n{attack} attack, 3 of 10 clients, relative error: " +
          ", ".join(f"{k} {v:.3f}" for k, v in err.items()))
    assert err["fedavg"] > 0.5  # the mean is dragged far off
    assert err["median"] < 0.2 and err["trimmed-mean"] < 0.2
    assert err["median"] < err["fedavg"] / 3 and err["trimmed-mean"] < err["fedavg"] / 3


def test_weighted_mean_by_hand():
    deltas = torch.tensor([[1.0, 0.0, -2.0], [3.0, 4.0, 2.0]])
    weights = torch.tensor([1.0, 3.0])
    # (1*1 + 3*3)/4 = 2.5 ; (0 + 12)/4 = 3 ; (-2 + 6)/4 = 1
    assert torch.equal(weighted_mean(deltas, weights), torch.tensor([2.5, 3.0, 1.0]))


def test_order_of_replies_does_not_change_the_result():
    g = torch.Generator().manual_seed(0)
    deltas, weights = torch.randn(7, 1000, generator=g), torch.rand(7, generator=g) + 0.1
    perm = torch.randperm(7, generator=g)
    assert torch.equal(aggregate("fedavg", deltas, weights), aggregate("fedavg", deltas[perm], weights[perm]))


@pytest.mark.parametrize("deltas,weights", [
    (torch.zeros(0, 3), torch.zeros(0)),
    (torch.zeros(2, 3), torch.ones(3)),
    (torch.zeros(2, 3), torch.tensor([1.0, -1.0])),
])
def test_inconsistent_inputs_raise(deltas, weights):
    with pytest.raises(AggregationError):
        weighted_mean(deltas, weights)
