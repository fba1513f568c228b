"""DSEE's inference-efficient final model: global magnitude pruning and attention-head removal.

Unstructured pruning uses ``torch.nn.utils.prune`` (global L1 over the encoder's matrices, then
made permanent). Heads are removed in two forms, because transformers 5 dropped ``prune_heads``:
``zero_heads`` zeroes a head's query/key/value rows and its attention-output columns, which
computes exactly what removal computes and keeps a plain checkpoint that ``from_pretrained``
loads; the removed heads are recorded in ``config.dsee_pruned_heads``, and ``remove_heads``
(transformers' ``prune_linear_layer``) physically shrinks the layers for the faster model.
"""

from __future__ import annotations

import re

import torch
from torch import nn
from torch.nn.utils import prune
from transformers.pytorch_utils import prune_linear_layer

CONFIG_KEY = "dsee_pruned_heads"  # config.json entry: {"layer": [head, ...]}
_LAYER = re.compile(r"\.layer\.(\d+)\.")


class PruneError(ValueError):
    """Pruning was asked for something this model cannot do (ratio, head count, architecture)."""


def magnitude_prune(model: nn.Module, names: list[str], ratio: float) -> float:
    """Zero the ``ratio`` fraction of smallest-|w| entries over the named weights, globally, in place.

    Returns the achieved fraction of zeros over those weights.
    """
    if not 0.0 <= ratio < 1.0:
        raise PruneError(f"prune ratio must be in [0, 1), got {ratio}")
    modules = dict(model.named_modules())
    targets = [(modules[n.rpartition(".")[0]], n.rpartition(".")[2]) for n in names]
    if ratio > 0:
        prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=ratio)
        for module, attr in targets:
            prune.remove(module, attr)  # bake the mask into a plain parameter
    return zero_fraction(model, names)


def zero_fraction(model: nn.Module, names: list[str]) -> float:
    """Fraction of exactly-zero entries over the named parameters."""
    params = dict(model.named_parameters())
    total = sum(params[n].numel() for n in names)
    zeros = sum(int((params[n] == 0).sum()) for n in names)
    return zeros / max(total, 1)


def head_scores(deltas: dict[str, torch.Tensor], num_heads: int) -> dict[int, torch.Tensor]:
    """Per layer, the summed |Δ| of each head's output rows over the given (out, in) updates.

    ``deltas``: parameter name (containing ``.layer.<i>.``) -> dense update. Returns layer ->
    float64 tensor (num_heads,).
    """
    scores: dict[int, torch.Tensor] = {}
    for name, d in deltas.items():
        match = _LAYER.search(f".{name}")
        if match is None:
            raise PruneError(f"cannot tell the layer of {name}; head pruning needs a BERT-style encoder")
        per_head = d.detach().abs().to(torch.float64).reshape(num_heads, -1).sum(dim=1)
        layer = int(match.group(1))
        scores[layer] = scores.get(layer, torch.zeros(num_heads, dtype=torch.float64)) + per_head
    return scores


def lowest_heads(scores: dict[int, torch.Tensor], count: int) -> dict[int, list[int]]:
    """The ``count`` lowest-scoring heads of every layer (ties to the lower index), sorted."""
    out = {}
    for layer, s in sorted(scores.items()):
        if not 0 <= count < s.numel():
            raise PruneError(f"cannot remove {count} of {s.numel()} heads per layer; lower dsee-prune-heads")
        order = torch.sort(s, stable=True).indices[:count]
        out[layer] = sorted(int(i) for i in order)
    return out


def _attention(model: nn.Module, layer: int) -> nn.Module:
    try:
        return model.base_model.encoder.layer[layer].attention
    except AttributeError as exc:
        raise PruneError("head pruning supports BERT-style encoders (encoder.layer[i].attention)") from exc


def supports_head_pruning(model: nn.Module) -> bool:
    """Whether heads can be zeroed and removed: BERT's layout (``encoder.layer[i].attention.self.query``)."""
    try:
        return hasattr(_attention(model, 0).self, "query")
    except (PruneError, IndexError, TypeError):
        return False


def _head_rows(attn: nn.Module, heads: list[int]) -> torch.Tensor:
    size = attn.self.attention_head_size
    return torch.cat([torch.arange(h * size, (h + 1) * size) for h in heads]) if heads else torch.zeros(0, dtype=torch.long)


@torch.no_grad()
def zero_heads(model: nn.Module, heads: dict[int, list[int]]) -> None:
    """Zero the listed heads (query/key/value rows and biases, output columns) and record them in the config."""
    for layer, hs in heads.items():
        attn = _attention(model, layer)
        rows = _head_rows(attn, hs)
        for lin in (attn.self.query, attn.self.key, attn.self.value):
            lin.weight[rows] = 0.0
            lin.bias[rows] = 0.0
        attn.output.dense.weight[:, rows] = 0.0
    setattr(model.config, CONFIG_KEY, {str(k): list(v) for k, v in heads.items() if v})


@torch.no_grad()
def remove_heads(model: nn.Module, heads: dict[int, list[int]] | None = None) -> nn.Module:
    """Physically remove heads (default: those in ``config.dsee_pruned_heads``), in place."""
    if heads is None:
        heads = {int(k): list(v) for k, v in (getattr(model.config, CONFIG_KEY, None) or {}).items()}
    for layer, hs in heads.items():
        if not hs:
            continue
        attn = _attention(model, layer)
        sa = attn.self
        keep = torch.tensor(sorted(set(range(sa.all_head_size)) - set(_head_rows(attn, hs).tolist())))
        sa.query, sa.key, sa.value = (prune_linear_layer(lin, keep, dim=0) for lin in (sa.query, sa.key, sa.value))
        attn.output.dense = prune_linear_layer(attn.output.dense, keep, dim=1)
        sa.num_attention_heads -= len(hs)
        sa.all_head_size = sa.num_attention_heads * sa.attention_head_size
    return model
