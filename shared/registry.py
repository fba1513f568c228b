"""A registry of named entries loaded from one folder each (the methods, the tasks): PEFT's one-line registration.

Built-in folders are imported on first use, so a registry depends on nothing but its contract; an entry defined
elsewhere is added with :meth:`Registry.register`. A second entry under a taken name is refused.
"""

from __future__ import annotations

import importlib
from typing import Callable, Generic, Iterable, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """``package``'s built-in ``folders``; ``entries(module)`` gives what a folder registers (one or many)."""

    def __init__(self, package: str, folders: Iterable[str], entries: Callable[[object], Iterable[T]]):
        self.package, self.folders, self.entries = package, tuple(folders), entries
        self._items: dict[str, T] = {}
        self._loaded = False

    def register(self, item: T) -> T:
        """Add ``item`` under ``item.name`` (a second item of the same name is refused)."""
        name = item.name  # type: ignore[attr-defined]
        if name in self._items and self._items[name] is not item:
            raise ValueError(f"a {self.package.rsplit('.', 1)[-1][:-1]} named {name!r} is already registered")
        self._items[name] = item
        return item

    def all(self) -> dict[str, T]:
        """Name -> entry, built-ins first (imported on the first call)."""
        if not self._loaded:
            builtin = [e for folder in self.folders
                       for e in self.entries(importlib.import_module(f"{self.package}.{folder}"))]
            for item in builtin:
                self.register(item)
            self._loaded = True
        return dict(self._items)
