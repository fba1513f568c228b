"""Parse a run's settings once, at start, before any model loads; list every knob from the command line.

:func:`parse_run_config` reads Flower's flat ``context.run_config``: the core knobs
(:class:`shared.config.RunConfig`) and every registered method's knobs (its ``settings`` class),
refuses unknown keys (naming the closest valid one) and validates every value, so a bad knob of any
method fails in one line before a round starts.

``python -m shared.settings`` lists the methods and their knobs with defaults, ranges and help;
``--toml`` prints the ``[tool.flwr.app.config]`` block they declare (tests check pyproject.toml
against it).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Mapping

from shared.config import CORE_KEYS, RunConfig, core_config
from shared.drift import check_drift_method
from shared.knobs import ConfigError, build, coerce, help_rows, knobs, refuse_unknown
from shared.methods import get_method, methods
from shared.multitask import check_tasks, task_configs

__all__ = ["ConfigError", "parse_run_config", "method_knobs", "declared_defaults"]


def method_knobs() -> dict[str, tuple[type, Any]]:
    """Run-config key -> (settings class, default) of every registered method's knobs."""
    out: dict[str, tuple[type, Any]] = {}
    for method in methods().values():
        for key, (f, _) in knobs(method.settings).items():
            out.setdefault(key, (method.settings, f.default))
    return out


def parse_run_config(run_config: Mapping[str, Any]) -> RunConfig:
    """A validated :class:`RunConfig` (core knobs + ``options``: every method knob given, coerced and checked)."""
    extra = method_knobs()
    refuse_unknown(run_config, CORE_KEYS | set(extra))
    options = {}
    for key, value in run_config.items():
        if key in extra:
            options[key] = coerce(key, value, type(extra[key][1]))
    for settings in {cls for cls, _ in extra.values()}:
        build(settings, options)  # range checks of every method's knobs, active or not
    cfg = core_config(run_config, options)
    method = get_method(cfg.method)  # a one-line error naming the registered methods
    check_task(cfg)
    check_tasks(cfg, check_task)  # tasks=...: the assignment, the method and settings every task's head can share
    if cfg.secure_aggregation and not method.aligned:
        raise ConfigError(f"secure-aggregation=true cannot run method '{cfg.method}': its updates are not aligned "
                          f"(each carries its own positions), so SecAgg+ masks cannot cancel coordinate by "
                          f"coordinate; use a shared-mask method (e.g. pafi) or secure-aggregation=false")
    check_drift_method(cfg.drift_correction, cfg.method, method.aligned)
    return cfg


def check_task(cfg: RunConfig) -> None:
    """One-line :class:`ConfigError` for a dataset that is not a registered task (or a custom task whose description
    does not fit its data), or settings its task cannot serve: the class-balanced loss of a regression or a causal LM,
    a Dirichlet partition of data with nothing to skew (plain text, instructions)."""
    from shared.tasks import TaskError, task_of

    try:
        task = task_of(cfg)
    except TaskError as exc:
        raise ConfigError(str(exc)) from None
    if task.kind == "regression" and cfg.local_loss == "balanced":
        raise ConfigError(f"local-loss='balanced' weighs classes, and dataset {cfg.dataset!r} is a regression "
                          f"without classes; use local-loss='ce' (its loss is then the mean squared error)")
    if task.kind == "causal-lm" and cfg.local_loss == "balanced":
        raise ConfigError(f"local-loss='balanced' weighs classes, and dataset {cfg.dataset!r} is a causal-LM task "
                          f"without classes; use local-loss='ce' (its loss is the next-token cross-entropy)")
    if cfg.partitioner == "dirichlet" and task.skew is None:
        raise ConfigError(f"partitioner='dirichlet' skews labels, and dataset {cfg.dataset!r} has no label or "
                          f"attribute to skew; use partitioner='iid'")


def local_loss(cfg: RunConfig) -> str:
    """The loss a client trains with: ``local-loss``, with ``auto`` resolved by the task -- the class-balanced loss for
    a classification (a label-skewed client does not pull the global head to its classes), the model's own loss for
    a regression or a causal LM."""
    if cfg.local_loss != "auto":
        return cfg.local_loss
    from shared.tasks import task_of

    return "balanced" if task_of(cfg).kind == "classification" else "ce"


def declared_defaults() -> dict[str, Any]:
    """Every knob's default, core first: what ``[tool.flwr.app.config]`` declares."""
    out = {key: f.default for key, (f, _) in knobs(RunConfig).items()}
    out.update({key: default for key, (_, default) in method_knobs().items()})
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def toml_block() -> str:
    """The ``[tool.flwr.app.config]`` table declaring every knob with its default, core first, then by method."""
    lines = ["[tool.flwr.app.config]"]
    lines += [f"{key} = {_toml_value(f.default)}" for key, (f, _) in knobs(RunConfig).items()]
    seen: set[str] = set()
    for m in methods().values():
        own = [(key, f.default) for key, (f, _) in knobs(m.settings).items() if key not in seen]
        if own:
            lines.append(f"# {m.name}: {m.help}")
            lines += [f"{key} = {_toml_value(value)}" for key, value in own]
            seen |= {key for key, _ in own}
    return "\n".join(lines) + "\n"


def describe() -> str:
    """Human-readable listing: core knobs, then each method with its default rates and own knobs."""
    lines = ["core knobs (key = default  accepted  help):"]
    lines += [f"  {k} = {d!r}  {a}  {h}" for k, d, a, h in help_rows(RunConfig)]
    lines.append("methods (method = name; lr = 0 takes the method's rate):")
    for m in methods().values():
        lines.append(f"  {m.name}: {m.help}  [lr {m.lr:g}, head-lr {m.head_lr or m.lr:g}]")
        lines += [f"      {k} = {d!r}  {a}  {h}" for k, d, a, h in help_rows(m.settings)]
    return "\n".join(lines)


def check_run(run_config: Mapping[str, Any]) -> str | None:
    """Everything a run can be refused for, without starting it: the whole run-config through the typed settings
    (unknown keys with the closest valid name, ranges, choices, method/task combinations), the data (its task's
    splits load, the eval split exists) and the model (its config and tokenizer load, offline where the Hub cannot
    be reached). The one line naming the first problem and its fix, or None. What the launcher runs before it
    starts any process; ``python -m shared.settings --check "…"`` runs it alone."""
    from shared.data import DataLoadError, held_out, run_splits
    from shared.model import ModelLoadError, check_model
    from shared.tasks import TaskError

    try:
        cfg = parse_run_config(run_config)
        for sub in (task_configs(cfg).values() if cfg.tasks else [cfg]):  # every task's data
            held_out(run_splits(sub), sub.eval_split, sub.data_dir)
        check_model(cfg.model)
    except (ConfigError, TaskError, DataLoadError, ModelLoadError) as exc:
        return str(exc)
    return None


def parse_pairs(text: str) -> dict[str, Any]:
    """``key=value key2='text'`` as ``flwr run --run-config`` takes it: space-separated TOML pairs (quotes kept)."""
    import shlex
    import tomllib

    out: dict[str, Any] = {}
    for pair in shlex.split(text, posix=False):
        try:
            out.update(tomllib.loads(pair))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{pair!r} is not key=value (strings in quotes: method='pafi'): {exc}") from None
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.settings", description=__doc__.split("\n")[0])
    parser.add_argument("--toml", action="store_true", help="print the [tool.flwr.app.config] block")
    parser.add_argument("--check", metavar="RUN_CONFIG", default=None,
                        help="check a run-config as `flwr run . --run-config \"...\"` takes it (keys, values, data, "
                             "model) and print the first problem in one line, or 'ok'")
    args = parser.parse_args(argv)
    if args.check is not None:
        try:
            parse_pairs(args.check)
        except ConfigError as exc:
            print(f"fedsparse: error: {exc}", file=sys.stderr)
            return 2
        problem = check_run(parse_pairs(args.check))
        print(f"fedsparse: error: {problem}" if problem else "ok", file=sys.stderr if problem else sys.stdout)
        return 2 if problem else 0
    print(toml_block() if args.toml else describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
