"""Possibly undertrained runs: the evaluated model selected early or after few optimizer updates, or stopped at
max_epochs; frozen parts (a stored teacher, stage-1 teachers, PKDOT's T-Net) that ran to their own epoch cap."""

from __future__ import annotations

import pandas as pd

from harness.leaderboard.common import EVALUATED_MODEL, _run_name
from harness.records import config_value


STOP_REASONS = ("patience", "max_epochs", "min_lr", "budget", "unknown")
EARLY_EPOCH = 1  # selected at epoch <= 1 (epochs counted from 0): possibly undertrained
# Patience counts epochs; a run making a few updates an epoch (small data, large batches, gradient accumulation)
# can stop on validation noise after a few dozen updates, at any selected epoch (lupi's n_train=200 at B=128:
# one update an epoch). Selected after fewer optimizer updates than this: possibly undertrained.
MIN_UPDATES = 100
# the rule in words, for every table that shows the flags (leaderboard sections, study reports)
UNDERTRAINED_RULE = (f"evaluated model selected at epoch ≤ {EARLY_EPOCH}, counted from 0, or after fewer than "
                     f"{MIN_UPDATES} optimizer updates, or stopped at max_epochs")


def _parts_at_cap(rec: dict) -> str:
    """The frozen parts of a run (a distiller's stored teacher, MT-PKDOT's stage-1 teachers, PKDOT's T-Net) whose
    own training ran to its epoch cap instead of being stopped by patience: still improving when it ended, so
    possibly undertrained, whatever the evaluated model's flags say. Comma-separated names, "" if none.
    Parts trained by the harness's loop say so in extra.training.<part>.stop_reason. The T-Net says so there too
    since it trains in that loop; in older records, and for a T-Net stored before then (stop reason unknown), it
    ran to its cap when its log reaches the last epoch and patience had not run out there (tnet_ran_to_cap)."""
    extra = rec.get("extra") if isinstance(rec.get("extra"), dict) else {}
    evaluated = EVALUATED_MODEL.get(rec.get("bound") or "", "student")
    training = extra.get("training") if isinstance(extra.get("training"), dict) else {}
    parts = [name for name, summary in training.items()
             if name != evaluated and isinstance(summary, dict) and summary.get("stop_reason") == "max_epochs"]
    tnet, log = extra.get("tnet"), (rec.get("logs") or {}).get("tnet")
    cfg = config_value(rec.get("config") if isinstance(rec.get("config"), dict) else {}, "method.tnet")
    known = isinstance(training.get("tnet"), dict) and training["tnet"].get("stop_reason") not in (None, "unknown")
    if not known and isinstance(tnet, dict) and tnet.get("selection") == "lowest validation loss" \
            and isinstance(cfg, dict) and isinstance(log, list) and log and isinstance(log[-1], dict):
        epochs, patience, selected = cfg.get("epochs"), cfg.get("patience"), tnet.get("selected_epoch")
        if all(isinstance(v, int) and not isinstance(v, bool) for v in (epochs, patience, selected)) \
                and tnet_ran_to_cap(log[-1].get("epoch"), selected, epochs, patience):
            parts.append("tnet")
    return ",".join(parts)


def tnet_ran_to_cap(last_epoch: int, selected: int, epochs: int, patience: int) -> bool:
    """PKDOT's T-Net (methods/pkdot.py get_tnet) stops once epoch - selected > patience, else after its last epoch:
    it ran to its cap when its log reaches epoch epochs - 1 with patience not run out there."""
    return last_epoch == epochs - 1 and epochs - 1 - selected <= patience


def _updates_at_selection(entries, selected: int | None) -> int | None:
    """Optimizer updates made in epochs 0..selected, from the per-epoch log's optimizer_steps. A log thinned by
    log_every keeps every epoch's count only when it kept every epoch; otherwise the counts it kept must be one
    value (every epoch of a run has the same batches) to be multiplied out. None when the log cannot tell: older
    records without counts, no selected epoch, or a thinned log whose epochs differ."""
    if selected is None or not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        return None
    epochs = [e.get("epoch") for e in entries]
    steps = [e.get("optimizer_steps") for e in entries]
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in (*epochs, *steps)):
        return None
    if epochs == list(range(len(entries))):
        return sum(n for epoch, n in zip(epochs, steps) if epoch <= selected)
    return steps[0] * (selected + 1) if len(set(steps)) == 1 else None


def _flags(ok: pd.DataFrame) -> dict:
    """Possibly undertrained runs of a row: selected at epoch <= EARLY_EPOCH, else selected after fewer than
    MIN_UPDATES optimizer updates, or stopped at max_epochs."""
    early, few_updates, capped = [], [], []
    for r in ok.itertuples():
        if r.stop_reason == "budget":
            continue
        if r.selected_epoch is not None and not pd.isna(r.selected_epoch) and r.selected_epoch <= EARLY_EPOCH:
            early.append(f"{_run_name(r)} (epoch {int(r.selected_epoch)})")
        elif r.updates_at_selection is not None and not pd.isna(r.updates_at_selection) \
                and r.updates_at_selection < MIN_UPDATES:
            few_updates.append(f"{_run_name(r)} ({int(r.updates_at_selection)})")
        if r.stop_reason == "max_epochs":
            capped.append(_run_name(r))
    flagged = {n.split(" ")[0] for n in early + few_updates} | set(capped)
    parts = ([f"selected at epoch ≤ {EARLY_EPOCH}: {', '.join(early)}"] if early else []) + \
            ([f"selected after < {MIN_UPDATES} updates: {', '.join(few_updates)}"] if few_updates else []) + \
            ([f"stopped at max_epochs: {', '.join(capped)}"] if capped else [])
    by_part: dict[str, list[str]] = {}
    for r in ok.itertuples():
        for part in filter(None, r.parts_at_cap.split(",")):
            by_part.setdefault(part, []).append(_run_name(r))
    return {"n_flagged": len(flagged), "n_selected_early": len(early), "n_few_updates": len(few_updates),
            "n_max_epochs": len(capped), "flagged_runs": "; ".join(parts),
            "n_parts_at_cap": len({run for runs in by_part.values() for run in runs}),
            "parts_at_cap": "; ".join(_part_runs(part, runs, len(ok)) for part, runs in by_part.items())}


def _part_runs(part: str, runs: list[str], n_ok: int) -> str:
    """`tnet in 2 (f0-s0, f0-s3)`; a part at its cap in every one of more than 3 runs is `tnet in all 20`: a list
    of every run of the row says nothing more and made footnote lines of hundreds of characters."""
    if len(runs) == n_ok > 3:
        return f"{part} in all {n_ok}"
    return f"{part} in {len(runs)} ({', '.join(runs)})"
