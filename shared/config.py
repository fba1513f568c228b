"""Typed, frozen run settings parsed once from Flower's flat run config.

Every knob is a kebab-case key in ``[tool.flwr.app.config]`` (pyproject.toml); this module maps it
to a snake_case field, checks its type and range, and raises :class:`ConfigError` with a one-line
message that says how to fix a bad value.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

VALUE_DTYPES = ("float32", "float16", "bfloat16", "int8")
PARTITIONERS = ("iid", "dirichlet")
MASK_SCOPES = ("global", "per-matrix")


class ConfigError(ValueError):
    """A run-config value is missing, of the wrong type or out of range."""


@dataclass(frozen=True)
class RunConfig:
    """All settings of one federated run (defaults mirror pyproject.toml)."""

    method: str = "pafi"
    mask_density: float = 0.005
    mask_scope: str = "global"
    num_server_rounds: int = 10
    fraction_train: float = 0.5
    min_train_replies: int = 1
    local_steps: int = 10
    batch_size: int = 32
    max_length: int = 64
    lr: float = 5e-3
    head_lr: float = 0.0
    weight_decay: float = 0.0
    value_dtype: str = "float32"
    int8_block_size: int = 256
    model: str = ""
    num_labels: int = 0
    dataset: str = "sst2"
    data_dir: str = ""
    partitioner: str = "dirichlet"
    dirichlet_alpha: float = 0.5
    seed: int = 42
    output_dir: str = "outputs/run"
    aggregator: str = "fedavg"
    server_lr: float = 1.0
    resume: bool = False
    max_eval_examples: int = 0
    eval_batch_size: int = 64
    round_timeout: float = 3600.0
    min_available_nodes: int = 2
    node_wait_timeout: float = 300.0
    max_reply_mb: float = 512.0
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def effective_head_lr(self) -> float:
        """Learning rate of the dense task head (``head-lr``; 0 means: same as ``lr``)."""
        return self.head_lr if self.head_lr > 0 else self.lr

    def option(self, key: str, default: Any) -> Any:
        """A method-specific knob not declared as a field (e.g. ``lora-rank``), by kebab-case key."""
        value = self.extra.get(key, default)
        if default is not None and not isinstance(value, type(default)):
            if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
                return float(value)
            raise ConfigError(
                f"run-config key '{key}' must be {type(default).__name__}, got {value!r}; "
                f"fix it in [tool.flwr.app.config] or --run-config"
            )
        return value

    def replace(self, **changes: Any) -> "RunConfig":
        """A copy with some fields changed (validated again)."""
        return _validate(dataclasses.replace(self, **changes))


def _coerce(key: str, value: Any, target: type) -> Any:
    if target is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif target is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif target is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif target is str:
        if isinstance(value, str):
            return value
    raise ConfigError(
        f"run-config key '{key}' must be {target.__name__}, got {value!r}; "
        f"fix it in [tool.flwr.app.config] or --run-config \"{key}=...\""
    )


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"run-config key '{key}' {message}")


def _validate(cfg: RunConfig) -> RunConfig:
    _check(0.0 < cfg.mask_density <= 1.0, "mask-density", f"must be in (0, 1], got {cfg.mask_density}")
    _check(cfg.mask_scope in MASK_SCOPES, "mask-scope", f"must be one of {MASK_SCOPES}, got {cfg.mask_scope!r}")
    _check(cfg.num_server_rounds >= 0, "num-server-rounds", "must be >= 0")
    _check(0.0 < cfg.fraction_train <= 1.0, "fraction-train", f"must be in (0, 1], got {cfg.fraction_train}")
    _check(cfg.min_train_replies >= 1, "min-train-replies", "must be >= 1")
    _check(cfg.local_steps >= 1, "local-steps", "must be >= 1")
    _check(cfg.batch_size >= 1, "batch-size", "must be >= 1")
    _check(cfg.max_length >= 8, "max-length", "must be >= 8")
    _check(cfg.lr > 0, "lr", f"must be > 0, got {cfg.lr}")
    _check(cfg.head_lr >= 0, "head-lr", "must be >= 0 (0 = same as lr)")
    _check(cfg.value_dtype in VALUE_DTYPES, "value-dtype", f"must be one of {VALUE_DTYPES}, got {cfg.value_dtype!r}")
    _check(cfg.int8_block_size >= 1, "int8-block-size", "must be >= 1")
    _check(cfg.partitioner in PARTITIONERS, "partitioner", f"must be one of {PARTITIONERS}, got {cfg.partitioner!r}")
    _check(cfg.dirichlet_alpha > 0, "dirichlet-alpha", "must be > 0")
    _check(cfg.server_lr > 0, "server-lr", "must be > 0")
    _check(cfg.max_eval_examples >= 0, "max-eval-examples", "must be >= 0 (0 = the whole split)")
    _check(cfg.eval_batch_size >= 1, "eval-batch-size", "must be >= 1")
    _check(cfg.round_timeout > 0, "round-timeout", "must be > 0 seconds")
    _check(cfg.min_available_nodes >= 1, "min-available-nodes", "must be >= 1")
    _check(cfg.max_reply_mb > 0, "max-reply-mb", "must be > 0")
    _check(cfg.num_labels >= 0, "num-labels", "must be >= 0 (0 = from the dataset)")
    return cfg


_FIELDS = {f.name: f for f in dataclasses.fields(RunConfig) if f.name != "extra"}


def parse_run_config(run_config: Mapping[str, Any]) -> RunConfig:
    """Build a :class:`RunConfig` from Flower's flat ``context.run_config`` (kebab-case keys)."""
    known: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in run_config.items():
        name = key.replace("-", "_")
        if name in _FIELDS:
            default = _FIELDS[name].default
            known[name] = _coerce(key, value, type(default))
        else:
            extra[key] = value
    cfg = RunConfig(**known, extra=dict(extra))
    return _validate(cfg)
