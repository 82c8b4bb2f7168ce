"""`harness extract`: the loop. Ask the task for its plan of the files (sources.py), skip the finished ones, decode
in DataLoader workers (loader.py), run the frozen backbone (backbones.py) in batches on the device, write each file
atomically, keep EXTRACTED.json (sidecar.py) up to date.

Rows of a file: a frame backbone gives one row per frame read; a clip backbone one row per clip, the clip of
clip_len frames centred on frame c (frames c - clip_len//2 .. c + clip_len - clip_len//2 - 1, the first and last
frames repeated past the ends) for c = 0, clip_stride, 2·clip_stride, ... Rows whose frame is missing (an Aff-Wild2
crop gap, or a video shorter than its annotation) take the previous frame's row (extract.gap_fill=previous) or
zeros (gap_fill=zeros).
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from harness.errors import ConfigError, TaskError
from harness.extract import backbones, decode, sidecar
from harness.extract.loader import Decoded
from harness.extract.sources import Item, Plan
from harness.registry import TASKS
from harness.storage import atomic_np_save, atomic_write_text
from harness.task import Task

FLUSH_EVERY_S = 30.0  # EXTRACTED.json is rewritten at most this often during a run, and at its end


class ExtractError(TaskError):
    """An input that cannot be read with extract.on_error=error; the message names it."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("torch", "torchvision", "av", "numpy", "pillow", "pkd-harness"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def atomic_save(path: Path, array: np.ndarray) -> None:
    """np.save into a temporary file of the same folder, then renamed: a reader sees the old file or the new one.
    A full disk: DiskFullError naming the folder and the array's size (harness/storage.py); the files written
    before are listed in EXTRACTED.json, and a re-sent command goes on from there."""
    atomic_np_save(path, array)


class Model:
    """The backbone on the device, fed uint8 frames [n, S, S, 3]: normalisation, batching, clips."""

    def __init__(self, bb: backbones.Backbone, bcfg, device: torch.device, batch_size: int, amp: bool):
        self.bb, self.device, self.batch, self.amp = bb, device, int(batch_size), amp
        self.net = bb.model.to(device)
        self.mean = torch.tensor(bb.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(bb.std, device=device).view(1, 3, 1, 1)
        self.clip_len, self.stride = int(bcfg.clip_len), int(bcfg.clip_stride)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 [n, S, S, 3] -> float [n, 3, S, S], scaled to [0, 1] and normalised with the weights' mean/std."""
        x = x.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
        return (x - self.mean) / self.std

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            return self.net(x).float()

    def frames(self, frames: torch.Tensor) -> torch.Tensor:
        """[n, S, S, 3] uint8 -> [n, 512] float32 on the CPU, one row per frame (2D backbone)."""
        out = [self._run(self._norm(frames[s:s + self.batch])).cpu() for s in range(0, len(frames), self.batch)]
        return torch.cat(out) if out else torch.zeros(0, backbones.FEATURE_DIM)

    def clip_index(self, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
        """(centres [R], frame positions [R, clip_len]) of the clips over rows 0..n_rows-1."""
        centres = np.arange(0, n_rows, self.stride)
        offsets = np.arange(self.clip_len) - self.clip_len // 2
        return centres, np.clip(centres[:, None] + offsets[None, :], 0, n_rows - 1)

    def clips(self, frames: torch.Tensor, src: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
        """Clip features of a whole item: row positions src (row -> frame read); (centres, [R, 512] float32)."""
        centres, pos = self.clip_index(len(src))
        video = frames.to(self.device, non_blocking=True)
        idx = torch.as_tensor(src[pos], device=self.device)  # [R, L] indices into the frames read
        out = []
        for s in range(0, len(centres), self.batch):
            x = video[idx[s:s + self.batch]]                             # [b, L, S, S, 3] uint8
            b, L = x.shape[:2]
            x = self._norm(x.flatten(0, 1)).unflatten(0, (b, L)).permute(0, 2, 1, 3, 4)  # [b, 3, L, S, S]
            out.append(self._run(x).cpu())
        return centres, torch.cat(out)


def extractor_facts(cfg: DictConfig, bb: backbones.Backbone, facts: dict) -> dict:
    b = cfg.backbone
    return {"backbone": b.name, "kind": bb.kind, "library": "torchvision", "weights": bb.weights,
            "input_size": [int(b.size), int(b.size)], "clip_len": int(b.clip_len), "clip_stride": int(b.clip_stride),
            "resize": "shorter side to input_size (area/bilinear), centre crop",
            "normalisation": {"mean": list(bb.mean), "std": list(bb.std)},
            "feature": f"{backbones.FEATURE_DIM}-d pooled output before the classifier",
            "gap_fill": cfg.extract.gap_fill, **facts}


def _comparable(old: dict, new: dict) -> list[str]:
    """The extractor settings that differ between an existing sidecar and this run."""
    keys = ("backbone", "input_size", "clip_len", "clip_stride", "gap_fill", "input")
    diff = [f"{k}: {old.get(k)} -> {new.get(k)}" for k in keys if old.get(k) != new.get(k)]
    ow, nw = old.get("weights") or {}, new.get("weights") or {}
    if ow.get("parameters_sha256") != nw.get("parameters_sha256"):
        diff.append(f"weights: {ow.get('source')} {str(ow.get('parameters_sha256'))[:12]} -> "
                    f"{nw.get('source')} {str(nw.get('parameters_sha256'))[:12]}")
    return diff


def plan(task_cfg, ecfg) -> Plan:
    """The plan the task `task_cfg` declares for the `extract` keys `ecfg` (Task.extract_plan)."""
    if task_cfg.get("source", "real") != "real":
        raise ConfigError(f"task.source={task_cfg.source}: extraction reads a downloaded dataset at task.data_root; "
                          f"use task.source=real")
    found = TASKS.get(task_cfg.name)(task_cfg).extract_plan(ecfg)
    if found is None:
        declaring = [name for name, cls in TASKS.items() if cls.extract_plan is not Task.extract_plan]
        raise ConfigError(f"task={task_cfg.name}: harness extract reads the videos of {' and '.join(declaring)} only "
                          f"(the other tasks ship their features)")
    return found


def extract(cfg: DictConfig) -> dict:
    """Run the extraction a composed `harness extract` config describes; returns the counts it printed."""
    e = cfg.extract
    torch.manual_seed(int(e.seed))
    p: Plan = plan(cfg.task, e)
    fixed = next((it for it in p.items if it.rows is not None), None)
    if fixed is not None and int(cfg.backbone.clip_stride) != 1:  # clips every clip_stride frames: fewer rows
        raise ConfigError(f"backbone.clip_stride={cfg.backbone.clip_stride}: task {cfg.task.name} needs one feature "
                          f"row per frame ({fixed.out}: {fixed.rows} rows, one per annotated frame); use "
                          f"backbone.clip_stride=1")
    device = resolve_device(cfg.device)
    amp = device.type == "cuda" if e.amp == "auto" else bool(e.amp)
    root = Path(p.features_root)
    old = sidecar.read(root)
    if old is None and not e.overwrite:
        stray = [it.out for it in p.items if Path(it.out).is_file()]
        if stray:
            raise ConfigError(f"{root} already holds {len(stray)} feature files (e.g. {stray[0]}) but no "
                              f"{sidecar.NAME}: they were not made by harness extract. Extract into another folder "
                              f"(task.features_root=...), or replace them with extract.overwrite=true")
    bb = backbones.build(cfg.backbone.name, str(e.weights), int(e.seed))
    facts = extractor_facts(cfg, bb, p.facts)
    if old is not None and not e.overwrite:
        diff = _comparable(old.get("extractor") or {}, facts)
        if diff:
            raise ConfigError(f"{sidecar.path_of(root)} describes features made with other settings "
                              f"({'; '.join(diff)}). Extract into another folder (task.features_root=...), or replace "
                              f"them all with extract.overwrite=true")
    files = {} if old is None or e.overwrite else dict(old.get("files") or {})
    skipped = {} if old is None or e.overwrite else dict(old.get("skipped") or {})
    todo = [it for it in p.items if e.overwrite or not (it.key in files and Path(it.out).is_file())]
    data = {"written_by": "harness extract", **({"finished_at": old["finished_at"]} if files and "finished_at" in old
                                                 else {}), "extractor": facts, "random_weights": e.weights == "none",
            "versions": versions(), "device": str(device), "amp": amp,
            "torchvision_ops": bb.torchvision_ops, "files": files, "skipped": skipped}
    if data["random_weights"]:
        data["WARNING"] = sidecar.RANDOM_WEIGHTS_WARNING
        print(f"WARNING: {sidecar.RANDOM_WEIGHTS_WARNING}")
    for it in todo:
        skipped.pop(it.key, None)
    wav_counts = _wavs(p, e, data)
    _fps_table(p)
    print(f"extract: {len(p.items)} files in {root} ({len(p.items) - len(todo)} done already, {len(todo)} to extract) "
          f"with {bb.name} ({bb.weights['source']} weights) on {device}")
    counts = {"files": len(p.items), "done_before": len(p.items) - len(todo), "written": 0, "skipped": 0,
              "wavs_written": wav_counts}
    sidecar.write(root, data)
    if todo:
        counts.update(_loop(cfg, todo, bb, device, amp, data, root))
    if counts["written"] or wav_counts:
        data["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    sidecar.write(root, data)
    print(f"extract: wrote {counts['written']} files, skipped {counts['skipped']} unreadable inputs"
          + (f" (listed in {sidecar.path_of(root)})" if counts["skipped"] else "") + f"; {sidecar.path_of(root)}")
    return counts


def _wavs(p: Plan, e, data: dict) -> int:
    """Aff-Wild2: <audio_root>/<video>.wav from each video whose wav is absent (16 kHz mono). A video that is not
    there is named in EXTRACTED.json (audio.no_video) and printed, not an error: the crops alone still give the
    visual features, and the task names the missing wav when it runs."""
    written, no_video = 0, []
    for video, src, wav in p.wavs:
        if src is None:
            no_video.append(video)
            continue
        try:
            decode.extract_wav(src, wav)
            written += 1
        except decode.DecodeError as err:
            if e.on_error == "error":
                raise ExtractError(f"{err}. Nothing was written for it; fix or remove the file, or set "
                                   f"extract.on_error=skip to skip and count such inputs") from None
            data["skipped"][f"audio/{video}.wav"] = str(err)
    if p.wavs:
        data["audio"] = {"sample_rate": 16000, "channels": 1, "written": written,
                         "from": "the video's first audio track", "no_video": no_video}
    if no_video:
        print(f"extract: no video file for {len(no_video)} of the {len(p.wavs)} missing wavs (e.g. {no_video[0]}) "
              f"under {p.facts.get('videos_dir') or 'the data root'}: their audio/<video>.wav were not written (set "
              f"extract.videos_dir, or extract.audio=false)")
    return written


def _fps_table(p: Plan) -> None:
    """Aff-Wild2: <data_root>/video_fps.csv (video,fps) from the videos' own frame rates when the file is absent, so
    the task aligns the audio with the frames by the true rate instead of annotation lines / wav duration."""
    if p.fps_file is None or not p.videos:
        return
    rows = [(v, decode.video_fps(path)) for v, path in p.videos.items()]
    rows = [(v, f) for v, f in rows if f]
    if not rows:
        return
    text = "video,fps\n" + "".join(f"{v},{f:.6g}\n" for v, f in rows)
    atomic_write_text(p.fps_file, text)
    print(f"extract: wrote {p.fps_file} ({len(rows)} videos' frame rates)")


def _loop(cfg, todo: list[Item], bb, device, amp, data: dict, root: Path) -> dict:
    from tqdm.auto import tqdm

    e = cfg.extract
    model = Model(bb, cfg.backbone, device, int(e.batch_size), amp)
    workers = int(e.num_workers)
    # Decoding workers start from a forkserver, not by forking this process: this process has threads (tqdm's
    # monitor, torch's pools, a launcher's), and a fork can copy a lock one of them held, so that the child's FFmpeg
    # decode waits on it forever (it happened in the test suite under load: a worker idle in iter_video for 15 min).
    loader = torch.utils.data.DataLoader(
        Decoded(todo, int(cfg.backbone.size)), batch_size=None, num_workers=workers,
        multiprocessing_context="forkserver" if workers else None,
        pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None, persistent_workers=False)
    pending: dict[int, list[torch.Tensor]] = {}
    written = skipped = 0
    last_flush = time.monotonic()
    # rows known up front (Aff-Wild2: annotation lines): a bar of rows; else (BioVid: frames unknown until decoded)
    # a bar of files
    by_rows = all(it.rows is not None for it in todo)
    bar = tqdm(total=sum(it.rows for it in todo) if by_rows else len(todo), unit="row" if by_rows else "file",
               desc=f"extract {bb.name}", disable=not cfg.progress, dynamic_ncols=True)
    it_loader = iter(loader)
    try:
        for i, what, payload in it_loader:
            item = todo[i]
            if what == "frames":
                pending.setdefault(i, []).append(model.frames(payload) if bb.kind == "frame" else payload)
                continue
            parts = pending.pop(i, [])
            if what == "error":
                if e.on_error == "error":
                    raise ExtractError(f"{payload}. Nothing was written for it; fix or remove the file, or set "
                                       f"extract.on_error=skip to skip and count such inputs")
                data["skipped"][item.key] = payload
                skipped += 1
                bar.update(item.rows if by_rows else 1)
                continue
            src, gap = np.asarray(payload["src"]), np.asarray(payload["gap"])
            if bb.kind == "frame":
                feats = torch.cat(parts)[torch.as_tensor(src)]
                rows_gap = gap
            else:
                centres, feats = model.clips(torch.cat(parts), src)
                rows_gap = gap[centres]
            if e.gap_fill == "zeros":
                feats[torch.as_tensor(rows_gap)] = 0
            out = feats.numpy().astype(np.float32, copy=False)
            atomic_save(Path(item.out), out)
            data["files"][item.key] = {
                "rows": int(out.shape[0]), "frames_read": int(payload["frames_read"]), "fps": payload["fps"],
                "source": item.source, "gaps_filled": int(rows_gap.sum()),
                **({"half": item.half} if item.half else {}), **payload["extra"]}
            written += 1
            bar.update(len(out) if by_rows else 1)
            if time.monotonic() - last_flush > FLUSH_EVERY_S:
                sidecar.write(root, data)
                last_flush = time.monotonic()
    finally:
        bar.close()
        del it_loader  # shuts the workers down
        sidecar.write(root, data)
    return {"written": written, "skipped": skipped}
