"""One run: (method, task, fold, seed, overrides) -> trained student -> scored test predictions -> record."""

from __future__ import annotations

import contextlib
import hashlib
import random
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from harness import RECORD_SCHEMA_VERSION, __version__
from harness.allocator import tune_allocator
from harness.controls import apply_privileged_control, check_privileged_control
from harness.data import FoldData
from harness.errors import DiskFullError
from harness.live import LiveLogger, open_live_logger, require_logger_library
from harness.method import Method, RunContext
from harness.predictions import make_predictions, prediction_rows
from harness.records import NON_SEMANTIC_KEYS, config_id, environment, read_record, run_dir, run_key, thin_log, write_record
from harness.registry import METHODS, TASKS
from harness.schema import ConfigError
from harness.stale import check_data_unchanged, save_signature
from harness.stats import metric_ci
from harness.storage import disk_full_error, is_disk_full, make_dirs
from harness.task import Task, TaskError
from harness.teachers import TeacherStore
from harness.validate import check_config


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} was asked for but CUDA is not available here (use device=auto or cpu)")
    return dev


def derive_seed(*parts: Any) -> int:
    """A 31-bit seed from (seed, task, fold, role): independent streams, reproducible across processes."""
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:4], "little") & 0x7FFFFFFF


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# Overrides that say nothing a record does not already say, or that do not change the result: left out of
# the record's `overrides` (the leaderboard's row label), so a run reads the same however it was launched.
_IDENTITY_KEYS = ("seed", "fold", "method", "task", "launcher", "hydra/launcher")


def describing_overrides(overrides: list[str]) -> list[str]:
    out = []
    for o in overrides:
        key = o.partition("=")[0].lstrip("+~")
        if key in _IDENTITY_KEYS or any(key == k or key.startswith(k + ".") for k in NON_SEMANTIC_KEYS):
            continue
        out.append(o)
    return out


def record_metrics_ci(cfg: DictConfig, task, test, predictions, n_resamples: int) -> dict:
    """`metrics_ci`: cluster bootstrap CI of the primary metric over the task's independent test units,
    re-scored with the task's own metric; seeded by the run key, so a re-run gives the same interval."""
    units = np.asarray(task.bootstrap_units(test))
    if len(units) != len(test):
        raise ValueError(f"task '{task.name}': bootstrap_units gave {len(units)} unit ids for {len(test)} test rows")
    metric = task.spec.primary_metric
    return metric_ci(predictions, units[prediction_rows(test, task.spec.target)],
                     lambda table: task.score(table, (metric,))[metric], metric, task.bootstrap_unit, n_resamples,
                     derive_seed(run_key(cfg), "bootstrap"))


def check_text_input(cfg: DictConfig) -> None:
    """The text tokens (task.text_input=bert, mosi/mosei) go to DMD's BERT only, and it needs them: the task key
    follows method.text_encoder, so they differ only when one of them was set by hand."""
    text_input = OmegaConf.select(cfg, "task.text_input", default="frozen")
    encoder = OmegaConf.select(cfg, "method.text_encoder", default="frozen")
    if text_input == encoder:
        return
    if encoder == "bert":
        raise ConfigError(f"method.text_encoder=bert needs the MMSA pickles' text_bert tokens: task mosi or mosei "
                          f"with task.text_input=bert (its default follows method.text_encoder); task "
                          f"{cfg.task.name} has text_input={text_input}")
    raise ConfigError(f"task.text_input={text_input} gives the text modality as BERT tokens, which only "
                      f"method=dmd method.text_encoder=bert reads (method {cfg.method.name} has "
                      f"text_encoder={encoder}); leave task.text_input at its default")


def selection_split(cfg: DictConfig | dict) -> str:
    """The root key selection_split (val, or test: the official codes' selection on the test fold)."""
    return str(OmegaConf.select(cfg, "selection_split", default="val") if isinstance(cfg, DictConfig)
               else cfg.get("selection_split", "val"))


def build_task(cfg: DictConfig):
    return TASKS.get(cfg.task.name)(cfg.task)


@dataclass
class Prepared:
    """What a run needs before training, all of it checked: made before the run's folder exists."""
    device: torch.device
    task: Task
    data: FoldData
    method_cls: type[Method]
    load_s: float


def prepare(cfg: DictConfig) -> Prepared:
    """Check the config (harness/validate.py), the device, the fold against the task's data and the method
    against the task's modalities; load the fold. A config or data mistake raises ConfigError or TaskError
    (one line) and nothing is written; the CLI turns it into exit status 2."""
    check_config(cfg)
    # logger=tensorboard|mlflow without its package: a one-line config error, before any folder exists
    require_logger_library(str(OmegaConf.select(cfg, "logger", default="none")))
    device = resolve_device(cfg.device)
    check_text_input(cfg)
    t = time.perf_counter()
    task = build_task(cfg)
    task.check_fold(int(cfg.fold))
    data = task.load_fold(int(cfg.fold))
    load_s = time.perf_counter() - t
    method_cls = METHODS.get(cfg.method.name)
    method_cls.check(cfg, task.spec)
    # A method with its own loop options (DMD's method.training) overrides the run's train group with them.
    stop_key = "method.training.stop" if OmegaConf.select(cfg, "method.training.stop") is not None else "train.stop"
    selects_on_val = selection_split(cfg) == "val"  # selection_split=test selects on the test split: never empty
    if selects_on_val and len(data.val) == 0 and OmegaConf.select(cfg, stop_key, default="patience") != "budget":
        raise TaskError(f"task '{task.name}' has no validation split here (e.g. task.n_val=0): nothing to select on; "
                        f"use {stop_key}=budget")
    schedule_key = stop_key.rsplit(".", 1)[0] + ".schedule"
    if selects_on_val and len(data.val) == 0 and OmegaConf.select(cfg, schedule_key, default="none") == "plateau":
        raise TaskError(f"task '{task.name}' has no validation split here (e.g. task.n_val=0), and "
                        f"{schedule_key}=plateau follows the validation score: set {schedule_key}=none")
    encoder = OmegaConf.select(cfg, "model.encoder", default="temporal")
    sequences = [m for m in task.spec.modalities if m not in task.spec.vector_modalities]
    if encoder != "temporal" and sequences:
        raise TaskError(f"model.encoder={encoder} takes vector inputs, but task '{task.name}' has sequence modalities "
                        f"{', '.join(sequences)}; use model.encoder=temporal")
    teacher_sees = OmegaConf.select(cfg, "teacher.modalities", default="all")
    if teacher_sees == "privileged" and not task.spec.privileged_modalities:
        raise TaskError("teacher.modalities=privileged: this task variant has no privileged modality (every modality "
                        "is used at test); use teacher.modalities=all")
    control = str(cfg.method.get("privileged_control", "none"))
    check_privileged_control(control, task.spec.privileged_modalities)
    return Prepared(device, task, data, method_cls, load_s)


def execute(cfg: DictConfig, overrides: list[str] | None = None, raise_errors: bool = False,
            launch: dict | None = None) -> dict:
    """Run one config and write its record; return the record.

    A run whose ok record exists is skipped unless cfg.overwrite, on the data it was computed on only: when the
    task's files changed since, StaleDataError (harness/stale.py). A config or data mistake (ConfigError,
    TaskError from `prepare`) is raised before the run's folder is made: no record. A run that raises
    after that writes a failed record carrying the error text (and re-raises only with raise_errors).
    `launch` (sweep id, job id, requeue count... from harness/jobs.py) is stored in the record as is.
    A full disk (the record, the teacher store, a checkpoint, the feature cache...) raises DiskFullError
    (harness/storage.py): no record, and the folder this attempt made is removed but for its checkpoints.
    """
    folder = run_dir(cfg)
    existing = None if cfg.overwrite else read_record(folder)  # overwrite=true replaces even an unreadable record
    if existing is not None and existing.get("status") == "ok":
        check_data_unchanged(cfg, existing, folder)
        existing["skipped"] = True
        return existing
    malloc = tune_allocator()  # once per process: freed training memory is kept for the next step
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    record: dict[str, Any] = {
        "schema_version": RECORD_SCHEMA_VERSION, "harness_version": __version__,
        "run_key": run_key(cfg), "config_id": config_id(cfg),
        "method": cfg.method.name, "task": cfg.task.name, "fold": int(cfg.fold), "seed": int(cfg.seed),
        "status": "running", "overrides": describing_overrides(overrides or []),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **environment(), "malloc": malloc,
    }
    if launch is not None:
        record["launch"] = launch
    failure = None
    try:
        prep = prepare(cfg)
    except (ConfigError, TaskError, DiskFullError):
        raise  # a config or data mistake, or a full disk (the feature cache): one line, no folder, no record
    except Exception as e:  # noqa: BLE001 - anything else fails the run with a record, as a training error does
        if is_disk_full(e):
            raise disk_full_error(cfg.cache_dir, f"{type(e).__name__}: {e}", None) from e
        prep, failure = None, (e, traceback.format_exc())
    made_folder = not folder.exists()
    try:
        make_dirs(folder)
        _run(cfg, record, prep, folder, timings, t_start, failure, raise_errors)
    except DiskFullError:
        if made_folder:
            _remove_unfinished(folder)
        raise
    except Exception as e:
        if not is_disk_full(e):  # a library's own writer (a live logger's event file...)
            raise
        if made_folder:
            _remove_unfinished(folder)
        where = getattr(e, "filename", None)
        raise disk_full_error(Path(where).parent if where else folder, f"{type(e).__name__}: {e}", None) from e
    return record


def _remove_unfinished(folder: Path) -> None:
    """A full disk stopped the run before its record: the folder this attempt made goes, so that nothing looks like
    a run, except its training checkpoints (train.checkpoint=true), which a re-sent command resumes from."""
    for path in sorted(folder.rglob("*"), reverse=True):  # files before their folders
        if path.is_dir():
            with contextlib.suppress(OSError):
                path.rmdir()  # empty (a folder holding a checkpoint stays)
        elif not path.name.startswith("checkpoint_"):
            path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        folder.rmdir()


def _run(cfg: DictConfig, record: dict, prep: Prepared | None, folder: Path, timings: dict, t_start: float,
         failure: tuple | None, raise_errors: bool) -> None:
    """Train, predict, score and write the record of a prepared run (or the failed record of one that could not
    be prepared); a full disk raises DiskFullError and writes nothing."""
    predictions, ctx = None, None
    if prep is not None:
        try:
            task, data, method_cls = prep.task, prep.data, prep.method_cls
            # validated by the schema before prepare() (harness/schema.py: an integer >= 0)
            n_resamples = int(OmegaConf.select(cfg, "stats.bootstrap_resamples", default=1000))
            # float reductions, and so the last digits of a result, depend on the intra-op thread count
            record.update(device=str(prep.device), torch_threads=torch.get_num_threads())
            timings["load_s"] = prep.load_s
            spec = task.spec
            record.update(task_variant=task.variant(), data_source=task.data_source,
                          data_fingerprint=data.fingerprint(), data_info=data.info, primary_metric=spec.primary_metric,
                          modalities=dict(spec.modalities), student_modalities=list(spec.student_modalities),
                          privileged_modalities=list(spec.privileged_modalities),
                          n_samples={"train": len(data.train), "val": len(data.val), "test": len(data.test)})
            # The files' cheap signature (None for tasks generated in memory): checked before this record is
            # skipped as done, and part of the teacher store's key (the task caches it: one listing per run).
            source_fp = task.source_fingerprint()
            if source_fp is not None:
                record["source_fingerprint"] = source_fp
                save_signature(cfg.results_dir, task.name, source_fp, task.source_signature)
            record["bound"] = method_cls.bound
            record["uses_privileged_at_test"] = method_cls.uses_privileged_at_test
            ctx = RunContext(cfg=cfg, task=task, fold=int(cfg.fold), seed=int(cfg.seed), device=prep.device,
                             teachers=TeacherStore(Path(cfg.cache_dir) / "teachers"), run_dir=folder,
                             progress=bool(cfg.progress))
            ctx.live = open_live_logger(cfg, folder, record["run_key"])
            seed_everything(derive_seed(cfg.seed, cfg.task.name, cfg.fold, cfg.method.name))
            method = method_cls(cfg.method, ctx)
            t = time.perf_counter()
            train, val = data.train, data.val
            control = str(cfg.method.get("privileged_control", "none"))
            if control != "none":  # the privileged-information control: the method never sees the real pairing
                train = apply_privileged_control(train, spec.privileged_modalities, control,
                                                 derive_seed(cfg.seed, cfg.task.name, cfg.fold, "control", "train"))
                val = apply_privileged_control(val, spec.privileged_modalities, control,
                                               derive_seed(cfg.seed, cfg.task.name, cfg.fold, "control", "val"))
                record["privileged_control"] = control
            # The privileged firewall: a student never receives the privileged test modalities.
            keep = spec.modalities if method_cls.uses_privileged_at_test else spec.student_modalities
            test = data.test.restrict(tuple(keep))
            ctx.validation = val  # frozen parts needing modalities the selection split lacks select on it
            record["selection_split"] = selection_split(cfg)
            if record["selection_split"] == "test":
                # The official codes' selection on the test fold (optimistic): the method selects on the test split
                # as predict() will see it, privileged modalities stripped (no privileged-information control
                # applies to it: a student's copy holds no privileged modality).
                val = test
            method.fit(train, val)
            timings["fit_s"] = time.perf_counter() - t
            t = time.perf_counter()
            outputs = method.predict(test)
            timings["predict_s"] = time.perf_counter() - t
            t = time.perf_counter()
            predictions = make_predictions(test, outputs, spec.target)
            record["metrics"] = task.score(predictions)
            timings["score_s"] = time.perf_counter() - t
            if n_resamples:
                t = time.perf_counter()
                record["metrics_ci"] = record_metrics_ci(cfg, task, test, predictions, n_resamples)
                timings["bootstrap_s"] = time.perf_counter() - t
            every = int(cfg.get("log_every", 1))
            record["logs"] = {name: thin_log(rows, every) if isinstance(rows, list) else rows
                              for name, rows in ctx.logs.items()}
            if every > 1:
                record["log_every"] = every
            record["extra"] = ctx.extra
            record["status"] = "ok"
        except DiskFullError:
            raise  # no record can be written: the caller removes what this attempt made
        except Exception as e:  # noqa: BLE001 - a failed run is recorded, the sweep goes on
            if is_disk_full(e):
                raise
            failure = (e, traceback.format_exc())
        finally:  # on failure and interruption too: the event file or MLflow run is complete and marked
            if ctx is not None:
                close_live_logger(ctx.live, "ok" if record["status"] == "ok" else "failed")
    # Config values used other than asked, on purpose (k capped at the batch size, a preset's values...).
    record["adjusted"] = ctx.adjusted if ctx is not None else {}
    if failure is not None:
        error, record["traceback"] = failure
        record["status"] = "failed"
        record["error"] = f"{type(error).__name__}: {error}"
        predictions = None
        if raise_errors:
            _finish(record, folder, None, timings, t_start)
            raise error
    if predictions is not None and not cfg.get("save_predictions", True):
        predictions = None  # the metrics, their CI and the logs are in the record; no per-sample file
        record["predictions_saved"] = False
        (folder / "predictions.csv").unlink(missing_ok=True)  # an earlier attempt's must not pass for this run's
    _finish(record, folder, predictions, timings, t_start)


def close_live_logger(live: LiveLogger, status: str) -> None:
    """Close the run's live logger; a failure to close only warns: the curves are a view, the record is the result."""
    try:
        live.close(status)
    except Exception as e:  # noqa: BLE001
        print(f"warning: closing the {live.kind} logger failed: {type(e).__name__}: {e}")


def _finish(record: dict, folder: Path, predictions, timings: dict, t_start: float) -> None:
    record["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t = time.perf_counter()
    write_record(folder, {**record, "timings": {**timings, "total_s": time.perf_counter() - t_start}}, predictions)
    timings["write_s"] = time.perf_counter() - t
    if record["status"] == "ok":  # finished: its training checkpoints (train.checkpoint=true) are of no more use
        for ckpt in folder.glob("*checkpoint_*.pt*"):  # and a killed writer's hidden temporary file
            ckpt.unlink(missing_ok=True)
    record["timings"] = {**timings, "total_s": time.perf_counter() - t_start}
