"""SLURM sweeps for real, on the local single-node cluster (scripts/slurm_up.sh; partition `debug`, 2 CPUs,
so an array runs two tasks at a time). Run with `python -m pytest -m slurm` (root starts the cluster).

Covers: a 6-run sweep that completes with its records and a leaderboard (one job of it killed as a
"crash" and re-sent: only that run goes out again); a sweep with a failing run (failed record with the
error, the job FAILED in sacct, the others fine; re-sent: only the failed run goes out); a run preempted
with SIGUSR2 that is requeued and resumes from its checkpoint with the same result as an uninterrupted run
(the shared training loop's student, and DMD with its own loop).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.cli import main
from harness.config import compose_one
from harness.leaderboard import write_leaderboard
from harness.records import read_record
from harness.runner import execute
from harness.sweeps import SLURM_ACTIVE, read_manifests, run_states, slurm_states
from tests.conftest import TINY

pytestmark = pytest.mark.slurm
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def partition() -> str:
    sys.path.insert(0, str(ROOT / "scripts"))
    from slurm_env import PARTITION, ensure_cluster

    ensure_cluster()  # raises with the daemon's log when the cluster cannot start
    return PARTITION


def send(tmp_path: Path, partition: str, *overrides: str) -> dict | None:
    """`harness run -m ... hydra/launcher=slurm_cpu` (in this process); the new sweep's manifest, if any."""
    results = tmp_path / "results"
    before = {m["sweep_id"] for m in read_manifests(results)}
    assert main(["run", "-m", *overrides, "hydra/launcher=slurm_cpu", f"launcher.partition={partition}",
                 f"results_dir={results}", f"cache_dir={tmp_path / 'cache'}"]) == 0
    new = [m for m in read_manifests(results) if m["sweep_id"] not in before]
    return new[0] if new else None


def wait(manifest: dict, timeout: float = 600) -> list:
    """Poll until every run of the sweep is done or failed and its job has ended in sacct."""
    end = time.time() + timeout
    while True:
        states = run_states(manifest)
        jobs = slurm_states([r["job_id"] for r in manifest["runs"]])
        if all(s.state in ("done", "failed") for s in states) and not set(jobs.values()) & set(SLURM_ACTIVE):
            return states
        if time.time() > end:
            pytest.fail(f"sweep {manifest['sweep_id']} not finished after {timeout}s: "
                        + ", ".join(f"{s.run['job_id']} {s.state} {s.detail}" for s in states))
        time.sleep(2)


def final_sacct(job_ids: list[str], listed: list[str], timeout: float = 60) -> dict[str, str]:
    """sacct's states once every job of `listed` shows a final state there (slurmdbd can lag behind)."""
    end = time.time() + timeout
    while True:
        states = slurm_states(job_ids)
        if all(states.get(j) not in (None, *SLURM_ACTIVE) for j in listed) or time.time() > end:
            return states
        time.sleep(1)


def test_sweep_completes_with_records_and_leaderboard_and_resend_after_a_crash(partition, tmp_path, capsys):
    m = send(tmp_path, partition, "method=student,kd", "seed=0,1,2", *TINY)
    assert m["n_submitted"] == 6 and m["executor"] == "slurm"
    arrays = {r["job_id"].split("_")[0] for r in m["runs"]}
    assert len(arrays) == 1  # one sbatch: one job array for the sweep
    (array,) = arrays
    assert sorted(r["job_id"] for r in m["runs"]) == [f"{array}_{i}" for i in range(6)]
    # A "crash": the last task of the array is killed before it runs (two run at a time, it is still pending).
    crashed = m["runs"][5]
    subprocess.run(["scancel", crashed["job_id"]], check=True)
    states = wait(m)
    by_dir = {s.run["run_dir"]: s for s in states}
    assert by_dir[crashed["run_dir"]].state == "failed"
    # SLURM keeps no accounting record of an array task cancelled while pending: sacct does not list it.
    assert "gone from the scheduler without writing a record" in by_dir[crashed["run_dir"]].detail
    assert [s.state for s in states].count("done") == 5
    sacct = final_sacct([r["job_id"] for r in m["runs"]], [r["job_id"] for r in m["runs"][:5]])
    assert [sacct.get(r["job_id"]) for r in m["runs"]] == ["COMPLETED"] * 5 + [None]

    # Re-sent after the crash: only the missing run goes out.
    again = send(tmp_path, partition, "method=student,kd", "seed=0,1,2", *TINY)
    assert (again["n_submitted"], again["n_skipped_recorded"]) == (1, 5)
    assert [r["run_dir"] for r in again["runs"]] == [crashed["run_dir"]]
    assert [s.state for s in wait(again)] == ["done"]
    assert send(tmp_path, partition, "method=student,kd", "seed=0,1,2", *TINY) is None  # nothing left to send

    for run in m["runs"]:
        rec = read_record(Path(run["run_dir"]))
        assert rec["status"] == "ok" and rec["data_source"] == "synthetic"
        sweep = again if run is crashed else m
        want_job = sweep["runs"][0]["job_id"] if run is crashed else run["job_id"]
        assert rec["launch"]["sweep_id"] == sweep["sweep_id"] and rec["launch"]["job_id"] == want_job
        assert rec["launch"]["requeues"] == 0 and rec["config"]["train"]["checkpoint"] is True
        assert not list(Path(run["run_dir"]).glob("checkpoint_*"))
        assert Path(run["stdout"]).exists() or run is crashed
    _, summary = write_leaderboard(tmp_path / "results", tmp_path / "lb.md", tmp_path / "lb.csv")
    runs = summary.drop_duplicates("method").set_index("method")
    assert runs.loc["student", "n_runs"] == 3 and runs.loc["kd", "n_runs"] == 3
    assert runs.loc["student", "n_failed"] == 0 and runs.loc["kd", "n_failed"] == 0
    capsys.readouterr()
    assert main(["status", "--results", str(tmp_path / "results"), "--sweep", m["sweep_id"]]) == 0
    assert "6 runs: 6 done, 0 running, 0 pending, 0 failed" in capsys.readouterr().out


def test_a_failing_run_fails_alone_and_is_the_only_one_sent_again(partition, tmp_path, capsys):
    # train.lr=1e30 diverges while training: a failed record (a config mistake such as fold=9 is refused at
    # the prompt and never reaches the cluster: tests/test_schema.py)
    sweep = ("method=student", "train.lr=0.002,1e30", *TINY)
    m = send(tmp_path, partition, *sweep)
    states = {float(s.run["overrides"][1].removeprefix("train.lr=")): s for s in wait(m)}
    good, bad = 0.002, 1e30
    assert states[good].state == "done" and states[bad].state == "failed"
    assert "NaN" in states[bad].detail or "non-finite" in states[bad].detail
    job = {float(r["overrides"][1].removeprefix("train.lr=")): r for r in m["runs"]}
    ok, failed = read_record(Path(job[good]["run_dir"])), read_record(Path(job[bad]["run_dir"]))
    assert ok["status"] == "ok"
    assert failed["status"] == "failed" and failed["error"].split(":")[0] in states[bad].detail
    assert failed["launch"]["job_id"] == job[bad]["job_id"]
    # The job's own exit status says it failed; its log does not claim success.
    ids = [job[good]["job_id"], job[bad]["job_id"]]
    sacct = final_sacct(ids, ids)
    assert (sacct[job[good]["job_id"]], sacct[job[bad]["job_id"]]) == ("COMPLETED", "FAILED")
    log = Path(job[bad]["stderr"]).read_text() + Path(job[bad]["stdout"]).read_text()
    assert "RunFailed" in log and "Job completed successfully" not in log
    capsys.readouterr()
    assert main(["status", "--results", str(tmp_path / "results")]) == 0
    out = capsys.readouterr().out
    assert "2 runs: 1 done, 0 running, 0 pending, 1 failed" in out
    assert failed["error"].splitlines()[0] in out and job[bad]["stderr"] in out

    again = send(tmp_path, partition, *sweep)
    assert (again["n_submitted"], again["n_skipped_recorded"]) == (1, 1)
    assert [r["overrides"][1] for r in again["runs"]] == [job[bad]["overrides"][1]]
    subprocess.run(["scancel", again["runs"][0]["job_id"]], check=True)  # it would fail the same way


PREEMPTED = {
    # ~0.3 s per epoch here: long enough to be signalled mid-training.
    "student": ["model.hidden=16", "model.layers=1", "train.max_epochs=60", "train.patience=60"],
    # DMD's own loop and checkpoint (Adam, plateau schedule, accumulation groups, edge history); every epoch
    # runs (no early stop, no min_lr stop), ~1 s each.
    "dmd": ["task.n_subjects=10", "method.d=8", "method.heads=2", "method.layers=1", "method.training.max_epochs=30",
            "method.training.patience=30", "method.training.min_lr=0"],
}


def test_a_preempted_run_is_requeued_and_resumes_from_its_checkpoint(partition, tmp_path):
    """One run of each loop (the harness's, DMD's own), sent together so that SLURM's requeue delays (~30-60 s)
    overlap: each is preempted as soon as its checkpoint reaches epoch 2."""
    sweeps = {}
    for method, knobs in PREEMPTED.items():
        m = send(tmp_path / method, partition, f"method={method}", *knobs)
        (run,) = m["runs"]
        sweeps[method] = (m, run, Path(run["run_dir"]) / f"checkpoint_{method}.pt")
    waiting, end = set(PREEMPTED), time.time() + 300
    while waiting and time.time() < end:
        for method in sorted(waiting):
            _, run, ckpt = sweeps[method]
            if ckpt.exists() and torch.load(ckpt, weights_only=True)["epoch"] >= 2:
                subprocess.run(["scancel", "--signal=USR2", run["job_id"]], check=True)  # what a preemption sends
                waiting.discard(method)
        time.sleep(0.2)
    if waiting:
        pytest.fail("no checkpoint of epoch 2 after 300 s: "
                    + ", ".join(f"{method}, see {sweeps[method][1]['stderr']}" for method in sorted(waiting)))

    # While SLURM requeues them, the same runs uninterrupted, in this process, as the references.
    references = {method: execute(compose_one([f"method={method}", *knobs, "train.checkpoint=true", "progress=false",
                                               f"results_dir={tmp_path}/ref", f"cache_dir={tmp_path}/ref_cache"]))
                  for method, knobs in PREEMPTED.items()}

    for method, (m, run, _) in sweeps.items():
        epochs = int(next(k for k in PREEMPTED[method] if "max_epochs=" in k).split("=")[1])
        reference = references[method]
        assert [s.state for s in wait(m)] == ["done"], (method, Path(run["stderr"]).read_text()[-2000:])
        rec = read_record(Path(run["run_dir"]))
        assert rec["launch"]["requeues"] == 1 and rec["launch"]["slurm_restart_count"] == 1, method
        assert rec["extra"]["resumed_from_epoch"]["student"] >= 3, method
        assert [e["epoch"] for e in rec["logs"]["student"]] == list(range(epochs)), method
        assert rec["metrics"] == pytest.approx(reference["metrics"], abs=1e-6), method
        if method == "dmd":  # the learned edges' history goes on across the requeue, as in the uninterrupted run
            for unit in ("homo", "hetero"):
                got, want = (np.asarray(r["extra"]["dmd_edges"][unit]["per_epoch"]) for r in (rec, reference))
                assert got.shape == want.shape == (epochs, 1) and np.allclose(got, want, atol=1e-6)
            assert (Path(run["run_dir"]) / "dmd_edges.png").stat().st_size > 10_000
        history = subprocess.run(["sacct", "-D", "-X", "-n", "-P", "-o", "JobID,State", "-j", run["job_id"]],
                                 capture_output=True, text=True, check=True).stdout.split()
        assert any(line.endswith("|REQUEUED") for line in history) and history[-1].endswith("|COMPLETED"), method
        log = Path(run["stdout"]).read_text() + Path(run["stderr"]).read_text()
        assert "Caught signal SIGUSR2" in log and "this job is preempted" in log, method


def test_a_refused_submission_fails_in_one_line_and_leaves_nothing(partition, tmp_path, capsys):
    code = main(["run", "-m", "method=student", "seed=0,1", "hydra/launcher=slurm_cpu", "launcher.partition=nope",
                 f"results_dir={tmp_path}"])
    assert code == 2
    assert "the scheduler refused the sweep, nothing was submitted" in capsys.readouterr().err
    assert not list((tmp_path / "_sweeps").iterdir())


def test_packed_tasks_split_over_arrays_keep_each_run_apart(partition, tmp_path, capsys):
    # 6 runs, 2 to a task (3 tasks), at most 2 tasks an array (2 sbatch): the middle task runs a diverging run
    # (failed record), then a good one, which still runs and succeeds.
    sweep = ("method=student", "train.lr=1e30,0.002", "seed=0,1,2", "launcher.runs_per_task=2",
             "launcher.max_array_size=2", *TINY)
    m = send(tmp_path, partition, *sweep)
    assert (m["n_submitted"], m["n_tasks"], len(m["arrays"])) == (6, 3, 2)
    first, second = m["arrays"]
    tasks = [r["job_id"] for r in m["runs"]]
    assert tasks == [f"{first}_0", f"{first}_0", f"{first}_1", f"{first}_1", second, second]
    states = wait(m)
    diverging = [any(o.startswith("train.lr=") and float(o.split("=")[1]) > 1 for o in r["overrides"])
                 for r in m["runs"]]
    assert [s.state for s in states] == ["failed" if d else "done" for d in diverging]
    recs = [read_record(Path(r["run_dir"])) for r in m["runs"]]
    assert [(r["launch"]["job_id"], r["launch"]["position_in_task"], r["launch"]["runs_in_task"]) for r in recs] == \
        [(t, k % 2, 2) for k, t in enumerate(tasks)]
    assert [r["status"] for r in recs] == ["failed" if d else "ok" for d in diverging]
    # sacct: a task fails when one of its runs failed, completes when all did.
    sacct = final_sacct(tasks, tasks)
    assert [sacct[t] for t in dict.fromkeys(tasks)] == ["FAILED", "FAILED", "COMPLETED"]
    log = Path(m["runs"][2]["stdout"]).read_text()  # the mixed task: one log section per run, both ran
    assert log.index("==== [1/2] ") < log.index("  -> failed") < log.index("==== [2/2] ") < log.index("  -> ok")
    capsys.readouterr()
    assert main(["status", "--results", str(tmp_path / "results")]) == 0
    out = capsys.readouterr().out
    assert out.count(f"sweep {m['sweep_id']}") == 1 and f"job {first} {second}," in out
    assert "6 runs: 3 done, 0 running, 0 pending, 3 failed" in out
