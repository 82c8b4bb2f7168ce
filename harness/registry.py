"""Registries of methods and tasks by name, with "did you mean" errors; a module is imported when its name is used.

Each package lists what it registers in its `CATALOGUE` (methods/__init__.py, tasks/__init__.py): name -> the
module that registers it, its one-line description and (methods) its bound. `harness list`, the names and the
unknown-name errors read the catalogue only; `get(name)` imports that one module, whose `@register_method` /
`@register_task` class then registers itself (and must agree with its catalogue entry). So a run imports the
method and task it uses, not every method and task. `load_all()` imports every module of both packages.
A name in neither catalogue first imports the installed plugin packages (harness/plugins.py: methods and tasks
from outside the repository, with their own defaults and schema tables), then fails as unknown.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import pkgutil
from typing import Generic, NamedTuple, TypeVar

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


class Listed(NamedTuple):
    """A catalogue entry: the module that registers the name, and what `harness list` shows of it."""
    module: str
    description: str
    bound: str = ""  # methods: "lower_bound", "upper_bound" or "" (the class's `bound`)


class Registry(Generic[T]):
    def __init__(self, kind: str, package: str):
        self.kind = kind
        self.package = package  # whose CATALOGUE lists the names
        self._items: dict[str, type[T]] = {}  # the registered (imported) classes

    @functools.cached_property
    def catalogue(self) -> dict[str, Listed]:
        return importlib.import_module(self.package).CATALOGUE

    def register(self, cls: type[T]) -> type[T]:
        name = getattr(cls, "name", None)
        if not name:
            raise TypeError(f"{cls.__qualname__} needs a class attribute `name` to be registered")
        if name in self._items and self._items[name] is not cls:
            raise ValueError(f"{self.kind} '{name}' registered twice: {self._items[name]} and {cls}")
        listed = self.catalogue.get(name)
        if listed is not None and listed != Listed(cls.__module__, cls.description, getattr(cls, "bound", "")):
            raise TypeError(f"{self.kind} '{name}' ({cls.__module__}.{cls.__qualname__}): its module, description or "
                            f"bound differ from its entry in {self.package}/__init__.py CATALOGUE {listed}; keep the "
                            f"two the same (`harness list` reads the catalogue without importing the module)")
        self._items[name] = cls
        return cls

    def get(self, name: str) -> type[T]:
        if name not in self._items and name not in self.catalogue:
            load_plugins()  # an installed plugin package may register it (harness/plugins.py)
        if name not in self._items and name in self.catalogue:
            importlib.import_module(self.catalogue[name].module)  # registers it
            if name not in self._items:
                raise LookupError(f"{self.package}/__init__.py CATALOGUE says {self.catalogue[name].module} registers "
                                  f"{self.kind} '{name}', but importing it did not")
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self.names()) from None

    def require(self, name: str) -> None:
        """UnknownNameError unless `name` is listed or registered; imports nothing (submitting a sweep checks its
        names this way: the jobs import the method, the submitting process need not import torch)."""
        if name not in self._items and name not in self.catalogue:
            load_plugins()
        if name not in self._items and name not in self.catalogue:
            raise UnknownNameError(self.kind, name, self.names())

    def names(self) -> list[str]:
        """Every name: the catalogue's and those registered, with the installed plugin packages' (imported here)."""
        load_plugins()
        return sorted(self.catalogue.keys() | self._items.keys())

    def items(self) -> list[tuple[str, type[T]]]:
        """Every (name, class), sorted: imports every listed module."""
        return [(name, self.get(name)) for name in self.names()]

    def listing(self) -> list[tuple[str, str, str]]:
        """(name, description, bound) of every name, sorted, from the catalogue: no module is imported."""
        rows = []
        for name in self.names():
            listed = self.catalogue.get(name)
            if listed is None:  # a class registered from outside the package's catalogue
                cls = self._items[name]
                listed = Listed(cls.__module__, cls.description, getattr(cls, "bound", ""))
            rows.append((name, listed.description, listed.bound))
        return rows

METHODS: Registry = Registry("method", "methods")
TASKS: Registry = Registry("task", "tasks")

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


# Plugin packages (harness/plugins.py) name a module under this entry-point group; the registry owns finding and
# importing them, plugins.py the registration those modules call, so neither imports the other back.
ENTRY_POINT_GROUP = "pkd_harness.plugins"

_plugins_loaded: list[str] | None = None


def load_plugins() -> list[str]:
    """Import every module named under the entry-point group, once per process (they register their names with
    harness.plugins.add_method / add_task); the names of the entry points."""
    global _plugins_loaded
    if _plugins_loaded is not None:
        return _plugins_loaded
    from importlib.metadata import entry_points

    _plugins_loaded = []
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            ep.load()
        except Exception as e:
            raise ImportError(f"the {ENTRY_POINT_GROUP} entry point '{ep.name} = {ep.value}' (of the installed "
                              f"package {ep.dist.name if ep.dist else '?'}) failed to import: {type(e).__name__}: {e}; "
                              f"fix that module or uninstall its package") from e
        _plugins_loaded.append(ep.name)
    return _plugins_loaded


def register_method(cls):
    return METHODS.register(cls)


def register_task(cls):
    return TASKS.register(cls)
