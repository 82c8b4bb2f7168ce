"""harness.api: the CLI's runs, sweeps, records and leaderboard from Python, through the CLI's own code path."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

import harness.launch
import harness.runner
from harness import api
from harness.cli import main
from harness.config import ConfigError
from harness.leaderboard import write_leaderboard
from harness.records import iter_records
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parent.parent


def where(tmp: Path) -> list[str]:
    return [f"results_dir={tmp / 'results'}", f"cache_dir={tmp / 'cache'}"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> Path:
    """student and kd, seeds 0 and 1, tiny: 4 records under <tmp>/results, made by api.sweep."""
    tmp = tmp_path_factory.mktemp("api_sweep")
    out = api.sweep(*TINY, *where(tmp), method=["student", "kd"], seed=[0, 1])
    assert (out.n_runs, out.n_launched, out.n_skipped) == (4, 4, 0)
    assert [r["status"] for r in out.records] == ["ok"] * 4
    return tmp


def test_keywords_and_nested_dicts_become_hydra_overrides():
    assert api.to_overrides("task=synthetic", method="kd", train={"lr": 0.001, "optimizer": "adam"}) == \
        ["task=synthetic", "method=kd", "train.lr=0.001", "train.optimizer=adam"]
    assert api.to_overrides(task={"name": "synthetic", "n_subjects": 10}, **{"model.hidden": 16}) == \
        ["task=synthetic", "task.n_subjects=10", "model.hidden=16"]
    assert api.to_overrides(seed=range(3), method=["student", "kd"], sweep=True) == ["seed=0,1,2", "method=student,kd"]
    assert api.to_overrides(task={"privileged": ["physio", "audio"]}) == ["task.privileged=[physio,audio]"]
    assert api.to_overrides(train={"grad_clip": None, "fused": True}) == ["train.grad_clip=null", "train.fused=true"]
    # Every value reads back as itself: strings Hydra would read otherwise are quoted.
    parser = OverridesParser.create()
    for value in ["classes", "/tmp/a b/results", "student,kd", "1", "true", "it's", "back\\slash", "${seed}", 0.001,
                  1e-5, -3, [1, "a b"]]:
        (override,) = api.to_overrides(key=value)
        assert parser.parse_override(override).value() == value, override


def test_run_returns_the_record_the_cli_writes_for_the_same_config(tmp_path, capsys):
    rec = api.run(*TINY, *where(tmp_path / "api"), method="student", task="synthetic", seed=1)
    assert main(["run", *TINY, *where(tmp_path / "cli"), "method=student", "task=synthetic", "seed=1"]) == 0
    (cli_rec,) = iter_records(tmp_path / "cli" / "results")
    assert rec["status"] == cli_rec["status"] == "ok"
    assert rec["metrics"] == cli_rec["metrics"] and rec["run_key"] == cli_rec["run_key"]
    assert rec["overrides"] == cli_rec["overrides"]
    (api_file,) = (tmp_path / "api" / "results").glob("*/*/*/record.json")
    assert rec == json.loads(api_file.read_text())  # the record as written to disk

    # The same run as Hydra strings and as nested keywords: the same run key, so it is not run again.
    mtime = api_file.stat().st_mtime_ns
    again = api.run("method=student", "seed=1", *where(tmp_path / "api"),
                    task={"name": "synthetic", "n_subjects": 10, "samples_per_subject": 12, "seq_len": 8},
                    train={"max_epochs": 3, "patience": 2}, model={"hidden": 16, "layers": 1}, progress=False)
    assert again == rec and api_file.stat().st_mtime_ns == mtime
    assert "already have a record" in capsys.readouterr().out


def test_a_run_that_fails_in_training_returns_its_failed_record(tmp_path, monkeypatch, capsys):
    from methods.student import Student

    def broken_fit(self, train, val):
        raise RuntimeError("boom")

    monkeypatch.setattr(Student, "fit", broken_fit)
    rec = api.run(*TINY, *where(tmp_path), method="student")
    assert rec["status"] == "failed" and rec["error"] == "RuntimeError: boom" and "metrics" not in rec
    assert "FAILED: RuntimeError: boom" in capsys.readouterr().out
    (file,) = (tmp_path / "results").glob("synthetic/student/*/record.json")
    assert json.loads(file.read_text()) == rec


@pytest.mark.parametrize("overrides,values,message", [
    (["train.lrr=0.1"], {}, "unknown config key 'train.lrr'; did you mean train.lr?"),
    ([], {"train": {"lr": "abc"}}, "train.lr='abc': expected a float > 0"),
    ([], {"method": "kdd"}, "unknown method 'kdd'; did you mean kd or dmd?"),
    ([], {"fold": 7}, "fold=7 is out of range for task 'synthetic'"),
    (["seed=0,1"], {}, "'seed=0,1' sweeps several values"),
])
def test_a_bad_override_raises_the_cli_error_and_writes_nothing(tmp_path, capsys, overrides, values, message):
    with pytest.raises(ConfigError) as raised:
        api.run(*overrides, *where(tmp_path), **values)
    assert message in str(raised.value)
    cli_args = overrides + api.to_overrides(**values)
    assert main(["run", *cli_args, *where(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"harness: error: {raised.value}"  # the CLI's very message
    assert not (tmp_path / "results").exists()


def test_a_bad_value_in_a_sweep_names_the_runs_that_have_it(tmp_path):
    with pytest.raises(ConfigError) as raised:
        api.sweep(*where(tmp_path), method="student", train={"lr": [0.001, "abc"]})
    assert raised.value.lines == ["train.lr='abc': expected a float > 0 (1 of 2 runs: train.lr=abc)",
                                  "nothing was run or submitted: 1 problem in 1 of 2 runs"]
    assert not (tmp_path / "results").exists()


def test_run_leaves_job_launchers_to_sweep(tmp_path):
    with pytest.raises(ValueError, match=r"use harness.api.sweep\(..., launcher='local'\)"):
        api.run(*TINY, *where(tmp_path), method="student", launcher="local")
    assert not (tmp_path / "results").exists()


def test_sweep_skips_recorded_runs_on_a_second_call(swept, monkeypatch):
    files = sorted((swept / "results").glob("*/*/*/record.json"))
    before = {f: f.stat().st_mtime_ns for f in files}

    def must_not_run(*args, **kwargs):
        raise AssertionError("a recorded run was run again")

    monkeypatch.setattr(harness.runner, "execute", must_not_run)  # the in-process launcher looks it up there
    out = api.sweep("method=student,kd", "seed=0,1", *TINY, *where(swept))
    assert (out.n_runs, out.n_launched, out.n_skipped) == (4, 0, 4)
    assert sorted(Path(d) / "record.json" for d in out.run_dirs) == files
    assert {r["run_key"] for r in out.records} == {json.loads(f.read_text())["run_key"] for f in files}
    assert {f: f.stat().st_mtime_ns for f in files} == before


def test_records_has_one_row_per_run_with_metrics_and_flattened_config(swept):
    runs = api.records(swept / "results")
    assert len(runs) == 4 and list(runs.columns[:len(api.RUN_COLUMNS)]) == list(api.RUN_COLUMNS)
    assert sorted(runs.method) == ["kd", "kd", "student", "student"]
    for row in runs.to_dict("records"):
        rec = json.loads((Path(row["path"]) / "record.json").read_text())
        for key in ("status", "method", "task", "task_variant", "seed", "fold", "data_source", "run_key"):
            assert row[key] == rec[key], key
        assert rec["metrics"] and all(row[f"metric.{k}"] == v for k, v in rec["metrics"].items())
        assert row["config.train.lr"] == rec["config"]["train"]["lr"] == 0.002
        assert row["config.train.max_epochs"] == 3 and row["config.task.n_subjects"] == 10
        assert row["config.task.privileged"] == rec["config"]["task"]["privileged"] == ["physio"]
        assert row["config.method.name"] == row["method"]
    assert runs["metric.ccc_mean"].dtype == float and runs.seed.tolist() == [0, 1, 0, 1]
    assert api.records(swept / "nothing here").empty


def test_records_keep_a_failed_run_without_metrics(swept, tmp_path):
    src = next((swept / "results").glob("synthetic/student/*/record.json"))
    rec = json.loads(src.read_text())
    rec.update(status="failed", error="RuntimeError: boom")
    rec.pop("metrics")
    failed = tmp_path / "results" / "synthetic" / "student" / "f0-s9-x" / "record.json"
    failed.parent.mkdir(parents=True)
    failed.write_text(json.dumps(rec))
    (row,) = api.records(tmp_path / "results").to_dict("records")
    assert row["status"] == "failed" and row["error"] == "RuntimeError: boom"
    assert "metric.ccc_mean" not in row and row["config.train.lr"] == 0.002


def test_leaderboard_has_the_numbers_of_the_markdown_and_the_csv(swept, tmp_path):
    board = api.leaderboard(swept / "results")
    text, summary = write_leaderboard(swept / "results", tmp_path / "lb.md", tmp_path / "lb.csv")
    # the summary the markdown is rendered from (summarise(collect(...))), with the comparisons joined
    pd.testing.assert_frame_equal(board[summary.columns], summary)
    csv = pd.read_csv(tmp_path / "lb.csv")
    assert list(csv.columns) == list(board.columns)
    assert board["mean"].tolist() == pytest.approx(csv["mean"].tolist())
    primary = board[board.metric == "ccc_mean"].set_index("method")
    for method in ("student", "kd"):
        m = primary.loc[method]
        assert m.n_runs == 2 and f"{m['mean']:.3f} ± {m['std']:.3f}" in text  # the markdown's cell
    kd = primary.loc["kd"]
    assert kd.vs_student_n == 2 and not math.isnan(kd.vs_student_delta)
    assert f"{kd.vs_student_delta:+.3f} [{kd.vs_student_ci_low:+.3f}, {kd.vs_student_ci_high:+.3f}]" in text
    assert api.leaderboard(tmp_path / "empty").empty


@pytest.mark.notebook
def test_the_quickstart_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    # The kernel imports this checkout's harness (not another install), single-threaded like the tests.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    notebook = nbformat.read(ROOT / "examples" / "quickstart.ipynb", as_version=4)
    assert not any(c.get("outputs") for c in notebook.cells if c.cell_type == "code"), "commit it without outputs"
    # timeout: a guard against a hung kernel only; the run time is measured, not asserted (tests are not timed)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    text = "".join(o.get("text", "") for o in outputs)
    assert "4 runs: 4 run now, 0 had a record, 0 failed" in text
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the plot
