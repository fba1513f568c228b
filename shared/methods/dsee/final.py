"""DSEE after the last round: the adapter artifact and the pruned, inference-efficient final model.

``finalize_dsee`` takes the merged model, prunes a copy (global L1 magnitude pruning at
``dsee-prune-ratio`` over the encoder's matrices, then removes ``dsee-prune-heads`` heads per
layer with the smallest summed |B·A + S|), saves it as a plain checkpoint in ``model-pruned/``
and measures accuracy, sparsity, FLOPs and forward time before and after.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from shared.inference import count_flops, forward_seconds, num_params, synthetic_batch
from shared.masks import MaskMismatchError, block_matrix_names
from shared.methods.dsee.prune import head_scores, lowest_heads, magnitude_prune, remove_heads, zero_fraction, zero_heads

FORMAT = "fedsparse-dsee-v1"


def save_dsee_artifact(path: Path, tuner, values: torch.Tensor, head: dict[str, torch.Tensor], source: str) -> Path:
    """``delta.safetensors``: A, B and S values per target plus the head; positions are re-derived, not stored."""
    tensors = {}
    for t in tuner.targets:
        a, b, s = t.factors(values.detach().float())
        tensors.update({f"{t.name}.lora_A": a.contiguous(), f"{t.name}.lora_B": b.contiguous(),
                        f"{t.name}.sparse_values": s.contiguous()})
    tensors.update({f"head.{n}": t.detach().float().contiguous() for n, t in head.items()})
    st = tuner.settings
    meta = {"format": FORMAT, "fingerprint": tuner.fingerprint, "method": "dsee", "model": source,
            "seed": str(tuner.cfg.seed), "k": str(tuner.k),
            "options": json.dumps({"dsee-rank": st.rank, "dsee-alpha": st.alpha,
                                   "dsee-sparse-per-matrix": st.sparse_per_matrix})}
    save_file(tensors, str(path), metadata=meta)
    return path


def read_dsee_values(path: Path, tuner) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The (k,) value vector and head of a DSEE artifact, checked against ``tuner``'s fingerprint."""
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a DSEE artifact (format {meta.get('format')!r})")
    if meta["fingerprint"] != tuner.fingerprint:
        raise MaskMismatchError(f"{path} was made for DSEE positions {meta['fingerprint'][:12]}, this base model "
                                f"and settings give {tuner.fingerprint[:12]}; load the base it was trained on")
    values = torch.zeros(tuner.k)
    for t in tuner.targets:
        values[t.a_slice] = tensors[f"{t.name}.lora_A"].reshape(-1)
        values[t.b_slice] = tensors[f"{t.name}.lora_B"].reshape(-1)
        values[t.s_slice] = tensors[f"{t.name}.sparse_values"]
    head = {n[len("head."):]: t for n, t in tensors.items() if n.startswith("head.")}
    return values, head


def _cost(model: nn.Module, batch: dict[str, torch.Tensor], seconds: float) -> dict:
    flops = count_flops(model, batch)
    return {"forward_seconds": seconds, "flops_dense": flops["dense"],
            "flops_sparse_aware": flops["sparse_aware"], "params": num_params(model)}


def prune_final(tuner, merged: nn.Module, values: torch.Tensor) -> tuple[nn.Module, dict[int, list[int]]]:
    """A pruned copy of ``merged``: L1 magnitude pruning, then the lowest-|ΔW| heads zeroed (recorded)."""
    st = tuner.settings
    pruned = copy.deepcopy(merged)
    magnitude_prune(pruned, block_matrix_names(pruned), st.prune_ratio)
    heads: dict[int, list[int]] = {}
    if st.prune_heads > 0:
        scores = head_scores(tuner.deltas(values), int(pruned.config.num_attention_heads))
        heads = lowest_heads(scores, st.prune_heads)
        zero_heads(pruned, heads)
    return pruned, heads


def finalize_dsee(tuner, merged: nn.Module, values: torch.Tensor, score_fn: Callable[[nn.Module], float],
                  out: Path) -> dict:
    """Prune, save ``out/model-pruned`` (plain checkpoint) and return the ``summary.json`` fields."""
    cfg, st = tuner.cfg, tuner.settings
    batch = synthetic_batch(int(merged.config.vocab_size), cfg.batch_size, cfg.max_length, cfg.seed)
    acc_before = score_fn(merged)
    pruned, heads = prune_final(tuner, merged, values)
    pruned.save_pretrained(Path(out) / "model-pruned")
    tuner.base.tokenizer.save_pretrained(Path(out) / "model-pruned")
    acc_after = score_fn(pruned)
    fast = remove_heads(copy.deepcopy(pruned), heads)  # same function, smaller matrices
    with torch.inference_mode():
        gap = float((fast(**batch).logits - pruned(**batch).logits).abs().max())
    seconds = forward_seconds({"before": merged, "after": fast}, batch)
    before, after = _cost(merged, batch, seconds["before"]), _cost(fast, batch, seconds["after"])
    names = block_matrix_names(pruned)
    return {"dsee": {
        "accuracy_before_pruning": acc_before, "accuracy_after_pruning": acc_after,
        "prune_ratio": st.prune_ratio, "encoder_matrix_sparsity": zero_fraction(pruned, names),
        "model_sparsity": sum(int((p == 0).sum()) for p in pruned.parameters()) / num_params(pruned),
        "pruned_heads": {str(k): v for k, v in heads.items()}, "heads_removed_max_logit_gap": gap,
        "before": before, "after": after,
        "flops_saved_dense": 1 - after["flops_dense"] / before["flops_dense"],
        "flops_saved_sparse_aware": 1 - after["flops_sparse_aware"] / before["flops_sparse_aware"],
        "speedup": before["forward_seconds"] / after["forward_seconds"],
        "timing_batch": list(batch["input_ids"].shape), "pruned_model_dir": "model-pruned",
        "rank": st.rank, "alpha": st.alpha, "sparse_per_matrix": st.sparse_per_matrix,
    }}
