"""Every config value checked before anything runs: one line per problem, for the whole sweep at once.

`problems(cfg)` checks one composed config against harness/schema.py: unknown and missing keys, types,
ranges, choices, null, the rules across keys. Then it checks what the task can tell from its config alone:
the task class's own checks (Task.__init__) and, where the config fixes the number of folds, the fold.
`check_runs(runs)` does that for every run of a sweep and raises one ConfigError listing each distinct
problem once, with how many runs have it and which ones. The CLI calls it after composing and before the
first run starts or the first job is submitted; the runner calls problems() again before a run's folder
is made (for the Python API and for jobs). Checks that need the data (a fold the data does not have, a
method asking for a modality the task lacks) are made by the runner after loading the fold, still before
the folder exists (harness/runner.py: prepare).
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from harness.schema import GROUP_TABLES, ConfigError, Field, Rule, choice, show, table, unknown_key_message

_MISSING = object()


def schema_name(group: str, name: Any) -> str | None:
    """The schema table of a group option: its own, or for a method or task class registered without one (a
    test's subclass), that of the registered class it derives from; None if there is none."""
    tables = GROUP_TABLES[group]
    if isinstance(name, str) and name not in tables and group != "launcher":
        from harness.registry import load_plugins

        load_plugins()  # an installed plugin package adds its table when imported (harness/plugins.py)
    if not isinstance(name, str) or name in tables or group == "launcher":
        return name if name in tables else None
    from harness.registry import METHODS, TASKS, UnknownNameError
    try:
        cls = (METHODS if group == "method" else TASKS).get(name)
    except UnknownNameError:
        return None
    return next((c.name for c in cls.__mro__[1:] if getattr(c, "name", None) in tables), None)


@lru_cache(maxsize=64)
def _table(names: tuple[tuple[str, str, str], ...]) -> tuple[dict[str, Field], list[tuple[str, Rule]], frozenset]:
    """Entries, rules and sections of a run: names = ((group, option, its schema table), ...)."""
    fields, rules = table(*(base for _, _, base in names))
    for group, name, base in names:
        if name != base:
            fields[f"{group}.name"] = choice(name)
    sections = frozenset(p.rsplit(".", i)[0] for p in fields for i in range(1, p.count(".") + 1))
    return fields, rules, sections


def _lookup(d: dict, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(d, dict) or part not in d:
            return _MISSING
        d = d[part]
    return d


def _walk(node: dict, prefix: str, fields: dict[str, Field], sections: frozenset, out: list[str], seen: set[str],
          bad: set[str]) -> None:
    for key, value in node.items():
        path = f"{prefix}{key}"
        field = fields.get(path)
        if field is not None:
            seen.add(path)
            if not field.accepts(value):
                out.append(field.message(path, value))
                bad.add(path)
        elif path in sections:
            if isinstance(value, dict):
                _walk(value, path + ".", fields, sections, out, seen, bad)
            else:
                out.append(f"{path}={show(value)}: expected a mapping (the {path}.* keys)")
                bad.add(path)
        else:
            out.append(unknown_key_message(path, list(fields)))


def schema_problems(d: dict) -> tuple[list[str], set[str]]:
    """Problems of a plain config dict against the schema, and the paths that have one."""
    out: list[str] = []
    names = []
    for group, tables in GROUP_TABLES.items():
        name = _lookup(d, f"{group}.name")
        base = schema_name(group, name)
        if base is None:  # unknown names fail at composition already; this is `method.name=...`
            out.append(f"{group}.name={show(None if name is _MISSING else name)}: expected one of "
                       f"{', '.join(sorted(tables))}")
            return out, {f"{group}."}
        names.append((group, name, base))
    fields, rules, sections = _table(tuple(names))
    bad: set[str] = set()
    _check_fields(d, fields, sections, out, bad, " (a run needs it; `~{path}` removes it)")
    for prefix, rule in rules:
        values = [_lookup(d, prefix + k) for k in rule.keys]
        if any(v is _MISSING for v in values) or any(prefix + k in bad for k in rule.keys):
            continue
        message = rule.check(*values)
        if message:
            out.append(message)
    return out, bad


def check_against(d: dict, fields: dict[str, Field]) -> list[str]:
    """Problems of a config dict against a flat table of entries: unknown, missing and invalid keys, one line each
    (`harness extract` checks its config with it)."""
    sections = frozenset(p.rsplit(".", i)[0] for p in fields for i in range(1, p.count(".") + 1))
    out: list[str] = []
    _check_fields(d, fields, sections, out, set())
    return out


def _check_fields(d: dict, fields: dict[str, Field], sections: frozenset, out: list[str], bad: set[str],
                  missing_hint: str = "") -> None:
    """Unknown and invalid keys (_walk), then every required key absent, one line each into `out`; the paths
    found bad go into `bad`. `missing_hint` ends the missing-key line ({path} is filled in)."""
    seen: set[str] = set()
    _walk(d, "", fields, sections, out, seen, bad)
    for path, field in fields.items():
        if not field.optional and path not in seen and not any(path.startswith(b + ".") for b in bad):
            out.append(f"{path} is missing: expected {field.describe()}{missing_hint.format(path=path)}")
            bad.add(path)


@lru_cache(maxsize=256)
def _task_verdict(task_json: str) -> tuple[str | None, Any]:
    """Build the task from its config alone (no data is read): its own checks' message, else the task."""
    from harness.registry import TASKS
    from harness.task import TaskError

    cfg = OmegaConf.create(json.loads(task_json))
    try:
        return None, TASKS.get(cfg.name)(cfg)
    except TaskError as e:
        return str(e).splitlines()[0], None


def problems(cfg: DictConfig | dict) -> list[str]:
    """Every problem of one run's config, one line each (empty: the config is valid)."""
    d = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    out, bad = schema_problems(d)
    if any(p == "task." or p.startswith("task.") for p in bad) or not isinstance(d.get("task"), dict):
        return out
    message, task = _task_verdict(json.dumps(d["task"], sort_keys=True))
    if message:
        out.append(message)
    elif "fold" not in bad and task.config_n_folds is not None:
        from harness.task import TaskError
        try:
            task.check_fold(int(d["fold"]), task.config_n_folds)
        except TaskError as e:
            out.append(str(e))
    return out


def check_config(cfg: DictConfig | dict) -> None:
    """Raise ConfigError (one line per problem) unless the config is valid."""
    found = problems(cfg)
    if found:
        raise ConfigError(found[0] if len(found) == 1 else f"{len(found)} config problems: " + "; ".join(found),
                          lines=found)


def check_runs(runs: Sequence[tuple[list[str], DictConfig]]) -> None:
    """Check every (overrides, config) of a sweep; raise one ConfigError listing each distinct problem once.

    In a sweep each line says how many runs have the problem and which: `those with <overrides>` when the
    overrides they share (and only they have) are exactly what makes them bad, else up to three of them.
    """
    found: dict[str, list[int]] = {}
    for i, (_, cfg) in enumerate(runs):
        # Composed configs are resolved already (Composer): converting without resolving is a third faster.
        d = OmegaConf.to_container(cfg) if isinstance(cfg, DictConfig) else cfg
        for message in problems(d):
            found.setdefault(message, []).append(i)
    if not found:
        return
    if len(runs) == 1:
        lines = list(found)
    else:
        overrides = [list(o) for o, _ in runs]
        lines = [f"{message} ({_which(idx, overrides)})" for message, idx in found.items()]
        n_bad = len({i for idx in found.values() for i in idx})
        lines.append(f"nothing was run or submitted: {len(found)} problem{'s' if len(found) > 1 else ''} "
                     f"in {n_bad} of {len(runs)} runs")
    raise ConfigError(lines[0] if len(lines) == 1 else "\n".join(lines), lines=lines)


def _which(idx: list[int], overrides: list[list[str]]) -> str:
    n = len(overrides)
    if len(idx) == n:
        return f"all {n} runs" if n > 2 else "both runs"
    everywhere = set.intersection(*(set(o) for o in overrides))
    own = [[o for o in overrides[i] if o not in everywhere] for i in idx]
    shared = [o for o in own[0] if all(o in rest for rest in own[1:])]
    if len(idx) > 1 and shared and sum(all(o in run for o in shared) for run in overrides) == len(idx):
        return f"{len(idx)} of {n} runs: those with {' '.join(shared)}"
    shown = "; ".join(" ".join(o) or "(defaults)" for o in own[:3])
    return f"{len(idx)} of {n} runs: {shown}" + (f"; and {len(idx) - 3} more" if len(idx) > 3 else "")
