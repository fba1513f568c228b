"""Pieces every tuner shares: the value vector, the dense head, checks, knob parsing.

A tuner of this kind owns one flat float32 ``nn.Parameter`` of length k (what travels) and the
task head's live parameters (trained densely, sent beside the values). These helpers keep the
head and vector handling identical to :class:`shared.tuner.SparseTuner`'s.
"""

from __future__ import annotations

import torch
from torch import nn

from shared.config import ConfigError, RunConfig
from shared.sparse import MergeError


class ValueHeadMixin:
    """What every tuner does with its (k,) value parameter ``self.values`` and the live head ``self._head``.

    SparseTuner, DenseTuner, LoraTuner, DseeTuner and HiwiTuner share this part of the tuner contract;
    reparametrizing tuners create both with :meth:`_init_value_head`.
    """

    values: nn.Parameter
    _head: dict[str, nn.Parameter]

    def _init_value_head(self, model: nn.Module, head_names: tuple[str, ...], k: int) -> None:
        params = dict(model.named_parameters())
        self.head_names = tuple(head_names)
        self.values = nn.Parameter(torch.zeros(k))
        self._head = {n: params[n] for n in self.head_names}

    def load(self, values: torch.Tensor, head: dict[str, torch.Tensor] | None = None) -> None:
        """Set the value vector (k,) and, if given, the dense head tensors (both checked before writing)."""
        load_values_and_head(self.values, self._head, values, head)

    def head_state(self) -> dict[str, torch.Tensor]:
        """Copies of the head tensors."""
        return copy_head(self._head)

    def trainable(self, train_head: bool = True) -> list[nn.Parameter]:
        """The value vector first (the client gives it ``lr``), then the head if ``train_head``."""
        return trainable_params(self.values, self._head, train_head)

    @property
    def head_size(self) -> int:
        return sum(p.numel() for p in self._head.values())

    @property
    def num_trainable(self) -> int:
        """Values plus head: what trains on a client."""
        return int(self.values.numel()) + self.head_size

    def payload_bytes(self, bytes_per_value: int) -> int:
        """One client's upload without Flower's framing: the k values and the head."""
        return self.num_trainable * int(bytes_per_value)


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


def int_option(cfg: RunConfig, key: str, default: int, minimum: int) -> int:
    """An integer knob from ``cfg.extra`` that must be >= ``minimum``."""
    value = cfg.option(key, default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"run-config key '{key}' must be an integer >= {minimum}, got {value!r}")
    return value


def float_option(cfg: RunConfig, key: str, default: float, low: float, high: float) -> float:
    """A float knob from ``cfg.extra`` in [low, high]."""
    value = float(cfg.option(key, default))
    if not low <= value <= high:
        raise ConfigError(f"run-config key '{key}' must be in [{low}, {high}], got {value}")
    return value
