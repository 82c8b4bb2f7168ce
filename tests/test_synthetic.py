"""The synthetic task: deterministic, grouped folds, and built like the real problem."""

import numpy as np
import pytest
from sklearn.linear_model import RidgeCV
from sklearn.metrics import r2_score

from harness.config import compose_one
from harness.registry import TASKS


def task(*overrides):
    return TASKS.get("synthetic")(compose_one(["task=synthetic", *overrides]).task)


def test_same_seed_same_data_other_seed_other_data():
    a, b = task().load_fold(0), task().load_fold(0)
    np.testing.assert_array_equal(a.train.inputs["visual"], b.train.inputs["visual"])
    c = task("task.data_seed=1").load_fold(0)
    assert not np.allclose(a.train.targets[:20], c.train.targets[:20])


@pytest.mark.parametrize("target", ["regression", "classes"])
def test_folds_are_subject_disjoint_and_cover_every_subject_once(target):
    t = task(f"task.target={target}")
    seen_test = []
    for fold in range(t.n_folds):
        d = t.load_fold(fold)
        tr, va, te = set(d.train.groups), set(d.val.groups), set(d.test.groups)
        assert not (tr & te) and not (va & te) and not (tr & va)
        seen_test += sorted(te)
    assert sorted(seen_test) == sorted({f"s{s:03d}" for s in range(t.cfg.n_subjects)})


def test_binary_classes_keep_lowest_and_highest_levels_balanced():
    t = task("task.target=classes", "task.n_classes=2")
    d = t.load_fold(0)
    y = np.concatenate([d.train.targets, d.val.targets, d.test.targets]).ravel()
    assert set(np.unique(y)) == {0, 1}
    # levels are quintiles of the score, so low and high are each 1/5 of all samples
    assert len(y) == pytest.approx(0.4 * t.cfg.n_subjects * t.cfg.samples_per_subject, abs=2)
    assert abs(y.mean() - 0.5) < 0.05


def test_privileged_modality_is_clean_and_visual_is_hard():
    """A linear read-out explains the labels from physio, not from the (nonlinearly mixed) visual stream."""
    d = task().load_fold(0)
    def r2(mod):
        x_tr = d.train.inputs[mod].mean(1)
        x_te = d.test.inputs[mod].mean(1)
        model = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(x_tr, d.train.targets)
        return r2_score(d.test.targets, model.predict(x_te))
    assert r2("physio") > 0.8
    assert r2("visual") < 0.3


def test_bad_config_names_the_key():
    from harness.task import TaskError
    with pytest.raises(TaskError, match="task.privileged"):
        task("task.privileged=[eeg]")
    with pytest.raises(TaskError, match="fold=7"):
        task().check_fold(7)
