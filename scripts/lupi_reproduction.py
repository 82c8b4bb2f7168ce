"""Reproduce Lopez-Paz et al. (ICLR 2016) §4 with the harness: experiments 1-4 × {teacher on x* only, student,
generalized distillation (kd, method.recipe=gd)} × seeds (one repetition per seed). Not run by the tests.

    python scripts/lupi_reproduction.py --seeds 0-99 [--launcher local] [--dry-run]
    python scripts/lupi_reproduction.py --experiments 1,3 --n-train 200,500,1000,2000,5000 --seeds 0-9   # sample size

The paper's training (reference code: Keras' default RMSprop, lr 0.001; logistic regression; 1000 epochs,
mini-batches of 32, no early stopping, no weight decay, no clipping, no batch dropped). Measured on a shared
2-core CPU, one thread: about 6.5 s a teacher or student run and 10.5 s a gd run (its teacher reused).
The teacher is stored once per (experiment, seed) and reused by the gd run of the same seed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

PAPER = ["task=lupi", "model.encoder=linear", "train.optimizer=rmsprop", "train.lr=0.001", "train.weight_decay=0",
         "train.grad_clip=null", "train.stop=budget", "train.max_epochs=1000", "train.batch_size=32",
         "train.drop_last=false"]
# teacher first: the gd runs of the same seed then reuse its stored model
KINDS = [["method=teacher", "teacher.modalities=privileged"], ["method=student"],
         ["method=kd", "method.recipe=gd", "teacher.modalities=privileged"]]


def seeds(text: str) -> str:
    lo, _, hi = text.partition("-")
    return ",".join(map(str, range(int(lo), int(hi or lo) + 1)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0-9", help="repetitions, e.g. 0-99 (the paper has 100)")
    ap.add_argument("--experiments", default="1,2,3,4")
    ap.add_argument("--n-train", default="200", help="training-set sizes, e.g. 200,500,1000,2000,5000 (the "
                    "sample-size sweep: --experiments 1,3 --seeds 0-9)")
    ap.add_argument("--extra", nargs="*", default=[], metavar="KEY=VALUE",
                    help="overrides added to every run, e.g. train.batch_size=128 (Keras 0.x's default batch, which "
                         "the reference code used) or task.exp4_relevant=code (its experiment 4)")
    ap.add_argument("--launcher", default="inprocess", help="inprocess | local | slurm | slurm_cpu")
    ap.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = ap.parse_args()
    status = 0
    for kind in KINDS:
        cmd = [sys.executable, "-m", "harness", "run", "-m", *PAPER, *kind, f"task.experiment={args.experiments}",
               f"task.n_train={args.n_train}", *args.extra,
               f"seed={seeds(args.seeds)}", f"launcher={args.launcher}", "progress=false",
               # records of a size to commit: 40 of the 1000 epochs of each log (+ first and last), and no
               # predictions.csv of the 10 000 test samples (the record keeps the metrics and their bootstrap CI)
               "log_every=25", "save_predictions=false",
               # the 1000-resample test bootstrap costs more than training at n_train=200, and a row of many
               # repetitions is described by its spread over them, not by one run's interval
               "stats.bootstrap_resamples=0"]
        print(" ".join(cmd), flush=True)
        if not args.dry_run:
            status |= subprocess.call(cmd)
    return status


if __name__ == "__main__":
    sys.exit(main())
