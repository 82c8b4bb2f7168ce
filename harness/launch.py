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
- Resume: runs with an ok record are never submitted (nor runs still queued or running in an earlier
  sweep), so a sweep re-sent after a crash or a partial failure sends only the missing/failed runs.

Why not hydra-submitit-launcher: runs with records are filtered before submission, every job writes
to its own run folder (no shared working directory), the prompt returns right after submission, a
failed run is a failed record and a failed job, and none of the launcher's known traps (1.2.0 with
hydra-core 1.3: shared cwd, "Job completed successfully" after a failure, missing srun_args/python,
dataclass launcher configs, a launching process that blocks until every job ends) can apply.
`hydra/launcher=slurm` on the command line is an alias of `launcher=slurm` (harness/config.py).
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import submitit
from omegaconf import DictConfig, OmegaConf

from harness.config import Composer, expand
from harness.records import read_record, run_dir
from harness.registry import METHODS, TASKS
from harness.runner import execute
from harness.schema import ConfigError
from harness.stale import StaleDataError, check_data_unchanged, combined
from harness.sweeps import in_flight, new_sweep_id, sweeps_dir, write_manifest
from harness.task import TaskError
from harness.validate import check_runs

SUBMITIT_EXECUTORS = ("slurm", "local")


class LaunchError(RuntimeError):
    """The launcher cannot work here or with these settings: the message says what to change."""


class RunFailed(RuntimeError):
    """Raised by a job whose run(s) wrote a failed record, so that the job itself fails."""


@dataclass
class PlannedRun:
    overrides: list[str]
    cfg: DictConfig

    @functools.cached_property
    def folder(self) -> Path:
        return run_dir(self.cfg)  # hashes the resolved config: once per run

    @property
    def done(self) -> bool:
        rec = read_record(self.folder)
        return rec is not None and rec.get("status") == "ok"


def plan_runs(overrides: list[str], multirun: bool) -> list[PlannedRun]:
    """The runs a command line asks for (`harness run [-m] ...`, harness.api.run / sweep), composed: one per
    combination of the sweep overrides. Raises ConfigError for an override that cannot be parsed or composed."""
    combos = expand(overrides, multirun=multirun)
    with Composer() as composer:
        return [PlannedRun(o, cfg) for o, cfg in zip(combos, composer.compose_many(combos))]


def check_planned(runs: list[PlannedRun]) -> None:
    """Every value of every run checked before the first run starts or the first job is submitted: a mistake
    costs one line per distinct problem (ConfigError; UnknownNameError for an unregistered name), and no folder,
    record or job is made."""
    check_runs([(r.overrides, r.cfg) for r in runs])
    for r in runs:
        METHODS.get(r.cfg.method.name)
        TASKS.get(r.cfg.task.name)


def runs_to_do(runs: list[PlannedRun]) -> list[PlannedRun]:
    """The runs without an ok record (or with overwrite=true). A recorded run is skipped as done only if its
    task's files are those it was computed on: otherwise one StaleDataError names it (and counts the others)."""
    todo, stale, memo = [], [], {}
    for r in runs:
        rec = None if r.cfg.overwrite else read_record(r.folder)
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
    for ckpt in Path(folder).glob("checkpoint_*.pt*"):
        ckpt.unlink(missing_ok=True)


def submits_jobs(launcher: DictConfig) -> bool:
    return launcher.get("executor") in SUBMITIT_EXECUTORS


def launch(runs: list[PlannedRun], launcher: DictConfig) -> list[dict]:
    """Execute (inprocess) or submit (submitit launchers) the runs; returns the records of executed runs."""
    if submits_jobs(launcher):
        submit(runs, launcher)
        return []
    todo = runs_to_do(runs)
    skipped = len(runs) - len(todo)
    if skipped:
        print(f"resume: {skipped} of {len(runs)} runs already have a record and are skipped (overwrite=true recomputes)")
    name = launcher.name
    if name == "inprocess":
        records, not_run = [], []
        common = set.intersection(*(set(r.overrides) for r in todo)) if todo else set()  # what tells runs apart
        for i, r in enumerate(todo):
            print(f"[{i + 1}/{len(todo)}] {' '.join(r.overrides) or '(defaults)'}")
            if r.cfg.overwrite:
                clear_checkpoints(r.folder)
            try:
                rec = execute(r.cfg, r.overrides)
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


# ----------------------------------------------------------------------------------------------------------------
# What runs inside a job


class RunJob(submitit.helpers.Checkpointable):
    """The callable a submitit job runs: its run(s), one after the other (one run per SLURM array task).

    A submitit Checkpointable: on SIGUSR2 (preemption, or the time limit coming) submitit calls
    checkpoint(), pickles the returned call and requeues the job; the requeued job calls this object
    again and each run resumes from its own last per-epoch checkpoint through the training loop.
    """

    def __init__(self, runs: list[dict], sweep_id: str, launcher: str, threads: int = 0):
        self.runs = runs  # [{"config": resolved config as a dict, "overrides": [...], "run_dir": str}]
        self.sweep_id = sweep_id
        self.launcher = launcher
        self.threads = threads
        self.requeues = 0            # times this job was checkpointed and requeued
        self.started: list[int] = []  # runs this job has begun (overwrite=true clears checkpoints once only)
        self.finished: list[int] = []  # runs whose record this job wrote (not recomputed after a requeue)

    def __call__(self) -> list[dict]:
        import torch

        threads = int(os.environ.get("SLURM_CPUS_PER_TASK") or self.threads or 0)
        if threads > 0:  # one job per CPU slot: torch must not use every core of the node
            torch.set_num_threads(threads)
        summary, failed = [], []
        for i, spec in enumerate(self.runs):
            cfg = OmegaConf.create(spec["config"])
            folder = run_dir(cfg)
            if str(folder) != spec["run_dir"]:
                raise RuntimeError(f"run folder changed between submission and job: {spec['run_dir']} -> {folder}")
            if i in self.finished:
                cfg.overwrite = False  # recorded by this job before it was requeued: keep that record
            elif i not in self.started:
                self.started.append(i)
                if cfg.overwrite:
                    clear_checkpoints(folder)
            print(f"[{i + 1}/{len(self.runs)}] {' '.join(spec['overrides']) or '(defaults)'} -> {folder}", flush=True)
            try:
                rec = execute(cfg, spec["overrides"], launch=self.launch_info())
            except (ConfigError, TaskError) as e:  # a config or data mistake found with the data: no record
                first = str(e).splitlines()[0]
                print(f"  -> not run: {first}", flush=True)
                summary.append({"run_dir": spec["run_dir"], "status": "not run", "error": first})
                failed.append(f"{spec['run_dir']}: not run: {first}")
                continue
            if i not in self.finished:
                self.finished.append(i)
            resumed = (rec.get("extra") or {}).get("resumed_from_epoch")
            print(f"  -> {rec['status']}" + (f" (resumed at epoch {resumed})" if resumed else "")
                  + (f": {rec.get('error')}" if rec["status"] != "ok" else ""), flush=True)
            summary.append({"run_dir": spec["run_dir"], "status": rec["status"], "error": rec.get("error")})
            if rec["status"] != "ok":
                failed.append(f"{spec['run_dir']}: {rec.get('error')}")
        if failed:
            raise RunFailed(f"{len(failed)} of {len(self.runs)} runs failed (their records carry the error; a run "
                            "'not run' has a config or data mistake and no record): " + "; ".join(failed))
        return summary

    def checkpoint(self, *args, **kwargs):
        """Called by submitit on SIGUSR2: requeue this same call; runs resume from their own checkpoints."""
        self.requeues += 1
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)

    def launch_info(self) -> dict:
        info = {"launcher": self.launcher, "sweep_id": self.sweep_id, "job_id": None, "requeues": self.requeues,
                "node": socket.gethostname()}
        try:
            info["job_id"] = submitit.JobEnvironment().job_id
        except Exception:  # noqa: BLE001 - called outside a submitit job (tests)
            pass
        if "SLURM_JOB_ID" in os.environ:
            info["slurm_restart_count"] = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
        return info


# ----------------------------------------------------------------------------------------------------------------
# Submission


def check_launcher(launcher: DictConfig) -> None:
    """What only this machine can tell: SLURM's commands are here. The launcher's values (and the time limit
    against the checkpoint signal) are checked with every other config value (harness/schema.py)."""
    if launcher.executor == "slurm" and (shutil.which("sbatch") is None or shutil.which("srun") is None):
        raise LaunchError(f"launcher={launcher.name} needs SLURM (sbatch and srun on PATH), not found "
                          "here; run from a SLURM login node, or use launcher=local on a workstation")


def _source_root() -> Path | None:
    """The checkout this harness is imported from (None when installed as a package)."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").exists() else None


@contextlib.contextmanager
def _jobs_import_this_harness():
    """Local workers inherit this environment: make them import the same harness code as this command."""
    root, old = _source_root(), os.environ.get("PYTHONPATH")
    if root is not None:
        os.environ["PYTHONPATH"] = f"{root}{os.pathsep}{old}" if old else str(root)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def make_executor(launcher: DictConfig, folder: Path, sweep_id: str):
    python = launcher.get("python") or None
    setup = list(launcher.get("setup") or [])
    if launcher.executor == "slurm":
        # Jobs import the same harness code as this command, even where sbatch does not export the environment.
        root = _source_root()
        if root is not None:
            setup.insert(0, f"export PYTHONPATH={root}${{PYTHONPATH:+:$PYTHONPATH}}")
        ex = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm",
                                   slurm_max_num_timeout=int(launcher.max_num_timeout), slurm_python=python)
        params = {
            "name": f"harness-{sweep_id}", "timeout_min": int(launcher.timeout_min), "mem_gb": launcher.mem_gb,
            "cpus_per_task": int(launcher.cpus_per_task), "gpus_per_node": int(launcher.gpus_per_node) or None,
            "slurm_partition": launcher.partition, "slurm_account": launcher.account, "slurm_qos": launcher.qos,
            "slurm_constraint": launcher.constraint, "slurm_gres": launcher.gres,
            "slurm_signal_delay_s": int(launcher.signal_delay_s),
            "slurm_array_parallelism": int(launcher.array_parallelism), "slurm_setup": setup or None,
            "slurm_srun_args": list(launcher.srun_args) or None,
            "slurm_additional_parameters": OmegaConf.to_container(launcher.additional_parameters) or None,
        }
        ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
        return ex
    if launcher.executor == "local":
        ex = submitit.LocalExecutor(folder=folder / "%j", max_num_timeout=int(launcher.max_num_timeout), python=python)
        # (with `setup` lines submitit starts each worker through a shell, whose pid is then the job id)
        ex.update_parameters(timeout_min=int(launcher.timeout_min), gpus_per_node=int(launcher.gpus_per_node),
                             signal_delay_s=int(launcher.signal_delay_s), setup=setup)
        return ex
    raise LaunchError(f"launcher.executor={launcher.executor!r}: choose one of {SUBMITIT_EXECUTORS}")


def _payload(r: PlannedRun, results_dir: Path, cache_dir: Path) -> dict:
    cfg = OmegaConf.to_container(r.cfg, resolve=True)
    # Jobs may start in another working directory: absolute paths (neither is part of the run key, so the
    # job's run folder is this one, resolved; RunJob checks it).
    cfg["results_dir"], cfg["cache_dir"] = str(results_dir), str(cache_dir)
    return {"config": cfg, "overrides": list(r.overrides), "run_dir": str(r.folder.resolve())}


def submit(runs: list[PlannedRun], launcher: DictConfig) -> dict | None:
    """Submit the runs that need it as one job array (or local workers); write and return the manifest."""
    t0 = time.perf_counter()
    if not runs:
        return None
    check_launcher(launcher)
    results_dir = Path(runs[0].cfg.results_dir).resolve()
    cache_dir = Path(runs[0].cfg.cache_dir).resolve()
    if any(Path(r.cfg.results_dir).resolve() != results_dir for r in runs):
        raise LaunchError("one sweep writes to one results_dir: do not sweep results_dir")
    todo = runs_to_do(runs)
    n_recorded = len(runs) - len(todo)
    payloads = [_payload(r, results_dir, cache_dir) for r in todo]
    busy = in_flight(results_dir, {p["run_dir"] for p in payloads})
    kept = [(r, p) for r, p in zip(todo, payloads) if p["run_dir"] not in busy]
    if n_recorded:
        print(f"resume: {n_recorded} of {len(runs)} runs already have an ok record and are not submitted "
              "(overwrite=true recomputes)")
    if busy:
        sweeps = sorted({s for s, _, _ in busy.values()})
        print(f"{len(busy)} runs are still queued or running in sweep {', '.join(sweeps)} and are not submitted "
              "twice (harness status; cancel them to resubmit)")
    if not kept:
        print("nothing to submit.")
        return None

    sweep_id = new_sweep_id()
    logs = sweeps_dir(results_dir) / sweep_id / "logs"
    executor = make_executor(launcher, logs, sweep_id)
    payloads = [p for _, p in kept]
    threads = int(launcher.get("cpus_per_task") or 0)
    if launcher.executor == "local":
        n_workers = min(int(launcher.parallelism), len(payloads))
        groups = [list(range(k, len(payloads), n_workers)) for k in range(n_workers)]
    else:
        groups = [[k] for k in range(len(payloads))]
    calls = [RunJob([payloads[k] for k in g], sweep_id, launcher.name, threads) for g in groups]
    t_submit = time.perf_counter()
    try:
        with _jobs_import_this_harness():
            jobs = executor.submit_array(calls)  # SLURM: one sbatch --array for the whole sweep
    except submitit.core.utils.FailedJobError as e:  # sbatch said no (partition, account, limits...)
        shutil.rmtree(logs.parent, ignore_errors=True)
        message = " ".join(str(e).split())
        raise LaunchError(f"the scheduler refused the sweep, nothing was submitted: {message} "
                          f"(check launcher.partition / launcher.account / launcher.* limits)") from None
    submit_s = time.perf_counter() - t_submit

    run_entries = []
    for job, group in zip(jobs, groups):
        for position, k in enumerate(group):
            r, p = kept[k]
            run_entries.append({"run_dir": p["run_dir"], "overrides": p["overrides"], "task": r.cfg.task.name,
                                "method": r.cfg.method.name, "fold": int(r.cfg.fold), "seed": int(r.cfg.seed),
                                "job_id": job.job_id, "position": position,
                                "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr)})
    manifest = {
        "sweep_id": sweep_id, "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["harness", *sys.argv[1:]]) if sys.argv and sys.argv[0].endswith(("harness", "__main__.py")) else None,
        "cwd": os.getcwd(), "executor": launcher.executor, "launcher": OmegaConf.to_container(launcher, resolve=True),
        "results_dir": str(results_dir), "logs_dir": str(logs),
        "n_requested": len(runs), "n_submitted": len(kept), "n_skipped_recorded": n_recorded,
        "n_skipped_in_flight": len(busy), "submit_seconds": round(submit_s, 3),
        "jobs": [{"job_id": j.job_id, "stdout": str(j.paths.stdout), "stderr": str(j.paths.stderr),
                  "result": str(j.paths.result_pickle)} for j in jobs],
        "runs": run_entries,
    }
    path = write_manifest(results_dir, manifest)
    _print_submitted(manifest, path, jobs, time.perf_counter() - t0)
    return manifest


def _print_submitted(manifest: dict, path: Path, jobs, seconds: float) -> None:
    n, sid = manifest["n_submitted"], manifest["sweep_id"]
    if manifest["executor"] == "slurm":
        array = jobs[0].job_id.split("_")[0]
        where = f"SLURM job array {array} ({jobs[0].job_id}..{jobs[-1].job_id})" if len(jobs) > 1 else f"SLURM job {array}"
        cancel = f"scancel {array}"
    else:
        where = f"{len(jobs)} local worker process(es) (pids {', '.join(j.job_id for j in jobs)})"
        cancel = f"kill {' '.join(j.job_id for j in jobs)}"
    print(f"sweep {sid}: {n} run(s) submitted to {where} in {seconds:.1f}s, launcher {manifest['launcher']['name']}")
    print(f"  manifest: {path}")
    print(f"  logs:     {manifest['logs_dir']}/")
    print(f"  follow:   harness status --sweep {sid} --results {manifest['results_dir']}")
    print(f"  results:  harness leaderboard --results {manifest['results_dir']}   (any time: finished runs only)")
    print(f"  cancel:   {cancel}")
