"""Helpers for the biovid / affwild2 tests: tiny mimic trees written once per test session, copies to corrupt."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from contextlib import contextmanager
from functools import cache
from pathlib import Path

from harness.config import compose_one

TINY = {
    "biovid": ["task.mimic.n_subjects=6", "task.mimic.samples_per_class=2", "task.mimic.visual_dim=8",
               "task.mimic.n_frames=40"],
    "affwild2": ["task.mimic.n_train_videos=5", "task.mimic.n_val_videos=2", "task.mimic.two_person_videos=2",
                 "task.mimic.min_frames=60", "task.mimic.max_frames=120", "task.mimic.visual_dim=8"],
}


def task_cfg(task: str, root: Path | None, cache: Path, *overrides: str):
    """The composed `task` node of a run config (as the runner hands it to the Task)."""
    base = [f"task={task}", f"cache_dir={cache}", *TINY[task]]
    if root is not None:
        base.append(f"task.data_root={root}")
    return compose_one(base + list(overrides)).task


def write_tree(task: str, out: Path) -> Path:
    from harness.registry import TASKS

    return TASKS.get(task).write_mimic(out, task_cfg(task, None, out.parent / "unused-cache"))


@cache
def shared_tree(task: str) -> Path:
    """One tiny mimic tree per task for the whole test session (tests that corrupt files work on a copy)."""
    folder = Path(tempfile.mkdtemp(prefix=f"pkd-test-{task}-"))
    atexit.register(shutil.rmtree, folder, True)
    return write_tree(task, folder / "data")


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@contextmanager
def one_torch_thread():
    """Tiny nets train as fast on one intra-op thread, and much faster when other processes share the cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
