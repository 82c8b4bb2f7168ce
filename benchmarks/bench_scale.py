"""Memory and time of whole runs on MIMIC trees of the real datasets' sizes: does a run fit, and what does it cost?

    python benchmarks/bench_scale.py --scale 0.02                              # 2 % of each dataset, every method
    python benchmarks/bench_scale.py --scale 0.02 --tasks affwild2 --stride 32 8 --compare-to HEAD~3
    python benchmarks/bench_scale.py --scale 1 --workdir /scratch/bench        # full size: an idle 24 GiB machine
    python benchmarks/bench_scale.py --scale 1 --compare-to 74ce559 --max-rss-gb 12   # the full-size table of
                                                          # docs/benchmarks/scale.md (the old code stops at the guard)

Writes MIMIC trees (the real on-disk formats, NOT real data) with the tasks' own writers (`harness data mimic`),
one track / sample at a time, sized as the real datasets times --scale:
  affwild2  432 tracks (400 videos, 32 of them with two people), 2000-7260 frames each (about 2.0 M frames), 512-d
            visual features, one wav per video (log-mel audio, 40-d, computed by the loader and cached);
  biovid    Part A: 87 subjects x 5 classes x 20 samples = 8,700 samples, 138 frames of 512-d visual features and
            the filtered biosignals each (binary BL1 vs PA4 reads 2 of the 5 classes);
  mosei     the unaligned MMSA pickle, 16,326 / 1,871 / 4,659 samples (22,856).
A warm-up process fills the feature caches (Aff-Wild2's audio, BioVid's physio, MOSEI's Arrow cache), so every
measured run reads its inputs the way a second run of a sweep does. Then each (task, stride, method) is ONE
fresh process running the harness's own run (`harness.runner.execute`, train.max_epochs=1 and every stage's
epochs 1, a fresh teacher store): its peak RSS (Linux VmHWM), the load time (record timings.load_s), and the
epoch time (the summed `seconds` of epoch 0 of every model the method trains: the teacher, T-Net, stage 1, the
student). Columns:

  inputs GB   float32 size of the unique input frames the run reads: Aff-Wild2 every track's frames x (visual +
              audio dims); BioVid every used sample's visual frames and physio frames (127 x 68, Part A); MOSEI
              the padded arrays of the pickle (its storage format), text + audio + vision
  peak/in     peak RSS / inputs GB (what a user's machine must hold, imports included)
  grow/in     (peak RSS - RSS after the imports) / inputs GB: the part that grows with the data (the goal: <= 1.5)
  vs old      with --compare-to REV: this code's epoch seconds / REV's, measured in the same benchmark run, one
              after the other on the same tree (REV is checked out with `git archive` into the workdir); with
              --repeats R, old and new run in turn R times each and the times are medians (peaks: the largest)

--max-rss-gb (default 4) kills a run whose RSS passes it (the row says so): the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parent.parent

FULL = {"affwild2": {"videos": 400, "two_person": 32, "val_share": 70 / 400, "min_frames": 2000, "max_frames": 7260,
                     "visual_dim": 512},
        "biovid": {"subjects": 87, "per_class": 20, "visual_dim": 512, "n_frames": 138},
        "mosei": {"n_train": 16326, "n_valid": 1871, "n_test": 4659}}
METHODS = {"affwild2": ("student", "kd", "pkdot", "mtpkdot"), "biovid": ("student", "kd", "pkdot", "mtpkdot"),
           "mosei": ("student", "kd", "pkdot", "mtpkdot", "dmd")}
PHYSIO_DIMS_PART_A = 65 + 2 + 1  # EMG spectrogram bins + EDA level and slope + heart rate (tasks/biovid.py)
PHYSIO_FRAMES = 127
ONE_EPOCH = {"student": [], "kd": [], "pkdot": ["method.tnet.epochs=1"],
             "mtpkdot": ["method.tnet.epochs=1", "method.stage1.epochs=1"], "dmd": ["method.training.max_epochs=1"]}

CHILD = r"""
import json, sys, time
overrides, mode = json.loads(sys.argv[1]), sys.argv[2]
import torch
torch.set_num_threads(1)
from harness.config import compose_one
from harness.registry import METHODS, TASKS
from harness.runner import execute

def status(key):  # GB figures of /proc/self/status
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key + ":")) / 2**20

cfg = compose_one(overrides)
METHODS.get(cfg.method.name), TASKS.get(cfg.task.name)  # every module imported before the floor is read
if mode == "warm":
    t = time.perf_counter()
    TASKS.get(cfg.task.name)(cfg.task).load_fold(0)
    print(json.dumps({"seconds": time.perf_counter() - t}))
    raise SystemExit
import datasets, librosa, soundfile, sklearn.model_selection  # noqa: F401  (the loaders import them lazily)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset VmHWM to the current RSS: the peak of the run itself, imports excluded from `grow`
floor = status("VmRSS")
t = time.perf_counter()
if mode == "data":  # the data path alone: load the fold, serve one epoch of training batches and the evaluations
    from harness.training import SplitTensors
    fold = TASKS.get(cfg.task.name)(cfg.task).load_fold(0)
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    for split, shuffle in ((fold.train, True), (fold.val, False), (fold.test, False)):
        data = SplitTensors(split, torch.device("cpu"), False)
        for batch in data.batches(64, shuffle=shuffle, generator=torch.Generator().manual_seed(0)):
            pass
    print(json.dumps({"floor_gb": floor, "peak_gb": status("VmHWM"), "load_s": load_s,
                      "epoch_s": time.perf_counter() - t, "n_train": len(fold.train)}))
    raise SystemExit
rec = execute(cfg, raise_errors=True)
wall = time.perf_counter() - t
epoch = sum(float(log[0]["seconds"]) for log in rec["logs"].values() if isinstance(log, list) and log
            and "seconds" in log[0])
print(json.dumps({"floor_gb": floor, "peak_gb": status("VmHWM"), "load_s": rec["timings"]["load_s"],
                  "epoch_s": epoch, "wall_s": wall, "metrics": rec["metrics"], "logs": sorted(rec["logs"]),
                  "n_train": rec["n_samples"]["train"]}))
"""


def scaled(task: str, scale: float) -> dict:
    f = FULL[task]
    if task == "affwild2":
        videos = max(5, round(f["videos"] * scale))
        n_val = max(1, round(videos * f["val_share"]))
        return {"n_train_videos": videos - n_val, "n_val_videos": n_val,
                "two_person_videos": min(videos, round(f["two_person"] * scale)), "min_frames": f["min_frames"],
                "max_frames": f["max_frames"], "visual_dim": f["visual_dim"], "seed": 0}
    if task == "biovid":
        subjects = max(10, round(f["subjects"] * scale))  # group5 folds and a validation hold-out need subjects
        per_class = max(1, round(f["subjects"] * f["per_class"] * scale / subjects))
        return {"n_subjects": subjects, "samples_per_class": per_class, "visual_dim": f["visual_dim"],
                "n_frames": f["n_frames"], "write_raw": False, "seed": 0}
    return {k: max(16, round(v * scale)) for k, v in f.items()} | {"seed": 0}


def write_tree(task: str, scale: float, out: Path, code: Path) -> None:
    write_mimic_tree(task, scaled(task, scale), out, code)


def write_mimic_tree(task: str, mimic: dict, out: Path, code: Path) -> None:
    """`harness data mimic task=TASK out=OUT task.mimic.<key>=<value>...` (once: a finished tree is kept)."""
    if (out / ".complete").is_file():
        return
    shutil.rmtree(out, ignore_errors=True)
    sets = [f"task.mimic.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in mimic.items()]
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "harness", "data", "mimic", f"task={task}", f"out={out}", *sets],
                   check=True, cwd=code, env=child_env(code), stdout=subprocess.DEVNULL)
    (out / ".complete").write_text(f"{time.perf_counter() - t:.1f} s\n")


def inputs_gb(task: str, tree: Path) -> tuple[float, int]:
    """(float32 GB of the unique input frames a run reads, frames or samples) of a written tree."""
    import numpy as np
    import pandas as pd

    if task == "affwild2":
        files = sorted((tree / "features" / "visual").glob("*.npy"))
        frames = sum(np.load(p, mmap_mode="r").shape[0] for p in files)
        dim = np.load(files[0], mmap_mode="r").shape[1]
        return frames * (dim + 40) * 4 / 2**30, frames
    if task == "biovid":
        df = pd.read_csv(tree / "samples.csv", sep="\t")
        df = df[df.class_id.isin([0, 4])]
        total = 0
        for s, n in zip(df.subject_name, df.sample_name):
            t, d = np.load(tree / "features" / "visual" / s / f"{n}.npy", mmap_mode="r").shape
            total += t * d + PHYSIO_FRAMES * PHYSIO_DIMS_PART_A
        return total * 4 / 2**30, len(df)
    cfg = json.loads((tree / ".sizes.json").read_text())
    n = sum(cfg.values())
    return n * (50 * 768 + 500 * 74 + 500 * 35) * 4 / 2**30, n


def child_env(code: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1"}


def task_overrides(task: str, tree: Path, cache: Path, stride: int | None) -> list[str]:
    if task == "mosei":
        return ["task=mosei", f"task.data_root={tree}", "task.aligned=false", f"task.feature_cache_dir={cache}"]
    out = [f"task={task}", f"task.data_root={tree}", f"task.cache_dir={cache}"]
    return out + ([f"task.train_stride={stride}"] if stride else [])


def run_child(code: Path, overrides: list[str], mode: str, max_rss_gb: float) -> dict:
    """One fresh process; killed (and said so) when its RSS passes max_rss_gb."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(overrides), mode], cwd=code, env=child_env(code),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = None
    while proc.poll() is None:
        try:
            rss = next(int(line.split()[1]) for line in open(f"/proc/{proc.pid}/status")
                       if line.startswith("VmRSS:")) / 2**20
        except (OSError, StopIteration):
            rss = 0.0
        if rss > max_rss_gb:
            proc.kill()
            killed = rss
        time.sleep(0.1)
    out, err = proc.communicate()
    if killed is not None:
        return {"error": f"killed at {killed:.2f} GB RSS (--max-rss-gb {max_rss_gb})"}
    if proc.returncode != 0:
        return {"error": (err.strip().splitlines() or ["?"])[-1][:200]}
    return json.loads(out.strip().splitlines()[-1])


def checkout(rev: str, into: Path) -> Path:
    """REV's tree (git archive), for the side-by-side `vs old` column."""
    if not (into / ".complete").is_file():
        shutil.rmtree(into, ignore_errors=True)
        into.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", rev], cwd=ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
        (into / ".complete").write_text(rev + "\n")
    return into


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=0.02, help="fraction of the real datasets' sizes (1 = full size)")
    ap.add_argument("--tasks", nargs="+", default=list(FULL), choices=list(FULL))
    ap.add_argument("--methods", nargs="+", default=None, help="default: student kd pkdot mtpkdot (and dmd on mosei)")
    ap.add_argument("--stride", nargs="+", type=int, default=[32], help="Aff-Wild2 task.train_stride values")
    ap.add_argument("--compare-to", default=None, metavar="REV", help="also run REV's code, side by side")
    ap.add_argument("--workdir", type=Path, default=None, help="trees, caches and checkouts (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the default temp workdir")
    ap.add_argument("--max-rss-gb", type=float, default=4.0)
    ap.add_argument("--repeats", type=int, default=1, help="runs per code and row, in turn; medians of the times")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args()
    from tabulate import tabulate

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    codes = {"new": ROOT}
    if args.compare_to:
        codes = {"old": checkout(args.compare_to, work / f"code-{args.compare_to.replace('/', '_')}"), "new": ROOT}
    rows = []
    try:
        for task in args.tasks:
            tree = work / f"{task}-{args.scale:g}"
            write_tree(task, args.scale, tree, ROOT)
            if task == "mosei":
                (tree / ".sizes.json").write_text(json.dumps({k: v for k, v in scaled(task, args.scale).items()
                                                              if k != "seed"}))
            gb, units = inputs_gb(task, tree)
            cache = work / "cache"
            strides = args.stride if task == "affwild2" else [None]
            for code_name, code in codes.items():  # fill the feature caches once per code (not measured)
                warm = run_child(code, task_overrides(task, tree, cache, strides[0]) + ["method=student"], "warm",
                                 args.max_rss_gb)
                if "error" in warm:
                    print(f"warm-up of {task} ({code_name}) failed: {warm['error']}", file=sys.stderr)
            for stride in strides:
                for method in args.methods or METHODS[task]:
                    if method not in METHODS[task]:
                        continue
                    row = {"task": task, "units": units, "stride": stride or "", "method": method,
                           "inputs GB": round(gb, 3)}
                    results: dict[str, list[dict]] = {name: [] for name in codes}
                    for _ in range(args.repeats):  # old and new in turn: background load hits both alike
                        for code_name, code in codes.items():
                            run_dir = Path(tempfile.mkdtemp(dir=work, prefix="run_"))
                            over = task_overrides(task, tree, cache, stride) + [
                                f"method={method}", "train.max_epochs=1", *ONE_EPOCH[method],
                                f"results_dir={run_dir}/results", f"cache_dir={run_dir}/cache", "progress=false",
                                "stats.bootstrap_resamples=0", "save_predictions=false"]
                            results[code_name].append(run_child(code, over, "run", args.max_rss_gb))
                            shutil.rmtree(run_dir, ignore_errors=True)
                    for code_name, runs in results.items():
                        tag = "" if len(codes) == 1 else f" {code_name}"
                        failed = [r for r in runs if "error" in r]
                        if failed:
                            row[f"error{tag}"] = failed[0]["error"]
                            continue
                        peak = max(r["peak_gb"] for r in runs)
                        grow = max(r["peak_gb"] - r["floor_gb"] for r in runs)
                        row |= {f"load s{tag}": round(median(r["load_s"] for r in runs), 2),
                                f"peak GB{tag}": round(peak, 3), f"peak/in{tag}": round(peak / gb, 2),
                                f"grow/in{tag}": round(grow / gb, 2),
                                f"epoch s{tag}": round(median(r["epoch_s"] for r in runs), 2)}
                        row[f"_metrics{tag}"] = [r["metrics"] for r in runs]
                    if "epoch s old" in row and "epoch s new" in row:
                        row["vs old"] = round(row["epoch s new"] / row["epoch s old"], 2)
                    rows.append(row)
                    print(tabulate([{k: v for k, v in row.items() if not k.startswith("_")}], headers="keys"),
                          file=sys.stderr, flush=True)
    finally:
        if args.workdir is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nbench_scale --scale {args.scale:g} (MIMIC trees, not real data; {os.cpu_count()} CPUs, 1 thread)")
    print(tabulate([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows], headers="keys"))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
