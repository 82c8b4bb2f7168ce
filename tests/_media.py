"""Tiny media files for tests/test_extract.py and benchmarks/bench_extract.py: mp4 videos (PyAV) and face-crop jpgs
(Pillow) of a moving square whose colour changes with the frame number, so every frame differs."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def frame_image(k: int, w: int, h: int, seed: int = 0) -> np.ndarray:
    """Frame k (0-based): a grey background, a square moving right, coloured by k and seed."""
    img = np.full((h, w, 3), 40 + (seed * 17) % 60, np.uint8)
    side = max(4, min(w, h) // 3)
    x = (k * 3 + seed * 5) % max(1, w - side)
    y = (h - side) // 2
    img[y:y + side, x:x + side] = ((k * 37 + 80) % 256, (seed * 53 + 30) % 256, (k * 11) % 256)
    return img


def write_video(path: Path, n_frames: int, w: int = 64, h: int = 48, fps: int = 25, audio_rate: int | None = None,
                seed: int = 0, split: bool = False) -> Path:
    """An mpeg4 mp4 of n_frames frames (and a stereo AAC sine track at audio_rate Hz spanning them, when given).
    split=True draws frame k's square on the left half and another on the right half (a two-person video)."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        a = None
        if audio_rate:
            a = c.add_stream("aac", rate=audio_rate)
            a.layout = "stereo"
        for k in range(n_frames):
            img = frame_image(k, w, h, seed)
            if split:
                img = np.concatenate([frame_image(k, w // 2, h, seed), frame_image(k, w - w // 2, h, seed + 7)], 1)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
        if a is not None:
            t = np.arange(round(n_frames / fps * audio_rate)) / audio_rate
            y = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            size = a.codec_context.frame_size or 1024
            for i in range(0, len(y), size):
                chunk = y[i:i + size]
                chunk = np.pad(chunk, (0, size - len(chunk)))
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(np.stack([chunk, chunk])), format="fltp",
                                                   layout="stereo")
                frame.sample_rate, frame.pts = audio_rate, i
                for p in a.encode(frame):
                    c.mux(p)
            for p in a.encode():
                c.mux(p)
    return path


def write_crops(folder: Path, numbers: list[int], size: int = 24, seed: int = 0) -> Path:
    """Face crops <folder>/<k:05d>.jpg for the 1-based frame numbers given (the others are gaps)."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for k in numbers:
        Image.fromarray(frame_image(k - 1, size, size, seed)).save(folder / f"{k:05d}.jpg", quality=95)
    return folder
