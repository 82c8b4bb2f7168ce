"""Reading and validating the run records: one DataFrame row per record (collect), with its data version, its
privileged-information control, Holm family, training summary and the primary metric's bootstrap CI."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from harness.leaderboard.common import (CONTROL_KEY, CONTROLS, DATA_UNKNOWN, EVALUATED_MODEL, FAMILY_KEY,
                                        LABEL_PREFIXES, MAIN_FAMILY, VARIANT, LeaderboardError, _runs)
from harness.leaderboard.flags import STOP_REASONS, _parts_at_cap, _updates_at_selection
from harness.records import ROW_VARYING, config_id, config_value, iter_records, semantic_config
from harness.schema import FAMILY_NAME_TEXT, is_family_name
from harness.teachers import stable_hash


def _control(config: dict, path: Path) -> str:
    value = (config.get("method") or {}).get("privileged_control", "none")
    value = "none" if value is None else value
    if value not in ("none", *CONTROLS):
        raise LeaderboardError(f"{path}: config.{CONTROL_KEY} = {value!r}: expected none, {', '.join(CONTROLS)}")
    return value


def _family(config: dict, path: Path) -> str:
    value = config_value(config, FAMILY_KEY)
    if value is None:
        return MAIN_FAMILY
    if not is_family_name(value):
        raise LeaderboardError(f"{path}: config.{FAMILY_KEY} = {value!r}: expected {FAMILY_NAME_TEXT}")
    return value


def _base_id(rec: dict) -> str:
    """What a method row and its privileged-information controls share: the config without seed, fold and
    the control key (records without a config: their config_id)."""
    config = rec.get("config")
    if not isinstance(config, dict):
        return str(rec.get("config_id"))
    return stable_hash(semantic_config(config, also_drop=(*ROW_VARYING, CONTROL_KEY)), n=8)


def _training(rec: dict, path: Path) -> dict:
    """Selected epoch and stop reason of the evaluated model (extra.training.<model>, else logs.<model>), and the
    optimizer updates made up to its selection (from logs.<model>)."""
    training = (rec.get("extra") or {}).get("training") or {}
    logs = rec.get("logs") or {}
    model = EVALUATED_MODEL.get(rec.get("bound") or "", "student")
    if model not in training and model not in logs:
        return {"selected_epoch": None, "stop_reason": None, "updates_at_selection": None}
    if model in training:
        summary = training[model]
        where = f"extra.training.{model}"
        if not isinstance(summary, dict):
            raise LeaderboardError(f"{path}: {where} is {type(summary).__name__}, expected an object")
        reason, epoch = summary.get("stop_reason"), summary.get("selected_epoch")
        if reason not in STOP_REASONS:
            raise LeaderboardError(f"{path}: {where}.stop_reason = {reason!r}: expected one of {list(STOP_REASONS)}")
        if isinstance(epoch, bool) or not isinstance(epoch, int):
            raise LeaderboardError(f"{path}: {where}.selected_epoch = {epoch!r}: expected a whole epoch number")
    else:
        entries = logs[model]
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise LeaderboardError(f"{path}: logs.{model} is not a list of epoch entries")
        selected = [e.get("epoch") for e in entries if e.get("selected")]
        if len(selected) > 1:
            raise LeaderboardError(f"{path}: logs.{model}: {len(selected)} entries have selected=true, expected one")
        reason, epoch = "unknown", selected[0] if selected else None
    return {"selected_epoch": epoch, "stop_reason": reason,
            "updates_at_selection": _updates_at_selection(logs.get(model), epoch)}


def _ci(rec: dict, path: Path) -> dict:
    """The primary metric's test-set bootstrap CI from metrics_ci (absent in older records)."""
    out = {"ci_low": math.nan, "ci_high": math.nan, "ci_unit": None, "ci_n_units": math.nan,
           "ci_n_resamples": math.nan}
    ci, primary = rec.get("metrics_ci"), rec.get("primary_metric")
    if not ci or not primary:
        return out
    if not isinstance(ci, dict):
        raise LeaderboardError(f"{path}: metrics_ci is {type(ci).__name__}, expected an object")
    interval = ci.get(primary)
    if interval is not None:
        if (not isinstance(interval, list) or len(interval) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in interval)):
            raise LeaderboardError(f"{path}: metrics_ci.{primary} = {interval!r}: expected [low, high] or null")
        out.update(ci_low=float(interval[0]), ci_high=float(interval[1]))
    out.update(ci_unit=ci.get("unit"), ci_n_units=ci.get("n_units", math.nan),
               ci_n_resamples=ci.get("n_resamples", math.nan))
    return out


def val_at_selection(rec: dict) -> float:
    """The validation value of the primary metric at the evaluated model's selected epoch (its log's entry with
    selected=true, key val_<primary>): what the cross-task summary chooses a method's configuration on, never the
    test value. NaN when the log does not say."""
    model = EVALUATED_MODEL.get(rec.get("bound") or "", "student")
    entries, primary = (rec.get("logs") or {}).get(model), rec.get("primary_metric")
    if not primary or not isinstance(entries, list):
        return math.nan
    chosen = [e for e in entries if isinstance(e, dict) and e.get("selected")]
    value = chosen[-1].get(f"val_{primary}") if chosen else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def random_features(rec: dict) -> bool:
    """The record's visual features were extracted with random backbone weights (their EXTRACTED.json, copied into
    data_info by the task)."""
    info = rec.get("data_info") if isinstance(rec.get("data_info"), dict) else {}
    vf = info.get("visual_features") if isinstance(info.get("visual_features"), dict) else {}
    return bool(vf.get("random_weights"))


def collect(results_dir: Path | str, config_keys: tuple[str, ...] = ()) -> pd.DataFrame:
    """One row per record: identity columns, the primary metric's CI and training summary, one column per metric,
    and a column `c:<key>` per dotted key of `config_keys` (its value in the record's config, None if absent)."""
    return collect_records(iter_records(results_dir), config_keys)


def collect_records(records: list[dict], config_keys: tuple[str, ...] = ()) -> pd.DataFrame:
    """collect() of these records (each with its folder under `_dir`, as iter_records gives them)."""
    rows, values = [], {key: [] for key in config_keys}
    for rec in records:
        path = Path(rec["_dir"]) / "record.json"
        row = {k: rec.get(k) for k in ("task", "method", "fold", "seed", "status", "run_key", "config_id", "bound",
                                       "primary_metric", "data_source", "error")}
        row["variant"] = rec.get("task_variant") or ""
        row["source_fingerprint"] = rec.get("source_fingerprint") or ""
        row["data_fingerprint"] = rec.get("data_fingerprint") or ""
        row["git"] = rec.get("git") if isinstance(rec.get("git"), str) else ""
        config = rec.get("config") if isinstance(rec.get("config"), dict) else {}
        if config:  # recomputed, so records written before a seed-copying key was known still share their row
            row["config_id"] = config_id(config)
        row["control"] = _control(config, path)
        row["family"] = _family(config, path)
        row["selection_split"] = config.get("selection_split") or "val"
        row["overrides"] = " ".join(o for o in rec.get("overrides") or [] if o.startswith(LABEL_PREFIXES)
                                    and o.partition("=")[0].lstrip("+~") != CONTROL_KEY)
        row["base_id"] = _base_id(rec)
        # the task's own config: runs sharing it, a fold and a seed must have seen the same fold data
        row["task_config"] = stable_hash(semantic_config(config).get("task"), n=8) if config else ""
        row["dir"] = rec["_dir"]
        row["adjusted"] = rec.get("adjusted") or {}
        if row["data_source"] is None:  # failed before the task loaded: take it from the config
            row["data_source"] = "?"
        if row["data_source"] == "real" and random_features(rec):  # never `real`, whatever wrote the record
            row["data_source"] = "random_weights"
        row.update(_ci(rec, path))
        row["val_primary"] = val_at_selection(rec) if rec.get("status") == "ok" else math.nan
        row["parts_at_cap"] = _parts_at_cap(rec) if rec.get("status") == "ok" else ""
        row.update(_training(rec, path) if rec.get("status") == "ok" else {"selected_epoch": None,
                                                                          "stop_reason": None,
                                                                          "updates_at_selection": None})
        for k, v in (rec.get("metrics") or {}).items():
            row[f"m:{k}"] = v
        for key in config_keys:
            values[key].append(config_value(config, key))
        rows.append(row)
    df = pd.DataFrame(rows)
    for key, column in values.items():  # object columns: the configs' values as they are (200, not 200.0 beside None)
        df[f"c:{key}"] = pd.Series(column, index=df.index, dtype=object)
    return data_versions(df)


def data_versions(df: pd.DataFrame) -> pd.DataFrame:
    """Columns `data_files` (the files' fingerprint of each run, "" when unknown) and `data` (the section's data
    label: "" while a task variant's runs all read the same files, else the fingerprint).

    A record written before file fingerprints existed takes the fingerprint of a fingerprinted run of the same
    variant and fold that saw identical fold data (`data_fingerprint`, a hash of the loaded fold); otherwise its
    files are unknown. Tasks generated in memory have no fingerprint and keep one section per variant.
    """
    if df.empty:
        return df.assign(data_files=pd.Series(dtype=str), data=pd.Series(dtype=str))
    files = df.source_fingerprint.copy()
    seen: dict[tuple, set] = {}
    for r in df[(df.source_fingerprint != "") & (df.data_fingerprint != "")].itertuples():
        seen.setdefault((r.task, r.variant, r.data_source, r.fold, r.data_fingerprint), set()).add(r.source_fingerprint)
    for r in df[(df.source_fingerprint == "") & (df.data_fingerprint != "")].itertuples():
        match = seen.get((r.task, r.variant, r.data_source, r.fold, r.data_fingerprint), set())
        if len(match) == 1:
            files[r.Index] = next(iter(match))
    df = df.assign(data_files=files, data="")
    for _, g in df.groupby(VARIANT, sort=False):
        if len(set(g.data_files) - {""}) > 1:  # the files changed under this variant: one section per version
            df.loc[g.index, "data"] = g.data_files.replace("", DATA_UNKNOWN)
    return df


def same_data_conflicts(df: pd.DataFrame) -> dict[tuple, list[str]]:
    """Per task variant, runs without a files fingerprint (tasks generated in memory, older records) that share
    the task config, fold and seed, so should have loaded the same fold, yet recorded different
    `data_fingerprint`s (e.g. the generator changed between them): one line per fold and seed."""
    out: dict[tuple, list[str]] = {}
    if df.empty or "task_config" not in df:
        return out
    ok = df[(df.status == "ok") & (df.data_files == "") & (df.data_fingerprint != "") & (df.task_config != "")]
    for key, g in ok.groupby([*VARIANT, "task_config", "fold", "seed"], sort=True):
        if g.data_fingerprint.nunique() > 1:
            seen = "; ".join(f"{fp} ({', '.join(sorted(h.method))})" for fp, h in g.groupby("data_fingerprint"))
            out.setdefault(tuple(key[:3]), []).append(f"fold {key[4]}, seed {key[5]}: data fingerprints {seen}")
    return out


def mixed_data(df: pd.DataFrame) -> list[str]:
    """One line per task variant whose runs read different files: its versions, run counts, a record of each."""
    out = []
    if df.empty:
        return out
    for (task, variant, source), g in df[df.data != ""].groupby(VARIANT, sort=True):
        versions = "; ".join(f"{fp} ({_runs(len(h))}, e.g. {h.dir.iloc[0]}/record.json)"
                             for fp, h in g.groupby("data", sort=True))
        out.append(f"{task} — {variant or '(default variant)'} — {source} data: runs on different data files: "
                   f"{versions}")
    for (task, variant, source), lines in same_data_conflicts(df).items():
        out.append(f"{task} — {variant or '(default variant)'} — {source} data: runs of one config, fold and seed "
                   f"saw different data: {'; '.join(lines)}")
    return out
