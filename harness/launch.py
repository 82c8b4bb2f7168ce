"""Launchers: how the runs of a command line are executed (the `launcher` config group).

`inprocess` (default): one after the other in this process; a failing run writes a failed record
and the others go on.

`slurm`, `slurm_cpu` (SLURM) and `local` (a workstation): submitit. The runs of the command line go
out at once and the command returns right after submission, printing the sweep id; `harness status`
follows the sweep and `harness leaderboard` reads whatever has finished.
- SLURM: ONE job array for the sweep (one sbatch), one array task per run, each in its own run
  folder. Configs are composed and pickled once, in the submitting process: no per-run Python start-up.
- local: submitit's LocalExecutor; the runs are dealt to `parallelism` background workers, each
  running its share one after the other.
- Each job calls harness.runner.execute: a run that fails writes a failed record carrying the error,
  and its job exits with an error (sacct FAILED, the log ends with the traceback). Config values are all
  checked before submission (harness/validate.py); a mistake only the data shows (a fold the data lacks)
  writes no record: the job's other runs go on and the job fails naming it.
- A job that is preempted or reaches its time limit gets SIGUSR2 from SLURM; submitit calls
  RunJob.checkpoint() and requeues it, and the run resumes from its own per-epoch checkpoint
  (train.checkpoint=true, set by the presets). Its record says how often it was requeued and the
  epoch it resumed from.
- A full disk: an in-process sweep stops at the first run that cannot write (one DiskFullError line, exit 2);
  a job reports that run and its task's later runs "not run" and fails. Every record written before is
  intact (records are written whole or not at all, harness/storage.py); re-sending the command resumes.
- Resume: runs with an ok record are never submitted (nor runs still queued or running in an earlier
  sweep), so a sweep re-sent after a crash or a partial failure sends only the missing/failed runs.

Why not hydra-submitit-launcher: runs with records are filtered before submission, every job writes
to its own run folder (no shared working directory), the prompt returns right after submission, a
failed run is a failed record and a failed job, and none of the launcher's known traps (1.2.0 with
hydra-core 1.3: shared cwd, "Job completed successfully" after a failure, missing srun_args/python,
dataclass launcher configs, a launching process that blocks until every job ends) can apply.
`hydra/launcher=slurm` on the command line is an alias of `launcher=slurm` (harness/config.py).

This module plans the runs and executes them in process; the job side (submission, manifest, RunJob) is
harness/jobs.py, which builds on this one (it submits the runs planned here) and which the commands import only to
submit (`submits_jobs(launcher)`: harness.jobs.submit_jobs), so that a run in process does not import submitit.
This module never imports it: the two are layers, not a circle.
"""

from __future__ import annotations

import functools
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from harness.config import Composer, expand
from harness.errors import DiskFullError, TaskError
from harness.records import read_record, run_dir
from harness.registry import METHODS
from harness.schema import ConfigError
from harness.stale import StaleDataError, check_data_unchanged, combined
from harness.validate import check_runs

SUBMITIT_EXECUTORS = ("slurm", "local")


class LaunchError(RuntimeError):
    """The launcher cannot work here or with these settings: the message says what to change."""


class PlannedRun:
    """One run of a command line: its overrides and its resolved config, as plain data (`config`: what the
    checks, the run folder and the job side read) and as a DictConfig (`cfg`: built when first asked for, so
    that a sweep of thousands of runs sent to SLURM never builds one). Treat both as read-only."""

    def __init__(self, overrides: list[str], cfg: DictConfig | None = None, config: dict | None = None):
        if cfg is None and config is None:
            raise ValueError("PlannedRun needs the run's cfg or its config data")
        self.overrides = overrides
        self._cfg, self._config = cfg, config

    @property
    def cfg(self) -> DictConfig:
        if self._cfg is None:
            self._cfg = OmegaConf.create(self._config)
            OmegaConf.set_struct(self._cfg, True)  # as Hydra composes it: a misspelt key fails, never reads None
        return self._cfg

    @property
    def config(self) -> dict:
        if self._config is None:
            self._config = OmegaConf.to_container(self._cfg)  # composed configs are resolved already
        return self._config

    @functools.cached_property
    def folder(self) -> Path:
        return run_dir(self.config)  # hashes the resolved config: once per run

    @property
    def done(self) -> bool:
        rec = read_record(self.folder)
        return rec is not None and rec.get("status") == "ok"


def plan_runs(overrides: list[str], multirun: bool) -> list[PlannedRun]:
    """The runs a command line asks for (`harness run [-m] ...`, harness.api.run / sweep), composed: one per
    combination of the sweep overrides. Raises ConfigError for an override that cannot be parsed or composed."""
    return plan_command_lines([overrides], multirun)[0]


def plan_command_lines(command_lines: list[list[str]], multirun: bool = True) -> list[list[PlannedRun]]:
    """plan_runs of several command lines at once (`harness reproduce`: one per arm), composed in one Composer so
    that command lines choosing the same config groups share Hydra's composition of them."""
    expanded = [expand(overrides, multirun=multirun) for overrides in command_lines]
    combos = [c for runs in expanded for c in runs]
    with Composer() as composer:
        planned = [PlannedRun(o, cfg, config) for o, (config, cfg) in zip(combos, composer.compose_plain(combos))]
    out, start = [], 0
    for runs in expanded:
        out.append(planned[start:start + len(runs)])
        start += len(runs)
    return out


def check_planned(runs: list[PlannedRun]) -> None:
    """Every value of every run checked before the first run starts or the first job is submitted: a mistake
    costs one line per distinct problem (ConfigError; UnknownNameError for an unregistered name), and no folder,
    record or job is made."""
    check_runs([(r.overrides, r.config) for r in runs])  # builds each distinct task config: imports its module
    for method in {r.config["method"]["name"] for r in runs}:
        METHODS.require(method)


def runs_to_do(runs: list[PlannedRun]) -> list[PlannedRun]:
    """The runs without an ok record (or with overwrite=true). A recorded run is skipped as done only if its
    task's files are those it was computed on: otherwise one StaleDataError names it (and counts the others)."""
    todo, stale, memo = [], [], {}
    for r in runs:
        rec = None if r.config["overwrite"] else read_record(r.folder)
        if rec is None or rec.get("status") != "ok":
            todo.append(r)
            continue
        try:
            check_data_unchanged(r.cfg, rec, r.folder, memo)
        except StaleDataError as e:
            stale.append(e)
    if stale:
        raise combined(stale)
    return todo


def clear_checkpoints(folder: Path) -> None:
    """overwrite=true recomputes from scratch: drop what an earlier attempt left (train.checkpoint)."""
    for ckpt in Path(folder).glob("*checkpoint_*.pt*"):
        ckpt.unlink(missing_ok=True)


def submits_jobs(launcher: DictConfig) -> bool:
    return launcher.get("executor") in SUBMITIT_EXECUTORS


def launch(runs: list[PlannedRun], launcher: DictConfig) -> list[dict]:
    """Execute the runs in this process (launcher=inprocess); returns the records of the executed runs. Launchers
    that submit jobs go through harness.jobs.submit_jobs instead."""
    if submits_jobs(launcher):
        raise ValueError(f"launcher={launcher.name} submits jobs: harness.jobs.submit_jobs sends them (launch() runs "
                         f"in this process)")
    todo = runs_to_do(runs)
    skipped = len(runs) - len(todo)
    if skipped:
        print(f"resume: {skipped} of {len(runs)} runs already have a record and are skipped (overwrite=true recomputes)")
    name = launcher.name
    if name == "inprocess":
        # Here, not at the top: the runner imports torch, numpy, scipy and pandas, which planning and
        # submitting never use (a 5000-run sweep reaches its prompt seconds sooner without them).
        from harness.runner import execute

        records, not_run = [], []
        common = set.intersection(*(set(r.overrides) for r in todo)) if todo else set()  # what tells runs apart
        for i, r in enumerate(todo):
            print(f"[{i + 1}/{len(todo)}] {' '.join(r.overrides) or '(defaults)'}")
            if r.cfg.overwrite:
                clear_checkpoints(r.folder)
            try:
                rec = execute(r.cfg, r.overrides)
            except DiskFullError as e:  # every later run would train and then fail the same way: stop here
                if len(runs) == 1:
                    raise
                done = skipped + sum(rec["status"] == "ok" for rec in records)
                raise e.with_context(f"{done} of {len(runs)} runs of this command have an ok record, the other "
                                     f"{len(runs) - done} were not run") from e
            except (ConfigError, TaskError) as e:  # found with the data: nothing written, the sweep goes on
                if len(todo) == 1:
                    raise
                first = str(e).splitlines()[0]
                print(f"  -> not run: {first}")
                not_run.append(f"{first} ({' '.join(o for o in r.overrides if o not in common)})")
                continue
            line = f"  -> {rec['status']}"
            if rec["status"] == "ok":
                pm = rec.get("primary_metric")
                line += f"  {pm}={rec['metrics'][pm]:.4f}  ({rec['timings']['total_s']:.1f}s)"
            else:  # a single run's error is printed once, by the caller (cli.print_run)
                line += f"  {rec['error']}" if len(todo) > 1 else "  (error below)"
            print(line)
            records.append(rec)
        if not_run:
            summary = (f"{len(not_run)} of {len(todo)} runs were not run (no folder or record); {len(records)} ran "
                       f"({sum(r['status'] == 'ok' for r in records)} ok), their records are written")
            raise ConfigError("\n".join(not_run), lines=[*not_run, summary])
        return records
    raise ValueError(f"launcher '{name}' is not implemented")
