"""Shared by tasks/mosi.py, tasks/mosei.py and tasks/iemocap.py: third-party feature pickles.

- `load_pickle`: a restricted unpickler. These files come from third parties and `pickle.load` runs
  whatever a pickle names; ours builds only numpy arrays, dtypes and builtin containers and refuses
  any other global, naming the file and the global. Always `encoding="latin1"` (Python-2 pickles).
  With `cast=` the loaders have float64 inputs (MOSEI's audio) cast to float32 as each array is read
  (`CastOnRead`), so a float64 array never sits in memory beside the rest of the file.
- `as_float32`: the cast to float32 first, then NaN/±inf -> 0, counted (MOSEI audio overflows in the
  cast; COVAREP has -inf; docs/datasets.md#general and #mmsa-cleaning).
- `PickleTask`: what the three tasks share: `task.source=real|mimic`, the file lookup with one clear
  error, the mimic marker, `protocol=full|privileged`, the pickles' own train/valid/test as fold 0,
  and the optional feature cache (harness/cache.py).
- The mimic writers: MMSA `aligned_50.pkl` / `unaligned_50.pkl` and MulT `iemocap_data*.pkl` in the
  real layouts with a planted learnable relation, generated into memory-mapped scratch files and pickled
  from them (`dump_pickle`), so a MOSEI-sized mimic never holds the whole tree in memory. Every mimic tree
  carries a `MIMIC_DATA.txt` beside the pickle and a `__mimic__` key inside it, so its numbers are always
  labelled mimic.
"""

from __future__ import annotations

import codecs
import json
import pickle
import re
import struct
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
from filelock import FileLock
from numpy._core.multiarray import _reconstruct, scalar
from numpy._core.numeric import _frombuffer

from harness.data import FoldData, Split, TargetSpec, TaskSpec
from harness.task import Task, TaskError
from harness.teachers import stable_hash

SPLITS = {"train": "train", "val": "valid", "test": "test"}  # FoldData field -> pickle key
MIMIC_MARKER_FILE = "MIMIC_DATA.txt"
MIMIC_MARKER_KEY = "__mimic__"
MIMIC_WRITER_VERSION = 2  # bump when a mimic writer changes, so task.source=mimic writes fresh files

# ---------------------------------------------------------------------------------------------------
# Restricted unpickling

_BUILTIN_CONTAINERS = {"set": set, "frozenset": frozenset, "bytearray": bytearray, "complex": complex}
# (module, name) -> the object to hand the unpickler. numpy.core.* is what NumPy 1.x wrote,
# numpy._core.* what NumPy 2 writes; "__builtin__" is Python 2's name of builtins.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    **{(f"numpy.{core}.multiarray", "_reconstruct"): _reconstruct for core in ("core", "_core")},
    **{(f"numpy.{core}.multiarray", "scalar"): scalar for core in ("core", "_core")},
    **{(f"numpy.{core}.numeric", "_frombuffer"): _frombuffer for core in ("core", "_core")},
    **{(mod, name): obj for mod in ("builtins", "__builtin__") for name, obj in _BUILTIN_CONTAINERS.items()},
    ("collections", "OrderedDict"): dict,
}


class RefusedPickleError(TaskError):
    """A pickle names something other than numpy arrays, dtypes and builtin containers."""


class CastOnRead:
    """A float64 array of a pickle that the loader reads as float32 (`cast` of load_pickle): cast and cleaned by
    `as_float32` the moment the unpickler built it, while the file's later arrays are not read yet, so its float64
    original (MOSEI's audio: twice its float32 size) is freed before the next array is read. `array` is the
    float32 result, `counts` as_float32's counts (the overflow count needs the float64 values); `as_float32`
    hands both back unchanged, and `np.asarray` gives the array."""

    __slots__ = ("array", "counts")

    def __init__(self, array: np.ndarray, where: str):
        self.array, self.counts = as_float32(array, where)

    def __array__(self, dtype=None, copy=None):
        return self.array if dtype is None else self.array.astype(dtype, copy=False)


class _ArrayOnRead:
    """What the restricted unpickler builds for numpy's `_reconstruct`: an empty object that numpy's pickled
    state (BUILD) fills. It builds the array the way numpy does (the array keeps the pickle's bytes, no copy),
    then casts it to float32 at once when `cast(array)` says so and has the unpickler forget the float64 bytes
    (its memo would hold them to the end of the file); `_resolve` swaps it for the array after loading."""

    __slots__ = ("value", "unpickler")

    def __init__(self, unpickler: "CastingUnpickler"):
        self.value, self.unpickler = None, unpickler

    def __setstate__(self, state):
        if isinstance(state[-1], list):  # an object array: its elements (maybe arrays) are built already
            state = (*state[:-1], [_resolve(v) for v in state[-1]])
        array = _reconstruct(np.ndarray, (0,), b"b")
        array.__setstate__(state)
        u, self.unpickler = self.unpickler, None
        if array.dtype == np.float64 and u.cast(array):
            self.value = CastOnRead(array, f"{u.path} (an array cast to float32 as it was read)")
            u.forget(state, state[-1])
        else:
            self.value = array


def _resolve(obj: Any) -> Any:
    """The unpickled tree with every _ArrayOnRead replaced by its array (or CastOnRead), in place."""
    if isinstance(obj, _ArrayOnRead):
        return obj.value
    if isinstance(obj, dict):
        for k, v in obj.items():
            obj[k] = _resolve(v)
    elif isinstance(obj, list):
        obj[:] = [_resolve(v) for v in obj]
    elif isinstance(obj, tuple):
        return tuple(_resolve(v) for v in obj)
    return obj


class _Restricted:
    """find_class of the two unpicklers below: only ALLOWED_GLOBALS (plus latin1 `_codecs.encode`)."""

    path: str
    cast: Callable[[np.ndarray], bool] | None = None

    def find_class(self, module: str, name: str):
        if (module, name) == ("_codecs", "encode"):
            return self._latin1_encode  # how Python 3 writes bytes at protocol 2
        if self.cast is not None and name in ("_reconstruct", "_frombuffer") and (module, name) in ALLOWED_GLOBALS:
            return self._reconstruct_on_read if name == "_reconstruct" else self._frombuffer_on_read
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise RefusedPickleError(
                f"{self.path}: refused to unpickle global '{module}.{name}'. Only numpy arrays, dtypes and builtin "
                f"containers are loaded from third-party pickles (running anything else could execute code). "
                f"This file is not a plain MMSA/MulT feature pickle: check where it came from.") from None

    def _reconstruct_on_read(self, subtype, shape, dtype):
        if subtype is not np.ndarray:
            raise RefusedPickleError(f"{self.path}: refused to rebuild an array of type {subtype!r} "
                                     f"(only numpy.ndarray)")
        return _ArrayOnRead(self)

    def _frombuffer_on_read(self, buf, dtype, shape, order):  # how numpy pickles at protocol 5
        array = _frombuffer(buf, dtype, shape, order)
        if array.dtype == np.float64 and self.cast(array):
            return CastOnRead(array, f"{self.path} (an array cast to float32 as it was read)")
        return array

    def _latin1_encode(self, text: str, encoding: str = "utf-8"):
        if codecs.lookup(encoding).name != "iso8859-1":
            raise RefusedPickleError(f"{self.path}: refused _codecs.encode with encoding {encoding!r} (only latin1 "
                                     f"appears in pickled bytes)")
        return text.encode("latin1")


class RestrictedUnpickler(_Restricted, pickle.Unpickler):
    """pickle.Unpickler whose find_class admits only ALLOWED_GLOBALS (plus latin1 `_codecs.encode`)."""

    def __init__(self, file, path: Path | str):
        pickle.Unpickler.__init__(self, file, encoding="latin1")
        self.path = str(path)


class CastingUnpickler(_Restricted, pickle._Unpickler):
    """RestrictedUnpickler that reads a float64 array for which cast(array) is true as a CastOnRead (float32,
    cleaned), see there. Python's own pure-Python unpickler: its memo is a dict from which a cast array's float64
    bytes can be dropped mid-file (the C unpickler's memo cannot be edited while it reads); the big arrays are
    single reads of their bytes either way."""

    def __init__(self, file, path: Path | str, cast: Callable[[np.ndarray], bool]):
        pickle._Unpickler.__init__(self, file, encoding="latin1")
        self.path, self.cast = str(path), cast

    def forget(self, *objects) -> None:
        """Drop these objects from the memo (an array's state and bytes, which numpy's pickles never refer to
        again), so they are freed now rather than when the file is read to its end."""
        for key in [k for k, v in self.memo.items() if any(v is o for o in objects)]:
            self.memo[key] = None  # not deleted: MEMOIZE numbers the next entry len(memo)


def load_pickle(path: Path | str, cast: Callable[[np.ndarray], bool] | None = None) -> Any:
    """Unpickle a third-party file with RestrictedUnpickler; TaskError naming the file on any failure, and before
    reading, when the machine has not even the file's size free (its arrays alone take that much).

    cast: float64 arrays for which cast(array) is true come back as CastOnRead (float32, cleaned as they were read;
    the loaders pass their inputs' test); None: every array as the file has it."""
    path = Path(path)
    if path.is_file():
        from tasks._common import check_memory  # tasks._common imports pandas: only when a file is read

        check_memory(path.stat().st_size, f"{path} (unpickled, its arrays alone take the file's size; the float32 "
                                          f"inputs made from them take up to as much again)")
    try:
        with open(path, "rb") as f:
            unpickler = RestrictedUnpickler(f, path) if cast is None else CastingUnpickler(f, path, cast)
            try:
                data = unpickler.load()
            finally:  # the memo holds every object, and bound methods in it make a cycle: free it now, not at gc
                unpickler.memo.clear()
        return data if cast is None else _resolve(data)
    except TaskError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise TaskError(f"{path}: cannot be read as a pickle ({type(e).__name__}: {e}); the file may be truncated "
                        f"or not a feature pickle: download it again") from None


# ---------------------------------------------------------------------------------------------------
# Cleaning

def as_float32(x: Any, where: str, in_place: bool = False, chunk_rows: int = 512) -> tuple[np.ndarray, dict[str, int]]:
    """Cast to float32 FIRST, then count and zero NaN, +inf and -inf (docs/datasets.md#general).

    `overflow` counts finite source values that became ±inf in the cast (MOSEI float64 audio).
    in_place: clean a float32 input in place instead of copying it (the loader owns what it unpickled).
    Works in row chunks so the temporaries stay small on MOSEI-sized arrays.
    """
    if isinstance(x, CastOnRead):  # cast and cleaned already, as the file was read
        return x.array, dict(x.counts)
    src = np.asarray(x)
    if not (np.issubdtype(src.dtype, np.number) or src.dtype == bool):
        raise TaskError(f"{where}: expected a numeric array, got dtype {src.dtype}")
    same = in_place and src.dtype == np.float32 and src.flags.writeable
    out = src if same else np.empty(src.shape, np.float32)
    counts = {"nan": 0, "posinf": 0, "neginf": 0, "overflow": 0}
    for i in range(0, len(src), chunk_rows):
        block = out[i:i + chunk_rows]
        if not same:
            with np.errstate(over="ignore", invalid="ignore"):
                block[...] = src[i:i + chunk_rows]
        bad = ~np.isfinite(block)
        if bad.any():  # rare: look closer only then
            values = block[bad]
            counts["nan"] += int(np.isnan(values).sum())
            counts["posinf"] += int(np.isposinf(values).sum())
            counts["neginf"] += int(np.isneginf(values).sum())
            counts["overflow"] += 0 if same else int(np.isfinite(src[i:i + chunk_rows][bad]).sum())
            block[bad] = 0.0
    return out, counts


def check_lengths(raw: Any, x: np.ndarray, where: str) -> tuple[np.ndarray, dict[str, int]]:
    """Valid lengths as int64 [N], clipped to [0, T]; counts of clipped, empty, and of samples with
    non-zero values after their length (a hint that the file pads on the other side: verify)."""
    lengths = np.asarray(raw).reshape(-1)
    if len(lengths) != len(x):
        raise TaskError(f"{where}: {len(lengths)} lengths for {len(x)} sequences")
    lengths = np.nan_to_num(lengths.astype(np.float64)).round().astype(np.int64)
    T = x.shape[1]
    clipped = int(((lengths < 0) | (lengths > T)).sum())
    lengths = np.clip(lengths, 0, T)
    return lengths, {"clipped": clipped, "empty": int((lengths == 0).sum()),
                     "nonzero_after_length": sum(bool(x[n, k:].any()) for n, k in enumerate(lengths))}


def decode_ids(raw: Any, where: str) -> np.ndarray:
    """Sample ids as str [N]: bytes decoded (MulT), 2-D id rows joined with '$_$'."""
    arr = np.asarray(raw)

    def text(v) -> str:
        return v.decode("utf-8", errors="replace") if isinstance(v, (bytes, np.bytes_)) else str(v)
    if arr.ndim == 1:
        return np.array([text(v) for v in arr], dtype=object).astype(str)
    if arr.ndim == 2:
        return np.array(["$_$".join(text(v) for v in row) for row in arr], dtype=object).astype(str)
    raise TaskError(f"{where}: ids must be [N] or [N, k], got shape {arr.shape}")


_IEMOCAP_UTTERANCE = re.compile(r"^(Ses\d\d[FM]_.+)_[FM]\d+")


def group_of(sample_id: str) -> str:
    """The video (MMSA `<video>$_$<clip>`) or IEMOCAP dialog a sample belongs to; else the id itself."""
    head = sample_id.split("$_$")[0]
    m = _IEMOCAP_UTTERANCE.match(head)
    return m.group(1) if m else head


def split_of(data: Any, key: str, path: Path) -> dict:
    if not isinstance(data, dict):
        raise TaskError(f"{path}: expected a dict with keys train/valid/test, got {type(data).__name__}")
    if key not in data or not isinstance(data[key], dict):
        raise TaskError(f"{path}: no split '{key}' (top-level keys: {sorted(map(str, data))})")
    return data[key]


def require(d: dict, keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if k not in d]
    if missing:
        raise TaskError(f"{where}: missing key(s) {missing} (keys present: {sorted(map(str, d))})")


def read_modalities(d: dict, names: tuple[str, ...], where: str, n: int, info: dict
                    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """float32 [N, T, D] inputs by key name, plus `<name>_lengths` when the file has them."""
    inputs, lengths = {}, {}
    for m in names:
        x, counts = as_float32(d[m], f"{where}['{m}']", in_place=True)
        if x.ndim != 3 or len(x) != n:
            raise TaskError(f"{where}['{m}']: expected [N={n}, T, D], got shape {x.shape}")
        inputs[m] = x
        info.setdefault("cleaned", {})[m] = counts
        if f"{m}_lengths" in d:
            key = f"{m}_lengths"
            lengths[m], info.setdefault("lengths", {})[m] = check_lengths(d[key], x, f"{where}['{key}']")
    return inputs, lengths


def bert_tokens(raw: Any, where: str, n: int, info: dict) -> np.ndarray:
    """MMSA's text_bert [N, 3, L] (rows: input ids, attention mask, segment ids) as float32 [N, L, 3]: one
    3-channel step per token, the [N, T, D] layout of every input (DMD's BERT casts ids and segments back to
    integers, as the official encoder does). Non-finite entries are zeroed and counted, as in every input."""
    x, counts = as_float32(raw, where)
    if x.ndim != 3 or len(x) != n or x.shape[1] != 3:
        raise TaskError(f"{where}: expected [N={n}, 3, L] (input ids, attention mask, segment ids), got shape {x.shape}")
    info.setdefault("cleaned", {})["text_bert"] = counts
    return np.ascontiguousarray(x.transpose(0, 2, 1))


def audit_ids(splits: dict[str, Split]) -> dict[str, int]:
    """Duplicate ids within a split and ids / groups shared between train and test (leak audit)."""
    tr, te = splits["train"], splits["test"]
    return {"duplicate_ids": int(sum(len(s.ids) - len(set(s.ids)) for s in splits.values())),
            "ids_in_train_and_test": len(set(tr.ids) & set(te.ids)),
            "groups_in_train_and_test": len(set(tr.groups) & set(te.groups))}


# ---------------------------------------------------------------------------------------------------
# The task base

class PickleTask(Task):
    leaderboard_note = ("Text = the pickle's precomputed, frozen BERT features (`text`) unless a section's variant "
                        "says 'BERT fine-tuned' (method=dmd method.text_encoder=bert on mosi/mosei, the row label "
                        "shows the override). The papers' DMD* / 'BERT fine-tuned' rows fine-tune BERT, so a harness "
                        "`dmd` row with frozen text features is not a reproduction of DMD*.")
    """A task read from one feature pickle with its own train/valid/test split (one fold).

    Subclasses set the class attributes, `file_name`, `metric_names`, `read(data, path) -> (splits, info)`
    and `write_mimic_files`.
    """

    modality_order: tuple[str, ...] = ("text", "audio", "vision")
    look_in: tuple[str, ...] = ()  # sub-folders of data_root tried in order, first = the documented place
    file_description: str = "dataset file"
    target: TargetSpec
    metric_choices: tuple[str, ...] = ()

    def __init__(self, cfg):
        super().__init__(cfg)
        c = self.cfg
        if c.source not in ("real", "mimic"):
            raise TaskError(f"task.source={c.source!r}: choose real (files under task.data_root) or mimic")
        if c.protocol not in ("full", "privileged"):
            raise TaskError(f"task.protocol={c.protocol!r}: choose full (every modality at test, the literature's "
                            f"setting) or privileged (the student keeps task.student_modalities)")
        students = list(c.student_modalities)
        bad = [m for m in students if m not in self.modality_order]
        if c.protocol == "privileged" and (bad or not students or set(students) == set(self.modality_order)):
            raise TaskError(f"task.student_modalities={students}: with protocol=privileged choose a non-empty proper "
                            f"subset of {list(self.modality_order)} (or protocol=full for all of them)")
        if c.primary_metric not in self.metric_choices:
            raise TaskError(f"task.primary_metric={c.primary_metric!r}: choose one of {list(self.metric_choices)}")
        self._fold: FoldData | None = None
        self._dims: dict[str, int] | None = None
        self._saw_marker = False

    # --- files ---------------------------------------------------------------------------------
    @property
    def file_name(self) -> str:
        raise NotImplementedError

    def mimic_root(self) -> Path:
        """<mimic_dir>/<hash of the mimic settings>: written once, shared by every run with those settings."""
        settings = {"task": self.name, "writer": MIMIC_WRITER_VERSION, **dict(self.cfg.mimic)}
        return Path(self.cfg.mimic_dir) / stable_hash(settings, n=10)

    def data_file(self) -> Path:
        """The pickle this config reads; with source=mimic the mimic tree is written first if absent."""
        root = Path(self.cfg.data_root) if self.cfg.source == "real" else self.mimic_root()
        if self.cfg.source == "mimic":
            root.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(root) + ".lock"):
                if not (root / self.look_in[0] / MIMIC_MARKER_FILE).exists():
                    self.write_mimic(root, self.cfg)
        candidates = [root.expanduser().absolute() / sub / self.file_name for sub in self.look_in]
        for path in candidates:
            if path.is_file():
                return path
        raise TaskError(
            f"task {self.name}: no data file at {candidates[0]}. Put the {self.file_description} there, i.e. "
            f"task.data_root=DIR with {Path('DIR', self.look_in[0], self.file_name)} (also accepted: "
            f"{', '.join(str(Path('DIR', sub, self.file_name)) for sub in self.look_in[1:])}), or try the harness "
            f"on mimic data: task.source=mimic, or `harness data mimic task={self.name} out=DIR` then "
            f"task.data_root=DIR.")

    @property
    def data_source(self) -> str:
        if self.cfg.source == "mimic" or self._saw_marker:
            return "mimic"
        try:
            return "mimic" if (self.data_file().parent / MIMIC_MARKER_FILE).exists() else "real"
        except TaskError:
            return "real"

    # --- folds ---------------------------------------------------------------------------------
    @property
    def n_folds(self) -> int:
        return 1  # the pickle's own train/valid/test; seeds vary initialisation only

    @property
    def config_n_folds(self) -> int:
        return self.n_folds

    def read(self, data: dict, path: Path) -> tuple[dict[str, Split], dict]:
        raise NotImplementedError

    @staticmethod
    def cast_on_read(array: np.ndarray) -> bool:
        """Which float64 arrays of the file are inputs, cast to float32 as they are read (load_pickle's cast):
        the [N, T, D] sequences (and MMSA's text_bert [N, 3, L], read as float32 anyway)."""
        return array.ndim == 3

    def source_files(self) -> list[Path]:
        """The one pickle every split comes from."""
        return [self.data_file()]

    def load_fold(self, fold: int) -> FoldData:
        self.check_fold(fold)
        if self._fold is None:
            path = self.data_file()
            if self.cfg.get("feature_cache", False):
                splits, info = self._read_cached(path)
            else:
                splits, info = self._read_marked(load_pickle(path, self.cast_on_read), path)
            info = {"file": str(path), "split": "the file's own train/valid/test (fold 0); seeds vary "
                                                "initialisation only", **info, **audit_ids(splits)}
            self._dims = {m: int(splits["train"].inputs[m].shape[-1]) for m in self.modality_order}
            self._fold = FoldData(train=splits["train"], val=splits["val"], test=splits["test"], info=info)
        return self._fold

    def _read_marked(self, data: Any, path: Path) -> tuple[dict[str, Split], dict]:
        if isinstance(data, dict) and MIMIC_MARKER_KEY in data:
            self._saw_marker = True
        splits, info = self.read(data, path)
        info["mimic_marker"] = self._saw_marker
        return splits, info

    def _read_cached(self, path: Path) -> tuple[dict[str, Split], dict]:
        """The cleaned arrays through the feature cache (HF datasets), keyed by the file and this config."""
        from harness.cache import cached_arrays

        memo: dict[str, Any] = {}

        def parsed():
            if not memo:
                memo["splits"], memo["info"] = self._read_marked(load_pickle(path, self.cast_on_read), path)
            return memo["splits"], memo["info"]

        def build_split(name: str) -> Callable[[], dict]:
            def build():
                s = parsed()[0][name]
                return {"ids": s.ids, "groups": s.groups, "targets": s.targets,
                        **{f"x_{m}": v for m, v in s.inputs.items()}, **{f"len_{m}": v for m, v in s.lengths.items()}}
            return build

        config = {"reader": self.reader_config(), "version": 1}
        cache_dir = Path(self.cfg.feature_cache_dir)
        splits = {}
        for name in SPLITS:
            cols, _ = cached_arrays(f"{self.name}-{name}", [path], config, build_split(name), cache_dir)
            splits[name] = Split(ids=np.asarray(cols["ids"]).astype(str), groups=np.asarray(cols["groups"]).astype(str),
                                 inputs={m: np.asarray(cols[f"x_{m}"], np.float32) for m in self.modality_order},
                                 targets=np.asarray(cols["targets"]).astype(self.target_dtype),
                                 lengths={k[4:]: np.asarray(v, np.int64) for k, v in cols.items()
                                          if k.startswith("len_")})
        info_cols, _ = cached_arrays(f"{self.name}-info", [path], config,
                                     lambda: {"json": [json.dumps(parsed()[1])]}, cache_dir)
        info = json.loads(str(info_cols["json"][0]))
        self._saw_marker = self._saw_marker or bool(info.get("mimic_marker"))
        return splits, info

    @property
    def target_dtype(self):
        return np.float32 if self.target.kind == "regression" else np.int64

    def reader_config(self) -> dict:
        """The config keys that change what `read` returns (the feature cache's key)."""
        return {"file": self.file_name}

    # --- spec ----------------------------------------------------------------------------------
    def modality_dims(self) -> dict[str, int]:
        """Feature dims as read from the file (loads it if no fold was loaded yet)."""
        if self._dims is None:
            self.load_fold(0)
        return dict(self._dims)

    @property
    def student_modalities(self) -> tuple[str, ...]:
        if self.cfg.protocol == "full":
            return self.modality_order
        return tuple(m for m in self.modality_order if m in set(self.cfg.student_modalities))

    def metric_names(self) -> tuple[str, ...]:
        raise NotImplementedError

    @property
    def spec(self) -> TaskSpec:
        names = self.metric_names()
        primary = self.cfg.primary_metric
        return TaskSpec(modalities=self.modality_dims(), student_modalities=self.student_modalities,
                        target=self.target, metrics=(primary, *[m for m in names if m != primary]))

    def protocol_label(self) -> str:
        if self.cfg.protocol == "full":
            return "protocol=full (all modalities at test, the literature's setting)"
        privileged = [m for m in self.modality_order if m not in self.student_modalities]
        return f"protocol=privileged (student {'+'.join(self.student_modalities)}, privileged {'+'.join(privileged)})"

    # --- mimic ---------------------------------------------------------------------------------
    @classmethod
    def write_mimic(cls, out_dir: Path, cfg) -> Path:
        out_dir = Path(out_dir)
        folder = out_dir / cls.look_in[0]
        folder.mkdir(parents=True, exist_ok=True)
        written = cls.write_mimic_files(folder, cfg)
        (folder / MIMIC_MARKER_FILE).write_text(
            f"MIMIC DATA written by pkd-harness ({cls.__module__}.{cls.__name__}.write_mimic).\n"
            f"Same on-disk layout as the real {cls.name} files, NOT real data: synthetic features with a planted\n"
            f"label relation. Numbers computed on it are labelled 'mimic' and say nothing about the real dataset.\n"
            f"files: {', '.join(p.name for p in written)}\nsettings: {json.dumps(dict(cfg.mimic), default=str)}\n")
        return out_dir

    @classmethod
    def write_mimic_files(cls, folder: Path, cfg) -> list[Path]:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------------
# MMSA "Processed" pickles (MOSI, MOSEI): docs/datasets.md#mmsa-files

MMSA_METRICS = ("non0_acc2", "non0_f1", "has0_acc2", "has0_f1", "acc5", "acc7", "mae", "corr")


class MMSATask(PickleTask):
    """MOSI / MOSEI from the MMSA pickles; the subclass names the folder, the mimic dims and the papers.

    Reads by key name: `text` (BERT features [N, 50, 768], frozen: no BERT fine-tuning), `audio`, `vision`
    ([N, T, D], T and D from the file), `regression_labels`, `id` (`<video>$_$<clip>`, video = group);
    lengths from `audio_lengths` / `vision_lengths` (unaligned files) and text's from `text_bert`'s
    attention mask when present.
    """

    target = TargetSpec("regression", ("sentiment",))
    bootstrap_unit = "video"  # Split.groups = the video of `<video>$_$<clip>`: a video's clips share speaker and topic
    metric_choices = MMSA_METRICS + ("mult_acc2", "mult_f1", "acc3")
    file_description = "MMSA feature pickle (a 'Processed' file of thuiar/MMSA's README, which lists its SHA-256)"
    mimic_dims: dict[str, int] = {}
    mimic_unaligned_T: dict[str, int] = {}
    mimic_mosei_quirks = False  # float64 audio that overflows float32 and a label > 3 (docs/datasets.md#mmsa-cleaning)

    @property
    def file_name(self) -> str:
        return "aligned_50.pkl" if self.cfg.aligned else "unaligned_50.pkl"

    @property
    def text_tokens(self) -> bool:
        """task.text_input=bert: the text modality is text_bert's tokens [N, L, 3] (ids, mask, segments per token,
        float32 like every input) for DMD's BERT (method.text_encoder=bert, which this key follows); frozen: the
        file's `text` features."""
        value = self.cfg.get("text_input", "frozen")
        if value not in ("frozen", "bert"):
            raise TaskError(f"task.text_input={value!r}: choose frozen (the file's text features) or bert (its "
                            f"text_bert tokens, for method=dmd method.text_encoder=bert)")
        return value == "bert"

    def reader_config(self) -> dict:
        tokens = {"text_input": "bert"} if self.text_tokens else {}  # frozen: the key the cache always had
        return {"file": self.file_name, "clip_labels": bool(self.cfg.clip_labels), **tokens}

    def metric_names(self) -> tuple[str, ...]:
        return MMSA_METRICS

    def variant(self) -> str:
        text = ("text = BERT fine-tuned on the file's text_bert tokens (DMD*)" if self.text_tokens
                else "frozen BERT features")
        return (f"{'aligned' if self.cfg.aligned else 'unaligned'}, {text}, {self.protocol_label()}, "
                f"file's train/valid/test split (seeds vary init only)")

    def read(self, data: dict, path: Path) -> tuple[dict[str, Split], dict]:
        splits, info = {}, {}
        for field_name, key in SPLITS.items():
            d = split_of(data, key, path)
            where = f"{path}['{key}']"
            text_key = "text_bert" if self.text_tokens else "text"
            require(d, (text_key, "audio", "vision", "regression_labels", "id"), where)
            ids = decode_ids(d["id"], f"{where}['id']")
            sinfo: dict[str, Any] = {}
            if self.text_tokens:
                inputs, lengths = read_modalities(d, ("audio", "vision"), where, len(ids), sinfo)
                inputs = {"text": bert_tokens(d["text_bert"], f"{where}['text_bert']", len(ids), sinfo), **inputs}
                lengths["text"] = np.rint(inputs["text"][:, :, 1]).sum(1).astype(np.int64)
                sinfo["text_lengths"] = "text_bert attention mask (row 1)"
            else:
                inputs, lengths = read_modalities(d, self.modality_order, where, len(ids), sinfo)
            if "text" not in lengths and "text_bert" in d:
                bert = np.asarray(d["text_bert"])
                if bert.ndim == 3 and bert.shape[:2] == (len(ids), 3) and bert.shape[2] == inputs["text"].shape[1]:
                    lengths["text"] = np.rint(np.nan_to_num(bert[:, 1, :].astype(np.float64))).sum(1).astype(np.int64)
                    sinfo["text_lengths"] = "text_bert attention mask (row 1)"
            y = np.asarray(d["regression_labels"], np.float64).reshape(-1)
            if len(y) != len(ids):
                raise TaskError(f"{where}['regression_labels']: {len(y)} labels for {len(ids)} ids")
            if not np.isfinite(y).all():
                raise TaskError(f"{where}['regression_labels']: {int((~np.isfinite(y)).sum())} non-finite labels "
                                f"(at rows {np.flatnonzero(~np.isfinite(y))[:5].tolist()}...): the file is damaged")
            if self.cfg.clip_labels:
                # old MOSEI labels reach 11/3 (docs/datasets.md#mmsa-cleaning)
                sinfo["labels_clipped"] = int((np.abs(y) > 3).sum())
                y = np.clip(y, -3.0, 3.0)
            splits[field_name] = Split(ids=ids, groups=np.array([group_of(i) for i in ids]), inputs=inputs,
                                       targets=y.astype(np.float32)[:, None], lengths=lengths)
            info[key] = sinfo
        return splits, info

    @classmethod
    def write_mimic_files(cls, folder: Path, cfg) -> list[Path]:
        """aligned_50.pkl and unaligned_50.pkl with the same samples (as MMSA ships them).

        Planted relation: label y (multiples of 1/3 in [-3, 3], plus the edge values 0, ±0.5, ±2.5, ±3 and for
        MOSEI 11/3 > 3); text carries y + 0.2·noise at every valid token, audio and vision each carry
        y + 2·(own noise), so text is the strong privileged modality and A+V a weaker student.
        Quirks of the real files: -inf and a NaN in audio, float64 audio overflowing float32 (MOSEI).
        """
        with ScratchArrays(folder) as scratch:
            return cls._write_mimic_pickles(folder, cfg, scratch)

    @classmethod
    def _write_mimic_pickles(cls, folder: Path, cfg, scratch: ScratchArrays) -> list[Path]:
        rng = np.random.default_rng(int(cfg.mimic.seed))
        dims, T_un = cls.mimic_dims, cls.mimic_unaligned_T
        W = mixing_matrices(rng, 1, dims)
        T_text = 50
        edge = [0.0, 0.5, -0.5, 2.5, -2.5, 3.0, -3.0] + ([11 / 3] if cls.mimic_mosei_quirks else [])
        common, text_lengths = {}, {}
        for key, n in mimic_sizes(cfg).items():
            if n < len(edge) + 2:
                raise TaskError(f"task.mimic.n_{key}={n}: the mimic needs at least {len(edge) + 2} samples per split")
            n_videos = max(1, n // 4)
            video_of = np.sort(rng.integers(0, n_videos, n))
            vids = video_ids(rng, n_videos)
            clip_no = np.arange(n) - np.searchsorted(video_of, video_of) + 1  # 1, 2, ... within each video
            ids = np.array([f"{vids[v]}$_${c}" for v, c in zip(video_of, clip_no)], dtype=object)
            y = np.clip(np.round(1.6 * rng.standard_normal(n) * 3) / 3, -3, 3)
            y[: len(edge)] = edge
            text_lengths[key] = text_len = rng.integers(10, T_text + 1, n)
            text = planted_sequences(rng, (y + 0.2 * rng.standard_normal(n))[:, None] / 2, W["text"], text_len, T_text,
                                     pad_noise=0.5, alloc=scratch)
            bert = np.zeros((n, 3, T_text), np.float32)
            tokens = np.arange(T_text)[None, :] < text_len[:, None]
            bert[:, 0] = np.where(tokens, rng.integers(1000, 30000, (n, T_text)), 0)
            bert[:, 0, 0] = 101  # [CLS]
            bert[np.arange(n), 0, text_len - 1] = 102  # [SEP]
            bert[:, 1] = tokens
            common[key] = {"raw_text": np.array([f"mimic utterance {i}" for i in range(n)], dtype=object), "id": ids,
                           "text": text, "text_bert": bert, "regression_labels": y.astype(np.float32),
                           "annotations": np.array(["Negative", "Neutral", "Positive"],
                                                   dtype=object)[np.sign(y).astype(int) + 1],
                           "classification_labels": (np.sign(y) + 1).astype(np.float32)}
        written = []
        for layout in ("aligned", "unaligned"):  # one file at a time, its arrays in scratch files
            out = {MIMIC_MARKER_KEY: "mimic data written by pkd-harness: not real data"}
            for key, c in common.items():
                n, y = len(c["id"]), c["regression_labels"]
                if layout == "aligned":
                    T = {"audio": T_text, "vision": T_text}
                    lens = {"audio": text_lengths[key], "vision": text_lengths[key]}  # word-aligned
                else:
                    T, lens = T_un, {m: rng.integers(T_un[m] // 4, T_un[m] + 1, n) for m in T_un}
                signal = {m: (y + 2.0 * rng.standard_normal(n))[:, None] / 2 for m in ("audio", "vision")}
                audio = planted_sequences(rng, signal["audio"], W["audio"], lens["audio"], T["audio"],
                                          dtype=np.float64 if cls.mimic_mosei_quirks else np.float32, alloc=scratch)
                vision = planted_sequences(rng, signal["vision"], W["vision"], lens["vision"], T["vision"],
                                           alloc=scratch)
                audio[0, 0, 0] = -np.inf  # COVAREP -inf
                if key == "train":
                    audio[1, 0, 0] = np.nan
                    if cls.mimic_mosei_quirks:
                        audio[2, 0, 0], audio[3, 0, 0] = 1e39, -1e39  # overflow in the float32 cast
                out[key] = {**c, "audio": audio, "vision": vision}
                if layout == "unaligned":
                    out[key].update(audio_lengths=lens["audio"], vision_lengths=lens["vision"])
            written.append(dump_pickle(out, folder / f"{layout}_50.pkl"))
            del out
        return written


class _StreamingPickler(pickle._Pickler):
    """Protocol 4 with numpy's own layout for arrays (`_reconstruct` and the state BUILD sets, as `pickle.dump`
    writes them), except that a numeric array's bytes go to the file straight from its buffer (a np.memmap's
    pages) instead of through the bytes copy of the whole array that ndarray.__reduce__ makes. The pure-Python
    pickler: the C one has no hook for writing a buffer at protocol 4."""

    dispatch = dict(pickle._Pickler.dispatch)

    def reducer_override(self, obj):
        if isinstance(obj, np.ndarray) and obj.dtype.kind in "biuf" and obj.flags.c_contiguous and obj.size:
            data = memoryview(np.asarray(obj).reshape(-1).view(np.uint8))
            return _reconstruct, (np.ndarray, (0,), b"b"), (1, obj.shape, obj.dtype, False, data)
        return NotImplemented

    def _save_buffer(self, data: memoryview):  # what save_bytes writes for a bytes object of these contents
        n = data.nbytes
        if n < self.framer._FRAME_SIZE_TARGET:  # small: inside the current frame, as a bytes object
            self.save_bytes(data.tobytes())
            return
        header = pickle.BINBYTES8 + struct.pack("<Q", n) if n > 0xFFFFFFFF else pickle.BINBYTES + struct.pack("<I", n)
        self._write_large_bytes(header, data)
        self.memoize(data)

    dispatch[memoryview] = _save_buffer


def dump_pickle(obj: Any, path: Path) -> Path:
    """obj pickled (protocol 4, read back by pickle.load and load_pickle alike) to path, through a temporary file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        _StreamingPickler(f, protocol=4).dump(obj)
    tmp.replace(path)
    return path


class ScratchArrays:
    """Arrays in memory-mapped files of a temporary folder (removed on exit): a mimic's large arrays are generated
    into files the kernel can write out, not into memory, and dump_pickle writes them from there."""

    def __init__(self, beside: Path):
        self._dir = tempfile.TemporaryDirectory(prefix=".mimic-scratch-", dir=beside)
        self._n = 0

    def __call__(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        self._n += 1
        return np.memmap(Path(self._dir.name) / f"{self._n}.bin", dtype=dtype, mode="w+", shape=shape)

    def __enter__(self) -> "ScratchArrays":
        return self

    def __exit__(self, *exc) -> None:
        self._dir.cleanup()


# ---------------------------------------------------------------------------------------------------
# Mimic generation helpers

def mimic_sizes(cfg) -> dict[str, int]:
    return {"train": int(cfg.mimic.n_train), "valid": int(cfg.mimic.n_valid), "test": int(cfg.mimic.n_test)}


def video_ids(rng: np.random.Generator, n_videos: int) -> list[str]:
    """11-character YouTube-like video ids, as in MOSI/MOSEI."""
    alphabet = np.array(list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"))
    return ["".join(rng.choice(alphabet, 11)) for _ in range(n_videos)]


def mixing_matrices(rng: np.random.Generator, signal_dim: int, dims: dict[str, int]) -> dict[str, np.ndarray]:
    """One fixed random map signal -> features per modality, shared by every split and layout (the
    planted relation must be the same in train and test)."""
    return {m: (rng.standard_normal((signal_dim, d)) / np.sqrt(signal_dim)).astype(np.float32) for m, d in dims.items()}


def planted_sequences(rng: np.random.Generator, signal: np.ndarray, W: np.ndarray, lengths: np.ndarray, T: int,
                      noise: float = 1.0, dtype=np.float32, pad_noise: float = 0.0,
                      chunk_rows: int = 1024, alloc: Callable[[tuple, Any], np.ndarray] = np.empty) -> np.ndarray:
    """[N, T, D]: `signal` [N, S] mapped through W [S, D] at every valid step (the first lengths[n] steps)
    plus noise; steps after the length are zeros, or `pad_noise` noise (BERT outputs at padding tokens).
    Generated in row chunks so a MOSEI-sized array needs no float64 temporaries of its full size, into
    alloc(shape, dtype) (a ScratchArrays: a memory-mapped file)."""
    n, D = len(signal), W.shape[1]
    out = alloc((n, T, D), dtype)
    steps = np.arange(T)
    for i in range(0, n, chunk_rows):
        j = min(n, i + chunk_rows)
        x = (signal[i:j].astype(np.float32) @ W)[:, None, :]
        x = x + noise * rng.standard_normal((j - i, T, D), dtype=np.float32)
        valid = (steps[None, :] < lengths[i:j, None])[..., None]
        pad = pad_noise * rng.standard_normal((j - i, T, D), dtype=np.float32) if pad_noise else np.float32(0)
        out[i:j] = np.where(valid, x, pad)
    return out
