"""One writer of hand-made run records for the leaderboard, report, LaTeX, scaling and stale-data tests.

A record holds the fields the leaderboard reads, written by the runner's own writer (harness.records.write_record)
at <root>/<task>/<method>/<run_key>/record.json. With a `config`, its config_id is the runner's
(harness.records.config_id), so rows and privileged-information controls are grouped as for real runs; without
one, `config_id` names the row.
"""

from __future__ import annotations

from pathlib import Path

from harness import records

BOUNDS = {"student": "lower_bound", "teacher": "upper_bound"}


def hand_made_record(root: Path, method: str, seed: int, metrics: dict, *, task: str = "synthetic",
                     task_variant: str = "valence/arousal regression", primary_metric: str = "ccc_mean",
                     data_source: str = "synthetic", fold: int = 0, config: dict | None = None,
                     config_id: str = "c1", run_key: str | None = None, bound: str | None = None, **fields) -> Path:
    """Write one record; `fields` are added as they are (status, error, overrides, logs, extra, ...)."""
    if config is not None:
        config = {**config, "seed": seed, "fold": fold}
        config_id = records.config_id(config)
    rec = {"schema_version": 1, "run_key": run_key or f"f{fold}-s{seed}-{config_id}", "config_id": config_id,
           "method": method, "task": task, "task_variant": task_variant, "fold": fold, "seed": seed,
           "status": "ok", "bound": BOUNDS.get(method, "") if bound is None else bound,
           "primary_metric": primary_metric, "data_source": data_source, "overrides": [], "metrics": metrics,
           **({"config": config} if config is not None else {}), **fields}
    folder = root / task / method / rec["run_key"]
    folder.mkdir(parents=True)  # not exist_ok: two hand-made records with one run key are a test's mistake
    return records.write_record(folder, rec, None)


def control_overrides(control: str | None) -> list[str]:
    """The command-line override a privileged-information control run carries."""
    return [f"method.privileged_control={control}"] if control else []
