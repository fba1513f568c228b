"""Bounds on what one client can do to a round: pure functions over decoded, aligned updates.

- norm policy: an update whose L2 norm (values + head) exceeds ``max-update-norm`` and/or
  ``update-norm-multiple`` x the round's median norm is clipped to the bound or rejected
  (``norm-policy``); the bound never depends on the offending update alone;
- weights: FedAvg weights are the replies' ``num-examples`` capped at what each node declared at the
  handshake (and at ``examples-cap-multiple`` x the median declaration), or uniform (``weighting``).
"""

from __future__ import annotations

import statistics

import torch


def norm_bound(norms: torch.Tensor, max_norm: float, multiple: float) -> float | None:
    """The round's bound on an update's L2 norm (None = unbounded)."""
    bounds = []
    if max_norm > 0:
        bounds.append(float(max_norm))
    if multiple > 0 and norms.numel():
        bounds.append(float(multiple) * float(norms.median()))
    return min(bounds) if bounds else None


def bound_updates(stack: torch.Tensor, max_norm: float, multiple: float,
                  policy: str) -> tuple[torch.Tensor, list[bool], list[str]]:
    """(kept rows, clipped if ``policy == "clip"``; which rows are kept; a note per row over the bound)."""
    norms = stack.double().norm(dim=1)
    bound = norm_bound(norms, max_norm, multiple)
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
