"""Processed-feature cache on HF `datasets` (Arrow files, memory-mapped on load).

A loader that turns raw files into arrays (signal processing, audio features...) wraps that work in
`cached_arrays`: the result is stored under `<cache_dir>/features/<name>/<key>/`, keyed by the
source files (path, size, mtime) and the processing config, so a second run with the same files
and config skips the processing, and any change to either recomputes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from filelock import FileLock

from harness.storage import atomic_folder, make_dirs
from harness.teachers import stable_hash


def files_signature(paths: Iterable[Path | str], relative_to: Path | str | None = None) -> list[tuple[str, int, int]]:
    """(path, size, mtime_ns) of each file: cheap, and changes whenever a file is rewritten.

    relative_to: name the files relative to this folder (a task's data root, which is not part of a run's key,
    so the same tree moved or mounted elsewhere keeps its signature); default absolute paths.
    """
    base = None if relative_to is None else os.path.join(os.path.abspath(relative_to), "")
    out = []
    for p in sorted(map(str, paths)):
        st = os.stat(p)
        name = os.path.abspath(p)
        if base is not None:  # slicing, not os.path.relpath: 17,400 BioVid files in ~0.1 s rather than ~1 s
            name = name[len(base):] if name.startswith(base) else os.path.relpath(name, base)
        out.append((name, st.st_size, st.st_mtime_ns))
    return out


def signature_fingerprint(signature: list[tuple[str, int, int]]) -> str:
    """A short hash of a files_signature: the data identity stored in records and teacher keys."""
    return stable_hash([list(s) for s in signature], n=16)


def signature_changes(old: list, new: list) -> dict[str, list[str]]:
    """What differs between two files_signatures: {"changed": [...], "added": [...], "removed": [...]} (names)."""
    before = {name: (size, mtime) for name, size, mtime in old}
    after = {name: (size, mtime) for name, size, mtime in new}
    return {"changed": sorted(n for n in before.keys() & after.keys() if before[n] != after[n]),
            "added": sorted(after.keys() - before.keys()), "removed": sorted(before.keys() - after.keys())}


def cache_key(name: str, sources: Iterable[Path | str], config: dict) -> str:
    return stable_hash({"name": name, "files": files_signature(sources), "config": config}, n=16)


def cached_arrays(name: str, sources: Iterable[Path | str], config: dict, build: Callable[[], dict[str, object]],
                  cache_dir: Path | str) -> tuple[dict[str, np.ndarray], bool]:
    """Return (arrays, hit). `build()` returns {column: array with a first dim N (same N) or list of N arrays}.

    Columns of equal-shaped rows come back as stacked numpy arrays; ragged columns as a list of arrays.
    """
    import datasets

    datasets.disable_progress_bars()
    sources = list(sources)
    key = cache_key(name, sources, config)
    # written a part at a time under <key>.parts; code before the parts wrote one folder <key>, which is still read
    # (and which that code, reading only <key>, never confuses with the parts)
    folder, whole = Path(cache_dir) / "features" / name / f"{key}.parts", Path(cache_dir) / "features" / name / key
    make_dirs(folder.parent)
    with FileLock(str(folder) + ".lock"):
        if not folder.exists() and whole.is_dir():
            return _read(whole), True
        if not folder.exists():
            arrays = build()
            # whole or not at all; a full disk: DiskFullError naming the cache folder and the arrays' size
            with atomic_folder(folder, f"the {name} feature cache", needed=_nbytes(arrays)) as tmp:
                _save(arrays, tmp)
            return {k: _as_array(v) for k, v in arrays.items()}, False
    return _read(folder), True


def _read(folder: Path) -> dict[str, object]:
    """The cached columns: one save_to_disk folder (caches written before the parts), or its parts in order.

    Parts are copied one at a time into arrays of the whole column's size, and each part is let go (its memory map
    closed, Arrow's pool trimmed) before the next is read. Reading the concatenated parts at once held every
    mapped page beside its numpy copy: 2x the column at the peak (MOSEI's training split: 1.4x the whole fold's
    inputs); a part at a time holds the column and about three parts (docs/benchmarks/scale.md). The columns come
    back as the concatenated read gives them: fixed-shape ones stacked, ragged ones a list of arrays (stacked when
    every row has the same shape)."""
    import datasets
    import pyarrow as pa

    paths = sorted(folder.glob("part-*"))
    if not paths:
        return _columns(datasets.load_from_disk(str(folder)))
    heads = [datasets.load_from_disk(str(p)) for p in paths]  # memory maps: no page is read yet
    rows, features = [h.num_rows for h in heads], heads[0].features
    del heads
    if len(paths) == 1 or sum(rows) == 0:
        return _columns(datasets.concatenate_datasets([datasets.load_from_disk(str(p)) for p in paths]))
    kinds, total = {k: _kind(f) for k, f in features.items()}, sum(rows)
    stacked: dict[str, np.ndarray] = {}
    pieces: dict[str, list] = {k: [] for k, kind in kinds.items() if kind != "fixed"}
    start = 0
    for path, n in zip(paths, rows):
        part = _columns(datasets.load_from_disk(str(path)))
        for k, v in part.items():
            if kinds[k] == "fixed":
                if k not in stacked:
                    stacked[k] = np.empty((total, *v.shape[1:]), v.dtype)
                stacked[k][start:start + n] = v
            elif kinds[k] == "ragged":
                pieces[k].extend(np.array(a) for a in v)  # copies of the rows: the part's map can close
            else:
                pieces[k].append(np.asarray(v))
        start += n
        del part
        pa.default_memory_pool().release_unused()
    out = {}
    for k, kind in kinds.items():
        if kind == "fixed":
            out[k] = stacked[k]
        elif kind == "ragged":  # stacked when every row has one shape, as one read of all the rows gives it
            out[k] = np.stack(pieces[k]) if len({a.shape for a in pieces[k]}) == 1 else pieces[k]
        else:
            out[k] = _restack(np.concatenate(pieces[k]))
    return out


def _kind(feature) -> str:
    """fixed: numeric, every row one shape (a scalar, a fixed-length list, an ArrayND) | ragged: numeric rows of
    varying first dimension | other: strings and anything else (joined part after part)."""
    import datasets

    numeric = getattr(feature, "dtype", "") not in ("", "string", "large_string")
    if isinstance(feature, datasets.Value):
        return "fixed" if numeric else "other"
    if isinstance(feature, datasets.List) and isinstance(feature.feature, datasets.Value) and feature.feature.dtype \
            not in ("string", "large_string"):
        return "fixed" if feature.length >= 0 else "ragged"
    if isinstance(feature, (datasets.Array2D, datasets.Array3D, datasets.Array4D, datasets.Array5D)) and numeric:
        return "fixed" if feature.shape[0] is not None else "ragged"
    return "other"


def _columns(ds) -> dict[str, object]:
    # dtype=None: the stored dtypes. datasets' numpy formatter otherwise casts every float column to float32 and
    # every integer column to int64 (datasets 5.2), and a hit would not give back what the build returned.
    return {k: _restack(v) for k, v in ds.with_format("numpy", dtype=None)[:].items()}


def _feature_of(v):
    """An explicit HF feature type for a column, or None to let `datasets` infer it.

    Fixed-shape Array2D..Array5D / fixed-length Sequence types store a numpy array as one Arrow
    buffer and load back zero-copy; inferred nested lists go through Python objects and are about
    20x slower to save and load for [N, T, D] float arrays (benchmarks/bench_feature_cache.py).
    """
    import datasets

    array_types = {2: datasets.Array2D, 3: datasets.Array3D, 4: datasets.Array4D, 5: datasets.Array5D}
    if isinstance(v, np.ndarray):
        if v.dtype.kind in "USO":
            return datasets.Value("string") if v.ndim == 1 and v.dtype.kind in "US" else None
        dtype = str(v.dtype)
        if v.ndim == 1:
            return datasets.Value(dtype)
        if v.ndim == 2:
            return datasets.Sequence(datasets.Value(dtype), length=v.shape[1])
        if v.ndim - 1 in array_types:
            return array_types[v.ndim - 1](shape=tuple(v.shape[1:]), dtype=dtype)
        return None
    if isinstance(v, list) and v and all(isinstance(a, np.ndarray) for a in v):
        first = v[0]
        if first.dtype.kind in "USO" or any(a.dtype != first.dtype or a.shape[1:] != first.shape[1:] for a in v):
            return None
        if first.ndim == 1:
            return datasets.Sequence(datasets.Value(str(first.dtype)))
        if first.ndim in array_types:  # ragged first dim (sequence length), fixed trailing dims
            return array_types[first.ndim](shape=(None, *first.shape[1:]), dtype=str(first.dtype))
    return None


PART_BYTES = 64 << 20  # rows per cache part: converting a part to Arrow peaks at about 5x its size (datasets 5.2)


def _save(arrays: dict[str, object], folder: Path) -> None:
    """The columns saved under folder as Datasets `part-00000`, `part-00001`... of about PART_BYTES of rows each,
    each converted to Arrow and written before the next: converting a [N, T, D] column whole peaks at ~6x its
    size (measured with datasets 5.2), and even in chunks one in-memory Dataset of the whole holds an Arrow copy
    of it beside the arrays (MOSEI's training split: 0.7x the inputs); a part at a time holds one part."""
    import datasets

    features = {k: _feature_of(v) for k, v in arrays.items()}
    if not all(f is not None for f in features.values()):  # some column's type must be inferred: one part
        datasets.Dataset.from_dict({k: list(v) if not isinstance(v, list) else v for k, v in arrays.items()}
                                   ).save_to_disk(str(folder / "part-00000"))
        return
    features = datasets.Features(features)
    n = len(next(iter(arrays.values())))
    row_bytes = sum(np.asarray(v[0]).nbytes for v in arrays.values()) if n else 1
    step = max(1, PART_BYTES // max(row_bytes, 1))
    for i, start in enumerate(range(0, max(n, 1), step)):
        part = datasets.Dataset.from_dict({k: v[start:start + step] for k, v in arrays.items()}, features=features)
        part.save_to_disk(str(folder / f"part-{i:05d}"))


def _nbytes(arrays: dict[str, object]) -> int:
    """The arrays' own size: a lower bound of the Arrow files that hold them."""
    return sum(int(getattr(a, "nbytes", 0)) for v in arrays.values() for a in (v if isinstance(v, list) else [v]))


def _as_array(v):
    if isinstance(v, list):
        return v
    return np.asarray(v)


def _restack(col: np.ndarray):
    """Arrow gives equal-shaped rows back as one array, ragged rows as an object array: make that a list."""
    return list(col) if col.dtype == object else col
