"""A sweep under a storm of faults on the local SLURM cluster (scripts/slurm_up.sh; `python -m pytest -m slurm`).

20 runs, packed 4 to an array task (launcher.runs_per_task=4: 5 tasks, 2 at a time on the 2 CPUs). While they
run, the test SIGKILLs a random running task's Python (mid-run), `scancel`s another running task, preempts a
third with SIGUSR2 (submitit checkpoints and requeues it: it must skip its finished runs and resume the current
one) and restarts slurmd once. Then it re-sends the same command, which must send exactly the runs without an ok
record and finish them. Checked against independent sources: every record is valid JSON with status ok and the
metrics of the same config run undisturbed in this process; no temporary (half-written) file or checkpoint is
left; `harness status` agrees with sacct and the records. A summary (faults, runs recovered, wall time) is
printed. Budget: 5 minutes (about 3 here with a loaded machine). CHAOS_SEED=<int> replays a choice of victims.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from harness.cli import main
from harness.config import compose_one
from harness.runner import execute
from harness.sweeps import SLURM_ACTIVE, read_manifests

pytestmark = pytest.mark.slurm
ROOT = Path(__file__).resolve().parent.parent
# ~0.35 s an epoch here: a run trains ~3 s (plus ~5 s warm-up in a fresh process), long enough to be hit mid-run.
RUN = ["method=student", "model.hidden=16", "model.layers=1", "train.max_epochs=8", "train.patience=8",
       "stats.bootstrap_resamples=0", "progress=false"]
N_RUNS, PER_TASK, BUDGET_S = 20, 4, 300


@pytest.fixture(scope="module")
def partition() -> str:
    sys.path.insert(0, str(ROOT / "scripts"))
    from slurm_env import PARTITION, ensure_cluster

    ensure_cluster()
    return PARTITION


def sacct(arrays: list[str]) -> dict[str, str]:
    """Final or current state of every array task sacct lists (`12_3`; a one-task array is `12`), read raw."""
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(arrays)],
                         capture_output=True, text=True, check=True).stdout
    return {job: state.split()[0] for job, state in (line.split("|") for line in out.split("\n") if "|" in line)}


def task_python(job_id: str) -> int | None:
    """pid of the Python that runs array task `12_3` (the srun step; not srun itself, not the batch shell)."""
    array, _, index = job_id.partition("_")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if b"submitit.core._submit" not in argv or not Path(argv[0].decode()).name.startswith("python"):
                continue
            env = dict(e.split(b"=", 1) for e in (proc / "environ").read_bytes().split(b"\0") if b"=" in e)
        except OSError:
            continue
        if (env.get(b"SLURM_ARRAY_JOB_ID", b"").decode(), env.get(b"SLURM_ARRAY_TASK_ID", b"0").decode()) == \
                (array, index or "0"):
            return int(proc.name)
    return None


def checkpoint_epoch(run_dir: str) -> int:
    """Epoch of the run's training checkpoint (-1 if none); it must load: never half written."""
    path = Path(run_dir) / "checkpoint_student.pt"
    for _ in range(5):
        try:
            return int(torch.load(path, weights_only=True)["epoch"]) if path.exists() else -1
        except FileNotFoundError:  # finished and removed between exists() and load
            return -1
    return -1


def stop(pid: int) -> bool:
    """SIGSTOP pid and wait until every thread of it is stopped; False if it has ended."""
    def state(thread: Path) -> str:
        try:
            return (thread / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:  # a thread that ended
            return "T"

    try:
        os.kill(pid, signal.SIGSTOP)
        end = time.time() + 10
        while any(state(t) != "T" for t in Path(f"/proc/{pid}/task").iterdir()):
            assert time.time() < end, f"pid {pid} did not stop within 10 s of SIGSTOP"
            time.sleep(0.01)
    except (ProcessLookupError, FileNotFoundError):  # the process ended
        return False
    return True


def signal_pending(pid: int, signum: int) -> bool:
    """signum is pending on pid (sent, not yet handled: /proc/<pid>/status, process-wide or thread's own)."""
    masks = [int(line.split()[1], 16) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
             if line.startswith(("ShdPnd:", "SigPnd:"))]
    return any(mask & (1 << (signum - 1)) for mask in masks)


def has_record(run_dir: str) -> bool:
    return (Path(run_dir) / "record.json").exists()


def restart_slurmd() -> None:
    """Stop slurmd (running job steps survive it: slurmstepd), then start it again with scripts/slurm_up.sh."""
    pid = int(Path("/run/slurm/slurmd.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    end = time.time() + 30
    while Path(f"/proc/{pid}").exists() and time.time() < end:
        time.sleep(0.2)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMP_")}  # the node's CPUs, not this process's
    subprocess.run(["bash", str(ROOT / "scripts" / "slurm_up.sh")], check=True, capture_output=True, timeout=120,
                   env=env)
    assert "CPUs=1 " not in Path("/etc/slurm/slurm.conf").read_text() or os.cpu_count() == 1


def settled(manifest: dict) -> bool:
    """Every task of the sweep has ended for sacct (a pending task cancelled before it started is not listed)."""
    states = sacct(manifest["arrays"])
    return not set(states.values()) & set(SLURM_ACTIVE)


def wait_until(what: str, predicate, deadline: float) -> None:
    while not predicate():
        if time.time() > deadline:
            pytest.fail(f"chaos test: {what} did not happen within its budget")
        time.sleep(0.2)


def test_a_sweep_survives_a_storm_of_faults_and_one_resend_finishes_it(partition, tmp_path, capsys):
    t0 = time.time()
    deadline = t0 + BUDGET_S
    seed = int(os.environ.get("CHAOS_SEED", random.randrange(1 << 16)))
    rng = random.Random(seed)
    results = tmp_path / "results"
    argv = ["run", "-m", *RUN, f"seed=range(0,{N_RUNS})", "hydra/launcher=slurm_cpu", f"launcher.partition={partition}",
            f"launcher.runs_per_task={PER_TASK}", f"results_dir={results}", f"cache_dir={tmp_path / 'cache'}"]
    assert main(argv) == 0
    (sweep,) = read_manifests(results)
    assert sweep["n_submitted"] == N_RUNS and sweep["n_tasks"] == N_RUNS // PER_TASK
    tasks: dict[str, list[dict]] = {}
    for run in sweep["runs"]:
        tasks.setdefault(run["job_id"], []).append(run)
    faults: list[str] = []

    def running_mid_run(min_done: int = 0) -> list[str]:
        """Tasks now training a run past epoch 1 with at least min_done of their runs recorded."""
        out = []
        for job, runs in tasks.items():
            done = [r for r in runs if has_record(r["run_dir"])]
            current = next((r for r in runs if not has_record(r["run_dir"])), None)
            # epochs 2-5 of 8: a checkpoint to resume from, and about a second before the run ends (no race)
            if current is not None and len(done) >= min_done and 2 <= checkpoint_epoch(current["run_dir"]) <= 5 \
                    and task_python(job) is not None:
                out.append(job)
        return out

    def freeze_a_task(what: str, exclude: tuple[str, ...] = (), min_done: int = 0):
        """Stop (SIGSTOP) the Python of a random task training a run at epoch 2-5, with at least min_done of its runs
        recorded, and return (task, pid, current run, its checkpoint epoch, its recorded runs), read while it is
        stopped. A signal sent to it now waits, pending, until it is continued: it lands in that run however long
        its way through SLURM takes (an unfrozen run can finish first, and the test then checks the wrong thing)."""
        while True:
            candidates = [j for j in running_mid_run(min_done) if j not in exclude]
            if not candidates:
                if time.time() > deadline:
                    pytest.fail(f"chaos test: {what} did not happen within its budget")
                time.sleep(0.2)
                continue
            job = rng.choice(candidates)
            pid = task_python(job)
            if pid is None or not stop(pid):
                continue
            done = [r["run_dir"] for r in tasks[job] if has_record(r["run_dir"])]
            current = next((r for r in tasks[job] if not has_record(r["run_dir"])), None)
            epoch = checkpoint_epoch(current["run_dir"]) if current is not None else -1
            if current is not None and len(done) >= min_done and 2 <= epoch <= 5:
                return job, pid, current, epoch, done
            os.kill(pid, signal.SIGCONT)  # it moved on between the look and the stop: choose again

    # 1. SIGKILL the Python of a random running task, mid-run: its checkpoint must still load.
    killed, pid, killed_run, epoch, _ = freeze_a_task("a task training")
    os.kill(pid, signal.SIGKILL)
    assert checkpoint_epoch(killed_run["run_dir"]) == epoch >= 2  # whole after the kill (torch.load weights_only)
    faults.append(f"SIGKILL to the Python of task {killed} in its run {seed_of(killed_run)} "
                  f"(checkpoint of epoch {epoch})")

    # 2. scancel another task while it runs.
    wait_until("a second task training", lambda: [j for j in running_mid_run() if j != killed], deadline)
    cancelled = rng.choice([j for j in running_mid_run() if j != killed])
    subprocess.run(["scancel", cancelled], check=True)
    faults.append(f"scancel task {cancelled} while it ran")

    # 3. Preempt a third with SIGUSR2 after it has finished one run: the requeued task skips it, resumes the next.
    # Frozen until the signal has reached its Python, and slurmd is restarted only then: a signal still on its way
    # through slurmctld and slurmd, or one that lands after the run's record, would test nothing.
    preempted, pid, preempted_current, epoch, preempted_done = freeze_a_task(
        "a third task with a finished run", exclude=(killed, cancelled), min_done=1)
    try:
        sent = time.time()
        subprocess.run(["scancel", "--signal=USR2", preempted], check=True)
        wait_until(f"SIGUSR2 reaching the Python of task {preempted}", lambda: signal_pending(pid, signal.SIGUSR2),
                   deadline)
        arrived = time.time() - sent
    finally:
        os.kill(pid, signal.SIGCONT)
    faults.append(f"SIGUSR2 (preemption) to task {preempted} in its run {seed_of(preempted_current)} (checkpoint of "
                  f"epoch {epoch}), after {len(preempted_done)} of its runs; it reached the Python in {arrived:.1f} s")

    # 4. Restart slurmd while tasks run and the preempted one waits to be requeued.
    restart_slurmd()
    faults.append("slurmd restarted")

    # The undisturbed references, in this process with the jobs' thread count, while the sweep goes on.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = {}
        for s in range(N_RUNS):
            cfg = compose_one([*RUN, f"seed={s}", "train.checkpoint=true", f"results_dir={tmp_path / 'ref'}",
                               f"cache_dir={tmp_path / 'refc'}"])
            reference[s] = execute(cfg)["metrics"]
    finally:
        torch.set_num_threads(threads)

    wait_until("the first sweep's tasks ending", lambda: settled(sweep), deadline)
    first_states = sacct(sweep["arrays"])
    assert first_states.get(killed) == "FAILED" and first_states.get(cancelled) == "CANCELLED"
    assert first_states.get(preempted) == "COMPLETED"
    recovered_by_requeue = [read_record(preempted_current["run_dir"])]
    assert recovered_by_requeue[0]["launch"]["requeues"] == 1
    assert recovered_by_requeue[0]["extra"]["resumed_from_epoch"]["student"] >= 3
    for run_dir in preempted_done:  # recorded before the preemption: not run again by the requeued task
        assert read_record(run_dir)["launch"]["requeues"] == 0

    # Re-send the same command: exactly the runs without an ok record go out, and finish.
    missing = [r["run_dir"] for r in sweep["runs"] if (read_record(r["run_dir"]) or {}).get("status") != "ok"]
    lost = {job: sum(r["run_dir"] in missing for r in tasks[job]) for job in tasks}
    assert missing and killed_run["run_dir"] in missing
    assert main(argv) == 0
    resent = next(m for m in read_manifests(results) if m["sweep_id"] != sweep["sweep_id"])
    assert sorted(r["run_dir"] for r in resent["runs"]) == sorted(missing)
    wait_until("the re-sent sweep finishing", lambda: settled(resent) and all(has_record(d) for d in missing),
               deadline)
    killed_rec = read_record(killed_run["run_dir"])
    assert killed_rec["extra"]["resumed_from_epoch"]["student"] >= 3  # went on from the checkpoint the kill left

    # Every record: valid JSON, ok, the undisturbed metrics. Nothing half written or left behind.
    for run in sweep["runs"]:
        rec = json.loads((Path(run["run_dir"]) / "record.json").read_text())
        seed_of_run = rec["seed"]
        assert rec["status"] == "ok", rec.get("error")
        assert rec["metrics"] == reference[seed_of_run], (run["run_dir"], rec["launch"])
    leftovers = [str(p) for p in results.rglob("*")
                 if re.search(r"\.tmp\d+$", p.name) or p.name.startswith("checkpoint_")]
    assert leftovers == []

    # harness status agrees with sacct and the records, run by run.
    for manifest in (sweep, resent):
        states = sacct(manifest["arrays"])
        expected = {"done": 0, "failed": 0}
        for run in manifest["runs"]:
            rec = read_record(run["run_dir"])
            assert states.get(run["job_id"]) not in SLURM_ACTIVE
            if manifest is resent:
                assert states[run["job_id"]] == "COMPLETED" and rec["launch"]["sweep_id"] == resent["sweep_id"]
            if rec["launch"]["job_id"] == run["job_id"] and rec["launch"]["sweep_id"] == manifest["sweep_id"]:
                assert states[run["job_id"]] in ("COMPLETED", "FAILED", "CANCELLED")  # the task wrote it, then...
            if states.get(run["job_id"]) == "COMPLETED":  # a task that completed recorded every one of its runs
                assert rec["launch"]["job_id"] == run["job_id"]
            expected["done"] += 1  # every run has its ok record now (from this sweep or the re-send)
        capsys.readouterr()
        assert main(["status", "--results", str(results), "--sweep", manifest["sweep_id"]]) == 0
        out = capsys.readouterr().out
        assert f"{len(manifest['runs'])} runs: {expected['done']} done, 0 running, 0 pending, 0 failed" in out

    wall = time.time() - t0
    with capsys.disabled():
        print(f"\nchaos summary (CHAOS_SEED={seed}): {len(faults)} faults injected:")
        for f in faults:
            print(f"  - {f}")
        print(f"  runs recovered: {len(missing)} by the re-send (without an ok record after the storm: {lost[killed]} "
              f"of the SIGKILLed task, {lost[cancelled]} of the cancelled one, "
              f"{len(missing) - lost[killed] - lost[cancelled]} "
              f"others), 1 by the requeue of the preempted task (resumed at epoch "
              f"{recovered_by_requeue[0]['extra']['resumed_from_epoch']['student']}, {len(preempted_done)} finished "
              f"run(s) skipped); {N_RUNS} of {N_RUNS} records ok and equal to the undisturbed runs")
        print(f"  wall time: {wall:.0f} s (budget {BUDGET_S} s)")
    assert wall < BUDGET_S


def seed_of(run: dict) -> str:
    return next(o for o in run["overrides"] if o.startswith("seed="))


def read_record(run_dir: str) -> dict | None:
    path = Path(run_dir) / "record.json"
    return json.loads(path.read_text()) if path.exists() else None
