"""Launchers without a cluster: presets, fast sweep composition, checkpoint resume, requeue bookkeeping,
run states of `harness status`, the teacher lock across processes, and submitit's LocalExecutor end to end.
The same code paths on a real SLURM cluster: tests/test_slurm.py (-m slurm)."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

import harness.training
from harness.cli import main
from harness.config import Composer, ConfigError, compose_one, expand
from harness.jobs import RunFailed, RunJob, check_launcher, max_array_size, pack_runs
from harness.launch import LaunchError, launch, plan_runs
from harness.leaderboard import collect
from harness.records import iter_records, read_record, run_dir
from harness.runner import execute
from harness.sweeps import read_manifests, run_states, slurm_states, write_manifest
from harness.validate import problems
from tests.conftest import TINY


class Preempted(BaseException):
    """Stands for the SystemExit submitit raises after a checkpoint: not an Exception, so no record is written."""


def preempt_after(monkeypatch, when):
    """Make the training loop's checkpoint save raise Preempted right after the save `when(path, state)` picks."""
    real = harness.training.atomic_torch_save

    def save(obj, path):
        real(obj, path)
        if when(Path(path), obj):
            monkeypatch.setattr(harness.training, "atomic_torch_save", real)
            raise Preempted(f"preempted after epoch {obj['epoch']}")
    monkeypatch.setattr(harness.training, "atomic_torch_save", save)


# ---------------------------------------------------------------------------------------------------------------
# Presets and composition


def test_launcher_presets_set_checkpointing_and_keep_the_run_key():
    inproc = compose_one(["method=student"])
    cpu = compose_one(["method=student", "hydra/launcher=slurm_cpu", "launcher.partition=debug", "launcher.mem_gb=3"])
    gpu = compose_one(["method=student", "launcher=slurm"])
    local = compose_one(["method=student", "launcher=local"])
    assert (cpu.launcher.name, cpu.launcher.partition, cpu.launcher.mem_gb) == ("slurm_cpu", "debug", 3)
    assert gpu.launcher.gpus_per_node == 1 and cpu.launcher.gpus_per_node == 0
    assert local.launcher.executor == "local"
    for cfg in (cpu, gpu, local):
        assert cfg.train.checkpoint is True and cfg.progress is False
    assert inproc.train.checkpoint is False
    # an explicit command-line value still wins over the preset
    assert compose_one(["launcher=slurm_cpu", "train.checkpoint=false"]).train.checkpoint is False
    # a run launched by SLURM is the same run as in-process: resume and the leaderboard see one run
    assert run_dir(inproc) == run_dir(cpu) == run_dir(gpu) == run_dir(local)


def test_compose_many_is_identical_to_composing_each_run():
    combos = expand(["method=student,kd", "seed=0,1", "train.lr=0.01", "+extra.note=x", "hydra/launcher=slurm_cpu",
                     "launcher.partition=debug"], multirun=True)
    combos += [["task.privileged=[physio,audio]", "~train.grad_clip"], ["launcher=local", "train.checkpoint=false"], []]
    with Composer() as c:
        full = [OmegaConf.to_container(c.compose(o)) for o in combos]
        fast = [OmegaConf.to_container(x) for x in c.compose_many(combos)]
        assert fast == full
        for bad in (["train.lrr=1"], ["seed=0", "+train.lr=3"], ["method=kdd"]):
            with pytest.raises(ConfigError) as slow_error:
                c.compose(bad)
            with pytest.raises(ConfigError) as fast_error:
                c.compose_many([bad])
            assert str(fast_error.value) == str(slow_error.value)


def test_plain_sweep_configs_equal_composed_ones_and_fall_back_where_they_must():
    combos = expand(["method=student,kd", "seed=0,1", "train.lr=0.01,1e30", "train.grad_clip=null",
                     "train.optimizer=sgd", "hydra/launcher=slurm_cpu", "launcher.partition=debug"], multirun=True)
    fallbacks = [
        ["task=lupi", "seed=7"],                           # lupi's task.repetition is ${seed}
        ["task=mosi", "cache_dir=/elsewhere"],             # mosi's feature_cache_dir is ${cache_dir}
        ["task=mosi", "method=dmd", "method.text_encoder=bert"],  # read by ${oc.select:method.text_encoder,...}
        ["+extra.note=x"], ["~train.grad_clip"], ["task.privileged=[physio,audio]"], ["train=null"],
        ["train.lr=${train.weight_decay}"],
    ]
    with Composer() as c:
        plain = c.compose_plain(combos + fallbacks)
        assert [data for data, _ in plain] == [OmegaConf.to_container(c.compose(o)) for o in combos + fallbacks]
        # the sweep's runs never built a DictConfig; each fallback was composed by Hydra's own override code
        assert [cfg is None for _, cfg in plain] == [True] * len(combos) + [False] * len(fallbacks)
        assert plain[0][0]["train"] is not plain[1][0]["train"]  # each run its own copy
        with pytest.raises(ConfigError, match="train.lrr"):
            c.compose_plain([["seed=1"], ["train.lrr=1"]])


def test_a_planned_run_builds_its_dictconfig_only_when_asked(tmp_path):
    (run,) = plan_runs(["method=student", "seed=3", f"results_dir={tmp_path}"], multirun=False)
    assert run._cfg is None and run.folder == run_dir(compose_one(["method=student", "seed=3",
                                                                    f"results_dir={tmp_path}"]))
    assert run.cfg.seed == 3 and OmegaConf.is_struct(run.cfg) and OmegaConf.to_container(run.cfg) == run.config


def test_launch_runs_in_process_only_and_leaves_jobs_to_the_job_side(tmp_path):
    """launch() is the in-process executor; a submitting launcher is harness.jobs.submit_jobs' (the commands choose
    by submits_jobs): launch() refuses it before anything runs or is written."""
    runs = plan_runs(["method=student", "launcher=local", f"results_dir={tmp_path}"], multirun=False)
    with pytest.raises(ValueError, match="launcher=local submits jobs: harness.jobs.submit_jobs sends them"):
        launch(runs, runs[0].cfg.launcher)
    assert list(tmp_path.iterdir()) == []


def test_check_launcher_rejects_what_cannot_work(monkeypatch):
    # A time limit shorter than the checkpoint signal is a config value problem: the schema's rule says it.
    assert problems(compose_one(["launcher=slurm_cpu", "launcher.timeout_min=2"])) == [
        ("launcher.timeout_min=2 is too short for launcher.signal_delay_s=120: the checkpoint signal would come "
         "before the run starts; use launcher.timeout_min >= 4 or lower launcher.signal_delay_s")]
    assert problems(compose_one(["launcher=slurm_cpu", "launcher.timeout_min=4"])) == []
    monkeypatch.setattr("harness.jobs.shutil.which", lambda name: f"/usr/bin/{name}")
    check_launcher(compose_one(["launcher=slurm_cpu"]).launcher)
    monkeypatch.setattr("harness.jobs.shutil.which", lambda name: None)
    with pytest.raises(LaunchError, match="needs SLURM"):
        check_launcher(compose_one(["launcher=slurm_cpu"]).launcher)


def test_cli_reports_a_missing_slurm_in_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr("harness.jobs.shutil.which", lambda name: None)
    code = main(["run", "-m", "method=student", "seed=0,1", "hydra/launcher=slurm", f"results_dir={tmp_path}"])
    assert code == 2
    assert "needs SLURM" in capsys.readouterr().err
    assert not (tmp_path / "_sweeps").exists()


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints: a resumed run equals an uninterrupted one


def test_resumed_training_equals_uninterrupted_training(tiny_cfg, tmp_path, monkeypatch):
    knobs = ["method=student", "train.checkpoint=true", "train.max_epochs=6", "train.patience=6"]
    ref_cfg = compose_one([*TINY, *knobs, f"results_dir={tmp_path}/ref", f"cache_dir={tmp_path}/c"])
    reference = execute(ref_cfg)
    cfg = tiny_cfg(*knobs)
    preempt_after(monkeypatch, lambda path, state: state["epoch"] == 2)
    with pytest.raises(Preempted):
        execute(cfg)
    folder = run_dir(cfg)
    assert read_record(folder) is None  # preempted: no record, the checkpoint of epoch 2 is there
    assert torch.load(folder / "checkpoint_student.pt", weights_only=True)["epoch"] == 2
    resumed = execute(cfg)
    assert resumed["status"] == "ok", resumed.get("traceback")
    assert resumed["extra"]["resumed_from_epoch"] == {"student": 3}
    assert [e["epoch"] for e in resumed["logs"]["student"]] == list(range(6))
    assert resumed["metrics"] == reference["metrics"]  # bit-identical: weights, optimizer and RNG streams restored
    pd.testing.assert_frame_equal(pd.read_csv(folder / "predictions.csv"), pd.read_csv(run_dir(ref_cfg) / "predictions.csv"))
    assert not list(folder.glob("checkpoint_*"))  # a finished run keeps no checkpoint


@pytest.mark.parametrize("selection_on", ["batch", "heldout_half"])
def test_a_resumed_mtpkdot_draws_the_same_held_out_halves_and_counts_every_epochs_choices(tiny_cfg, tmp_path,
                                                                                          monkeypatch, selection_on):
    # The teacher choices are counted per batch across epochs, and selection_on=heldout_half draws each batch's
    # halves from the method's own generator: both are the method's state, saved with the student's checkpoint.
    # Before, a resumed mtpkdot run failed (its per-epoch choice counts lost the epochs before the resume).
    knobs = ["method=mtpkdot", f"method.selection_on={selection_on}", "train.checkpoint=true", "train.max_epochs=5",
             "train.patience=5"]
    ref_cfg = compose_one([*TINY, *knobs, f"results_dir={tmp_path}/ref", f"cache_dir={tmp_path}/c"])
    reference = execute(ref_cfg)
    assert reference["status"] == "ok", reference.get("traceback")
    cfg = tiny_cfg(*knobs)
    preempt_after(monkeypatch, lambda path, state: path.name == "checkpoint_student.pt" and state["epoch"] == 2)
    with pytest.raises(Preempted):
        execute(cfg)
    resumed = execute(cfg)
    assert resumed["status"] == "ok", resumed.get("traceback")
    assert resumed["extra"]["resumed_from_epoch"] == {"student": 3}
    assert resumed["extra"]["teacher_choice"] == reference["extra"]["teacher_choice"]
    untimed = [[{k: v for k, v in e.items() if k != "seconds"} for e in r["logs"]["student"]] for r in (resumed, reference)]
    assert untimed[0] == untimed[1]  # every epoch's losses: the epochs after the resume trained on the same halves
    assert resumed["metrics"] == reference["metrics"]  # the same halves, weights and RNG streams: bit-identical


def test_a_checkpoint_taken_at_early_stopping_does_not_train_further(tiny_cfg, monkeypatch):
    # min_delta=10: no epoch beats epoch 0 by that much, so patience=2 stops training after epoch 2 of 8.
    knobs = ["method=student", "train.checkpoint=true", "train.max_epochs=8", "train.patience=2", "train.min_delta=10"]
    preempt_after(monkeypatch, lambda path, state: state["stop_reason"] == "patience")
    with pytest.raises(Preempted):
        execute(tiny_cfg(*knobs))
    resumed = execute(tiny_cfg(*knobs))
    assert [e["epoch"] for e in resumed["logs"]["student"]] == [0, 1, 2]


def test_a_teacher_preempted_inside_a_kd_run_resumes_from_the_store(tiny_cfg, tmp_path, monkeypatch):
    knobs = ["train.checkpoint=true", "train.max_epochs=5", "train.patience=5"]
    reference = execute(compose_one([*TINY, *knobs, "method=teacher", f"results_dir={tmp_path}/ref",
                                     f"cache_dir={tmp_path}/ref_cache"]))
    preempt_after(monkeypatch, lambda path, state: path.name == "checkpoint.pt" and state["epoch"] == 1)
    kd = tiny_cfg("method=kd", *knobs)
    with pytest.raises(Preempted):
        execute(kd)
    store_ckpts = list(Path(kd.cache_dir).glob("teachers/*/*/checkpoint.pt"))
    assert len(store_ckpts) == 1 and not list(run_dir(kd).glob("checkpoint_*"))  # in the store, not the kd run
    # Another run of the sweep needing the same teacher takes the lock next and continues that training.
    teacher = execute(tiny_cfg("method=teacher", *knobs))
    assert teacher["extra"]["resumed_from_epoch"] == {"teacher": 2}
    assert teacher["extra"]["teacher"]["reused"] is False
    assert teacher["metrics"] == reference["metrics"]
    assert not store_ckpts[0].exists()  # stored: the store's checkpoint is gone
    again = execute(kd)
    assert again["status"] == "ok" and again["extra"]["teacher"]["reused"] is True


# ---------------------------------------------------------------------------------------------------------------
# What runs inside a job


def _payload(cfg, overrides=()):
    return {"config": OmegaConf.to_container(cfg, resolve=True), "overrides": list(overrides),
            "run_dir": str(run_dir(cfg))}


def test_job_fails_when_a_run_fails_and_still_runs_the_others(tiny_cfg):
    # Run 1 diverges (a failed record), run 2 has a fold its task lacks (a config mistake: no folder, no
    # record), run 3 is fine: the job runs all three and fails naming both.
    diverge, bad, good = (tiny_cfg("method=student", "train.lr=1e30"), tiny_cfg("method=student", "fold=9"),
                          tiny_cfg("method=student", "fold=1"))
    job = RunJob([_payload(diverge, ["train.lr=1e30"]), _payload(bad, ["fold=9"]), _payload(good, ["fold=1"])],
                 "sweep-x", "local")
    with pytest.raises(RunFailed, match="2 of 3 runs failed.*(NaN|non-finite).*not run: fold=9 is out of range"):
        job()
    failed, ok = read_record(run_dir(diverge)), read_record(run_dir(good))
    assert failed["status"] == "failed" and ("NaN" in failed["error"] or "non-finite" in failed["error"])
    assert not run_dir(bad).exists()
    assert ok["status"] == "ok"
    for rec in (failed, ok):
        assert rec["launch"]["sweep_id"] == "sweep-x" and rec["launch"]["requeues"] == 0


def test_checkpoint_requeues_the_same_job_and_counts_it(tiny_cfg):
    cfg = tiny_cfg("method=student", "overwrite=true")
    job = RunJob([_payload(cfg, ["method=student"])], "sweep-y", "slurm_cpu", threads=1)
    job()  # the run finishes, then (say) the preemption signal comes before the job exits
    first = read_record(run_dir(cfg))
    delayed = job.checkpoint()
    assert delayed.function is job and job.requeues == 1
    requeued = pickle.loads(pickle.dumps(delayed.function))  # what submitit writes and the requeued job loads
    assert requeued.requeues == 1 and requeued.finished == [0]
    requeued()
    # overwrite=true, but this job already recorded the run: the requeued job keeps that record
    assert read_record(run_dir(cfg))["started_at"] == first["started_at"]
    assert read_record(run_dir(cfg))["launch"]["requeues"] == 0


def test_a_requeued_packed_task_skips_its_finished_runs_and_resumes_the_current_one(tiny_cfg, tmp_path,
                                                                                   monkeypatch):
    knobs = ["method=student", "train.checkpoint=true", "train.max_epochs=5", "train.patience=5"]
    cfgs = [tiny_cfg(*knobs, f"seed={seed}") for seed in range(3)]
    references = [execute(compose_one([*TINY, *knobs, f"seed={seed}", f"results_dir={tmp_path}/ref",
                                       f"cache_dir={tmp_path}/c"])) for seed in range(3)]
    job = RunJob([_payload(c, [f"seed={i}"]) for i, c in enumerate(cfgs)], "sweep-p", "slurm_cpu", threads=1)
    # The preemption signal comes while the second run trains, after its epoch 1.
    preempt_after(monkeypatch, lambda path, state: path.parent == run_dir(cfgs[1]) and state["epoch"] == 1)
    with pytest.raises(Preempted):
        job()
    first = read_record(run_dir(cfgs[0]))
    assert first["status"] == "ok" and read_record(run_dir(cfgs[1])) is None and read_record(run_dir(cfgs[2])) is None
    requeued = pickle.loads(pickle.dumps(job.checkpoint().function))  # what submitit writes and requeues
    summary = requeued()
    assert [s["status"] for s in summary] == ["ok"] * 3
    assert read_record(run_dir(cfgs[0]))["started_at"] == first["started_at"]  # finished before: not run again
    recs = [read_record(run_dir(c)) for c in cfgs]
    assert "resumed_from_epoch" not in recs[0]["extra"] and "resumed_from_epoch" not in recs[2]["extra"]
    assert recs[1]["extra"]["resumed_from_epoch"] == {"student": 2} and recs[1]["launch"]["requeues"] == 1
    assert [r["launch"]["position_in_task"] for r in recs] == [0, 1, 2]
    assert {r["launch"]["runs_in_task"] for r in recs} == {3}
    for rec, ref in zip(recs, references):  # each run equals its run alone, uninterrupted, in its own process order
        assert rec["metrics"] == ref["metrics"]


def _planned(tmp_path, *overrides):
    return plan_runs([*overrides, "hydra/launcher=slurm_cpu", f"results_dir={tmp_path}/results"], multirun=True)


def test_runs_per_task_packs_consecutive_runs(tmp_path):
    runs = _planned(tmp_path, "method=student", "seed=range(0,10)", "launcher.runs_per_task=3")
    groups, packing = pack_runs(runs, runs[0].cfg.launcher, tmp_path / "results")
    assert groups == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]] and packing["runs_per_task"] == 3


def test_runs_per_task_auto_packs_by_recorded_run_time(tmp_path):
    # Recorded: a student run takes 60 s (median of 50, 60, 70); kd has no record and falls back to run_minutes=2.
    for i, seconds in enumerate((50, 60, 70)):
        _write(tmp_path / "results" / "synthetic" / "student" / f"old{i}",
               {"status": "ok", "timings": {"total_s": seconds}})
    _write(tmp_path / "results" / "synthetic" / "student" / "failed", {"status": "failed", "timings": {"total_s": 1}})
    runs = _planned(tmp_path, "method=student,kd", "seed=range(0,5)", "launcher.runs_per_task=auto",
                    "launcher.target_task_minutes=5", "launcher.array_parallelism=2", "launcher.run_minutes=2")
    groups, packing = pack_runs(runs, runs[0].cfg.launcher, tmp_path / "results")
    # 5 x 60 s of student fill one 300 s task; kd runs (120 s) go two to a task.
    assert groups == [[0, 1, 2, 3, 4], [5, 6], [7, 8], [9]]
    assert packing["estimated_run_s"] == [60.0, 120.0]
    # A target beyond the sweep: still no fewer tasks than array_parallelism (900 s of runs over 2 slots).
    runs = _planned(tmp_path, "method=student,kd", "seed=range(0,5)", "launcher.runs_per_task=auto",
                    "launcher.target_task_minutes=50", "launcher.array_parallelism=2", "launcher.run_minutes=2")
    groups, _ = pack_runs(runs, runs[0].cfg.launcher, tmp_path / "results")
    assert groups == [[0, 1, 2, 3, 4, 5, 6], [7, 8, 9]]  # 5 x 60 + 2 x 120 = 540 >= 450: the first task closes


def test_runs_per_task_auto_without_a_duration_names_the_keys(tmp_path):
    runs = _planned(tmp_path, "method=student", "seed=0,1", "launcher.runs_per_task=auto")
    with pytest.raises(LaunchError,
                       match="task=synthetic method=student.*launcher.run_minutes=.*launcher.runs_per_task="):
        pack_runs(runs, runs[0].cfg.launcher, tmp_path / "results")


def test_packing_keys_are_checked_before_submission():
    assert problems(compose_one(["launcher=slurm_cpu", "launcher.runs_per_task=0"])) == [
        "launcher.runs_per_task=0: expected an integer >= 1 or auto"]
    assert problems(compose_one(["launcher=slurm_cpu", "launcher.runs_per_task=auto",
                                 "launcher.target_task_minutes=90"])) == [
        ("launcher.target_task_minutes=90 with launcher.runs_per_task=auto: expected < launcher.timeout_min=60 (each "
         "packed task would reach its time limit); lower launcher.target_task_minutes or raise launcher.timeout_min")]
    assert problems(compose_one(["launcher=slurm_cpu", "launcher.runs_per_task=8",
                                 "launcher.target_task_minutes=90"])) == []


def test_max_array_size_comes_from_the_key_or_scontrol(tmp_path, monkeypatch):
    launcher = compose_one(["launcher=slurm_cpu"]).launcher
    assert max_array_size(compose_one(["launcher=slurm_cpu", "launcher.max_array_size=4"]).launcher) == 4
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text("#!/bin/sh\nprintf 'MaxArraySizeX = 3\\nMaxArraySize            = 1001\\nMaxJobCount = 10000\\n'\n")
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    assert max_array_size(launcher) == 1001
    scontrol.write_text("#!/bin/sh\necho 'slurm_load_ctl_conf error' >&2; exit 1\n")
    with pytest.raises(LaunchError, match="launcher.max_array_size="):
        max_array_size(launcher)


# ---------------------------------------------------------------------------------------------------------------
# Run states (harness status) from records and scheduler states


def _write(folder: Path, rec: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    # with the identity every record the runner writes carries (harness/records.py check_record requires it)
    (folder / "record.json").write_text(json.dumps({"method": "student", "task": "synthetic", "fold": 0, "seed": 0,
                                                    **rec}))


def test_run_states_combine_records_and_the_scheduler(tmp_path):
    ok = {"status": "ok", "primary_metric": "ccc_mean", "metrics": {"ccc_mean": 0.25}, "launch": {"sweep_id": "S"}}
    bad = {"status": "failed", "error": "TaskError: fold=9 is out of range\nmore", "launch": {"sweep_id": "S"}}
    old_bad = {"status": "failed", "error": "ValueError: old", "launch": {"sweep_id": "OLD"}}
    cases = {  # name: (record, sacct state, expected state, detail must contain)
        "done": (ok, "COMPLETED", "done", "ccc_mean=0.2500"),
        "done_early": (ok, "COMPLETING", "done", "ccc_mean"),
        "failed": (bad, "FAILED", "failed", "TaskError: fold=9 is out of range"),
        "pending": (None, "PENDING", "pending", "PENDING"),
        "requeued": (None, "REQUEUED", "pending", "REQUEUED"),
        "running": (None, "RUNNING", "running", "RUNNING"),
        "retrying": (old_bad, "RUNNING", "running", "RUNNING"),  # an older failure, resubmitted: running again
        "killed": (None, "CANCELLED", "failed", "ended CANCELLED without writing a record"),
        "oom": (old_bad, "OUT_OF_MEMORY", "failed", "earlier attempt failed with: ValueError: old"),
    }
    runs, states = [], {}
    for i, (name, (rec, sched, _, _)) in enumerate(cases.items()):
        folder = tmp_path / name
        if rec is not None:
            _write(folder, rec)
        runs.append({"run_dir": str(folder), "job_id": f"7_{i}", "stderr": f"/logs/7_{i}.err", "overrides": []})
        if sched is not None:
            states[f"7_{i}"] = sched
    runs.append({"run_dir": str(tmp_path / "gone"), "job_id": "7_99", "overrides": []})  # cancelled while pending
    runs.append({"run_dir": str(tmp_path / "unknown"), "job_id": "8_0", "overrides": []})  # sacct knows nothing of 8
    cases["gone"] = (None, None, "failed", "gone from the scheduler")
    cases["unknown"] = (None, None, "unknown", "no information")
    got = run_states({"sweep_id": "S", "executor": "slurm", "runs": runs}, states)
    for s, (name, (_, _, want, detail)) in zip(got, cases.items()):
        assert (name, s.state) == (name, want)
        assert detail in s.detail, (name, s.detail)
    assert got[2].detail == "TaskError: fold=9 is out of range" and got[2].log == "/logs/7_2.err"


def test_a_task_sacct_does_not_list_yet_is_asked_of_the_controller(tmp_path, monkeypatch):
    """slurmdbd lags behind slurmctld: sacct lists task 7_1 but not yet the running 7_0. squeue (the controller)
    answers for 7_0, so the run is running, not "gone from the scheduler"."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, out in (("sacct", "JobID|State\n7_1|PENDING\n"), ("squeue", "7_0|RUNNING\n7_1|PENDING\n")):
        exe = bin_dir / name
        exe.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/{name}.args\nprintf '{out}'\n")
        exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    assert slurm_states(["7_0", "7_1"]) == {"7_0": "RUNNING", "7_1": "PENDING"}
    assert "-j 7" in (tmp_path / "squeue.args").read_text()
    runs = [{"run_dir": str(tmp_path / f"r{i}"), "job_id": f"7_{i}", "overrides": []} for i in range(2)]
    assert [s.state for s in run_states({"sweep_id": "S", "executor": "slurm", "runs": runs})] == ["running", "pending"]
    (bin_dir / "squeue").write_text("#!/bin/sh\nexit 1\n")  # the controller no longer holds it either: gone
    assert [s.state for s in run_states({"sweep_id": "S", "executor": "slurm", "runs": runs})] == ["failed", "pending"]


def test_a_packed_slurm_task_runs_its_runs_in_order(tmp_path):
    ok = {"status": "ok", "primary_metric": "acc", "metrics": {"acc": 1.0}, "launch": {"sweep_id": "P"}}
    _write(tmp_path / "a", ok)
    runs = [{"run_dir": str(tmp_path / n), "job_id": j, "overrides": []}
            for n, j in (("a", "9_0"), ("b", "9_0"), ("c", "9_0"), ("d", "9_1"), ("e", "9_1"))]
    got = run_states({"sweep_id": "P", "executor": "slurm", "runs": runs}, {"9_0": "RUNNING", "9_1": "PENDING"})
    assert [s.state for s in got] == ["done", "running", "pending", "pending", "pending"]
    assert got[2].detail == "waits in running task 9_0"
    got = run_states({"sweep_id": "P", "executor": "slurm", "runs": runs}, {"9_0": "FAILED", "9_1": "COMPLETED"})
    assert [s.state for s in got] == ["done", "failed", "failed", "failed", "failed"]


def test_local_worker_runs_its_share_in_order(tmp_path):
    ok = {"status": "ok", "primary_metric": "acc", "metrics": {"acc": 1.0}, "launch": {"sweep_id": "L"}}
    _write(tmp_path / "a", ok)
    runs = [{"run_dir": str(tmp_path / n), "job_id": "123", "overrides": []} for n in ("a", "b", "c")]
    got = run_states({"sweep_id": "L", "executor": "local", "runs": runs}, {"123": "RUNNING"})
    assert [s.state for s in got] == ["done", "running", "pending"]
    got = run_states({"sweep_id": "L", "executor": "local", "runs": runs}, {"123": "DIED"})
    assert [s.state for s in got] == ["done", "failed", "failed"]


# ---------------------------------------------------------------------------------------------------------------
# The leaderboard while a sweep runs


def test_leaderboard_reads_finished_records_only(tiny_cfg, tmp_path):
    cfg = tiny_cfg("method=student")
    assert execute(cfg)["status"] == "ok"
    results = Path(cfg.results_dir)
    write_manifest(results, {"sweep_id": "20260101-000000-abcd", "executor": "slurm", "runs": []})
    logs = results / "_sweeps" / "20260101-000000-abcd" / "logs"
    logs.mkdir(parents=True)
    (logs / "record.json").write_text("{not a record")  # at the depth of a record: must not be read
    running = results / "synthetic" / "kd" / "f0-s0-000000000000"
    running.mkdir(parents=True)
    (running / ".record.json.tmp4242").write_text('{"status": "ok", "metr')  # a record being written
    recs = iter_records(results)
    assert [r["_dir"] for r in recs] == [str(run_dir(cfg))]
    assert list(collect(results).method) == ["student"]


# ---------------------------------------------------------------------------------------------------------------
# One teacher for concurrent runs


def test_the_teacher_lock_lets_one_trainer_through(tmp_path):
    # Fast in-process check of the store's lock (threads hold separate lock files descriptors, like processes);
    # the test below does the same with two real processes and real teachers.
    import threading

    from harness.teachers import TeacherStore

    store, calls, barrier = TeacherStore(tmp_path / "teachers"), [], threading.Barrier(2)

    def train(module):
        calls.append(threading.get_ident())
        time.sleep(0.3)  # long enough for the other thread to be waiting on the lock
        return {"log": [{"epoch": 0}]}

    metas = []

    def ask():
        barrier.wait()
        metas.append(store.get_or_train({"task": "t", "fold": 0}, lambda: torch.nn.Linear(2, 1), train,
                                        torch.device("cpu"))[1])
    threads = [threading.Thread(target=ask) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert sorted(m["reused"] for m in metas) == [False, True]


def _kd_child(cfg: dict, barrier, out: str) -> None:
    import torch as _torch

    _torch.set_num_threads(1)
    from omegaconf import OmegaConf as _OC

    from harness.runner import execute as _execute

    barrier.wait()  # both ask the store at the same moment
    rec = _execute(_OC.create(cfg))
    Path(out).write_text(json.dumps({"status": rec["status"], "error": rec.get("error"),
                                     "teacher": rec.get("extra", {}).get("teacher"),
                                     "teacher_log": rec.get("logs", {}).get("teacher")}))


def test_two_processes_needing_one_teacher_train_it_once(tiny_cfg, tmp_path):
    cfgs = [tiny_cfg("method=kd", f"method.feature_weight={w}") for w in (0.5, 0.25)]  # two runs, one teacher key
    ctx = mp.get_context("fork")  # children inherit the imports (torch is single-threaded here: fork is safe)
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_kd_child, args=(OmegaConf.to_container(c, resolve=True), barrier,
                                                 str(tmp_path / f"out{i}.json"))) for i, c in enumerate(cfgs)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
        assert p.exitcode == 0
    outs = [json.loads((tmp_path / f"out{i}.json").read_text()) for i in range(2)]
    assert [o["status"] for o in outs] == ["ok", "ok"], outs
    assert sorted(o["teacher"]["reused"] for o in outs) == [False, True]  # trained by one, loaded by the other
    assert outs[0]["teacher"]["store_path"] == outs[1]["teacher"]["store_path"]
    assert outs[0]["teacher_log"] == outs[1]["teacher_log"]  # the loader reports the trainer's epoch log
    assert len(list(Path(cfgs[0].cache_dir).glob("teachers/*/*/teacher.pt"))) == 1


# ---------------------------------------------------------------------------------------------------------------
# submitit's LocalExecutor, end to end (background workers; the prompt returns at once)


def _wait_for_records(folders: list[Path], timeout: float) -> None:
    end = time.time() + timeout
    while time.time() < end and not all((f / "record.json").exists() for f in folders):
        time.sleep(0.5)


def _wait_for_workers(manifest: dict, timeout: float) -> None:
    end = time.time() + timeout
    while time.time() < end and not all(Path(j["result"]).exists() for j in manifest["jobs"]):
        time.sleep(0.5)


@pytest.mark.slow  # background workers importing torch: ~20 s on an idle 2-core machine
def test_local_launcher_sweep_status_and_resend(tmp_path, capsys):
    results = tmp_path / "results"
    # train.lr=1e30 diverges: a run that fails while training (a failed record), not a config mistake
    argv = ["run", "-m", "method=student", "train.lr=0.002,1e30", *TINY, "hydra/launcher=local",
            "launcher.parallelism=2", f"results_dir={results}", f"cache_dir={tmp_path / 'cache'}"]
    t0 = time.time()
    assert main(argv) == 0
    prompt_s = time.time() - t0
    (manifest,) = read_manifests(results)
    assert manifest["n_submitted"] == 2 and len(manifest["jobs"]) == 2 and manifest["executor"] == "local"
    assert prompt_s < 30  # returned without waiting for the runs (each needs a fresh Python with torch)
    # Sent again while both runs are still in flight: nothing is submitted twice.
    assert main(argv) == 0
    assert "not submitted twice" in capsys.readouterr().out and len(read_manifests(results)) == 1

    folders = [Path(r["run_dir"]) for r in manifest["runs"]]
    _wait_for_records(folders, timeout=240)
    _wait_for_workers(manifest, timeout=60)
    by_lr = {float(r["overrides"][1].removeprefix("train.lr=")): r for r in manifest["runs"]}
    good, bad = by_lr[0.002], by_lr[1e30]
    ok, failed = read_record(Path(good["run_dir"])), read_record(Path(bad["run_dir"]))
    assert ok["status"] == "ok" and ok["launch"]["sweep_id"] == manifest["sweep_id"]
    assert ok["launch"]["job_id"] == good["job_id"]
    assert failed["status"] == "failed" and ("NaN" in failed["error"] or "non-finite" in failed["error"])
    # The failed worker failed: submitit's log says so, not "completed successfully".
    err = Path(bad["stderr"]).read_text()
    assert "RunFailed" in err and "Submitted job triggered an exception" in err
    assert "Job completed successfully" not in Path(bad["stdout"]).read_text() + err
    assert "Job completed successfully" in Path(good["stdout"]).read_text() + Path(good["stderr"]).read_text()

    capsys.readouterr()
    assert main(["status", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "2 runs: 1 done, 0 running, 0 pending, 1 failed" in out
    assert "ValueError: Input contains NaN" in out and bad["stderr"] in out

    # Re-sent after the partial failure: only the failed run goes out.
    assert main(argv) == 0
    newest = read_manifests(results)[-1]
    assert newest["sweep_id"] != manifest["sweep_id"]
    assert (newest["n_submitted"], newest["n_skipped_recorded"]) == (1, 1)
    assert [r["overrides"][1] for r in newest["runs"]] == [bad["overrides"][1]]
    os.kill(int(newest["jobs"][0]["job_id"]), signal.SIGINT)  # it would fail the same way: stop the worker


def test_a_piped_local_sweep_returns_at_once_its_workers_writing_to_their_own_log(tmp_path):
    """`harness run -m ... launcher=local | tail` returns when the sweep is submitted: the worker (here held 60 s by
    a setup line) must not inherit the pipe, or the reader waits for the whole sweep (TimeoutExpired here)."""
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "harness", "run", "-m", "method=student", *TINY, "hydra/launcher=local",
           "launcher.parallelism=1", "launcher.setup=[sleep 60]", f"results_dir={results}",
           f"cache_dir={tmp_path / 'cache'}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=45, cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr
    (manifest,) = read_manifests(results)
    assert f"sweep {manifest['sweep_id']}: 1 run(s)" in done.stdout
    worker = int(manifest["jobs"][0]["job_id"])  # with setup lines, the shell that starts the worker
    try:
        log = Path(manifest["logs_dir"]) / "workers.log"
        assert os.readlink(f"/proc/{worker}/fd/1") == os.readlink(f"/proc/{worker}/fd/2") == str(log)
    finally:
        subprocess.run(["pkill", "-TERM", "-P", str(worker)], check=False)
        os.kill(worker, signal.SIGTERM)


def test_records_label_a_run_the_same_however_it_was_launched(tiny_cfg, tmp_path):
    from harness.leaderboard import write_leaderboard

    launch = ["hydra/launcher=slurm_cpu", "launcher.partition=debug", f"results_dir={tmp_path}/results",
              f"cache_dir={tmp_path}/cache", "train.checkpoint=true", "progress=false"]
    recs = {}
    for method in ("student", "kd"):
        cfg = tiny_cfg(f"method={method}", "train.checkpoint=true")
        RunJob([_payload(cfg, [f"method={method}", "seed=0", *launch])], "S", "slurm_cpu")()
        recs[method] = read_record(run_dir(cfg))
        assert recs[method]["overrides"] == []  # nothing here changes what the run computes
    assert execute(tiny_cfg("method=student"), ["method=student"])["skipped"]  # in-process: the same run
    text, _ = write_leaderboard(tmp_path / "results", tmp_path / "lb.md", None)
    delta = recs["kd"]["metrics"]["ccc_mean"] - recs["student"]["metrics"]["ccc_mean"]
    section = text.split("\n## synthetic")[1]  # the section's table, not the cross-task summary's
    kd_row = next(line for line in section.splitlines() if line.startswith("| kd"))
    assert f"{delta:+.3f}" in kd_row  # the student row is recognised as the lower bound


def test_describing_overrides_keep_only_what_changes_the_result():
    from harness.runner import describing_overrides

    given = ["method=kd", "seed=1", "fold=2", "task=synthetic", "method.temperature=2", "launcher=slurm_cpu",
             "launcher.partition=debug", "hydra/launcher=slurm", "results_dir=/x", "cache_dir=y",
             "train.checkpoint=true", "train.lr=0.1", "progress=false", "+extra=1", "task.target=classes",
             "overwrite=true", "task.data_root=/data"]
    assert describing_overrides(given) == ["method.temperature=2", "train.lr=0.1", "+extra=1", "task.target=classes"]
