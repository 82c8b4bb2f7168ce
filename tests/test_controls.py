"""Privileged-information controls (harness/controls.py): what the method sees, keys, and that they measure
what they claim (a method beats its `zeros` control only when the privileged stream carries information)."""

from __future__ import annotations

import numpy as np
import pytest

from harness.controls import apply_privileged_control
from harness.data import Split
from harness.records import run_dir, run_key
from harness.registry import METHODS
from harness.runner import execute
from harness.task import TaskError


def _split(n=50, seed=0):
    rng = np.random.default_rng(seed)
    return Split(ids=np.array([f"x{i}" for i in range(n)]), groups=np.array(["g"] * n),
                 inputs={"visual": rng.normal(size=(n, 4, 3)).astype(np.float32),
                         "physio": rng.normal(size=(n, 4, 2)).astype(np.float32)},
                 targets=rng.normal(size=(n, 1)).astype(np.float32),
                 lengths={"physio": rng.integers(1, 5, n)})


def test_zeros_replaces_only_the_privileged_modalities():
    s = _split()
    c = apply_privileged_control(s, ("physio",), "zeros", seed=1)
    assert not c.inputs["physio"].any() and c.inputs["physio"].shape == s.inputs["physio"].shape
    assert c.inputs["visual"] is s.inputs["visual"] and c.targets is s.targets and (c.ids == s.ids).all()
    assert s.inputs["physio"].any()  # the original split is untouched


def test_shuffle_keeps_the_rows_but_breaks_the_pairing_with_the_same_permutation_for_lengths():
    s = _split()
    c = apply_privileged_control(s, ("physio",), "shuffle", seed=1)
    rows = {r.tobytes(): i for i, r in enumerate(s.inputs["physio"])}
    perm = np.array([rows[r.tobytes()] for r in c.inputs["physio"]])
    assert sorted(perm) == list(range(len(s)))  # the same rows: marginal statistics kept
    assert (perm == np.arange(len(s))).mean() < 0.2  # pairing with each sample broken
    assert (c.lengths["physio"] == s.lengths["physio"][perm]).all()  # lengths travel with their rows
    assert (c.inputs["visual"] == s.inputs["visual"]).all()
    again = apply_privileged_control(s, ("physio",), "shuffle", seed=1)
    assert (again.inputs["physio"] == c.inputs["physio"]).all()  # fixed by the seed
    other = apply_privileged_control(s, ("physio",), "shuffle", seed=2)
    assert not (other.inputs["physio"] == c.inputs["physio"]).all()


def test_none_is_the_identity_and_bad_controls_fail():
    s = _split()
    assert apply_privileged_control(s, ("physio",), "none", seed=0) is s
    with pytest.raises(TaskError, match="choose one of none, zeros, shuffle"):
        apply_privileged_control(s, ("physio",), "noise", seed=0)
    with pytest.raises(TaskError, match="no privileged modality"):
        apply_privileged_control(s, (), "zeros", seed=0)


@pytest.mark.parametrize("method", ["kd", "pkdot", "mtpkdot", "dmd"])
def test_every_distiller_sees_only_controlled_privileged_inputs(tiny_cfg, monkeypatch, method):
    """The runner applies the control before fit: whatever the method does with train/val, physio is zeros."""
    seen = {}
    cls = METHODS.get(method)
    real_fit = cls.fit

    def spy(self, train, val):
        seen["train"], seen["val"] = train.inputs["physio"].copy(), val.inputs["physio"].copy()
        return real_fit(self, train, val)

    monkeypatch.setattr(cls, "fit", spy)
    rec = execute(tiny_cfg(f"method={method}", "method.privileged_control=zeros"))
    assert rec["status"] == "ok", rec.get("traceback")
    assert not seen["train"].any() and not seen["val"].any()
    assert rec["privileged_control"] == "zeros"


def test_the_control_is_in_the_run_key_and_the_teacher_key(tiny_cfg):
    plain, zeros = tiny_cfg("method=kd"), tiny_cfg("method=kd", "method.privileged_control=zeros")
    assert run_key(plain) != run_key(zeros)
    assert run_key(tiny_cfg("method=kd", "method.privileged_control=none")) == run_key(plain)  # neutral at none
    a, b = execute(plain), execute(zeros)
    assert a["extra"]["teacher"]["store_path"] != b["extra"]["teacher"]["store_path"]
    assert b["extra"]["teacher"]["reused"] is False  # its own teacher, trained on zeros


def test_a_control_on_a_task_without_privileged_modalities_fails_in_one_line_before_anything_runs(tiny_cfg):
    cfg = tiny_cfg("method=kd", "task.protocol=full", "method.privileged_control=zeros")
    with pytest.raises(TaskError, match="nothing to control"):
        execute(cfg)
    assert not run_dir(cfg).exists()


# A linear kd (its default recipe: task loss + soft targets + features) whose teacher sees only x*, on
# Lopez-Paz et al.'s experiment 1 (x* = <α, x>, the clean label score: a privileged stream that carries the
# label) and on the same data with x* replaced by noise (task.privileged_signal=0). Budget training, 5 seeds.
LUPI_KD = ["task=lupi", "task.experiment=1", "task.n_test=2000", "model.encoder=linear", "train.optimizer=rmsprop",
           "train.lr=0.01", "train.weight_decay=0", "train.grad_clip=null", "train.stop=budget",
           "train.max_epochs=50", "train.batch_size=32", "train.drop_last=false", "method=kd",
           "teacher.modalities=privileged", "progress=false",
           "stats.bootstrap_resamples=0"]  # the test compares seeds, not one run's CI (the bootstrap was 2/3 of its time)
SEEDS = range(5)


def _kd_vs_zeros(tmp_path, signal: float):
    from scipy import stats as sps
    from harness.config import compose_one
    from harness.leaderboard import collect, compare
    results = tmp_path / f"signal{signal}"
    acc = {}
    for control in ("none", "zeros"):
        for seed in SEEDS:
            rec = execute(compose_one([*LUPI_KD, f"task.privileged_signal={signal}", f"seed={seed}",
                                       f"method.privileged_control={control}", f"results_dir={results}",
                                       f"cache_dir={tmp_path / 'cache'}"]))
            assert rec["status"] == "ok", rec.get("traceback")
            acc[control, seed] = rec["metrics"]["accuracy"]
    cmp = compare(collect(results))
    row = cmp[cmp.reference == "PI zeros"]
    assert len(row) == 1 and row.iloc[0].method == "kd" and row.iloc[0].n == len(SEEDS)
    row = row.iloc[0]
    # the leaderboard's paired comparison, against scipy's paired t-test on the records' accuracies
    method, control = [acc["none", s] for s in SEEDS], [acc["zeros", s] for s in SEEDS]
    ref = sps.ttest_rel(method, control)
    assert row["mean"] == pytest.approx(np.mean(np.subtract(method, control)), abs=1e-12)
    assert row.p_t == pytest.approx(ref.pvalue, rel=1e-9)
    return row


@pytest.mark.slow
def test_a_method_beats_its_zeros_control_only_when_the_privileged_stream_carries_the_label(tmp_path):
    planted = _kd_vs_zeros(tmp_path, 1.0)
    assert planted["mean"] > 0.05 and planted.ci_low > 0 and planted.significant
    noise = _kd_vs_zeros(tmp_path, 0.0)
    assert abs(noise["mean"]) < 0.02 and noise.ci_low < 0 < noise.ci_high and not noise.significant
