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

from server.checkpoint import (RESUMABLE_CHANGES, CHECKPOINT_NAME, Checkpoint, CheckpointError, check_compatible, load_checkpoint,
                               restore_rng, save_checkpoint)
from server.guards import GUARD
from server.strategy import GlobalState, SparseStrategy
from shared.config import CHANGED_DEFAULTS, RunConfig
from shared.schedule import SCHEDULE_KEYS
from shared.settings import declared_defaults, local_loss, parse_run_config

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


def kept_settings(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """With ``resume`` and a checkpoint in ``output-dir``: {knob: the checkpoint's value} for every knob this run
    leaves at today's default while the checkpoint's run had another value -- a default changed since, or the
    method's learning rates the checkpoint stores resolved (:func:`resolved_settings`); a knob the checkpoint
    predates counts at the default it ran with then (:data:`shared.config.CHANGED_DEFAULTS`, else today's). Knobs a
    resume may change (output-dir, rounds, timeouts, data-dir) are never kept, nor the schedule's (a decay may be added
    on resume: the rates of the rounds made are checked instead, ``same_factors``). {} otherwise.
    """
    if str(run_config.get("resume", False)).lower() not in ("true", "1"):
        return {}
    path = Path(str(run_config.get("output-dir", "outputs/run"))).expanduser().resolve() / CHECKPOINT_NAME
    if not path.exists():
        return {}
    stored, defaults = load_checkpoint(path).run_config, declared_defaults()
    mine = {**defaults, **run_config}
    try:
        from shared.methods import get_method

        cfg = parse_run_config(mine)
        resolved = resolved_settings(cfg, mine, get_method(cfg.method).learning_rates(cfg))
    except ValueError:  # settings that do not parse are named by the app; nothing is kept for them
        resolved = mine
    kept = {}
    for key in sorted((set(stored) | set(CHANGED_DEFAULTS)) & set(defaults) - RESUMABLE_CHANGES - SCHEDULE_KEYS):
        then, now = stored.get(key, CHANGED_DEFAULTS.get(key, defaults[key])), defaults[key]
        if mine[key] == now and then not in (now, resolved[key]):
            kept[key] = then
    return kept


def kept_defaults(cfg: RunConfig, run_config: Mapping[str, Any]) -> tuple[RunConfig, dict[str, Any]]:
    """A resumed run's settings must be the checkpoint's run's on every node: the launcher and the benchmark add
    :func:`kept_settings` to the run-config before the run starts (``simulations.engines``), so here they are {}.
    Where they are not (a plain ``flwr run . --run-config "resume=true …"``), the clients would train with today's
    defaults while the checkpoint's run had others: refused in one line that lists what to pass."""
    kept = kept_settings({**run_config, "output-dir": cfg.output_dir, "resume": cfg.resume})
    if kept:
        extra = " ".join(f"{key}={value!r}" for key, value in kept.items())
        raise CheckpointError(f"resume=true: the checkpoint's run was made with {extra} where this run has today's "
                              f"defaults; add them to --run-config (python -m simulations.engines.launcher adds "
                              f"them itself)")
    return cfg, dict(run_config)


def start_values(cfg: RunConfig, fingerprint: str, initial: torch.Tensor) -> torch.Tensor:
    """The global values at round 0: ``initial`` (the method's), or with ``init-values`` those of another run's
    checkpoint (its output-dir or the file), which must be of this run's mask (fingerprint and k); one-line
    :class:`CheckpointError` otherwise."""
    if not cfg.init_values:
        return initial
    path = Path(cfg.init_values).expanduser().resolve()
    path = path / CHECKPOINT_NAME if path.is_dir() else path
    if not path.is_file():
        raise CheckpointError(f"init-values={cfg.init_values!r}: no {CHECKPOINT_NAME} there; give the output-dir of a "
                              f"run of the same mask (a finished or stopped run keeps its checkpoint)")
    ck = load_checkpoint(path)
    if ck.identity.get("fingerprint") != fingerprint or ck.values.numel() != initial.numel():
        raise CheckpointError(f"init-values={cfg.init_values!r}: that run's mask "
                              f"{str(ck.identity.get('fingerprint'))[:12]} (k={ck.values.numel()}) is not this run's "
                              f"{fingerprint[:12]} (k={initial.numel()}); the same model, method and mask settings "
                              f"give the same mask")
    print(f"fedsparse: values start from {path} (its round {ck.round})", flush=True)
    return ck.values.detach().float().clone()


def resolved_settings(cfg: RunConfig, run_config: Mapping[str, Any], lrs: tuple[float, float]) -> dict[str, Any]:
    """Every knob with the value this run trains with: ``run_config`` (Flower's: the declared defaults with the
    command's values on top) with ``lr``/``head-lr`` resolved to the method's rates where they were left at 0 and the
    ``auto`` of ``trust-weighting`` and ``local-loss`` to what they chose. What
    checkpoints and ``settings.json`` store, so a resumed run keeps the rates it was made with even where a method's
    default rate changes later. Every declared knob is there (a run-config given without Flower's declared defaults,
    as an in-process Grid passes it, gets them here), so a later default change never reads as one this run had."""
    out = {**declared_defaults(), **run_config}
    out["lr"], out["head-lr"] = float(lrs[0]), float(lrs[1])
    out["trust-weighting"] = "cosine" if cfg.trusts else "none"
    if not cfg.tasks:  # a multi-task run's tasks each resolve 'auto' by their kind
        out["local-loss"] = local_loss(cfg)
    return out


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
                           run_config: Mapping[str, Any],
                           resolved: Mapping[str, Any] | None = None) -> tuple[int, list[dict]]:
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
    check_compatible(ck, identity, run_config, resolved)
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
