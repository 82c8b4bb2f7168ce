"""The harness's own overhead as a fraction of one `kd` run on `synthetic` (target: under 5 %).

Overhead = composing the config (Hydra) + scoring + the test-set bootstrap CI (`metrics_ci`, 1000
resamples by default) + writing the record and predictions + the rest of
the runner's bookkeeping (environment facts, fingerprint), i.e. everything that is not loading the
data, training or predicting. Measured in the same process as the run it is compared with.

    python benchmarks/bench_overhead.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time

from tabulate import tabulate

from harness.config import Composer
from harness.runner import execute


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench_overhead_")
    rows = []
    for i in range(args.repeats):
        t0 = time.perf_counter()
        with Composer() as c:
            cfg = c.compose(["method=kd", "task=synthetic", f"results_dir={tmp}/results", f"cache_dir={tmp}/cache",
                             "progress=false", "overwrite=true", f"seed={i}"])
        compose_s = time.perf_counter() - t0
        rec = execute(cfg)
        t = rec["timings"]
        total = compose_s + t["total_s"]
        work = t["load_s"] + t["fit_s"] + t["predict_s"]
        overhead = total - work
        rows.append({"run": f"kd seed {i}", "total s": total, "fit s": t["fit_s"], "compose s": compose_s,
                     "score s": t["score_s"], "bootstrap s": t.get("bootstrap_s", 0.0), "write s": t["write_s"],
                     "overhead s": overhead,
                     "overhead %": 100 * overhead / total})
    print(tabulate(rows, headers="keys", floatfmt=".3f", tablefmt="github"))
    worst = max(r["overhead %"] for r in rows)
    print(f"\nharness overhead: at most {worst:.2f} % of a kd run on synthetic (target < 5 %): "
          f"{'OK' if worst < 5 else 'MISSED'}")


if __name__ == "__main__":
    main()
