"""Start-up time of the CLI: `harness --help`, `harness list`, `harness status` and a run's first training step.

Each command runs in a fresh `python -m harness` process, --repeats times (median, min, and the median CPU time
user+sys of the process, steadier than wall time on a shared machine). "first step" is a tiny synthetic student
run (`harness run method=student task=synthetic ...`, 10 subjects x 10 samples) whose process ends at its first
optimizer step: the child wraps harness.training.make_optimizer through an import hook (nothing in the harness
knows about it) and exits when the optimizer first steps. `status` reads an empty results folder.
Then the 15 largest `-X importtime` entries (cumulative) of `--help` and `list`.

The harness imported is the one on PYTHONPATH, so the same script measures another checkout:

    PYTHONPATH=. python benchmarks/bench_startup.py [--repeats 5] [--json after.json] [--baseline before.json]
    PYTHONPATH=/path/to/other/checkout python benchmarks/bench_startup.py --json before.json

--baseline adds each command's ratio to a saved --json result (baseline median / this median).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

FIRST_STEP_MARKER = "BENCH_FIRST_OPTIMIZER_STEP"

# Runs `python -m harness` with an import hook that makes the first optimizer step end the process.
FIRST_STEP_CHILD = f"""
import importlib.abc, importlib.util, os, runpy, sys

class ExitAtFirstStep(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "harness.training":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            make_optimizer = module.make_optimizer

            def wrapped(*args, **kwargs):
                opt = make_optimizer(*args, **kwargs)
                step = opt.step

                def first_step(*a, **k):
                    step(*a, **k)
                    print("{FIRST_STEP_MARKER}", flush=True)
                    os._exit(0)
                opt.step = first_step
                return opt
            module.make_optimizer = wrapped
        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, ExitAtFirstStep())
sys.argv = ["harness"] + sys.argv[1:]
runpy.run_module("harness", run_name="__main__", alter_sys=True)
"""


def timed_process(argv: list[str], cwd: str, must_print: str | None = None) -> float:
    """Wall seconds of one child process, from spawn to exit (its CPU time goes to RUSAGE_CHILDREN)."""
    t = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t
    if proc.returncode != 0 or (must_print and must_print not in proc.stdout):
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return wall


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def measure(argv: list[str], cwd: str, repeats: int, must_print: str | None = None) -> dict:
    walls, cpus = [], []
    for _ in range(repeats):
        c = children_cpu()
        walls.append(timed_process(argv, cwd, must_print))
        cpus.append(children_cpu() - c)
    return {"median_s": statistics.median(walls), "min_s": min(walls), "cpu_s": statistics.median(cpus)}


def importtime_offenders(args: list[str], cwd: str, top: int = 15) -> list[tuple[str, int, int]]:
    """The `top` largest (module, self µs, cumulative µs) of `python -X importtime -m harness ARGS`."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "harness", *args], cwd=cwd, capture_output=True,
                          text=True, check=False)
    rows = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cumulative_us, name = line.removeprefix("import time:").split("|")
        rows.append((name.rstrip(), int(self_us), int(cumulative_us)))
    return sorted(rows, key=lambda r: r[2], reverse=True)[:top]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path, help="save the medians here")
    ap.add_argument("--baseline", type=Path, help="a saved --json result to compare against (ratio column)")
    args = ap.parse_args()

    harness = [sys.executable, "-m", "harness"]
    if os.environ.get("PYTHONPATH"):  # absolute: the children run elsewhere
        os.environ["PYTHONPATH"] = os.pathsep.join(str(Path(p).resolve()) for p in
                                                   os.environ["PYTHONPATH"].split(os.pathsep) if p)
    # The children run in an empty folder: `python -m` puts the working directory first on sys.path, and a
    # checkout there would be imported instead of the one on PYTHONPATH.
    with tempfile.TemporaryDirectory() as tmp:
        imported_from = subprocess.run([sys.executable, "-c", "import harness; print(harness.__file__)"], cwd=tmp,
                                       capture_output=True, text=True, check=True).stdout.strip()
        empty_results = Path(tmp) / "results"
        empty_results.mkdir()
        run = [f"results_dir={tmp}/run", f"cache_dir={tmp}/cache", "progress=false", "overwrite=true",
               "task.n_subjects=10", "task.samples_per_subject=10"]
        commands = {
            "harness --help": (harness + ["--help"], None),
            "harness list": (harness + ["list"], None),
            "harness status (empty results)": (harness + ["status", "--results", str(empty_results)], None),
            "harness run: first training step": ([sys.executable, "-c", FIRST_STEP_CHILD, "run", "method=student",
                                                  "task=synthetic", *run], FIRST_STEP_MARKER),
        }
        results = {name: measure(argv, tmp, args.repeats, marker) for name, (argv, marker) in commands.items()}
        offenders = {" ".join(a): importtime_offenders(a, tmp) for a in (["--help"], ["list"])}

    baseline = json.loads(args.baseline.read_text()) if args.baseline else {}
    headers = ["command", f"median s ({args.repeats} runs)", "min s", "CPU s (median)"]
    if baseline:
        headers.append("baseline median / this")
    rows = []
    for name, r in results.items():
        row = [name, f"{r['median_s']:.3f}", f"{r['min_s']:.3f}", f"{r['cpu_s']:.3f}"]
        if baseline:
            b = baseline.get("results", {}).get(name)
            row.append(f"{b['median_s'] / r['median_s']:.2g}x" if b else "")
        rows.append(row)
    print(f"harness from {Path(imported_from).parent}; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(tabulate(rows, headers=headers, tablefmt="simple"))
    for command, rows_ in offenders.items():
        print(f"\nlargest imports of `harness {command}` (-X importtime, cumulative):")
        print(tabulate([(n, f"{s / 1000:.1f}", f"{c / 1000:.1f}") for n, s, c in rows_],
                       headers=["module", "self ms", "cumulative ms"], tablefmt="simple"))
    if args.json:
        args.json.write_text(json.dumps({"harness": imported_from, "repeats": args.repeats,
                                         "results": results}, indent=1))


if __name__ == "__main__":
    main()
