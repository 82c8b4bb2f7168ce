"""How far PKDOT's T-Net had converged when its training stopped, from the records' own T-Net logs.

    python scripts/tnet_convergence.py [--results results] [--task lupi] [--at 59]

One line per task variant, training recipe of the teacher (train.max_epochs / train.patience), T-Net budget
(method.tnet.epochs / .patience), T-Net loss (method.tnet.loss: its validation value is what is shown; `both`
is val_mmd + val_mse, what its selection used) and privileged-information control, over the ok pkdot and
mtpkdot records whose T-Net selected on a validation split. A stored T-Net is shared by the runs that use it:
each is counted once (its store path). Columns: runs, median selected epoch, runs whose T-Net ran to its cap
(the leaderboard's rule: the log reaches the last epoch with patience not run out), and the median validation
loss before training, at epoch --at and at the selected epoch, with the share of the whole reduction (before ->
selected) still to come after epoch --at (a T-Net that stopped before --at contributes its last epoch, past its
selection: that share then measures overfitting, not what was left).
Read from logs.tnet; nothing is trained here.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from harness.leaderboard import tnet_ran_to_cap  # noqa: E402
from harness.records import iter_records  # noqa: E402
from methods.pkdot import tnet_selection_score  # noqa: E402


def _val_loss(kind: str, scores: dict | None) -> float | None:
    """The T-Net's validation loss as its selection saw it (`both`: val_mmd + val_mse), None where not logged."""
    try:
        return tnet_selection_score(kind, scores or {})
    except KeyError:
        return None


def tnet_curves(results: Path, task: str) -> dict[tuple, dict[str, dict]]:
    """{(variant, teacher recipe, T-Net epochs, patience, T-Net loss, control): {store path: T-Net summary}}."""
    groups: dict[tuple, dict[tuple, dict]] = {}
    for rec in iter_records(results):
        if rec.get("task") != task or rec.get("method") not in ("pkdot", "mtpkdot") or rec.get("status") != "ok":
            continue
        meta, log = (rec.get("extra") or {}).get("tnet"), (rec.get("logs") or {}).get("tnet")
        cfg = ((rec.get("config") or {}).get("method") or {}).get("tnet") or {}
        if not isinstance(meta, dict) or meta.get("selection") != "lowest validation loss" or not log:
            continue
        kind = meta.get("loss", cfg.get("loss", "mmd"))
        by_epoch = {e["epoch"]: _val_loss(kind, e) for e in log if isinstance(e, dict)}
        control = (rec["config"]["method"].get("privileged_control") or "none")
        train = rec["config"].get("train") or {}
        key = (rec.get("task_variant", ""), f"{train.get('max_epochs')} / {train.get('patience')}", cfg.get("epochs"),
               cfg.get("patience"), kind, control)
        groups.setdefault(key, {})[meta.get("store_path") or rec["_dir"]] = {
            "selected": meta["selected_epoch"], "last": max(by_epoch), "by_epoch": by_epoch,
            "before": _val_loss(kind, meta.get("val_before")), "at_selected": by_epoch.get(meta["selected_epoch"])}
    return groups


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default="results", type=Path)
    ap.add_argument("--task", default="lupi")
    ap.add_argument("--at", default=59, type=int, help="the epoch to compare with (59: the last of the official 60)")
    args = ap.parse_args(argv)
    rows = []
    groups = tnet_curves(args.results, args.task)
    median = statistics.median
    for (variant, recipe, epochs, patience, kind, control), runs in sorted(groups.items(), key=str):
        at = [r["by_epoch"].get(min(args.at, r["last"])) for r in runs.values()]
        left = [(a - r["at_selected"]) / (r["before"] - r["at_selected"]) for a, r in zip(at, runs.values())
                if None not in (a, r["before"], r["at_selected"]) and r["before"] != r["at_selected"]]
        capped = sum(tnet_ran_to_cap(r["last"], r["selected"], epochs, patience) for r in runs.values())
        tnets = list(runs.values())
        rows.append([variant, recipe, f"{epochs} / {patience}", kind, control, len(tnets),
                     median(r["selected"] for r in tnets), capped, f"{median(r['before'] for r in tnets):.3f}",
                     f"{median(at):.3f}", f"{median(r['at_selected'] for r in tnets):.3f}",
                     f"{median(left):.1%}" if left else "n/a"])
    if not rows:
        print(f"no pkdot or mtpkdot record of task {args.task} with a T-Net selected on validation under "
              f"{args.results}")
        return 1
    print(tabulate(rows, headers=["variant", "train epochs / patience", "tnet epochs / patience", "tnet loss",
                                  "control", "T-Nets",
                                  "selected (median)", "at its cap", "val loss before", f"at epoch {args.at}",
                                  "at selected",
                                  f"reduction still to come after epoch {args.at}"], tablefmt="github",
                   disable_numparse=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
