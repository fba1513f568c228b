"""Per-client L2 clipping, shared by both ends of central DP.

The server clips every client's update in a plain round (``server.privacy``); under secure
aggregation the server never sees an update, so each client clips its own before masking
(``client.client_app``). Both call :func:`clip_rows`, so the two paths clip with the same arithmetic.
"""

from __future__ import annotations

import torch


class PrivacyError(ValueError):
    """DP settings are invalid (negative clipping norm or noise multiplier)."""


def clip_rows(deltas: torch.Tensor, clip_norm: float) -> torch.Tensor:
    """Scale each row of (n, d) ``deltas`` to L2 norm at most ``clip_norm``; float64 (n, d)."""
    if clip_norm <= 0:
        raise PrivacyError(f"dp-clip-norm must be > 0 to clip, got {clip_norm}")
    d = deltas.double()
    norms = d.norm(dim=1, keepdim=True)
    scale = torch.clamp(clip_norm / torch.clamp(norms, min=1e-300), max=1.0)
    return d * scale
