"""Cross-task summary: which method wins across the sections (Demšar, JMLR 2006).

Per data source, never across data sources (synthetic, mimic and real numbers are not pooled). In each section a
method enters once, with its configuration chosen on validation: the one whose runs' mean validation value of the
section's primary metric, at the evaluated model's selected epoch, is best (more runs, then config_id, break ties;
runs without a validation value, such as the lupi reproduction's fixed-budget runs without a validation split, come
after those with one and are chosen by the same tie-breaks). The test value never chooses. Left out: the upper bound (the teacher sees the privileged input at test),
privileged-information controls (diagnostics, not contenders) and rows selected on the test split. The `student`
lower bound enters: it is the baseline a distiller must beat. Within a section the entrants are ranked on the
mean test value of the primary metric, 1 = best, ties sharing their mean rank (scipy.stats.rankdata).

`mean_ranks` averages each method's ranks over the sections it ran on (the number of entrants differs between
sections, so these means are a reading aid, not a test). The Friedman test (scipy.stats.friedmanchisquare) and the
Nemenyi post-hoc comparison of the critical-difference diagram need every method in every section: `friedman` takes
the sections where all of the data source's methods ran, dropping the method with fewest sections (then by name)
while that leaves fewer than MIN_SECTIONS sections.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

from harness.leaderboard.common import ROW, SECTION
from harness.leaderboard.layout import natural_key
from harness.metrics import higher_is_better

MIN_SECTIONS = 2  # a rank test over fewer blocks says nothing
MIN_METHODS = 3  # scipy's Friedman test needs three groups at least
ALPHA = 0.05
COLUMNS = [*SECTION, "section", "primary", "method", "config_id", "label", "n_runs", "val", "test", "rank"]


def section_name(section: tuple) -> str:
    task, variant, _source, data = section
    return task + (f" — {variant}" if variant else "") + (f" — data files {data}" if data else "")


def entrants(df: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """One line per section and method (its configuration chosen on validation) with its test value and its rank
    in the section (COLUMNS)."""
    if summary.empty or df.empty:
        return pd.DataFrame(columns=COLUMNS)
    ok = df[df.status == "ok"]
    val = ok.groupby([*SECTION, *ROW], sort=False).val_primary.mean() if "val_primary" in ok else pd.Series()
    rows = summary[(summary.metric.notna()) & (summary.metric == summary.primary_metric)
                   & (summary.control == "none") & (summary.bound != "upper_bound") & (summary.n_runs > 0)]
    if "selected_on_test" in rows:
        rows = rows[~rows.selected_on_test.astype(bool)]
    out = []
    for section, sec in sorted(rows.groupby(SECTION, sort=False), key=lambda kv: natural_key(kv[0])):
        primary = sec.primary_metric.iloc[0]
        better = 1 if higher_is_better(primary) else -1
        chosen = []
        for method, g in sec.groupby("method", sort=True):
            def key(r):  # best validation first (NaN last), then more runs, then config_id
                v = val.get((*section, method, r.config_id), math.nan)
                return (math.isnan(v), -better * v if not math.isnan(v) else 0.0, -int(r.n_runs), str(r.config_id))
            best = sorted(g.itertuples(), key=key)[0]
            if math.isnan(best.mean):
                continue
            chosen.append({**dict(zip(SECTION, section)), "section": section_name(section), "primary": primary,
                           "method": method, "config_id": best.config_id, "label": best.label,
                           "n_runs": int(best.n_runs), "val": val.get((*section, method, best.config_id), math.nan),
                           "test": float(best.mean)})
        if len(chosen) < 2:  # one entrant: nothing to rank
            continue
        ranks = sps.rankdata([-better * c["test"] for c in chosen], method="average")
        out += [{**c, "rank": float(r)} for c, r in zip(chosen, ranks)]
    return pd.DataFrame(out, columns=COLUMNS)


def mean_ranks(ranked: pd.DataFrame) -> pd.DataFrame:
    """Per data source and method: mean rank over the sections it ran on, their number, the sections it won
    (rank 1, ties included), best mean rank first."""
    cols = ["data_source", "method", "mean_rank", "n_sections", "n_won"]
    if ranked.empty:
        return pd.DataFrame(columns=cols)
    out = ranked.groupby(["data_source", "method"], sort=True).agg(
        mean_rank=("rank", "mean"), n_sections=("rank", "size"), n_won=("rank", lambda r: int((r == 1).sum())))
    return out.reset_index().sort_values(["data_source", "mean_rank", "method"], kind="stable")[cols]


@dataclass(frozen=True)
class Friedman:
    """The Friedman test over a complete block of one data source: `ranks` is sections × methods (1 = best),
    `nemenyi` the Nemenyi post-hoc p values (None until asked: it needs scikit-posthocs), `cd` the critical
    difference of mean ranks at ALPHA."""
    data_source: str
    ranks: pd.DataFrame
    dropped: list[str]
    statistic: float
    pvalue: float
    cd: float

    @property
    def mean_ranks(self) -> pd.Series:
        return self.ranks.mean().sort_values(kind="stable")

    def nemenyi(self) -> pd.DataFrame:
        """Pairwise Nemenyi p values (scikit-posthocs' posthoc_nemenyi_friedman on the rank matrix)."""
        import scikit_posthocs  # only the report draws the diagram

        return scikit_posthocs.posthoc_nemenyi_friedman(self.ranks)


def complete_block(ranked: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Sections × methods ranks where every kept method ran in every kept section, and the methods dropped."""
    matrix = ranked.pivot(index="section", columns="method", values="rank")
    order = list(dict.fromkeys(ranked.section))  # the leaderboard's section order
    matrix = matrix.loc[order]
    dropped: list[str] = []
    while True:
        block = matrix.dropna()
        if len(block) >= MIN_SECTIONS or matrix.shape[1] <= MIN_METHODS:
            break
        fewest = sorted(matrix.columns, key=lambda m: (matrix[m].notna().sum(), m))[0]
        matrix = matrix.drop(columns=fewest)
        dropped.append(fewest)
    # ranks again within the block: a dropped method or one absent elsewhere changes the others' ranks
    return block.rank(axis=1, method="average"), dropped


def friedman(ranked: pd.DataFrame, data_source: str) -> Friedman | None:
    """The Friedman test of one data source's complete block, or None when it has fewer than MIN_SECTIONS sections
    or MIN_METHODS methods."""
    block, dropped = complete_block(ranked[ranked.data_source == data_source])
    if len(block) < MIN_SECTIONS or block.shape[1] < MIN_METHODS:
        return None
    block = block[sorted(block.columns)]
    statistic, pvalue = sps.friedmanchisquare(*(block[m].to_numpy() for m in block.columns))
    k, n = block.shape[1], len(block)
    # Demšar (2006) eq. after Table 5: CD = q_alpha sqrt(k(k+1)/(6N)), q_alpha the studentized range quantile / sqrt 2
    q = sps.studentized_range.ppf(1 - ALPHA, k, np.inf) / math.sqrt(2)
    cd = float(q * math.sqrt(k * (k + 1) / (6 * n)))
    return Friedman(data_source, block, dropped, float(statistic), float(pvalue), cd)


def summary_table(ranked: pd.DataFrame) -> pd.DataFrame:
    """The cross-task summary as one table (leaderboard_ranks.csv, harness.api.cross_task): every entrant's line
    with its rank, then per data source and method a line `section = "(mean)"` with its mean rank and, for the
    methods of the Friedman block, the block's mean rank, the test statistic, p and the critical difference."""
    lines = [ranked.assign(kind="section")]
    for source in sorted(set(ranked.data_source)):
        means = mean_ranks(ranked[ranked.data_source == source])
        test = friedman(ranked, source)
        means = means.assign(kind="mean", section="(mean over its sections)", rank=means.mean_rank)
        if test is not None:
            means["block_mean_rank"] = means.method.map(test.mean_ranks)
            means["block_sections"] = len(test.ranks)
            means["friedman_statistic"], means["friedman_p"], means["critical_difference"] = \
                test.statistic, test.pvalue, test.cd
        lines.append(means)
    return pd.concat(lines, ignore_index=True) if len(lines) > 1 else lines[0]
