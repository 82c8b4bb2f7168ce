"""A dataset that cannot fit stops before it is read, with the memory it needs and the memory available."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
from _task_trees import shared_tree, task_cfg

import tasks._common as common
from harness.task import TaskError
from tasks._common import check_memory


def gib(message: str, word: str) -> float:
    return float(re.search(rf"{word} (\d+\.\d+) GiB", message).group(1))


def test_the_error_names_what_is_needed_and_what_is_available(monkeypatch):
    monkeypatch.setattr(common, "available_memory", lambda: (3 * 2**30, "MemAvailable in /proc/meminfo"))
    with pytest.raises(TaskError) as e:
        check_memory(5 * 2**30, "the frames")
    msg = str(e.value)
    assert gib(msg, "needs") == 5.0 and "3.00 GiB is available (MemAvailable in /proc/meminfo)" in msg
    assert "PKD_HARNESS_SKIP_MEMORY_CHECK=1" in msg
    check_memory(2 * 2**30, "the frames")  # fits: no error
    monkeypatch.setenv("PKD_HARNESS_SKIP_MEMORY_CHECK", "1")
    check_memory(5 * 2**30, "the frames")  # the user's choice


def test_available_memory_reads_the_machine():
    avail, source = common.available_memory()
    with open("/proc/meminfo") as f:
        total = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemTotal:"))
    assert 0 < avail <= total and source


@pytest.mark.parametrize("task_name", ["affwild2", "biovid"])
def test_a_tree_too_large_stops_before_its_frames_are_read(task_name, tmp_path, monkeypatch):
    from harness.registry import TASKS

    tree = shared_tree(task_name)
    task = TASKS.get(task_name)(task_cfg(task_name, tree, tmp_path / "cache"))
    monkeypatch.setattr(common, "available_memory", lambda: (1000, "test"))
    reads = []
    real_load = np.load
    monkeypatch.setattr(np, "load", lambda path, *a, **k: reads.append(k.get("mmap_mode")) or real_load(path, *a, **k))
    with warnings.catch_warnings(), pytest.raises(TaskError) as e:
        warnings.simplefilter("ignore")
        task.load_fold(0)
    # the needed figure is the float32 size of the frames, from the .npy headers alone
    if task_name == "affwild2":
        files = list((tree / "features" / "visual").glob("*.npy"))
    else:  # the samples of the chosen classes (BL1 vs PA4)
        df = task._index[0]
        files = [task.visual_path(s, n) for s, n in zip(df.subject_name, df.sample_name)]
    frames = sum(real_load(p, mmap_mode="r").shape[0] for p in files)
    assert f"{frames} frames" in str(e.value) and "0.00 GiB is available (test)" in str(e.value)
    assert reads and set(reads) == {"r"}  # headers only: no feature file was read
    assert not (tmp_path / "cache" / "features").exists()  # nor any audio or biosignal (their caches are empty)


def test_an_mmsa_pickle_too_large_stops_before_it_is_unpickled(tmp_path, monkeypatch):
    from tasks._mmsa import load_pickle

    path = tmp_path / "aligned_50.pkl"
    path.write_bytes(b"\x80\x04N." + b"\0" * 4096)
    monkeypatch.setattr(common, "available_memory", lambda: (100, "test"))
    with pytest.raises(TaskError, match=re.escape(str(path)) + ".*needs 0.00 GiB"):
        load_pickle(path)
