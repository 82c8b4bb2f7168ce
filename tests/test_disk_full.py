"""A full disk: one line naming the folder, the space needed and free, exit status 2, nothing half-written left
behind, every earlier record intact byte for byte, and a re-sent command that resumes.

Two ways to fill a disk: a real tmpfs of 120 KiB the test mounts (root only; skipped with the reason otherwise),
and an injected write failure (harness/storage.py's `open` replaced by one whose files fail with ENOSPC half-way
through a write), which runs anywhere.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY
from omegaconf import OmegaConf

from harness import storage
from harness.cache import cached_arrays
from harness.cli import main
from harness.errors import DiskFullError
from harness.jobs import RunFailed, RunJob
from harness.launch import plan_runs
from harness.records import read_record, run_dir
from harness.storage import atomic_torch_save, atomic_write_all

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
# The message's sizes: "<number> <unit>", binary units as df -h counts them.
UNITS = {"B": 1, "KiB": 1024, "MiB": 1024 ** 2, "GiB": 1024 ** 3}
MESSAGE = re.compile(r"harness: error: no space left on the disk of (?P<folder>\S+): (?P<what>.+?) needs at least "
                     r"(?P<needed>[\d.]+ \w+), the file system has (?P<free>[\d.]+ \w+) free of (?P<total>[\d.]+ \w+); "
                     r"(?P<rest>.*)")


def nbytes(text: str) -> float:
    number, unit = text.split()
    return float(number) * UNITS[unit]


class _HalfWritten:
    """A file whose first write stores half its bytes and then fails as a full disk does."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        self._f.write(data[:len(data) // 2])
        raise ENOSPC

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def __getattr__(self, name):
        return getattr(self._f, name)


def fill_disk_for(monkeypatch, fails) -> list[Path]:
    """From now on, writes through harness/storage.py to a temporary file for which fails(path) is true hit a full
    disk. Returns the list of the temporary files that failed (to check they are gone)."""
    failed: list[Path] = []

    def fake_open(path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)
        if "w" in mode and fails(Path(path)):
            failed.append(Path(path))
            return _HalfWritten(f)
        return f

    monkeypatch.setattr(storage, "open", fake_open, raising=False)
    return failed


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp" in p.name]


def size_in_message(n: int) -> str:
    """How the message writes a size (independently of harness/errors.py: df -h's binary units, one decimal)."""
    for unit, factor in reversed(UNITS.items()):
        if n >= factor or unit == "B":
            return f"{n} B" if unit == "B" else f"{n / factor:.1f} {unit}"


# ---------------------------------------------------------------------------------------------------------------
# The sweep of the issue, on an injected full disk (runs anywhere)


def test_a_full_disk_stops_the_sweep_in_one_line_and_a_resent_command_resumes(tmp_path, monkeypatch, capsys):
    results = tmp_path / "results"
    args = [*TINY, "method=student", "task=synthetic", f"results_dir={results}", f"cache_dir={tmp_path / 'cache'}"]
    assert main(["run", "-m", *args, "seed=0,1"]) == 0  # the earlier records
    earlier = files(results)
    runs = plan_runs([*args, "seed=0,1,2,3"], multirun=True)
    third = runs[2].folder
    failed = fill_disk_for(monkeypatch, lambda p: p.parent == third)
    capsys.readouterr()

    assert main(["run", "-m", *args, "seed=0,1,2,3"]) == 2
    out, err = capsys.readouterr()
    assert len(err.splitlines()) == 1, err
    m = MESSAGE.fullmatch(err.strip())
    assert m, err
    assert m["folder"] == str(third) and m["what"] == "writing predictions.csv and record.json"
    assert m["total"] == size_in_message(shutil.disk_usage(tmp_path).total)
    assert m["rest"].startswith("2 of 4 runs of this command have an ok record, the other 2 were not run; nothing "
                                "half-written was left behind; free some space")
    assert "Traceback" not in out + err
    assert failed and not any(p.exists() for p in failed)
    assert temporaries(tmp_path) == []
    assert not third.exists() and not runs[3].folder.exists()  # no half-made run folder, and the sweep stopped
    assert files(results) == earlier  # byte for byte

    monkeypatch.undo()  # space is freed
    assert main(["run", "-m", *args, "seed=0,1,2,3"]) == 0
    out = capsys.readouterr().out
    assert "resume: 2 of 4 runs already have a record and are skipped" in out and "[2/2]" in out
    assert [read_record(r.folder)["status"] for r in runs] == ["ok"] * 4
    now = files(results)
    assert {k: now[k] for k in earlier} == earlier
    # What it needed: the files the resumed run wrote. The message rounds to 0.1 KiB (±52 B), and the record of
    # the second attempt differs in its timings' and clock's digits (a few bytes): 128 B covers both.
    written = sum((third / name).stat().st_size for name in ("predictions.csv", "record.json"))
    assert abs(nbytes(m["needed"]) - written) <= 128


# ---------------------------------------------------------------------------------------------------------------
# The same on a real small file system


@pytest.fixture
def tiny_fs(tmp_path):
    """A 120 KiB tmpfs mounted at tmp_path/tiny, unmounted afterwards."""
    where = tmp_path / "tiny"
    where.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command here: the injected-failure tests cover the same paths")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=120k", "tmpfs", str(where)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'not root'}): the injected-failure tests "
                    f"cover the same paths")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)


def test_a_real_full_file_system_gives_the_same_line_and_resumes_once_space_is_freed(tiny_fs, tmp_path, capsys):
    # The sweep (default synthetic task, one epoch): four records fit in 120 KiB, the fifth does not.
    args = ["method=student", "task=synthetic", f"results_dir={tiny_fs}", f"cache_dir={tmp_path / 'cache'}",
            "train.max_epochs=1", "progress=false"]
    seeds = "seed=0,1,2,3,4,5"
    runs = plan_runs([*args, seeds], multirun=True)
    assert main(["run", "-m", *args, seeds]) == 2
    out, err = capsys.readouterr()
    m = MESSAGE.fullmatch(err.strip())
    assert m and len(err.splitlines()) == 1, err
    done = [r for r in runs if read_record(r.folder) is not None]
    assert len(done) == 4 and done == runs[:4], "the issue's numbers: four records fit"
    assert m["folder"] == str(runs[4].folder) and m["total"] == "120.0 KiB"
    usage = shutil.disk_usage(tiny_fs)  # nothing else writes to this file system
    assert m["free"] == size_in_message(usage.free) and nbytes(m["needed"]) > usage.free
    assert m["rest"].startswith("4 of 6 runs of this command have an ok record, the other 2 were not run")
    assert temporaries(tiny_fs) == [] and not runs[4].folder.exists() and not runs[5].folder.exists()
    earlier = files(tiny_fs)

    subprocess.run(["mount", "-o", "remount,size=1m", str(tiny_fs)], check=True)  # space is freed
    assert main(["run", "-m", *args, seeds]) == 0
    assert "resume: 4 of 6 runs already have a record and are skipped" in capsys.readouterr().out
    assert all(read_record(r.folder)["status"] == "ok" for r in runs)
    now = files(tiny_fs)
    assert {k: now[k] for k in earlier} == earlier


# ---------------------------------------------------------------------------------------------------------------
# The teacher store, checkpoints, a job of a launcher


def test_a_full_teacher_store_names_it_and_leaves_no_run_folder(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    args = ["run", *TINY, "method=kd", "task=synthetic", f"results_dir={tmp_path / 'results'}", f"cache_dir={cache}"]
    fill_disk_for(monkeypatch, lambda p: p.name.startswith(".teacher.pt.tmp"))
    assert main(args) == 2
    err = capsys.readouterr().err
    m = MESSAGE.fullmatch(err.strip())
    assert m and m["what"] == "writing teacher.pt", err
    store = Path(m["folder"])
    assert store.parent == cache / "teachers" / "synthetic"
    assert temporaries(tmp_path) == [] and not (store / "teacher.pt").exists() and not (store / "meta.json").exists()
    assert not (tmp_path / "results" / "synthetic" / "kd").exists() or \
        not any((tmp_path / "results" / "synthetic" / "kd").iterdir())
    monkeypatch.undo()
    assert main(args) == 0
    assert (store / "teacher.pt").exists()
    # at least the tensors' bytes (the stored file adds torch's zip container around them)
    weights = torch.load(store / "teacher.pt", weights_only=True)
    assert nbytes(m["needed"]) >= 0.95 * sum(t.numel() * t.element_size() for t in weights.values())


def test_a_full_disk_while_checkpointing_keeps_the_last_checkpoint_and_the_resent_run_resumes(tmp_path, monkeypatch,
                                                                                              capsys):
    args = ["run", *TINY, "method=student", "task=synthetic", "train.max_epochs=4", "train.patience=10",
            "train.checkpoint=true", f"results_dir={tmp_path / 'results'}", f"cache_dir={tmp_path / 'cache'}"]
    (run,) = plan_runs(args[1:], multirun=False)
    writes = []

    def second_checkpoint(p: Path) -> bool:
        if p.name.startswith(".checkpoint_student.pt.tmp"):
            writes.append(p)
            return len(writes) == 2
        return False

    fill_disk_for(monkeypatch, second_checkpoint)
    assert main(args) == 2
    m = MESSAGE.fullmatch(capsys.readouterr().err.strip())
    assert m and m["folder"] == str(run.folder) and m["what"] == "writing checkpoint_student.pt"
    # the run folder holds the first epoch's checkpoint only: no record, no temporary file, nothing else
    assert sorted(p.name for p in run.folder.iterdir()) == ["checkpoint_student.pt"]
    monkeypatch.undo()
    assert main(args) == 0
    rec = read_record(run.folder)
    assert rec["status"] == "ok" and rec["extra"]["resumed_from_epoch"] == {"student": 1}
    assert not list(run.folder.glob("*checkpoint*"))


def test_a_job_reports_a_full_disk_and_leaves_the_other_runs_records_alone(tiny_cfg, capsys, monkeypatch):
    cfgs = [tiny_cfg("method=student", f"seed={s}") for s in range(3)]
    assert main(["run", *TINY, "method=student", "task=synthetic", "seed=0",
                 f"results_dir={cfgs[0].results_dir}", f"cache_dir={cfgs[0].cache_dir}"]) == 0
    earlier = files(Path(cfgs[0].results_dir))
    payloads = [{"config": OmegaConf.to_container(c, resolve=True), "overrides": [f"seed={s}"],
                 "run_dir": str(run_dir(c))} for s, c in enumerate(cfgs)]
    fill_disk_for(monkeypatch, lambda p: p.parent == run_dir(cfgs[1]))
    capsys.readouterr()
    with pytest.raises(RunFailed, match=r"2 of 3 runs failed.*not run: no space left on the disk of .*not run \(disk "
                                        r"full\)"):
        RunJob(payloads, "sweep-full", "local")()
    out = capsys.readouterr().out
    assert "-> ok (recorded before, skipped)" in out
    assert f"-> not run: no space left on the disk of {run_dir(cfgs[1])}: writing predictions.csv and record.json " \
           "needs at least" in out
    assert "[3/3] -> not run: the disk filled in an earlier run of this task" in out
    assert "Traceback" not in out
    assert files(Path(cfgs[0].results_dir)) == earlier
    assert not run_dir(cfgs[1]).exists() and not run_dir(cfgs[2]).exists()
    assert temporaries(Path(cfgs[0].results_dir)) == []


# ---------------------------------------------------------------------------------------------------------------
# harness/storage.py's writers


def test_files_written_together_are_all_kept_or_all_left_as_they_were(tmp_path, monkeypatch):
    a, b = tmp_path / "predictions.csv", tmp_path / "record.json"
    a.write_text("old predictions")
    b.write_text("old record")
    new_a, new_b = "x" * 3000, "{" + "y" * 5000 + "}"
    fill_disk_for(monkeypatch, lambda p: p.name.startswith(".record.json"))
    with pytest.raises(DiskFullError) as e:
        atomic_write_all([(a, new_a), (b, new_b)])
    assert (a.read_text(), b.read_text()) == ("old predictions", "old record")
    assert temporaries(tmp_path) == []
    assert e.value.folder == tmp_path and e.value.needed == len(new_a) + len(new_b)
    assert e.value.what == "writing predictions.csv and record.json"
    assert e.value.total == shutil.disk_usage(tmp_path).total


def test_a_torch_checkpoint_and_the_feature_cache_fail_whole(tmp_path, monkeypatch):
    fill_disk_for(monkeypatch, lambda p: True)
    state = {"w": torch.zeros(1000, 10), "b": torch.zeros(10)}
    with pytest.raises(DiskFullError) as e:
        atomic_torch_save(state, tmp_path / "store" / "teacher.pt")
    assert e.value.needed >= 4 * (10000 + 10) and e.value.folder == tmp_path / "store"
    assert list((tmp_path / "store").iterdir()) == []
    source = tmp_path / "source.txt"
    source.write_text("raw")
    monkeypatch.setattr("datasets.Dataset.save_to_disk", lambda self, path, **k: (_ for _ in ()).throw(ENOSPC))
    with pytest.raises(DiskFullError, match="the demo feature cache needs at least 39.1 KiB"):
        cached_arrays("demo", [source], {}, lambda: {"x": np.zeros((1000, 10), np.float32)}, tmp_path / "cache")
    assert temporaries(tmp_path) == [] and not list((tmp_path / "cache" / "features" / "demo").glob("*/"))


@pytest.fixture(scope="module")
def two_records(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("outputs")
    assert main(["run", "-m", *TINY, "method=student", "task=synthetic", "seed=0,1", f"results_dir={root / 'results'}",
                 f"cache_dir={root / 'cache'}"]) == 0
    return root / "results"


READERS = {
    "leaderboard": lambda r, o: ["leaderboard", "--results", str(r), "--out", str(o / "lb.md"), "--csv",
                                 str(o / "lb.csv"), "--latex", str(o / "lb.tex")],
    "report": lambda r, o: ["report", "--results", str(r), "--out", str(o / "report")],
    "scaling": lambda r, o: ["scaling", "--results", str(r), "--task", "synthetic", "--x", "seed", "--out",
                             str(o / "scaling.png")],
}


@pytest.mark.parametrize("command", READERS)
def test_the_outputs_of_leaderboard_report_and_scaling_are_whole_or_untouched(command, two_records, tmp_path,
                                                                              monkeypatch, capsys):
    out = tmp_path / "out"
    args = READERS[command](two_records, out)
    assert main(args) == 0  # the earlier outputs
    before, records = files(out), files(two_records)
    fill_disk_for(monkeypatch, lambda p: p.is_relative_to(out))
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    m = MESSAGE.fullmatch(err.strip())
    assert m and len(err.splitlines()) == 1, err
    assert m["folder"] == str(out)
    assert m["what"] == {"leaderboard": "writing lb.md and lb.csv and lb_ranks.csv and lb.tex", "report": "writing the report report",
                         "scaling": "writing scaling.png"}[command]
    assert files(out) == before and files(two_records) == records
    assert temporaries(tmp_path) == [] and sorted(p.name for p in out.iterdir()) == sorted(
        {Path(k).parts[0] for k in before})


def test_a_mimic_tree_that_does_not_fit_is_removed(tmp_path, monkeypatch, capsys):
    saved = []

    def save(path, array, *args, **kwargs):  # the third feature file meets a full disk
        if len(saved) == 2:
            raise ENOSPC
        saved.append(np.asarray(array).nbytes)
        return real_save(path, array, *args, **kwargs)

    real_save = np.save
    monkeypatch.setattr(np, "save", save)
    out = tmp_path / "mimic"
    assert main(["data", "mimic", "task=biovid", f"out={out}"]) == 2
    err = capsys.readouterr().err
    m = MESSAGE.fullmatch(err.strip())
    assert m and len(err.splitlines()) == 1, err
    assert m["folder"] == str(out) and m["what"] == "writing a mimic biovid dataset"
    assert m["rest"] == f"the tree at {out} was removed; free some space and re-send the command"
    assert nbytes(m["needed"]) > sum(saved)  # more than the feature arrays it had written
    assert not out.exists()
