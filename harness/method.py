"""The Method contract and the context a run hands to it.

A method is registered with `@register_method`, has a Hydra config `harness/conf/method/<name>.yaml`
(its `method.*` keys, the typed defaults), lives in `methods/<name>.py` and has its line in the catalogue of
methods/__init__.py (what `harness list` shows without importing it). It trains whatever it
needs in `fit` (teachers come from `ctx.teachers`, trained once per (task, fold, seed, teacher
config)) and predicts from the student's modalities only: the runner hands `predict` a test split
without the privileged modalities unless the method is an upper bound (`uses_privileged_at_test`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from omegaconf import DictConfig

from harness.data import Split, TaskSpec
from harness.live import LiveLogger

if TYPE_CHECKING:
    from harness.task import Task
    from harness.teachers import TeacherStore


@dataclass
class RunContext:
    cfg: DictConfig  # the whole resolved run config
    task: "Task"
    fold: int
    seed: int
    device: torch.device
    teachers: "TeacherStore"
    run_dir: Path
    progress: bool = True
    # per-epoch logs of everything trained in this run, by model name ("teacher", "student", ...)
    logs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # free-form facts a method wants in its record (teacher choice counts, edge weights...)
    extra: dict[str, Any] = field(default_factory=dict)
    # config values the run used other than asked, on purpose: the record's top-level `adjusted`
    adjusted: dict[str, dict[str, Any]] = field(default_factory=dict)
    # live curves (root key `logger`): harness.training.fit hands it each epoch's log row; no-op by default
    live: LiveLogger = field(default_factory=LiveLogger)
    # the task's validation split (set by the runner). Under selection_split=test the method's `val` is the test
    # split without the privileged modalities: a frozen part that needs them selects on this one (frozen_val)
    validation: Split | None = None

    def frozen_val(self, val: Split, needs: tuple[str, ...]) -> Split:
        """The split a frozen part (the stored teacher, PKDOT's T-Net, MT-PKDOT's stage 1) selects on: `val`, the
        split the method was handed, when it holds every modality in `needs`; else (selection_split=test handed
        a student method the test split without its privileged modalities, which the firewall keeps from it) the
        task's validation split."""
        if self.validation is None or all(m in val.inputs for m in needs):
            return val
        return self.validation

    def adjust(self, key: str, asked: Any, used: Any, why: str) -> None:
        """Record that config value `key` (dotted path) was used as `used` instead of `asked`, and why.
        Adjusted again to another value (another model of the run), `used` lists each value and `why` each reason."""
        entry = self.adjusted.get(key)
        if entry is None:
            self.adjusted[key] = {"asked": asked, "used": used, "why": why}
        elif used != entry["used"] and not (isinstance(entry["used"], list) and used in entry["used"]):
            entry["used"] = (entry["used"] if isinstance(entry["used"], list) else [entry["used"]]) + [used]
            entry["why"] = f"{entry['why']}; {why}"

    @property
    def spec(self):
        return self.task.spec


class Method:
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    # True only for the multimodal teacher: the upper bound, scored with every modality at test.
    uses_privileged_at_test: ClassVar[bool] = False
    # Role in the leaderboard: "lower_bound", "upper_bound" or "" for distillation methods.
    bound: ClassVar[str] = ""

    def __init__(self, cfg: DictConfig, ctx: RunContext):
        self.cfg = cfg  # this method's own config node (`method.*`)
        self.ctx = ctx

    @classmethod
    def check(cls, cfg: DictConfig, spec: TaskSpec) -> None:
        """Fail (harness.schema.ConfigError, one line) on a config this method cannot run on this task's data,
        e.g. a modality the task lacks. Called by the runner after the fold is loaded, before the run's folder
        exists, so a config mistake writes no record. `cfg` is the whole run config."""

    def fit(self, train: Split, val: Split) -> None:
        raise NotImplementedError

    def predict(self, split: Split) -> np.ndarray:
        """Raw outputs: regression values [N, K] ([N, T, K] per step), class probabilities [N, K, C]."""
        raise NotImplementedError
