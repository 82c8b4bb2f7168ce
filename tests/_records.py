"""One writer of hand-made run records for the leaderboard, report, LaTeX, scaling and stale-data tests.

A record holds the fields the leaderboard reads, as the runner writes them, at
<root>/<task>/<method>/<run_key>/record.json. With a `config`, its config_id is the runner's (the semantic
config without seed and fold, harness/records.py), so rows and privileged-information controls are grouped as
for real runs; without one, `config_id` names the row.
"""

from __future__ import annotations

import json
from pathlib import Path

from harness.records import semantic_config
from harness.teachers import stable_hash

BOUNDS = {"student": "lower_bound", "teacher": "upper_bound"}


def write_record(root: Path, method: str, seed: int, metrics: dict, *, task: str = "synthetic",
                 task_variant: str = "valence/arousal regression", primary_metric: str = "ccc_mean",
                 data_source: str = "synthetic", fold: int = 0, config: dict | None = None, config_id: str = "c1",
                 run_key: str | None = None, bound: str | None = None, **fields) -> Path:
    """Write one record; `fields` are added as they are (status, error, overrides, logs, extra, ...)."""
    if config is not None:
        config = {**config, "seed": seed, "fold": fold}
        config_id = stable_hash(semantic_config(config, also_drop=("seed", "fold")), n=8)
    rec = {"schema_version": 1, "run_key": run_key or f"f{fold}-s{seed}-{config_id}", "config_id": config_id,
           "method": method, "task": task, "task_variant": task_variant, "fold": fold, "seed": seed,
           "status": "ok", "bound": BOUNDS.get(method, "") if bound is None else bound,
           "primary_metric": primary_metric, "data_source": data_source, "overrides": [], "metrics": metrics,
           **({"config": config} if config is not None else {}), **fields}
    path = root / task / method / rec["run_key"] / "record.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(rec))
    return path


def control_overrides(control: str | None) -> list[str]:
    """The command-line override a privileged-information control run carries."""
    return [f"method.privileged_control={control}"] if control else []
