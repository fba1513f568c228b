"""The GreBsmo-style decomposition and DSEE's sparse positions."""

from __future__ import annotations

import pytest
import torch

from shared.methods.dsee.decompose import (DecompositionError, lowrank_sparse_decompose, single_thread,
                                          sparse_positions, top_abs_positions)


def _low_rank_plus_spikes(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    low = torch.randn(40, 3, generator=gen) @ torch.randn(3, 30, generator=gen) * 0.1
    spikes = torch.randperm(40 * 30, generator=gen)[:12]
    x = low.clone()
    x.view(-1)[spikes] += torch.linspace(2.0, 3.0, 12) * torch.tensor([1.0, -1.0]).repeat(6)
    return x, torch.sort(spikes).values


def test_decomposition_recovers_planted_sparse_entries():
    x, spikes = _low_rank_plus_spikes()
    with single_thread():
        low, s = lowrank_sparse_decompose(x, rank=3, tau=0.01, iterations=100)
    assert torch.linalg.matrix_rank(low).item() <= 3
    assert torch.equal(top_abs_positions(s, 12), spikes)
    assert torch.equal(sparse_positions(x, rank=3, count=12), spikes)


def test_residual_is_small_and_within_threshold():
    x, _ = _low_rank_plus_spikes(1)
    low, s = lowrank_sparse_decompose(x, rank=3, tau=0.01)
    resid = x.double() - low - s
    # soft thresholding leaves at most tau of every entry outside L + S
    assert resid.abs().max().item() <= 0.01 + 1e-9


def test_positions_are_deterministic_and_depend_on_the_weights():
    w = torch.randn(64, 48, generator=torch.Generator().manual_seed(3))
    a = sparse_positions(w, rank=4, count=20)
    b = sparse_positions(w.clone(), rank=4, count=20)
    assert torch.equal(a, b)
    assert a.dtype == torch.int64 and a.shape == (20,) and torch.all(a[1:] > a[:-1])
    w2 = w.clone()
    w2[0, 0] += 5.0  # a new outlier must be picked up
    assert 0 in sparse_positions(w2, rank=4, count=20).tolist()


def test_ties_go_to_the_lower_index():
    s = torch.tensor([[1.0, -2.0, 2.0], [0.5, 2.0, 0.0]])
    assert top_abs_positions(s, 2).tolist() == [1, 2]


@pytest.mark.parametrize("rank", [0, 31])
def test_bad_rank_is_a_named_error(rank):
    with pytest.raises(DecompositionError):
        lowrank_sparse_decompose(torch.randn(30, 40), rank)


def test_single_thread_restores_the_setting():
    before = torch.get_num_threads()
    with single_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
