"""Crash and resume at the server: checkpoint after every round, continue from the last one.

Bit-identical resume holds because everything a round computes is either a function of
(seed, round, partition id) — node sampling, client batches and seeds, DP noise — or is in the
checkpoint: global values and head, server-optimizer state, SCAFFOLD's control variates (server/drift.py),
history, global RNG states.
``crash-after-round=r`` (tests only) makes the ServerApp exit hard right after checkpoint r.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from server.checkpoint import (CHECKPOINT_NAME, Checkpoint, CheckpointError, check_compatible, load_checkpoint,
                               restore_rng, save_checkpoint)
from server.guards import GUARD
from server.strategy import GlobalState, SparseStrategy
from shared.config import CHANGED_DEFAULTS, RunConfig
from shared.settings import declared_defaults, parse_run_config

log = logging.getLogger("fedsparse.server")
CRASH_EXIT_CODE = 17


def run_identity(strategy: SparseStrategy, model_source: str, method: str, data: str = "") -> dict[str, Any]:
    """What a checkpoint must share with this run: mask fingerprint, sizes, model, method, and the data's content
    (``data``: :func:`shared.data.data_fingerprint`, so the same files at another path still match)."""
    return {"fingerprint": strategy.expected.fingerprint, "k": strategy.expected.k,
            "head_size": strategy.expected.head_size, "model": model_source, "method": method, "data": data}


def prepare_output_dir(cfg: RunConfig, out: Path) -> None:
    """Before any work: clear what a killed run leaves (temporary files of atomic writes), refuse what cannot
    be cleared, and refuse ``resume`` when the run's history is there but its checkpoint is not."""
    if cfg.resume and not (out / CHECKPOINT_NAME).exists() and (out / "history.json").exists():
        raise CheckpointError(f"resume=true but {out / CHECKPOINT_NAME} is missing while {out / 'history.json'} "
                              f"holds a run; restore the checkpoint, or use another output-dir (resume=false "
                              f"starts over)")
    for name in (CHECKPOINT_NAME, "history.json", "summary.json"):
        tmp = out / f"{name}.tmp"
        if tmp.is_dir():
            raise CheckpointError(f"{tmp} is a directory where a temporary file is written; remove it or use "
                                  f"another output-dir")
        if tmp.exists() or tmp.is_symlink():
            tmp.unlink()  # a stale temporary file: its rename never happened, the real file is intact


def kept_defaults(cfg: RunConfig, run_config: Mapping[str, Any]) -> tuple[RunConfig, dict[str, Any]]:
    """With ``resume``, the run's settings with every changed default put back to what the checkpoint's run had.

    A knob in :data:`shared.config.CHANGED_DEFAULTS` that this run leaves at today's default takes the checkpoint's
    value (or, where the checkpoint predates the knob, the value it ran with then); a value the user set stays and
    meets the compatibility check. Read before anything is built from ``cfg``; (cfg, run_config) unchanged otherwise.
    """
    path = Path(cfg.output_dir).expanduser().resolve() / CHECKPOINT_NAME
    if not cfg.resume or not path.exists():
        return cfg, dict(run_config)
    stored, defaults, kept = load_checkpoint(path).run_config, declared_defaults(), dict(run_config)
    for key, before in CHANGED_DEFAULTS.items():
        then, now = stored.get(key, before), defaults[key]
        if kept.get(key, now) == now and then != now:
            kept[key] = then
            print(f"fedsparse: resume keeps {key}={then!r} of the checkpoint's run (today's default is {now!r})",
                  flush=True)
    return (parse_run_config(kept), kept) if kept != dict(run_config) else (cfg, kept)


def saved_selection(cfg: RunConfig) -> dict[str, torch.Tensor]:
    """With ``resume``, the selection outcome stored in ``output-dir``'s checkpoint ({} if none).

    Read before the selection phase, so that phase can re-install it; the checkpoint's full
    compatibility check still runs afterwards in :func:`resume_from_checkpoint`.
    """
    path = Path(cfg.output_dir).expanduser().resolve() / CHECKPOINT_NAME
    if not cfg.resume or not path.exists():
        return {}
    return load_checkpoint(path).selection


def resume_from_checkpoint(cfg: RunConfig, out: Path, strategy: SparseStrategy, identity: Mapping[str, Any],
                           run_config: Mapping[str, Any]) -> tuple[int, list[dict]]:
    """Load ``out/checkpoint.safetensors`` into ``strategy`` if ``resume``; (first round, history so far).

    Without ``resume`` (or without a checkpoint yet) the run starts at round 1 with no history.
    """
    path = out / CHECKPOINT_NAME
    if not cfg.resume:
        return 1, []
    if not path.exists():  # prepare_output_dir refused this already if the run's history is there
        print(f"fedsparse: resume=true but no checkpoint at {path} (and no history); starting at round 1", flush=True)
        return 1, []
    ck = load_checkpoint(path)
    check_compatible(ck, identity, run_config)
    if ck.values.shape != (strategy.expected.k,) or ck.head.shape != (strategy.expected.head_size,):
        raise CheckpointError(f"checkpoint {path} holds vectors of shape {tuple(ck.values.shape)}/"
                              f"{tuple(ck.head.shape)}; this run needs ({strategy.expected.k},)/"
                              f"({strategy.expected.head_size},)")
    strategy.state = GlobalState(ck.values.clone(), ck.head.clone())
    strategy.opt_state = {k: v.clone() for k, v in ck.opt_state.items() if not k.startswith(GUARD)}
    strategy.adaptive.load(ck.opt_state)
    strategy.drift.load(ck.drift)  # c, and each node's c_i to hand back with its next train message
    restore_rng(ck.rng, ck.rng.get("torch"))
    print(f"fedsparse: resumed from {path} after round {ck.round}", flush=True)
    return ck.round + 1, list(ck.history)


def checkpoint_round(cfg: RunConfig, out: Path, strategy: SparseStrategy, server_round: int, history: list[dict],
                     identity: Mapping[str, Any], run_config: Mapping[str, Any],
                     selection: Mapping[str, torch.Tensor] | None = None) -> None:
    """Write the checkpoint of a completed round; exit hard here if ``crash-after-round`` says so.

    ``selection``: what a selection phase chose (sam's mask positions), so a resumed run re-installs it
    instead of running the phase again.
    """
    opt_state = {**strategy.opt_state, **strategy.adaptive.saved()}  # the trusted scale beside the optimizer's
    save_checkpoint(out, Checkpoint(server_round, strategy.state.values, strategy.state.head, opt_state,
                                    history, dict(identity), dict(run_config), selection=dict(selection or {}),
                                    drift=strategy.drift.state()))
    if server_round == cfg.crash_after_round:
        print(f"fedsparse: crash-after-round={server_round}: exiting hard after the checkpoint", flush=True)
        os._exit(CRASH_EXIT_CODE)  # no cleanup, no final save: what a killed process leaves behind
