"""The Task contract: files (or a generator) in, folds of `Split`s out, predictions scored.

A task class is registered with `@register_task`, has a Hydra config `harness/conf/task/<name>.yaml`
(its `task.*` keys), lives in `tasks/<name>.py` with its loader, mimic writer, splits, metrics
and published reference numbers, and has its line in the catalogue of tasks/__init__.py.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from harness.data import FoldData, Split, TaskSpec
from harness.errors import TaskError  # defined there so that the CLI catches it without importing pandas
from harness.metrics import higher_is_better, score_columns
from harness.predictions import columns_by_dim

if TYPE_CHECKING:
    from harness.extract.sources import Plan

DATA_SOURCES = ("real", "mimic", "synthetic", "random_weights")


class Task:
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    # Published reference numbers on the REAL dataset: dicts with keys
    # method, metrics {name: value}, citation, setting (protocol / split / features), note.
    published: ClassVar[list[dict[str, Any]]] = []
    # Config key choosing what the evaluated model sees at test: privileged (the student's modalities; the
    # others are privileged, train-time only) or full (every modality, the multimodal literature's setting,
    # where e.g. DMD is the paper's model). BioVid names it modality_protocol: its `protocol` is the fold scheme.
    modality_protocol_key: ClassVar[str] = "protocol"
    # Printed under every leaderboard section of this task and beside its published numbers: what the
    # harness does differently from the papers (e.g. frozen text features), so no row is misread.
    leaderboard_note: ClassVar[str] = ""
    # The independent unit of the test set, resampled whole by a run's test-set bootstrap CI (`metrics_ci`):
    # "sample" (each test row its own unit, the default) or the name of what `Split.groups` holds when the
    # groups are the independent units ("subject", "video"). Frames are never units.
    bootstrap_unit: ClassVar[str] = "sample"

    def __init__(self, cfg: DictConfig | dict):
        self.cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)

    # --- what subclasses provide ---------------------------------------------------------------
    @property
    def spec(self) -> TaskSpec:
        raise NotImplementedError

    @property
    def data_source(self) -> str:
        """real / mimic / synthetic / random_weights: printed beside every number this task produces."""
        raise NotImplementedError

    @property
    def n_folds(self) -> int:
        raise NotImplementedError

    @property
    def config_n_folds(self) -> int | None:
        """The number of folds when the config alone fixes it (no data read), else None. `harness run` checks
        `fold` against it before anything runs; the runner checks it against n_folds after loading."""
        return None

    def load_fold(self, fold: int) -> FoldData:
        raise NotImplementedError

    def variant(self) -> str:
        """Short label of the config choices that change what the metrics mean (target kind, protocol...)."""
        return ""

    def source_files(self) -> list[Path | str] | None:
        """The files this task variant's data is read from (index tables, signals, feature files and any sidecar
        beside them), listed without reading them; None for a task generated in memory, whose config (in the run
        key) says everything about its data. Their cheap signature (`source_signature`) keys the teacher store and
        is checked before a recorded run is skipped as done."""
        return None

    def extract_plan(self, extract_cfg: DictConfig) -> Plan | None:
        """What `harness extract` reads and writes for this task: a harness.extract.sources.Plan, one Item per
        feature file at the path this task's loader reads it from (so extraction writes exactly what `harness run`
        reads); None when the dataset ships its features (nothing to extract). `extract_cfg`: the `extract` keys of
        the extract config (videos_dir, frames_dir, input, audio...). The engine asks the task, as `harness run`
        does: it knows no task's layout."""
        return None

    # --- data identity (cheap: names, sizes and mtimes of the source files, as the feature cache keys) ----------
    @cached_property
    def source_signature(self) -> list[tuple[str, int, int]] | None:
        """files_signature of `source_files()`, names relative to their common folder; None when generated."""
        files = self.source_files()
        if files is None:
            return None
        from harness.cache import files_signature

        folders = {os.path.abspath(d) for d in {os.path.dirname(str(p)) for p in files}}  # few folders, many files
        return files_signature(files, relative_to=os.path.commonpath(folders) if folders else None)

    def source_fingerprint(self) -> str | None:
        """Hash of `source_signature`: changes when a source file is rewritten, added or removed."""
        if self.source_signature is None:
            return None
        from harness.cache import signature_fingerprint

        return signature_fingerprint(self.source_signature)

    @classmethod
    def write_mimic(cls, out_dir: Path, cfg: DictConfig) -> Path:
        """Write a small tree in the dataset's real on-disk format; return the data root to load."""
        raise TaskError(f"task '{cls.name}' has no on-disk format to mimic (it is generated in memory)")

    # --- shared behaviour --------------------------------------------------------------------
    @property
    def full_protocol(self) -> bool:
        """True when task.<modality_protocol_key>=full: every modality at test, none privileged."""
        key = self.modality_protocol_key
        value = self.cfg.get(key, "privileged")
        if value not in ("privileged", "full"):
            raise TaskError(f"task.{key}={value!r}: choose privileged (the student's modalities at test, the others "
                            f"privileged) or full (every modality at test)")
        return value == "full"

    def test_modalities(self, student: tuple[str, ...], modalities) -> tuple[str, ...]:
        """What the evaluated model sees at test under the chosen modality protocol."""
        return tuple(modalities) if self.full_protocol else tuple(student)

    def protocol_suffix(self) -> str:
        """Appended to variant(): full-protocol runs never share a leaderboard row with privileged ones."""
        return f", {self.modality_protocol_key}=full (all modalities at test)" if self.full_protocol else ""

    def check_fold(self, fold: int, n_folds: int | None = None) -> None:
        n = self.n_folds if n_folds is None else n_folds
        if not 0 <= fold < n:
            raise TaskError(f"fold={fold} is out of range for task '{self.name}', which has folds 0..{n - 1}"
                            f" (set fold=0..{n - 1})")

    def score(self, predictions: pd.DataFrame, metrics: tuple[str, ...] | None = None) -> dict[str, float]:
        """Metrics of a predictions table (see harness.predictions), primary metric first; `metrics`: only these."""
        target = self.spec.target
        yt, yp = columns_by_dim(predictions, target)
        return score_columns(yt, yp, metrics or self.spec.metrics, target.kind)

    def bootstrap_units(self, test: Split) -> np.ndarray:
        """The unit id of each row of the test split (see `bootstrap_unit`): row numbers for "sample", else
        `test.groups`. A per-step target's frames inherit their sample's unit (harness.predictions)."""
        if self.bootstrap_unit == "sample":
            return np.arange(len(test))
        return np.asarray(test.groups)

    def metric_higher_is_better(self, metric: str) -> bool:
        return self.spec.higher_is_better.get(metric, higher_is_better(metric))
