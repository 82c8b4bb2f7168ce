"""Time to check every value of a 500-run sweep, against the time to compose it (target: validation < 1 s).

The sweep is `seed=0..99` x 5 methods (student, teacher, kd, pkdot, mtpkdot) on synthetic: what `harness run -m`
composes (harness/config.py: Composer.compose_many) and then validates before the first run starts or the
first job is submitted (harness/validate.py: check_runs). Both are timed separately, median of --repeats
runs (wall and CPU time), in one process (Hydra initialised once, as in the CLI). A second sweep, the same
with one bad value in its last run, shows the time of a failing check, whose message is printed.

    python benchmarks/bench_validation.py [--repeats 5] [--seeds 100]
"""

from __future__ import annotations

import argparse
import statistics
import time

from tabulate import tabulate

from harness.config import Composer, expand
from harness.schema import ConfigError
from harness.validate import check_runs

METHODS = "student,teacher,kd,pkdot,mtpkdot"


def timed(fn):
    """(wall seconds, CPU seconds of this process, result): on a shared machine the CPU time is the steadier one."""
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t, time.process_time() - c, out


def check(runs) -> str:
    try:
        check_runs(runs)
    except ConfigError as e:
        return " | ".join(e.lines)
    return ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=100)
    args = ap.parse_args()
    combos = expand([f"method={METHODS}", f"seed=range(0,{args.seeds})", "task=synthetic"], multirun=True)
    one_bad = [*combos[:-1], combos[-1] + ["train.lr=abc"]]  # the same runs, the last one with a typo
    rows = []
    with Composer() as composer:
        for name, sweep in (("valid", combos), ("one bad run", one_bad)):
            times: dict[str, list[float]] = {k: [] for k in ("compose", "compose cpu", "validate", "validate cpu")}
            for _ in range(args.repeats):
                wall, cpu, cfgs = timed(lambda: composer.compose_many(sweep))
                times["compose"].append(wall)
                times["compose cpu"].append(cpu)
                wall, cpu, message = timed(lambda: check(list(zip(sweep, cfgs))))
                times["validate"].append(wall)
                times["validate cpu"].append(cpu)
            med = {k: statistics.median(v) for k, v in times.items()}
            rows.append({"sweep": name, "runs": len(sweep), **{f"{k} s": v for k, v in med.items()},
                         "validate ms/run": 1000 * med["validate"] / len(sweep)})
            if message:
                print(f"{name}: {message}")
    print(tabulate(rows, headers="keys", floatfmt=".3f", tablefmt="github"))
    worst = max(r["validate s"] for r in rows)
    print(f"\nvalidation of a {rows[0]['runs']}-run sweep: {worst:.3f} s beyond composition (target < 1 s): "
          f"{'OK' if worst < 1 else 'MISSED'}")


if __name__ == "__main__":
    main()
