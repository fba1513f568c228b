"""Bounds on what one client can do to a round: pure functions over decoded, aligned updates.

- norm policy: an update whose L2 norm (values + head) exceeds the round's bound is clipped to it or rejected
  (``norm-policy``). The bound is the least of ``max-update-norm``, ``update-norm-multiple`` x the round's median
  norm, and (by default, ``update-bound = "adaptive"``) ``update-bound-multiple`` x a *trusted scale* x the round's
  lr factor: the scale starts at the norm of the server's own reference update (:mod:`server.reference`) and then
  moves toward the median of the norms the server bounded in each round, by at most ``BOUND_STEP`` per round, so
  no round's replies set their own bound and attackers who own a round's median move it by at most 1.5x;
- weights: FedAvg weights are the replies' ``num-examples`` capped at what each node declared at the
  handshake (and at ``examples-cap-multiple`` x the median declaration), or uniform (``weighting``).

:class:`AdaptiveBound` holds the one piece of state among them: the trusted scale, its reference hook and its
checkpointed form (``opt.guard.bound-scale``).
"""

from __future__ import annotations

import logging
import statistics
from typing import Any, Callable, Mapping

import torch

from shared.config import RunConfig
from shared.schedule import lr_factor

log = logging.getLogger("fedsparse.server")

BOUND_STEP = 1.5  # the most the trusted scale moves in one round (up or down)
GUARD = "guard."  # checkpointed strategy state kept among the optimizer's tensors (``opt.guard.<name>``)
SCALE_KEY = f"{GUARD}bound-scale"


class AdaptiveBound:
    """The default bound (``update-bound = "adaptive"``): ``update-bound-multiple`` x the trusted ``scale`` (norm per
    unit lr factor) x the round's lr factor. ``reference(state, round)``: the norm of the server's own reference
    update (set by the ServerApp; :mod:`server.reference`), which starts the scale the first round it is needed;
    ``scale`` is None until then and is checkpointed after it (:meth:`saved`, :meth:`load`)."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.reference: Callable[[Any, int], float] | None = None
        self.scale: float | None = None

    def bound(self, state: Any, server_round: int) -> tuple[float | None, float]:
        """(the adaptive bound of this round or None, the round's lr factor); the first time, the trusted scale
        comes from the server's reference update from ``state`` (never from the replies it bounds)."""
        cfg = self.cfg
        factor = lr_factor(server_round, cfg.num_server_rounds, cfg.lr_schedule, cfg.lr_warmup_rounds,
                           cfg.lr_decay_rounds)
        if cfg.update_bound != "adaptive" or factor <= 0:
            return None, factor
        if self.scale is None and self.reference is not None:
            self.scale = max(self.reference(state, server_round) / factor, 1e-12)
            log.info("round %d: the server's reference update sets the trusted norm scale %.4g", server_round,
                     self.scale)
        if self.scale is None:
            return None, factor
        return cfg.update_bound_multiple * self.scale * factor, factor

    def moved(self, norms: torch.Tensor, factor: float) -> None:
        """After a round: the scale moves toward the median of the bounded updates' ``norms`` (:func:`next_scale`)."""
        if self.scale is not None and norms.numel():
            self.scale = next_scale(self.scale, norms, factor)

    def saved(self) -> dict[str, torch.Tensor]:
        """The checkpoint's tensors for the scale (none before it is set)."""
        return {} if self.scale is None else {SCALE_KEY: torch.tensor([self.scale], dtype=torch.float64)}

    def load(self, stored: Mapping[str, torch.Tensor]) -> None:
        """The scale from a checkpoint's tensors (None where the checkpoint has none)."""
        scale = stored.get(SCALE_KEY)
        self.scale = float(scale[0]) if scale is not None else None


def next_scale(scale: float, norms: torch.Tensor, lr_factor: float) -> float:
    """The trusted scale after a round whose bounded updates have L2 ``norms`` (n,), taken at ``lr_factor``: toward
    their median per unit rate, by a factor in [1 / BOUND_STEP, BOUND_STEP]; unchanged without updates."""
    if not norms.numel() or lr_factor <= 0 or scale <= 0:
        return scale
    ratio = float(norms.double().median()) / lr_factor / scale
    return scale * min(max(ratio, 1.0 / BOUND_STEP), BOUND_STEP)


def norm_bound(norms: torch.Tensor, max_norm: float, multiple: float, trusted: float | None = None) -> float | None:
    """The round's bound on an update's L2 norm (None = unbounded); ``trusted``: the adaptive bound, if any."""
    bounds = [] if trusted is None else [float(trusted)]
    if max_norm > 0:
        bounds.append(float(max_norm))
    if multiple > 0 and norms.numel():
        bounds.append(float(multiple) * float(norms.median()))
    return min(bounds) if bounds else None


def bound_updates(stack: torch.Tensor, max_norm: float, multiple: float, policy: str,
                  trusted: float | None = None) -> tuple[torch.Tensor, list[bool], list[str]]:
    """(kept rows, clipped if ``policy == "clip"``; which rows are kept; a note per row over the bound)."""
    norms = stack.double().norm(dim=1)
    bound = norm_bound(norms, max_norm, multiple, trusted)
    keep, notes, rows = [True] * stack.shape[0], [""] * stack.shape[0], []
    if bound is None or not bool((norms > bound).any()):
        return stack, keep, notes  # nothing over the bound: the very same stack
    for i in range(stack.shape[0]):
        row, norm = stack[i], float(norms[i])
        if bound is not None and norm > bound:
            notes[i] = f"update norm {norm:.4g} over the bound {bound:.4g}: {'clipped' if policy == 'clip' else 'rejected'}"
            if policy == "clip":
                row = (row.double() * (bound / norm)).float()
            else:
                keep[i] = False
        if keep[i]:
            rows.append(row)
    kept = torch.stack(rows) if rows else stack[:0]
    return kept, keep, notes


def trust_scores(rows: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """FLTrust's trust score of each row of (n, d) ``rows``: ReLU(cosine(row, ``reference`` (d,))) in [0, 1],
    float64; 0 for a zero row (it carries no direction) or a zero reference."""
    r, ref = rows.double(), reference.double()
    norms = r.norm(dim=1) * ref.norm()
    cos = torch.where(norms > 0, (r @ ref) / norms.clamp(min=1e-300), torch.zeros_like(norms))
    return cos.clamp(min=0.0)


def example_caps(declared: dict[int, int], multiple: float) -> dict[int, int]:
    """Per node, the most ``num-examples`` a reply may claim: its declaration, at most multiple x the median."""
    if multiple <= 0 or not declared:
        return dict(declared)
    ceiling = max(1, int(multiple * statistics.median(declared.values())))
    return {node: min(n, ceiling) for node, n in declared.items()}


def capped_weights(claims: list[tuple[int, int]], caps: dict[int, int], weighting: str) -> tuple[torch.Tensor, list[str]]:
    """float64 weights for (node, claimed num-examples) pairs, and a note per reply whose claim was capped."""
    if weighting == "uniform":
        return torch.ones(len(claims), dtype=torch.float64), [""] * len(claims)
    out, notes = [], []
    for node, claimed in claims:
        cap = caps.get(node)
        if cap is not None and claimed > cap:
            out.append(float(max(cap, 1)))
            notes.append(f"num-examples {claimed} above the {cap} this node may claim: capped")
        else:
            out.append(float(claimed))
            notes.append("")
    return torch.tensor(out, dtype=torch.float64), notes
