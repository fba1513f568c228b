"""Benchmark presets (TOML) -> the list of runs to make, each a full run-config.

A preset file (``simulations/benchmark/presets/<name>.toml``)::

    description = "..."
    target-score = 0.80             # the headline score the "bytes to target" column is measured at (alias:
                                    # target-accuracy); or a table by task: target-score = {cola = 0.4, rte = 0.6}
    out = "docs/results/paper"      # optional: the results folder (relative to the repo), for runs of record
                                    # whose store is committed so that a later clone resumes it
    [simulation]                    # how each run is launched
    num-supernodes = 10
    cpus-per-client = 1
    [run-config]                    # base run-config shared by every run
    num-server-rounds = 10
    [matrix]                        # cartesian product of lists -> runs
    method = ["pafi", "full"]
    value-dtype = ["float32", "int8"]
    [[runs]]                        # and/or explicit runs (their own keys)
    method = "lora"
    variant = true                  # optional: a variant or diagnostic of a main row, plotted in a figure of its
                                    # own (not a run-config key)
    [methods.full]                  # overrides for every run of a method (e.g. its learning rate)
    lr = 3e-5
    seeds = [42, 43, 44]            # optional, top level, per method or per run: one run per seed

With ``seeds`` (a list of ints, at the top level, in ``methods.<m>`` or in a run, the most specific
wins), a run becomes one run per seed, named ``<name>-s<seed>`` with ``seed`` set; the report groups
them back by ``<name>`` (mean and spread over seeds). Without it a run is one run, as before.

Precedence, lowest first: base ``run-config`` < ``methods.<m>`` < the run's own keys < command-line
overrides (``-c``; they apply to every run). A relative ``data-dir`` is resolved against the repo.
"""

from __future__ import annotations

import itertools
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from simulations import REPO

PRESETS = Path(__file__).resolve().parents[1] / "presets"


class PresetError(ValueError):
    """A preset file is missing or malformed."""


@dataclass(frozen=True)
class Simulation:
    """Simulation Engine settings of every run."""

    num_supernodes: int = 10
    cpus_per_client: int = 1
    gpus_per_client: float = 0.0  # Ray GPUs per virtual client; fractional shares a GPU (0.25 = four per GPU)
    ray_cpus: int = 0  # CPUs the local Ray schedules clients on (0: the machine's; see simulations.engines.launcher)
    timeout: float = 3600.0


@dataclass(frozen=True)
class RunSpec:
    """One run of the matrix: its folder name and its complete run-config (without output-dir)."""

    name: str
    run_config: dict[str, Any]
    group: str = ""  # the run's name without its seed suffix (the report's row over seeds)
    seed: int | None = None  # set when the preset lists seeds
    variant: bool = False  # the preset marks it a variant/diagnostic: the plots draw it apart from the main rows
    num_supernodes: int | None = None  # the run's own federation size (a run's num-supernodes key), else [simulation]'s


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    target_score: float | dict[str, float] | None  # of the headline metric; one for every task, or by task
    simulation: Simulation
    runs: list[RunSpec] = field(default_factory=list)
    out: Path | None = None  # the preset's own results folder (``out = "docs/results/paper"``), else outputs/...


def preset_path(name_or_path: str) -> Path:
    """A preset by name (``quick`` -> simulations/benchmark/presets/quick.toml) or by file path."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = PRESETS / f"{name_or_path}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in PRESETS.glob("*.toml"))
        raise PresetError(f"no preset {name_or_path!r}; use one of {known} or a path to a .toml file")
    return path


def run_name(keys: Mapping[str, Any]) -> str:
    """Readable folder name from a run's own keys: method first, then the other values."""
    parts = [str(keys.get("method", "run"))]
    parts += [f"{k}={v}" if k not in ("value-dtype",) else str(v) for k, v in keys.items() if k != "method"]
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", "-".join(parts))


def _expand(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    matrix = doc.get("matrix", {})
    own: list[dict[str, Any]] = []
    if matrix:
        keys = list(matrix)
        values = [v if isinstance(v, list) else [v] for v in matrix.values()]
        own += [dict(zip(keys, combo)) for combo in itertools.product(*values)]
    own += [dict(r) for r in doc.get("runs", [])]
    if not own:
        raise PresetError("a preset needs a [matrix] table or [[runs]] entries")
    return own


def _resolve_paths(config: dict[str, Any]) -> dict[str, Any]:
    for key in ("data-dir", "init-values"):  # relative to the repository
        path = config.get(key)
        if path and not Path(path).is_absolute():
            config[key] = str((REPO / path).resolve())
    return config


def build_runs(doc: Mapping[str, Any], overrides: Mapping[str, Any]) -> list[RunSpec]:
    """Expand the preset's matrix and runs into complete run-configs (see module docstring)."""
    base = dict(doc.get("run-config", {}))
    methods = {m: dict(v) for m, v in doc.get("methods", {}).items()}
    top_seeds = doc.get("seeds")
    runs, seen = [], set()
    for own in _expand(doc):
        variant = own.pop("variant", False)
        nodes = own.pop("num-supernodes", None)  # a simulation setting of this run alone (multitask's single tasks)
        name = str(own.pop("name", "")) or run_name({k: v for k, v in own.items() if k != "seeds"})
        if not isinstance(variant, bool):
            raise PresetError(f"run {name!r}: 'variant' must be true or false, got {variant!r}")
        if nodes is not None and (isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1):
            raise PresetError(f"run {name!r}: 'num-supernodes' must be an integer >= 1, got {nodes!r}")
        if name in seen:
            raise PresetError(f"two runs are both named {name!r}; give one a distinct 'name' key")
        seen.add(name)
        method = dict(methods.get(own.get("method", base.get("method", "pafi")), {}))
        seeds = _seeds(own.pop("seeds", method.pop("seeds", top_seeds)), name)
        config = {**base, **method, **own, **overrides}
        if seeds is None:
            runs.append(RunSpec(name, _resolve_paths(config), group=name, variant=variant, num_supernodes=nodes))
            continue
        for seed in seeds:
            runs.append(RunSpec(f"{name}-s{seed}", _resolve_paths({**config, "seed": seed}), group=name, seed=seed,
                                variant=variant, num_supernodes=nodes))
    return runs


def _seeds(value: Any, name: str) -> list[int] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(v, int) and v >= 0 for v in value) \
            or len(set(value)) != len(value):
        raise PresetError(f"run {name!r}: 'seeds' must be a non-empty list of distinct non-negative ints, "
                          f"got {value!r}")
    return list(value)


def preset_target(doc: Mapping[str, Any], where: Any) -> float | dict[str, float] | None:
    """The preset's target of the headline score: ``target-score`` or its older name ``target-accuracy`` (the
    same meaning: accuracy is SST-2's headline), a number or a table by task."""
    given = {k: doc[k] for k in ("target-score", "target-accuracy") if k in doc}
    if len(given) == 2 and given["target-score"] != given["target-accuracy"]:
        raise PresetError(f"{where}: target-score and target-accuracy differ; keep one (target-score)")
    target = next(iter(given.values()), None)
    try:
        if isinstance(target, Mapping):
            return {str(task): float(v) for task, v in target.items()}
        return float(target) if target is not None else None
    except (TypeError, ValueError) as exc:
        raise PresetError(f"{where}: target-score must be a number or a table of numbers by task "
                          f"(target-score = {{cola = 0.4}}), got {target!r}") from exc


def load_preset(name_or_path: str, overrides: Mapping[str, Any] | None = None,
                sim_overrides: Mapping[str, Any] | None = None) -> Preset:
    """Read a preset and expand its runs, with command-line run-config ``overrides`` on top."""
    path = preset_path(name_or_path)
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise PresetError(f"{path} is not valid TOML: {exc}") from exc
    sim = {k.replace("-", "_"): v for k, v in doc.get("simulation", {}).items()}
    sim.update({k: v for k, v in (sim_overrides or {}).items() if v is not None})
    try:
        simulation = Simulation(**sim)
    except TypeError as exc:
        raise PresetError(f"{path}: unknown [simulation] key ({exc}); use num-supernodes, cpus-per-client, "
                          f"gpus-per-client, ray-cpus, timeout") from exc
    if not isinstance(simulation.ray_cpus, int) or simulation.ray_cpus < 0:
        raise PresetError(f"{path}: [simulation] ray-cpus must be an integer >= 0 (0: the machine's CPUs), "
                          f"got {simulation.ray_cpus!r}")
    target = preset_target(doc, path)
    out = doc.get("out")
    if out is not None and (not isinstance(out, str) or not out.strip()):
        raise PresetError(f"{path}: 'out' must be a folder path (relative to the repository), got {out!r}")
    return Preset(path.stem, str(doc.get("description", "")), target, simulation, build_runs(doc, dict(overrides or {})), (REPO / out).resolve() if out else None)
