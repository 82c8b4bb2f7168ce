"""What `harness extract` reads and writes: a Plan of one Item per feature file, at the task's own paths.

Each task declares its plan (`Task.extract_plan`, harness/task.py); the engine (run.py `plan`) builds the task from
its config through the registry, as `harness run` does, and asks it, so the files land exactly where `harness run`
reads them and harness/ knows no task's layout. Today biovid (tasks/biovid.py: one row per video frame) and affwild2
(tasks/affwild2.py: one row per annotation line, wavs and the frame-rate table) declare one; the other tasks ship
their features.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm")  # the video files a task's search for videos takes


@dataclass(frozen=True)
class Item:
    key: str                 # output path relative to the features root (EXTRACTED.json's files key)
    out: str                 # the output .npy
    kind: str                # "video" | "frames"
    source: str              # the video file or the frame folder
    rows: int | None         # feature rows to write (affwild2: its annotation lines), None = every frame (biovid);
                             # fixed rows need one row per frame: a clip backbone then runs with clip_stride 1
    half: str | None = None  # "left" | "right": that half of a two-person video (affwild2 video input)


@dataclass
class Plan:
    features_root: Path
    items: list[Item]
    wavs: list[tuple[str, Path | None, Path]]   # (video name, its video file or None, the wav to write)
    facts: dict                                 # input kind, folders... for EXTRACTED.json
    fps_file: Path | None = None                # a video,fps table to write (affwild2: <data_root>/video_fps.csv) ...
    videos: dict[str, Path] | None = None       # ... from these annotated videos' frame rates
