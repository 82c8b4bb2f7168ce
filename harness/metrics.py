"""Every metric the harness reports, in one module.

Library implementations wherever one exists (scikit-learn, scipy); CCC has none, so it is written
out with population moments (ddof=0) over all samples concatenated, as the ABAW challenge scores.
Each metric is tested against an independent computation in tests/test_metrics.py.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy.stats import pearsonr
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, mean_absolute_error

# Metrics where a lower value is better; every other metric is higher-is-better.
LOWER_IS_BETTER_PREFIXES = ("mae", "mse", "rmse", "loss")


def higher_is_better(metric: str) -> bool:
    return not metric.startswith(LOWER_IS_BETTER_PREFIXES)


def ccc(y_true: np.ndarray, y_pred: np.ndarray, ddof: int = 0) -> float:
    """Concordance correlation coefficient (Lin 1989) of two 1-D arrays.

    2·cov / (var_t + var_p + (mean_t − mean_p)²) with moments of the given ddof (0 = population,
    the ABAW convention). Both inputs constant with equal means is 0/0 and returns nan.
    """
    t = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_pred, dtype=np.float64).ravel()
    if t.shape != p.shape or t.size == 0:
        raise ValueError(f"ccc needs two non-empty arrays of equal length, got {t.shape} and {p.shape}")
    mt, mp = t.mean(), p.mean()
    cov = ((t - mt) * (p - mp)).sum() / (t.size - ddof)
    denom = t.var(ddof=ddof) + p.var(ddof=ddof) + (mt - mp) ** 2
    return float(2 * cov / denom) if denom > 0 else float("nan")


def pearson(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Pearson r; nan when either side is constant (scipy warns and returns nan)."""
    t, p = np.asarray(y_true, np.float64).ravel(), np.asarray(y_pred, np.float64).ravel()
    if np.ptp(t) == 0 or np.ptp(p) == 0:
        return float("nan")
    return float(pearsonr(t, p).statistic)


def mae(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(mean_absolute_error(np.ravel(y_true), np.ravel(y_pred)))


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(accuracy_score(y_true, y_pred))


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(balanced_accuracy_score(y_true, y_pred))


def f1_macro(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(f1_score(y_true, y_pred, average="macro", zero_division=0))


def f1_weighted(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Support-weighted F1, supports counted in y_true (the argument order matters, see datasets.md §6.2)."""
    return float(f1_score(y_true, y_pred, average="weighted", zero_division=0))


REGRESSION_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "ccc": ccc, "pearson": pearson, "mae": mae,
}
CLASSIFICATION_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": accuracy, "balanced_accuracy": balanced_accuracy, "f1_macro": f1_macro, "f1_weighted": f1_weighted,
}


def score_columns(y_true: dict[str, np.ndarray], y_pred: dict[str, np.ndarray], names: tuple[str, ...] | list[str],
                  kind: str) -> dict[str, float]:
    """Score per-dimension columns by metric name.

    Names: `<metric>` (single-dimension targets), `<metric>_<dim>` (one dimension) and
    `<metric>_mean` (the mean over dimensions), with <metric> from REGRESSION_METRICS or
    CLASSIFICATION_METRICS according to `kind`.
    """
    table = REGRESSION_METRICS if kind == "regression" else CLASSIFICATION_METRICS
    dims = list(y_true)
    out: dict[str, float] = {}
    for name in names:
        # metric names may themselves contain "_" (f1_macro): find the longest known prefix
        for candidate in sorted(table, key=len, reverse=True):
            if name == candidate or name.startswith(candidate + "_"):
                base, dim = candidate, name[len(candidate) + 1:]
                break
        else:
            raise KeyError(f"unknown metric '{name}' for a {kind} target (known: {sorted(table)})")
        fn = table[base]
        if dim == "":
            if len(dims) != 1:
                out[name] = float(np.mean([fn(y_true[d], y_pred[d]) for d in dims]))
            else:
                out[name] = fn(y_true[dims[0]], y_pred[dims[0]])
        elif dim == "mean":
            out[name] = float(np.mean([fn(y_true[d], y_pred[d]) for d in dims]))
        elif dim in y_true:
            out[name] = fn(y_true[dim], y_pred[dim])
        else:
            raise KeyError(f"metric '{name}' names dimension '{dim}', the target has {dims}")
    return out
