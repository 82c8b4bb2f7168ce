"""SLURM sweep overheads on the local single-node cluster (scripts/slurm_up.sh; 2 CPUs = 2 runs at a time).

1. Scheduling overhead: wall time of a 12-run sweep (command to last record) against the runs' own
   times from their records (what the runner measured: load + train + predict + score + write).
   Ratios: wall / (sum of own times / slots) with slots = CPUs of the partition (1.0 = perfect packing),
   and the per-job cost outside the run (sacct Elapsed - own time: Python start-up, imports, unpickling).
2. Submission: time from command to prompt for a 200-run array against a 1-run sweep (same command),
   and against 200 x the Python start-up of one job (what submission would cost if it started a Python
   process per run). The array is cancelled right after submission.

    python benchmarks/bench_slurm_sweep.py [--runs 12] [--array 200] [--epochs 15] [--partition debug]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from tabulate import tabulate

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from harness.records import read_record  # noqa: E402
from harness.sweeps import read_manifests  # noqa: E402


def harness(*args: str) -> tuple[float, str]:
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "harness", *args], cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if res.returncode != 0:
        raise SystemExit(f"harness {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}")
    return seconds, res.stdout


def sacct_elapsed(job_ids: list[str]) -> dict[str, float]:
    array = job_ids[0].split("_")[0]
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,Start,End", "-j", array], capture_output=True,
                         text=True, check=True).stdout
    elapsed = {}
    for line in out.split():
        job, start, end = line.split("|")
        if "T" in start and "T" in end:
            elapsed[job] = (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    return elapsed


def slots(partition: str) -> int:
    out = subprocess.run(["sinfo", "-h", "-p", partition, "-o", "%C"], capture_output=True, text=True,
                         check=True).stdout.split()[0]
    return int(out.split("/")[-1])  # A/I/O/T: total CPUs


def sweep_overhead(tmp: Path, n: int, epochs: int, partition: str) -> None:
    results = tmp / "sweep"
    t0 = time.perf_counter()
    prompt_s, _ = harness("run", "-m", "method=student", f"seed=range(0,{n})", f"train.max_epochs={epochs}",
                          f"train.patience={epochs}", "hydra/launcher=slurm_cpu", f"launcher.partition={partition}",
                          f"results_dir={results}", f"cache_dir={tmp / 'cache'}")
    (manifest,) = read_manifests(results)
    folders = [Path(r["run_dir"]) for r in manifest["runs"]]
    while not all((f / "record.json").exists() for f in folders):
        time.sleep(0.5)
    wall = time.perf_counter() - t0
    recs = [read_record(f) for f in folders]
    bad = [r["error"] for r in recs if r["status"] != "ok"]
    if bad:
        raise SystemExit(f"{len(bad)} runs failed: {bad[:3]}")
    own = sum(r["timings"]["total_s"] for r in recs)
    fit = sum(r["timings"]["fit_s"] for r in recs)
    time.sleep(3)  # let the last job end in sacct
    elapsed = sacct_elapsed([r["job_id"] for r in manifest["runs"]])
    per_job = [elapsed[r["job_id"]] - rec["timings"]["total_s"] for r, rec in zip(manifest["runs"], recs)
               if r["job_id"] in elapsed]
    k = slots(partition)
    rows = [("runs", n), ("slots (CPUs of the partition)", k), ("command to prompt, s", prompt_s),
            ("sweep wall time (command to last record), s", wall),
            ("sum of the runs' own times (records' total_s), s", own), ("  of which training (fit_s), s", fit),
            ("ideal wall = own / slots, s", own / k),
            ("mean job time outside its run (sacct Elapsed - total_s), s", sum(per_job) / max(len(per_job), 1))]
    print(f"\n## {n}-run sweep on the local cluster (student, synthetic, {epochs} epochs)\n")
    print(tabulate(rows, headers=["", "value"], floatfmt=".2f", tablefmt="github"))
    print(f"\nscheduling overhead ratio: wall / (own / slots) = {wall / (own / k):.2f}   "
          f"(wall / own = {wall / own:.2f}; 1.0 = the runs packed perfectly on {k} slots)")


def submission(tmp: Path, n: int, partition: str) -> None:
    def submit(count: int, name: str) -> float:
        results = tmp / name
        seconds, _ = harness("run", "-m", "method=student", f"seed=range(0,{count})", "hydra/launcher=slurm_cpu",
                             f"launcher.partition={partition}", f"results_dir={results}", f"cache_dir={tmp / 'cache'}")
        (manifest,) = read_manifests(results)
        subprocess.run(["scancel", manifest["runs"][0]["job_id"].split("_")[0]], check=True)
        assert manifest["n_submitted"] == count and len({r["job_id"].split("_")[0] for r in manifest["runs"]}) == 1
        return seconds

    one = submit(1, "one")
    many = submit(n, "many")
    t = time.perf_counter()  # what each job pays before running: a Python with the harness imported
    subprocess.run([sys.executable, "-c", "import harness.launch, harness.runner, methods, tasks"], cwd=ROOT,
                   check=True)
    startup = time.perf_counter() - t
    rows = [("command to prompt, 1-run sweep, s", one), (f"command to prompt, {n}-run array, s", many),
            ("marginal cost per extra run, ms", 1000 * (many - one) / (n - 1)),
            ("Python start-up of one job (imports), s", startup),
            (f"{n} x start-up (one Python per run), s", n * startup)]
    print(f"\n## Submitting a {n}-run array (cancelled right after)\n")
    print(tabulate(rows, headers=["", "value"], floatfmt=".3f", tablefmt="github"))
    print(f"\nsubmission ratios: {n}-run / 1-run = {many / one:.2f};  {n}-run / ({n} x start-up) = "
          f"{many / (n * startup):.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=12)
    ap.add_argument("--array", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--partition", default="debug")
    ap.add_argument("--skip-sweep", action="store_true", help="only the submission measurement")
    args = ap.parse_args()
    from slurm_env import ensure_cluster

    ensure_cluster()
    with tempfile.TemporaryDirectory(prefix="bench_slurm_") as d:
        tmp = Path(d)
        if not args.skip_sweep:
            sweep_overhead(tmp, args.runs, args.epochs, args.partition)
        submission(tmp, args.array, args.partition)
    print(json.dumps({"load": open("/proc/loadavg").read().split()[:3]}))


if __name__ == "__main__":
    main()
