"""Central DP: the clipping bound holds and the noise has the calibrated scale z*C/n."""

from __future__ import annotations

import math

import pytest
import torch

from server.privacy import PrivacyError, clip_rows, gaussian_noise, noise_std
from server.server_opt import ServerSettings, server_step


def test_clipping_bounds_every_row_and_keeps_small_ones():
    g = torch.Generator().manual_seed(0)
    d = torch.randn(50, 300, generator=g) * torch.logspace(-3, 2, 50)[:, None]
    clipped = clip_rows(d, 1.5)
    norms = clipped.norm(dim=1)
    assert (norms <= 1.5 * (1 + 1e-12)).all()
    small = d.double().norm(dim=1) <= 1.5
    assert torch.equal(clipped[small], d.double()[small])  # under the bound: untouched
    big = ~small  # over the bound: same direction, norm exactly C
    assert torch.allclose(norms[big], torch.full_like(norms[big], 1.5))
    cos = torch.nn.functional.cosine_similarity(clipped[big], d.double()[big])
    assert torch.allclose(cos, torch.ones_like(cos))
    with pytest.raises(PrivacyError):
        clip_rows(d, 0.0)


def test_server_noise_has_std_z_c_over_n():
    z, c, n, k = 1.1, 0.5, 8, 200_000
    hp = ServerSettings(dp_clip_norm=c, dp_noise_multiplier=z, seed=7)
    deltas = torch.zeros(n, k)
    up, _ = server_step(deltas, torch.ones(n), {}, hp, server_round=3)
    want = noise_std(z, c, n)
    assert want == pytest.approx(z * c / n)
    sample_std = float(up.double().std())
    # the sample std of k normals has relative standard error ~ 1/sqrt(2k) ~ 0.16 %: allow 5 of them
    assert abs(sample_std / want - 1) < 5 / math.sqrt(2 * k)
    assert abs(float(up.double().mean())) < 5 * want / math.sqrt(k)
    again, _ = server_step(deltas, torch.ones(n), {}, hp, server_round=3)
    other, _ = server_step(deltas, torch.ones(n), {}, hp, server_round=4)
    assert torch.equal(up, again) and not torch.equal(up, other)  # seeded by (seed, round): replays on resume


def test_dp_mean_of_clipped_updates_ignores_claimed_weights():
    hp = ServerSettings(dp_clip_norm=1.0)
    deltas = torch.tensor([[3.0, 4.0], [0.0, 0.5]])
    up, _ = server_step(deltas, torch.tensor([1e6, 1.0]), {}, hp, 1)
    assert torch.allclose(up, torch.tensor([0.3, 0.65]))
    assert gaussian_noise(4, 0.0, 1).abs().sum() == 0
