"""Decorator registries for methods and tasks, with "did you mean" errors.

Registration happens when the module defining the class is imported; `load_all()` imports every
module of the `methods` and `tasks` packages so the registries are complete.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """An unknown registry name; str() is a one-line message with the closest known names."""

    def __init__(self, kind: str, name: str, known: list[str]):
        self.kind, self.name, self.known = kind, name, known
        super().__init__(name)

    def __str__(self) -> str:
        return unknown_name_message(self.kind, self.name, self.known)


def unknown_name_message(kind: str, name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=2, cutoff=0.5)
    hint = f" did you mean {' or '.join(close)}?" if close else ""
    return f"unknown {kind} '{name}';{hint} (known: {', '.join(sorted(known))})"


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, type[T]] = {}

    def register(self, cls: type[T]) -> type[T]:
        name = getattr(cls, "name", None)
        if not name:
            raise TypeError(f"{cls.__qualname__} needs a class attribute `name` to be registered")
        if name in self._items and self._items[name] is not cls:
            raise ValueError(f"{self.kind} '{name}' registered twice: {self._items[name]} and {cls}")
        self._items[name] = cls
        return cls

    def get(self, name: str) -> type[T]:
        load_all()
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, list(self._items)) from None

    def names(self) -> list[str]:
        load_all()
        return sorted(self._items)

    def items(self) -> list[tuple[str, type[T]]]:
        load_all()
        return sorted(self._items.items())


METHODS: Registry = Registry("method")
TASKS: Registry = Registry("task")

_loaded = False


def load_all() -> None:
    """Import every module of the `methods` and `tasks` packages (they register themselves)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for pkg_name in ("methods", "tasks"):
        pkg = importlib.import_module(pkg_name)
        for info in pkgutil.iter_modules(pkg.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{pkg_name}.{info.name}")


def register_method(cls):
    return METHODS.register(cls)


def register_task(cls):
    return TASKS.register(cls)
