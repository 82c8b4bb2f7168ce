"""`harness extract` throughput against the backbone's own forward pass, in the same run.

  python benchmarks/bench_extract.py                                    # Aff-Wild2 crops -> ResNet-18 (224)
  python benchmarks/bench_extract.py --task biovid --backbone r3d_18    # BioVid videos -> R3D-18 clips (112, 16)
  python benchmarks/bench_extract.py --task biovid --backbone r3d_18 --size 56 --clip-len 8 --files 12  # CPU-sized

What is compared (frames per second = feature rows written per second):
  model    the backbone alone (harness/extract/run.py `Model`: uint8 -> normalise -> forward, same batch size and
           device) on frames decoded beforehand and held in memory: the ceiling
  extract  the whole `harness extract` on the same files: planning, decoding in DataLoader workers, the model,
           atomic writes of the .npy files and EXTRACTED.json
  ratio    extract / model; the target is >= 0.8: decoding and I/O hidden behind the model
The inputs are written first (not timed): Aff-Wild2-like 112x112 face-crop jpgs (a few missing: gaps), or
BioVid-like mp4 videos (--width x --height, 25 fps). Random weights (extract.weights=none): the speed is the
pretrained weights'. Phases alternate (model, extract, model, extract...) and the medians are reported, since the
machine may be shared; torch uses --threads intra-op threads in both.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def write_biovid(root: Path, n_files: int, frames: int, w: int, h: int) -> None:
    import pandas as pd

    from tests._media import write_video

    rows = []
    for i in range(n_files):
        subject = f"0713{i // 10:02d}_w_2{i % 10}"
        sample = f"{subject}-BL1-{81 + i % 20:03d}"
        rows.append({"subject_name": subject, "sample_name": sample, "class_id": 0, "class_name": "BL1"})
        write_video(root / "video" / subject / f"{sample}.mp4", frames, w=w, h=h, seed=i)
    pd.DataFrame(rows).to_csv(root / "samples.csv", sep="\t", index=False)


def write_affwild2(root: Path, n_files: int, frames: int) -> None:
    from tests._media import write_crops

    ann = root / "ABAW Annotations" / "VA_Estimation_Challenge"
    for i in range(n_files):
        set_name = "Train_Set" if i % 4 else "Validation_Set"
        (ann / set_name).mkdir(parents=True, exist_ok=True)
        (ann / set_name / f"video{i}.txt").write_text("valence,arousal\n" + "0.1,0.2\n" * frames)
        write_crops(root / "cropped_aligned" / f"video{i}", [k for k in range(1, frames + 1) if k % 50 != 7],
                    size=112, seed=i)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=("affwild2", "biovid"), default="affwild2")
    ap.add_argument("--backbone", choices=("resnet18", "r3d_18"), default=None,
                    help="default: resnet18 for affwild2, r3d_18 for biovid")
    ap.add_argument("--size", type=int, default=None, help="backbone.size (default: the backbone's YAML)")
    ap.add_argument("--clip-len", type=int, default=None, help="backbone.clip_len (r3d_18)")
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--frames", type=int, default=150, help="frames per file (BioVid: 138)")
    ap.add_argument("--width", type=int, default=320, help="BioVid video width (the real ones: about 1388)")
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=1, help="extract.num_workers")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (both phases)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args()
    backbone = args.backbone or ("resnet18" if args.task == "affwild2" else "r3d_18")

    import numpy as np
    import torch

    from harness.extract import backbones, compose
    from harness.extract.run import Model, extract, plan, resolve_device

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-extract-"))
    try:
        data = work / "data"
        t0 = time.perf_counter()
        (write_affwild2 if args.task == "affwild2" else
         lambda r, n, f: write_biovid(r, n, f, args.width, args.height))(data, args.files, args.frames)
        print(f"inputs: {args.files} {args.task} files x {args.frames} frames written in {time.perf_counter() - t0:.1f} s")
        overrides = [f"task={args.task}", f"task.data_root={data}", f"backbone={backbone}", "extract.weights=none",
                     f"extract.batch_size={args.batch_size}", f"extract.num_workers={args.workers}",
                     "extract.overwrite=true", "extract.audio=false", "progress=false", f"device={args.device}"]
        if args.size:
            overrides.append(f"backbone.size={args.size}")
        if args.clip_len:
            overrides.append(f"backbone.clip_len={args.clip_len}")
        cfg = compose(overrides)
        size = int(cfg.backbone.size)

        # pre-decoded inputs for the model-only phase (exactly what the workers hand over)
        from harness.extract.loader import Decoded

        items = plan(cfg.task, cfg.extract).items
        t0 = time.perf_counter()
        decoded = []
        for i, what, payload in Decoded(items, size):
            if what in ("frames", "end"):
                decoded.append((i, payload))
        decode_s = time.perf_counter() - t0
        frames_by_item: dict[int, list] = {}
        ends = {}
        for i, payload in decoded:
            (frames_by_item.setdefault(i, []).append(payload) if isinstance(payload, torch.Tensor)
             else ends.__setitem__(i, payload))
        n_rows = sum(len(ends[i]["src"]) for i in ends)
        print(f"decode only (one process): {n_rows / decode_s:.0f} frames/s")

        device = resolve_device(args.device)
        bb = backbones.build(backbone, "none", 0)
        model = Model(bb, cfg.backbone, device, args.batch_size, amp=device.type == "cuda")

        def model_only() -> float:
            t = time.perf_counter()
            rows = 0
            for i, parts in frames_by_item.items():
                frames = torch.cat(parts)
                if bb.kind == "frame":
                    out = model.frames(frames)[torch.as_tensor(ends[i]["src"])]
                else:
                    _, out = model.clips(frames, np.asarray(ends[i]["src"]))
                rows += len(out)
            if device.type == "cuda":
                torch.cuda.synchronize()
            return rows / (time.perf_counter() - t)

        def whole() -> float:
            t = time.perf_counter()
            counts = extract(cfg)
            assert counts["written"] == len(items), counts
            return n_rows / (time.perf_counter() - t)

        model_only()  # warm-up (allocator, kernels)
        m, x = [], []
        for _ in range(args.repeats):
            m.append(model_only())
            x.append(whole())
        res = {"task": args.task, "backbone": backbone, "size": size, "clip_len": int(cfg.backbone.clip_len),
               "files": args.files, "rows": n_rows, "device": str(device), "threads": args.threads,
               "workers": args.workers, "batch_size": args.batch_size,
               "model_frames_per_s": statistics.median(m), "extract_frames_per_s": statistics.median(x),
               "all_model": m, "all_extract": x, "load_average": os.getloadavg()[0]}
        res["ratio"] = res["extract_frames_per_s"] / res["model_frames_per_s"]
        print(f"{backbone} (size {size}{', clip ' + str(res['clip_len']) if bb.kind == 'clip' else ''}) on {device}, "
              f"{args.threads} thread(s), {args.workers} worker(s), batch {args.batch_size}: "
              f"model {res['model_frames_per_s']:.1f} frames/s, whole extraction {res['extract_frames_per_s']:.1f} "
              f"frames/s, ratio {res['ratio']:.2f} (target >= 0.8); load average {res['load_average']:.1f}")
        if args.json:
            args.json.write_text(json.dumps(res, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
