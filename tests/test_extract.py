"""`harness extract` (harness/extract/): videos and face-crop folders -> the feature files the tasks read.

On tiny videos (PyAV) and crop folders (Pillow) the tests write themselves, with random backbone weights
(extract.weights=none) and small inputs: the layout and shapes are the tasks'; every row equals the backbone applied
to the decoded frames (R3D-18 clips centred on each frame for BioVid, ResNet-18 per crop for Aff-Wild2); Aff-Wild2
row k is annotation line k+1 whatever the crop gaps (previous crop or zeros, counted); wavs come out 16 kHz mono;
a finished file is not redone; a corrupt video is named and leaves no file behind (or is skipped and counted);
a task then runs on the extracted tree and its record says which features, with random weights never called real.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile
import torch
from omegaconf import OmegaConf

from harness.cli import main
from harness.config import group_options
from harness.extract import backbones, compose, decode
from harness.extract.run import extract
from harness.schema import BACKBONES, EXTRACT_ROOT
from tests._media import frame_image, write_crops, write_video
from tests._task_trees import one_torch_thread, task_cfg

BIOVID = ["task=biovid", "backbone=r3d_18", "backbone.size=16", "backbone.clip_len=4", "extract.weights=none",
          "extract.num_workers=1", "extract.batch_size=16", "progress=false"]
AFFWILD = ["task=affwild2", "backbone=resnet18", "backbone.size=16", "extract.weights=none", "extract.num_workers=1",
           "extract.batch_size=32", "progress=false"]
RUN_TINY = ["method=student", "train.max_epochs=2", "train.patience=1", "model.hidden=8", "model.layers=1",
            "progress=false", "stats.bootstrap_resamples=0"]


@pytest.fixture(autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


def n_frames_of(i: int) -> int:
    return 12 + i % 3


@pytest.fixture(scope="module")
def biovid_tree(tmp_path_factory) -> Path:
    """A BioVid tree (mimic signals and samples.csv, 30 samples) with a video per sample and no features; NOT
    marked mimic, so the data source of its runs comes from the features."""
    from harness.registry import TASKS

    base = tmp_path_factory.mktemp("biovid")
    cfg = task_cfg("biovid", None, base / "cache", "task.mimic.samples_per_class=1", "task.mimic.write_raw=false")
    tree = TASKS.get("biovid").write_mimic(base / "data", cfg)
    shutil.rmtree(tree / "features")
    (tree / "MIMIC_DATA.txt").unlink()
    df = pd.read_csv(tree / "samples.csv", sep="\t")
    for i, (s, n) in enumerate(zip(df.subject_name, df.sample_name)):
        write_video(tree / "video" / s / f"{n}.mp4", n_frames_of(i), w=32, h=24, seed=i)
    assert main(["extract", *BIOVID, f"task.data_root={tree}"]) == 0
    return tree


def normalised(frames: np.ndarray, bb) -> torch.Tensor:
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(bb.mean).view(1, 3, 1, 1)) / torch.tensor(bb.std).view(1, 3, 1, 1)


def test_biovid_layout_and_every_row_is_r3d_on_the_clip_centred_on_its_frame(biovid_tree):
    vis = biovid_tree / "features" / "visual"
    info = json.loads((vis / "EXTRACTED.json").read_text())
    df = pd.read_csv(biovid_tree / "samples.csv", sep="\t")
    assert len(info["files"]) == len(df) == 30
    for i, (s, n) in enumerate(zip(df.subject_name, df.sample_name)):
        x = np.load(vis / s / f"{n}.npy")
        assert x.dtype == np.float32 and x.shape == (n_frames_of(i), 512)   # one row per video frame
        f = info["files"][f"{s}/{n}.npy"]
        assert (f["rows"], f["frames_read"], f["fps"], f["gaps_filled"]) == (n_frames_of(i), n_frames_of(i), 25.0, 0)
    ex = info["extractor"]
    assert (ex["backbone"], ex["kind"], ex["input_size"], ex["clip_len"], ex["clip_stride"]) == \
        ("r3d_18", "clip", [16, 16], 4, 1)
    assert info["random_weights"] is True and "RANDOM BACKBONE WEIGHTS" in info["WARNING"]
    assert ex["weights"]["source"] == "none" and len(ex["weights"]["parameters_sha256"]) == 64
    assert all(info["versions"][k] for k in ("torch", "torchvision", "av", "numpy"))

    # the decoded frames are the written ones (mpeg4 is lossy: close, not equal): 32x24 -> shorter side 16 -> 21x16,
    # centre crop 16x16 = columns 2..18 of the 21-wide frame
    s, n = df.subject_name[4], df.sample_name[4]
    video = biovid_tree / "video" / s / f"{n}.mp4"
    frames = np.stack([f for f, _ in decode.iter_video(video, 16)])
    assert frames.shape == (n_frames_of(4), 16, 16, 3)
    from PIL import Image
    written = np.asarray(Image.fromarray(frame_image(3, 32, 24, seed=4)).resize((21, 16), Image.Resampling.BOX))
    assert np.abs(frames[3].astype(int) - written[:, 2:18].astype(int)).mean() < 12

    # every row = R3D-18 (same seed's random weights) on the 4-frame clip c-2..c+1, edge frames repeated
    bb = backbones.build("r3d_18", "none", seed=0)
    assert bb.weights["parameters_sha256"] == ex["weights"]["parameters_sha256"]
    T = len(frames)
    pos = np.clip(np.arange(T)[:, None] + np.arange(4)[None, :] - 2, 0, T - 1)
    clips = normalised(frames, bb)[torch.from_numpy(pos)].permute(0, 2, 1, 3, 4)   # [T, 3, 4, 16, 16]
    with torch.no_grad():
        expected = bb.model(clips).numpy()
    np.testing.assert_allclose(np.load(vis / s / f"{n}.npy"), expected, rtol=1e-4, atol=1e-4)


def test_a_task_runs_on_the_extracted_tree_and_random_weights_are_never_real(biovid_tree, tmp_path):
    from harness.leaderboard import write_leaderboard
    from harness.records import iter_records

    assert main(["run", *RUN_TINY, "task=biovid", f"task.data_root={biovid_tree}", "task.n_folds=2",
                 f"results_dir={tmp_path / 'results'}", f"cache_dir={tmp_path / 'cache'}"]) == 0
    rec = iter_records(tmp_path / "results")[0]
    assert rec["status"] == "ok" and rec["data_source"] == "random_weights"
    vf = rec["data_info"]["visual_features"]
    assert vf["extractor"]["backbone"] == "r3d_18" and vf["random_weights"] is True and vf["n_files"] == 30
    assert vf["extractor"]["weights"]["source"] == "none" and "files" not in vf
    text, _ = write_leaderboard(tmp_path / "results", tmp_path / "lb.md", tmp_path / "lb.csv")
    assert "RANDOM backbone weights" in text and "Real data." not in text
    # a record that claims `real` for such features is relabelled by the leaderboard
    path = Path(rec["_dir"]) / "record.json"
    d = json.loads(path.read_text())
    d["data_source"] = "real"
    path.write_text(json.dumps(d))
    text, _ = write_leaderboard(tmp_path / "results", tmp_path / "lb.md", tmp_path / "lb.csv")
    assert "RANDOM backbone weights" in text and "Real data." not in text


def test_resume_skips_finished_files_and_a_run_with_nothing_to_do_changes_nothing(biovid_tree, tmp_path):
    tree = shutil.copytree(biovid_tree, tmp_path / "tree")
    vis = tree / "features" / "visual"
    files = sorted(vis.rglob("*.npy"))
    before = {p: p.stat().st_mtime_ns for p in files}
    files[3].unlink()
    counts = extract(compose([*BIOVID, f"task.data_root={tree}"]))
    assert (counts["done_before"], counts["written"]) == (29, 1)
    assert files[3].is_file() and all(p.stat().st_mtime_ns == t for p, t in before.items() if p != files[3])
    sidecar_mtime = (vis / "EXTRACTED.json").stat().st_mtime_ns
    assert extract(compose([*BIOVID, f"task.data_root={tree}"]))["written"] == 0
    assert (vis / "EXTRACTED.json").stat().st_mtime_ns == sidecar_mtime   # the task's data fingerprint holds
    # other settings into the same folder: refused, naming what differs
    assert main(["extract", *BIOVID, "backbone.size=24", f"task.data_root={tree}"]) == 2
    # features of another tool without a sidecar are not overwritten silently
    (vis / "EXTRACTED.json").unlink()
    assert main(["extract", *BIOVID, f"task.data_root={tree}"]) == 2


def test_settings_mismatch_and_foreign_features_are_named(biovid_tree, tmp_path, capsys):
    tree = shutil.copytree(biovid_tree, tmp_path / "tree")
    assert main(["extract", *BIOVID, "backbone.clip_len=2", f"task.data_root={tree}"]) == 2
    assert "clip_len: 4 -> 2" in capsys.readouterr().err
    (tree / "features" / "visual" / "EXTRACTED.json").unlink()
    assert main(["extract", *BIOVID, f"task.data_root={tree}"]) == 2
    assert "not made by harness extract" in capsys.readouterr().err


# --- Aff-Wild2 --------------------------------------------------------------------------------------------------

def gaps_of(j: int, n: int) -> set[int]:
    """1-based frame numbers without a crop in track j: a leading gap (track 0), a middle run, the last frame."""
    return ({1, 2} if j == 0 else set()) | {10, 11, 12} | {n}


@pytest.fixture(scope="module")
def affwild_tree(tmp_path_factory) -> Path:
    """The tiny Aff-Wild2 mimic tree (9 tracks, 60-120 annotated frames, wavs) with cropped_aligned/ folders with
    gaps and one crop past the annotation's end, and no features."""
    from harness.registry import TASKS
    from tasks.affwild2 import read_va

    base = tmp_path_factory.mktemp("affwild2")
    tree = TASKS.get("affwild2").write_mimic(base / "data", task_cfg("affwild2", None, base / "cache"))
    shutil.rmtree(tree / "features")
    for j, p in enumerate(sorted(tree.glob("*/VA_Estimation_Challenge/*/*.txt"))):
        n = len(read_va(p)[0])
        write_crops(tree / "cropped_aligned" / p.stem, [k for k in range(1, n + 2) if k not in gaps_of(j, n)], seed=j)
    assert main(["extract", *AFFWILD, f"task.data_root={tree}"]) == 0
    return tree


def test_affwild2_row_k_is_annotation_line_k_whatever_the_gaps(affwild_tree, tmp_path, capsys):
    from tasks.affwild2 import read_va

    bb = backbones.build("resnet18", "none", seed=0)
    info = json.loads((affwild_tree / "features" / "visual" / "EXTRACTED.json").read_text())
    assert info["extractor"]["input"] == "frames" and info["extractor"]["kind"] == "frame"
    zeros_root = tmp_path / "zeros"
    assert main(["extract", *AFFWILD, f"task.data_root={affwild_tree}", "extract.gap_fill=zeros",
                 f"task.features_root={zeros_root}"]) == 0
    annotations = sorted(affwild_tree.glob("*/VA_Estimation_Challenge/*/*.txt"))
    assert len(info["files"]) == len(annotations) == 9
    # a clip backbone striding over frames would write fewer rows than annotation lines: refused before any file
    assert main(["extract", *AFFWILD, "backbone=r3d_18", "backbone.clip_stride=2", f"task.data_root={affwild_tree}",
                 f"task.features_root={tmp_path / 'strided'}"]) == 2
    assert "backbone.clip_stride=2: task affwild2 needs one feature row per frame" in capsys.readouterr().err
    assert not (tmp_path / "strided").exists()
    for j, p in enumerate(annotations):
        n = len(read_va(p)[0])
        x = np.load(affwild_tree / "features" / "visual" / f"{p.stem}.npy")
        z = np.load(zeros_root / f"{p.stem}.npy")
        assert x.shape == z.shape == (n, 512)
        gaps = gaps_of(j, n)
        f = info["files"][f"{p.stem}.npy"]
        assert (f["rows"], f["gaps_filled"], f["frames_read"], f["crops_beyond_annotation"]) == (n, len(gaps), n - len(gaps), 1)
        if j > 1:
            continue  # the values: on two tracks (one with the leading gap)
        present = [k for k in range(1, n + 1) if k not in gaps]
        crops = np.stack([decode.read_image(affwild_tree / "cropped_aligned" / p.stem / f"{k:05d}.jpg", 16)
                          for k in present])
        with torch.no_grad():
            own = dict(zip(present, bb.model(normalised(crops, bb)).numpy()))
        for k in range(1, n + 1):
            source = k if k in own else max([c for c in present if c < k], default=present[0])
            np.testing.assert_allclose(x[k - 1], own[source], rtol=1e-4, atol=1e-4)
            if k in gaps:
                assert not z[k - 1].any()
            else:
                np.testing.assert_allclose(z[k - 1], own[k], rtol=1e-4, atol=1e-4)


def test_affwild2_task_runs_on_the_extracted_features(affwild_tree, tmp_path):
    from harness.records import iter_records

    assert main(["run", *RUN_TINY, "task=affwild2", f"task.data_root={affwild_tree}",
                 f"results_dir={tmp_path / 'results'}", f"cache_dir={tmp_path / 'cache'}"]) == 0
    rec = iter_records(tmp_path / "results")[0]
    assert rec["status"] == "ok" and rec["data_source"] == "mimic"   # the mimic marker wins
    vf = rec["data_info"]["visual_features"]
    assert vf["extractor"]["backbone"] == "resnet18" and vf["n_files"] == 9 and vf["gaps_filled"] > 0


@pytest.fixture
def affwild_videos(tmp_path) -> Path:
    """Aff-Wild2 as downloaded without crops: batch1/<video>.mp4 with audio, a two-person video, no wavs."""
    root = tmp_path / "aw"
    ann = root / "6th ABAW Annotations" / "VA_Estimation_Challenge"
    for set_name, track, n in (("Train_Set", "vidA", 20), ("Validation_Set", "vidB_left", 14),
                               ("Validation_Set", "vidB_right", 14)):
        (ann / set_name).mkdir(parents=True, exist_ok=True)
        (ann / set_name / f"{track}.txt").write_text("valence,arousal\n" + "0.1,0.2\n" * n)
    write_video(root / "batch1" / "vidA.mp4", 22, w=32, h=24, audio_rate=44100, seed=1)
    write_video(root / "batch2" / "vidB.mp4", 12, w=64, h=24, audio_rate=44100, seed=2, split=True)
    return root


def test_affwild2_from_videos_writes_16k_mono_wavs_and_rows_per_annotation_line(affwild_videos):
    root = affwild_videos
    assert main(["extract", *AFFWILD, f"task.data_root={root}"]) == 0
    for video, frames in (("vidA", 22), ("vidB", 12)):
        y, sr = soundfile.read(root / "audio" / f"{video}.wav")
        assert sr == 16000 and y.ndim == 1 and abs(len(y) / sr - frames / 25) < 0.05
        assert 0.2 < np.abs(y[len(y) // 4: 3 * len(y) // 4]).max() < 0.4     # the 0.3 sine, resampled
    assert (root / "video_fps.csv").read_text() == "video,fps\nvidA,25\nvidB,25\n"   # read from the videos
    info = json.loads((root / "features" / "visual" / "EXTRACTED.json").read_text())
    a, left = (info["files"][f"{t}.npy"] for t in ("vidA", "vidB_left"))
    assert (a["rows"], a["frames_read"], a["gaps_filled"], a["video_longer_than_annotation"]) == (20, 20, 0, True)
    assert (left["rows"], left["frames_read"], left["gaps_filled"], left["half"]) == (14, 12, 2, "left")
    xa = np.load(root / "features" / "visual" / "vidA.npy")
    xl, xr = (np.load(root / "features" / "visual" / f"vidB_{h}.npy") for h in ("left", "right"))
    assert xa.shape == (20, 512) and xl.shape == xr.shape == (14, 512)
    np.testing.assert_array_equal(xl[12:], xl[[11, 11]])                    # the video ends early: previous frame
    assert not np.allclose(xl, xr)                                          # each person's half
    bb = backbones.build("resnet18", "none", seed=0)
    frames = np.stack([f for f, _ in decode.iter_video(root / "batch1" / "vidA.mp4", 16)])[:20]
    with torch.no_grad():
        np.testing.assert_allclose(xa, bb.model(normalised(frames, bb)).numpy(), rtol=1e-4, atol=1e-4)


def test_a_corrupt_video_is_named_and_leaves_no_file_or_is_skipped_and_counted(affwild_videos, capsys):
    root = affwild_videos
    video = root / "batch1" / "vidA.mp4"
    video.write_bytes(video.read_bytes()[: video.stat().st_size // 3])     # truncated download
    out = root / "features" / "visual"
    assert main(["extract", *AFFWILD, f"task.data_root={root}", "extract.audio=false",
                 "extract.num_workers=0"]) == 2
    assert str(video) in capsys.readouterr().err
    assert not (out / "vidA.npy").exists() and not list(out.glob(".*tmp*"))
    assert main(["extract", *AFFWILD, f"task.data_root={root}", "extract.audio=false", "extract.on_error=skip"]) == 0
    info = json.loads((out / "EXTRACTED.json").read_text())
    assert sorted(info["files"]) == ["vidB_left.npy", "vidB_right.npy"]
    assert list(info["skipped"]) == ["vidA.npy"] and str(video) in info["skipped"]["vidA.npy"]
    assert not (out / "vidA.npy").exists() and not list(out.glob(".*tmp*"))


def test_weights_from_a_file_are_used_and_identified_by_their_hash(affwild_videos, tmp_path, capsys):
    import hashlib

    from tasks._common import data_source_of

    tv, _ = backbones.import_torchvision()
    torch.manual_seed(5)
    path = tmp_path / "resnet18.pth"
    torch.save(tv.models.resnet18(num_classes=7).state_dict(), path)   # its own classifier: ignored
    root = affwild_videos
    assert main(["extract", *AFFWILD, f"task.data_root={root}", "extract.audio=false", f"extract.weights={path}"]) == 0
    info = json.loads((root / "features" / "visual" / "EXTRACTED.json").read_text())
    w = info["extractor"]["weights"]
    assert w["source"] == "file" and w["file_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info["random_weights"] is False and "WARNING" not in info
    assert data_source_of(root, root / "features" / "visual") == "real"
    bb = backbones.build("resnet18", str(path))
    assert bb.weights["parameters_sha256"] == w["parameters_sha256"]
    frames = np.stack([f for f, _ in decode.iter_video(root / "batch1" / "vidA.mp4", 16)])[:20]
    with torch.no_grad():
        np.testing.assert_allclose(np.load(root / "features" / "visual" / "vidA.npy"),
                                   bb.model(normalised(frames, bb)).numpy(), rtol=1e-4, atol=1e-4)
    bad = tmp_path / "other.pth"
    torch.save({"conv1.weight": torch.zeros(3)}, bad)
    assert main(["extract", *AFFWILD, f"task.data_root={root}", f"extract.weights={bad}", "extract.overwrite=true"]) == 2
    assert "does not fit torchvision's resnet18" in capsys.readouterr().err


# --- config -------------------------------------------------------------------------------------------------------

def test_extract_yaml_and_schema_tables_agree():
    def leaves(node, prefix=""):
        for k, v in node.items():
            if isinstance(v, dict) and v:
                yield from leaves(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}"

    assert sorted(BACKBONES) == group_options("backbone") == sorted(backbones.BACKBONES)
    for name in BACKBONES:
        d = OmegaConf.to_container(compose([f"backbone={name}"]))
        assert sorted(leaves(d["backbone"])) == sorted(BACKBONES[name])
        rest = {k: v for k, v in d.items() if k not in ("task", "backbone")}
        assert sorted(leaves(rest)) == sorted(EXTRACT_ROOT)


def test_bad_values_fail_in_one_line(capsys):
    assert main(["extract", "extract.on_error=ignore"]) == 2
    assert "extract.on_error='ignore': expected one of error, skip" in capsys.readouterr().err
    assert main(["extract", "task=mosi"]) == 2  # the tasks that declare an extract plan (Task.extract_plan) are named
    assert "task=mosi: harness extract reads the videos of affwild2 and biovid only" in capsys.readouterr().err
    assert main(["extract", "backbone=resnet50"]) == 2
    assert "did you mean resnet18" in capsys.readouterr().err.replace("'", "")
