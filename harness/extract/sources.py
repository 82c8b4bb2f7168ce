"""What `harness extract` reads and writes for each task: one Item per feature file, at the task's own paths.

The output paths come from the task classes themselves (BioVid.visual_path, AffWild2.features_root), so the
files land exactly where `harness run` reads them:
  biovid    <data_root>/video/<subject>/<sample>.mp4 (extract.videos_dir)  ->  <features_root>/<subject>/<sample>.npy,
            one row per video frame (clip_stride 1) for every sample of samples.csv
  affwild2  <frames_dir>/<track>/<frame:05d>.jpg, or the video <video>.mp4 found under extract.videos_dir
            ->  <features_root>/<track>.npy with exactly one row per annotation line (row k = line k+1 = frame k),
            for every track of VA_Estimation_Challenge/{Train_Set,Validation_Set}; <audio_root>/<video>.wav
            from the video when absent (extract.audio); <data_root>/video_fps.csv from the videos' frame rates
            when absent
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from harness.errors import ConfigError, TaskError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm")


@dataclass(frozen=True)
class Item:
    key: str                 # output path relative to the features root (EXTRACTED.json's files key)
    out: str                 # the output .npy
    kind: str                # "video" | "frames"
    source: str              # the video file or the frame folder
    rows: int | None         # feature rows to write: annotation lines (affwild2), None = every frame (biovid)
    half: str | None = None  # "left" | "right": that half of a two-person video (affwild2 video input)


@dataclass
class Plan:
    features_root: Path
    items: list[Item]
    wavs: list[tuple[str, Path | None, Path]]   # (video name, its video file or None, the wav to write)
    facts: dict                                 # input kind, folders... for EXTRACTED.json
    fps_file: Path | None = None                # affwild2: <data_root>/video_fps.csv, written when absent ...
    videos: dict[str, Path] | None = None       # ... from these annotated videos' frame rates


def biovid(task_cfg, ecfg) -> Plan:
    from tasks._common import Cleaning
    from tasks.biovid import BioVid, read_index

    task = BioVid(task_cfg)
    root = task.root
    df = read_index(root / "samples.csv", Cleaning())
    vdir = Path(ecfg.videos_dir) if ecfg.get("videos_dir") else root / "video"
    if not vdir.is_dir():
        raise TaskError(f"no video folder {vdir}: BioVid ships its face videos as video/<subject>/<sample>.mp4 under "
                        f"the data root; point extract.videos_dir at the folder holding the <subject>/ folders")
    items = [Item(key=f"{s}/{n}.npy", out=str(task.visual_path(s, n)), kind="video",
                  source=str(vdir / s / f"{n}.mp4"), rows=None) for s, n in zip(df.subject_name, df.sample_name)]
    return Plan(task.features_root, items, [], {"input": "video", "videos_dir": str(vdir)})


def _index_videos(folder: Path, skip: list[Path]) -> dict[str, Path]:
    """{stem: path} of the video files under `folder`, not descending into `skip` (crop and feature folders)."""
    skip_set = {os.path.realpath(p) for p in skip}
    found: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if os.path.realpath(os.path.join(dirpath, d)) not in skip_set
                       and d not in ("cropped_aligned", "cropped")]
        for f in filenames:
            stem, ext = os.path.splitext(f)
            if ext.lower() in VIDEO_SUFFIXES:
                if stem in found:
                    raise TaskError(f"two videos named {stem}: {found[stem]} and {Path(dirpath) / f}; keep one, or "
                                    f"point extract.videos_dir at one folder")
                found[stem] = Path(dirpath) / f
    return found


def affwild2(task_cfg, ecfg) -> Plan:
    from tasks.affwild2 import SETS, VA_DIR, AffWild2, find_va_root, read_va, video_of

    task = AffWild2(task_cfg)
    root = task.root
    va_root = find_va_root(root, task_cfg.get("annotations_dir"))
    tracks: dict[str, int] = {}
    for set_name in SETS:
        for p in sorted((va_root / VA_DIR / set_name).glob("*.txt")):
            tracks[p.stem] = len(read_va(p)[0])
    if not tracks:
        raise TaskError(f"no annotation files under {va_root / VA_DIR}/{{{','.join(SETS)}}}/: nothing to extract")
    frames_dir = Path(ecfg.frames_dir) if ecfg.get("frames_dir") else root / "cropped_aligned"
    mode = ecfg.input
    if mode == "auto":
        mode = "frames" if frames_dir.is_dir() else "video"
    elif mode == "frames" and not frames_dir.is_dir():
        raise ConfigError(f"extract.input=frames: no frame folder {frames_dir} (set extract.frames_dir)")
    videos_dir = Path(ecfg.videos_dir) if ecfg.get("videos_dir") else root
    audio_root = task.audio_root
    need_wav = sorted({video_of(t) for t in tracks if not (audio_root / f"{video_of(t)}.wav").is_file()}) \
        if ecfg.audio else []
    fps_file = root / task_cfg.fps_file
    videos = (_index_videos(videos_dir, [frames_dir, task.features_root, audio_root, va_root])
              if mode == "video" or need_wav or not fps_file.is_file() else {})
    items = []
    for track, rows in tracks.items():
        key = f"{track}.npy"
        out = str(task.features_root / key)
        if mode == "frames":
            items.append(Item(key, out, "frames", str(frames_dir / track), rows))
        else:
            v = video_of(track)
            half = track.rsplit("_", 1)[1] if v != track else None
            src = videos.get(v)
            items.append(Item(key, out, "video", str(src) if src else str(videos_dir / f"{v}.mp4"), rows, half))
    wavs = [(v, videos.get(v), audio_root / f"{v}.wav") for v in need_wav]
    facts = {"input": mode, "annotations": str(va_root / VA_DIR)}
    facts.update({"frames_dir": str(frames_dir)} if mode == "frames" else
                 {"videos_dir": str(videos_dir), "two_person_tracks": "left/right half of the frame"})
    if need_wav:
        facts["videos_dir"] = str(videos_dir)
    annotated = {v: videos[v] for v in sorted({video_of(t) for t in tracks}) if v in videos}
    return Plan(task.features_root, items, wavs, facts, None if fps_file.is_file() else fps_file, annotated)


PLANNERS = {"biovid": biovid, "affwild2": affwild2}


def plan(task_cfg, ecfg) -> Plan:
    if task_cfg.name not in PLANNERS:
        raise ConfigError(f"task={task_cfg.name}: harness extract reads the videos of {' and '.join(PLANNERS)} only "
                          f"(the other tasks ship their features)")
    if task_cfg.get("source", "real") != "real":
        raise ConfigError(f"task.source={task_cfg.source}: extraction reads a downloaded dataset at task.data_root; "
                          f"use task.source=real")
    return PLANNERS[task_cfg.name](task_cfg, ecfg)
