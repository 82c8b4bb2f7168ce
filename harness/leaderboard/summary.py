"""Per-row summaries: one line per (section, method, config, metric) with mean, sample std, run counts, the row's
label, role and flags."""

from __future__ import annotations

import math

import pandas as pd

from harness.leaderboard.common import FAMILY_KEY, ROW, SECTION, LeaderboardError, _run_name
from harness.leaderboard.flags import _flags


def label_of(method: str, control: str, overrides: str) -> str:
    return method + (f" · PI {control}" if control != "none" else "") + (f" [{overrides}]" if overrides else "")


def _row_family(g: pd.DataFrame) -> str:
    """The one Holm family of a row's runs: a row whose runs were launched in different families is an error (its
    comparisons cannot be corrected in two families at once)."""
    families = sorted(set(g.family))
    if len(families) > 1:
        seen = "; ".join(f"{f}: {', '.join(_run_name(r) for r in g[g.family == f].itertuples())} "
                         f"(e.g. {g[g.family == f].dir.iloc[0]}/record.json)" for f in families)
        raise LeaderboardError(f"row {label_of(g.method.iloc[0], g.control.iloc[0], g.overrides.iloc[0])} of "
                               f"{g.task.iloc[0]}: its runs declare different Holm families in config.{FAMILY_KEY} "
                               f"({seen}); re-run the row's runs in one family (`{FAMILY_KEY}=<name> "
                               "overwrite=true`), or run the other family's runs with a config of their own")
    return families[0]


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """Long table: one row per (task, variant, source, method, config, metric) with mean, std, n, the row's
    label, flags and (single-run rows) the primary metric's bootstrap CI."""
    if df.empty:
        return pd.DataFrame()
    keys = SECTION + ROW
    out = []
    for key, g in df.groupby(keys, dropna=False, sort=True):
        ok = g[g.status == "ok"]
        failed = g[g.status != "ok"]
        first = g.iloc[0]
        base = dict(zip(keys, key), label=label_of(first.method, first.control, first.overrides),
                    control=first.control, base_id=first.base_id, overrides=first.overrides,
                    family=_row_family(g), selected_on_test=bool((g.selection_split == "test").any()),
                    bound=g.bound.dropna().iloc[0] if g.bound.notna().any() else "",
                    n_runs=len(ok), n_failed=len(failed),
                    primary_metric=ok.primary_metric.iloc[0] if len(ok) else None,
                    failed_runs="; ".join(f"{r.run_key}: {r.error}" for r in failed.itertuples()),
                    **_flags(ok))
        single = ok.iloc[0] if len(ok) == 1 else None
        for c in ("ci_low", "ci_high", "ci_unit", "ci_n_units", "ci_n_resamples"):
            base[c] = single[c] if single is not None else (None if c == "ci_unit" else math.nan)
        metric_cols = [c for c in g.columns if c.startswith("m:") and ok[c].notna().any()]
        if not metric_cols:
            out.append({**base, "metric": None, "mean": math.nan, "std": math.nan})
        for c in metric_cols:
            vals = ok[c].dropna().astype(float)
            out.append({**base, "metric": c[2:], "mean": vals.mean(),
                        "std": vals.std(ddof=1) if len(vals) > 1 else math.nan})
    return pd.DataFrame(out)
