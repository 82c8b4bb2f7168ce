"""Run keys, run folders and records: one self-describing, atomically written record per run.

results/<task>/<method>/<run_key>/record.json  (+ predictions.csv). The record is written last,
by rename, so a folder with a record.json is a finished run and a killed run leaves no record.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from harness.teachers import stable_hash

if TYPE_CHECKING:
    import pandas as pd

# Config keys that do not change what a run computes: left out of its key.
NON_SEMANTIC_KEYS = ("results_dir", "overwrite", "device", "progress", "cache_dir", "launcher", "train.checkpoint",
                     "task.data_root", "task.mimic_dir", "task.cache_dir", "task.feature_cache", "task.feature_cache_dir",
                     "stats", "logger", "log_every", "save_predictions", "teacher.cache_outputs")
# Keys added after records existed, at the value that reproduces those records: left out of the key at that
# value, so older records keep their run keys (resume finds them) and share leaderboard rows with new ones.
KEYS_NEUTRAL_AT = {"task.protocol": "privileged", "selection_split": "val", "task.modality_protocol": "privileged",
                   # the training loop's options, at the values of the loop every earlier record was trained with
                   "train.optimizer": "adamw", "train.fused": "auto", "train.momentum": 0.0, "train.schedule": "none",
                   "train.plateau_factor": 0.5, "train.plateau_patience": 5, "train.min_lr": 0.0,
                   "train.drop_last": True, "train.accumulate": 1, "train.grad_clip_by": "norm",
                   "train.select_on": "primary", "train.stop": "patience",
                   "method.privileged_control": "none", "task.privileged_signal": 1.0, "task.exp4_relevant": "paper",
                   # MT-PKDOT's official-loop options, at the harness's loops every earlier record ran
                   "method.stage1.optimizer": "harness", "method.stage1.frozen_mode": "train",
                   "method.student_loop": "harness",
                   "task.explained_label_noise": 0.0, "task.labelled_per_subject": None,
                   "model.encoder": "temporal", "teacher.modalities": "all", "method.recipe": "none",
                   "model.fusion": "gated", "model.batch_mixing": False, "teacher.train": {},
                   # DMD's text: the precomputed features (task.text_input follows method.text_encoder on mosi/mosei)
                   "method.text_encoder": "frozen", "task.text_input": "frozen",
                   "method.bert_path": "bert-base-uncased", "method.bert_init": "pretrained", "method.bert_lr": 1e-4,
                   "method.bert_weight_decay": 0.0}
PACKAGES = ("torch", "numpy", "scipy", "statsmodels", "scikit-learn", "pandas", "pot", "hydra-core", "omegaconf",
            "submitit", "datasets", "pkd-harness")


def _drop(d: dict, dotted: str) -> None:
    head, _, rest = dotted.partition(".")
    if rest:
        if isinstance(d.get(head), dict):
            _drop(d[head], rest)
    else:
        d.pop(head, None)


def semantic_config(cfg: DictConfig | dict, also_drop: tuple[str, ...] = ()) -> dict:
    d = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else json.loads(json.dumps(cfg))
    for key in NON_SEMANTIC_KEYS + also_drop:
        _drop(d, key)
    for key, neutral in KEYS_NEUTRAL_AT.items():
        if config_value(d, key) == neutral:
            _drop(d, key)
            if d.get(head := key.partition(".")[0]) == {}:  # a group of neutral keys only (teacher)
                d.pop(head)
    return d


def config_value(d: dict, dotted: str):
    """The value at a dotted key of a (config) dict, None where the path is absent."""
    for part in dotted.split("."):
        if not isinstance(d, dict):
            return None
        d = d.get(part)
    return d


def run_key(cfg: DictConfig | dict) -> str:
    """Readable and unique: fold, seed, then a hash of everything that changes the result."""
    return f"f{cfg['fold']}-s{cfg['seed']}-{stable_hash(semantic_config(cfg))}"


# What varies between the runs that one leaderboard row averages: the seed, the fold, and keys that merely copy
# the seed (lupi's task.repetition: ${seed}, one repetition of the paper's experiment per seed).
ROW_VARYING = ("seed", "fold", "task.repetition")


def config_id(cfg: DictConfig | dict) -> str:
    """Hash of the config without seed and fold: runs sharing it are averaged in one leaderboard row."""
    return stable_hash(semantic_config(cfg, also_drop=ROW_VARYING), n=8)


def run_dir(cfg: DictConfig | dict) -> Path:
    return Path(cfg["results_dir"]) / cfg["task"]["name"] / cfg["method"]["name"] / run_key(cfg)


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_record(folder: Path, record: dict[str, Any], predictions: pd.DataFrame | None) -> Path:
    if predictions is not None:
        atomic_write_text(folder / "predictions.csv", predictions.to_csv(index=False, float_format="%.7g"))
    atomic_write_text(folder / "record.json", json.dumps(record, indent=1, default=_json_default) + "\n")
    return folder / "record.json"


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def read_record(folder: Path) -> dict | None:
    path = Path(folder) / "record.json"
    if not path.exists():
        return None
    with open(path) as f:
        return json.load(f)


def iter_records(results_dir: Path | str) -> list[dict]:
    """Every record under results_dir (unreadable files are reported, not fatal).

    Folders starting with `_` or `.` are not tasks (`_sweeps/` holds sweep manifests and job logs).
    A record is written by rename, so a run still in progress has no record.json yet: a leaderboard
    made while a sweep runs reads the finished runs only.
    """
    out = []
    root = Path(results_dir)
    for path in sorted(root.glob("*/*/*/record.json")):
        if path.relative_to(root).parts[0][:1] in ("_", "."):
            continue
        try:
            rec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            print(f"warning: skipping unreadable record {path}: {e}")
            continue
        rec["_dir"] = str(path.parent)
        out.append(rec)
    return out


@lru_cache(maxsize=1)
def environment() -> dict[str, Any]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return {"git": git_sha(), "packages": versions, "python": platform.python_version(),
            "host": socket.gethostname(), "platform": platform.platform(), "cpu": cpu_model()}


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name: BLAS kernels, hence the last digits of a result, depend on it (as on thread count)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_sha() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (sha + ("-dirty" if dirty else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def thin_log(rows: list[dict], every: int) -> list[dict]:
    """Every `every`-th epoch of one model's log, plus its first, its selected and its last epoch (what a
    reader checks: where it started, what was kept, where it stopped). every=1 keeps the log as it is."""
    if every <= 1 or not rows:
        return rows
    last = len(rows) - 1
    return [r for i, r in enumerate(rows)
            if i == 0 or i == last or r.get("selected") or int(r.get("epoch", i)) % every == 0]

