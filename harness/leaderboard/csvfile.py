"""leaderboard.csv: the summary with each row's paired comparisons joined on its primary-metric line (also
harness.api.leaderboard); leaderboard_ranks.csv: the cross-task summary (also harness.api.cross_task)."""

from __future__ import annotations

import pandas as pd

from harness.leaderboard.common import ROW, SECTION
from harness.leaderboard.layout import section_labels, section_layouts


def csv_table(summary: pd.DataFrame, comparisons: pd.DataFrame) -> pd.DataFrame:
    """The summary (one line per row and metric) with, on each row's primary-metric line, its comparisons:
    columns `vs_student_*`, `vs_pi_zeros_*`, `vs_pi_shuffle_*` (n pairs, mean Δ, CI, p values, Holm)."""
    if summary.empty or comparisons.empty:
        return summary
    out = summary.copy()
    # leaderboard.md's short label and variant tag of each row, beside `label` (method and every override)
    short, tags = {}, {}
    for layout in section_layouts(summary, comparisons):
        names = section_labels(layout)
        short.update({(*layout.section, *k): v for k, v in names.labels.items()})
        tags.update({(*layout.section, *k): v for k, v in names.tags.items()})
    keys = list(zip(*(out[c] for c in [*SECTION, *ROW])))
    at = out.columns.get_loc("label") + 1
    out.insert(at, "config_tag", [tags.get(k, "") for k in keys])
    out.insert(at, "short_label", [short.get(k, "") for k in keys])
    fields = ["n", "mean", "ci_low", "ci_high", "p_t", "p_sign_flip", "min_p_sign_flip", "p_holm", "significant",
              "unpaired", "unpaired_reference"]
    for reference, cmp in comparisons.groupby("reference", sort=False):
        prefix = "vs_" + reference.lower().replace(" ", "_") + "_"
        wide = cmp[[*SECTION, *ROW, "metric", *fields]].copy()
        for f in ("unpaired", "unpaired_reference"):
            wide[f] = wide[f].map(" ".join)
        wide["n"] = wide["n"].astype("Int64")  # stays an integer beside the empty cells of the other lines
        wide = wide.rename(columns={f: prefix + ("delta" if f == "mean" else f) for f in fields})
        out = out.merge(wide, on=[*SECTION, *ROW, "metric"], how="left")
    return out
