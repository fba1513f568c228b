"""Central differential privacy on aligned updates: per-client L2 clipping and Gaussian noise.

The DP-FedAvg recipe (McMahan et al. 2018; Flower's ``DifferentialPrivacyServerSideFixedClipping``
does the same arithmetic): clip every client's update to norm ``C``, average with equal weights,
add N(0, (z*C/n)^2) to each coordinate of the mean. The sensitivity of the mean of n clipped
updates to one client is C/n, so the noise is calibrated to it.

Why not Flower's wrapper: it clips ``reply arrays - current global arrays`` of an ArrayRecord
strategy, while our replies already *are* deltas, possibly int8/bfloat16-encoded, of a values
vector the wrapper never sees; and it draws noise from NumPy's unseeded global generator, which
would break the bit-identical resume. The math is the same, as pure functions here.
"""

from __future__ import annotations

import torch

from shared.clipping import PrivacyError, clip_rows

__all__ = ["PrivacyError", "clip_rows", "gaussian_noise", "noise_std"]


def noise_std(noise_multiplier: float, clip_norm: float, num_clients: int) -> float:
    """Standard deviation z*C/n of the Gaussian noise added to the mean of n clipped updates."""
    if noise_multiplier < 0 or clip_norm <= 0 or num_clients < 1:
        raise PrivacyError("need dp-noise-multiplier >= 0, dp-clip-norm > 0 and at least one client")
    return noise_multiplier * clip_norm / num_clients


def gaussian_noise(size: int, std: float, seed: int) -> torch.Tensor:
    """(size,) float64 N(0, std^2) from a private generator seeded by ``seed`` (resume-safe)."""
    gen = torch.Generator().manual_seed(int(seed) % (2**63))
    return torch.randn(size, generator=gen, dtype=torch.float64) * std
