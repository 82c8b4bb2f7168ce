"""The paired statistics: each row against the student (same training recipe) and each method against its
privileged-information controls, runs paired by (fold, seed) on the primary metric, Holm per family
(harness/stats.py does the arithmetic)."""

from __future__ import annotations

import math

import pandas as pd

from harness import stats
from harness.leaderboard.common import CONTROLS, REFERENCE, ROW, SECTION, LeaderboardError
from harness.leaderboard.summary import _row_family


def _values(g: pd.DataFrame, metric: str) -> tuple[dict, list[str]]:
    """{(fold, seed): primary metric} of a row's ok runs; runs without a finite value are named apart."""
    values, missing, where = {}, [], {}
    col = f"m:{metric}"
    for r in g.to_dict("records"):
        key = (int(r["fold"]), int(r["seed"]))
        if key in where:
            raise LeaderboardError(f"{r['dir']}/record.json and {where[key]}/record.json: the same row (config_id "
                                   f"{r['config_id']}) has two runs with fold={key[0]}, seed={key[1]}")
        where[key] = r["dir"]
        v = r.get(col)
        if v is None or pd.isna(v) or not math.isfinite(float(v)):
            missing.append(f"f{key[0]}-s{key[1]}")
        else:
            values[key] = float(v)
    return values, missing


def _recipe(overrides: str) -> str:
    """The training recipe in a row's label overrides (train.* and model.*): what a student must share with the
    row it is compared with (lupi's rows all train with the paper's settings, not the harness defaults)."""
    return " ".join(sorted(o for o in overrides.split() if o.startswith(("train.", "model."))))


def _reference(rows: dict, recipe: str = "", selection: str = "val") -> tuple | None:
    """The student row a row is compared with: method student, no control, the same training recipe (no
    overrides at all for the harness defaults), else the default student; the most runs first. A student selected
    on the same split as the row (selection_split) first."""
    cands = [(k, g) for k, g in rows.items() if k[0] == REFERENCE and g.control.iloc[0] == "none"
             and (_recipe(g.overrides.iloc[0]) == recipe if recipe else not g.overrides.iloc[0])]
    if not cands:  # no student trained with this recipe: the default student, as the label shows the recipe
        return _reference(rows, selection=selection) if recipe else None
    return sorted(cands, key=lambda kg: ((kg[1].selection_split.iloc[0] if "selection_split" in kg[1] else "val")
                                         != selection, -len(kg[1]), str(kg[0][1])))[0][0]


def _comparison(section: tuple, key: tuple, reference: str, a: pd.DataFrame, b: pd.DataFrame, metric: str) -> dict:
    va, missing_a = _values(a, metric)
    vb, missing_b = _values(b, metric)
    p = stats.pair(va, vb)
    test = stats.paired_test(p.deltas)
    name = lambda k: f"f{k[0]}-s{k[1]}"  # noqa: E731
    return {**dict(zip(SECTION, section)), **dict(zip(ROW, key)), "reference": reference,
            "family": _row_family(a), "metric": metric,
            **test.as_dict(), "unpaired": [name(k) for k in p.only_a] + [f"{m} (no value)" for m in missing_a],
            "unpaired_reference": [name(k) for k in p.only_b] + [f"{m} (no value)" for m in missing_b]}


def compare(df: pd.DataFrame) -> pd.DataFrame:
    """One row per comparison: each row of a section against the student, and each method row against its
    privileged-information controls; paired by (fold, seed) on the primary metric; Holm per section, reference
    kind and the comparing row's family (`stats.family`)."""
    cols = [*SECTION, *ROW, "reference", "family", "metric", "n", "mean", "ci_low", "ci_high", "p_t", "p_sign_flip",
            "sign_flip_exact", "min_p_sign_flip", "unpaired", "unpaired_reference", "p_holm", "significant"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    ok = df[df.status == "ok"]
    out = []
    for section, sec in ok.groupby(SECTION, sort=True):
        metric = sec.primary_metric.dropna().iloc[0] if sec.primary_metric.notna().any() else None
        if metric is None:
            continue
        rows = {k: g for k, g in sec.groupby(ROW, sort=True)}
        found = []
        for k, g in rows.items():
            ref = _reference(rows, _recipe(g.overrides.iloc[0]),
                             g.selection_split.iloc[0] if "selection_split" in g else "val")
            if ref is not None and k != ref:
                found.append(_comparison(section, k, REFERENCE, g, rows[ref], metric))
        for k, g in rows.items():
            if g.control.iloc[0] != "none":
                continue
            for control in CONTROLS:
                match = [c for c, h in rows.items() if c[0] == k[0] and h.control.iloc[0] == control
                         and h.base_id.iloc[0] == g.base_id.iloc[0]]
                if match:
                    found.append(_comparison(section, k, f"PI {control}", g, rows[match[0]], metric))
        for reference, name in dict.fromkeys((c["reference"], c["family"]) for c in found):
            family = [c for c in found if (c["reference"], c["family"]) == (reference, name)]
            adjusted, reject = stats.holm([c["p_t"] for c in family])
            for c, p, r in zip(family, adjusted, reject):
                c.update(p_holm=float(p), significant=bool(r))
        out += found
    return pd.DataFrame(out, columns=cols)
