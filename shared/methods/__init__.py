"""The method registry: every way of choosing what trains, one folder each (contract: ``base.py``).

Registering a built-in method is one line in :data:`BUILTIN` (its folder's ``METHOD``); a method
defined elsewhere is added with :func:`register`. The folders are imported on first use, so the
registry itself depends on nothing but the contract.
"""

from __future__ import annotations

from shared.knobs import ConfigError
from shared.methods.base import Method
from shared.registry import Registry

BUILTIN = (  # shared.methods.<folder>: one line per method
    "pafi",
    "pafi_attention",
    "magnitude",
    "random",
    "bitfit",
    "sam",
    "topk",
    "full",
    "lora",
    "dsee",
    "hiwi",
)

_REGISTRY: Registry[Method] = Registry("shared.methods", BUILTIN, lambda module: [module.METHOD])


def register(method: Method) -> Method:
    """Add ``method`` under ``method.name`` (a second method of the same name is refused)."""
    return _REGISTRY.register(method)


def methods() -> dict[str, Method]:
    """Name -> method, built-ins first (loaded on the first call)."""
    return _REGISTRY.all()


def get_method(name: str) -> Method:
    """The method registered as ``name``; a one-line :class:`ConfigError` naming the choices otherwise."""
    known = methods()
    if name not in known:
        raise ConfigError(f"run-config key 'method' must be one of {', '.join(known)}, got {name!r}")
    return known[name]
