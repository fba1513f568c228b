"""The :class:`Mask` every node derives alike, and the pieces selectors are made of.

Mask order, the order of values on the wire, is: parameters in ``model.named_parameters()`` order,
then ascending flat index. The selectors themselves are methods (``shared/methods/<name>/``, built
with :func:`shared.methods.mask.mask_method`); :func:`build_mask` freezes what one picked.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from shared.architectures import block_matrix_names  # noqa: F401 - the candidates, re-exported


class MaskError(ValueError):
    """A mask could not be built (unknown method, empty candidate set, bad density)."""


class MaskMismatchError(ValueError):
    """A peer's mask fingerprint differs from ours: different base model, method or density."""


@dataclass(frozen=True)
class Mask:
    """Selected positions per parameter, in mask order. ``k`` values travel, never the indices."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    indices: tuple[torch.Tensor, ...]  # int64 flat indices, sorted ascending, one per name
    method: str
    density: float
    base_digest: str
    fingerprint: str

    @property
    def k(self) -> int:
        """Number of selected entries (the length of every value vector)."""
        return int(sum(int(i.numel()) for i in self.indices))

    @property
    def offsets(self) -> tuple[int, ...]:
        """Start of each parameter's slice in the (k,) value vector; ``len(names)+1`` entries."""
        out = [0]
        for idx in self.indices:
            out.append(out[-1] + int(idx.numel()))
        return tuple(out)

    def items(self):
        """Iterate ``(name, flat_indices, start, stop)`` in mask order."""
        offs = self.offsets
        for i, name in enumerate(self.names):
            yield name, self.indices[i], offs[i], offs[i + 1]


def candidates(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    if not names:
        raise MaskError("the model has no candidate matrices (attention/feed-forward projections inside its blocks); "
                        "use a BERT, GPT-2 or Llama-style model")
    return {n: params[n].detach() for n in names}


def _bottom_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Flat indices of the k smallest scores; ties at the threshold go to the lowest index.

    Exact and deterministic (no reliance on topk's tie order), so all nodes agree bit for bit.
    """
    if k <= 0:
        return torch.empty(0, dtype=torch.long)
    if k >= scores.numel():
        return torch.arange(scores.numel())
    thr = torch.kthvalue(scores, k).values
    below = torch.nonzero(scores < thr).flatten()
    ties = torch.nonzero(scores == thr).flatten()[: k - below.numel()]
    return torch.sort(torch.cat([below, ties])).values


def split_flat(flat_idx: torch.Tensor, cands: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out, start = {}, 0
    for name, t in cands.items():
        stop = start + t.numel()
        sel = flat_idx[(flat_idx >= start) & (flat_idx < stop)] - start
        out[name] = sel
        start = stop
    return out


def select_by_score(cands: dict[str, torch.Tensor], score: Callable[[torch.Tensor], torch.Tensor],
                    density: float, scope: str) -> dict[str, torch.Tensor]:
    """Keep the entries with the *smallest* score: globally, or the same fraction in every matrix."""
    if scope == "per-matrix":
        return {n: _bottom_k(score(t).flatten().float(), int(density * t.numel())) for n, t in cands.items()}
    flat = torch.cat([score(t).flatten().float() for t in cands.values()])
    k = int(density * flat.numel())
    return split_flat(_bottom_k(flat, k), cands)


def mask_fingerprint(base_digest: str, method: str, density: float, names, indices, recipe: str = "") -> str:
    """SHA-256 over the base weights' digest, method, density, the selector's options and every position."""
    h = hashlib.sha256()
    h.update(f"{base_digest}|{method}|{density!r}|".encode())
    if recipe:  # empty for option-less selectors, so their fingerprints are unchanged
        h.update(f"{recipe}|".encode())
    for name, idx in zip(names, indices):
        h.update(f"{name}:{idx.numel()}|".encode())
        h.update(idx.to(torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()


def build_mask(model: nn.Module, selected: dict[str, torch.Tensor], method: str, density: float,
               base_digest: str, recipe: str = "") -> Mask:
    """Freeze a selection into a :class:`Mask` (model order, sorted unique indices, fingerprint)."""
    params = dict(model.named_parameters())
    names, shapes, indices = [], [], []
    for name, p in model.named_parameters():
        if name not in selected or selected[name].numel() == 0:
            continue
        idx = torch.unique(selected[name].to(torch.int64))  # sorted, unique
        if idx[0] < 0 or idx[-1] >= p.numel():
            raise MaskError(f"selector returned out-of-range indices for {name}")
        names.append(name)
        shapes.append(tuple(p.shape))
        indices.append(idx)
    unknown = set(selected) - set(params)
    if unknown:
        raise MaskError(f"selector named parameters the model does not have: {sorted(unknown)[:3]}")
    fp = mask_fingerprint(base_digest, method, density, names, indices, recipe)
    return Mask(tuple(names), tuple(shapes), tuple(indices), method, float(density), base_digest, fp)
