"""SLURM sweep overheads on the local single-node cluster (scripts/slurm_up.sh; 2 CPUs = 2 runs at a time).

1. Scheduling overhead, for each `--sweep N:K` (N runs, launcher.runs_per_task=K, K an integer or auto): wall time
   of the sweep (command to last record) against the runs' own times from their records (what the runner
   measured: load + train + predict + score + write). Ratio: wall / (sum of own times / slots) with slots = CPUs
   of the partition (1.0 = perfect packing), and the per-task cost outside its runs (sacct Elapsed - the own
   times of its runs: Python start-up, imports, unpickling, the first optimizer build). auto packs with
   array_parallelism = slots. The sweeps run one after the other in one invocation (same machine load).
2. Submission: time from command to prompt for a `--array`-run sweep packed `--array-runs-per-task` to a task
   (the `harness run` command, interpreter start-up included) against a 1-run sweep and against the start-up
   alone (`import harness.cli, harness.launch, harness.jobs`); the arrays are cancelled right after.

    python benchmarks/bench_slurm_sweep.py [--sweep 12:1 --sweep 100:auto] [--epochs 15] [--array 5000]
                                           [--array-runs-per-task 50] [--partition debug]
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


def sacct_elapsed(arrays: list[str]) -> dict[str, float]:
    """Elapsed seconds of every task of these job arrays (sacct Start to End)."""
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,Start,End", "-j", ",".join(arrays)],
                         capture_output=True, text=True, check=True).stdout
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


def sweep_overhead(tmp: Path, n: int, per_task: str, epochs: int, partition: str) -> float:
    results = tmp / f"sweep_{n}_{per_task}"
    k = slots(partition)
    packing = [f"launcher.runs_per_task={per_task}"]
    if per_task == "auto":  # spread over the partition's slots; the run time only matters against the target
        packing += [f"launcher.array_parallelism={k}", "launcher.run_minutes=0.5"]
    t0 = time.perf_counter()
    prompt_s, _ = harness("run", "-m", "method=student", f"seed=range(0,{n})", f"train.max_epochs={epochs}",
                          f"train.patience={epochs}", "hydra/launcher=slurm_cpu", f"launcher.partition={partition}",
                          *packing, f"results_dir={results}", f"cache_dir={tmp / 'cache'}")
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
    time.sleep(3)  # let the last task end in sacct
    elapsed = sacct_elapsed(manifest["arrays"])
    own_by_task: dict[str, float] = {}
    for r, rec in zip(manifest["runs"], recs):
        own_by_task[r["job_id"]] = own_by_task.get(r["job_id"], 0.0) + rec["timings"]["total_s"]
    outside = [elapsed[job] - seconds for job, seconds in own_by_task.items() if job in elapsed]
    ratio = wall / (own / k)
    rows = [("runs", n), ("array tasks (runs_per_task)", f"{manifest['n_tasks']} ({per_task})"),
            ("slots (CPUs of the partition)", k), ("command to prompt, s", prompt_s),
            ("sweep wall time (command to last record), s", wall),
            ("sum of the runs' own times (records' total_s), s", own), ("  of which training (fit_s), s", fit),
            ("ideal wall = own / slots, s", own / k),
            ("mean task time outside its runs (sacct Elapsed - own), s", sum(outside) / max(len(outside), 1))]
    print(f"\n## {n}-run sweep, runs_per_task={per_task}, on the local cluster (student, synthetic, {epochs} epochs)\n")
    print(tabulate(rows, headers=["", "value"], floatfmt=".2f", tablefmt="github"))
    print(f"\nscheduling overhead ratio: wall / (own / slots) = {ratio:.2f}   "
          f"(wall / own = {wall / own:.2f}; 1.0 = the runs packed perfectly on {k} slots)")
    return ratio


def submission(tmp: Path, n: int, per_task: int, partition: str) -> None:
    def submit(count: int, name: str) -> tuple[float, dict]:
        results = tmp / name
        seconds, _ = harness("run", "-m", "method=student", f"seed=range(0,{count})", "hydra/launcher=slurm_cpu",
                             f"launcher.partition={partition}", f"launcher.runs_per_task={per_task}",
                             f"results_dir={results}", f"cache_dir={tmp / 'cache'}")
        (manifest,) = read_manifests(results)
        subprocess.run(["scancel", *manifest["arrays"]], check=True)
        assert manifest["n_submitted"] == count
        return seconds, manifest

    one, _ = submit(1, "one")
    many, manifest = submit(n, "many")
    t = time.perf_counter()  # the constant part: an interpreter with the submission side imported
    subprocess.run([sys.executable, "-c", "import harness.cli, harness.launch, harness.jobs"], cwd=ROOT, check=True)
    startup = time.perf_counter() - t
    rows = [("command to prompt, 1-run sweep, s", one),
            (f"command to prompt, {n}-run sweep ({manifest['n_tasks']} tasks in {len(manifest['arrays'])} array(s)), s",
             many),
            ("  of which start-up (interpreter + imports), s", startup),
            ("  of which planning, checks, packing, submission, s", many - startup),
            ("marginal cost per extra run, ms", 1000 * (many - one) / (n - 1))]
    print(f"\n## Submitting a {n}-run sweep, runs_per_task={per_task} (cancelled right after)\n")
    print(tabulate(rows, headers=["", "value"], floatfmt=".3f", tablefmt="github"))
    print(f"\nsubmission: {n}-run / 1-run = {many / one:.2f}; {n}-run command to prompt = {many:.1f} s "
          f"({many - startup:.1f} s beyond start-up)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweep", action="append", help="N:K, N runs at launcher.runs_per_task=K (repeatable; "
                    "default 12:1 and 100:auto)")
    ap.add_argument("--array", type=int, default=5000)
    ap.add_argument("--array-runs-per-task", type=int, default=50)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--partition", default="debug")
    ap.add_argument("--skip-sweep", action="store_true", help="only the submission measurement")
    args = ap.parse_args()
    from slurm_env import ensure_cluster

    ensure_cluster()
    with tempfile.TemporaryDirectory(prefix="bench_slurm_") as d:
        tmp = Path(d)
        if not args.skip_sweep:
            ratios = {}
            for spec in args.sweep or ["12:1", "100:auto"]:
                n, _, per_task = spec.partition(":")
                ratios[spec] = sweep_overhead(tmp, int(n), per_task or "1", args.epochs, args.partition)
            print("\nwall / ideal: " + ", ".join(f"{k} runs:runs_per_task -> {v:.2f}" for k, v in ratios.items()))
        submission(tmp, args.array, args.array_runs_per_task, args.partition)
    print(json.dumps({"load": open("/proc/loadavg").read().split()[:3]}))


if __name__ == "__main__":
    main()
