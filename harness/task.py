"""The Task contract: files (or a generator) in, folds of `Split`s out, predictions scored.

A task class is registered with `@register_task`, has a Hydra config `harness/conf/task/<name>.yaml`
(its `task.*` keys) and lives in `tasks/<name>.py` with its loader, mimic writer, splits, metrics
and published reference numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from harness.data import FoldData, TaskSpec
from harness.metrics import higher_is_better, score_columns
from harness.predictions import columns_by_dim

DATA_SOURCES = ("real", "mimic", "synthetic")


class TaskError(ValueError):
    """Bad task input (missing files, wrong format...). The message names the file, the field and the fix."""


class Task:
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    # Published reference numbers on the REAL dataset: dicts with keys
    # method, metrics {name: value}, citation, setting (protocol / split / features), note.
    published: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, cfg: DictConfig | dict):
        self.cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)

    # --- what subclasses provide ---------------------------------------------------------------
    @property
    def spec(self) -> TaskSpec:
        raise NotImplementedError

    @property
    def data_source(self) -> str:
        """real / mimic / synthetic: printed beside every number this task produces."""
        raise NotImplementedError

    @property
    def n_folds(self) -> int:
        raise NotImplementedError

    def load_fold(self, fold: int) -> FoldData:
        raise NotImplementedError

    def variant(self) -> str:
        """Short label of the config choices that change what the metrics mean (target kind, protocol...)."""
        return ""

    @classmethod
    def write_mimic(cls, out_dir: Path, cfg: DictConfig) -> Path:
        """Write a small tree in the dataset's real on-disk format; return the data root to load."""
        raise TaskError(f"task '{cls.name}' has no on-disk format to mimic (it is generated in memory)")

    # --- shared behaviour --------------------------------------------------------------------
    def check_fold(self, fold: int) -> None:
        if not 0 <= fold < self.n_folds:
            raise TaskError(f"fold={fold} is out of range for task '{self.name}', which has folds 0..{self.n_folds - 1}"
                            f" (set fold=0..{self.n_folds - 1})")

    def score(self, predictions: pd.DataFrame) -> dict[str, float]:
        """Metrics of a predictions table (see harness.predictions), primary metric first."""
        target = self.spec.target
        yt, yp = columns_by_dim(predictions, target)
        return score_columns(yt, yp, self.spec.metrics, target.kind)

    def metric_higher_is_better(self, metric: str) -> bool:
        return self.spec.higher_is_better.get(metric, higher_is_better(metric))
