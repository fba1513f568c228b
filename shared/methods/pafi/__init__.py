"""``pafi`` (Liao et al., ACL 2023): the candidate entries with the smallest pre-trained |w| train.

Candidates are the encoder's attention and feed-forward matrices; k = mask-density of them, chosen
globally (or per matrix with ``mask-scope = "per-matrix"``). The mask depends on the base weights
alone, so every node derives it and only the k values travel.
"""

from __future__ import annotations

import torch
from torch import nn

from shared.config import RunConfig
from shared.masks import candidates, block_matrix_names, select_by_score
from shared.methods.mask import mask_method


def select_pafi(model: nn.Module, density: float, cfg: RunConfig) -> dict[str, torch.Tensor]:
    """The candidate entries with the smallest pre-trained |w|."""
    return select_by_score(candidates(model, block_matrix_names(model)), torch.abs, density, cfg.mask_scope)


# lr 2e-2 under the default cosine decay (a mean rate of 1e-2, the paper preset's validation-chosen constant rate):
# the best first run of the validation grid (docs/benchmark.md, "The first run"); the other masks keep 5e-3
METHOD = mask_method("pafi", "smallest pre-trained |w| of the encoder's attention/FFN matrices", select_pafi, lr=2e-2)
