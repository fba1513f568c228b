"""The benchmark's store of runs: what a run folder holds, and what a benchmark command will do with it.

Each run of a preset lives in ``<out>/runs/<name>/``. Before any run starts, :func:`plan_runs` decides for every
selected run: ``skip`` (its results exist), ``resume`` (a stopped or shorter run continues from its checkpoint) or
``start``; a folder made with another config (:class:`StaleResultError`) or a run another process is making now
(:class:`RunBusyError`, the folder's flock) stops the command before its first run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import Any

from server.checkpoint import CHECKPOINT_NAME
from shared.config import CHANGED_DEFAULTS
from shared.data import data_fingerprint
from shared.schedule import SCHEDULE_KEYS, same_factors
from simulations.benchmark.lib.matrix import RunSpec
from simulations.benchmark.lib.scores import score_of


class StaleResultError(RuntimeError):
    """A run folder holds results made with a different run-config."""


class RunBusyError(RuntimeError):
    """Another benchmark process is making this run now: two writers would interleave its history and checkpoint."""


RUN_LOCK = ".benchmark.lock"  # in each run folder: an flock held while a benchmark makes the run, holding its pid


def run_holder(run_dir: Path) -> int | None:
    """The pid of another process that is making the run in ``run_dir`` now (-1 if it wrote none), else None."""
    path = run_dir / RUN_LOCK
    if not path.is_file():
        return None
    with open(path, "r") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = fh.read().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fh, fcntl.LOCK_UN)
    return None


def _busy(name: str, pid: int, run_dir: Path) -> RunBusyError:
    done, want = history_rounds(run_dir)[0], _stored_config(run_dir) or {}
    return RunBusyError(f"{name} is being made by another benchmark process (pid {pid}, {done} of "
                        f"{want.get('num-server-rounds', '?')} rounds so far): wait for it, stop it, or leave it out "
                        f"with --only")


@contextlib.contextmanager
def run_lock(run_dir: Path, name: str):
    """Hold ``run_dir``'s lock while the run is made; another process that holds it raises :class:`RunBusyError`.
    The lock is an flock, so a process that dies (even by SIGKILL) releases it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fh = open(run_dir / RUN_LOCK, "a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            text = fh.read().strip()
            raise _busy(name, int(text) if text.isdigit() else -1, run_dir) from None
        fh.truncate(0)
        fh.write(str(os.getpid()))
        fh.flush()
        yield
    finally:
        fh.close()  # closing the file releases its flock


def _stored_config(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "run_config.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _changed(spec: RunSpec, run_dir: Path) -> set[str] | None:
    """Run-config keys whose stored value differs from the spec's (None: no stored config). Locations are not
    settings: ``output-dir`` is ignored (the folder may have moved) and ``data-dir`` compares the data's content
    (a clone elsewhere reads the same files at another path), so a committed store of runs stays valid."""
    stored = _stored_config(run_dir)
    if stored is None:
        return None
    stored.pop("output-dir", None)
    want = dict(spec.run_config)
    changed = {k for k in set(stored) | set(want) if stored.get(k) != want.get(k)}
    if changed & set(want) - set(stored):  # a key the preset now sets that the stored run left at a default:
        ran = _ran_with(run_dir)  # unchanged if the run ran with that very value (pinning a changed default)
        changed -= {k for k in changed - set(stored) if ran.get(k, CHANGED_DEFAULTS.get(k)) == want[k]}
    if "data-dir" in changed and data_fingerprint(str(stored.get("data-dir") or "")) \
            == data_fingerprint(str(want.get("data-dir") or "")):
        changed.discard("data-dir")
    return changed


def _ran_with(run_dir: Path) -> dict[str, Any]:
    """The settings the run was made with: its ``settings.json`` (every knob the ServerApp ran with), {} if none."""
    path = run_dir / "settings.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def _has_checkpoint(run_dir: Path) -> bool:
    return (run_dir / CHECKPOINT_NAME).is_file() and (run_dir / "history.json").is_file()


def is_done(spec: RunSpec, run_dir: Path) -> bool:
    """True if ``run_dir`` already has this run's results; raises if they were made differently."""
    if not (run_dir / "summary.json").is_file():
        return False
    if can_extend(spec, run_dir):
        return False  # finished with fewer rounds than the preset asks: run_one continues it from its checkpoint
    changed = _changed(spec, run_dir)
    if changed and changed <= EXTENSION_KEYS and changed & SCHEDULE_KEYS and _has_checkpoint(run_dir) \
            and not same_factors(_stored_config(run_dir), spec.run_config, history_rounds(run_dir)[0]):
        raise StaleResultError(f"{run_dir} holds {spec.name} with another lr schedule, and the preset's would change "
                               f"the rates of rounds already made: add the decay over rounds after them only "
                               f"(lr-decay-rounds), or --rerun --only {spec.name}")
    if changed and changed <= EXTENSION_KEYS and "num-server-rounds" in changed and not _has_checkpoint(run_dir):
        stored, want = _stored_config(run_dir).get("num-server-rounds"), spec.run_config.get("num-server-rounds")
        raise StaleResultError(f"{run_dir} holds {stored} rounds of {spec.name}, the preset asks for {want}, and its "
                               f"checkpoint is not there to continue from (a dense run's is not committed): "
                               f"--rerun --only {spec.name} makes it again from round 1")
    if changed:
        raise StaleResultError(f"{run_dir} holds results for a different config (keys {sorted(changed)[:6]}); "
                               f"use another --out, or --rerun to replace them")
    return True


# what a preset may change in a finished run and still continue it: more rounds, and an lr schedule that keeps the
# rates of the rounds already made (a decay over the added rounds: shared/schedule.py)
EXTENSION_KEYS = frozenset({"num-server-rounds"}) | SCHEDULE_KEYS


def can_extend(spec: RunSpec, run_dir: Path) -> bool:
    """The run folder holds this run with fewer ``num-server-rounds`` (finished or not) and its checkpoint: the
    preset now asks for more rounds, so the run continues from its last round instead of starting over. A
    resumed run is bit-identical to one made in a single go (server/recovery.py), so 40 rounds extended to 80
    equal 80 rounds run at once. The schedule keys may change with the rounds when rounds already made keep their
    rates: 120 constant rounds extended by a 20-round decay are the 140-round warm-up-stable-decay run."""
    changed = _changed(spec, run_dir)
    if not changed or not changed <= EXTENSION_KEYS or "num-server-rounds" not in changed or not _has_checkpoint(run_dir):
        return False
    stored_cfg = _stored_config(run_dir)
    stored, want = stored_cfg.get("num-server-rounds"), spec.run_config.get("num-server-rounds")
    if not (isinstance(stored, int) and isinstance(want, int) and stored < want):
        return False
    return same_factors(stored_cfg, spec.run_config, history_rounds(run_dir)[0])


def can_resume(spec: RunSpec, run_dir: Path) -> bool:
    """A stopped run of the same config left a checkpoint, or a run of fewer rounds is extended: continue it
    instead of starting over."""
    return _has_checkpoint(run_dir) and (_changed(spec, run_dir) == set() or can_extend(spec, run_dir))


def history_rounds(run_dir: Path) -> tuple[int, float | None]:
    """(training rounds recorded so far, latest score) from a run's history.json, read while it runs."""
    try:
        history = json.loads((run_dir / "history.json").read_text())
    except (OSError, json.JSONDecodeError):
        return 0, None
    trained = [r for r in history if r.get("round", 0) >= 1]
    return len(trained), (score_of(history[-1]) if history else None)


def plan_runs(specs: list[RunSpec], out: Path, rerun: bool = False) -> list[tuple[RunSpec, str]]:
    """What the benchmark will do with each run, decided for all of them before any starts: ``skip`` (its results
    exist), ``resume`` (a stopped or shorter run continues from its checkpoint) or ``start``. A folder that holds
    rounds made with another config, finished or stopped, raises :class:`StaleResultError` here, so a bad store
    stops the command before its first run (not hours into it) and a stopped run's rounds are never thrown away
    unasked; a run that another benchmark process is making now raises :class:`RunBusyError`."""
    plan = []
    for spec in specs:
        run_dir = out / "runs" / spec.name
        pid = run_holder(run_dir)
        if pid is not None:
            raise _busy(spec.name, pid, run_dir)
        if rerun:
            action = "start"
        elif is_done(spec, run_dir):
            action = "skip"
        elif can_resume(spec, run_dir):
            action = "resume"
        else:
            changed, rounds = _changed(spec, run_dir), history_rounds(run_dir)[0]
            if changed and rounds > 0:
                raise StaleResultError(f"{run_dir} holds {rounds} rounds of a stopped run made with a different config "
                                       f"(keys {sorted(changed)[:6]}); use another --out, or --rerun to replace it")
            action = "start"
        plan.append((spec, action))
    return plan


def describe(spec: RunSpec, out: Path, rerun: bool = False) -> str:
    """One line of ``--list``: the run's name, what the same command without ``--list`` would do with it, and its
    settings."""
    run_dir = out / "runs" / spec.name
    rounds, want = history_rounds(run_dir)[0], spec.run_config.get("num-server-rounds")
    try:
        action = plan_runs([spec], out, rerun)[0][1]
    except StaleResultError:
        action = "stale"
    except RunBusyError:
        action = "busy"
    state = {"busy": f"being made now by pid {run_holder(run_dir)}: round {rounds} of {want}","skip": f"done ({rounds} rounds)", "resume": f"resumes at round {rounds + 1} of {want}",
             "start": "new" if rounds == 0 else f"starts over (has {rounds} rounds)",
             "stale": f"refused: made with another config ({rounds} rounds)"}[action]
    return f"{spec.name}  [{state}]  {json.dumps(spec.run_config)}"
