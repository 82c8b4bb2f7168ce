"""Methods and tasks from outside this repository: a package of yours, found through an entry point.

A built-in method or task is three things inside the harness: its class (`@register_method`), its YAML under
harness/conf/<group>/ and its table in harness/schema.py. A package outside the repository cannot add files there,
so it hands all three to `add_method` / `add_task` instead, in a module that it names under the entry-point group
`pkd_harness.plugins` of its pyproject.toml:

    [project.entry-points."pkd_harness.plugins"]
    my_method = "my_package.my_method"

    # my_package/my_method.py
    @add_method(config={"name": "my_method", "alpha": 1.0}, schema={"alpha": float_(gt=0)})
    class MyMethod(Method): ...

The harness imports those modules the first time it meets a name it does not know (`harness run method=...`,
`harness list`, a job of a sweep), so `harness run method=my_method` works once the package is installed, with the
same checks as a built-in: the defaults become the `method` (or `task`) config-group option of that name (Hydra's
ConfigStore), the table validates every value, and the class runs. docs/guides/adding-a-method.md and
adding-a-task.md are worked examples (tests/test_extension_guide.py installs and runs them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

from harness import schema
from harness.errors import ConfigError

from harness.registry import ENTRY_POINT_GROUP, load_plugins  # noqa: F401 - the group and its loader, for importers

def add_method(cls: type | None = None, *, config: Mapping | str | Path, schema: Mapping[str, schema.Field],
               rules: list[schema.Rule] = ()) -> Callable[[type], type] | type:
    """Register a Method subclass from outside the repository, with its `method.*` defaults and their table.

    config: the defaults (a mapping, or the path of a YAML file), with `name` = the class's name; schema: an entry
    (harness/schema.py constructors) for every other key, dotted for nested keys (`tnet.lr`); rules: checks across
    keys (schema.Rule, keys relative to `method.`). Used as a decorator."""
    return _decorate(cls, "method", config, schema, rules)


def add_task(cls: type | None = None, *, config: Mapping | str | Path, schema: Mapping[str, schema.Field],
             rules: list[schema.Rule] = ()) -> Callable[[type], type] | type:
    """Register a Task subclass from outside the repository, with its `task.*` defaults and their table (see
    add_method)."""
    return _decorate(cls, "task", config, schema, rules)


def _decorate(cls, group: str, config, table, rules):
    def register(c: type) -> type:
        _register(c, group, config, table, list(rules))
        return c
    return register if cls is None else register(cls)


def _register(cls: type, group: str, config, table: Mapping[str, schema.Field], rules: list[schema.Rule]) -> None:
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from harness.config import builtin_options
    from harness.registry import METHODS, TASKS

    where = f"{cls.__module__}.{cls.__qualname__}"
    name = getattr(cls, "name", "")
    if not name:
        raise TypeError(f"{where} needs a class attribute `name` to be registered as a {group}")
    if name in builtin_options(group):
        raise ValueError(f"{where}: {group} '{name}' is built in (harness/conf/{group}/{name}.yaml); choose another "
                         f"name")
    defaults = OmegaConf.to_container(OmegaConf.load(config) if isinstance(config, (str, Path))
                                      else OmegaConf.create(dict(config)), resolve=False)
    source = str(config) if isinstance(config, (str, Path)) else f"the config of {where}"
    if defaults.get("name") != name:
        raise ConfigError(f"{source}: name={defaults.get('name')!r}: expected name: {name} (the class's `name`)")
    table = {"name": schema.choice(name), **table}
    # The same rule as the built-ins' (tests/test_schema.py): every default has an entry, every entry a default.
    keys = set(_leaf_paths(defaults, table))
    unchecked = sorted(keys - set(table))
    without_default = sorted(k for k, f in table.items() if k not in keys and not f.optional)
    if unchecked or without_default:
        raise ConfigError(f"{where}: its config and schema disagree: "
                          + "; ".join(filter(None, [
                              unchecked and f"no schema entry for {', '.join(unchecked)} (add one per key)",
                              without_default and f"no default for {', '.join(without_default)} (add them to "
                                                  f"the config, or wrap the entry in schema.optional)"])))
    bad = [table[k].message(f"{group}.{k}", v) for k, v in _leaf_items(defaults, table) if not table[k].accepts(v)]
    if bad:
        raise ConfigError(f"{source}: its own default is invalid: " + "; ".join(bad))
    (METHODS if group == "method" else TASKS).register(cls)
    schema.GROUP_TABLES[group][name] = dict(table)
    if rules:
        schema.RULES[f"{group}/{name}"] = rules
    ConfigStore.instance().store(group=group, name=name, node=defaults)


def _leaf_items(node: dict, table: Mapping, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted path, value) of every key that is no section (a mapping whose entry is dict_() is a value)."""
    out = []
    for k, v in node.items():
        if isinstance(v, dict) and v and f"{prefix}{k}" not in table:
            out += _leaf_items(v, table, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


def _leaf_paths(node: dict, table: Mapping) -> list[str]:
    return [k for k, _ in _leaf_items(node, table)]
