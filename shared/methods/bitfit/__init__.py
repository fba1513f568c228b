"""``bitfit``: every bias term of the pre-trained body (BERT: embeddings LayerNorm, encoder, pooler; GPT-2:
every projection and LayerNorm bias).

The body is the ``base_model_prefix`` sub-model (``bert.*``, ``transformer.*``), so the task head's bias, which
trains densely anyway, is never in the mask. Its budget is its own: ``mask-density`` is ignored. A model without
biases (Llama, Qwen2's MLP, …) is refused when the tuner is built, before any training, in one line.
"""

from __future__ import annotations

import torch
from torch import nn

from shared.config import RunConfig
from shared.masks import MaskError
from shared.methods.mask import mask_method


def select_bitfit(model: nn.Module, density: float, cfg: RunConfig) -> dict[str, torch.Tensor]:
    """All biases of the body."""
    prefix = getattr(model, "base_model_prefix", "") + "."
    sel = {n: torch.arange(p.numel()) for n, p in model.named_parameters()
           if n.startswith(prefix) and n.endswith("bias")}
    if not sel:
        raise MaskError(f"bitfit needs bias terms and this model has none under '{prefix}*' (Llama-style decoders "
                        f"have none); use method='pafi', or method='hiwi' with hiwi-target='weight'")
    return sel


METHOD = mask_method("bitfit", "every bias of the pre-trained body (own budget)", select_bitfit)
