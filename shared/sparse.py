"""Values at masked positions: gather them, scatter them, merge them into a model.

The global state of a run is a float32 vector ``v`` of length ``mask.k`` (in mask order) holding
the *change* from the base weights at the masked positions, so the model of any round is
``base ⊕ scatter(v)``: W[mask] = W_base[mask] + v. All functions take and return plain tensors.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from shared.masks import Mask


class MergeError(ValueError):
    """Values cannot be merged: wrong length, dtype or non-finite entries."""


def gather_values(params: dict[str, torch.Tensor], mask: Mask) -> torch.Tensor:
    """Entries of ``params`` at the masked positions, float32 of shape (k,), in mask order."""
    out = torch.empty(mask.k, dtype=torch.float32)
    for name, idx, start, stop in mask.items():
        out[start:stop] = params[name].detach().reshape(-1)[idx].float()
    return out


def scatter_values(params: dict[str, torch.Tensor], mask: Mask, values: torch.Tensor) -> None:
    """Write ``values`` (k,) into ``params`` at the masked positions, in place."""
    check_values(values, mask)
    with torch.no_grad():
        for name, idx, start, stop in mask.items():
            flat = params[name].view(-1)
            flat[idx] = values[start:stop].to(flat.dtype)


def check_values(values: torch.Tensor, mask: Mask) -> None:
    """Raise :class:`MergeError` unless ``values`` is a finite floating vector of length k."""
    if values.dim() != 1 or values.numel() != mask.k:
        raise MergeError(f"value vector has shape {tuple(values.shape)}, the mask needs ({mask.k},)")
    if not values.is_floating_point():
        raise MergeError(f"value vector has dtype {values.dtype}; decode it to float first")
    bad = (~torch.isfinite(values)).nonzero()
    if bad.numel():
        name = _name_at(mask, int(bad[0]))
        raise MergeError(f"value vector has {bad.numel()} non-finite entries (first in {name}); nothing merged")


def _name_at(mask: Mask, pos: int) -> str:
    for name, _, start, stop in mask.items():
        if start <= pos < stop:
            return name
    return "?"


def merge_into(model: nn.Module, mask: Mask, base_values: torch.Tensor, delta: torch.Tensor,
               head: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Make ``model`` equal ``base ⊕ scatter(delta)`` (plus ``head``), in place; returns the model.

    ``base_values`` (k,) are the base weights at the mask (from :func:`gather_values` on the base).
    Checks every input before touching a weight (PEFT's ``safe_merge`` idea), so a bad vector
    leaves the model unchanged.
    """
    check_values(delta, mask)
    params = dict(model.named_parameters())
    for name, t in (head or {}).items():
        if name not in params or tuple(params[name].shape) != tuple(t.shape):
            raise MergeError(f"head tensor {name} does not match the model (shape {tuple(t.shape)})")
        if not torch.isfinite(t).all():
            raise MergeError(f"head tensor {name} has non-finite entries; nothing merged")
    scatter_values(params, mask, base_values + delta)
    with torch.no_grad():
        for name, t in (head or {}).items():
            params[name].copy_(t)
    return model


def masked_count(mask: Mask) -> dict[str, int]:
    """Selected entries per parameter name (for reports)."""
    return {name: int(idx.numel()) for name, idx, _, _ in mask.items()}


def candidate_fraction(mask: Mask) -> float:
    """k over the total size of the parameters the mask touches."""
    total = sum(math.prod(s) for s in mask.shapes)
    return mask.k / total if total else 0.0
