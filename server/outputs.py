"""Run outputs: history.json, summary.json, the merged model (save_pretrained) and delta.safetensors."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from shared.config import RunConfig
from shared.model import load_base_model
from wire.protocol import unflatten_head
from shared.runtime import Runtime


def strict(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None; each dict that had one lists the keys it nulled
    under ``nonfinite`` (strict JSON has no NaN or Infinity)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    if isinstance(obj, dict):
        out = {k: strict(v) for k, v in obj.items()}
        nulled = [k for k, v in obj.items() if isinstance(v, float) and not math.isfinite(v)]
        if nulled:
            out["nonfinite"] = sorted(set(out.get("nonfinite") or []) | set(nulled))
        return out
    return obj


def write_json(path: Path, obj: Any) -> None:
    """Write strict JSON atomically (temp file + rename), so a reader never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(strict(obj), indent=2, sort_keys=False, allow_nan=False))
    os.replace(tmp, path)


def save_final_model(out: Path, cfg: RunConfig, rt: Runtime, values: torch.Tensor,
                     head_vec: torch.Tensor) -> torch.nn.Module:
    """Merge the global values into a fresh copy of the base and save it plus the sparse delta.

    A fresh copy (not the tuner-wrapped runtime model) so the saved checkpoint is a plain
    ``transformers`` model. Returns the merged in-memory model.
    """
    fresh = load_base_model(cfg.model, rt.num_labels, cfg.seed,
                            problem_type=rt.base.model.config.problem_type, kind=rt.base.kind)
    head = unflatten_head(head_vec, fresh.head_state(), fresh.head_names)
    merged = rt.tuner.merge(fresh.model, values, head)
    merged.save_pretrained(out / "model")
    fresh.tokenizer.save_pretrained(out / "model")
    rt.tuner.save_artifact(out, values, head, cfg, fresh.source)
    return merged
