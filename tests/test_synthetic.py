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


def _ridge_r2(d, mod):
    x_tr, x_te = d.train.inputs[mod].mean(1), d.test.inputs[mod].mean(1)
    model = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(x_tr, d.train.targets)
    return r2_score(d.test.targets, model.predict(x_te))


def test_explained_label_noise_is_in_the_labels_and_in_physio_only():
    base, noisy = task().load_fold(0), task("task.explained_label_noise=0.5").load_fold(0)
    assert (noisy.train.inputs["visual"] == base.train.inputs["visual"]).all()  # the face does not show it
    added = noisy.train.targets - base.train.targets
    assert 0.4 < added.std() < 0.6  # the noise added to valence/arousal has the asked std
    # physio explains the noisier labels linearly as well as it explained the clean ones
    assert _ridge_r2(noisy, "physio") > 0.8


def test_labelled_per_subject_keeps_k_training_samples_per_subject_and_nothing_else_changes():
    base, few = task().load_fold(0), task("task.labelled_per_subject=3").load_fold(0)
    subjects, counts = np.unique(few.train.groups, return_counts=True)
    assert (counts == 3).all() and set(subjects) == set(base.train.groups)
    assert set(few.train.ids) <= set(base.train.ids)
    assert (few.val.ids == base.val.ids).all() and (few.test.ids == base.test.ids).all()
    from harness.task import TaskError
    with pytest.raises(TaskError, match="task.labelled_per_subject=0"):
        task("task.labelled_per_subject=0").load_fold(0)


def test_privileged_signal_zero_makes_physio_pure_noise():
    d = task("task.privileged_signal=0", "task.privileged_noise=1.0").load_fold(0)
    assert _ridge_r2(d, "physio") < 0.05
