"""FedAvg's cache-blocked float64 reduction equals the plain float64 weighted mean."""

from __future__ import annotations

import pytest
import torch

from server.aggregation import weighted_mean


@pytest.mark.parametrize("n,k", [(1, 7), (3, 5000), (300, 9000), (1000, 4099)])
def test_blocked_weighted_mean_equals_plain_float64_mean(n, k):
    gen = torch.Generator().manual_seed(n * 31 + k)
    deltas = torch.randn(n, k, generator=gen)
    weights = torch.randint(1, 500, (n,), generator=gen).double()
    w = weights / weights.sum()
    expected = (w[:, None] * deltas.double()).sum(0).float()
    got = weighted_mean(deltas, weights)
    assert got.dtype == torch.float32 and got.shape == (k,)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-7)
