"""Live curves: the training loop's per-epoch log rows, written while a run trains (root key `logger`).

logger=none (the default) writes nothing. logger=tensorboard writes TensorBoard event files to
<run folder>/tensorboard/ (torch.utils.tensorboard.SummaryWriter); logger=mlflow writes one MLflow run to
the local file store <run folder>/mlruns/ (tracking URI file:<run folder>/mlruns). Either way a scalar is
tagged `<model>/<field>` (teacher/train_loss, student/val_mae...) with the epoch as its step, and holds
the number of the record's `logs[<model>][epoch][<field>]` (MLflow exactly; TensorBoard rounded to float32,
the only precision its scalars dashboard shows); the run's config goes in as text (TensorBoard) or as
params plus a config.yaml artifact (MLflow).

`logger` only watches a run: it is not part of the run key (harness/records.py NON_SEMANTIC_KEYS).
The libraries are optional (`pip install 'pkd-harness[live]'`) and imported only when selected;
`require_logger_library` is called before a run's folder exists, so a missing one is a one-line
config error and no record.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from harness.schema import ConfigError

LOGGERS = ("none", "tensorboard", "mlflow")
# What to pip install for each logger. The harness writes MLflow's file store through the client only, which
# mlflow-skinny has too; `pip install mlflow` brings the UI (`mlflow ui`) as well.
PIP_PACKAGE = {"tensorboard": "tensorboard", "mlflow": "mlflow"}
TENSORBOARD_DIR = "tensorboard"
MLFLOW_DIR = "mlruns"


def require_logger_library(kind: str) -> None:
    """Import the selected logger's library; a missing one is a ConfigError naming the pip package."""
    if kind == "none":
        return
    try:
        if kind == "tensorboard":
            import tensorboard  # noqa: F401 - SummaryWriter needs the tensorboard package behind it
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        elif kind == "mlflow":
            import mlflow  # noqa: F401
        else:
            raise ConfigError(f"logger={kind!r}: choose one of {', '.join(LOGGERS)}")
    except ImportError as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0]  # the message must stay one line
        raise ConfigError(f"logger={kind} needs the `{PIP_PACKAGE[kind]}` package, which could not be imported "
                          f"({reason}): pip install {PIP_PACKAGE[kind]}  (or pip install 'pkd-harness[live]')") from None


def epoch_scalars(entry: dict[str, Any]) -> dict[str, float]:
    """The numeric fields of one log row, by field name; a list of numbers (DMD's edges_homo) gives one
    scalar per element (`edges_homo/0`...). `epoch` is the step, not a value; flags and text are left out."""
    out: dict[str, float] = {}

    def add(name: str, value: Any) -> None:
        if isinstance(value, bool) or value is None:
            return
        if isinstance(value, (int, float)):
            out[name] = float(value)
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                add(f"{name}/{i}", v)
        elif isinstance(value, dict):
            for k, v in value.items():
                add(f"{name}/{k}", v)

    for key, value in entry.items():
        if key != "epoch":
            add(key, value)
    return out


def flat_config(config: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys (train.lr), lists as their text: MLflow params are flat strings."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_config(value, path + "."))
        else:
            out[path] = value
    return out


class LiveLogger:
    """logger=none: every call does nothing (the loop calls it unconditionally)."""

    kind = "none"

    def log_config(self, config: dict, run_key: str) -> None:
        pass

    def log_epoch(self, model: str, entry: dict[str, Any]) -> None:
        pass

    def close(self, status: str = "ok") -> None:
        pass


class TensorBoardLogger(LiveLogger):
    kind = "tensorboard"

    def __init__(self, run_folder: Path):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(log_dir=str(Path(run_folder) / TENSORBOARD_DIR))

    def log_config(self, config: dict, run_key: str) -> None:
        from torch.utils.tensorboard.summary import hparams
        # Markdown: indented lines are shown as code in TensorBoard's text tab.
        yaml_lines = OmegaConf.to_yaml(OmegaConf.create(config)).splitlines()
        self.writer.add_text("config", f"run key {run_key}\n\n" + "\n".join("    " + line for line in yaml_lines))
        # The HPARAMS tab: the session's start info only. Without an experiment summary TensorBoard builds the
        # table from every run's start info and takes every scalar tag as a metric (last value), so runs of a
        # sweep under results/ compare by config. (add_hparams would write a second run folder per call.)
        values = {k: v if isinstance(v, (int, float, str)) else str(v)
                  for k, v in flat_config(config).items() if v is not None}
        _, session_start, _ = hparams({**values, "run_key": run_key}, {})
        self.writer.file_writer.add_summary(session_start)

    def log_epoch(self, model: str, entry: dict[str, Any]) -> None:
        for field, value in epoch_scalars(entry).items():
            # A float32 scalar (the log's value rounded to float32): TensorBoard's scalars dashboard shows no
            # float64 ones (add_scalar's double_precision, tried with tensorboard 2.21: the dashboard is empty).
            self.writer.add_scalar(f"{model}/{field}", value, global_step=int(entry["epoch"]))
        self.writer.flush()  # live: visible after each epoch, not when the writer's queue happens to fill

    def close(self, status: str = "ok") -> None:
        self.writer.close()


class MlflowLogger(LiveLogger):
    kind = "mlflow"

    def __init__(self, run_folder: Path, experiment: str, run_name: str, fresh: bool = True):
        from mlflow.tracking import MlflowClient
        # MLflow 3 keeps its file store (a folder, no server, no database: one per run folder) behind an opt-in;
        # setdefault leaves a user's explicit MLFLOW_ALLOW_FILE_STORE=false in force.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        # A client with its own URI: no global mlflow state (set_tracking_uri) leaks into other runs of a process.
        self.client = MlflowClient(tracking_uri=f"file:{Path(run_folder).resolve() / MLFLOW_DIR}")
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found is not None else self.client.create_experiment(experiment)
        if fresh:  # runs of earlier attempts (see open_live_logger), deleted the MLflow way: hidden, not removed
            for earlier in self.client.search_runs([experiment_id]):
                self.client.delete_run(earlier.info.run_id)
        self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id

    def log_config(self, config: dict, run_key: str) -> None:
        from mlflow.entities import Param
        self.client.set_tag(self.run_id, "run_key", run_key)
        params = [Param(k, str(v)) for k, v in flat_config(config).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[start:start + 100])
        self.client.log_text(self.run_id, OmegaConf.to_yaml(OmegaConf.create(config)), "config.yaml")

    def log_epoch(self, model: str, entry: dict[str, Any]) -> None:
        from mlflow.entities import Metric
        step = int(entry["epoch"])
        # One timestamp for the row; MLflow keeps NaN (an undefined CCC) as NaN.
        now = int(time.time() * 1000)
        metrics = [Metric(f"{model}/{field}", value, now, step) for field, value in epoch_scalars(entry).items()]
        for start in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
            self.client.log_batch(self.run_id, metrics=metrics[start:start + 1000])

    def close(self, status: str = "ok") -> None:
        self.client.set_terminated(self.run_id, status="FINISHED" if status == "ok" else "FAILED")


def open_live_logger(cfg: DictConfig, run_folder: Path, run_key: str) -> LiveLogger:
    """The run's logger (a no-op one for logger=none), its config already logged. Resuming from a checkpoint, a
    TensorBoard run goes on in the same folder (a second event file); MLflow starts a second run in the store."""
    kind = str(OmegaConf.select(cfg, "logger", default="none"))
    if kind == "none":
        return LiveLogger()
    require_logger_library(kind)
    run_folder = Path(run_folder)
    # A run starting from scratch in a folder that has curves (a failed run retried, overwrite=true, a job killed
    # without checkpoints): they are of an earlier attempt, which the record no longer describes, and go. A run
    # resuming from a checkpoint keeps them: its log goes on from the earlier attempt's epochs.
    fresh = not any(run_folder.glob("checkpoint_*.pt"))
    if kind == "tensorboard":
        if fresh:
            shutil.rmtree(run_folder / TENSORBOARD_DIR, ignore_errors=True)
        logger: LiveLogger = TensorBoardLogger(run_folder)
    else:
        logger = MlflowLogger(run_folder, experiment=f"{cfg.task.name}/{cfg.method.name}", run_name=run_key,
                              fresh=fresh)
    try:
        logger.log_config(OmegaConf.to_container(cfg, resolve=True), run_key)
    except Exception:
        logger.close("failed")
        raise
    return logger
