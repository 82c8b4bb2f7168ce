"""Reading the inputs of `harness extract`: videos (PyAV), face-crop folders (Pillow), audio tracks (PyAV).

Why PyAV: it is FFmpeg's maintained Python binding and its wheels carry FFmpeg, so nothing else is installed on the
machine (no system ffmpeg, no CUDA build of anything); it decodes and resizes in C (`VideoFrame.reformat`, FFmpeg's
swscale), so a 1388x1038 BioVid frame never reaches Python at full size; and the same library resamples the audio
track to 16 kHz mono and writes the tests' small mp4 files. torchvision.io's video reader is deprecated upstream and
its compiled part does not load beside the CPU build of torch here (harness/extract/backbones.py); decord has had
no release since 2021.

Every frame becomes a `size` x `size` RGB uint8 array: shorter side resized to `size` (area interpolation), then
the centre cropped. A `half` ("left"/"right") first keeps that half of the frame: the person of an Aff-Wild2
`<video>_left` / `_right` track when the input is the video (no face detection is done).
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FRAME_NAME = re.compile(r"^(\d+)\.(jpg|jpeg|png)$", re.IGNORECASE)


class DecodeError(Exception):
    """An input that cannot be read; the message names the file and what is wrong."""


@dataclass
class Layout:
    """How a file's feature rows map to the frames that were read (see `plan_rows`)."""
    src: np.ndarray                 # [rows] index of the frame read for each row (never -1)
    gap: np.ndarray                 # [rows] bool: the row's own frame is missing (filled from src, or zeroed)
    frames_read: int = 0
    extra: dict = field(default_factory=dict)


def fit(width: int, height: int, size: int) -> tuple[int, int]:
    """(w, h) with the shorter side `size` and the aspect kept."""
    scale = size / min(width, height)
    return max(size, round(width * scale)), max(size, round(height * scale))


def centre_crop(a: np.ndarray, size: int) -> np.ndarray:
    h, w = a.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return a[top:top + size, left:left + size]


def _half(a: np.ndarray, half: str | None) -> np.ndarray:
    if half is None:
        return a
    w = a.shape[1]
    return a[:, : w // 2] if half == "left" else a[:, w - w // 2:]


def iter_video(path: Path | str, size: int, half: str | None = None, limit: int | None = None):
    """Yield (frame [size, size, 3] uint8, fps) for each decoded frame of the video's first video stream."""
    import av

    path = Path(path)
    if not path.is_file():
        raise DecodeError(f"{path}: no such video file")
    try:
        container = av.open(str(path))
    except av.FFmpegError as e:
        raise DecodeError(f"{path}: cannot open it as a video ({type(e).__name__}: {e})") from None
    with container:
        if not container.streams.video:
            raise DecodeError(f"{path}: holds no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = float(stream.average_rate) if stream.average_rate else None
        n = 0
        try:
            for frame in container.decode(stream):
                w, h = frame.width, frame.height
                # resize the whole frame so that the kept part (the frame or its half) has shorter side `size`
                part_w = w // 2 if half else w
                scale = size / min(part_w, h)
                tw, th = max(2, round(w * scale)), max(2, round(h * scale))
                rgb = frame.reformat(width=tw, height=th, format="rgb24", interpolation="AREA").to_ndarray()
                a = _half(rgb, half)
                if min(a.shape[:2]) < size:  # rounding left a side one pixel short
                    from PIL import Image
                    a = np.asarray(Image.fromarray(a).resize(fit(a.shape[1], a.shape[0], size)))
                yield np.ascontiguousarray(centre_crop(a, size)), fps
                n += 1
                if limit is not None and n >= limit:
                    return
        except av.FFmpegError as e:
            raise DecodeError(f"{path}: decoding failed after {n} frames ({type(e).__name__}: {e}); the file is "
                              f"corrupt or truncated") from None
    if n == 0:
        raise DecodeError(f"{path}: no frame could be decoded (empty or corrupt video)")


def video_fps(path: Path | str) -> float | None:
    import av

    try:
        with av.open(str(path)) as c:
            s = c.streams.video[0] if c.streams.video else None
            return float(s.average_rate) if s is not None and s.average_rate else None
    except av.FFmpegError:
        return None


def read_image(path: Path, size: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im = im.resize(fit(im.width, im.height, size), Image.Resampling.BILINEAR)
            return np.ascontiguousarray(centre_crop(np.asarray(im), size))
    except (OSError, UnidentifiedImageError, SyntaxError) as e:
        raise DecodeError(f"{path}: cannot read the image ({type(e).__name__}: {e}); re-extract or delete it (a "
                          f"missing crop is filled like any other gap)") from None


def frame_files(folder: Path) -> dict[int, Path]:
    """{frame number (1-based, from the name 00001.jpg): path} of a face-crop folder; other files are ignored."""
    if not folder.is_dir():
        raise DecodeError(f"{folder}: no such frame folder (expected <frames_dir>/<track>/00001.jpg, ...)")
    out = {}
    with os.scandir(folder) as entries:
        for e in entries:
            m = FRAME_NAME.match(e.name)
            if m:
                out[int(m[1])] = Path(e.path)
    return out


def plan_rows(present: list[int], rows: int) -> Layout:
    """Rows 1..rows of a track whose crops exist for the frame numbers `present` (sorted, 1-based).

    Row k gets crop k when it exists; otherwise the previous crop (the next one before the first crop). `src`
    indexes the crops that are read (those with numbers <= rows), in order.
    """
    kept = [k for k in present if 1 <= k <= rows]
    if not kept:
        raise DecodeError("none of its crops is numbered 1..rows")
    pos = {k: i for i, k in enumerate(kept)}
    src = np.empty(rows, dtype=np.int64)
    gap = np.ones(rows, dtype=bool)
    last = 0  # before the first crop: the first crop
    for r in range(rows):
        i = pos.get(r + 1)
        if i is not None:
            last = i
            gap[r] = False
        src[r] = last
    return Layout(src=src, gap=gap, frames_read=len(kept),
                  extra={"crops_beyond_annotation": sum(1 for k in present if k > rows)})


def video_rows(frames_read: int, rows: int | None, longer: bool) -> Layout:
    """Rows of a video read frame by frame: all its frames (rows None), or exactly `rows` (annotation lines):
    frames past the annotation are not used, missing ones at the end repeat the last frame (counted as gaps)."""
    n = frames_read if rows is None else rows
    src = np.minimum(np.arange(n), frames_read - 1)
    gap = np.arange(n) >= frames_read
    return Layout(src=src, gap=gap, frames_read=frames_read,
                  extra={"video_longer_than_annotation": bool(longer)} if rows is not None else {})


def extract_wav(video: Path, wav: Path, rate: int = 16000) -> float:
    """The video's first audio track as a mono 16-bit wav at `rate` Hz, written atomically; its duration (s)."""
    import av
    import soundfile

    if not video.is_file():
        raise DecodeError(f"{video}: no such video file")
    chunks = []
    try:
        with av.open(str(video)) as c:
            if not c.streams.audio:
                raise DecodeError(f"{video}: holds no audio track to extract {wav.name} from")
            resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
            for frame in c.decode(c.streams.audio[0]):
                chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
            chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    except av.FFmpegError as e:
        raise DecodeError(f"{video}: cannot decode its audio ({type(e).__name__}: {e})") from None
    if not chunks:
        raise DecodeError(f"{video}: its audio track holds no samples")
    y = np.concatenate(chunks).astype(np.int16)
    wav.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=wav.parent, prefix=f".{wav.stem}.", suffix=".tmp")
    os.close(fd)
    try:
        soundfile.write(tmp, y, rate, subtype="PCM_16", format="WAV")
        os.replace(tmp, wav)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(y) / rate
