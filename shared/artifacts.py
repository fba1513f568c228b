"""The sparse task artifact: ``delta.safetensors`` = k values + head + what rebuilds the mask.

Indices are not stored: the mask is re-derived from the base model with the recorded method,
density and scope, and checked against the recorded fingerprint before anything is merged.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from shared.config import RunConfig
from shared.masks import Mask, MaskMismatchError, select_mask
from shared.model import BaseModel, base_weights_digest
from shared.sparse import gather_values, merge_into


def save_delta(path: str | Path, mask: Mask, values: torch.Tensor, head: dict[str, torch.Tensor],
               cfg: RunConfig, model_source: str) -> Path:
    """Write values (k,) float32 and head tensors with the mask recipe in the metadata."""
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
        "options": json.dumps({k: str(v) for k, v in cfg.extra.items()}),
    }
    save_file(tensors, str(path), metadata=meta)
    return path


def read_delta(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a delta file."""
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    if meta.get("format") != "fedsparse-delta-v1":
        raise ValueError(f"{path} is not a fedsparse delta file (format {meta.get('format')!r})")
    return tensors, meta


def apply_delta(path: str | Path, base: BaseModel) -> torch.nn.Module:
    """Rebuild the mask from ``base``, verify the fingerprint and merge the stored values in place."""
    tensors, meta = read_delta(path)
    cfg = RunConfig(method=meta["method"], mask_density=float(meta["mask_density"]),
                    mask_scope=meta["mask_scope"], seed=int(meta["seed"]), extra=json.loads(meta["options"]))
    digest = base_weights_digest(base.model, base.head_names)
    mask = select_mask(base.model, cfg, digest)
    if mask.fingerprint != meta["fingerprint"]:
        raise MaskMismatchError(
            f"{path} was made for mask {meta['fingerprint'][:12]}, this base model gives {mask.fingerprint[:12]}; "
            f"load the base model the delta was trained on ({meta['model']})"
        )
    params = dict(base.model.named_parameters())
    head = {n[len("head."):]: t for n, t in tensors.items() if n.startswith("head.")}
    return merge_into(base.model, mask, gather_values(params, mask), tensors["values"], head)
