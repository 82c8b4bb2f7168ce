"""What the on-disk tasks (biovid, affwild2) share: data roots, mimic trees, table reading, cleaning, split audit.

- `resolve_root`: `task.source=real` reads `task.data_root` (one clear TaskError when nothing is there);
  `task.source=mimic` writes the task's mimic tree once into `<cache_dir>/mimic/<task>/<key>/` (or
  `task.mimic_dir`) and reads that. A tree holding the `MIMIC_DATA.txt` marker is labelled `mimic`
  whichever way it was reached, so mimic numbers are never shown as real ones.
- `read_table`: tables read by column name, with errors that name the file, what is wrong and the fix
  (a comma-separated file where tabs are expected reads as ONE column: that is said explicitly).
- `Cleaning`: counters of documented cleaning steps (non-finite values zeroed, trimmed frames...),
  copied into FoldData.info so they appear in the run's record.
- `audit_split`: subject overlap, duplicate samples and samples shared between splits; a warning with
  the counts, or a TaskError with `task.strict_splits=true`.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd
from filelock import FileLock
from omegaconf import DictConfig, OmegaConf

from harness.data import FrameWindows
from harness.storage import atomic_folder
from harness.task import TaskError
from harness.teachers import stable_hash

MIMIC_MARKER = "MIMIC_DATA.txt"
SOURCES = ("real", "mimic")


class SplitLeakWarning(UserWarning):
    """A split shares subjects or samples between train and test, or repeats samples."""


# --- data roots and mimic trees ------------------------------------------------------------------

def is_mimic_tree(root: Path) -> bool:
    return (Path(root) / MIMIC_MARKER).is_file()


def write_mimic_marker(root: Path, task: str, mimic_cfg: dict) -> None:
    text = (f"This folder was written by pkd-harness (`harness data mimic task={task}` or task.source=mimic).\n"
            "It is MIMIC data in the real on-disk format, with a planted relation between modalities and labels.\n"
            "It is NOT the real dataset: numbers computed on it say nothing about the real task.\n"
            f"generator config: {mimic_cfg}\n")
    (Path(root) / MIMIC_MARKER).write_text(text)


def prepare_out_dir(out: Path) -> Path:
    """A folder a mimic writer may fill: new, empty, or an earlier mimic tree (never someone's real data)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not is_mimic_tree(out):
        raise TaskError(f"{out} is not empty and is not a mimic tree (no {MIMIC_MARKER}): refusing to write mimic "
                        f"files into it. Choose a new or empty folder for out=...")
    out.mkdir(parents=True, exist_ok=True)
    return out


def cfg_get(cfg: DictConfig, key: str, default=None):
    return OmegaConf.select(cfg, key, default=default)


def resolve_root(cfg: DictConfig, task_name: str, write_mimic: Callable[[Path, DictConfig], Path],
                 looks_present: Callable[[Path], bool], layout: str, mimic_version: int = 1) -> Path:
    """The data root this run reads (writing the mimic tree first when task.source=mimic).

    The mimic folder is keyed by the task.mimic config and the generator's version (bump it when the
    generator changes, so stale trees are not reused).
    """
    source = cfg_get(cfg, "source", "real")
    if source not in SOURCES:
        raise TaskError(f"task.source={source!r}: choose real (read task.data_root) or mimic (a generated tree in "
                        f"the real format)")
    if source == "mimic":
        mimic_cfg = OmegaConf.to_container(cfg.mimic, resolve=True) if "mimic" in cfg else {}
        target = cfg_get(cfg, "mimic_dir")
        if target in (None, ""):
            cache = cfg_get(cfg, "cache_dir") or ".cache"
            key = {"task": task_name, "mimic": mimic_cfg, "version": mimic_version}
            target = Path(cache) / "mimic" / task_name / stable_hash(key, n=12)
        target = Path(target)
        if not is_mimic_tree(target):
            target.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(target) + ".lock"):
                if not is_mimic_tree(target):  # another process may have written it while we waited
                    # whole or not at all: a full disk leaves no partial tree (DiskFullError, harness/storage.py)
                    with atomic_folder(target, f"writing the mimic {task_name} tree") as tmp:
                        write_mimic(tmp, cfg)
                        shutil.rmtree(target, ignore_errors=True)
        return target
    root = Path(str(cfg_get(cfg, "data_root", "")))
    if not root.is_dir() or not looks_present(root):
        what = "does not exist" if not root.exists() else "does not hold the expected files"
        raise TaskError(
            f"task '{task_name}': no data at task.data_root={root}"
            f"{'' if root.is_absolute() else f' (= {root.resolve()})'} ({what}; source=real).\n"
            f"Expected layout:\n{layout}\n"
            f"Fix: point task.data_root at your copy (harness run task={task_name} task.data_root=/path/to/it), "
            f"or try the mimic (a small generated tree in the same format, NOT real data): add task.source=mimic, "
            f"or write one with `harness data mimic task={task_name} out=DIR` and pass task.data_root=DIR.")
    return root


def data_source_of(root: Path, features_root: Path | None = None) -> str:
    """mimic (a tree the harness wrote), random_weights (visual features that `harness extract` made with random
    backbone weights, extract.weights=none: its EXTRACTED.json says so), else real."""
    if is_mimic_tree(root):
        return "mimic"
    if features_root is not None:
        from harness.extract import sidecar
        if sidecar.random_weights(sidecar.read(features_root)):
            return "random_weights"
    return "real"


def features_info(features_root: Path) -> dict:
    """What a record's data_info says of the visual features: the EXTRACTED.json summary `harness extract` wrote
    beside them (backbone, weights and their hash, input size, clip length and stride, versions...), or that
    there is none."""
    from harness.extract import sidecar

    summary = sidecar.summary(sidecar.read(features_root))
    if summary is None:
        return {"extracted_by": f"unknown: no {sidecar.NAME} in {features_root} (features made by another tool)"}
    return summary


# --- tables ---------------------------------------------------------------------------------------

SEP_NAMES = {"\t": "tab", ",": "comma"}


def read_table(path: Path, required: Iterable[str], sep: str, fix: str, dtype=None) -> pd.DataFrame:
    """Read a delimited table with a header and check its columns by name.

    `fix` completes the error message (what the user should do). A file written with another
    separator reads as one column whose name holds the separator: that case gets its own message.
    """
    path = Path(path)
    required = list(required)
    if not path.is_file():
        raise TaskError(f"missing file {path}. {fix}")
    try:
        df = pd.read_csv(path, sep=sep, dtype=dtype)
    except pd.errors.EmptyDataError:
        raise TaskError(f"{path} is empty; expected a {SEP_NAMES[sep]}-separated table with header "
                        f"{SEP_NAMES[sep]}-joined {required}. {fix}") from None
    except (pd.errors.ParserError, ValueError) as e:
        raise TaskError(f"cannot parse {path} as a {SEP_NAMES[sep]}-separated table ({str(e).splitlines()[0]}). "
                        f"{fix}") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        if len(df.columns) == 1:
            other = next((s for s in SEP_NAMES if s != sep and s in df.columns[0]), None)
            if other is not None:
                raise TaskError(
                    f"{path} reads as ONE column named {df.columns[0]!r}: the file is {SEP_NAMES[other]}-separated, "
                    f"but this format is {SEP_NAMES[sep]}-separated. Re-write it with {SEP_NAMES[sep]}s between "
                    f"columns (the original dataset files are {SEP_NAMES[sep]}-separated). {fix}")
        raise TaskError(f"{path} lacks column(s) {missing}; it has {list(df.columns)}. {fix}")
    return df


def write_tsv(path: Path, columns: dict[str, np.ndarray], int_columns: Iterable[str] = ()) -> None:
    """A TAB-separated table with a header, integers as %d and floats as %.6g (one string format: fast)."""
    names = list(columns)
    ints = set(int_columns)
    row = "\t".join("%d" if n in ints else "%.6g" for n in names) + "\n"
    arr = np.column_stack([np.asarray(columns[n], dtype=np.float64) for n in names])
    Path(path).write_text("\t".join(names) + "\n" + (row * len(arr)) % tuple(arr.ravel().tolist()))


# --- cleaning -------------------------------------------------------------------------------------

class Cleaning:
    """Counts of documented cleaning steps; `as_info()` goes into FoldData.info['cleaning']."""

    def __init__(self):
        self.counts: Counter = Counter()
        self.examples: dict[str, list[str]] = {}

    def add(self, key: str, n: int = 1, example: str | None = None) -> None:
        if n:
            self.counts[key] += int(n)
            if example is not None:
                ex = self.examples.setdefault(key, [])
                if len(ex) < 5:
                    ex.append(str(example))

    def as_info(self) -> dict:
        return {"counts": dict(sorted(self.counts.items())), "examples": self.examples}

    def warn(self, task: str) -> None:
        if self.counts:
            warnings.warn(f"{task}: cleaning steps applied: {dict(self.counts)} (details in the record's "
                          f"data_info.cleaning)", stacklevel=3)


def finite_float32(x, cleaning: Cleaning, key: str, example: str) -> np.ndarray:
    """Cast to float32 FIRST (float64 can overflow to inf in float32), then zero NaN/±inf and count them."""
    with np.errstate(over="ignore", invalid="ignore"):
        x = np.asarray(x, dtype=np.float32)
    bad = ~np.isfinite(x)
    n_bad = int(bad.sum())
    if n_bad:
        cleaning.add(key, n_bad, example)
        x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    return x


def pad_sequences(seqs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Ragged [t_i, D] arrays -> zero-padded float32 [N, T_max, D] and lengths [N]."""
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    d = seqs[0].shape[1]
    out = np.zeros((len(seqs), int(lengths.max()), d), dtype=np.float32)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out, lengths


def standardize_inputs(train, others, modalities: Iterable[str]) -> dict:
    """z-score each feature dimension with mean/std of the TRAIN split's valid steps (applied to every split).

    The shared encoders normalise each time step across features (LayerNorm); without this, one
    loud dimension (heart rate in bpm beside log-power in dB) would dominate that normalisation.
    Inputs that are FrameWindows (harness.data) are standardised in place, once per frame store, on the stored
    frames (`standardize_frames`): the same statistics and the same float32 arithmetic, without a copy.
    """
    stats = {}
    for m in modalities:
        x = train.inputs[m]
        if isinstance(x, FrameWindows):
            stats[m] = standardize_frames(x, [s.inputs[m] for s in others])
            continue
        if x.ndim == 3:
            lengths = train.lengths.get(m)
            steps = np.arange(x.shape[1])
            valid = np.ones(x.shape[:2], bool) if lengths is None else steps[None, :] < lengths[:, None]
            flat = x[valid]
        else:
            flat = x
        mean = flat.mean(axis=0, dtype=np.float64).astype(np.float32)
        std = flat.std(axis=0, dtype=np.float64).astype(np.float32)
        std[std < 1e-6] = 1.0
        stats[m] = (mean, std)
        for split in (train, *others):
            v = split.inputs[m]
            z = (v - mean) / std
            if v.ndim == 3 and m in split.lengths:
                steps = np.arange(v.shape[1])
                z[steps[None, :] >= split.lengths[m][:, None]] = 0.0  # keep padding at zero
            split.inputs[m] = z.astype(np.float32)
    return {m: {"dims": len(s[0])} for m, s in stats.items()}


def window_moments(windows: FrameWindows, block_bytes: int = 8 << 20) -> tuple[np.ndarray, np.ndarray]:
    """float64 (mean, std) per dimension over the valid steps of every window, in window order, repeated frames
    counted as often as windows hold them: what `x[valid].mean(axis=0, dtype=float64)` and `.std(...)` give
    on the materialised [N, width, D] array, sum for sum. numpy sums a reduction over axis 0 row after row, so
    continuing each block's sum from the previous total (the total as the block's first row) adds the same
    numbers in the same order, and the squares are numpy's own (x - mean in float64, times itself);
    tests/test_windows.py checks the results equal the materialised ones. Memory: blocks of `block_bytes`."""
    dim = windows.frames.shape[1]
    rows = max(1, block_bytes // (8 * dim * max(windows.width, 1)))  # windows per block
    buffer = np.empty((1 + rows * windows.width, dim), np.float64)
    steps = np.arange(windows.width)

    def sums(mean: np.ndarray | None) -> tuple[np.ndarray, int]:
        total, count = None, 0
        for a in range(0, len(windows), rows):
            index = windows.frame_index(slice(a, a + rows))
            index = index[steps[None, :] < windows.lengths[a:a + rows, None]]
            n = len(index)
            block = buffer[1:1 + n]
            block[...] = windows.frames[index]  # float32 -> float64, as numpy's dtype=float64 reduction casts
            if mean is not None:
                np.subtract(block, mean, out=block)
                np.multiply(block, block, out=block)
            if total is None:
                total = np.add.reduce(block, axis=0)
            else:
                buffer[0] = total
                total = np.add.reduce(buffer[:1 + n], axis=0)
            count += n
        return total, count

    total, count = sums(None)
    mean = total / count
    squares, _ = sums(mean)
    return mean, np.sqrt(squares / count)


def standardize_frames(train: FrameWindows, others: Iterable[FrameWindows]) -> tuple[np.ndarray, np.ndarray]:
    """Standardise the frame stores of `train` and `others` IN PLACE with the train windows' statistics (as
    standardize_inputs does to copies: (x - mean) / std in float32, padding zero), each store once."""
    mean64, std64 = window_moments(train)
    mean, std = mean64.astype(np.float32), std64.astype(np.float32)
    std[std < 1e-6] = 1.0
    done = set()
    for w in (train, *others):
        if not isinstance(w, FrameWindows):
            raise TypeError("standardize_inputs: a modality is FrameWindows in the training split but an array in "
                            "another split; a task cuts every split the same way")
        if id(w.frames) in done:
            continue
        done.add(id(w.frames))
        frames = w.frames[:-1]  # the last row is the padding: it stays zero
        np.subtract(frames, mean, out=frames)
        np.divide(frames, std, out=frames)
    return mean, std


def available_memory() -> tuple[int, str]:
    """(bytes this process can still take, where the number comes from): the smaller of the system's
    MemAvailable and the room left under the cgroup's memory.max (a container's or a SLURM job's limit)."""
    avail, source = None, "MemAvailable in /proc/meminfo"
    try:
        with open("/proc/meminfo") as f:
            avail = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            room = int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text())
            if avail is None or room < avail:
                avail, source = room, "the cgroup's memory.max minus memory.current"
    except (OSError, ValueError):
        pass
    return (avail if avail is not None else -1), source


def check_memory(needed: int, what: str) -> None:
    """A TaskError naming the memory `needed` (bytes) and what is available, BEFORE a loader allocates it: a run
    that cannot fit stops at once with the numbers, instead of swapping for hours. Unknown availability passes;
    PKD_HARNESS_SKIP_MEMORY_CHECK=1 skips the check (the estimate is the inputs alone: training needs more)."""
    if os.environ.get("PKD_HARNESS_SKIP_MEMORY_CHECK") == "1":
        return
    avail, source = available_memory()
    if 0 <= avail < needed:
        raise TaskError(f"not enough memory to load {what}: it needs {needed / 2**30:.2f} GiB, and "
                        f"{avail / 2**30:.2f} GiB is available ({source}). Free memory (other jobs), run on a machine "
                        f"with more, or use a smaller feature set (fewer feature dims). "
                        f"PKD_HARNESS_SKIP_MEMORY_CHECK=1 skips this check (the system may then swap)")


# --- split audit ----------------------------------------------------------------------------------

def audit_split(splits: dict[str, tuple[np.ndarray, np.ndarray]], where: str, strict: bool,
                group_name: str = "subject") -> dict:
    """Audit a split: duplicate samples within each part, samples and groups shared between parts.

    splits: part name ("train", "val", "test") -> (sample ids, group ids), one entry per listed sample.
    Returns the counts (for FoldData.info); warns (SplitLeakWarning) or, with strict, raises TaskError.
    """
    info: dict = {"duplicates": {}, "shared_samples": {}, f"shared_{group_name}s": {}, "examples": {}}
    for part, (ids, _) in splits.items():
        counts = Counter(map(str, ids))
        dup = {k: c for k, c in counts.items() if c > 1}
        info["duplicates"][part] = int(sum(c - 1 for c in dup.values()))
        if dup:
            info["examples"][f"duplicates_{part}"] = sorted(dup)[:5]
    parts = list(splits)
    for i, a in enumerate(parts):
        for b in parts[i + 1:]:
            ids_a, groups_a = map(lambda v: set(map(str, v)), splits[a])
            ids_b, groups_b = map(lambda v: set(map(str, v)), splits[b])
            both = sorted(ids_a & ids_b)
            shared_groups = sorted(groups_a & groups_b)
            info["shared_samples"][f"{a}-{b}"] = len(both)
            info[f"shared_{group_name}s"][f"{a}-{b}"] = len(shared_groups)
            if both:
                info["examples"][f"shared_samples_{a}-{b}"] = both[:5]
            if shared_groups:
                info["examples"][f"shared_{group_name}s_{a}-{b}"] = shared_groups[:5]
    problems = [f"{n} repeated sample(s) in {p}" for p, n in info["duplicates"].items() if n]
    problems += [f"{n} sample(s) in both {ab.replace('-', ' and ')}" for ab, n in info["shared_samples"].items() if n]
    problems += [f"{n} {group_name}(s) in both {ab.replace('-', ' and ')}"
                 for ab, n in info[f"shared_{group_name}s"].items() if n]
    info["leaks"] = problems
    if problems:
        msg = (f"split audit of {where}: " + "; ".join(problems)
               + f" (examples: {info['examples']}). Results on this split are not {group_name}-independent.")
        if strict:
            raise TaskError(msg + " Fix: use a subject-grouped protocol, or set task.strict_splits=false to accept "
                                  "this split as given (e.g. to reproduce a paper's protocol).")
        warnings.warn(msg + " (task.strict_splits=true makes this an error)", SplitLeakWarning, stacklevel=2)
    return info


def holdout_groups(groups: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held_out): a random `fraction` of the distinct groups held out (GroupShuffleSplit)."""
    from sklearn.model_selection import GroupShuffleSplit

    groups = np.asarray(groups).astype(str)
    if len(set(groups)) < 2:
        raise TaskError(f"only {len(set(groups))} group(s) in the training data: cannot hold some out for validation; "
                        f"the data needs at least 2 subjects/videos in training")
    keep, out = next(GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed).split(groups, groups=groups))
    return np.sort(keep), np.sort(out)
