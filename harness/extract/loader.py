"""Decoding in DataLoader worker processes while the model runs in the main process.

`Decoded` is an IterableDataset: worker w of n reads items w, w+n, ... and streams messages, one at a time:
  (i, "frames", uint8 tensor [m, size, size, 3])   the next frames read of item i (at most `chunk` of them)
  (i, "end", {"src", "gap", "frames_read", "fps", ...})   item i is complete: how its rows map to the frames read
  (i, "error", "message naming the file")           item i cannot be read; nothing of it is written
Frames of several items interleave (one stream per worker); the main process keeps each item's frames (or, for a
frame backbone, their features) until its "end". A frame backbone gets frames as they come, so a long Aff-Wild2
video never sits in memory whole; a clip backbone needs an item's frames together (BioVid's 5.5 s videos).
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from harness.extract import decode
from harness.extract.sources import Item


class Decoded(IterableDataset):
    def __init__(self, items: list[Item], size: int, chunk: int = 256):
        self.items, self.size, self.chunk = items, int(size), int(chunk)

    def __iter__(self):
        info = get_worker_info()
        wid, n = (info.id, info.num_workers) if info is not None else (0, 1)
        for i in range(wid, len(self.items), n):
            try:
                yield from self._one(i, self.items[i])
            except decode.DecodeError as e:
                yield i, "error", str(e)
            except Exception as e:  # noqa: BLE001 -- anything else a reader raises: name the file, keep going
                yield i, "error", f"{self.items[i].source}: {type(e).__name__}: {e}"

    def _batch(self, frames: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(frames))

    def _one(self, i: int, item: Item):
        buf: list[np.ndarray] = []
        fps = None
        if item.kind == "frames":
            from pathlib import Path

            files = decode.frame_files(Path(item.source))
            try:
                layout = decode.plan_rows(sorted(files), item.rows)
            except decode.DecodeError as e:
                raise decode.DecodeError(f"{item.source}: {e} (the annotation has {item.rows} lines)") from None
            for k in sorted(files):
                if k > item.rows:
                    continue
                buf.append(decode.read_image(files[k], self.size))
                if len(buf) == self.chunk:
                    yield i, "frames", self._batch(buf)
                    buf = []
        else:
            limit = None if item.rows is None else item.rows + 1  # one more: is the video longer than annotated?
            n, longer = 0, False
            for frame, fps in decode.iter_video(item.source, self.size, item.half, limit):
                if item.rows is not None and n >= item.rows:
                    longer = True
                    break
                buf.append(frame)
                n += 1
                if len(buf) == self.chunk:
                    yield i, "frames", self._batch(buf)
                    buf = []
            layout = decode.video_rows(n, item.rows, longer)
        if buf:
            yield i, "frames", self._batch(buf)
        meta = asdict(layout)
        meta["fps"] = fps if item.kind == "video" else None
        yield i, "end", meta

