"""The sparse task artifact: ``delta.safetensors`` = k values + head + what rebuilds the mask.

Indices are not stored: the mask is re-derived from the base model with the recorded method,
density, scope and method knobs, and checked against the recorded fingerprint before anything is
merged (:func:`shared.methods.mask.apply_delta`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from shared.config import RunConfig
from shared.masks import Mask


def save_delta(path: str | Path, mask: Mask, values: torch.Tensor, head: dict[str, torch.Tensor],
               cfg: RunConfig, model_source: str, options: dict | None = None) -> Path:
    """Write values (k,) float32 and head tensors with the mask recipe (``options``: the method's knobs)."""
    path = Path(path)
    tensors = {"values": values.detach().float().contiguous()}
    tensors.update({f"head.{n}": t.detach().float().contiguous() for n, t in head.items()})
    meta = {
        "format": "fedsparse-delta-v1",
        "fingerprint": mask.fingerprint,
        "base_digest": mask.base_digest,
        "method": mask.method,
        "mask_density": repr(mask.density),
        "mask_scope": cfg.mask_scope,
        "seed": str(cfg.seed),
        "k": str(mask.k),
        "model": model_source,
        "options": json.dumps(dict(cfg.options if options is None else options), sort_keys=True),
    }
    save_file(tensors, str(path), metadata=meta)
    return path


def write_tensors(out: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, str],
                  name: str = "delta.safetensors") -> Path:
    """Save ``tensors`` with ``meta`` as ``out/name``; returns the path."""
    path = Path(out) / name
    save_file(tensors, str(path), metadata=meta)
    return path


def read_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors artifact."""
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    return tensors, meta


def head_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``head.<name>`` entries of an artifact, by parameter name."""
    return {n[len("head."):]: t for n, t in tensors.items() if n.startswith("head.")}


def read_delta(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a delta file."""
    tensors, meta = read_tensors(path)
    if meta.get("format") != "fedsparse-delta-v1":
        raise ValueError(f"{path} is not a fedsparse delta file (format {meta.get('format')!r})")
    return tensors, meta
