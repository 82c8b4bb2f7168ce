"""Memory of the MMSA/MulT pickles (tasks/_mmsa.py) and the feature cache (harness/cache.py): float64 inputs cast as
they are read, mimics pickled from memory-mapped scratch files, the cache written a part at a time; the values the
same as the plain `pickle` gives."""

import json
import pickle
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from harness.config import compose_one
from harness.registry import TASKS
from tasks import _mmsa
from tasks._mmsa import CastOnRead, as_float32, dump_pickle, load_pickle

SMALL = ["task.mimic.n_train=24", "task.mimic.n_valid=12", "task.mimic.n_test=16"]
ROOT = Path(__file__).resolve().parent.parent


def assert_same_tree(got, want):
    """Equal containers, and arrays equal in dtype, shape and every value (NaN where NaN)."""
    assert type(got) is type(want)
    if isinstance(want, dict):
        assert list(got) == list(want)
        for k in want:
            assert_same_tree(got[k], want[k])
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want)
        for a, b in zip(got, want):
            assert_same_tree(a, b)
    elif isinstance(want, np.ndarray):
        assert (got.dtype, got.shape) == (want.dtype, want.shape)
        np.testing.assert_array_equal(got, want)
    else:
        assert got == want


def sample_tree(tmp_path):
    rng = np.random.default_rng(0)
    audio = rng.standard_normal((40, 30, 74))  # float64, above the 64 KiB frame: written from its buffer
    audio[0, 0, 0], audio[1, 0, 0] = -np.inf, np.nan
    big = np.memmap(tmp_path / "big.bin", dtype=np.float32, mode="w+", shape=(64, 50, 35))
    big[:] = rng.standard_normal(big.shape, dtype=np.float32)
    return {"__mimic__": "x",
            "train": {"id": np.array(["v1$_$1", "v1$_$2"], dtype=object), "audio": audio, "vision": big,
                      "shared": audio, "lengths": np.arange(40), "small": np.ones((2, 3, 4)),
                      "strided": audio[:, ::2], "ids": np.array([[b"a", b"0.00"], [b"b", b"3.10"]]),
                      "labels": np.float32(1.5), "nested": [np.zeros(3, np.int8), ("t", 1)]}}


def test_streamed_pickle_reads_back_as_what_pickle_dump_writes(tmp_path):
    obj = sample_tree(tmp_path)
    path = dump_pickle(obj, tmp_path / "ours.pkl")
    reference = pickle.loads(pickle.dumps(obj, protocol=4))  # the standard pickler: the independent reference
    with open(path, "rb") as f:
        ours = pickle.load(f)
    want = {**reference, "train": {**reference["train"], "vision": np.asarray(reference["train"]["vision"])}}
    assert_same_tree(ours, want)  # a memmap comes back a plain ndarray, as numpy pickles any array
    assert ours["train"]["shared"] is ours["train"]["audio"]  # a shared array stays one object
    assert_same_tree(load_pickle(path), ours)  # and the restricted unpickler reads it the same
    assert path.read_bytes()[:2] == b"\x80\x04"  # protocol 4, as the real files


def test_streamed_pickle_writes_an_array_without_copying_it(tmp_path):
    # pickle.dump copies an array to bytes before writing (ndarray.__reduce__ calls tobytes); ours writes its buffer
    array = np.memmap(tmp_path / "x.bin", dtype=np.float64, mode="w+", shape=(256, 128, 64))  # 16 MiB
    array[:] = 1.0
    tracemalloc.start()
    dump_pickle({"x": array}, tmp_path / "x.pkl")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < array.nbytes / 8, f"{peak} bytes traced while pickling {array.nbytes} bytes"
    np.testing.assert_array_equal(load_pickle(tmp_path / "x.pkl")["x"], array)


def test_mosei_mimic_writer_pickles_its_large_arrays_from_scratch_files(tmp_path, monkeypatch):
    dumped = []

    def spy(obj, path):
        large = [(split, k, type(v).__name__) for split, d in obj.items() if isinstance(d, dict)
                 for k, v in d.items() if isinstance(v, np.ndarray) and v.nbytes > 1 << 20]
        dumped.append((path.name, large))
        return dump_pickle(obj, path)

    monkeypatch.setattr(_mmsa, "dump_pickle", spy)
    cfg = compose_one(["task=mosei", "task.mimic.n_train=48", "task.mimic.n_valid=12", "task.mimic.n_test=12"])
    TASKS.get("mosei").write_mimic(tmp_path, cfg.task)
    assert [name for name, _ in dumped] == ["aligned_50.pkl", "unaligned_50.pkl"]
    for name, large in dumped:
        assert large and all(kind == "memmap" for *_, kind in large), (name, large)
    folder = tmp_path / "MOSEI" / "Processed"
    assert sorted(p.name for p in folder.iterdir()) == ["MIMIC_DATA.txt", "aligned_50.pkl", "unaligned_50.pkl"]


@pytest.fixture(scope="module")
def mosei_tree(tmp_path_factory):
    cfg = compose_one(["task=mosei", *SMALL])
    return TASKS.get("mosei").write_mimic(tmp_path_factory.mktemp("mosei"), cfg.task)


def test_float64_inputs_are_cast_as_read_to_the_values_of_a_cast_after_reading(mosei_tree):
    path = mosei_tree / "MOSEI/Processed/unaligned_50.pkl"
    with open(path, "rb") as f:
        plain = pickle.load(f)
    cast = load_pickle(path, lambda a: a.ndim == 3)
    for key in ("train", "valid", "test"):
        audio = cast[key]["audio"]
        assert isinstance(audio, CastOnRead) and plain[key]["audio"].dtype == np.float64
        want, counts = as_float32(plain[key]["audio"], "x")  # the same cast after a plain load: bit for bit
        np.testing.assert_array_equal(audio.array, want)
        assert as_float32(audio, "x") [1] == counts
        if key == "train":  # the planted NaN, -inf and float32 overflows, counted in the cast on read
            assert counts["nan"] == 1 and counts["neginf"] >= 1 and counts["overflow"] == 2
        assert cast[key]["vision"].dtype == np.float32  # float32 inputs and everything else: as the file has it
        np.testing.assert_array_equal(cast[key]["vision"], plain[key]["vision"])
        np.testing.assert_array_equal(cast[key]["regression_labels"], plain[key]["regression_labels"])
        assert list(cast[key]["id"]) == list(plain[key]["id"])


@pytest.mark.parametrize("aligned", [False, True])
def test_mosei_loader_peaks_below_one_and_a_half_times_its_float32_inputs(mosei_tree, aligned):
    # numpy reports its arrays to tracemalloc, so the traced peak is what the loader holds at once. Before the cast
    # on read, the unaligned file peaked at 1.83x here (the float64 audio beside its float32 copy).
    task = TASKS.get("mosei")(compose_one(["task=mosei", f"task.data_root={mosei_tree}", f"task.aligned={aligned}",
                                           "task.feature_cache=false"]).task)
    tracemalloc.start()
    fold = task.load_fold(0)
    kept, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    inputs = sum(v.nbytes for s in (fold.train, fold.val, fold.test) for v in s.inputs.values())
    assert peak <= 1.5 * inputs, f"peak {peak / inputs:.2f}x the float32 inputs"
    assert kept <= 1.05 * inputs  # nothing but the inputs (and small ids) outlives the load


CACHE_CHILD = r"""
import json, sys
import numpy as np
import harness.cache
from harness.cache import cached_arrays
def status(key):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key + ":")) * 1024
harness.cache.PART_BYTES = 4 << 20  # parts of 4 MiB: their conversion's ~5x is small beside the column
x = np.random.default_rng(0).standard_normal((96, 128, 1024), dtype=np.float32)  # 48 MiB: 12 parts
source = sys.argv[1] + "/source"  # written once: the second process finds the same key
open(source, "a").close()
import datasets  # noqa: F401  (imported before the floor)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak RSS to the current RSS
floor = status("VmRSS")
cols, hit = cached_arrays("demo", [source], {}, lambda: {"x": x}, sys.argv[1] + "/cache")
print(json.dumps({"grow": (status("VmHWM") - floor) / x.nbytes, "hit": hit,
                  "same": bool(np.array_equal(cols["x"], x))}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self (peak RSS)")
def test_feature_cache_is_written_and_read_a_part_at_a_time(tmp_path):
    # One in-memory Dataset of the whole column held an Arrow copy of it: the write grew RSS by 2.3x the array (the
    # code before the parts, same 4 MiB chunks); a part at a time, by 0.7x (measured). Reading the concatenated
    # parts at once grew it by 2.1x (each mapped page beside its numpy copy); a part at a time, by 1.26x (the
    # column and about three parts of 4 MiB). Each in a fresh process (the write, then the read): its peak RSS alone.
    def child():
        out = subprocess.run([sys.executable, "-c", CACHE_CHILD, str(tmp_path)], capture_output=True, text=True,
                             cwd=ROOT, env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])

    write, read = child(), child()
    assert (write["hit"], read["hit"]) == (False, True) and write["same"] and read["same"]
    assert write["grow"] < 1.0, f"writing the cache grew RSS by {write['grow']:.2f}x the array"
    assert read["grow"] < 1.4, f"reading the cache grew RSS by {read['grow']:.2f}x the array"
    folder = next(p for p in (tmp_path / "cache" / "features" / "demo").iterdir() if p.is_dir())
    assert sorted(p.name for p in folder.iterdir()) == [f"part-{i:05d}" for i in range(12)]


def test_a_cache_written_before_the_parts_is_still_read(tmp_path):
    # caches written as one save_to_disk folder (before the parts) stay valid: same key, read as they are
    import datasets

    from harness.cache import cache_key, cached_arrays

    source = tmp_path / "source"
    source.write_text("x")
    x = np.arange(24, dtype=np.float32).reshape(4, 2, 3)
    folder = tmp_path / "cache" / "features" / "demo" / cache_key("demo", [source], {})
    datasets.Dataset.from_dict({"x": x}, features=datasets.Features(
        {"x": datasets.Array2D(shape=(2, 3), dtype="float32")})).save_to_disk(str(folder))
    cols, hit = cached_arrays("demo", [source], {}, lambda: pytest.fail("rebuilt a valid cache"), tmp_path / "cache")
    assert hit
    np.testing.assert_array_equal(cols["x"], x)


def test_a_cache_read_a_part_at_a_time_gives_what_one_read_of_all_parts_gives(tmp_path, monkeypatch):
    # The hit copies each part into whole-column arrays and lets it go (harness/cache.py _read); one read of the
    # concatenated parts is the reference: the same columns, types, dtypes and values, for every kind of column
    import datasets

    import harness.cache
    from harness.cache import _columns, cached_arrays

    monkeypatch.setattr(harness.cache, "PART_BYTES", 400)  # rows of ~140 bytes: parts of 2 rows
    rng = np.random.default_rng(0)
    n = 11
    arrays = {
        "ids": np.array([f"s{'x' * i}" for i in range(n)]),  # later parts hold longer strings
        "x": rng.standard_normal((n, 4, 3)).astype(np.float32),
        "label": np.arange(n, dtype=np.int64),
        "vec": rng.standard_normal((n, 5)).astype(np.float32),
        "ragged": [rng.standard_normal((1 + i % 4, 2)).astype(np.float32) for i in range(n)],
        "equal": [rng.standard_normal((3, 2)).astype(np.float32) for _ in range(n)],
        "fs": rng.uniform(511.0, 513.0, n),  # float64 and int32 come back as stored, not as float32 / int64
        "count": np.arange(n, dtype=np.int32),
        "ragged64": [rng.standard_normal((1 + i % 3, 2)) for i in range(n)],
    }
    source = tmp_path / "source"
    source.write_text("x")
    built, hit = cached_arrays("demo", [source], {}, lambda: arrays, tmp_path / "cache")
    back, hit2 = cached_arrays("demo", [source], {}, lambda: pytest.fail("rebuilt a valid cache"), tmp_path / "cache")
    assert (hit, hit2) == (False, True)
    folder = next((tmp_path / "cache" / "features" / "demo").glob("*.parts"))
    parts = sorted(folder.glob("part-*"))
    assert len(parts) >= 3  # several parts, their last one short
    whole = _columns(datasets.concatenate_datasets([datasets.load_from_disk(str(p)) for p in parts]))
    assert list(back) == list(whole) == list(arrays)
    for k in arrays:
        assert type(back[k]) is type(whole[k]), k
        if isinstance(whole[k], list):
            assert len(back[k]) == len(whole[k]) == n
            for a, b, c in zip(back[k], whole[k], arrays[k]):
                assert a.dtype == b.dtype == c.dtype and np.array_equal(a, b) and np.array_equal(a, c)
        else:
            assert back[k].dtype == whole[k].dtype == np.asarray(arrays[k]).dtype, k
            assert back[k].shape == whole[k].shape, k
            assert np.array_equal(back[k], whole[k]) and np.array_equal(back[k], np.asarray(arrays[k])), k
    assert isinstance(back["ragged"], list) and back["equal"].shape == (n, 3, 2)  # stacked, as one read gives it
