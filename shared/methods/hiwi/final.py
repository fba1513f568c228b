"""HiWi after the last round: the stored artifact (new biases only) and the zero-latency check.

``finalize_hiwi`` loads a fresh base model and compares it with the merged one: identical
state-dict names and shapes, identical parameter count, forward time on the same batch; and,
for contrast, the adapter-applied training model that recomputes f on every forward.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from shared.inference import forward_seconds, num_params, synthetic_batch
from shared.model import load_base_model

FORMAT = "fedsparse-hiwi-v1"


def save_hiwi_artifact(path: Path, tuner, values: torch.Tensor, head: dict[str, torch.Tensor], source: str) -> Path:
    """``delta.safetensors``: the new FFN tensors (b' = b + f(b)) and the head; f itself is not stored."""
    fresh = load_base_model(tuner.base.source, int(tuner.base.model.config.num_labels), tuner.cfg.seed,
                            problem_type=tuner.base.model.config.problem_type, kind=tuner.base.kind)
    tensors = {name: t.float().contiguous() for name, t in tuner.adapted(fresh.model, values).items()}
    tensors.update({f"head.{n}": t.detach().float().contiguous() for n, t in head.items()})
    meta = {"format": FORMAT, "fingerprint": tuner.fingerprint, "method": "hiwi", "model": source,
            "hiwi-target": tuner.attr, "hiwi-bottleneck": str(tuner.width),
            "hiwi-normalize": str(tuner.normalize).lower()}
    save_file(tensors, str(path), metadata=meta)
    return path


def artifact_fingerprint(path: Path) -> str | None:
    """The fingerprint recorded in a HiWi artifact (None if it is not one)."""
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    return meta.get("fingerprint") if meta.get("format") == FORMAT else None


@torch.no_grad()
def apply_hiwi_artifact(path: Path, model: nn.Module) -> nn.Module:
    """Write a HiWi artifact's tensors (new biases and head) into a plain base model, in place."""
    with safe_open(str(path), framework="pt") as fh:
        if (fh.metadata() or {}).get("format") != FORMAT:
            raise ValueError(f"{path} is not a HiWi artifact")
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    params = dict(model.named_parameters())
    names = {k[len("head."):] if k.startswith("head.") else k: t for k, t in tensors.items()}
    missing = [n for n, t in names.items() if n not in params or params[n].shape != t.shape]
    if missing:
        raise ValueError(f"{path} does not fit this model ({missing[0]}); load the base it was trained on")
    for name, t in names.items():
        params[name].copy_(t)
    return model


def _same_architecture(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return type(a) is type(b) and list(sa) == list(sb) and all(sa[k].shape == sb[k].shape for k in sa)


def finalize_hiwi(tuner, merged: nn.Module, values: torch.Tensor, score_fn: Callable[[nn.Module], float],
                  out: Path) -> dict:
    """The ``summary.json`` fields: artifact size, architecture check, speeds of base, merged and adapter model."""
    cfg = tuner.cfg
    base = load_base_model(tuner.base.source, int(merged.config.num_labels), cfg.seed,
                           problem_type=merged.config.problem_type, kind=tuner.base.kind).model
    batch = synthetic_batch(int(merged.config.vocab_size), cfg.batch_size, cfg.max_length, cfg.seed)
    tuner.load(values)  # the adapter-applied model at the final values
    n_base = num_params(base)
    stored = sum(merged.get_parameter(n).numel() for n in tuner.targets)
    head = sum(p.numel() for n, p in merged.named_parameters() if n in tuner.base.head_names)
    artifact = Path(out) / "delta.safetensors"
    seconds = forward_seconds({"base": base, "merged": merged, "adapter_applied": tuner.base.model}, batch)
    return {"hiwi": {
        "target": tuner.attr, "bottleneck": tuner.width, "adapter_params": tuner.k,
        "accuracy_merged": score_fn(merged),
        "stored_entries": stored, "stored_fraction_of_model": stored / n_base,
        "stored_with_head_fraction_of_model": (stored + head) / n_base,
        "artifact_bytes": artifact.stat().st_size if artifact.is_file() else None,
        "num_params_base": n_base, "num_params_merged": num_params(merged),
        "same_architecture_as_base": _same_architecture(base, merged),
        "forward_seconds": seconds, "merged_over_base_time": seconds["merged"] / seconds["base"],
        "timing_batch": list(batch["input_ids"].shape),
    }}
