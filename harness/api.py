"""Python API: `harness run`, `harness run -m` and `harness leaderboard` from Python (a notebook, a script).

    from harness import api

    rec = api.run(method="kd", task="synthetic", seed=1, train={"max_epochs": 3})
    rec["metrics"]                                   # the record, as written to results/.../record.json
    api.run("method=kd", "task=synthetic", "train.max_epochs=3")   # the same run, as Hydra override strings
    out = api.sweep(method=["student", "kd"], seed=[0, 1], train={"max_epochs": 3})   # 4 runs, resumable
    api.records()        # pandas DataFrame: one row per record under results/
    api.leaderboard()    # pandas DataFrame: leaderboard.csv's table (summary + paired comparisons)
    api.cross_task()     # pandas DataFrame: leaderboard_ranks.csv's table (mean ranks, Friedman test)

Overrides. Positional arguments are Hydra override strings, exactly as on the command line ("train.lr=0.001";
in sweep() also "seed=0,1,2"). Keyword arguments are config keys: a nested dict stands for dotted keys
(train={"lr": 0.001} is train.lr=0.001; **{"train.lr": 0.001} works too). For a config group, a dict's `name`
picks the option: task={"name": "synthetic", "n_subjects": 10} is task=synthetic task.n_subjects=10. Values become Hydra values: True/False
-> true/false, None -> null, a list or tuple -> a Hydra list [a,b] in run(); in sweep() a list, tuple or range
is the values to sweep (each one a run, as "seed=0,1,2" on the command line). Strings are quoted when Hydra would
read them otherwise (commas, brackets, spaces, "1", "true"). Positional overrides come first, then keywords.

Same code path as the CLI: the overrides are composed, every value of every run is checked, runs with an ok
record are skipped (overwrite=True recomputes) and the launcher runs them (harness/launch.py: plan_runs,
check_planned, launch / submit). A bad override raises the CLI's error with the CLI's message: ConfigError
(harness.schema; `.lines` has one line per problem), TaskError (harness.task) or UnknownNameError
(harness.registry). This module imports torch and pandas only when a function is called.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["SweepResult", "leaderboard", "records", "run", "sweep", "to_overrides"]

# A string Hydra reads back as the same string without quotes.
_PLAIN = re.compile(r"[A-Za-z_/][A-Za-z0-9_\-+./:@%~]*|\$\{[^{}'\"]+\}")
# Config groups (harness/config.py GROUPS): method="kd" picks an option; method={"name": "kd", ...} too.
CONFIG_GROUPS = ("method", "task", "launcher")
_NOT_STRINGS = {"true", "false", "null", "none", "inf", "nan", "-inf", "+inf"}

# records(): the columns that say which run a row is, in this order; then metric.<name>, then config.<key>.
RUN_COLUMNS = ("run_key", "status", "method", "task", "task_variant", "seed", "fold", "data_source", "bound",
               "primary_metric", "config_id", "overrides", "error", "path")


def _hydra_value(value: Any) -> str:
    """A Python value as a Hydra override value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_hydra_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{_hydra_value(v)}" for k, v in value.items()) + "}"
    text = str(value)  # str, Path
    if _PLAIN.fullmatch(text) and text.lower() not in _NOT_STRINGS:
        return text
    # Hydra keeps a backslash as is, except one before a quote or at the end (doubled) and the quote itself
    return "'" + re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), text) + "'"


def _flatten(values: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """{"train": {"lr": 0.1}} -> [("train.lr", 0.1)]; an empty dict is kept as a value. For a config group,
    {"task": {"name": "synthetic", "n_subjects": 10}} -> [("task", "synthetic"), ("task.n_subjects", 10)]."""
    out = []
    for key, value in values.items():
        if isinstance(value, Mapping) and value:
            if not prefix and key in CONFIG_GROUPS and "name" in value:
                out.append((key, value["name"]))  # the group's option: task=synthetic, not task.name=synthetic
                value = {k: v for k, v in value.items() if k != "name"}
            out += _flatten(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def to_overrides(*overrides: str, sweep: bool = False, **values: Any) -> list[str]:
    """The Hydra override strings of a call: positional override strings first, then the keyword values
    (nested dicts as dotted keys). With sweep=True a list, tuple or range value is the values to sweep.

    >>> to_overrides("task=synthetic", method="kd", train={"lr": 0.001, "optimizer": "adam"})
    ['task=synthetic', 'method=kd', 'train.lr=0.001', 'train.optimizer=adam']
    >>> to_overrides(seed=[0, 1], sweep=True)
    ['seed=0,1']
    """
    out = []
    for o in overrides:
        if not isinstance(o, str):
            raise TypeError(f"positional overrides are Hydra override strings such as 'train.lr=0.001', got {o!r}; "
                            f"give config values as keywords (train={{'lr': 0.001}})")
        out.append(o)
    for key, value in _flatten(values):
        if sweep and isinstance(value, (list, tuple, range)):
            if not len(value):
                raise ValueError(f"{key}: an empty list of values to sweep")
            out.append(f"{key}=" + ",".join(_hydra_value(v) for v in value))
        else:
            out.append(f"{key}={_hydra_value(value)}")
    return out


def run(*overrides: str, **values: Any) -> dict:
    """One run in this process, as `harness run ...`; returns its record (the dict in its record.json).

    run(method="kd", task="synthetic", seed=1, train={"max_epochs": 3}) or
    run("method=kd", "task=synthetic", "seed=1", "train.max_epochs=3"). Unset keys take the config's defaults.
    A run whose ok record exists is not run again: its record is returned (overwrite=True recomputes).
    A run that fails while training returns its failed record (status "failed", the error under "error"),
    as the CLI writes it; a config or data mistake raises (ConfigError, TaskError, UnknownNameError) and writes
    nothing. Sweep syntax ("seed=0,1") and launchers that submit jobs (local, slurm) are for sweep().
    """
    from harness.launch import check_planned, launch, plan_runs, submits_jobs
    from harness.records import read_record

    (planned,) = plan_runs(to_overrides(*overrides, **values), multirun=False)
    check_planned([planned])
    if submits_jobs(planned.cfg.launcher):
        raise ValueError(f"launcher={planned.cfg.launcher.name} submits jobs and returns before they end: use "
                         f"harness.api.sweep(..., launcher='{planned.cfg.launcher.name}') (run() runs in this process)")
    launch([planned], planned.cfg.launcher)
    record = read_record(planned.folder)
    if record is None:  # execute() writes a record whenever it does not raise
        raise RuntimeError(f"the run wrote no record in {planned.folder}")
    if record.get("status") != "ok":  # the "(error below)" launch() announces for a single run, as the CLI prints it
        print(f"FAILED: {record.get('error')}")
    return record


@dataclass
class SweepResult:
    """What sweep() did. `records`: the record of every run of the sweep that has one now, in sweep order
    (runs skipped because they were recorded included; a job launcher's runs once their jobs have written them).
    `n_launched`: runs run (inprocess) or submitted (local, slurm) by this call; `n_skipped`: runs that had an ok
    record and were not run again. `manifest`: the sweep manifest of a job launcher (harness status), else None."""
    n_runs: int
    n_launched: int
    n_skipped: int
    records: list[dict] = field(default_factory=list)
    run_dirs: list[Path] = field(default_factory=list)
    manifest: dict | None = None

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.records if r.get("status") != "ok"]


def sweep(*overrides: str, **values: Any) -> SweepResult:
    """A sweep, as `harness run -m ...`: the cartesian product of the swept values, resumable.

    sweep(method=["student", "kd"], seed=range(3), train={"max_epochs": 3}) runs 6 configs; the same as
    sweep("method=student,kd", "seed=0,1,2", "train.max_epochs=3"). Every value of every run is checked before
    the first run starts; runs with an ok record are skipped (a second call runs only what is missing or failed).
    launcher="inprocess" (default) runs them here, one after the other: a failing run writes a failed record
    and the others go on. launcher="local" or "slurm" submits them as jobs and returns at once (see `manifest`;
    `harness status` follows them). A data mistake found in some runs raises ConfigError after the others ran.
    """
    from harness.launch import check_planned, launch, plan_runs, submits_jobs
    from harness.records import read_record

    planned = plan_runs(to_overrides(*overrides, sweep=True, **values), multirun=True)
    check_planned(planned)
    launcher = planned[0].cfg.launcher
    n_skipped = sum(not r.config["overwrite"] and r.done for r in planned)
    manifest = None
    if submits_jobs(launcher):
        from harness.jobs import submit_jobs  # submitit: only to submit

        manifest = submit_jobs(planned, launcher)
        n_launched = manifest["n_submitted"] if manifest else 0
    else:
        n_launched = len(launch(planned, launcher))
    found = [read_record(r.folder) for r in planned]
    return SweepResult(n_runs=len(planned), n_launched=n_launched, n_skipped=n_skipped,
                       records=[r for r in found if r is not None], run_dirs=[r.folder for r in planned],
                       manifest=manifest)


def _flat_config(node: Any, prefix: str) -> dict[str, Any]:
    if isinstance(node, dict) and node:
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flat_config(value, f"{prefix}.{key}"))
        return out
    return {prefix: node}


def records(results_dir: str | Path = "results") -> pd.DataFrame:
    """Every run record under results_dir as a DataFrame, one row per run (failed runs included).

    Columns: RUN_COLUMNS (run_key, status, method, task, task_variant, seed, fold, data_source, bound,
    primary_metric, config_id, overrides as one string, error, path = the run's folder, which holds record.json
    and predictions.csv), then `metric.<name>` for every metric (NaN where a run has none, e.g. a failed run),
    then the resolved config flattened with dots: `config.train.lr`, `config.method.name` (lists stay lists).
    """
    import pandas as pd

    from harness.records import iter_records

    rows = []
    for rec in iter_records(results_dir):
        row = {c: rec.get(c) for c in RUN_COLUMNS}
        row["overrides"] = " ".join(rec.get("overrides") or [])
        row["path"] = rec["_dir"]
        row.update({f"metric.{k}": v for k, v in (rec.get("metrics") or {}).items()})
        if isinstance(rec.get("config"), dict):
            row.update(_flat_config(rec["config"], "config"))
        rows.append(row)
    metric_cols = list(dict.fromkeys(k for r in rows for k in r if k.startswith("metric.")))
    config_cols = list(dict.fromkeys(k for r in rows for k in r if k.startswith("config.")))
    frame = pd.DataFrame(rows, columns=[*RUN_COLUMNS, *metric_cols, *config_cols])
    for c in metric_cols:
        frame[c] = pd.to_numeric(frame[c], errors="coerce")
    return frame


def leaderboard(results_dir: str | Path = "results") -> pd.DataFrame:
    """The leaderboard's numbers as a DataFrame: the table `harness leaderboard` writes to leaderboard.csv,
    computed from the same summary and comparisons as leaderboard.md (harness/leaderboard/: collect,
    summarise, compare, csv_table).

    One line per (task, variant, data_source, method, config_id, metric): label, n_runs, n_failed, mean, std
    (sample std over seeds x folds), flags, the single-run bootstrap CI. On each row's primary-metric line the
    paired comparisons are joined as columns: vs_student_* (n pairs, delta, ci_low, ci_high, p_t, p_sign_flip,
    p_holm, significant, ...) and, when such runs exist, vs_pi_zeros_* / vs_pi_shuffle_*. Empty without records.
    """
    from harness.leaderboard.csvfile import csv_table
    from harness.leaderboard.paired import compare
    from harness.leaderboard.records import collect
    from harness.leaderboard.summary import summarise

    runs = collect(results_dir)
    return csv_table(summarise(runs), compare(runs))


def cross_task(results_dir: str | Path = "results") -> pd.DataFrame:
    """The cross-task summary as a DataFrame: the table `harness leaderboard` writes to leaderboard_ranks.csv, from
    the same records as leaderboard.md's "Cross-task summary" (harness/leaderboard/crosstask.py).

    Per data source (never pooled across data sources): one line per section and method (kind=section: the
    configuration chosen on validation, its test value of the section's primary metric and its rank, 1 = best),
    then one line per method (kind=mean: mean_rank over the sections it ran on, n_sections, n_won and, for the
    methods of the Friedman block, block_mean_rank, friedman_statistic, friedman_p, critical_difference).
    """
    from harness.leaderboard.crosstask import entrants, summary_table
    from harness.leaderboard.records import collect
    from harness.leaderboard.summary import summarise

    runs = collect(results_dir)
    return summary_table(entrants(runs, summarise(runs)))
