"""The statistics behind the leaderboard's comparisons and a run's test-set confidence interval.

Library implementations only (scipy.stats, statsmodels); this module pairs runs, calls them and
packages what they return. tests/test_stats.py checks each against hand-worked numbers and simulations.

- Paired comparison of two methods over runs paired by (fold, seed): the mean paired difference with
  its t interval, the two-sided paired t-test p (`scipy.stats.ttest_1samp` on the differences) and the
  two-sided sign-flip permutation test p of the mean difference (`scipy.stats.permutation_test`, exact,
  every one of the 2^n sign patterns, up to EXACT_SIGN_FLIP_MAX_N pairs).
  The paired t p is the one the leaderboard corrects and marks: the exact sign-flip test cannot go
  below 2 / 2^n (0.0625 with the 5 seeds of a usual sweep), so with few pairs it can never reject at
  0.05, while the t-test can; its p also agrees with the t interval shown beside it (the interval
  excludes 0 exactly when p < 0.05). Its assumption, roughly normal differences, is reasonable for
  metrics averaged over a test set; the sign-flip p, which does not need it, is shown beside it.
- Holm's step-down correction over the comparisons of one leaderboard section
  (`statsmodels.stats.multitest.multipletests(method="holm")`).
- Cluster bootstrap CI of a metric on one run's test predictions: whole independent units (subjects,
  videos, or single samples) are resampled with replacement and the concatenated rows of the drawn
  units re-scored with the task's own metric (`scipy.stats.bootstrap`, percentile interval, on unit
  indices with a non-vectorized statistic).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Hashable, Mapping

import numpy as np
import pandas as pd
from scipy import stats as sps

CONFIDENCE = 0.95
ALPHA = 0.05
# Up to this many pairs the sign-flip test enumerates every sign pattern (2^16 = 65536); beyond, it draws
# SIGN_FLIP_DRAWS random patterns (its smallest p is then far below any threshold that matters).
EXACT_SIGN_FLIP_MAX_N = 16
SIGN_FLIP_DRAWS = 2**16
BOOTSTRAP_METHOD = "percentile"


def min_sign_flip_p(n: int) -> float:
    """Smallest two-sided p an exact sign-flip test of n pairs can give: every sign the same, 2 / 2^n."""
    return min(1.0, 2.0 / 2.0**n) if n > 0 else 1.0


@dataclass(frozen=True)
class Pairing:
    """Values of two runs sets matched by key (e.g. (fold, seed)); keys present on one side only."""

    keys: list
    a: np.ndarray
    b: np.ndarray
    only_a: list
    only_b: list

    @property
    def deltas(self) -> np.ndarray:
        return self.a - self.b


def pair(a: Mapping[Hashable, float], b: Mapping[Hashable, float]) -> Pairing:
    """Match a and b on their keys (sorted); keys without a partner are returned, not dropped silently."""
    keys = sorted(set(a) & set(b))
    return Pairing(keys=keys, a=np.array([a[k] for k in keys], np.float64),
                   b=np.array([b[k] for k in keys], np.float64),
                   only_a=sorted(set(a) - set(b)), only_b=sorted(set(b) - set(a)))


@dataclass(frozen=True)
class PairedTest:
    """Mean paired difference with its t interval, the paired t-test p and the sign-flip p (two-sided)."""

    n: int
    mean: float
    ci_low: float
    ci_high: float
    p_t: float
    p_sign_flip: float
    sign_flip_exact: bool
    min_p_sign_flip: float

    def as_dict(self) -> dict:
        return asdict(self)


def _mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis)


def paired_test(deltas: np.ndarray | list[float], confidence: float = CONFIDENCE, seed: int = 0,
                sign_flip: bool = True) -> PairedTest:
    """Tests of mean(deltas) = 0 over n paired differences.

    n = 0: everything nan. n = 1: the difference only. Differences without spread (all equal) have no t
    statistic: p_t is nan and the interval is the single value; the sign-flip p is still defined.
    `seed` only matters beyond EXACT_SIGN_FLIP_MAX_N pairs (random sign patterns). sign_flip=False skips
    the permutation test (p_sign_flip nan): scipy enumerates the 2^n patterns in Python, a few ms at n = 10.
    """
    d = np.asarray(deltas, np.float64).ravel()
    if not np.isfinite(d).all():
        raise ValueError(f"paired differences must be finite, got {d.tolist()}")
    n = d.size
    nan = float("nan")
    if n == 0:
        return PairedTest(0, nan, nan, nan, nan, nan, True, 1.0)
    mean = float(d.mean())
    if n == 1:
        return PairedTest(1, mean, nan, nan, nan, nan, True, 1.0)
    if np.ptp(d) == 0:
        lo = hi = mean
        p_t = nan
    else:
        res = sps.ttest_1samp(d, 0.0)
        ci = res.confidence_interval(confidence_level=confidence)
        lo, hi, p_t = float(ci.low), float(ci.high), float(res.pvalue)
    exact = n <= EXACT_SIGN_FLIP_MAX_N
    p_flip = nan
    if sign_flip:
        p_flip = float(sps.permutation_test((d,), _mean, permutation_type="samples", vectorized=True,
                                            n_resamples=np.inf if exact else SIGN_FLIP_DRAWS,
                                            alternative="two-sided", rng=np.random.default_rng(seed)).pvalue)
    return PairedTest(n, mean, lo, hi, p_t, p_flip, exact, min_sign_flip_p(n) if exact else 0.0)


def holm(pvalues: list[float] | np.ndarray, alpha: float = ALPHA) -> tuple[np.ndarray, np.ndarray]:
    """Holm-adjusted p-values and rejections at alpha; nan p-values (no test) stay nan and are not counted."""
    # statsmodels only here: the leaderboard corrects, a run (metric_ci) does not import it
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, np.float64)
    adjusted = np.full(p.shape, np.nan)
    reject = np.zeros(p.shape, bool)
    ok = np.isfinite(p)
    if ok.any():
        rej, adj, _, _ = multipletests(p[ok], alpha=alpha, method="holm")
        adjusted[ok], reject[ok] = adj, rej
    return adjusted, reject


@dataclass(frozen=True)
class BootstrapCI:
    low: float
    high: float
    n_units: int
    n_resamples: int


def unit_rows(units: np.ndarray) -> list[np.ndarray]:
    """Row indices of each distinct unit, in order of first appearance."""
    codes, _ = pd.factorize(pd.Series(np.asarray(units)), sort=False)
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    return np.split(order, bounds)


def cluster_bootstrap_ci(units: np.ndarray, statistic: Callable[[np.ndarray], float], n_resamples: int,
                         seed: int, confidence: float = CONFIDENCE) -> BootstrapCI:
    """Percentile CI of statistic(rows) when whole units are resampled with replacement.

    units: one unit id per row. statistic(rows) gets the row indices of the drawn units, concatenated
    (a unit drawn twice contributes its rows twice). Fewer than 2 units: no interval (nan).
    """
    rows_of = unit_rows(units)
    k = len(rows_of)
    if k < 2:
        return BootstrapCI(float("nan"), float("nan"), k, int(n_resamples))

    def stat(unit_index: np.ndarray) -> float:
        return statistic(np.concatenate([rows_of[i] for i in unit_index]))

    res = sps.bootstrap((np.arange(k),), stat, n_resamples=int(n_resamples), vectorized=False,
                        method=BOOTSTRAP_METHOD, confidence_level=confidence, rng=np.random.default_rng(seed))
    ci = res.confidence_interval
    return BootstrapCI(float(ci.low), float(ci.high), k, int(n_resamples))


def metric_ci(predictions: pd.DataFrame, units: np.ndarray, score: Callable[[pd.DataFrame], float], metric: str,
              unit_name: str, n_resamples: int, seed: int, confidence: float = CONFIDENCE) -> dict:
    """The record's `metrics_ci`: {metric: [lo, hi] | None, unit, n_units, n_resamples, ...}.

    score(predictions_subset) re-scores a table of prediction rows with the task's own metric.
    """
    if len(units) != len(predictions):
        raise ValueError(f"bootstrap units: {len(units)} unit ids for {len(predictions)} prediction rows")
    ci = cluster_bootstrap_ci(units, lambda rows: score(predictions.take(rows)), n_resamples, seed, confidence)
    interval = None if np.isnan(ci.low) or np.isnan(ci.high) else [ci.low, ci.high]
    out = {metric: interval, "unit": unit_name, "n_units": ci.n_units, "n_resamples": ci.n_resamples,
           "confidence": confidence, "method": BOOTSTRAP_METHOD, "seed": int(seed)}
    if ci.n_units < 2:
        out["note"] = f"{ci.n_units} {unit_name}(s) in the test split: no bootstrap interval"
    elif interval is None:
        out["note"] = f"{metric} is undefined (nan) on some resamples: no bootstrap interval"
    return out
