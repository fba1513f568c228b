"""The method contract, in one place: what every way of choosing what trains implements.

A method is one folder ``shared/methods/<name>/`` whose ``__init__.py`` defines ``METHOD``, a
:class:`Method`, and one line in ``shared/methods/__init__.py`` registers it. The server and the
client never test a method's name: what differs is a field of the :class:`Method` or a hook of its
:class:`Tuner`, each with a default:

=======================  ===================================================  ======================
hook                     what it is                                           default
=======================  ===================================================  ======================
``build``                ``(base, cfg, digest) -> Tuner`` (required)          -
``settings``             the method's typed, frozen knobs (``config.py``)     no knobs
``lr`` / ``head_lr``     the method's learning rates (``lr = 0`` uses them)    5e-3 / 1e-3 (0: = lr)
``selector``             mask methods: positions from the base weights        none
``select``               a phase after the handshake, before round 1          none
``client_routes``        the client side of that phase (``query.<route>``)    none
``restore``              client: re-install per-node state before a message   none
``Tuner.codec``          how an update is encoded and decoded                 values only (aligned)
``aligned``              its updates are dense over the same k coordinates    True
                         (= ``Tuner.codec.aligned``; known before any model
                         loads, so secure aggregation is refused at start)
``Tuner.describe``       the method's figures for summary.json                ``{}``
``Tuner.finalize``       a final step on the merged model (dsee pruning)      ``{}``
``Tuner.save_artifact``  the small task artifact; ``apply_artifact`` reads it  (required)
=======================  ===================================================  ======================

Everything here is plain torch/numpy: a selection phase talks through a :class:`PhaseContext`
and a client route receives a :class:`ClientCall`; the apps turn them into Flower messages.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import torch
from torch import nn

from shared.config import RunConfig
from shared.knobs import build as build_settings
from shared.methods.common import copy_head, load_values_and_head, trainable_params
from shared.model import BaseModel
from wire.protocol import VALUES, Parts, UpdateCodec


@dataclass(frozen=True)
class NoSettings:
    """A method without knobs of its own."""


class Tuner(ABC):
    """The state of a method inside one process: installed into the base model, trained, merged.

    ``values`` (k,) float32 is the one trainable vector that travels (mask order); the dense task head
    trains beside it. Subclasses set ``values``, ``_head`` and ``head_names`` (see :meth:`_init_value_head`).
    """

    codec: UpdateCodec = VALUES
    values: nn.Parameter
    _head: dict[str, nn.Parameter]
    head_names: tuple[str, ...]

    def _init_value_head(self, model: nn.Module, head_names: tuple[str, ...], k: int) -> None:
        params = dict(model.named_parameters())
        self.head_names = tuple(head_names)
        self.values = nn.Parameter(torch.zeros(k))
        self._head = {n: params[n] for n in self.head_names}

    # ---- identity ----------------------------------------------------------------------------
    @property
    @abstractmethod
    def fingerprint(self) -> str:
        """SHA-256 of everything two nodes must share for their vectors to line up."""

    @property
    def k(self) -> int:
        """Length of the value vector."""
        return int(self.values.numel())

    # ---- state -------------------------------------------------------------------------------
    def initial_values(self) -> torch.Tensor:
        """Global values before round 1 (default: no change from the base)."""
        return torch.zeros(self.k)

    def to(self, device: torch.device) -> "Tuner":
        """Move the tuner's own compute tensors to ``device`` (the runtime moves the model).

        The value vector keeps its identity (its ``.data`` moves); what serves merges, artifacts and
        the wire (masks, initial values) stays on the CPU. A method with more device tensors overrides.
        """
        with torch.no_grad():
            self.values.data = self.values.data.to(device)
        return self

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
        return self.k + self.head_size

    def payload_bytes(self, bytes_per_value: int) -> int:
        """One client's upload without Flower's framing (the codec's count)."""
        return self.codec.payload_bytes(self.k, self.head_size, bytes_per_value)

    def reset(self) -> None:
        """The server starts a new run with this (cached) tuner; default: nothing to forget."""

    # ---- the end of a run --------------------------------------------------------------------
    @abstractmethod
    def merge(self, fresh: nn.Module, values: torch.Tensor, head: dict[str, torch.Tensor]) -> nn.Module:
        """Write the result into ``fresh`` (an unwrapped base copy): a plain ``transformers`` model."""

    @abstractmethod
    def save_artifact(self, out: Path, values: torch.Tensor, head: dict[str, torch.Tensor], cfg: RunConfig,
                      source: str) -> Path:
        """Write the small task artifact into ``out``; returns its path."""

    @abstractmethod
    def apply_artifact(self, out: Path, fresh: nn.Module) -> nn.Module:
        """Rebuild the merged model from :meth:`save_artifact`'s output and a fresh base (checks identity)."""

    def describe(self) -> dict:
        """The method's own figures for summary.json."""
        return {}

    def finalize(self, merged: nn.Module, values: torch.Tensor, score_fn: Callable[[nn.Module], float],
                 out: Path) -> dict:
        """A final step after the merge (e.g. pruning); returns summary.json fields."""
        return {}


class PhaseContext(Protocol):
    """What a selection phase may do (the server implements it over Flower's Grid)."""

    cfg: RunConfig
    tuner: Tuner
    nodes: list[int]  # handshaken nodes, in partition order
    saved: dict[str, torch.Tensor]  # the resumed checkpoint's selection state ({} if none)

    def exchange(self, route: str, payloads: Mapping[int, Parts]) -> list[tuple[int, Parts]]:
        """Send ``query.<route>`` to each node; the replies that did not fail, in partition order."""

    def reject(self, node: int, reason: str) -> None:
        """Log and count a bad reply."""

    def exclude(self, node: int) -> None:
        """Keep ``node`` out of training from now on."""

    def traffic(self) -> tuple[int, int]:
        """Bytes (up, down) of round 0 so far."""


@dataclass
class ClientCall:
    """One message to a method's client route, as plain parts."""

    cfg: RunConfig
    tuner: Tuner
    base: BaseModel
    partition_id: int
    num_partitions: int
    request: Parts
    data: Callable[[], Any]  # this node's tokenized partition (loaded on demand)
    state: dict[str, Any] = field(default_factory=dict)  # per-node state kept across messages (arrays, str)


HEAD_LR = 1e-3  # default learning rate of the dense task head (see Method.head_lr)

Selector = Callable[[nn.Module, float, RunConfig], dict[str, torch.Tensor]]
ClientRoute = Callable[[ClientCall], Parts]


@dataclass(frozen=True)
class Method:
    """One registered method (see the module docstring for each field)."""

    name: str
    help: str
    build: Callable[[BaseModel, RunConfig, str], Tuner]
    settings: type = NoSettings
    lr: float = 5e-3
    # The dense head's rate, apart from the values': a fresh AdamW each round moves every head weight by
    # ~lr per step whatever its gradient, and at 5e-3 ten steps on a label-skewed client shift the test
    # logits ~1.5 toward that client's majority class from the head alone (0.3 at 1e-3), so the global
    # head swung between the classes for the first rounds (docs/benchmark.md). 0 = the same as ``lr``.
    head_lr: float = HEAD_LR
    selector: Selector | None = None
    select: Callable[[PhaseContext], dict[str, torch.Tensor]] | None = None
    client_routes: Mapping[str, ClientRoute] = field(default_factory=dict)
    restore: Callable[[Tuner, dict[str, Any]], None] | None = None
    aligned: bool = True

    def settings_of(self, cfg: RunConfig) -> Any:
        """The method's typed settings from ``cfg.options`` (validated; defaults for keys not given)."""
        return build_settings(self.settings, cfg.options)

    def learning_rates(self, cfg: RunConfig) -> tuple[float, float]:
        """(values lr, head lr): ``lr``/``head-lr`` when set (> 0), else the method's defaults."""
        lr = cfg.lr if cfg.lr > 0 else self.lr
        head = cfg.head_lr if cfg.head_lr > 0 else (self.head_lr if self.head_lr > 0 else lr)
        return lr, head
