"""EXTRACTED.json: how the feature files beside it were made (written by `harness extract`, read by the tasks).

It sits in the features root (`<features_root>/EXTRACTED.json`) and holds
  extractor   what makes two extractions comparable: backbone, weights (source, identity, sha256 of the file and of
              the loaded parameters), input size, clip length and stride, gap filling, input kind, normalisation
  random_weights  true when extract.weights=none: the features come from an untrained network (tests only)
  files       per output file (path relative to the features root): rows written, frames read, fps, the input
              file, gaps filled
  skipped     inputs that could not be read (extract.on_error=skip), with the reason
  versions    torch, torchvision, av, numpy, pillow, python, harness
The tasks copy `summary()` (everything but the per-file table, which can hold thousands of entries) into every
record's data_info, so each number says which features produced it. This module imports nothing heavy.
"""

from __future__ import annotations

import json
from pathlib import Path

from harness.storage import atomic_write_text

NAME = "EXTRACTED.json"
RANDOM_WEIGHTS_WARNING = ("RANDOM BACKBONE WEIGHTS (extract.weights=none): these features come from an untrained "
                          "network, for tests only. Numbers computed on them say nothing about the dataset.")


def path_of(features_root: Path | str) -> Path:
    return Path(features_root) / NAME


def read(features_root: Path | str) -> dict | None:
    """The sidecar of a features root, or None when there is none (features made by another tool)."""
    p = path_of(features_root)
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        from harness.errors import TaskError
        raise TaskError(f"cannot read {p} ({e}); it is written by `harness extract`: re-run it, or delete the file "
                        f"if the features were made by another tool") from None


def write(features_root: Path | str, data: dict) -> None:
    """Atomic: a temporary file in the same folder, then renamed over the old one. An unchanged sidecar is not
    rewritten (the tasks fingerprint the files of the features root: a resumed run with nothing to do changes none)."""
    p = path_of(features_root)
    text = json.dumps(data, indent=1) + "\n"
    if p.is_file() and p.read_text() == text:
        return
    atomic_write_text(p, text)  # a full disk: DiskFullError (harness/storage.py)


def summary(data: dict | None) -> dict | None:
    """What a record's data_info keeps of a sidecar: all but the per-file table, plus counts over it."""
    if data is None:
        return None
    files = data.get("files") or {}
    rows = [f.get("rows", 0) for f in files.values()]
    out = {k: v for k, v in data.items() if k not in ("files", "skipped")}
    out["n_files"] = len(files)
    out["rows_range"] = [min(rows), max(rows)] if rows else None
    out["gaps_filled"] = sum(int(f.get("gaps_filled", 0)) for f in files.values())
    out["n_skipped"] = len(data.get("skipped") or {})
    return out


def random_weights(data: dict | None) -> bool:
    return bool(data and data.get("random_weights"))
