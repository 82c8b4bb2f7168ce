"""Windows gathered from frames stored once (harness.data.FrameWindows) equal the copies the loaders made before.

The reference below is the Aff-Wild2 loader as it was (tasks/affwild2.py `_windows` before FrameWindows): every
window a copy of its track's frames, then standardize_inputs on the copies. Gathering is indexing and the
standardisation is the same float32 arithmetic on the same values, so equality is asserted bit for bit.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from harness.data import FoldData, FrameWindows, Split
from harness.training import SplitTensors
from tasks._common import holdout_groups, standardize_inputs, window_moments
from tasks.affwild2 import AffWild2, window_starts
from _task_trees import shared_tree, task_cfg


@pytest.fixture(scope="module")
def tree():
    return shared_tree("affwild2")


def old_windows(tracks: list[dict], L: int, stride: int | None, drop_empty: bool) -> Split:
    """The copies the loader made before (its code, on raw track arrays)."""
    rows = [(ti, s) for ti, t in enumerate(tracks) for s in window_starts(len(t["va"]), L, stride)]
    if drop_empty:
        rows = [(ti, s) for ti, s in rows if tracks[ti]["valid"][s:s + L].any()]
    W, dv, da = len(rows), tracks[0]["visual"].shape[1], tracks[0]["audio"].shape[1]
    vis, aud = np.zeros((W, L, dv), np.float32), np.zeros((W, L, da), np.float32)
    y, mask = np.zeros((W, L, 2), np.float32), np.zeros((W, L), bool)
    step, lengths = np.zeros((W, L), np.int64), np.zeros(W, np.int64)
    for w, (ti, s) in enumerate(rows):
        t = tracks[ti]
        e = min(s + L, len(t["va"]))
        n = e - s
        vis[w, :n], aud[w, :n], y[w, :n] = t["visual"][s:e], t["audio"][s:e], t["va"][s:e]
        mask[w, :n] = t["valid"][s:e]
        step[w, :n] = np.arange(s + 1, e + 1)
        lengths[w] = n
    return Split(ids=np.array([tracks[ti]["track"] for ti, _ in rows], dtype=str),
                 groups=np.array([tracks[ti]["video"] for ti, _ in rows], dtype=str),
                 inputs={"visual": vis, "audio": aud}, targets=y, lengths={"visual": lengths, "audio": lengths.copy()},
                 target_mask=mask, step_index=step)


def old_fold(task: AffWild2) -> FoldData:
    """load_fold(0) as it was, from a fresh task's raw (not yet standardised) stored frames."""
    c = task.cfg
    sets = task._dataset["sets"]
    raw = {name: [{**t, "visual": np.array(t["visual"]), "audio": np.array(t["audio"])} for t in tracks]
           for name, tracks in sets.items()}
    train_tracks = raw["Train_Set"]
    keep, held = holdout_groups(np.array([t["video"] for t in train_tracks]), float(c.val_fraction), int(c.data_seed))
    L = int(c.window)
    train = old_windows([train_tracks[i] for i in keep], L, int(c.train_stride), True)
    val = old_windows([train_tracks[i] for i in held], L, None, False)
    test = old_windows(raw["Validation_Set"], L, None, False)
    standardize_inputs(train, (val, test), ("visual", "audio"))
    return FoldData(train=train, val=val, test=test)


def new_and_old(tree, tmp_path, *overrides) -> tuple[FoldData, FoldData]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        task = AffWild2(task_cfg("affwild2", tree, tmp_path / "cache", *overrides))
        old = old_fold(task)  # copies of the raw frames, before load_fold standardises the store in place
        return task.load_fold(0), old


def assert_splits_equal(new: Split, old: Split) -> None:
    for k in ("visual", "audio"):
        assert isinstance(new.inputs[k], FrameWindows)
        assert new.inputs[k].shape == old.inputs[k].shape
        np.testing.assert_array_equal(np.asarray(new.inputs[k]), old.inputs[k], strict=True)
        np.testing.assert_array_equal(new.lengths[k], old.lengths[k], strict=True)
    for field in ("ids", "groups", "targets", "target_mask", "step_index"):
        np.testing.assert_array_equal(getattr(new, field), getattr(old, field), strict=True)


@pytest.mark.parametrize("stride", [32, 8, 5])
def test_windowed_splits_equal_the_old_copies_bit_for_bit(tree, tmp_path, stride):
    new, old = new_and_old(tree, tmp_path, f"task.train_stride={stride}")
    for part in ("train", "val", "test"):
        assert_splits_equal(getattr(new, part), getattr(old, part))
    # the frames are stored once, however many windows overlap them
    assert new.train.inputs["visual"].frames is new.test.inputs["visual"].frames
    assert new.fingerprint() == old.fingerprint()


def test_batches_equal_the_old_batches_in_the_same_order(tree, tmp_path):
    new, old = new_and_old(tree, tmp_path, "task.train_stride=8")
    a, b = (SplitTensors(s.train, torch.device("cpu"), False) for s in (new, old))
    ga, gb = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    n = 0
    for x, y in zip(a.batches(8, shuffle=True, generator=ga, drop_last=True),
                    b.batches(8, shuffle=True, generator=gb, drop_last=True), strict=True):
        assert torch.equal(x.index, y.index) and torch.equal(x.targets, y.targets) and torch.equal(x.mask, y.mask)
        for k in ("visual", "audio"):
            assert torch.equal(x.inputs[k], y.inputs[k]) and torch.equal(x.lengths[k], y.lengths[k])
        n += 1
    assert n == len(new.train) // 8 >= 3


def test_a_second_load_fold_does_not_standardise_twice(tree, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        task = AffWild2(task_cfg("affwild2", tree, tmp_path / "cache"))
        first = np.asarray(task.load_fold(0).test.inputs["visual"])
        np.testing.assert_array_equal(np.asarray(task.load_fold(0).test.inputs["visual"]), first, strict=True)


def test_window_moments_equal_numpy_on_the_materialised_windows():
    """Overlapping windows, padded tails, empty windows: the float64 sums are numpy's own, number for number."""
    rng = np.random.default_rng(0)
    frames = np.zeros((5001, 7), np.float32)
    frames[:-1] = rng.standard_normal((5000, 7)) * rng.uniform(0.1, 100, 7) + rng.uniform(-50, 50, 7)
    starts = rng.integers(0, 4960, 900)
    lengths = rng.integers(0, 41, 900)
    w = FrameWindows(frames, starts, lengths, 40)
    x = np.asarray(w)
    flat = x[np.arange(40)[None, :] < lengths[:, None]]
    for block in (1, 40 * 7 * 8 * 3 + 5, 1 << 24):  # blocks of one window, of three, and one block
        mean, std = window_moments(w, block_bytes=block)
        np.testing.assert_array_equal(mean, flat.mean(axis=0, dtype=np.float64), strict=True)
        np.testing.assert_array_equal(std, flat.std(axis=0, dtype=np.float64), strict=True)


def test_frame_windows_index_like_the_array():
    frames = np.zeros((11, 3), np.float32)
    frames[:-1] = np.arange(30, dtype=np.float32).reshape(10, 3)
    w = FrameWindows(frames, np.array([0, 4, 8]), np.array([4, 4, 2]), 4)
    x = np.asarray(w)
    assert x.shape == w.shape == (3, 4, 3) and x[2, 2:].sum() == 0 and x[1, 0, 0] == 12
    np.testing.assert_array_equal(np.asarray(w[np.array([2, 0])]), x[[2, 0]])
    np.testing.assert_array_equal(np.asarray(w[1:]), x[1:])
    np.testing.assert_array_equal(w[1], x[1])
    np.testing.assert_array_equal(w[..., 0], x[..., 0])
    np.testing.assert_array_equal(np.asarray(w.zeros()), np.zeros_like(x))
    with pytest.raises(ValueError, match="past the stored frames"):
        FrameWindows(frames, np.array([8]), np.array([3]), 4)  # would read the padding row as a frame


@pytest.mark.parametrize("method", ["kd", "pkdot"])
def test_a_short_run_gives_the_metrics_of_the_old_copies(tree, tmp_path, monkeypatch, method):
    """Teacher, T-Net and student trained on gathered windows (stride 8: overlapping) score exactly as on the
    copies: the same batches in the same order (above), so the same arithmetic on the same shapes."""
    from harness.config import compose_one
    from harness.runner import execute
    from _task_trees import TINY, one_torch_thread

    def run(name: str) -> dict:
        cfg = compose_one([f"method={method}", "task=affwild2", *TINY["affwild2"], f"task.data_root={tree}",
                           f"task.cache_dir={tmp_path / 'features'}", f"cache_dir={tmp_path / name}",
                           f"results_dir={tmp_path / name / 'results'}", "task.train_stride=8", "train.max_epochs=2",
                           *(["method.tnet.epochs=2"] if method == "pkdot" else []), "model.hidden=8", "model.layers=1", "progress=false",
                           "stats.bootstrap_resamples=0"])
        with warnings.catch_warnings(), one_torch_thread():
            warnings.simplefilter("ignore")
            return execute(cfg, raise_errors=True)

    new = run("new")
    monkeypatch.setattr(AffWild2, "load_fold",
                        lambda self, fold: FoldData(**{k: getattr(old_fold(self), k) for k in ("train", "val", "test")},
                                                    info={}))
    old = run("old")
    assert new["metrics"] == old["metrics"] and new["data_fingerprint"] == old["data_fingerprint"]
    assert {k: [e["train_loss"] for e in v] for k, v in new["logs"].items() if isinstance(v, list)} == \
        {k: [e["train_loss"] for e in v] for k, v in old["logs"].items() if isinstance(v, list)}


# --- BioVid: samples stored once, unpadded; rows gathered padded ------------------------------------------------

@pytest.fixture(scope="module")
def biovid_tree():
    return shared_tree("biovid")


def biovid_old_fold(task, fold: int) -> FoldData:
    """BioVid's load_fold as it was: padded copies (visual read from the files here), subset copies per split,
    standardize_inputs on the copies. Physio comes from the task's raw store, materialised."""
    from tasks._common import finite_float32, pad_sequences, Cleaning

    c, d = task.cfg, task._dataset
    assert d["standardized_for"] is None
    df = d["df"]
    visual, vlen = pad_sequences([finite_float32(np.load(task.visual_path(s, n)), Cleaning(), "x", "")
                                  for s, n in zip(df.subject_name, df.sample_name)])
    full = Split(ids=np.asarray(df.sample_name, dtype=str), groups=np.asarray(df.subject_name, dtype=str),
                 inputs={"visual": visual, "physio": np.array(d["physio"])},
                 targets=np.asarray(df.label, dtype=np.int64)[:, None],
                 lengths={"visual": vlen, "physio": d["physio_len"].copy()})
    tr, te, _ = task._fold_indices(fold)
    keep, held = holdout_groups(full.groups[tr], float(c.val_fraction), int(c.data_seed) + fold)
    train, val, test = full.subset(tr[keep]), full.subset(tr[held]), full.subset(te)
    standardize_inputs(train, (val, test), ("visual", "physio"))
    return FoldData(train=train, val=val, test=test)


def test_biovid_splits_equal_the_old_copies_bit_for_bit_in_every_fold(biovid_tree, tmp_path):
    from tasks.biovid import BioVid

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        task = BioVid(task_cfg("biovid", biovid_tree, tmp_path / "cache"))
        for fold in (0, 1, 1, 0):  # another fold re-reads the frames; the same fold reuses them
            old = biovid_old_fold(BioVid(task_cfg("biovid", biovid_tree, tmp_path / "cache")), fold)
            new = task.load_fold(fold)
            for part in ("train", "val", "test"):
                a, b = getattr(new, part), getattr(old, part)
                for k in ("visual", "physio"):
                    assert isinstance(a.inputs[k], FrameWindows)
                    np.testing.assert_array_equal(np.asarray(a.inputs[k]), b.inputs[k], strict=True)
                    np.testing.assert_array_equal(a.lengths[k], b.lengths[k], strict=True)
                np.testing.assert_array_equal(a.ids, b.ids, strict=True)
                np.testing.assert_array_equal(a.targets, b.targets, strict=True)
            assert new.info["cleaning"] == task._dataset["cleaning"].as_info()


def test_a_short_biovid_run_gives_the_metrics_of_the_old_copies(biovid_tree, tmp_path, monkeypatch):
    from harness.config import compose_one
    from harness.runner import execute
    from tasks.biovid import BioVid
    from _task_trees import TINY, one_torch_thread

    def run(name: str) -> dict:
        cfg = compose_one(["method=kd", "task=biovid", *TINY["biovid"], f"task.data_root={biovid_tree}",
                           f"task.cache_dir={tmp_path / 'features'}", f"cache_dir={tmp_path / name}",
                           f"results_dir={tmp_path / name / 'results'}", "train.max_epochs=2", "train.batch_size=8",
                           "model.hidden=8", "model.layers=1", "progress=false", "stats.bootstrap_resamples=0"])
        with warnings.catch_warnings(), one_torch_thread():
            warnings.simplefilter("ignore")
            return execute(cfg, raise_errors=True)

    new = run("new")
    original = BioVid.load_fold
    monkeypatch.setattr(BioVid, "load_fold", lambda self, fold: FoldData(
        **{k: getattr(biovid_old_fold(self, fold), k) for k in ("train", "val", "test")},
        info=original(BioVid(self.cfg), fold).info))
    old = run("old")
    assert new["metrics"] == old["metrics"] and new["data_fingerprint"] == old["data_fingerprint"]
    assert [e["train_loss"] for e in new["logs"]["student"]] == [e["train_loss"] for e in old["logs"]["student"]]


def test_privileged_controls_on_windows_equal_the_controls_on_the_copies(tree, tmp_path):
    from harness.controls import apply_privileged_control

    new, old = new_and_old(tree, tmp_path, "task.train_stride=8")
    for control in ("zeros", "shuffle"):
        a = apply_privileged_control(new.train, ("audio",), control, seed=5)
        b = apply_privileged_control(old.train, ("audio",), control, seed=5)
        assert isinstance(a.inputs["audio"], FrameWindows) and a.inputs["audio"].frames.size <= new.train.inputs["audio"].frames.size
        for k in ("visual", "audio"):
            np.testing.assert_array_equal(np.asarray(a.inputs[k]), b.inputs[k], strict=True)
            np.testing.assert_array_equal(a.lengths[k], b.lengths[k], strict=True)
