"""Pieces every tuner shares: loading the value vector and the dense head, checks before any write."""

from __future__ import annotations

import torch
from torch import nn

from shared.sparse import MergeError


def load_values_and_head(param: nn.Parameter, live_head: dict[str, torch.Tensor], values: torch.Tensor,
                         head: dict[str, torch.Tensor] | None) -> None:
    """Copy ``values`` into the (k,) parameter and ``head`` into the live head, after checking both."""
    check_vector(values, param.numel())
    for name, t in (head or {}).items():
        if name not in live_head or live_head[name].shape != t.shape:
            raise MergeError(f"head tensor {name} with shape {tuple(t.shape)} does not fit the model")
    with torch.no_grad():
        param.copy_(values)
        for name, t in (head or {}).items():
            live_head[name].copy_(t)


def copy_head(live_head: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached copies of the head tensors."""
    return {n: p.detach().clone() for n, p in live_head.items()}


def trainable_params(param: nn.Parameter, live_head: dict[str, torch.Tensor], train_head: bool) -> list[nn.Parameter]:
    """The value vector first (the client gives it ``lr``), then the head if ``train_head``."""
    for p in live_head.values():
        p.requires_grad_(train_head)
    return [param] + (list(live_head.values()) if train_head else [])


def check_vector(values: torch.Tensor, k: int) -> None:
    """Raise :class:`MergeError` unless ``values`` is a finite floating vector of shape (k,)."""
    if values.dim() != 1 or values.numel() != k:
        raise MergeError(f"value vector has shape {tuple(values.shape)}, this tuner needs ({k},)")
    if not values.is_floating_point():
        raise MergeError(f"value vector has dtype {values.dtype}; decode it to float first")
    if not torch.isfinite(values).all():
        raise MergeError("value vector has non-finite entries; nothing merged")


def write_head(params: dict[str, torch.Tensor], head: dict[str, torch.Tensor]) -> None:
    """Copy finite, shape-matching head tensors into ``params`` (all checked before any write)."""
    for name, t in head.items():
        if name not in params or tuple(params[name].shape) != tuple(t.shape):
            raise MergeError(f"head tensor {name} does not match the model (shape {tuple(t.shape)})")
        if not torch.isfinite(t).all():
            raise MergeError(f"head tensor {name} has non-finite entries; nothing merged")
    with torch.no_grad():
        for name, t in head.items():
            params[name].copy_(t)
