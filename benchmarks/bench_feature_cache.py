"""Feature cache: first load (signal processing + cache write) vs cached load, on mimic trees at real sizes.

  python benchmarks/bench_feature_cache.py                       # both tasks at --scale 0.1
  python benchmarks/bench_feature_cache.py --task biovid --scale 1   # 8700 BioVid samples (87 subjects x 5 x 20)
  python benchmarks/bench_feature_cache.py --task affwild2 --scale 1 # ~2.6 M Aff-Wild2 frames

Scale 1 means the real datasets' sizes: BioVid Part A 8700 samples (all 5 classes are processed,
task.labels=multiclass), Aff-Wild2 about 2.6 M annotated frames (videos of 1000-8000 frames, 80 % in
Train_Set, one 16 kHz wav per video). The mimic tree is written first (not timed in the comparison).
Each phase runs in a fresh process: `first` (empty cache: read the files, compute physio / audio features,
write the Arrow cache), then `cached` (same files and config: the cache is read instead). Times are
`task.load_fold(0)` wall-clock; memory is the phase's peak RSS above the process after imports (VmHWM reset
through /proc/self/clear_refs; ru_maxrss of the whole process where that is not allowed). The ratio
first/cached is the figure to watch; absolute seconds depend on the machine and its load (printed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PHASE = r"""
import json, os, resource, sys, time, warnings
warnings.simplefilter("ignore")
sys.path.insert(0, {root!r})
from harness.config import compose_one
from harness.registry import TASKS
import datasets, librosa, scipy.signal  # noqa: F401  imported before the memory baseline in every phase

def status(key):
    try:
        return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key + ":")) / 2**20
    except (OSError, StopIteration):
        return float("nan")

cfg = compose_one({overrides!r})
task = TASKS.get(cfg.task.name)(cfg.task)
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak RSS to the current RSS: the phase's own peak, imports excluded
    reset = True
except OSError:
    reset = False
start = status("VmRSS")
t = time.perf_counter()
fold = task.load_fold(0)
seconds = time.perf_counter() - t
peak = status("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
info = fold.info
hit = (info.get("physio") or info.get("audio") or {{}}).get("cache_hit")
print(json.dumps({{"seconds": seconds, "start_gb": start, "peak_gb": peak, "peak_is_phase_only": reset,
                  "cache_hit": hit, "n": {{k: len(getattr(fold, k)) for k in ("train", "val", "test")}},
                  "frames": info.get("n_valid_frames")}}))
"""


def sizes(task: str, scale: float) -> list[str]:
    if task == "biovid":
        subjects = max(5, round(87 * scale))
        return [f"task.mimic.n_subjects={subjects}", "task.mimic.samples_per_class=20", "task.mimic.write_raw=false",
                "task.labels=multiclass"]
    frames = 2.6e6 * scale
    videos = max(5, round(frames / 4500))  # frames per video uniform on 1000..8000: mean 4500
    n_val = max(1, round(0.2 * videos))
    return [f"task.mimic.n_train_videos={videos - n_val}", f"task.mimic.n_val_videos={n_val}",
            "task.mimic.min_frames=1000", "task.mimic.max_frames=8000", f"task.mimic.two_person_videos={videos // 10}"]


def du(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**30


def run_phase(overrides: list[str]) -> dict:
    code = PHASE.format(root=str(ROOT), overrides=overrides)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"phase failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench(task: str, scale: float, work: Path) -> dict:
    sys.path.insert(0, str(ROOT))
    from harness.config import compose_one
    from harness.registry import TASKS

    mimic = sizes(task, scale)
    tree = work / f"{task}-tree"
    cache = work / f"{task}-cache"
    shutil.rmtree(cache, ignore_errors=True)
    if not (tree / "MIMIC_DATA.txt").is_file():
        shutil.rmtree(tree, ignore_errors=True)
        t = time.perf_counter()
        TASKS.get(task).write_mimic(tree, compose_one([f"task={task}", *mimic]).task)
        print(f"  wrote the {task} mimic tree ({du(tree):.2f} GB) in {time.perf_counter() - t:.0f} s (not timed below)",
              flush=True)
    overrides = [f"task={task}", f"task.data_root={tree}", f"cache_dir={cache}", *mimic]
    first = run_phase(overrides)
    cached = run_phase(overrides)
    assert first["cache_hit"] is False and cached["cache_hit"] is True, (first, cached)
    return {"task": task, "scale": scale, "first": first, "cached": cached, "cache_gb": du(cache / "features"),
            "tree_gb": du(tree)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=("biovid", "affwild2", "both"), default="both")
    p.add_argument("--scale", type=float, default=0.1, help="fraction of the real dataset size (1 = real size)")
    p.add_argument("--workdir", type=Path, default=None, help="where trees and caches go (default: a temp folder)")
    p.add_argument("--keep", action="store_true", help="keep the mimic trees and caches")
    args = p.parse_args()
    import tempfile

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_feature_cache_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"feature cache benchmark: scale {args.scale}, work dir {work}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    try:
        for task in (("biovid", "affwild2") if args.task == "both" else (args.task,)):
            r = bench(task, args.scale, work)
            rows.append(r)
            f, c = r["first"], r["cached"]
            n = sum(f["n"].values())
            what = (f"{n} samples" if task == "biovid"
                    else f"{sum(f['frames'].values())} valid frames in {n} windows")
            print(f"{task}: {what}, tree {r['tree_gb']:.2f} GB, feature cache {r['cache_gb']:.2f} GB\n"
                  f"  first load (process + write cache): {f['seconds']:8.1f} s   peak +{f['peak_gb'] - f['start_gb']:.2f} GB\n"
                  f"  cached load:                        {c['seconds']:8.1f} s   peak +{c['peak_gb'] - c['start_gb']:.2f} GB\n"
                  f"  first / cached: {f['seconds'] / c['seconds']:.1f}x"
                  + ("" if f["peak_is_phase_only"] else "   (peaks are whole-process ru_maxrss)"), flush=True)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
