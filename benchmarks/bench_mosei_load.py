"""Load time and peak memory of a MOSEI-sized MMSA pickle: loader and feature cache, first run and cached.

    python benchmarks/bench_mosei_load.py --scale 0.1        # 10 % of MOSEI's 16326 / 1871 / 4659 samples

Writes a mimic `MOSEI/Processed/unaligned_50.pkl` (the real layout: text [N, 50, 768] float32, audio
[N, 500, 74] float64 with lengths, vision [N, 500, 35]) scaled by --scale, then measures each phase in a
fresh process: its time and its peak RSS (Linux VmHWM, reset after the imports):

  imports       the modules only (the floor: nothing is loaded)
  pickle.load   plain unrestricted pickle.load of the file: the REFERENCE the ratios are taken against
  restricted    tasks._mmsa.load_pickle (the allow-listed unpickler) alone
  loader        the mosei task's load_fold(0) with task.feature_cache=false (unpickle, cast, clean, audit)
  cache, first  load_fold(0) with task.feature_cache=true and an empty cache (loader + writing the Arrow cache)
  cache, hit    the same again: the cleaned arrays read back from the cache

Ratios: seconds / pickle.load seconds; memory = (peak RSS - RSS before the phase) / float32 size of the inputs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MOSEI_SIZES = {"n_train": 16326, "n_valid": 1871, "n_test": 4659}

PHASE = r"""
import json, sys, time
sys.path.insert(0, {root!r})
phase, data_root, cache = sys.argv[1], sys.argv[2], sys.argv[3]
from harness.config import compose_one
from harness.registry import TASKS
import datasets  # noqa: F401  (imported in every phase so the floor is the same)
cfg = compose_one(["task=mosei", f"task.data_root={{data_root}}", "task.aligned=false",
                   f"task.feature_cache={{phase.startswith('cache')}}", f"task.feature_cache_dir={{cache}}"])
task = TASKS.get("mosei")(cfg.task)
path = f"{{data_root}}/MOSEI/Processed/unaligned_50.pkl"

def status(key):  # kB figures of /proc/self/status
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key + ":")) / 2**20

with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak RSS (VmHWM) to the current RSS: the phase's own peak, imports excluded
start = status("VmRSS")
t = time.perf_counter()
if phase == "pickle.load":
    import pickle
    with open(path, "rb") as f:
        pickle.load(f, encoding="latin1")
elif phase == "restricted":
    from tasks._mmsa import load_pickle
    load_pickle(path)
elif phase != "imports":
    fold = task.load_fold(0)
    assert fold.info["mimic_marker"] and len(fold.train) == {n_train}
seconds = time.perf_counter() - t
print(json.dumps({{"seconds": seconds, "start_gb": start, "peak_gb": status("VmHWM")}}))
"""


def run_phase(phase: str, data_root: Path, cache: Path, n_train: int) -> dict:
    code = PHASE.format(root=str(ROOT), n_train=n_train)
    out = subprocess.run([sys.executable, "-c", code, phase, str(data_root), str(cache)], capture_output=True,
                         text=True, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"phase {phase} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=0.1, help="fraction of MOSEI's split sizes (1.0 = full size)")
    ap.add_argument("--workdir", type=Path, default=None, help="where the mimic and the cache go (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the workdir")
    args = ap.parse_args()

    sys.path.insert(0, str(ROOT))
    from omegaconf import OmegaConf

    from harness.registry import TASKS

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_mosei_"))
    data_root, cache = work / "data", work / "cache"
    sizes = {k: max(10, round(v * args.scale)) for k, v in MOSEI_SIZES.items()}
    shutil.rmtree(data_root, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    t = time.perf_counter()
    TASKS.get("mosei").write_mimic(data_root, OmegaConf.create({"mimic": {**sizes, "seed": 0}}))
    write_s = time.perf_counter() - t
    pkl = data_root / "MOSEI/Processed/unaligned_50.pkl"
    n = sum(sizes.values())
    input_gb = n * (50 * 768 + 500 * 74 + 500 * 35) * 4 / 2**30
    print(f"MOSEI-sized mimic, --scale {args.scale}: train/valid/test = {sizes['n_train']}/{sizes['n_valid']}/"
          f"{sizes['n_test']}, unaligned (text 50x768, audio 500x74 float64, vision 500x35, lengths)")
    print(f"file {pkl.stat().st_size / 2**30:.2f} GiB (written in {write_s:.1f} s, aligned_50.pkl beside it); "
          f"inputs as float32: {input_gb:.2f} GiB")

    rows = []
    for phase in ("imports", "pickle.load", "restricted", "loader", "cache, first", "cache, hit"):
        rows.append((phase, run_phase(phase.replace(", ", "-"), data_root, cache, sizes["n_train"])))
    ref = rows[1][1]["seconds"]
    print(f"\n{'phase':<14}{'seconds':>9}{'x pickle':>10}{'RSS before':>12}{'peak RSS':>10}"
          f"{'(peak - before) / inputs':>26}")
    for phase, r in rows:
        print(f"{phase:<14}{r['seconds']:>9.2f}{r['seconds'] / ref:>10.2f}{r['start_gb']:>12.2f}{r['peak_gb']:>10.2f}"
              f"{(r['peak_gb'] - r['start_gb']) / input_gb:>26.2f}")
    print("(GiB; seconds and ratios of one process per phase; the imports row is the floor)")
    cache_gb = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) / 2**30
    print(f"\nfeature cache on disk: {cache_gb:.2f} GiB in {cache}")
    if not args.keep and args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
