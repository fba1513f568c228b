"""Knobs declared once: typed dataclass fields that carry their default, accepted range and help.

A knob is a field made with :func:`knob` on a frozen dataclass (the core :class:`shared.config.RunConfig`
or a method's settings). Its run-config key is ``prefix + field name`` in kebab case (a settings class
may set ``KNOB_PREFIX``, e.g. ``"lora-"``). :func:`build` coerces and checks every value against its
field and raises :class:`ConfigError` with one line naming the key, the bad value and what is accepted.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping


class ConfigError(ValueError):
    """A run-config value is missing, of the wrong type or out of range."""


@dataclass(frozen=True)
class Spec:
    """What a knob accepts besides its type: a numeric range (bounds open or closed) or a set of choices."""

    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[Any, ...] | None = None

    def accepted(self) -> str:
        """The accepted values in words, e.g. ``in (0, 1]`` or ``one of 'a', 'b'``."""
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return "any value"

    def admits(self, value: Any) -> bool:
        if self.choices is not None:
            return value in self.choices
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)


def knob(default: Any, help: str, **spec: Any) -> Any:
    """A dataclass field for one knob: ``low``/``high`` (``low_open``/``high_open``) or ``choices``."""
    return dataclasses.field(default=default, metadata={"knob": Spec(help, **spec)})


def key_of(cls: type, name: str) -> str:
    """Run-config key of field ``name`` of ``cls``."""
    return getattr(cls, "KNOB_PREFIX", "") + name.replace("_", "-")


def knobs(cls: type) -> dict[str, tuple[dataclasses.Field, Spec]]:
    """Run-config key -> (field, spec) for every knob of ``cls``, in declaration order."""
    return {key_of(cls, f.name): (f, f.metadata["knob"]) for f in dataclasses.fields(cls) if "knob" in f.metadata}


def coerce(key: str, value: Any, target: type) -> Any:
    """``value`` as ``target`` (bool, int, float, str); TOML integers are accepted for float knobs."""
    if target is bool and isinstance(value, bool):
        return value
    if target is bool and isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if target is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if target is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if target is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if target is str and isinstance(value, str):
        return value
    raise ConfigError(f"run-config key '{key}' must be {target.__name__}, got {value!r}; "
                      f"fix it in [tool.flwr.app.config] or --run-config \"{key}=...\"")


def check(key: str, value: Any, spec: Spec) -> Any:
    """``value`` if the knob's spec admits it, else a one-line :class:`ConfigError`."""
    if not spec.admits(value):
        raise ConfigError(f"run-config key '{key}' must be {spec.accepted()}, got {value!r}")
    return value


def build(cls: type, values: Mapping[str, Any], **fixed: Any) -> Any:
    """An instance of ``cls`` from run-config ``values`` (its own keys only; others are ignored)."""
    kwargs = dict(fixed)
    for key, (f, spec) in knobs(cls).items():
        if key in values:
            kwargs[f.name] = check(key, coerce(key, values[key], type(f.default)), spec)
    return cls(**kwargs)


def validate(obj: Any) -> Any:
    """Check every knob of an existing instance (one-line :class:`ConfigError` on the first bad one)."""
    for key, (f, spec) in knobs(type(obj)).items():
        check(key, coerce(key, getattr(obj, f.name), type(f.default)), spec)
    return obj


def refuse_unknown(keys: Iterable[str], known: Iterable[str]) -> None:
    """A one-line :class:`ConfigError` for the first key not in ``known``, naming the closest valid one."""
    known = sorted(set(known))
    for key in sorted(set(keys) - set(known)):
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'?" if close else "list the valid keys with `python -m shared.settings`"
        raise ConfigError(f"unknown run-config key '{key}'; {hint}")


def help_rows(cls: type) -> list[tuple[str, Any, str, str]]:
    """(key, default, accepted, help) per knob of ``cls``."""
    words = {bool: "true or false", str: "text", int: "an integer", float: "a number"}
    return [(key, f.default, words[type(f.default)] if spec.accepted() == "any value" else spec.accepted(), spec.help)
            for key, (f, spec) in knobs(cls).items()]
