"""The job side of the submitit launchers (`slurm`, `slurm_cpu`, `local`; harness/launch.py describes them):
submission of a sweep as one job array or local workers, its manifest, and RunJob, what each job runs.

Its own module so that a run in this process (launcher=inprocess) never imports submitit: the commands
(harness/cli.py, harness/api.py, harness/reproduce.py) import it only when the launcher submits jobs. It builds on
harness/launch.py (the planned runs, the resume filter), which never imports it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

import submitit
from omegaconf import DictConfig, OmegaConf

from harness.errors import DiskFullError, TaskError
from harness.launch import SUBMITIT_EXECUTORS, LaunchError, PlannedRun, clear_checkpoints, runs_to_do
from harness.records import run_dir
from harness.schema import ConfigError
from harness.sweeps import in_flight, new_sweep_id, sweeps_dir, write_manifest


class RunFailed(RuntimeError):
    """Raised by a job whose run(s) wrote a failed record, so that the job itself fails."""


# ----------------------------------------------------------------------------------------------------------------
# What runs inside a job


class RunJob(submitit.helpers.Checkpointable):
    """The callable a submitit job runs: its run(s), one after the other, in one Python process (a SLURM array task
    runs launcher.runs_per_task runs; a local worker its share of the sweep).

    A submitit Checkpointable: on SIGUSR2 (preemption, or the time limit coming) submitit calls
    checkpoint(), pickles the returned call and requeues the job; the requeued job calls this object
    again: the runs it finished are skipped (their ok records), the current one resumes from its own last
    per-epoch checkpoint through the training loop. A run that fails writes a failed record and the task goes
    on with the next; the task fails at the end (RunFailed) so that sacct shows it.
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
        import torch  # the job side only: submitting imports neither torch nor the runner

        from harness.runner import execute

        threads = int(os.environ.get("SLURM_CPUS_PER_TASK") or self.threads or 0)
        if threads > 0:  # one job per CPU slot: torch must not use every core of the node
            torch.set_num_threads(threads)
        summary, failed = [], []
        disk_full = None  # the first full-disk error: the task's later runs would train and then fail the same way
        for i, spec in enumerate(self.runs):
            if disk_full is not None:
                print(f"==== [{i + 1}/{len(self.runs)}] -> not run: the disk filled in an earlier run of this task",
                      flush=True)
                summary.append({"run_dir": spec["run_dir"], "status": "not run", "error": disk_full})
                failed.append(f"{spec['run_dir']}: not run (disk full)")
                continue
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
            # One log section per run: a packed task's log reads as the logs of its runs, one after the other.
            print(f"==== [{i + 1}/{len(self.runs)}] {' '.join(spec['overrides']) or '(defaults)'} -> {folder}",
                  flush=True)
            try:
                rec = execute(cfg, spec["overrides"], launch=self.launch_info(i))
            except Exception as e:  # noqa: BLE001 - a config or data mistake found with the data (no record), or
                # anything execute does not record: this run is reported, the task's other runs go on
                first = str(e).splitlines()[0] if str(e) else type(e).__name__
                if isinstance(e, DiskFullError):  # its one line says it all; other runs' records are intact
                    disk_full = first
                elif not isinstance(e, (ConfigError, TaskError)):
                    first = f"{type(e).__name__}: {first}"
                    traceback.print_exc()
                print(f"  -> not run: {first}", flush=True)
                summary.append({"run_dir": spec["run_dir"], "status": "not run", "error": first})
                failed.append(f"{spec['run_dir']}: not run: {first}")
                continue
            if i not in self.finished:
                self.finished.append(i)
            resumed = (rec.get("extra") or {}).get("resumed_from_epoch")
            print(f"  -> {rec['status']}" + (" (recorded before, skipped)" if rec.get("skipped") else "")
                  + (f" (resumed at epoch {resumed})" if resumed else "")
                  + (f": {rec.get('error')}" if rec["status"] != "ok" else ""), flush=True)
            summary.append({"run_dir": spec["run_dir"], "status": rec["status"], "error": rec.get("error")})
            if rec["status"] != "ok":
                failed.append(f"{spec['run_dir']}: {rec.get('error')}")
        if failed:
            raise RunFailed(f"{len(failed)} of {len(self.runs)} runs failed (their records carry the error; a run "
                            "'not run' has no record: a config or data mistake, or a full disk): " + "; ".join(failed))
        return summary

    def checkpoint(self, *args, **kwargs):
        """Called by submitit on SIGUSR2: requeue this same call; runs resume from their own checkpoints."""
        self.requeues += 1
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)

    def launch_info(self, position: int = 0) -> dict:
        info = {"launcher": self.launcher, "sweep_id": self.sweep_id, "job_id": None, "requeues": self.requeues,
                "node": socket.gethostname(), "position_in_task": position, "runs_in_task": len(self.runs)}
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


@contextlib.contextmanager
def _children_write_to(path: Path):
    """Processes started in the block get a file at path as their stdout and stderr instead of this process's.
    submitit's LocalExecutor starts each worker (a controller outliving `harness run`) with subprocess.Popen, which
    hands it our stdout: piped (`harness run -m ... launcher=local | tail`), the reader would then wait for the
    whole sweep. The runs' own output still goes to their per-task logs; the controllers' to this file."""
    sys.stdout.flush()
    sys.stderr.flush()
    path.parent.mkdir(parents=True, exist_ok=True)
    saved = os.dup(1), os.dup(2)
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(log, 1)
        os.dup2(log, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (log, *saved):
            os.close(fd)


def _payload(r: PlannedRun, results_dir: Path, cache_dir: Path) -> dict:
    # Jobs may start in another working directory: absolute paths (neither is part of the run key, so the
    # job's run folder is this one, resolved; RunJob checks it). A shallow copy: the config data is read-only.
    cfg = {**r.config, "results_dir": str(results_dir), "cache_dir": str(cache_dir)}
    return {"config": cfg, "overrides": list(r.overrides), "run_dir": str(r.folder.resolve())}


def _recorded_seconds(results_dir: Path, task: str, method: str, sample: int = 50) -> float | None:
    """Median own time (timings.total_s) of ok records of this task and method under results_dir; None if none."""
    seconds = []
    for path in sorted((results_dir / task / method).glob("*/record.json"))[:sample]:
        try:
            rec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if rec.get("status") == "ok" and (rec.get("timings") or {}).get("total_s") is not None:
            seconds.append(float(rec["timings"]["total_s"]))
    return statistics.median(seconds) if seconds else None


def pack_runs(runs: list[PlannedRun], launcher: DictConfig, results_dir: Path) -> tuple[list[list[int]], dict]:
    """The runs of each array task (indices into runs, consecutive in sweep order) and how their number was chosen.

    runs_per_task=K: K runs a task. auto: a run's time is the median of its task and method's ok records under
    results_dir (else launcher.run_minutes); runs are packed until a task's estimate reaches target_task_minutes,
    but into no fewer tasks than array_parallelism allows to run at once (so a short sweep still spreads out)."""
    n, k = len(runs), launcher.get("runs_per_task", 1)
    if k != "auto":
        k = int(k)
        return [list(range(s, min(s + k, n))) for s in range(0, n, k)], {"runs_per_task": k, "how": f"{k} runs a task"}
    guess = launcher.get("run_minutes")
    memo: dict[tuple[str, str], float | None] = {}
    estimates = []
    for r in runs:
        key = (r.config["task"]["name"], r.config["method"]["name"])
        if key not in memo:
            memo[key] = _recorded_seconds(results_dir, *key)
        if memo[key] is None and guess is None:
            raise LaunchError(f"launcher.runs_per_task=auto needs a run's duration: {results_dir} has no ok record "
                              f"of task={key[0]} method={key[1]} to time one; set launcher.run_minutes=<minutes a run "
                              f"takes> or launcher.runs_per_task=<runs per task>")
        estimates.append(memo[key] if memo[key] is not None else 60 * float(guess))
    target = 60 * float(launcher.target_task_minutes)
    spread = sum(estimates) / min(int(launcher.array_parallelism), n)  # each of the parallel tasks' share
    groups, current, total = [], [], 0.0
    for i, seconds in enumerate(estimates):
        if current and total + seconds > target:
            groups.append(current)
            current, total = [], 0.0
        current.append(i)
        total += seconds
        if total >= spread * (1 - 1e-9):
            groups.append(current)
            current, total = [], 0.0
    if current:
        groups.append(current)
    sizes = [len(g) for g in groups]
    how = (f"runs_per_task=auto: {min(sizes)}-{max(sizes)} runs a task (~{max(estimates) / 60:.2g} min a run, "
           f"target {launcher.target_task_minutes} min a task, array_parallelism {launcher.array_parallelism})")
    return groups, {"runs_per_task": "auto", "how": how, "estimated_run_s": sorted({round(e, 1) for e in estimates})}


def max_array_size(launcher: DictConfig) -> int:
    """Array tasks one sbatch may hold: launcher.max_array_size, else the cluster's MaxArraySize (task ids run
    from 0 to MaxArraySize - 1, and submitit numbers them from 0)."""
    if launcher.get("max_array_size"):
        return int(launcher.max_array_size)
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=60,
                             check=False).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        out = str(e)
    found = re.search(r"^MaxArraySize\s*=\s*(\d+)", out, re.M)
    if found is None or int(found.group(1)) < 1:
        raise LaunchError("cannot read MaxArraySize from `scontrol show config` (job arrays disabled, or scontrol "
                          "unavailable): set launcher.max_array_size=<array tasks per sbatch>")
    return int(found.group(1))


def submit_jobs(runs: list[PlannedRun], launcher: DictConfig) -> dict | None:
    """Submit the runs that need it as one job array (or local workers); write and return the manifest."""
    t0 = time.perf_counter()
    if not runs:
        return None
    check_launcher(launcher)
    results_dir = Path(runs[0].config["results_dir"]).resolve()
    cache_dir = Path(runs[0].config["cache_dir"]).resolve()
    if len({Path(d).resolve() for d in {r.config["results_dir"] for r in runs}}) > 1:
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

    payloads = [p for _, p in kept]
    packing = None
    if launcher.executor == "local":
        n_workers = min(int(launcher.parallelism), len(payloads))
        groups = [list(range(k, len(payloads), n_workers)) for k in range(n_workers)]
        chunk = len(groups)
    else:
        groups, packing = pack_runs([r for r, _ in kept], launcher, results_dir)
        chunk = max_array_size(launcher)
    sweep_id = new_sweep_id()
    logs = sweeps_dir(results_dir) / sweep_id / "logs"
    executor = make_executor(launcher, logs, sweep_id)
    threads = int(launcher.get("cpus_per_task") or 0)
    calls = [RunJob([payloads[k] for k in g], sweep_id, launcher.name, threads) for g in groups]
    t_submit = time.perf_counter()
    jobs: list = []
    try:
        workers_log = _children_write_to(logs / "workers.log") if launcher.executor == "local" \
            else contextlib.nullcontext()  # SLURM's jobs start under slurmd, not as our children
        with _jobs_import_this_harness(), workers_log:
            for start in range(0, len(calls), chunk):  # SLURM: one sbatch --array per MaxArraySize tasks
                jobs += executor.submit_array(calls[start:start + chunk])
    except submitit.core.utils.FailedJobError as e:  # sbatch said no (partition, account, limits...)
        if jobs:  # the arrays already in the queue go too: a sweep is submitted whole or not at all
            subprocess.run(["scancel", *sorted({j.job_id.split("_")[0] for j in jobs})], capture_output=True,
                           check=False)
        shutil.rmtree(logs.parent, ignore_errors=True)
        message = " ".join(str(e).split())
        raise LaunchError(f"the scheduler refused the sweep, nothing was submitted: {message} "
                          f"(check launcher.partition / launcher.account / launcher.* limits)") from None
    submit_s = time.perf_counter() - t_submit

    run_entries = []
    for job, group in zip(jobs, groups):
        stdout, stderr = str(job.paths.stdout), str(job.paths.stderr)  # once a task: submitit rebuilds them per call
        for position, k in enumerate(group):
            r, p = kept[k]
            c = r.config
            run_entries.append({"run_dir": p["run_dir"], "overrides": p["overrides"], "task": c["task"]["name"],
                                "method": c["method"]["name"], "fold": int(c["fold"]), "seed": int(c["seed"]),
                                "job_id": job.job_id, "position": position, "stdout": stdout, "stderr": stderr})
    manifest = {
        "sweep_id": sweep_id, "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["harness", *sys.argv[1:]]) if sys.argv and sys.argv[0].endswith(("harness", "__main__.py")) else None,
        "cwd": os.getcwd(), "executor": launcher.executor, "launcher": OmegaConf.to_container(launcher, resolve=True),
        "results_dir": str(results_dir), "logs_dir": str(logs),
        "n_requested": len(runs), "n_submitted": len(kept), "n_skipped_recorded": n_recorded,
        "n_skipped_in_flight": len(busy), "submit_seconds": round(submit_s, 3),
        "n_tasks": len(jobs), "packing": packing,
        "arrays": list(dict.fromkeys(j.job_id.split("_")[0] for j in jobs)) if launcher.executor == "slurm" else [],
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
        arrays = manifest["arrays"]
        if len(arrays) > 1:
            where = f"{len(arrays)} SLURM job arrays {', '.join(arrays)} ({len(jobs)} tasks)"
        elif len(jobs) > 1:
            where = f"SLURM job array {arrays[0]} ({jobs[0].job_id}..{jobs[-1].job_id})"
        else:
            where = f"SLURM job {arrays[0]}"
        if manifest["packing"]["runs_per_task"] != 1:
            where += f", {manifest['packing']['how']}"
        cancel = f"scancel {' '.join(arrays)}"
    else:
        where = f"{len(jobs)} local worker process(es) (pids {', '.join(j.job_id for j in jobs)})"
        cancel = f"kill {' '.join(j.job_id for j in jobs)}"
    print(f"sweep {sid}: {n} run(s) submitted to {where} in {seconds:.1f}s, launcher {manifest['launcher']['name']}")
    print(f"  manifest: {path}")
    print(f"  logs:     {manifest['logs_dir']}/")
    print(f"  follow:   harness status --sweep {sid} --results {manifest['results_dir']}")
    print(f"  results:  harness leaderboard --results {manifest['results_dir']}   (any time: finished runs only)")
    print(f"  cancel:   {cancel}")
