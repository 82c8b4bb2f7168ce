"""Run keys, run folders and records: one self-describing, atomically written record per run.

results/<task>/<method>/<run_key>/record.json  (+ predictions.csv). The record is written last,
by rename, so a folder with a record.json is a finished run and a killed run leaves no record.
"""

from __future__ import annotations

import json
import platform
import socket
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from harness.errors import RecordError
from harness.schema import FAMILY_NAME_TEXT, is_family_name
from harness.storage import atomic_write_all, atomic_write_text  # noqa: F401 - atomic_write_text: for importers
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
                   "method.bert_weight_decay": 0.0,
                   # the PKDOT/MT-PKDOT mechanism study's options (docs/prereg/2026-12-07_pkdot_mechanism.md), at the
                   # behaviour every earlier record ran: the T-Net in the slot, MT-PKDOT scoring on the training batch
                   "method.tnet.slot": "tnet", "method.selection_on": "batch"}
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


def write_record(folder: Path, record: dict[str, Any], predictions: pd.DataFrame | None) -> Path:
    """record.json (+ predictions.csv) whole or not at all (harness/storage.py): a full disk leaves the folder as it
    was, and a record never sits beside another attempt's predictions."""
    files = []
    if predictions is not None:
        files.append((folder / "predictions.csv", predictions.to_csv(index=False, float_format="%.7g")))
    files.append((folder / "record.json", json.dumps(record, indent=1, default=_json_default) + "\n"))
    atomic_write_all(files)
    return folder / "record.json"


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


# What every reader of records (leaderboard, report, scaling, status, resume, the Python API) relies on: field ->
# (types, required in ok records, required in failed ones). Deeper parts (metrics_ci, extra.training, logs) are
# checked by the leaderboard where it reads them, with the same kind of message.
_STR, _INT, _DICT, _LIST = (str,), (int,), (dict,), (list,)
RECORD_FIELDS = {"status": (_STR, True, True), "method": (_STR, True, True), "task": (_STR, True, True),
                 "fold": (_INT, True, True), "seed": (_INT, True, True), "run_key": (_STR, False, False),
                 "config_id": (_STR, False, False), "config": (_DICT, False, False),
                 "overrides": (_LIST, False, False), "metrics": (_DICT, True, False),
                 "primary_metric": (_STR, True, False), "task_variant": (_STR, False, False),
                 "data_source": (_STR, False, False), "bound": (_STR, False, False), "error": (_STR, False, False),
                 "metrics_ci": (_DICT, False, False), "extra": (_DICT, False, False), "logs": (_DICT, False, False),
                 "launch": (_DICT, False, False), "timings": (_DICT, False, False), "adjusted": (_DICT, False, False)}
RECORD_STATUSES = ("ok", "failed")
_TYPE_NAMES = {str: "a string", int: "a whole number", dict: "an object", list: "a list"}


def record_fix(folder: Path | str) -> str:
    return (f"fix: restore the file, or recompute the run (overwrite=true, or delete {Path(folder)} and re-send its "
            f"command)")


def check_record(rec: Any, path: Path | str) -> dict:
    """rec, read from path, if it has what its readers need; else RecordError naming the file, the field, the fix."""
    path = Path(path)

    def bad(what: str) -> RecordError:
        return RecordError(f"{path}: {what}; {record_fix(path.parent)}")

    if not isinstance(rec, dict):
        raise bad(f"the record is {type(rec).__name__}, expected a JSON object")
    status = rec.get("status")
    for field, (types, in_ok, in_failed) in RECORD_FIELDS.items():
        value = rec.get(field)
        if value is None:  # null counts as absent (a run that failed before the value was known)
            if (in_ok and status == "ok") or (in_failed and status != "ok"):
                raise bad(f"field '{field}' is missing")
            continue
        if not isinstance(value, types) or isinstance(value, bool):
            raise bad(f"{field} = {_short(value)}: expected {_TYPE_NAMES[types[0]]}")
    if status not in RECORD_STATUSES:
        raise bad(f"status = {_short(status)}: expected one of {', '.join(RECORD_STATUSES)}")
    for name, value in (rec.get("metrics") or {}).items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise bad(f"metrics.{name} = {_short(value)}: expected a number")
    if status == "ok" and rec["primary_metric"] not in rec["metrics"]:
        raise bad(f"metrics has no {rec['primary_metric']!r} (the record's primary_metric)")
    family = config_value(rec.get("config") or {}, "stats.family")  # which Holm family the run's row belongs to
    if family is not None and not is_family_name(family):
        raise bad(f"config.stats.family = {_short(family)}: expected {FAMILY_NAME_TEXT}")
    return rec


def _short(value: Any, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[:n - 3] + "..."


def load_record(path: Path | str) -> dict:
    """One record.json, checked (check_record); RecordError for a file that cannot be read or parsed."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise RecordError(f"{path}: cannot be read ({e}); {record_fix(path.parent)}") from None
    try:
        rec = json.loads(text)
    except json.JSONDecodeError as e:
        raise RecordError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); "
                          f"{record_fix(path.parent)}") from None
    return check_record(rec, path)


def read_record(folder: Path) -> dict | None:
    """The record of a run folder, None if it has none; RecordError for a record that cannot be used."""
    path = Path(folder) / "record.json"
    if not path.exists():
        return None
    return load_record(path)


def iter_records(results_dir: Path | str) -> list[dict]:
    """Every record under results_dir; one that cannot be read or lacks a field its readers need is a RecordError
    (never skipped: a leaderboard silently missing a run would be wrong without saying so).

    Folders starting with `_` or `.` are not tasks (`_sweeps/` holds sweep manifests and job logs).
    A record is written by rename, so a run still in progress has no record.json yet: a leaderboard
    made while a sweep runs reads the finished runs only.
    """
    out = []
    root = Path(results_dir)
    for path in sorted(root.glob("*/*/*/record.json")):
        if path.relative_to(root).parts[0][:1] in ("_", "."):
            continue
        rec = load_record(path)
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

