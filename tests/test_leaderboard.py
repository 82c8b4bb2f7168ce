"""The leaderboard is a pure function of the records: check its numbers against pandas/numpy by hand."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.leaderboard import collect, render, summarise, write_leaderboard


def fake_record(root: Path, method, seed, fold, value, status="ok", bound="", error=None, cid="c1"):
    rec = {"schema_version": 1, "run_key": f"f{fold}-s{seed}-x", "config_id": cid, "method": method,
           "task": "synthetic", "task_variant": "valence/arousal regression", "fold": fold, "seed": seed,
           "status": status, "bound": bound, "primary_metric": "ccc_mean", "data_source": "synthetic",
           "overrides": [], "metrics": {} if status != "ok" else {"ccc_mean": value, "mae_mean": 1 - value}}
    if error:
        rec["error"] = error
    d = root / "synthetic" / method / rec["run_key"]
    d.mkdir(parents=True)
    (d / "record.json").write_text(json.dumps(rec))


def test_mean_std_delta_bounds_and_failures(tmp_path):
    vals = {"student": [0.2, 0.3, 0.4], "kd": [0.35, 0.45, 0.40], "teacher": [0.9, 0.95, 0.92]}
    bounds = {"student": "lower_bound", "teacher": "upper_bound", "kd": ""}
    for m, vs in vals.items():
        for s, v in enumerate(vs):
            fake_record(tmp_path, m, s, 0, v, bound=bounds[m])
    fake_record(tmp_path, "kd", 3, 0, None, status="failed", error="ValueError: boom")
    summary = summarise(collect(tmp_path))
    kd = summary[(summary.method == "kd") & (summary.metric == "ccc_mean")].iloc[0]
    assert kd["mean"] == pytest.approx(np.mean(vals["kd"]))
    assert kd["std"] == pytest.approx(np.std(vals["kd"], ddof=1))
    assert kd.n_runs == 3 and kd.n_failed == 1 and "boom" in kd.failed_runs
    text = render(summary, collect(tmp_path))
    assert f"{np.mean(vals['kd']):.3f} ± {np.std(vals['kd'], ddof=1):.3f}" in text
    assert f"+{np.mean(vals['kd']) - np.mean(vals['student']):.3f}" in text  # delta over the student
    assert "UPPER BOUND" in text and "lower bound" in text
    assert "f0-s3-x: ValueError: boom" in text
    assert "Synthetic data" in text
    # rows: lower bound first, upper bound last (the tasks' published numbers follow in their own table)
    section = text.split("## Published reference numbers")[0]
    lines = [l for l in section.splitlines() if l.startswith("| ") and "method" not in l]
    assert lines[0].startswith("| student") and lines[-1].startswith("| teacher")


def test_write_leaderboard_files(tmp_path):
    fake_record(tmp_path / "res", "student", 0, 0, 0.5, bound="lower_bound")
    text, _ = write_leaderboard(tmp_path / "res", tmp_path / "lb.md", tmp_path / "lb.csv")
    assert (tmp_path / "lb.md").read_text() == text
    csv = pd.read_csv(tmp_path / "lb.csv")
    assert set(csv.metric) == {"ccc_mean", "mae_mean"}


def test_empty_results(tmp_path):
    text, _ = write_leaderboard(tmp_path, tmp_path / "lb.md", None)
    assert "No records yet" in text


def test_row_labels_show_only_method_settings(tmp_path):
    fake_record(tmp_path, "student", 0, 0, 0.3, bound="lower_bound")
    fake_record(tmp_path, "kd", 0, 0, 0.4, cid="c2")
    rec_path = next(tmp_path.glob("synthetic/kd/*/record.json"))
    rec = json.loads(rec_path.read_text())
    rec["overrides"] = ["results_dir=/tmp/x", "task.source=mimic", "method.temperature=2", "train.lr=0.01"]
    rec_path.write_text(json.dumps(rec))
    text = render(summarise(collect(tmp_path)), collect(tmp_path))
    assert "| kd [method.temperature=2 train.lr=0.01]" in text
    assert "results_dir" not in text and "+0.100" in text


def test_frozen_text_note_sits_under_mmsa_sections_and_beside_published_numbers(tmp_path):
    """The harness feeds frozen BERT features; DMD* rows fine-tune BERT: every mosi section says so."""
    from harness.registry import TASKS

    fake_record(tmp_path, "dmd", 0, 0, 0.5)
    rec_path = next(tmp_path.glob("synthetic/dmd/*/record.json"))
    rec = json.loads(rec_path.read_text())
    rec.update(task="mosi", task_variant="aligned, frozen BERT features, protocol=full", data_source="mimic")
    (tmp_path / "mosi" / "dmd" / rec["run_key"]).mkdir(parents=True)
    (tmp_path / "mosi" / "dmd" / rec["run_key"] / "record.json").write_text(json.dumps(rec))
    fake_record(tmp_path, "student", 0, 0, 0.4)
    df = collect(tmp_path)
    text = render(summarise(df), df)
    note = TASKS.get("mosi").leaderboard_note
    assert "frozen BERT features" in note and "DMD*" in note
    mosi = text.split("## mosi")[1].split("## ")[0]
    synthetic = text.split("## synthetic")[1].split("## ")[0]
    assert f"Note: {note}" in mosi and "Note:" not in synthetic
    assert f"- mosi: {note}" in text.split("## Published reference numbers")[1]
