"""The modality protocol of the non-MMSA tasks (synthetic, BioVid, Aff-Wild2): privileged (the student's
modalities at test, the default) or full (every modality at test), as the MMSA tasks' task.protocol."""

from __future__ import annotations

import numpy as np
import pytest
from _task_trees import one_torch_thread, shared_tree, task_cfg
from omegaconf import OmegaConf

from harness.config import compose_one
from harness.records import config_id, read_record, run_dir, run_key
from harness.registry import TASKS
from harness.runner import execute
from harness.task import TaskError


def synthetic(*overrides):
    return TASKS.get("synthetic")(compose_one(["task=synthetic", *overrides]).task)


def test_synthetic_full_protocol_keeps_every_modality_at_test():
    priv, full = synthetic(), synthetic("task.protocol=full", "task.privileged=[physio,audio]")
    assert priv.spec.student_modalities == ("visual",)
    assert full.spec.student_modalities == ("visual", "physio", "audio") == tuple(full.spec.modalities)
    assert priv.variant() == "valence/arousal regression"  # unchanged: old records keep their leaderboard rows
    assert full.variant().endswith("protocol=full (all modalities at test)")


def test_a_bad_protocol_names_the_key_and_the_choices():
    with pytest.raises(TaskError, match=r"task.protocol='teacher'.*privileged.*full"):
        synthetic("task.protocol=teacher")


def test_default_protocol_leaves_run_keys_of_older_records_unchanged():
    """Records written before the key existed carry no task.protocol; at its default it is out of the hash."""
    cfg = compose_one(["method=kd", "task=synthetic", "seed=3"])
    older = OmegaConf.create(OmegaConf.to_container(cfg))
    del older.task["protocol"]
    assert run_key(cfg) == run_key(older) and config_id(cfg) == config_id(older)
    full = compose_one(["method=kd", "task=synthetic", "seed=3", "task.protocol=full"])
    assert run_key(full) != run_key(cfg) and config_id(full) != config_id(cfg)


@pytest.mark.parametrize("task, key, student, privileged", [
    ("biovid", "modality_protocol", ("visual",), "physio"), ("affwild2", "protocol", ("visual",), "audio")])
def test_real_format_tasks_take_the_protocol(task, key, student, privileged, tmp_path):
    root = shared_tree(task)
    priv = TASKS.get(task)(task_cfg(task, root, tmp_path / "cache"))
    full = TASKS.get(task)(task_cfg(task, root, tmp_path / "cache", f"task.{key}=full"))
    assert priv.spec.student_modalities == student
    assert full.spec.student_modalities == tuple(full.spec.modalities) and privileged in full.spec.modalities
    assert full.variant() == priv.variant() + f", {key}=full (all modalities at test)"
    if task == "biovid":  # its task.protocol is the fold scheme and is untouched
        assert full.cfg.protocol == "group5" and full.n_folds == priv.n_folds


def test_a_full_protocol_run_feeds_every_modality_at_test(tmp_path, monkeypatch):
    """The runner hands predict() exactly the spec's test modalities: all of them under protocol=full."""
    from methods.student import Student

    seen = []
    original = Student.predict

    def spy(self, split):
        seen.append(sorted(split.inputs))
        return original(self, split)

    monkeypatch.setattr(Student, "predict", spy)
    cfg = compose_one(["method=student", "task=synthetic", "task.protocol=full", "task.n_subjects=10",
                       "task.samples_per_subject=12", "task.seq_len=8", "train.max_epochs=2", "model.hidden=8",
                       "model.layers=1", "progress=false", f"results_dir={tmp_path}", f"cache_dir={tmp_path / 'c'}"])
    with one_torch_thread():
        record = execute(cfg, raise_errors=True)
    assert record["student_modalities"] == ["visual", "physio"] and record["privileged_modalities"] == []
    assert seen and seen[-1] == ["physio", "visual"]
    assert read_record(run_dir(cfg))["task_variant"].endswith("protocol=full (all modalities at test)")
    assert np.isfinite(record["metrics"]["ccc_mean"])

