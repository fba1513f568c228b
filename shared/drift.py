"""Client-drift correction on the aligned vectors: SCAFFOLD's control variates and FedProx's proximal term.

Both act on a client's trainable vector, laid out as the wire lays it out: the method's values (k,) then the
dense head (h,) flattened in ``head_names`` order — one (k + h,) float32 vector, the same coordinates on every
node (what an aligned method guarantees, :attr:`shared.methods.base.Method.aligned`).

- **SCAFFOLD** (Karimireddy et al., ICML 2020, Algorithm 1). The server keeps ``c``, each client ``c_i`` (both
  (k + h,)). A client's local step uses ``g + c - c_i`` in place of its minibatch gradient ``g``; it then renews
  ``c_i`` and sends ``delta c_i = c_i+ - c_i``. The clients train with AdamW, not SGD: the correction is added to
  the gradient *before* the optimizer step (Adam then normalizes the corrected gradient), so ``c`` and ``c_i``
  must be in the units of a gradient. ``scaffold-variate`` chooses how ``c_i`` is renewed:

  - ``gradient`` (default): ``c_i+`` = the mean raw minibatch gradient over the K local steps (option I's
    "gradient of the local data", taken along the local trajectory instead of at x: no extra pass);
  - ``option-ii``: the paper's ``c_i+ = c_i - c + (x - y_i) / (K * lr)``, K the optimizer steps taken, ``lr``
    each coordinate's rate (values ``lr``, head ``head-lr``, both x the schedule's factor of the round); a
    coordinate group that stepped at rate 0 keeps its ``c_i``. Exact for SGD. Under AdamW, ``(x - y_i)/(K lr)``
    is the mean of Adam's *normalized* step (|.| up to 1), not of the gradient: on the bundled MiniLM (SST-2,
    20 steps) its RMS is 0.41 on pafi's values against a mean-gradient RMS of 1.2e-4 (full: 0.35 vs 2.1e-4), so
    ``c - c_i`` swamps ``g`` and each step follows ``sign(c - c_i)``, whatever the client's data (docs/drift.md).
- **FedProx** (Li et al., MLSys 2020): the local objective gains ``(mu / 2) ||w - w_global||^2`` over the
  trainable vector; its gradient ``mu (w - w_global)`` is added to each step's gradient (the reported train
  loss stays the data loss). ``mu = 0`` adds nothing: the plain path runs, bit for bit.

Pure torch: the apps move the vectors (``wire/drift.py``) and keep the state (client: ``context.state``;
server: ``server/drift.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from shared.knobs import ConfigError

DRIFT_CORRECTIONS = ("none", "scaffold")
SCAFFOLD_VARIATES = ("gradient", "option-ii")  # how a client's c_i is renewed (see the module docstring)


def check_drift_config(correction: str, secure_aggregation: bool, dp_noise_multiplier: float) -> None:
    """One-line :class:`ConfigError` where SCAFFOLD cannot run with the run's privacy settings (any method)."""
    if correction != "scaffold":
        return
    if secure_aggregation:
        raise ConfigError("secure-aggregation=true cannot run drift-correction='scaffold': each client's control-"
                          "variate change (its update divided by K*lr, minus c) would travel in the clear beside "
                          "its masked update and reveal it; use drift-correction='none' (prox-mu works under "
                          "secure aggregation)")
    if dp_noise_multiplier > 0:
        raise ConfigError("dp-noise-multiplier > 0 cannot run with drift-correction='scaffold': the server's "
                          "control variate c is the un-noised mean of the clients' variate changes and steers "
                          "every later round, so the model would not be covered by the noise; use "
                          "drift-correction='none' (prox-mu works with central DP)")


def check_drift_method(correction: str, method: str, aligned: bool) -> None:
    """One-line :class:`ConfigError` for SCAFFOLD on a method whose trainables are not one aligned vector."""
    if correction == "scaffold" and not aligned:
        raise ConfigError(f"drift-correction='scaffold' cannot run method '{method}': its updates are not aligned "
                          f"(each carries its own positions), so clients share no vector of k coordinates for "
                          f"the control variates c and c_i; use a shared-mask method (e.g. pafi) or "
                          f"drift-correction='none' (prox-mu works with every method)")


def rate_vector(k: int, h: int, lr: float, head_lr: float) -> torch.Tensor:
    """(k + h,) float32: the rate each coordinate of the trainable vector steps at (values, then head)."""
    return torch.cat([torch.full((int(k),), float(lr)), torch.full((int(h),), float(head_lr))])


def option_ii(c_i: torch.Tensor, c: torch.Tensor, start: torch.Tensor, end: torch.Tensor, steps: int,
              rates: torch.Tensor) -> torch.Tensor:
    """SCAFFOLD option II: ``c_i+ = c_i - c + (start - end) / (steps * rates)``; all (k + h,) float32.

    ``start`` is the global vector the client began from (x), ``end`` its vector after ``steps`` optimizer
    steps (y_i), ``rates`` each coordinate's step rate. Where ``steps * rates`` is 0 the client learned nothing
    about the gradient: ``c_i`` is returned unchanged there.
    """
    scale = float(steps) * rates.float()
    moved = (start.float() - end.float()) / torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.where(scale > 0, c_i.float() - c.float() + moved, c_i.float())


@dataclass
class DriftTerms:
    """What one client's local training adds to each step's gradient (``None``/0 = that part is off).

    ``correction``: SCAFFOLD's ``c - c_i`` (k + h,); ``anchor``: the round's global vector (k + h,) FedProx pulls
    toward with strength ``mu``.
    """

    correction: torch.Tensor | None = None
    anchor: torch.Tensor | None = None
    mu: float = 0.0

    @property
    def active(self) -> bool:
        return self.correction is not None or (self.mu > 0 and self.anchor is not None)


class GradientAdjuster:
    """Called by :func:`shared.training.train_local` after each backward pass, before the optimizer step.

    ``params``: the trainable tensors in wire order (the values (k,) first, then the head tensors), whose sizes
    sum to the terms' length. Adds ``correction`` and ``mu * (p - anchor)`` to each ``p.grad`` (a parameter
    without a gradient gets one) and counts the steps (``steps``: SCAFFOLD's K).
    """

    def __init__(self, params: Sequence[nn.Parameter], terms: DriftTerms, track_gradients: bool = False):
        self.params, self.mu, self.steps = list(params), float(terms.mu), 0
        total = sum(p.numel() for p in self.params)
        self.corrections = self._pieces(terms.correction, total)
        self.anchors = self._pieces(terms.anchor, total) if self.mu > 0 else None
        self.grad_sums = [torch.zeros_like(p) for p in self.params] if track_gradients else None

    def _pieces(self, vec: torch.Tensor | None, total: int) -> list[torch.Tensor] | None:
        """``vec`` (total,) cut into the parameters' shapes, on their devices (``None`` stays ``None``)."""
        if vec is None:
            return None
        if vec.dim() != 1 or vec.numel() != total:
            raise ValueError(f"drift vector has shape {tuple(vec.shape)}, the trainable parameters need ({total},)")
        pieces = vec.detach().float().split([p.numel() for p in self.params])
        return [piece.reshape(p.shape).to(p.device) for piece, p in zip(pieces, self.params)]

    @torch.no_grad()
    def __call__(self) -> None:
        for i, p in enumerate(self.params):
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            if self.grad_sums is not None:  # the raw minibatch gradient, before any drift term
                self.grad_sums[i].add_(p.grad)
            if self.corrections is not None:
                p.grad.add_(self.corrections[i])
            if self.anchors is not None:
                p.grad.add_(p.detach() - self.anchors[i], alpha=self.mu)
        self.steps += 1

    def mean_gradient(self) -> torch.Tensor:
        """(total,) float32 on the CPU: the mean raw minibatch gradient over the steps taken (needs
        ``track_gradients``; zeros before the first step)."""
        if self.grad_sums is None:
            raise ValueError("mean_gradient needs GradientAdjuster(..., track_gradients=True)")
        flat = torch.cat([g.detach().reshape(-1).float().cpu() for g in self.grad_sums])
        return flat / max(1, self.steps)
