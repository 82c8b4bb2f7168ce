"""Seconds per training epoch of kd and dmd through the training loop, this tree against another checkout.

    python benchmarks/bench_training_loop.py --baseline DIR [--repeats 3] [--epochs 4] [--threads 1]

DIR is a checkout of another commit (e.g. `git worktree add /tmp/before fe298c8`, the last commit with DMD's
own loop). Each measurement is one fresh `harness run` in its own interpreter (PYTHONPATH = the tree), with
a fixed number of epochs (patience 1000 and no min_lr stop, so nothing stops early), a fresh teacher store
(kd trains its teacher and its student) and `--threads` intra-op threads. The two trees alternate run by
run, so both see the same machine load; the ratio this/baseline is the figure that does not depend on the
load. A tree that does not know an override's name is given its older name (OLD_NAMES: DMD's keys before
the loops were merged).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from tabulate import tabulate

HERE = Path(__file__).resolve().parent.parent
CASES = {
    "kd (teacher + student)": ["method=kd", "task=synthetic", "task.target=classes", "train.patience=1000"],
    "dmd": ["method=dmd", "task=synthetic", "task.target=classes", "method.training.patience=1000",
            "method.training.min_lr=0"],
}
OLD_NAMES = {"method.training.patience": "method.training.early_stop"}
CHILD = """
import json, sys, torch
torch.set_num_threads(int(sys.argv[1]))
from harness.config import ConfigError, compose_one
from harness.runner import execute
old = json.loads(sys.argv[2])
try:
    cfg = compose_one(sys.argv[3:])
except ConfigError:  # an older tree: the keys' older names
    cfg = compose_one([old.get(o.split("=")[0], o.split("=")[0]) + "=" + o.split("=", 1)[1] for o in sys.argv[3:]])
rec = execute(cfg, raise_errors=True)
print(json.dumps({"fit_s": rec["timings"]["fit_s"], "epochs": sum(len(v) for v in rec["logs"].values())}))
"""


def one_run(tree: Path, case: list[str], epochs: int, threads: int, tmp: str) -> float:
    out = tempfile.mkdtemp(dir=tmp)
    ov = [*case, f"train.max_epochs={epochs}", f"results_dir={out}/r", f"cache_dir={out}/c", "progress=false"]
    if "method=dmd" in case:
        ov.append(f"method.training.max_epochs={epochs}")
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    res = subprocess.run([sys.executable, "-c", CHILD, str(threads), json.dumps(OLD_NAMES), *ov], cwd=tree, env=env, capture_output=True,
                         text=True, check=True)
    facts = json.loads(res.stdout.strip().splitlines()[-1])
    return facts["fit_s"] / facts["epochs"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", required=True, type=Path)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cases", default=",".join(CASES))
    args = ap.parse_args()
    trees = {"this": HERE, "baseline": args.baseline.resolve()}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_loop_") as tmp:
        for case in args.cases.split(","):
            times: dict[str, list[float]] = {k: [] for k in trees}
            for _ in range(args.repeats):
                for name, tree in trees.items():
                    times[name].append(one_run(tree, CASES[case], args.epochs, args.threads, tmp))
            med = {k: statistics.median(v) for k, v in times.items()}
            rows.append({"case": case, "this s/epoch": med["this"], "baseline s/epoch": med["baseline"],
                         "this/baseline": med["this"] / med["baseline"],
                         "spread this": f"{min(times['this']):.3f}-{max(times['this']):.3f}",
                         "spread baseline": f"{min(times['baseline']):.3f}-{max(times['baseline']):.3f}"})
    print(f"{args.repeats} interleaved runs per tree, {args.epochs} epochs per model, {args.threads} thread(s); "
          f"median seconds per epoch (fit time / epochs of every model trained)")
    print(tabulate(rows, headers="keys", floatfmt=".3f", tablefmt="github"))


if __name__ == "__main__":
    main()
