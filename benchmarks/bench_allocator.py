"""Training-step time with the harness's malloc settings (harness/allocator.py) against glibc's defaults.

    python benchmarks/bench_allocator.py [--steps dmd pkdot] [--rounds 3] [--reps 15] [--threads 1]

malloc settings are per process, so each measurement is a fresh process (this script with --worker) that
builds the step, applies what harness.runner.execute applies (tune_allocator, under PKD_HARNESS_MALLOC=tuned
or =default), warms up 3 steps and times --reps more. The two settings alternate process by process for
--rounds rounds, so background load hits both alike; reported per step: the median over rounds of each
process's median step time, minor page faults and system time per step, and the paired ratio tuned / default
(median over rounds: the figure that does not depend on the load).
- `dmd`: DMD's training step at MOSI aligned sizes, batch 16 (benchmarks/bench_dmd_step.py make_step);
- `pkdot`: PKDOT's training step at our default size, batch 128, teacher outputs cached
  (benchmarks/bench_pkdot_step.py).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_step(name: str):
    import torch
    from omegaconf import OmegaConf

    sys.path.insert(0, str(ROOT / "benchmarks"))
    if name == "dmd":
        import bench_dmd_step as b
        task, dims, lens = b.SHAPES["mosi"]
        return b.make_step(task, dims, lens, True)[0]
    if name == "pkdot":
        import bench_pkdot_step as b
        torch.manual_seed(0)
        teacher, _, pk = b.build(512, 2)
        x = {"visual": torch.randn(128, 1, 512), "physio": torch.randn(128, 1, 512)}
        y = torch.randint(0, 2, (128, 1))
        cfg = OmegaConf.load(b.CONF / "method" / "pkdot.yaml")
        table = b.frozen_part((x, y), teacher, pk)
        return lambda: b.pkdot_step((x, y), teacher, pk, cfg, table)
    raise SystemExit(f"unknown step {name!r}: choose dmd or pkdot")


def worker(name: str, reps: int, threads: int) -> None:
    import torch

    from harness.allocator import tune_allocator

    torch.set_num_threads(threads)
    state = tune_allocator()
    step = build_step(name)
    for _ in range(3):
        step()
    before, times = resource.getrusage(resource.RUSAGE_SELF), []
    for _ in range(reps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"malloc": state, "ms": statistics.median(times) * 1e3,
                      "faults": (after.ru_minflt - before.ru_minflt) / reps,
                      "sys_ms": (after.ru_stime - before.ru_stime) / reps * 1e3}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", nargs="+", default=["dmd", "pkdot"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.reps, args.threads)
        return
    from tabulate import tabulate

    load_before = os.getloadavg()[0]
    rows = []
    for name in args.steps:
        runs: dict[str, list[dict]] = {"default": [], "tuned": []}
        for _ in range(args.rounds):
            for setting in runs:
                env = {**os.environ, "PKD_HARNESS_MALLOC": setting, "OMP_NUM_THREADS": str(args.threads)}
                out = subprocess.run([sys.executable, __file__, "--worker", name, "--reps", str(args.reps),
                                      "--threads", str(args.threads)], env=env, check=True, capture_output=True,
                                     text=True).stdout
                runs[setting].append(json.loads(out.strip().splitlines()[-1]))
            print(f"{name}: round {len(runs['tuned'])} of {args.rounds}", file=sys.stderr, flush=True)
        med = {s: {k: statistics.median(r[k] for r in rs) for k in ("ms", "faults", "sys_ms")} for s, rs in runs.items()}
        ratio = statistics.median(t["ms"] / d["ms"] for t, d in zip(runs["tuned"], runs["default"]))
        rows.append([name, f"{med['default']['ms']:.1f}", f"{med['default']['faults']:.0f}",
                     f"{med['default']['sys_ms']:.1f}", f"{med['tuned']['ms']:.1f}", f"{med['tuned']['faults']:.0f}",
                     f"{med['tuned']['sys_ms']:.1f}", f"{ratio:.2f}", runs["tuned"][0]["malloc"]])
    print(f"\nTraining step with glibc's malloc defaults and with harness/allocator.py's settings, {args.threads} "
          f"thread(s), {args.rounds} alternating rounds of one process each, {args.reps} timed steps per process; "
          f"load average before {load_before:.1f}, now {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(tabulate(rows, headers=["step", "default ms", "default faults/step", "default sys ms/step", "tuned ms",
                                  "tuned faults/step", "tuned sys ms/step", "tuned/default", "tuned process says"],
                   tablefmt="github", disable_numparse=True))


if __name__ == "__main__":
    main()
