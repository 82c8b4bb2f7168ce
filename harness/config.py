"""Hydra composition behind the CLI: validated overrides, one config per run, sweep expansion.

We compose with Hydra's compose API instead of `@hydra.main`, so the CLI controls what happens
around it: every override is checked first (unknown group options and keys fail with one line
and a "did you mean"), runs whose record exists are skipped before anything is launched, and the
launcher (in-process, submitit local, SLURM) is our own config group `launcher`.
"""

from __future__ import annotations

import copy
import itertools
import re
from importlib import resources

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from harness.registry import load_plugins, unknown_name_message
from harness.schema import ConfigError, unknown_key_message

CONFIG_MODULE = "harness.conf"
GROUPS = ("method", "task", "launcher")
# Hydra's own launcher group spelling is accepted as an alias of ours.
ALIASES = {"hydra/launcher": "launcher"}


def builtin_options(group: str) -> list[str]:
    """The options of a config group that are YAML files under harness/conf/<group>/."""
    folder = resources.files(CONFIG_MODULE) / group
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def group_options(group: str) -> list[str]:
    """The built-in options and those a plugin package added (harness/plugins.py, Hydra's ConfigStore)."""
    from hydra.core.config_store import ConfigStore

    try:
        stored = [n[:-5] for n in ConfigStore.instance().list(group) if n.endswith(".yaml")]
    except OSError:  # ConfigStore.list raises when the group has no stored option
        stored = []
    return sorted(set(builtin_options(group)) | set(stored))


def _normalise(overrides: list[str]) -> list[str]:
    out = []
    for o in overrides:
        for alias, real in ALIASES.items():
            if o.startswith(alias + "="):
                o = real + o[len(alias):]
        out.append(o)
    return out


def _flat_keys(node, prefix: str = "") -> list[str]:
    keys = []
    if isinstance(node, DictConfig):
        for k in node.keys():
            full = f"{prefix}{k}"
            keys.append(full)
            keys += _flat_keys(node._get_node(k), full + ".")  # type: ignore[attr-defined]
    return keys


def expand(overrides: list[str], multirun: bool) -> list[list[str]]:
    """The runs a command line asks for: the cartesian product of sweep overrides (seed=0,1,2)."""
    overrides = _normalise(overrides)
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        raise ConfigError(f"cannot parse overrides {overrides}: {str(e).splitlines()[0]}") from None
    axes = []
    for o in parsed:
        if o.is_sweep_override():
            if not multirun:
                raise ConfigError(f"'{o.input_line}' sweeps several values: add -m (harness run -m ...) to run them all")
            key = o.get_key_element()
            axes.append([f"{key}={v}" for v in o.sweep_string_iterator()])
        else:
            axes.append([o.input_line])
    return [list(combo) for combo in itertools.product(*axes)]


def check_groups(overrides: list[str], groups: tuple[str, ...] = GROUPS) -> None:
    for o in overrides:
        key, _, value = o.partition("=")
        key = key.lstrip("+~")
        if key in groups:
            options = group_options(key)
            if value not in options and key in ("method", "task"):
                load_plugins()  # a method or task of an installed plugin package adds its option when imported
                options = group_options(key)
            if value not in options:
                raise ConfigError(unknown_name_message(key, value, options))


class Composer:
    """Compose run configs; holds Hydra's global state for the duration of a `with` block."""

    def __enter__(self) -> "Composer":
        GlobalHydra.instance().clear()
        self._ctx = initialize_config_module(config_module=CONFIG_MODULE, version_base=None)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._ctx.__exit__(*exc)

    def compose(self, overrides: list[str], config_name: str = "config", groups: tuple[str, ...] = GROUPS) -> DictConfig:
        """One run's config; `config_name="extract"` with groups ("task", "backbone") composes `harness extract`'s."""
        overrides = _normalise(overrides)
        check_groups(overrides, groups)
        try:
            cfg = compose(config_name=config_name, overrides=overrides)
        except HydraException as e:
            raise ConfigError(self._explain(e, overrides, config_name, groups)) from None
        OmegaConf.resolve(cfg)
        return cfg

    def compose_many(self, combos: list[list[str]]) -> list[DictConfig]:
        """compose() for every combo of a sweep, with Hydra's slow part done once per config-group choice.

        A full Hydra compose costs ~0.15 s CPU (defaults tree, YAML loading); a 200-run sweep would
        spend half a minute there. Runs that pick the same group options (method=, task=, launcher=)
        share one composed base; each run's value overrides are then applied by the very function
        Hydra's own compose applies them with (`_apply_overrides_to_config`, in struct mode), so the
        result is identical (tests/test_launch.py checks it against compose()).
        """
        try:
            from hydra._internal.config_loader_impl import ConfigLoaderImpl
            apply = ConfigLoaderImpl._apply_overrides_to_config
        except (ImportError, AttributeError):  # a Hydra without it: compose each run in full
            return [self.compose(o) for o in combos]
        parser = OverridesParser.create()
        bases: dict[tuple[str, ...], DictConfig] = {}
        parsed_once: dict[str, object] = {}  # a sweep repeats its fixed overrides in every run: parse each once
        out = []
        for overrides in combos:
            overrides = _normalise(overrides)
            check_groups(overrides)
            for o in overrides:
                if o not in parsed_once:
                    parsed_once[o] = parser.parse_override(o)
            parsed = [parsed_once[o] for o in overrides]
            is_group = [o.key_or_group.lstrip("+~") in GROUPS or o.key_or_group.startswith("hydra/")
                        or o.package is not None for o in parsed]
            group_part = tuple(o.input_line for o, g in zip(parsed, is_group) if g)
            if group_part not in bases:
                try:
                    bases[group_part] = compose(config_name="config", overrides=list(group_part))
                except HydraException as e:
                    raise ConfigError(self._explain(e, list(group_part))) from None
            cfg = copy.deepcopy(bases[group_part])
            try:
                apply([o for o, g in zip(parsed, is_group) if not g], cfg)
            except HydraException as e:
                raise ConfigError(self._explain(e, overrides)) from None
            OmegaConf.resolve(cfg)
            out.append(cfg)
        return out

    def compose_plain(self, combos: list[list[str]]) -> list[tuple[dict, DictConfig | None]]:
        """Every run of a sweep as its resolved config in plain data, equal to to_container(compose(o)), and the
        DictConfig when one was built (else None).

        A sweep of thousands of runs must not build thousands of DictConfigs (~10 ms each on a loaded machine).
        Runs picking the same group options share one composed base; a run whose other overrides each set an
        existing leaf to a plain value (seed=3, train.lr=0.01: what sweeps vary) is that base's resolved data
        with those leaves set, unless an interpolation of the base reads the key (lupi's `${seed}`). Any other
        run is composed by compose_many (Hydra's own override code). tests/test_launch.py checks both against
        compose()."""
        parser = OverridesParser.create()
        bases: dict[tuple[str, ...], tuple[dict, str]] = {}
        meaning: dict[str, tuple] = {}  # override -> ("group", line) | ("set", key, value) | ("other",)
        plain_ok: dict[tuple, bool] = {}  # (group part, override) -> it sets a plain leaf of that base
        out: list[tuple[dict, DictConfig | None]] = []
        slow: list[int] = []
        for i, overrides in enumerate(combos):
            overrides = _normalise(overrides)
            for o in overrides:
                if o not in meaning:
                    meaning[o] = _meaning(o, parser)
            group_part = tuple(meaning[o][1] for o in overrides if meaning[o][0] == "group")
            if group_part not in bases:
                check_groups(list(group_part))
                try:
                    base = compose(config_name="config", overrides=list(group_part))
                except HydraException as e:
                    raise ConfigError(self._explain(e, list(group_part))) from None
                interpolations = " ".join(_interpolations(OmegaConf.to_container(base, resolve=False)))
                bases[group_part] = (OmegaConf.to_container(base, resolve=True), interpolations)
            data, interpolations = bases[group_part]
            values = [o for o in overrides if meaning[o][0] != "group"]
            for o in values:
                if (group_part, o) not in plain_ok:
                    plain_ok[group_part, o] = meaning[o][0] == "set" and _sets_a_plain_leaf(*meaning[o][1:], data,
                                                                                           interpolations)
            if all(plain_ok[group_part, o] for o in values):
                data = _copy_tree(data)
                for o in values:
                    _, key, value = meaning[o]
                    *parents, leaf = key.split(".")
                    node = data
                    for part in parents:
                        node = node[part]
                    node[leaf] = value
                out.append((data, None))
            else:
                out.append(({}, None))
                slow.append(i)
        if slow:
            for i, cfg in zip(slow, self.compose_many([combos[i] for i in slow])):
                out[i] = (OmegaConf.to_container(cfg), cfg)
        return out

    def _explain(self, error: Exception, overrides: list[str], config_name: str = "config",
                 groups: tuple[str, ...] = GROUPS) -> str:
        groups_only = [o for o in overrides if o.partition("=")[0].lstrip("+~") in groups]
        try:
            known = _flat_keys(compose(config_name=config_name, overrides=groups_only))
        except HydraException:
            known = []
        for o in overrides:
            key = o.partition("=")[0].lstrip("+~")
            if o.startswith("+"):
                continue  # `+key=` / `++key=` add a key: never what composition refused (+teacher.train={...})
            if key not in groups and key not in known:
                return unknown_key_message(key, known)
        return str(error).splitlines()[0]


def _interpolations(node) -> list[str]:
    """Every string of an unresolved config that holds an interpolation (`${seed}`, `${oc.select:a.b,x}`)."""
    if isinstance(node, dict):
        return [s for v in node.values() for s in _interpolations(v)]
    if isinstance(node, list):
        return [s for v in node for s in _interpolations(v)]
    return [node] if isinstance(node, str) and "${" in node else []


# `key=<integer>` (seed=17, fold=3): what large sweeps vary, read without Hydra's ANTLR parser (~1 ms an override).
# The same integer literals Hydra's grammar reads as int (no sign +, no leading zero, no `_`).
_INT_OVERRIDE = re.compile(r"([A-Za-z_][\w-]*(?:\.[A-Za-z_][\w-]*)*)=(-?(?:0|[1-9][0-9]*))")


def _meaning(override: str, parser) -> tuple:
    """("group", line) for a config-group choice, ("set", key, value) for `key=value`, else ("other",)."""
    found = _INT_OVERRIDE.fullmatch(override)
    if found and found.group(1) not in GROUPS:
        return ("set", found.group(1), int(found.group(2)))
    try:
        o = parser.parse_override(override)
    except HydraException:
        return ("other",)  # Hydra's own code (compose_many) raises the error
    if o.key_or_group.lstrip("+~") in GROUPS or o.key_or_group.startswith("hydra/") or o.package is not None:
        return ("group", o.input_line)
    if o.type is not None and o.type.name != "CHANGE":
        return ("other",)
    try:
        return ("set", o.key_or_group, o.value())
    except Exception:  # noqa: BLE001
        return ("other",)


def _sets_a_plain_leaf(key: str, value, data: dict, interpolations: str) -> bool:
    """`key` is an existing non-mapping key, set to a scalar that is no interpolation, and no interpolation of the
    config can read it (conservatively: none names it, none is relative)."""
    if "${." in interpolations or re.search(rf"(?<![\w.]){re.escape(key)}(?![\w])", interpolations):
        return False
    node = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    if isinstance(node, (dict, list)):
        return False
    if isinstance(value, str):
        return "${" not in value
    return value is None or isinstance(value, (bool, int, float))


def _copy_tree(node):
    """A copy of plain config data (dicts, lists, scalars): faster than copy.deepcopy, which it equals here."""
    if isinstance(node, dict):
        return {k: _copy_tree(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_copy_tree(v) for v in node]
    return node


def compose_one(overrides: list[str]) -> DictConfig:
    with Composer() as c:
        return c.compose(overrides)
