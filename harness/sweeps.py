"""Sweeps sent to a scheduler: their manifests and the state of their runs (`harness status`).

    <results_dir>/_sweeps/<sweep_id>.json    what was submitted: every run (run dir, overrides), its job id
                                             and log files, the launcher config, the command
    <results_dir>/_sweeps/<sweep_id>/logs/   submitit's job folders (pickles, stdout/stderr of each job)

A run's state comes from its record (the truth about a finished run) and from the scheduler for the
rest: pending / running / done / failed (`unknown` only when the scheduler cannot be asked).
The leaderboard never looks here (records.iter_records skips `_sweeps/`).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from harness.records import atomic_write_text, read_record

SWEEPS_DIR = "_sweeps"

# sacct states of a job that is not over yet, and what they mean for its run.
SLURM_ACTIVE = {"PENDING": "pending", "REQUEUED": "pending", "REQUEUE_HOLD": "pending", "REQUEUE_FED": "pending",
                "RESV_DEL_HOLD": "pending", "RUNNING": "running", "COMPLETING": "running", "CONFIGURING": "running",
                "RESIZING": "running", "SIGNALING": "running", "STAGE_OUT": "running", "SUSPENDED": "running",
                "STOPPED": "running"}
STATES = ("done", "running", "pending", "failed", "unknown")


def sweeps_dir(results_dir: Path | str) -> Path:
    return Path(results_dir) / SWEEPS_DIR


def new_sweep_id() -> str:
    """Sortable by submission time, unique across concurrent submissions."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def manifest_path(results_dir: Path | str, sweep_id: str) -> Path:
    return sweeps_dir(results_dir) / f"{sweep_id}.json"


def write_manifest(results_dir: Path | str, manifest: dict) -> Path:
    path = manifest_path(results_dir, manifest["sweep_id"])
    atomic_write_text(path, json.dumps(manifest, indent=1) + "\n")
    return path


def read_manifests(results_dir: Path | str) -> list[dict]:
    """Every sweep manifest under results_dir, oldest first."""
    out = []
    for path in sorted(sweeps_dir(results_dir).glob("*.json")):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as e:
            print(f"warning: skipping unreadable sweep manifest {path}: {e}")
    return out


def find_manifest(results_dir: Path | str, sweep_id: str) -> dict:
    matches = [m for m in read_manifests(results_dir) if m["sweep_id"].startswith(sweep_id)]
    if len(matches) != 1:
        known = ", ".join(m["sweep_id"] for m in read_manifests(results_dir)) or "none"
        what = "no sweep" if not matches else f"{len(matches)} sweeps"
        raise KeyError(f"{what} in {sweeps_dir(results_dir)} matches '{sweep_id}' (known: {known})")
    return matches[0]


# ----------------------------------------------------------------------------------------------------------------
# The scheduler's view


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """sacct State of each job / array task (`123`, `123_4`) in one sacct call; {} if sacct cannot answer."""
    mains = sorted({str(j).split("_")[0] for j in job_ids if j})
    if not mains or shutil.which("sacct") is None:
        return {}
    try:
        res = subprocess.run(["sacct", "-X", "--parsable2", "-o", "JobID,State", "-j", ",".join(mains)],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if res.returncode != 0:
        return {}
    from submitit.slurm.slurm import SlurmInfoWatcher  # parses array ranges such as 123_[4-11%2]
    info = SlurmInfoWatcher().read_info(res.stdout)
    states = {job: (fields.get("State") or "UNKNOWN").split()[0] for job, fields in info.items()}  # "CANCELLED by 0"
    missing = [str(j) for j in job_ids if j and str(j) not in states]
    if missing:  # sacct reads slurmdbd, which can lag behind the controller: ask the controller about those
        states.update({j: s for j, s in _squeue_states(mains).items() if j in missing})
    return states


def _squeue_states(mains: list[str]) -> dict[str, str]:
    """State of the jobs (one line per array task) the controller still holds; {} if squeue cannot answer."""
    if shutil.which("squeue") is None:
        return {}
    try:
        res = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(mains)], capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if res.returncode != 0:  # e.g. every job id has left the controller
        return {}
    return dict(line.split("|", 1) for line in res.stdout.split() if "|" in line)


def _process_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:  # a finished child not yet reaped is a zombie: not alive
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        pass
    try:
        os.kill(pid, 0)
        return True
    except (OSError, ValueError):
        return False


def local_states(manifest: dict) -> dict[str, str]:
    """State of each local worker: FINISHED (submitit wrote its result), RUNNING, or DIED."""
    out = {}
    for job in manifest.get("jobs", []):
        if Path(job["result"]).exists():
            out[job["job_id"]] = "FINISHED"
        elif _process_alive(int(job["job_id"])):
            out[job["job_id"]] = "RUNNING"
        else:
            out[job["job_id"]] = "DIED"
    return out


def scheduler_states(manifests: list[dict]) -> dict[str, str]:
    """job id -> scheduler state for the jobs of these manifests (one sacct call for all SLURM sweeps)."""
    slurm_ids = [r["job_id"] for m in manifests if m["executor"] == "slurm" for r in m["runs"]]
    states = slurm_states(slurm_ids)
    for m in manifests:
        if m["executor"] == "local":
            states.update(local_states(m))
    return states


# ----------------------------------------------------------------------------------------------------------------
# Run states


@dataclass
class RunState:
    run: dict        # the manifest's entry for the run
    state: str       # done | running | pending | failed | unknown
    detail: str      # metric of a done run, error line of a failed one, scheduler state otherwise
    log: str | None  # the job's log file to read


def _error_line(rec: dict) -> str:
    return (rec.get("error") or "failed without an error message").strip().splitlines()[0]


def run_states(manifest: dict, states: dict[str, str] | None = None) -> list[RunState]:
    """The state of every run of a sweep, from its record and the scheduler's state of its job."""
    if states is None:
        states = scheduler_states([manifest])
    sweep_id, local = manifest["sweep_id"], manifest["executor"] == "local"
    # Arrays sacct knows about. A task it does not list although it lists its array was cancelled before
    # it started (SLURM keeps no accounting record of it): gone, not unknown.
    known_arrays = {j.split("_")[0] for j in states} if not local else set()
    out: list[RunState] = []
    lane_busy: set[str] = set()  # local workers / packed SLURM tasks whose current run has been found
    for run in manifest["runs"]:
        rec = read_record(Path(run["run_dir"]))
        ours = rec is not None and (rec.get("launch") or {}).get("sweep_id") == sweep_id
        job, sched = run["job_id"], states.get(run["job_id"])
        log = run.get("stderr")
        if local:
            active = sched == "RUNNING"
        else:
            active = sched in SLURM_ACTIVE
        if rec is not None and (ours or not active):
            if rec.get("status") == "ok":
                pm = rec.get("primary_metric")
                value = (rec.get("metrics") or {}).get(pm)
                detail = f"{pm}={value:.4f}" if isinstance(value, (int, float)) else "ok"
                if not ours:
                    detail += " (record from another launch)"
                out.append(RunState(run, "done", detail, log))
                continue
            if ours or sched in (None, "COMPLETED", "FINISHED"):
                out.append(RunState(run, "failed", _error_line(rec), log))
                continue
        if active:
            if local:
                state = "pending" if job in lane_busy else "running"
                lane_busy.add(job)
                out.append(RunState(run, state, f"worker {job} {'busy' if state == 'pending' else 'running it'}", log))
            elif SLURM_ACTIVE[sched] == "running" and job in lane_busy:  # a packed task runs its runs in order
                out.append(RunState(run, "pending", f"waits in running task {job}", log))
            else:
                lane_busy.add(job)
                out.append(RunState(run, SLURM_ACTIVE[sched], f"{sched} (job {job})", log))
        elif sched is None and job.split("_")[0] in known_arrays:
            out.append(RunState(run, "failed", f"job {job} is gone from the scheduler without writing a record "
                                "(cancelled before it started)", log))
        elif sched is None:
            out.append(RunState(run, "unknown", "the scheduler has no information about this job", log))
        else:
            why = f"job {job} ended {sched} without writing a record"
            if rec is not None:  # an older failed record
                why += f"; an earlier attempt failed with: {_error_line(rec)}"
            out.append(RunState(run, "failed", why, log))
    return out


def in_flight(results_dir: Path | str, run_dirs: set[str]) -> dict[str, tuple[str, str, str]]:
    """Runs among run_dirs still queued or running in an earlier sweep: run dir -> (sweep id, job id, state)."""
    manifests = [m for m in read_manifests(results_dir) if any(r["run_dir"] in run_dirs for r in m["runs"])]
    if not manifests:
        return {}
    states = scheduler_states(manifests)
    out = {}
    for m in manifests:
        for s in run_states(m, states):
            if s.run["run_dir"] in run_dirs and s.state in ("pending", "running"):
                out[s.run["run_dir"]] = (m["sweep_id"], s.run["job_id"], s.state)
    return out


def count(states: list[RunState]) -> dict[str, int]:
    return {k: sum(s.state == k for s in states) for k in STATES}
