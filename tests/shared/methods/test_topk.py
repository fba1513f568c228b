"""topk's codec pieces: top entries, changed entries, and the densified FedAvg (missing entries are 0)."""

from __future__ import annotations

import torch

from server.aggregation import weighted_mean
from shared.methods.topk.codec import changed_entries, top_entries
from wire.index import to_dense


def test_top_entries_are_the_largest_magnitudes_in_ascending_position_order():
    delta = torch.tensor([0.1, -5.0, 0.0, 3.0, -0.2, 4.0])
    idx, vals = top_entries(delta, 3)
    assert idx.tolist() == [1, 3, 5]
    assert vals.tolist() == [-5.0, 3.0, 4.0]


def test_densified_mean_is_a_weighted_average_with_missing_entries_as_zero():
    a = to_dense(torch.tensor([0, 2]), torch.tensor([1.0, 2.0]), 5)
    b = to_dense(torch.tensor([2, 3]), torch.tensor([4.0, 8.0]), 5)
    out = weighted_mean(torch.stack([a, b]), torch.tensor([1.0, 3.0]))
    assert torch.allclose(out, torch.tensor([0.25, 0.0, 0.5 + 3.0, 6.0, 0.0]))


def test_changed_entries_and_dense_round_trip():
    v = torch.tensor([0.0, 1.5, 0.0, -2.0])
    idx, vals = changed_entries(v)
    assert idx.tolist() == [1, 3]
    assert torch.equal(to_dense(idx, vals, 4), v)
