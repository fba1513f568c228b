"""``magnitude``: MagPruning of Fu et al. (AAAI 2023): the candidate entries with the *largest* |w|."""

from __future__ import annotations

import torch
from torch import nn

from shared.config import RunConfig
from shared.masks import candidates, block_matrix_names, select_by_score
from shared.methods.mask import mask_method


def select_magnitude(model: nn.Module, density: float, cfg: RunConfig) -> dict[str, torch.Tensor]:
    """PaFi's candidates, ranked the other way."""
    cands = candidates(model, block_matrix_names(model))
    return select_by_score(cands, lambda t: -t.abs(), density, cfg.mask_scope)


METHOD = mask_method("magnitude", "largest pre-trained |w|, PaFi's candidates (MagPruning)", select_magnitude)
