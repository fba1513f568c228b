"""``pafi-attention``: PaFi's rule within the attention matrices only (query, key, value, output).

The smallest pre-trained |w| among the self-attention projections and the attention output matrix
of every layer (any model whose attention modules' class names end with ``Attention``); the
feed-forward matrices stay frozen. Same budget rule as PaFi: k = mask-density
of these candidates, globally or per matrix.
"""

from __future__ import annotations

import torch
from torch import nn

from shared.config import RunConfig
from shared.architectures import attention_module_names
from shared.masks import MaskError, candidates, block_matrix_names, select_by_score
from shared.methods.mask import mask_method


def attention_matrix_names(model: nn.Module) -> list[str]:
    """The block matrices inside attention modules (BERT query/key/value/output, GPT-2 c_attn/attn.c_proj,
    Llama q/k/v/o_proj)."""
    inside = {f"{n}.weight" for n in attention_module_names(model)}
    names = [n for n in block_matrix_names(model) if n in inside]
    if not names:
        raise MaskError("the model has no attention projections in its blocks; use method='pafi'")
    return names


def select_pafi_attention(model: nn.Module, density: float, cfg: RunConfig) -> dict[str, torch.Tensor]:
    """The attention entries with the smallest pre-trained |w|."""
    return select_by_score(candidates(model, attention_matrix_names(model)), torch.abs, density, cfg.mask_scope)


METHOD = mask_method("pafi-attention", "smallest pre-trained |w| within the attention matrices only",
                     select_pafi_attention)
