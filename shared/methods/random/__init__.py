"""``random``: uniformly random candidate entries, drawn from ``mask-seed`` so every node agrees.

Same candidates and count as PaFi. ``torch.randperm`` with a seeded CPU generator is deterministic
for a given torch version, which every node of a run shares.
"""

from __future__ import annotations

import torch
from torch import nn

from shared.config import RunConfig
from shared.masks import candidates, block_matrix_names, split_flat
from shared.methods.mask import mask_method
from shared.methods.random.config import RandomSettings


def select_random(model: nn.Module, density: float, cfg: RunConfig) -> dict[str, torch.Tensor]:
    """``density`` of the candidates, uniformly at random from ``mask-seed``."""
    cands = candidates(model, block_matrix_names(model))
    gen = torch.Generator().manual_seed(METHOD.settings_of(cfg).seed)
    if cfg.mask_scope == "per-matrix":
        return {n: torch.randperm(t.numel(), generator=gen)[: int(density * t.numel())] for n, t in cands.items()}
    total = sum(t.numel() for t in cands.values())
    return split_flat(torch.randperm(total, generator=gen)[: int(density * total)], cands)


METHOD = mask_method("random", "uniform positions from mask-seed, PaFi's candidates and count", select_random,
                     RandomSettings)
