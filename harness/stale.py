"""Stale data is never reused silently: a recorded run is skipped as done only on the data it was computed on.

A task read from files (biovid, affwild2, the MMSA pickles) has a cheap data identity: the signature (names,
sizes, mtimes) of its source files (`Task.source_signature`, the feature cache's `files_signature`). A run's
record stores its hash (`source_fingerprint`), and the signature itself is kept once per fingerprint under
`<results_dir>/_data_signatures/<task>/<fingerprint>.json`, so a refusal can name the files that changed.

Before a run with an ok record is skipped, `check_data_unchanged` recomputes the signature (the index and a
stat per file: the data itself is never loaded) and refuses with `StaleDataError` (a TaskError: exit status 2)
when it differs. Tasks generated in memory (synthetic, lupi) have no files: their config, in the run key, is
their data. Records written before `source_fingerprint` existed cannot be checked and are skipped as before.
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from harness.cache import signature_changes
from harness.errors import TaskError
from harness.records import atomic_write_text
from harness.registry import TASKS

SIGNATURES_DIR = "_data_signatures"  # a `_` folder: not a task, iter_records passes it by
SHOW_FILES = 5  # changed files named in a refusal; the rest are counted


class StaleDataError(TaskError):
    """A run's record was computed on other data than the task's files hold now."""


def signature_path(results_dir: Path | str, task: str, fingerprint: str) -> Path:
    return Path(results_dir) / SIGNATURES_DIR / task / f"{fingerprint}.json"


def save_signature(results_dir: Path | str, task: str, fingerprint: str, signature: list) -> None:
    """Keep the file listing behind a fingerprint (once: every run on the same data shares it)."""
    path = signature_path(results_dir, task, fingerprint)
    if not path.exists():
        atomic_write_text(path, json.dumps([list(s) for s in signature]) + "\n")


def load_signature(results_dir: Path | str, task: str, fingerprint: str) -> list | None:
    path = signature_path(results_dir, task, fingerprint)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def current_signature(cfg: DictConfig, memo: dict | None = None) -> tuple[str | None, list | None]:
    """(fingerprint, signature) of the task's files now. `memo` shares it between the runs of one sweep that
    read the same task config (a sweep of 500 runs lists the files once per task variant, not 500 times)."""
    task_cfg = OmegaConf.to_container(cfg.task, resolve=True)
    key = json.dumps(task_cfg, sort_keys=True, default=str)
    if memo is not None and key in memo:
        return memo[key]
    task = TASKS.get(cfg.task.name)(cfg.task)
    out = (task.source_fingerprint(), task.source_signature)
    if memo is not None:
        memo[key] = out
    return out


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:SHOW_FILES])
    return shown + (f" and {len(names) - SHOW_FILES} more" if len(names) > SHOW_FILES else "")


def describe_changes(results_dir: Path | str, task: str, old_fp: str, new_signature: list | None) -> str:
    old = load_signature(results_dir, task, old_fp)
    if old is None or new_signature is None:
        return (f"the files that changed cannot be named (no listing of the old files at "
                f"{signature_path(results_dir, task, old_fp)})")
    diff = signature_changes(old, [list(s) for s in new_signature])
    parts = [f"{len(v)} {k}: {_names(v)}" for k, v in diff.items() if v]
    return "; ".join(parts) if parts else "same names, sizes and times (the listing itself differs)"


def check_data_unchanged(cfg: DictConfig, record: dict, folder: Path | str, memo: dict | None = None) -> None:
    """Raise StaleDataError when `record` (ok, about to be skipped as done) was computed on other files than
    the task's now. No fingerprint in the record (a task generated in memory, or an older record): no check."""
    old_fp = record.get("source_fingerprint")
    if not old_fp:
        return
    new_fp, new_signature = current_signature(cfg, memo)
    if new_fp is None or new_fp == old_fp:
        return
    changes = describe_changes(cfg.results_dir, cfg.task.name, old_fp, new_signature)
    raise StaleDataError(
        f"{Path(folder) / 'record.json'} was computed on other data: the {cfg.task.name} files changed since "
        f"(data fingerprint {old_fp} in the record, {new_fp} now; {changes}). The run is neither skipped as done "
        f"nor rerun silently. Fix: add overwrite=true to recompute it on the current data (its record is "
        f"replaced), or restore the data it was computed on.")


def combined(errors: list[StaleDataError]) -> StaleDataError:
    """One error for a sweep: the first stale record in full, the others counted and named."""
    if len(errors) == 1:
        return errors[0]
    others = [str(e).split(" was computed", 1)[0] for e in errors[1:]]
    return StaleDataError(f"{errors[0]}\n{len(others)} more runs of this sweep were computed on other data and are "
                          f"not run: {_names(others)} (overwrite=true recomputes them all)")
