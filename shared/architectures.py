"""What the methods need to know of a transformer's layout, found from its modules, not from its family name.

Three families are served today, encoders and decoders alike:

============  ==============================  ===================================  ==============================
family        blocks (an ``nn.ModuleList``)   attention projections                feed-forward projections
============  ==============================  ===================================  ==============================
BERT          ``bert.encoder.layer``          query, key, value, attention.output  intermediate.dense, output.dense
GPT-2         ``transformer.h``               c_attn (fused q,k,v), attn.c_proj    mlp.c_fc, mlp.c_proj
Llama/Qwen2   ``model.layers``                q_proj, k_proj, v_proj, o_proj       mlp.gate_proj, up_proj, down_proj
============  ==============================  ===================================  ==============================

GPT-2's projections are transformers' ``Conv1D``: ``y = x @ W + b`` with ``W`` stored (in, out), the
transpose of ``nn.Linear``'s (out, in). :func:`linear_weight` gives every projection in ``nn.Linear``'s
layout so a method can treat both alike. A model of another family works where its modules follow one of
these layouts (Qwen2, Mistral, Phi-3 … name their projections like Llama).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

PROJECTIONS = (nn.Linear, Conv1D)  # the module types whose weight is a candidate matrix

# Module-name suffixes per role (one entry per family above; a new family adds its names here).
QUERY_VALUE = (".query", ".value", ".q_proj", ".v_proj", ".q_lin", ".v_lin", ".c_attn")
FFN_KINDS = {  # suffix -> kind: HiWi shares one adapter per kind
    "intermediate.dense": "intermediate", "mlp.c_fc": "intermediate", "mlp.up_proj": "intermediate",
    "mlp.gate_proj": "gate", "mlp.c_proj": "output", "mlp.down_proj": "output",
}
_BERT_FFN_OUTPUT = "output.dense"  # BERT's FFN output; its attention output is "attention.output.dense"


def is_transposed(module: nn.Module) -> bool:
    """True for a ``Conv1D`` projection (weight stored (in, out))."""
    return isinstance(module, Conv1D)


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The projection's weight in ``nn.Linear``'s (out, in) layout (a view for ``Conv1D``)."""
    return module.weight.t() if is_transposed(module) else module.weight


def block_lists(model: nn.Module) -> list[str]:
    """Names of the ``nn.ModuleList`` s of transformer blocks (all children of one class, holding projections)."""
    out = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(child) for child in module}) != 1 or isinstance(module[0], PROJECTIONS):
            continue
        if any(isinstance(m, PROJECTIONS) for m in module[0].modules()):
            out.append(name)
    return out


def block_matrix_names(model: nn.Module) -> list[str]:
    """PaFi's candidates: the weights of the attention and feed-forward projections inside the blocks.

    Embeddings, norms, BERT's pooler, the (tied) LM head and the task head lie outside the blocks and are
    never candidates. Order: ``model.named_parameters()``. BERT's list is the encoder's six matrices per layer.
    """
    prefixes = tuple(f"{b}." for b in block_lists(model))
    projections = {f"{n}.weight" for n, m in model.named_modules()
                   if isinstance(m, PROJECTIONS) and n.startswith(prefixes)}
    return [n for n, p in model.named_parameters() if n in projections and p.dim() == 2]


def attention_module_names(model: nn.Module) -> set[str]:
    """Projections that lie inside an attention module (a module whose class name ends with ``Attention``)."""
    inside: set[str] = set()
    for name, module in model.named_modules():
        if type(module).__name__.endswith("Attention"):
            inside |= {f"{name}.{n}" for n, m in module.named_modules() if n and isinstance(m, PROJECTIONS)}
    return inside


def ffn_kind(module_name: str) -> str | None:
    """HiWi's adapter kind of a feed-forward projection (``FFN_KINDS``), or None for any other module."""
    for suffix, kind in FFN_KINDS.items():
        if module_name.endswith(suffix):
            return kind
    if module_name.endswith(_BERT_FFN_OUTPUT) and ".attention." not in f".{module_name}.":
        return "output"
    return None


def query_value_names(model: nn.Module) -> list[str]:
    """Module names of the attention query/value projections (GPT-2: the fused ``c_attn``), in model order."""
    return [n for n, m in model.named_modules() if isinstance(m, PROJECTIONS) and n.endswith(QUERY_VALUE)]


def query_value_targets(model: nn.Module) -> list[str]:
    """The distinct last name parts of :func:`query_value_names`: PEFT's ``target_modules`` for LoRA."""
    return list(dict.fromkeys(n.rpartition(".")[2] for n in query_value_names(model)))


def has_body_biases(model: nn.Module) -> bool:
    """Whether the body (``base_model_prefix.*``) has any bias term (GPT-2, BERT: yes; Llama: none)."""
    prefix = getattr(model, "base_model_prefix", "") + "."
    return any(n.startswith(prefix) and n.endswith("bias") for n, _ in model.named_parameters())
