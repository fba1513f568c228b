"""Per-round server checkpoint: save atomically, load with a checksum, refuse a mismatched one.

One file, ``<output-dir>/checkpoint.safetensors``: tensors ``values`` (k,), ``head`` (h,),
``opt.<name>`` (server-optimizer state, float64), ``drift.<name>`` (SCAFFOLD's ``c`` and the mirrored ``c_i``,
float32; server/drift.py) and ``rng.torch`` (uint8), plus metadata
``meta`` (JSON: round, history so far, identity, run config, Python/NumPy RNG states) and
``sha256`` (over the meta JSON and every tensor's name and bytes). Written to a temp file, fsynced,
then renamed over the old one, so a crash at any instant leaves the previous complete checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from shared.config import CHANGED_DEFAULTS
from shared.schedule import SCHEDULE_KEYS, same_factors
from shared.settings import declared_defaults

FORMAT = "fedsparse-checkpoint-v1"
CHECKPOINT_NAME = "checkpoint.safetensors"
# Run-config keys a resumed run may change: they do not alter what a round computes. The lr schedule's keys may
# change too when the rounds already made keep their rates (shared.schedule.same_factors).
# ``data-dir`` is where the data lies; what it holds is in the run identity (``data``, shared.data.data_fingerprint),
# so a checkpoint moves with a clone of the project.
RESUMABLE_CHANGES = frozenset({"resume", "num-server-rounds", "crash-after-round", "output-dir", "round-timeout",
                               "node-wait-timeout", "min-available-nodes", "data-dir", "init-values"})


class CheckpointError(ValueError):
    """A checkpoint is unreadable, corrupted, or belongs to another run (model, mask, config)."""


@dataclass
class Checkpoint:
    """Everything round ``round + 1`` depends on that is not a function of (seed, round, partition)."""

    round: int
    values: torch.Tensor  # (k,) float32
    head: torch.Tensor  # (h,) float32
    opt_state: dict[str, torch.Tensor] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    identity: dict[str, Any] = field(default_factory=dict)  # fingerprint, k, head_size, model, method
    run_config: dict[str, Any] = field(default_factory=dict)
    rng: dict[str, Any] = field(default_factory=dict)
    selection: dict[str, torch.Tensor] = field(default_factory=dict)  # a selection phase's outcome (sam's positions)
    drift: dict[str, torch.Tensor] = field(default_factory=dict)  # SCAFFOLD's c and c-i.<partition> (server/drift.py)


def capture_rng() -> tuple[dict[str, Any], torch.Tensor]:
    """Python and NumPy global RNG states (JSON-able) and torch's CPU RNG state (uint8 tensor)."""
    py = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return ({"python": [py[0], list(py[1]), py[2]],
             "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]}, torch.get_rng_state())


def restore_rng(rng: Mapping[str, Any], torch_state: torch.Tensor | None) -> None:
    """Put the global RNGs back where :func:`capture_rng` found them."""
    if "python" in rng:
        version, state, gauss = rng["python"]
        random.setstate((version, tuple(state), gauss))
    if "numpy" in rng:
        name, keys, pos, has_gauss, cached = rng["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if torch_state is not None:
        torch.set_rng_state(torch_state)


def _digest(meta_json: str, tensors: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha256(meta_json.encode())
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"|{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_checkpoint(out_dir: Path, ck: Checkpoint) -> Path:
    """Write ``ck`` to ``out_dir/checkpoint.safetensors`` atomically (temp file, fsync, rename)."""
    rng, torch_rng = capture_rng()
    tensors = {"values": ck.values.detach().float().contiguous(), "head": ck.head.detach().float().contiguous(),
               "rng.torch": torch_rng.contiguous()}
    tensors.update({f"opt.{k}": v.detach().contiguous() for k, v in ck.opt_state.items()})
    tensors.update({f"sel.{k}": v.detach().contiguous() for k, v in ck.selection.items()})
    tensors.update({f"drift.{k}": v.detach().contiguous() for k, v in ck.drift.items()})
    meta_json = json.dumps({"round": ck.round, "history": ck.history, "identity": ck.identity,
                            "run_config": ck.run_config, "rng": rng}, sort_keys=True)
    path = Path(out_dir) / CHECKPOINT_NAME
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": FORMAT, "meta": meta_json, "sha256": _digest(meta_json, tensors)})
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(path: Path) -> Checkpoint:
    """Read and verify a checkpoint; :class:`CheckpointError` if it is unreadable or corrupted."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # safetensors raises several types for a damaged header or body
        raise CheckpointError(f"checkpoint {path} is unreadable ({exc.__class__.__name__}); "
                              f"delete it or run without resume=true") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a fedsparse checkpoint (format {meta.get('format')!r})")
    if _digest(meta.get("meta", ""), tensors) != meta.get("sha256"):
        raise CheckpointError(f"checkpoint {path} fails its SHA-256 check (corrupted); delete it or run "
                              f"without resume=true")
    body = json.loads(meta["meta"])
    opt = {k[len("opt."):]: v for k, v in tensors.items() if k.startswith("opt.")}
    sel = {k[len("sel."):]: v for k, v in tensors.items() if k.startswith("sel.")}
    drift = {k[len("drift."):]: v for k, v in tensors.items() if k.startswith("drift.")}
    return Checkpoint(round=int(body["round"]), values=tensors["values"], head=tensors["head"], opt_state=opt,
                      history=body["history"], identity=body["identity"], run_config=body["run_config"],
                      rng={**body["rng"], "torch": tensors["rng.torch"]}, selection=sel, drift=drift)


def check_compatible(ck: Checkpoint, identity: Mapping[str, Any], run_config: Mapping[str, Any],
                     resolved: Mapping[str, Any] | None = None) -> None:
    """Refuse a checkpoint of another model/mask or of a run configured differently. ``resolved``: this run's
    settings with the method's rates resolved (``server.recovery.resolved_settings``): a checkpoint stores those
    since runs store their resolved settings, and one written before stores ``lr = 0`` (the method's rate)."""
    for key, mine in identity.items():
        if key == "data" and key not in ck.identity:
            continue  # written before the data's content was in the identity: its data-dir string is compared below
        if ck.identity.get(key) != mine:
            raise CheckpointError(f"checkpoint is for {key}={str(ck.identity.get(key))[:24]!r}, this run has "
                                  f"{str(mine)[:24]!r}; use another output-dir or run without resume=true")
    keys = (set(ck.run_config) | set(run_config)) - RESUMABLE_CHANGES - SCHEDULE_KEYS
    defaults = declared_defaults()  # a key one side lacks (a knob added since the checkpoint) ran at its default,
    then = {**defaults, **CHANGED_DEFAULTS}  # the checkpoint's side: the default of its time where it changed since
    if not same_factors({**then, **ck.run_config}, {**defaults, **run_config}, ck.round):
        raise CheckpointError(f"this run's lr schedule trains rounds 1-{ck.round} at other rates than the checkpoint's "
                              f"run did; keep lr-schedule, lr-warmup-rounds and lr-decay-rounds, or add a decay of "
                              f"lr-decay-rounds <= num-server-rounds - {ck.round}")
    if "data" not in ck.identity:
        keys.add("data-dir")
    for key in sorted(keys):
        old, new = ck.run_config.get(key, then.get(key)), run_config.get(key, defaults.get(key))
        if old != new and (resolved is None or old != resolved.get(key, new)):
            raise CheckpointError(f"checkpoint was written with {key}={old!r}, this run has {new!r}; resume with the "
                                  f"same settings or a new output-dir")
