"""`harness reproduce NAME`: a paper's own protocol (a recipe) run through the sweep machinery, ours beside its numbers.

A recipe is harness/conf/recipe/<name>.yaml: title, paper, protocol (prose: the paper's protocol, what the recipe
keeps and changes), task, overrides (every run's), arms (a list of {name, overrides}, one table row each; `student`
is the baseline every arm is paired with), sweep ({seed: [...], fold: [...]}), published (a list of {arm, metric,
value, source}, the paper's numbers on its data, optionally with `std`, `note`, and `relative_to: ARM` for a
number the paper gives as a gain over another arm rather than as a level) and smoke ({overrides, sweep}, and
optionally `arms: {ARM: [overrides]}` for keys only some arms have, such as a method's own sizes). Optional too:
`variants`, a list of {name, overrides} for a paper whose table has several settings of one task (Lopez-Paz et
al.'s four experiments): every arm runs in every variant, each variant is a section of the table with its own
`student`, and a published entry names its variant.

Every run is an arm × variant × sweep point composed and launched exactly as `harness run -m` does it
(harness/launch.py: plan_runs, check_planned, launch / submit): every value of every run checked before the first
starts, runs with an ok record skipped (resumable), the launcher chosen on the command line. The command line may
set only keys that change no result (records.NON_SEMANTIC_KEYS: launcher, paths, device...): what runs is the
recipe's.

The table: per variant and arm, mean ± std (the leaderboard's summarise) of each published metric over (fold, seed),
each arm's paired difference with `student` (harness/stats.py: pair, paired_test; Holm over the variant's arms, as
the leaderboard corrects a section), the published value and its source; its caption says the data source, and a
smoke or mimic table says its numbers are not comparable with the published ones. Failed and missing runs are named
under the table, which is made from what finished.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from harness.errors import ConfigError
from harness.schema import Field, float_, int_, list_of, optional, show, str_

RECIPE_MODULE = "harness.conf"
RECIPE_GROUP = "recipe"
BASELINE = "student"
SWEEP_KEYS = ("seed", "fold")
SMOKE_SUFFIX = "-smoke"  # --smoke writes to <results_dir>-smoke and keeps its caches under <cache_dir>/smoke
# Smoke sizes of the tasks read from files (task.source=mimic: the task writes its mimic tree into the cache with
# its own writer, as `harness data mimic` does): the sizes the tests use (tests/_task_trees.py TINY for biovid and
# affwild2, tests/test_mmsa_tasks.py SMALL for the MMSA/MulT pickles; tests/test_reproduce.py keeps them equal).
# A recipe's smoke.overrides come after them and may change them.
SMOKE_MIMIC = {
    "biovid": ["task.mimic.n_subjects=6", "task.mimic.samples_per_class=2", "task.mimic.visual_dim=8",
               "task.mimic.n_frames=40"],
    "affwild2": ["task.mimic.n_train_videos=5", "task.mimic.n_val_videos=2", "task.mimic.two_person_videos=2",
                 "task.mimic.min_frames=60", "task.mimic.max_frames=120", "task.mimic.visual_dim=8"],
    **{name: ["task.mimic.n_train=24", "task.mimic.n_valid=12", "task.mimic.n_test=16"]
       for name in ("mosi", "mosei", "iemocap")},
}

_OVERRIDES = list_of(str_())
_NAMED = {"name": str_(), "overrides": _OVERRIDES}
_SEEDS = list_of(int_(ge=0), min_len=1, unique=True)
_SWEEP = {"seed": _SEEDS, "fold": optional(_SEEDS)}
_PUBLISHED = {"arm": str_(), "metric": str_(), "value": float_(), "source": str_(), "variant": optional(str_()),
              "std": optional(float_(ge=0)), "note": optional(str_()), "relative_to": optional(str_())}
# Top level; the list entries (arms, variants, published) and the mappings (sweep, smoke) have their own tables.
_TOP = {"title": str_(), "paper": str_(), "protocol": str_(), "task": str_(),
        "overrides": optional(_OVERRIDES),
        "arms": Field("a non-empty list of {name, overrides}", lambda v: isinstance(v, list) and len(v) > 0),
        "variants": optional(Field("a non-empty list of {name, overrides}", lambda v: isinstance(v, list) and v)),
        "sweep": Field("a mapping {seed: [...], fold: [...]}", lambda v: isinstance(v, dict)),
        "published": Field("a list of {arm, metric, value, source}", lambda v: isinstance(v, list)),
        "smoke": Field("a mapping {overrides: [...], sweep: {seed: [...]}}", lambda v: isinstance(v, dict))}
_SMOKE = {"overrides": _OVERRIDES,
          "sweep": Field("a mapping {seed: [...], fold: [...]}", lambda v: isinstance(v, dict)),
          "arms": optional(Field("a mapping {arm name: [overrides]}", lambda v: isinstance(v, dict)))}
# Keys a recipe's overrides must leave to other fields: the task is `task`, seeds and folds are the sweep, the
# launcher is the command line's.
_RESERVED = {"task": "the recipe's `task` field", "seed": "`sweep`", "fold": "`sweep`",
             "launcher": "the command line (harness reproduce NAME launcher=...)",
             "hydra/launcher": "the command line (harness reproduce NAME launcher=...)",
             "results_dir": "the command line", "overwrite": "the command line"}


@dataclass(frozen=True)
class Named:
    name: str
    overrides: list[str]


@dataclass(frozen=True)
class Published:
    arm: str
    metric: str
    value: float
    source: str
    variant: str = ""
    std: float | None = None
    note: str = ""
    relative_to: str = ""  # the value is the paper's gain over this arm, not a level


@dataclass
class Recipe:
    name: str
    path: str
    title: str
    paper: str
    protocol: str
    task: str
    overrides: list[str]
    arms: list[Named]
    variants: list[Named]  # [Named("", [])] when the recipe has none
    sweep: dict[str, list[int]]
    published: list[Published]
    smoke_overrides: list[str]
    smoke_sweep: dict[str, list[int]]
    smoke_arms: dict[str, list[str]] = field(default_factory=dict)  # smoke overrides of single arms
    ref: str = ""  # what names it on the command line: its name, or the path of a recipe outside the recipe folder

    def n_runs(self, smoke: bool = False) -> int:
        return len(self.arms) * len(self.variants) * math.prod(len(v) for v in
                                                               (self.smoke_sweep if smoke else self.sweep).values())


# ----------------------------------------------------------------------------------------------------------------
# Reading and validating recipes


def recipe_dir() -> Path:
    return Path(str(resources.files(RECIPE_MODULE) / RECIPE_GROUP))


def recipe_names() -> list[str]:
    folder = recipe_dir()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def definition_path(name_or_path: str | Path, folder: Path, names: list[str], kind: str, command: str) -> Path:
    """The YAML of a recipe or study given by name (one of `names`, in `folder`) or path; an unknown name is a
    ConfigError naming the known ones, the close ones and the command that lists them."""
    path = Path(name_or_path)
    if path.suffix == ".yaml":
        return path
    if str(name_or_path) not in names:
        close = difflib.get_close_matches(str(name_or_path), names, n=2, cutoff=0.5)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise ConfigError(f"no {kind} '{name_or_path}' in {_display(folder)} (known: "
                          f"{', '.join(names) or 'none'}){hint}; `{command}` shows them")
    return folder / f"{name_or_path}.yaml"


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A recipe by name (harness/conf/recipe/<name>.yaml) or path, every field checked: ConfigError with one line
    per problem, each naming the file, the field and what to write instead."""
    path = definition_path(name_or_path, recipe_dir(), recipe_names(), "recipe", "harness reproduce --list")
    where = _display(path)
    recipe = _build(path.stem, where, read_definition(path, where, "recipe", recipe_problems))
    recipe.ref = path.stem if path.resolve().parent == recipe_dir().resolve() else str(name_or_path)
    return recipe


def read_definition(path: Path, where: str, kind: str, problems_of) -> dict:
    """A recipe's or study's YAML (kind names it in messages), every problem problems_of finds said at once, each
    line naming the file."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{where}: cannot read the {kind}: {str(e).splitlines()[0]}") from None
    problems = problems_of(data)
    if problems:
        lines = [f"{where}: {p}" for p in problems]
        raise ConfigError("\n".join(lines), lines=lines)
    return data


def _check(d: Any, table: dict[str, Field], prefix: str, out: list[str], kind: str = "recipe") -> bool:
    """Unknown, missing and invalid keys of one mapping (harness/validate.py's checker), paths prefixed; kind: what
    the file is (a recipe, a study), for the message's list of keys."""
    from harness.validate import check_against

    if not isinstance(d, dict):
        out.append(f"{prefix.rstrip('.') or 'the file'}: expected a mapping, got {show(d)}")
        return False
    # nested under its prefix ("arms[1].name"), so that every message names the whole path
    nested = {prefix.rstrip("."): d} if prefix else d
    found = [p.replace(" (see `harness run --cfg` for all keys)", f" (a {kind}'s keys here: {', '.join(table)})")
             for p in check_against(nested, {prefix + k: f for k, f in table.items()})]
    out += found
    return not found


def _check_overrides(overrides: list[str], field_name: str, out: list[str]) -> None:
    for o in overrides:
        key = o.partition("=")[0].lstrip("+~")
        if "=" not in o:
            out.append(f"{field_name}: {o!r} is not an override: write key=value (e.g. train.lr=0.001)")
        elif key in _RESERVED:
            out.append(f"{field_name}: {o!r}: {key} is set by {_RESERVED[key]}, not by overrides; remove it")


def recipe_problems(data: Any) -> list[str]:
    """Every problem of a recipe's parsed YAML, one line each (empty: valid)."""
    from harness.registry import TASKS

    out: list[str] = []
    _check(data, _TOP, "", out)
    if not isinstance(data, dict):
        return out
    task = data.get("task")
    if isinstance(task, str) and task and task not in TASKS.names():
        close = difflib.get_close_matches(task, TASKS.names(), n=1)
        out.append(f"task={show(task)}: no such task (known: {', '.join(TASKS.names())})"
                   + (f"; did you mean {close[0]}?" if close else ""))
    if isinstance(data.get("overrides"), list):
        _check_overrides([o for o in data["overrides"] if isinstance(o, str)], "overrides", out)
    named: dict[str, list[str]] = {}
    for group in ("arms", "variants"):
        entries = data.get(group)
        if not isinstance(entries, list):
            continue
        names = []
        for i, entry in enumerate(entries):
            if _check(entry, _NAMED, f"{group}[{i}].", out):
                names.append(entry["name"])
                _check_overrides(entry["overrides"], f"{group}[{i}].overrides", out)
        for dup in sorted({n for n in names if names.count(n) > 1}):
            out.append(f"{group}: the name {dup!r} is used {names.count(dup)} times: give each entry its own name")
        named[group] = names
    arms = named.get("arms")
    if arms is not None and len(arms) == len(data["arms"]) and BASELINE not in arms:
        out.append(f"arms: no arm named {BASELINE!r}, the baseline every arm is paired with: add "
                   f"{{name: {BASELINE}, overrides: [method={BASELINE}]}}")
    if isinstance(data.get("sweep"), dict):
        _check(data["sweep"], _SWEEP, "sweep.", out)
    if isinstance(data.get("smoke"), dict) and _check(data["smoke"], _SMOKE, "smoke.", out):
        _check_overrides(data["smoke"]["overrides"], "smoke.overrides", out)
        if isinstance(data["smoke"]["sweep"], dict):
            _check(data["smoke"]["sweep"], _SWEEP, "smoke.sweep.", out)
        for arm, overrides in (data["smoke"].get("arms") or {}).items():
            if arms is not None and arm not in arms:
                close = difflib.get_close_matches(str(arm), arms, n=1)
                out.append(f"smoke.arms.{arm}: no such arm (arms: {', '.join(arms)})"
                           + (f"; did you mean {close[0]}?" if close else ""))
            elif _check({"overrides": overrides}, {"overrides": _OVERRIDES}, f"smoke.arms.{arm}.", out):
                _check_overrides(overrides, f"smoke.arms.{arm}", out)
    variants = named.get("variants")
    seen = set()
    for i, entry in enumerate(data.get("published") if isinstance(data.get("published"), list) else []):
        where = f"published[{i}]"
        if not _check(entry, _PUBLISHED, f"{where}.", out):
            continue
        for key in ("arm", "relative_to"):
            if key in entry and arms is not None and entry[key] not in arms:
                close = difflib.get_close_matches(entry[key], arms, n=1)
                out.append(f"{where}.{key}={show(entry[key])}: no such arm (arms: {', '.join(arms)})"
                           + (f"; did you mean {close[0]}?" if close else ""))
        if "variants" in data and variants is not None:
            if "variant" not in entry:
                out.append(f"{where}.variant is missing: the recipe has variants, name one of {', '.join(variants)}")
            elif entry["variant"] not in variants:
                out.append(f"{where}.variant={show(entry['variant'])}: no such variant (variants: "
                           f"{', '.join(variants)})")
        elif "variant" in entry and "variants" not in data:
            out.append(f"{where}.variant={show(entry['variant'])}: the recipe has no `variants`; remove it")
        key = (entry.get("variant", ""), entry["arm"], entry["metric"])
        if key in seen:
            out.append(f"{where}: a second value for arm {entry['arm']!r}, metric {entry['metric']!r}"
                       + (f", variant {entry['variant']!r}" if entry.get("variant") else "") + ": keep one")
        seen.add(key)
    return out


def _build(name: str, where: str, d: dict) -> Recipe:
    def named(entries) -> list[Named]:
        return [Named(e["name"], list(e["overrides"])) for e in entries]

    def sweep(s: dict) -> dict[str, list[int]]:
        return {k: list(s[k]) for k in SWEEP_KEYS if k in s}

    return Recipe(name=name, path=where, title=d["title"], paper=d["paper"], protocol=d["protocol"], task=d["task"],
                  overrides=list(d.get("overrides") or []), arms=named(d["arms"]),
                  variants=named(d["variants"]) if "variants" in d else [Named("", [])],
                  sweep=sweep(d["sweep"]),
                  published=[Published(p["arm"], p["metric"], float(p["value"]), p["source"], p.get("variant", ""),
                                       p.get("std"), p.get("note", ""), p.get("relative_to", ""))
                             for p in d["published"]],
                  smoke_overrides=list(d["smoke"]["overrides"]), smoke_sweep=sweep(d["smoke"]["sweep"]),
                  smoke_arms={arm: list(o) for arm, o in (d["smoke"].get("arms") or {}).items()})


def list_recipes() -> tuple[list[tuple], list[str]]:
    """(rows of name, task, runs, smoke runs, title) of the valid recipes, problem lines of the others)."""
    rows, problems = [], []
    for name in recipe_names():
        try:
            r = load_recipe(name)
        except ConfigError as e:
            problems += e.lines
            continue
        rows.append((r.name, r.task, r.n_runs(), r.n_runs(smoke=True), r.title))
    return rows, problems


# ----------------------------------------------------------------------------------------------------------------
# Planning and running


@dataclass
class ArmRuns:
    variant: str
    arm: str
    runs: list = field(default_factory=list)  # harness.launch.PlannedRun


def _command_line(extra: list[str]) -> None:
    """The command line may set only keys that change no result: what runs is the recipe's."""
    from harness.records import NON_SEMANTIC_KEYS

    bad = []
    for o in extra:
        key = o.partition("=")[0].lstrip("+~")
        free = key in ("launcher", "hydra/launcher") or any(key == k or key.startswith(k + ".")
                                                             for k in NON_SEMANTIC_KEYS)
        if "=" not in o or not free:
            bad.append(o)
    if bad:
        raise ConfigError(f"harness reproduce: {' '.join(bad)}: the command line sets only keys that change no result "
                          f"(launcher=..., launcher.*, results_dir, cache_dir, device, task.data_root, overwrite, "
                          f"progress, ...); what the runs compute is the recipe's: edit its file, or use "
                          f"`harness run -m` for another protocol")


def _value_of(extra: list[str], key: str, default: str) -> str:
    found = [o.partition("=")[2] for o in extra if o.partition("=")[0] == key]
    return found[-1] if found else default


def smoke_paths(extra: list[str]) -> tuple[str, str]:
    """results_dir and cache_dir of a --smoke run: beside the real ones, never mixed with them."""
    from harness.config import compose_one

    base = compose_one([o for o in extra if o.partition("=")[0] in ("results_dir", "cache_dir")])
    return str(base.results_dir).rstrip("/") + SMOKE_SUFFIX, str(Path(str(base.cache_dir)) / "smoke")


def plan(recipe: Recipe, smoke: bool, extra: list[str]) -> list[ArmRuns]:
    """Every run of the recipe composed (harness/launch.py plan_runs): arm × variant × sweep point."""
    from harness.config import Composer
    from harness.launch import plan_command_lines

    _command_line(extra)
    sweep = recipe.smoke_sweep if smoke else recipe.sweep
    points = [f"{k}={','.join(map(str, v))}" for k, v in sweep.items()]
    tail = list(extra)
    smoke_part: list[str] = []
    if smoke:
        results, cache = smoke_paths(extra)
        tail = [o for o in extra if o.partition("=")[0] not in ("results_dir", "cache_dir")]
        tail += [f"results_dir={results}", f"cache_dir={cache}"]
        with Composer() as c:
            task_cfg = c.compose([f"task={recipe.task}"]).task
        if "source" in task_cfg:  # a task read from files: its mimic tree, written by the task into the cache
            smoke_part = ["task.source=mimic", *SMOKE_MIMIC.get(recipe.task, [])]
        smoke_part += recipe.smoke_overrides
    cells = [(v, arm) for v in recipe.variants for arm in recipe.arms]
    lines = [[f"task={recipe.task}", *recipe.overrides, *v.overrides, *arm.overrides, *smoke_part,
              *(recipe.smoke_arms.get(arm.name, []) if smoke else []), *points, *tail] for v, arm in cells]
    return [ArmRuns(v.name, arm.name, runs) for (v, arm), runs in zip(cells, plan_command_lines(lines))]


def _task_metrics(run, smoke: bool) -> tuple[str, ...] | None:
    """The metrics the task scores (its spec), when the spec is cheap to know: a task generated in memory, or a
    smoke run's mimic tree. A task read from real files gives its metrics from its data (loading it all in the
    submitting process), so there the records' metrics are checked after the runs (a note under the table)."""
    from harness.runner import build_task

    try:
        task = build_task(run.cfg)
        if task.source_files() is not None and not smoke:
            return None
        return tuple(task.spec.metrics)
    except Exception:  # noqa: BLE001 - the data is absent or broken: the runs' own checks say so
        return None


def check_recipe_runs(recipe: Recipe, arms: list[ArmRuns], smoke: bool = False) -> None:
    """Every run's config by the existing checks (harness/launch.py check_planned), then the published metrics
    against the task's; ConfigError names the recipe file. Nothing has run yet."""
    from harness.launch import check_planned

    try:
        check_planned([r for a in arms for r in a.runs])
    except ConfigError as e:
        lines = [f"{recipe.path}: its runs' configs have problems (nothing was run):", *e.lines]
        raise ConfigError("\n".join(lines), lines=lines) from None
    metrics = _task_metrics(arms[0].runs[0], smoke)
    if metrics is not None:
        bad = [f"{recipe.path}: published[{i}].metric={show(p.metric)}: task {recipe.task} has no such metric "
               f"(its metrics: {', '.join(metrics)})" for i, p in enumerate(recipe.published) if p.metric not in metrics]
        if bad:
            raise ConfigError("\n".join(bad), lines=bad)


def run_all(arms: list[ArmRuns]) -> tuple[list[str], dict | None]:
    """Launch every run without an ok record (inprocess: here; local/slurm: submitted). Returns the lines of runs a
    data mistake kept from running, and the manifest of a submitting launcher."""
    from harness.launch import launch, submits_jobs

    runs = [r for a in arms for r in a.runs]
    launcher = runs[0].cfg.launcher
    if submits_jobs(launcher):
        from harness.jobs import submit_jobs  # submitit: only to submit

        return [], submit_jobs(runs, launcher)
    try:
        launch(runs, launcher)
    except ConfigError as e:  # some runs found a data mistake: the others ran; the table names them
        return e.lines, None
    return [], None


# ----------------------------------------------------------------------------------------------------------------
# The table


@dataclass
class Rendered:
    text: str       # the markdown file
    printed: str    # the terminal version
    path: Path
    n_planned: int
    n_ok: int
    n_failed: int
    n_missing: int
    submitted: bool = False  # the runs went to a scheduler: the table holds what had finished when they were sent


def _number(value: float) -> str:
    """A published number as papers print them: 0.90 stays 0.90, 0.7123 stays 0.7123."""
    return f"{value:.2f}" if round(value, 2) == value else f"{value:g}"


def _ranges(values: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    out, values = [], sorted(set(values))
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        out.append(str(values[i]) if i == j else f"{values[i]}-{values[j]}")
        i = j + 1
    return ", ".join(out)


def _runs_text(keys: list[tuple[int, int]]) -> str:
    """(fold, seed) pairs grouped by fold: 'fold 0: seeds 20-99'."""
    folds = sorted({f for f, _ in keys})
    return "; ".join(f"fold {f}: seed{'s' if sum(k[0] == f for k in keys) > 1 else ''} "
                     f"{_ranges([s for ff, s in keys if ff == f])}" for f in folds)


def render(recipe: Recipe, arms: list[ArmRuns], smoke: bool, not_run: list[str] | None = None,
           pending_note: str = "") -> Rendered:
    """Ours beside the published numbers, from the records of the recipe's runs that exist now."""
    import pandas as pd
    from tabulate import tabulate

    from harness import stats
    from harness.leaderboard import SELECTED_ON_TEST, SOURCE_NOTE, _p, _values, collect_records, summarise
    from harness.metrics import higher_is_better
    from harness.records import read_record

    records, where = [], {}
    for a in arms:
        for r in a.runs:
            rec = read_record(r.folder)
            if rec is not None:
                rec["_dir"] = str(r.folder)
                records.append(rec)
            where[str(r.folder)] = (a.variant, a.arm)
    df = collect_records(records)
    if not df.empty:
        df["r_variant"] = df.dir.map(lambda d: where[d][0])
        df["r_arm"] = df.dir.map(lambda d: where[d][1])
    sources = sorted(set(df.data_source)) if not df.empty else []
    primary = next(iter(df.primary_metric.dropna()), None) if not df.empty else None
    comparable = not smoke and bool(sources) and set(sources) <= {"real", "synthetic"}
    pub_col = "published (paper)" if comparable else "published (paper; NOT comparable with these numbers)"
    rows, notes = [], []
    n_ok = n_failed = n_missing = 0
    for v in recipe.variants:
        published = [p for p in recipe.published if p.variant == v.name]
        metrics = list(dict.fromkeys(([primary] if primary else []) + [p.metric for p in published]))
        # per arm: its ok runs, summary and values; then each arm vs the baseline, Holm over the variant's arms
        per_arm = {}
        for a in (a for a in arms if a.variant == v.name):
            sub = df[(df.r_variant == v.name) & (df.r_arm == a.arm)] if not df.empty else df
            ok = sub[sub.status == "ok"] if not sub.empty else sub
            have = {str(Path(d)) for d in sub.dir} if not sub.empty else set()
            missing = [(int(r.config["fold"]), int(r.config["seed"])) for r in a.runs if str(r.folder) not in have]
            n_ok += len(ok)
            n_failed += len(sub) - len(ok)
            n_missing += len(missing)
            label = f"{a.arm}" + (f" ({v.name})" if v.name else "")
            if not sub.empty and (sub.selection_split == "test").any():
                label_note = f" — {SELECTED_ON_TEST}"
            else:
                label_note = ""
            for r in (sub[sub.status != "ok"].itertuples() if not sub.empty else []):
                notes.append(f"- failed: {label} fold {r.fold}, seed {r.seed}: {r.error} ({r.dir}/record.json)")
            if missing:
                notes.append(f"- missing (no record): {label} {_runs_text(missing)}")
            summary = summarise(ok) if not ok.empty else pd.DataFrame()
            if not summary.empty and summary.drop_duplicates(["task", "variant", "data_source", "data", "method",
                                                              "config_id"]).shape[0] > 1:
                notes.append(f"- {label}: its runs read different data or configs (leaderboard sections/rows differ): "
                             "not averaged; recompute stale runs with overwrite=true")
                summary = pd.DataFrame()
            per_arm[a.arm] = (ok, summary, label_note, len(a.runs))
        scored = {c[2:] for c in df.columns if c.startswith("m:") and df.loc[(df.r_variant == v.name)
                                                                            & (df.status == "ok"), c].notna().any()} \
            if not df.empty else set()
        for p in published:
            if scored and p.metric not in scored:
                notes.append(f"- published metric {p.metric!r} ({p.arm}{', ' + v.name if v.name else ''}): no record "
                             f"of this recipe has it (the task scores {', '.join(sorted(scored))}): fix the recipe")
        tests = {}
        base = per_arm.get(BASELINE)
        for metric in metrics:
            found = []
            for arm, (ok, *_rest) in per_arm.items():
                if arm == BASELINE or base is None:
                    continue
                va, _ = _values(ok, metric) if not ok.empty else ({}, [])
                vb, _ = _values(base[0], metric) if not base[0].empty else ({}, [])
                pairing = stats.pair(va, vb)
                found.append((arm, stats.paired_test(pairing.deltas, sign_flip=False), pairing))
            adjusted, _ = stats.holm([t.p_t for _, t, _ in found])
            for (arm, t, pairing), p_holm in zip(found, adjusted):
                tests[arm, metric] = (t, float(p_holm), pairing)
                if pairing.only_a or pairing.only_b:
                    notes.append(f"- unpaired ({metric}): {arm}" + (f" ({v.name})" if v.name else "")
                                 + (f" without a student partner: {_runs_text(pairing.only_a)}" if pairing.only_a
                                    else "") + (f"; student without a partner: {_runs_text(pairing.only_b)}"
                                                if pairing.only_b else ""))
        for arm, (ok, summary, label_note, planned) in per_arm.items():
            for metric in metrics:
                row = {}
                if len(recipe.variants) > 1:
                    row["variant"] = v.name
                row["arm"] = arm + label_note
                row["metric"] = metric + ("" if higher_is_better(metric) else " (lower is better)")
                line = summary[summary.metric == metric] if not summary.empty else summary
                if len(line) and not math.isnan(float(line["mean"].iloc[0])):
                    mean, std = float(line["mean"].iloc[0]), float(line["std"].iloc[0])
                    row["ours: mean ± std"] = f"{mean:.3f}" + ("" if math.isnan(std) else f" ± {std:.3f}")
                else:
                    row["ours: mean ± std"] = "n/a"
                row["runs"] = f"{len(ok)}/{planned}"
                if arm == BASELINE:
                    row["Δ vs student [95% CI]"], row["paired t p (Holm)"] = "(baseline)", ""
                elif (arm, metric) in tests:
                    t, p_holm, _ = tests[arm, metric]
                    if t.n == 0:
                        row["Δ vs student [95% CI]"], row["paired t p (Holm)"] = "no pairs", ""
                    elif t.n == 1:
                        row["Δ vs student [95% CI]"] = f"{t.mean:+.3f} (1 pair: no interval)"
                        row["paired t p (Holm)"] = ""
                    else:
                        interval = "" if math.isnan(t.ci_low) else f" [{t.ci_low:+.3f}, {t.ci_high:+.3f}]"
                        row["Δ vs student [95% CI]"] = f"{t.mean:+.3f}{interval} (n={t.n})"
                        row["paired t p (Holm)"] = ("n/a (no spread)" if math.isnan(t.p_t)
                                                    else f"{_p(t.p_t)} ({_p(p_holm)})")
                else:
                    row["Δ vs student [95% CI]"], row["paired t p (Holm)"] = "no student arm", ""
                pub = next((p for p in published if p.arm == arm and p.metric == metric), None)
                row[pub_col] = "" if pub is None else (
                    (f"Δ {'+' if pub.value >= 0 else ''}{_number(pub.value)} vs {pub.relative_to}" if pub.relative_to
                     else _number(pub.value))
                    + ("" if pub.std is None else f" ± {_number(pub.std)}"))
                row["source"] = "" if pub is None else pub.source + (f" ({pub.note})" if pub.note else "")
                rows.append(row)
    source_text = "; ".join(f"{s}: {SOURCE_NOTE.get(s, s)}" for s in sources) or "no records yet"
    caption = f"Data: {source_text}"
    if smoke:
        caption += (" SMOKE RUN (--smoke: the task's mimic data or generator at a tiny size and budget): these "
                    "numbers only show that the recipe runs end to end; they are NOT comparable with the published "
                    "numbers.")
    elif not comparable and sources:
        caption += " These numbers are NOT comparable with the published ones (measured on the real data)."
    n_planned = sum(len(a.runs) for a in arms)
    results_dir = Path(arms[0].runs[0].config["results_dir"])
    out = results_dir / "reproduce" / f"{recipe.name}.md"
    head = [f"# {recipe.title}", "", f"Recipe `{recipe.name}` ({recipe.path}); paper: {recipe.paper}.", "",
            f"Protocol: {recipe.protocol.strip()}", "",
            f"Command: `harness reproduce {recipe.ref}{' --smoke' if smoke else ''}`; {n_planned} runs planned, "
            f"{n_ok} ok, {n_failed} failed, {n_missing} without a record.", ""]
    why = ("Ours: mean ± sample std over the arm's finished runs (folds × seeds). Δ: the arm minus `student`, paired "
           "by (fold, seed), with its 95 % t interval; p: the two-sided paired t-test, Holm-adjusted over the "
           "variant's arms in parentheses (harness/stats.py, as the leaderboard).")
    table_md = tabulate(rows, headers="keys", tablefmt="github", disable_numparse=True) if rows else "_No runs._"
    table_txt = tabulate(rows, headers="keys", tablefmt="simple", disable_numparse=True) if rows else "(no runs)"
    tail = []
    if not_run:
        tail += ["Not run (a data mistake; no record):", *[f"- {line}" for line in not_run], ""]
    if notes:
        tail += ["Failed, missing and unpaired runs (the table is made from the finished runs):", *notes, ""]
    if pending_note:
        tail += [pending_note, ""]
    text = "\n".join([*head, f"_{caption}_", "", table_md, "", why, "", *tail]).rstrip() + "\n"
    printed = "\n".join([f"{recipe.title} — {recipe.paper}", caption, "", table_txt, "", why, "", *tail]).rstrip()
    from harness.records import atomic_write_text
    atomic_write_text(out, text)
    return Rendered(text, printed, out, n_planned, n_ok, n_failed, n_missing)


def reproduce(name: str, smoke: bool = False, extra: list[str] | None = None, run: bool = True) -> Rendered:
    """Run a recipe (resumable) and render its table; ConfigError before anything runs for any mistake."""
    recipe = load_recipe(name)
    arms = plan(recipe, smoke, list(extra or []))
    check_recipe_runs(recipe, arms, smoke)
    not_run, manifest, pending = [], None, ""
    if run:
        not_run, manifest = run_all(arms)
    if manifest is not None:
        results = arms[0].runs[0].config["results_dir"]
        pending = (f"Submitted {manifest.get('n_submitted', '?')} runs (sweep {manifest.get('sweep_id')}): follow them "
                   f"with `harness status --results {results}`; once they end, `harness reproduce {recipe.ref}"
                   f"{' --smoke' if smoke else ''} --no-run` renders the table from their records.")
    done = render(recipe, arms, smoke, not_run, pending)
    done.submitted = manifest is not None
    return done
