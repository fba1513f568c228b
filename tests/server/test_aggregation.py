"""Aggregation against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from server.aggregation import AggregationError, aggregate, weighted_mean


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
    (torch.zeros(2, 3), torch.zeros(2)),
])
def test_inconsistent_inputs_raise(deltas, weights):
    with pytest.raises(AggregationError):
        weighted_mean(deltas, weights)


def test_unknown_aggregator_names_the_choices():
    with pytest.raises(AggregationError, match="fedavg"):
        aggregate("fedfoo", torch.zeros(1, 2), torch.ones(1))
