"""Launchers: how the runs of a command line are executed.

`inprocess` (default): one after the other in this process; a failing run writes a failed record
and the others go on. Runs whose ok record exists are skipped before anything is launched (resume).
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig

from harness.records import read_record, run_dir
from harness.runner import execute


@dataclass
class PlannedRun:
    overrides: list[str]
    cfg: DictConfig

    @property
    def done(self) -> bool:
        rec = read_record(run_dir(self.cfg))
        return rec is not None and rec.get("status") == "ok"


def launch(runs: list[PlannedRun], launcher: DictConfig) -> list[dict]:
    todo = [r for r in runs if r.cfg.overwrite or not r.done]
    skipped = len(runs) - len(todo)
    if skipped:
        print(f"resume: {skipped} of {len(runs)} runs already have a record and are skipped (overwrite=true recomputes)")
    name = launcher.name
    if name == "inprocess":
        records = []
        for i, r in enumerate(todo):
            print(f"[{i + 1}/{len(todo)}] {' '.join(r.overrides) or '(defaults)'}")
            rec = execute(r.cfg, r.overrides)
            line = f"  -> {rec['status']}"
            if rec["status"] == "ok":
                pm = rec.get("primary_metric")
                line += f"  {pm}={rec['metrics'][pm]:.4f}  ({rec['timings']['total_s']:.1f}s)"
            else:  # a single run's error is printed once, by the caller (cli.print_run)
                line += f"  {rec['error']}" if len(todo) > 1 else "  (error below)"
            print(line)
            records.append(rec)
        return records
    raise ValueError(f"launcher '{name}' is not implemented")
