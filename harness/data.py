"""Data contracts shared by every task and method.

A task turns its files (or a generator) into `FoldData`: train / val / test `Split`s of float32
arrays keyed by modality. Methods only ever see `Split`s; the runner strips privileged modalities
from the test split before a student predicts (see `Split.restrict`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class TargetSpec:
    """What is predicted.

    kind="regression": targets float32 [N, K] (or [N, T, K] when per_step), K = len(dims), one named
    output per dim (e.g. valence, arousal).
    kind="classification": targets int64 [N, K] (or [N, T, K]), K = len(dims) independent heads
    (usually one, e.g. "pain"; IEMOCAP MulT-style has four binary heads), each over n_classes classes.
    per_step: one target per time step (Aff-Wild2 frames); invalid steps are masked by Split.target_mask.
    """

    kind: Literal["regression", "classification"]
    dims: tuple[str, ...]
    n_classes: int = 0
    per_step: bool = False
    class_names: tuple[str, ...] = ()

    def __post_init__(self):
        if self.kind not in ("regression", "classification"):
            raise ValueError(f"TargetSpec.kind must be regression or classification, got {self.kind!r}")
        if self.kind == "classification" and self.n_classes < 2:
            raise ValueError("a classification target needs n_classes >= 2")

    @property
    def n_outputs(self) -> int:
        """Width of a network's output layer for this target."""
        return len(self.dims) * (self.n_classes if self.kind == "classification" else 1)


@dataclass(frozen=True)
class TaskSpec:
    """Modalities (name -> feature dim), which ones the student keeps at test, and the target.

    vector_modalities: the modalities whose inputs are vectors [N, D] (no time axis); the others are
    sequences [N, T, D]. model.encoder=linear|mlp needs every modality of a net to be a vector.
    """

    modalities: dict[str, int]
    student_modalities: tuple[str, ...]
    target: TargetSpec
    metrics: tuple[str, ...]  # primary first
    higher_is_better: dict[str, bool] = field(default_factory=dict)
    vector_modalities: tuple[str, ...] = ()

    def __post_init__(self):
        missing = [m for m in (*self.student_modalities, *self.vector_modalities) if m not in self.modalities]
        if missing:
            raise ValueError(f"student or vector modalities {missing} are not among the task's {list(self.modalities)}")

    @property
    def privileged_modalities(self) -> tuple[str, ...]:
        return tuple(m for m in self.modalities if m not in self.student_modalities)

    @property
    def primary_metric(self) -> str:
        return self.metrics[0]

    def better(self, metric: str) -> bool:
        return self.higher_is_better.get(metric, True)


class FrameWindows:
    """A read-only float32 [N, width, D] array whose row i is `frames[starts[i] : starts[i] + lengths[i]]`,
    zero-padded to `width`: windows (or padded sequences) cut from stored frames WITHOUT copying them.

    A split whose windows overlap (Aff-Wild2's training stride below the window) or that shares one frame store
    with other splits holds every frame once; the rows are gathered when a batch is made (harness.training.
    SplitTensors) or when numpy asks for the array (`np.asarray`, which materialises it: for tests and small
    splits). The last row of `frames` must be zeros: padded steps read it, so a gathered row equals the copy the
    loaders made before (the same values: gathering is indexing, no arithmetic). Selecting rows (a slice, an
    index array, a boolean mask) gives another FrameWindows on the same frames; any other index materialises.
    """

    ndim = 3
    dtype = np.dtype(np.float32)

    def __init__(self, frames: np.ndarray, starts: np.ndarray, lengths: np.ndarray, width: int):
        if frames.ndim != 2 or frames.dtype != np.float32 or not frames.flags.c_contiguous:
            raise TypeError(f"FrameWindows needs C-contiguous float32 frames [F, D], got {frames.dtype} "
                            f"{frames.shape}")
        self.frames = frames
        self.starts = np.asarray(starts, dtype=np.int64)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.width = int(width)
        if self.starts.shape != self.lengths.shape or self.starts.ndim != 1:
            raise ValueError(f"FrameWindows: starts {self.starts.shape} and lengths {self.lengths.shape} must be "
                             f"one number per row")
        if len(self.starts) and (self.lengths.min() < 0 or self.lengths.max() > self.width
                                 or (self.starts + self.lengths).max() > len(frames) - 1 or self.starts.min() < 0):
            raise ValueError("FrameWindows: a window reaches past the stored frames (or its length is outside "
                             f"0..{self.width}); the last of the {len(frames)} rows is the zero padding row")

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.starts), self.width, self.frames.shape[1])

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        """What the materialised array would take (the frames themselves are shared)."""
        return int(np.prod(self.shape)) * 4

    def __len__(self) -> int:
        return len(self.starts)

    def __repr__(self) -> str:
        return f"FrameWindows(shape={self.shape}, frames={self.frames.shape})"

    def frame_index(self, rows=None) -> np.ndarray:
        """int64 [n, width]: the row of `frames` each step reads (padded steps: the zero row)."""
        starts = self.starts if rows is None else self.starts[rows]
        lengths = self.lengths if rows is None else self.lengths[rows]
        steps = np.arange(self.width, dtype=np.int64)
        return np.where(steps[None, :] < lengths[:, None], starts[:, None] + steps[None, :], len(self.frames) - 1)

    def __array__(self, dtype=None, copy=None):
        out = self.frames[self.frame_index()]
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getitem__(self, key):
        if isinstance(key, slice) or (isinstance(key, (list, np.ndarray)) and np.ndim(key) == 1):
            return FrameWindows(self.frames, self.starts[key], self.lengths[key], self.width)
        if isinstance(key, (int, np.integer)):
            return self.frames[self.frame_index(np.array([key]))[0]]
        return np.asarray(self)[key]

    def __getattr__(self, name: str):
        # Any other ndarray attribute (reshape, sum, copy...) acts on the materialised array: correct, and as
        # costly as the copies the loaders made before; the harness's own paths never take it.
        if name.startswith("__") or not hasattr(np.ndarray, name):
            raise AttributeError(f"'FrameWindows' object has no attribute {name!r}")
        return getattr(np.asarray(self), name)

    def zeros(self) -> "FrameWindows":
        """The same shape, every step zero (the privileged `zeros` control) without a full-size array."""
        return FrameWindows(np.zeros((1, self.frames.shape[1]), np.float32), np.zeros(len(self), np.int64),
                            np.zeros(len(self), np.int64), self.width)


def zero_padded_store(n_frames: int, dim: int) -> np.ndarray:
    """float32 [n_frames + 1, dim] of zeros: frames fill rows 0..n_frames-1, the last row is FrameWindows' padding."""
    return np.zeros((n_frames + 1, dim), np.float32)


@dataclass
class Split:
    """One split of one fold. Every array has the same first dimension N.

    inputs: modality -> float32 [N, T, D] (sequences, padded) or [N, D]; a sequence modality may be a
        FrameWindows (the same values, gathered from frames stored once).
    lengths: modality -> int [N] valid length of each padded sequence (absent = full length).
    targets: see TargetSpec. target_mask: bool [N, T] valid steps, only for per-step targets.
    step_index: int [N, T] frame number of each step (per-step targets), used in prediction ids.
    """

    ids: np.ndarray
    groups: np.ndarray
    inputs: dict[str, np.ndarray]
    targets: np.ndarray
    lengths: dict[str, np.ndarray] = field(default_factory=dict)
    target_mask: np.ndarray | None = None
    step_index: np.ndarray | None = None

    def __post_init__(self):
        n = len(self.ids)
        for name, arr in [("groups", self.groups), ("targets", self.targets),
                          *[(f"inputs[{k}]", v) for k, v in self.inputs.items()],
                          *[(f"lengths[{k}]", v) for k, v in self.lengths.items()]]:
            if len(arr) != n:
                raise ValueError(f"Split field {name} has {len(arr)} rows, ids has {n}")
        for k, v in self.inputs.items():
            if v.dtype != np.float32:
                raise TypeError(f"Split input {k} must be float32, got {v.dtype}")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.inputs)

    def restrict(self, keep: tuple[str, ...] | list[str]) -> "Split":
        """A view with only the modalities in `keep`: the privileged firewall."""
        return replace(self, inputs={k: v for k, v in self.inputs.items() if k in keep},
                       lengths={k: v for k, v in self.lengths.items() if k in keep})

    def subset(self, index: np.ndarray) -> "Split":
        opt = lambda a: None if a is None else a[index]  # noqa: E731
        return Split(ids=self.ids[index], groups=self.groups[index],
                     inputs={k: v[index] for k, v in self.inputs.items()}, targets=self.targets[index],
                     lengths={k: v[index] for k, v in self.lengths.items()},
                     target_mask=opt(self.target_mask), step_index=opt(self.step_index))


@dataclass
class FoldData:
    """train / val / test of one fold, plus what the loader wants recorded (cleaning counts, audits)."""

    train: Split
    val: Split
    test: Split
    info: dict = field(default_factory=dict)

    def fingerprint(self) -> str:
        """Hash of ids, targets and a sample of the inputs: identifies the data a run saw."""
        h = hashlib.sha256()
        for split in (self.train, self.val, self.test):
            h.update("|".join(map(str, split.ids)).encode())
            h.update(np.ascontiguousarray(split.targets).tobytes())
            for k in sorted(split.inputs):
                h.update(k.encode())
                h.update(np.ascontiguousarray(split.inputs[k][:: max(1, len(split) // 64)]).tobytes())
        return h.hexdigest()[:16]
