"""Live curves (root key `logger`, harness/live.py): what TensorBoard and MLflow hold, read back with their own
readers, equals the record's per-epoch logs; logger=none writes nothing; the run key ignores the logger; a
missing library is a one-line config error; a failed run closes its logger and leaves other records alone."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

import methods.kd
import methods.student
from harness.live import LOGGERS, LiveLogger, TensorBoardLogger
from harness.records import config_id, read_record, run_dir, run_key
from harness.runner import execute
from harness.schema import ROOT, ConfigError

HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None
HAS_MLFLOW = importlib.util.find_spec("mlflow") is not None
needs_tensorboard = pytest.mark.skipif(not HAS_TENSORBOARD, reason="tensorboard is not installed "
                                                                  "(pip install 'pkd-harness[live]')")
needs_mlflow = pytest.mark.skipif(not HAS_MLFLOW, reason="mlflow is not installed (pip install 'pkd-harness[live]')")

NO_BOOTSTRAP = "stats.bootstrap_resamples=0"  # the CI's resamples are not what these tests look at


def expected_curves(log: list[dict]) -> dict[str, dict[int, float]]:
    """The curves a log should give, written from the log itself (not harness.live): every number of a row,
    a list of numbers one curve per element, by epoch."""
    curves: dict[str, dict[int, float]] = {}
    for entry in log:
        for key, value in entry.items():
            if key == "epoch" or isinstance(value, bool):
                continue
            items = enumerate(value) if isinstance(value, list) else [(None, value)]
            for i, v in items:
                name = key if i is None else f"{key}/{i}"
                curves.setdefault(name, {})[entry["epoch"]] = float(v)
    return curves


def as_float32(value: float) -> float:
    return float(np.float32(value))


def assert_same_curves(read: dict[str, dict[int, float]], logs: dict[str, list[dict]], models: tuple[str, ...],
                       stored_as=float):
    """Every curve of `models`' logs is in `read`, every epoch, each value the log's as the logger stores it
    (`stored_as`: TensorBoard's scalars are float32, MLflow's float64)."""
    assert set(models) <= set(logs)
    expected = {f"{model}/{name}": curve for model in models for name, curve in expected_curves(logs[model]).items()}
    assert {tag for tag in read if tag.split("/")[0] in models} == set(expected)
    for tag, curve in expected.items():
        assert set(read[tag]) == set(curve), tag  # every epoch, no other step
        for epoch, value in curve.items():
            got, value = read[tag][epoch], stored_as(value)
            assert got == value or (math.isnan(got) and math.isnan(value)), (tag, epoch, got, value)


def tensorboard_curves(run_folder: Path) -> tuple[dict[str, dict[int, float]], dict[str, str]]:
    """Scalars (by tag, by step) and text summaries of the run's TensorBoard event files, via EventAccumulator."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util
    acc = EventAccumulator(str(run_folder / "tensorboard"), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    curves, texts = {}, {}
    for tag in acc.Tags()["tensors"]:
        for event in acc.Tensors(tag):
            value = tensor_util.make_ndarray(event.tensor_proto)
            if value.dtype == object:
                texts[tag] = value.item().decode()
            else:
                curves.setdefault(tag, {})[event.step] = float(value.item())
    for tag in acc.Tags()["scalars"]:
        curves.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
    return curves, texts


def tensorboard_hparams(run_folder: Path):
    """The hparams (session start info) of the run's event files, as TensorBoard's HPARAMS tab reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2
    acc = EventAccumulator(str(run_folder / "tensorboard"))
    acc.Reload()
    content = acc.PluginTagToContent(metadata.PLUGIN_NAME)[metadata.SESSION_START_INFO_TAG]
    return plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams


def mlflow_runs(run_folder: Path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 reads its file store only when allowed
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=f"file:{run_folder / 'mlruns'}")
    experiments = client.search_experiments()
    return client, client.search_runs([e.experiment_id for e in experiments])


def mlflow_curves(client, run) -> dict[str, dict[int, float]]:
    return {key: {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
            for key in run.data.metrics}


@needs_tensorboard
def test_tensorboard_curves_equal_the_record_logs_of_both_models(tiny_cfg):
    cfg = tiny_cfg("method=kd", "logger=tensorboard", NO_BOOTSTRAP)
    rec = execute(cfg)
    assert rec["status"] == "ok", rec.get("traceback")
    on_disk = read_record(run_dir(cfg))
    curves, texts = tensorboard_curves(run_dir(cfg))
    assert len(on_disk["logs"]["teacher"]) == 3 and len(on_disk["logs"]["student"]) >= 2
    assert_same_curves(curves, on_disk["logs"], ("teacher", "student"), as_float32)
    assert "student/val_ccc_mean" in curves and "teacher/train_loss" in curves
    config_text = texts["config/text_summary"]
    assert rec["run_key"] in config_text and "logger: tensorboard" in config_text and "lr: 0.002" in config_text
    hparams = tensorboard_hparams(run_dir(cfg))
    assert hparams["train.lr"].number_value == 0.002 and hparams["method.name"].string_value == "kd"
    assert hparams["run_key"].string_value == rec["run_key"]
    assert hparams["task.privileged"].string_value == "['physio']"  # a list, as its text

    # A second run reusing the stored teacher (not trained in it) still shows the teacher's curves.
    cfg2 = tiny_cfg("method=kd", "logger=tensorboard", NO_BOOTSTRAP, "method.temperature=2.0")
    rec2 = execute(cfg2)
    assert rec2["status"] == "ok" and rec2["extra"]["teacher"]["reused"]
    curves2, _ = tensorboard_curves(run_dir(cfg2))
    assert_same_curves(curves2, read_record(run_dir(cfg2))["logs"], ("teacher", "student"), as_float32)


@needs_mlflow
def test_mlflow_metric_history_equals_the_record_logs(tiny_cfg, monkeypatch):
    cfg = tiny_cfg("method=kd", "logger=mlflow", NO_BOOTSTRAP)
    rec = execute(cfg)
    assert rec["status"] == "ok", rec.get("traceback")
    client, runs = mlflow_runs(run_dir(cfg), monkeypatch)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == rec["run_key"]
    assert run.data.tags["run_key"] == rec["run_key"]
    assert run.data.params["train.lr"] == "0.002" and run.data.params["logger"] == "mlflow"
    assert run.data.params["task.name"] == "synthetic" and run.data.params["method.name"] == "kd"
    assert "config.yaml" in [a.path for a in client.list_artifacts(run.info.run_id)]
    assert_same_curves(mlflow_curves(client, run), read_record(run_dir(cfg))["logs"], ("teacher", "student"))


def test_logger_none_writes_nothing_but_the_record(tiny_cfg):
    cfg = tiny_cfg("method=kd", NO_BOOTSTRAP)
    assert cfg.logger == "none"  # the default
    rec = execute(cfg)
    assert rec["status"] == "ok", rec.get("traceback")
    assert sorted(p.name for p in run_dir(cfg).iterdir()) == ["predictions.csv", "record.json"]


def test_the_logger_changes_no_run_key(tiny_cfg):
    keys = {kind: run_key(tiny_cfg("method=kd", f"logger={kind}")) for kind in ("none", "tensorboard", "mlflow")}
    assert len(set(keys.values())) == 1, keys
    ids = {config_id(tiny_cfg("method=kd", f"logger={kind}")) for kind in ("none", "tensorboard", "mlflow")}
    assert len(ids) == 1
    # so a finished run is found whatever logger it is asked again with: skipped, not recomputed
    rec = execute(tiny_cfg("method=student", NO_BOOTSTRAP))
    again = execute(tiny_cfg("method=student", NO_BOOTSTRAP, "logger=tensorboard"))
    assert again.get("skipped") and again["run_key"] == rec["run_key"]


def test_the_schema_allows_exactly_the_loggers_there_are():
    assert ROOT["logger"].choices == LOGGERS


def test_a_bad_logger_value_is_a_config_error(tiny_cfg):
    with pytest.raises(ConfigError, match="logger"):
        execute(tiny_cfg("method=student", "logger=wandb"))


@pytest.mark.parametrize("kind, module", [("tensorboard", "tensorboard"), ("mlflow", "mlflow")])
def test_a_missing_library_is_a_one_line_error_naming_the_package(tiny_cfg, monkeypatch, kind, module):
    monkeypatch.setitem(sys.modules, module, None)  # `import <module>` now raises ImportError, as when absent
    cfg = tiny_cfg("method=student", f"logger={kind}")
    with pytest.raises(ConfigError) as err:
        execute(cfg)
    message = str(err.value)
    assert f"pip install {module}" in message and "\n" not in message
    assert not run_dir(cfg).exists()  # raised before the run's folder is made: no record


@needs_tensorboard
def test_a_failed_run_closes_its_logger_and_leaves_other_records_intact(tiny_cfg, monkeypatch):
    done = tiny_cfg("method=kd", "seed=1", "logger=tensorboard", NO_BOOTSTRAP)
    assert execute(done)["status"] == "ok"
    before = (run_dir(done) / "record.json").read_bytes()

    closed: list[str] = []
    close = TensorBoardLogger.close

    def record_close(self, status="ok"):
        closed.append(status)
        close(self, status)

    def boom(self, split):
        raise RuntimeError("prediction failed after training")

    monkeypatch.setattr(TensorBoardLogger, "close", record_close)
    monkeypatch.setattr(methods.kd.KD, "predict", boom)
    cfg = tiny_cfg("method=kd", "seed=2", "logger=tensorboard", NO_BOOTSTRAP)
    rec = execute(cfg)
    assert rec["status"] == "failed" and "prediction failed" in rec["error"]
    assert closed == ["failed"]
    # the curves of what trained before the failure are there (a failed record keeps no logs to compare with)
    curves, _ = tensorboard_curves(run_dir(cfg))
    assert set(curves["teacher/train_loss"]) == {0, 1, 2} and 0 in curves["student/val_ccc_mean"]
    assert (run_dir(done) / "record.json").read_bytes() == before

    # Retried (no checkpoint: from scratch), the run's curves are those of the retry alone.
    monkeypatch.undo()
    assert execute(cfg)["status"] == "ok"
    assert len(list((run_dir(cfg) / "tensorboard").glob("events.out.tfevents.*"))) == 1
    curves, _ = tensorboard_curves(run_dir(cfg))
    assert_same_curves(curves, read_record(run_dir(cfg))["logs"], ("teacher", "student"), as_float32)


@needs_tensorboard
def test_a_run_resumed_from_its_checkpoint_keeps_the_curves_of_the_epochs_before(tiny_cfg, monkeypatch):
    def boom(self, split):
        raise RuntimeError("killed after training")

    cfg = tiny_cfg("method=student", "logger=tensorboard", "train.checkpoint=true", NO_BOOTSTRAP)
    monkeypatch.setattr(methods.student.Student, "predict", boom)
    assert execute(cfg)["status"] == "failed"
    assert (run_dir(cfg) / "checkpoint_student.pt").exists()
    monkeypatch.undo()
    rec = execute(cfg)  # resumes from the checkpoint of its last epoch: trains no further
    assert rec["status"] == "ok"
    assert len(list((run_dir(cfg) / "tensorboard").glob("events.out.tfevents.*"))) == 2
    curves, _ = tensorboard_curves(run_dir(cfg))
    assert_same_curves(curves, read_record(run_dir(cfg))["logs"], ("student",), as_float32)


@needs_mlflow
def test_a_failed_run_marks_its_mlflow_run_failed(tiny_cfg, monkeypatch):
    def boom(self, split):
        raise RuntimeError("prediction failed after training")

    monkeypatch.setattr(methods.kd.KD, "predict", boom)
    cfg = tiny_cfg("method=kd", "logger=mlflow", NO_BOOTSTRAP)
    assert execute(cfg)["status"] == "failed"
    _, runs = mlflow_runs(run_dir(cfg), monkeypatch)
    assert [r.info.status for r in runs] == ["FAILED"]
    monkeypatch.undo()
    rec = execute(cfg)  # retried from scratch: the failed attempt's MLflow run is deleted
    assert rec["status"] == "ok", rec.get("traceback")
    _, runs = mlflow_runs(run_dir(cfg), monkeypatch)
    assert [r.info.status for r in runs] == ["FINISHED"]


@needs_tensorboard
def test_dmd_trains_through_the_same_loop_with_its_edge_fields(tiny_cfg):
    cfg = tiny_cfg("method=dmd", "logger=tensorboard", NO_BOOTSTRAP)
    rec = execute(cfg)
    assert rec["status"] == "ok", rec.get("traceback")
    logs = read_record(run_dir(cfg))["logs"]
    curves, _ = tensorboard_curves(run_dir(cfg))
    assert_same_curves(curves, logs, tuple(logs), as_float32)
    # DMD's per-epoch edge weights (lists) are one curve per edge
    assert any(tag.startswith("student/edges_homo/") for tag in curves)
    assert any(tag.startswith("student/edges_hetero/") for tag in curves)


def test_the_default_logger_is_a_no_op():
    live = LiveLogger()
    live.log_config({"a": 1}, "key")
    live.log_epoch("student", {"epoch": 0, "train_loss": 1.0})
    live.close("failed")
