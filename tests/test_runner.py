"""Runs and records: fields, independent re-scoring, resume, overwrite, failures, atomic writes."""

import json
import os

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score

from harness.records import read_record, run_dir
from harness.runner import execute

REQUIRED = ["schema_version", "run_key", "method", "task", "fold", "seed", "status", "metrics", "data_source",
            "config", "timings", "git", "packages", "host", "device", "logs", "data_fingerprint"]


def ccc_independent(t, p):
    # Lin's CCC written from np.cov with population normalisation (bias=True), not harness.metrics
    c = np.cov(t, p, bias=True)
    return 2 * c[0, 1] / (c[0, 0] + c[1, 1] + (t.mean() - p.mean()) ** 2)


def test_regression_run_record_and_independent_rescoring(tiny_cfg):
    cfg = tiny_cfg("method=kd")
    rec = execute(cfg)
    assert rec["status"] == "ok", rec.get("traceback")
    on_disk = read_record(run_dir(cfg))
    for key in REQUIRED:
        assert key in on_disk, key
    assert on_disk["data_source"] == "synthetic" and on_disk["schema_version"] == 1
    assert on_disk["run_key"].startswith("f0-s0-")
    assert {"teacher", "student"} <= set(on_disk["logs"])
    assert sum(e["selected"] for e in on_disk["logs"]["student"]) == 1
    pred = pd.read_csv(run_dir(cfg) / "predictions.csv")
    assert list(pred.columns) == ["id", "y_true_valence", "y_pred_valence", "y_true_arousal", "y_pred_arousal"]
    assert len(pred) == on_disk["n_samples"]["test"]
    v = ccc_independent(pred.y_true_valence.to_numpy(), pred.y_pred_valence.to_numpy())
    a = ccc_independent(pred.y_true_arousal.to_numpy(), pred.y_pred_arousal.to_numpy())
    assert on_disk["metrics"]["ccc_valence"] == pytest.approx(v, abs=1e-5)
    assert on_disk["metrics"]["ccc_mean"] == pytest.approx((v + a) / 2, abs=1e-5)
    assert on_disk["metrics"]["mae_mean"] == pytest.approx(
        np.mean([np.abs(pred.y_true_valence - pred.y_pred_valence).mean(),
                 np.abs(pred.y_true_arousal - pred.y_pred_arousal).mean()]), abs=1e-5)


def test_classification_run_probabilities_and_rescoring(tiny_cfg):
    cfg = tiny_cfg("method=student", "task.target=classes")
    rec = execute(cfg)
    assert rec["status"] == "ok", rec.get("traceback")
    pred = pd.read_csv(run_dir(cfg) / "predictions.csv")
    probs = pred[[f"prob_{k}" for k in range(5)]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(probs.argmax(1), pred.y_pred)
    assert rec["metrics"]["accuracy"] == pytest.approx(accuracy_score(pred.y_true, pred.y_pred))
    assert rec["metrics"]["f1_macro"] == pytest.approx(f1_score(pred.y_true, pred.y_pred, average="macro"))


def test_resume_skips_and_overwrite_recomputes(tiny_cfg):
    cfg = tiny_cfg("method=student")
    first = execute(cfg)
    again = execute(cfg)
    assert again.get("skipped") and again["started_at"] == first["started_at"]
    forced = execute(tiny_cfg("method=student", "overwrite=true"))
    assert not forced.get("skipped")
    # same seed, same config: the recomputed metrics are identical (deterministic seeding)
    assert forced["metrics"] == pytest.approx(first["metrics"])


def test_kd_result_does_not_depend_on_whether_the_teacher_was_cached(tiny_cfg):
    fresh = execute(tiny_cfg("method=kd"))
    assert fresh["extra"]["teacher"]["reused"] is False
    again = execute(tiny_cfg("method=kd", "overwrite=true"))
    assert again["extra"]["teacher"]["reused"] is True
    assert again["metrics"] == pytest.approx(fresh["metrics"])


def test_failed_run_writes_a_failed_record_and_a_rerun_retries(tiny_cfg, monkeypatch):
    import methods.student
    def boom(self, train, val):
        raise RuntimeError("planted failure")
    monkeypatch.setattr(methods.student.Student, "fit", boom)
    cfg = tiny_cfg("method=student")
    rec = execute(cfg)
    assert rec["status"] == "failed" and "planted failure" in rec["error"]
    assert read_record(run_dir(cfg))["status"] == "failed"
    assert not (run_dir(cfg) / "predictions.csv").exists()
    monkeypatch.undo()
    assert execute(cfg)["status"] == "ok"  # failed runs are never treated as done


def test_killed_write_leaves_no_partial_record(tiny_cfg, monkeypatch):
    cfg = tiny_cfg("method=student")
    real_replace = os.replace
    def crash(src, dst):
        if str(dst).endswith("record.json"):
            raise KeyboardInterrupt("killed while writing")
        return real_replace(src, dst)
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        execute(cfg)
    assert not (run_dir(cfg) / "record.json").exists()


def test_sweep_goes_on_after_a_failure(tiny_cfg, monkeypatch, capsys):
    import methods.kd
    from harness.cli import main
    def boom(self, train, val):
        raise ValueError("kd exploded")
    monkeypatch.setattr(methods.kd.KD, "fit", boom)
    root = tiny_cfg().results_dir
    from tests.conftest import TINY
    code = main(["run", "-m", "method=student,kd", "seed=0,1", f"results_dir={root}",
                 f"cache_dir={root}/../cache", *TINY])
    assert code == 1
    recs = [json.loads(p.read_text()) for p in sorted(__import__("pathlib").Path(root).glob("*/*/*/record.json"))]
    assert sorted((r["method"], r["status"]) for r in recs) == [("kd", "failed")] * 2 + [("student", "ok")] * 2
    assert all("kd exploded" in r["error"] for r in recs if r["status"] == "failed")


def test_record_carries_a_subject_bootstrap_ci_that_an_independent_bootstrap_reproduces(tiny_cfg):
    """metrics_ci: whole test subjects resampled, each resample re-scored; rebuilt here from predictions.csv
    with subjects read from the ids, CCC from np.cov and scipy's bootstrap, seeded as the record says."""
    from scipy.stats import bootstrap

    from harness.runner import derive_seed

    cfg = tiny_cfg("method=student", "task.n_subjects=20", "stats.bootstrap_resamples=300")
    rec = execute(cfg)
    assert rec["status"] == "ok", rec.get("traceback")
    ci = read_record(run_dir(cfg))["metrics_ci"]
    pred = pd.read_csv(run_dir(cfg) / "predictions.csv")
    subjects = pred.id.str.split("-").str[0]  # ids are <subject>-<sample>
    order = list(dict.fromkeys(subjects))  # units in order of first appearance, as harness.stats numbers them
    assert ci["unit"] == "subject" and ci["n_units"] == len(order) == 4 and ci["n_resamples"] == 300
    assert ci["seed"] == derive_seed(rec["run_key"], "bootstrap") and ci["method"] == "percentile"
    rows_of = [np.flatnonzero(subjects.to_numpy() == s) for s in order]

    def ccc_mean(units):
        r = np.concatenate([rows_of[u] for u in units])
        return np.mean([ccc_independent(pred[f"y_true_{d}"].to_numpy()[r], pred[f"y_pred_{d}"].to_numpy()[r])
                        for d in ("valence", "arousal")])

    ref = bootstrap((np.arange(len(order)),), ccc_mean, n_resamples=300, vectorized=False, method="percentile",
                    rng=np.random.default_rng(ci["seed"])).confidence_interval
    assert ci["ccc_mean"] == pytest.approx([ref.low, ref.high], abs=1e-5)  # predictions.csv keeps 7 digits
    assert ci["ccc_mean"][0] < ci["ccc_mean"][1]
    assert rec["timings"]["bootstrap_s"] > 0


def test_statistics_settings_change_neither_the_run_key_nor_the_row_label(tiny_cfg):
    from harness.records import config_id, run_key
    from harness.runner import describing_overrides

    base, other = tiny_cfg(), tiny_cfg("stats.bootstrap_resamples=7")
    assert run_key(other) == run_key(base) and config_id(other) == config_id(base)
    assert describing_overrides(["stats.bootstrap_resamples=7", "train.lr=0.01"]) == ["train.lr=0.01"]


def test_bootstrap_setting_checked_before_training_and_zero_turns_it_off(tiny_cfg):
    from harness.schema import ConfigError
    bad_cfg = tiny_cfg("method=student", "stats.bootstrap_resamples=-5")
    with pytest.raises(ConfigError, match="stats.bootstrap_resamples=-5"):
        execute(bad_cfg)
    assert not run_dir(bad_cfg).exists()  # nothing was trained or written
    off = execute(tiny_cfg("method=student", "stats.bootstrap_resamples=0", "overwrite=true"))
    assert off["status"] == "ok" and "metrics_ci" not in off and "bootstrap_s" not in off["timings"]


def test_log_every_thins_the_recorded_log_but_not_the_run(tiny_cfg):
    """log_every=k keeps epochs 0, k, 2k, ..., the selected and the last of each model; same run key and
    metrics as the full log (it is not part of what a run computes)."""
    from harness.records import run_key, thin_log
    full_cfg, thin_cfg = tiny_cfg("method=kd", "train.max_epochs=7"), tiny_cfg("method=kd", "train.max_epochs=7",
                                                                                 "log_every=3")
    assert run_key(full_cfg) == run_key(thin_cfg)
    full = execute(full_cfg)
    thin = execute(tiny_cfg("method=kd", "train.max_epochs=7", "log_every=3", "overwrite=true"))
    assert thin["metrics"] == full["metrics"] and thin["log_every"] == 3 and "log_every" not in full
    for model, rows in full["logs"].items():
        last = len(rows) - 1
        selected = [r["epoch"] for r in rows if r.get("selected")]
        expected = sorted({0, last, *selected, *range(0, last + 1, 3)})
        assert [r["epoch"] for r in thin["logs"][model]] == expected, model
        assert thin["logs"][model] == [rows[e] | {"seconds": thin["logs"][model][i]["seconds"]}
                                       for i, e in enumerate(expected)], model  # the same rows (but timings)
    assert thin_log([{"epoch": 0}], 5) == [{"epoch": 0}] and thin_log([], 5) == []


def test_save_predictions_false_writes_the_record_only_and_removes_an_earlier_file(tiny_cfg):
    from harness.records import run_key
    cfg = tiny_cfg("method=student")
    full = execute(cfg)
    folder = run_dir(cfg)
    assert (folder / "predictions.csv").exists() and "predictions_saved" not in full
    lean_cfg = tiny_cfg("method=student", "save_predictions=false", "overwrite=true")
    assert run_key(lean_cfg) == run_key(cfg)
    lean = execute(lean_cfg)
    assert not (folder / "predictions.csv").exists() and lean["predictions_saved"] is False
    assert lean["metrics"] == full["metrics"] and lean["metrics_ci"] == full["metrics_ci"]
    assert read_record(folder)["metrics"] == full["metrics"]
