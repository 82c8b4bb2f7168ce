"""End to end on the mimic trees: one short `execute` per task, its metrics re-scored from predictions.csv by
independent code; and the CLI's single message when the real data is not there."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _task_trees import TINY, one_torch_thread
from sklearn.metrics import accuracy_score, f1_score

from harness.cli import main
from harness.config import compose_one
from harness.records import run_dir
from harness.runner import execute


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    with one_torch_thread():
        yield


def ccc_by_formula(y, p):
    """docs/datasets.md#metrics-ccc, population moments."""
    my, mp = y.mean(), p.mean()
    return 2 * ((y - my) * (p - mp)).mean() / (y.var() + p.var() + (my - mp) ** 2)


def run(task: str, tmp_path: Path, method: str = "kd") -> tuple[dict, pd.DataFrame]:
    cfg = compose_one([f"method={method}", f"task={task}", "task.source=mimic", *TINY[task],
                       f"cache_dir={tmp_path / 'cache'}", f"results_dir={tmp_path / 'results'}",
                       "train.max_epochs=2", "model.hidden=8", "model.layers=1", "progress=false"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        record = execute(cfg, raise_errors=True)
    return record, pd.read_csv(run_dir(cfg) / "predictions.csv")


def test_biovid_run_on_the_mimic_tree_rescored(tmp_path):
    record, pred = run("biovid", tmp_path)
    assert record["status"] == "ok" and record["data_source"] == "mimic"
    assert record["task_variant"] == "BL1 vs PA4, 5-fold by subject"
    assert record["privileged_modalities"] == ["physio"] and "split_audit" in record["data_info"]
    assert len(pred) == record["n_samples"]["test"] and pred.id.is_unique
    assert np.array_equal(pred[["prob_0", "prob_1"]].to_numpy().argmax(1), pred.y_pred)
    assert record["metrics"]["accuracy"] == pytest.approx(accuracy_score(pred.y_true, pred.y_pred))
    assert record["metrics"]["f1_macro"] == pytest.approx(f1_score(pred.y_true, pred.y_pred, average="macro"))
    assert set(pred.id.str.split("-").str[1]) <= {"BL1", "PA4"}
    assert np.array_equal(pred.y_true, (pred.id.str.split("-").str[1] == "PA4").astype(int))
    # the test-set CI resamples whole subjects (sample names are <subject>-<class>-<n>)
    ci = record["metrics_ci"]
    assert ci["unit"] == "subject" and ci["n_units"] == pred.id.str.split("-").str[0].nunique()


def test_affwild2_run_on_the_mimic_tree_rescored(tmp_path):
    record, pred = run("affwild2", tmp_path)
    assert record["status"] == "ok" and record["data_source"] == "mimic"
    # one row per valid frame of the official Validation_Set, labels as in the files
    root = Path(record["data_info"]["data_root"])
    truth = {}
    for path in (root / "ABAW Annotations" / "VA_Estimation_Challenge" / "Validation_Set").glob("*.txt"):
        va = pd.read_csv(path)
        for k, (v, a) in enumerate(va.to_numpy(), start=1):
            if v != -5:
                truth[f"{path.stem}:{k}"] = (v, a)
    assert pred.id.is_unique and set(pred.id) == set(truth)
    expect = np.array([truth[i] for i in pred.id])
    assert np.allclose(pred[["y_true_valence", "y_true_arousal"]].to_numpy(), expect, atol=1e-6)
    for dim in ("valence", "arousal"):
        assert record["metrics"][f"ccc_{dim}"] == pytest.approx(
            ccc_by_formula(pred[f"y_true_{dim}"].to_numpy(), pred[f"y_pred_{dim}"].to_numpy()), rel=1e-4)
    assert record["metrics"]["ccc_mean"] == pytest.approx(
        (record["metrics"]["ccc_valence"] + record["metrics"]["ccc_arousal"]) / 2)
    # the test-set CI resamples whole videos (a video's _left/_right tracks together), never frames
    videos = pred.id.str.split(":").str[0].str.replace(r"_(left|right)$", "", regex=True)
    ci = record["metrics_ci"]
    assert ci["unit"] == "video" and ci["n_units"] == videos.nunique() < pred.id.str.split(":").str[0].nunique()
    lo, hi = ci["ccc_mean"]
    assert lo < hi


def test_cli_without_data_fails_with_one_message(tmp_path, capsys):
    code = main(["run", "method=kd", "task=affwild2", f"task.data_root={tmp_path / 'Aff-Wild2'}",
                 f"results_dir={tmp_path / 'r'}", f"cache_dir={tmp_path / 'c'}", "progress=false"])
    out = capsys.readouterr()
    text = out.out + out.err
    assert code == 2  # a data mistake: one message and no record (not even a failed one)
    assert not (tmp_path / "r").exists()
    assert text.count("no data at task.data_root=") == 1 and "Traceback" not in text
    assert "task.source=mimic" in text and "harness data mimic task=affwild2 out=DIR" in text


def test_cli_data_mimic_writes_a_tree_that_loads_as_mimic(tmp_path, capsys):
    out = tmp_path / "aw2"
    assert main(["data", "mimic", "task=affwild2", f"out={out}", *TINY["affwild2"]]) == 0
    assert "not real data" in capsys.readouterr().out
    from _task_trees import task_cfg

    from tasks.affwild2 import AffWild2
    task = AffWild2(task_cfg("affwild2", out, tmp_path / "cache", "task.source=real"))
    assert task.data_source == "mimic"  # the marker wins over source=real
    # a folder holding other files (maybe someone's real data) is never written into
    assert main(["data", "mimic", "task=affwild2", f"out={tmp_path}"]) == 2
    assert "is not empty and is not a mimic tree" in capsys.readouterr().err


def test_each_task_declares_its_independent_bootstrap_unit():
    """Subjects (BioVid, synthetic), videos (Aff-Wild2, MOSI, MOSEI), single samples (IEMOCAP, the default);
    per-step targets: every frame inherits its window's unit."""
    from harness.data import Split, TargetSpec
    from harness.predictions import prediction_rows
    from harness.registry import TASKS
    from harness.task import Task

    assert {name: cls.bootstrap_unit for name, cls in TASKS.items()} == {
        "synthetic": "subject", "biovid": "subject", "affwild2": "video", "mosi": "video", "mosei": "video",
        "iemocap": "sample", "lupi": "sample"}  # lupi: samples drawn i.i.d.
    split = Split(ids=np.array(["a", "b", "c"]), groups=np.array(["v1", "v2", "v1"]),
                  inputs={"x": np.zeros((3, 4, 1), np.float32)}, targets=np.zeros((3, 4, 1), np.float32),
                  target_mask=np.array([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0]], bool))
    task = Task({})
    assert task.bootstrap_units(split).tolist() == [0, 1, 2]
    task.bootstrap_unit = "video"
    per_frame = task.bootstrap_units(split)[prediction_rows(split, TargetSpec("regression", ("v",), per_step=True))]
    assert per_frame.tolist() == ["v1", "v1", "v2", "v1", "v1", "v1"]
