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
    """Support-weighted F1, supports counted in y_true (the argument order matters, see
    docs/datasets.md#metrics-mmsa)."""
    return float(f1_score(y_true, y_pred, average="weighted", zero_division=0))


# --- MOSI / MOSEI sentiment: the MMSA suite (thuiar/MMSA and mdswyz/DMD utils/metricsTop.py;
# docs/datasets.md#metrics-mmsa). Scores are fractions (papers show ×100); MAE and Corr on unclipped values.
# MMSA's names:
# has0_acc2 = Has0_acc_2, has0_f1 = Has0_F1_score, non0_acc2 = Non0_acc_2 (DMD's "Acc_2"), non0_f1 =
# Non0_F1_score (DMD's "F1_score"), acc5 = Mult_acc_5, acc7 = Mult_acc_7, mae = MAE, corr = Corr.

def _flat64(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t, p = np.asarray(y_true, np.float64).ravel(), np.asarray(y_pred, np.float64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} values, y_pred {p.size}")
    return t, p


def has0_acc2(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Negative vs non-negative over all samples: (y >= 0) against (p >= 0)."""
    t, p = _flat64(y_true, y_pred)
    return accuracy(t >= 0, p >= 0)


def has0_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Weighted F1 of (y >= 0) against (p >= 0), truth first (supports counted in y)."""
    t, p = _flat64(y_true, y_pred)
    return f1_weighted(t >= 0, p >= 0)


def _non_zero(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(y > 0, p > 0) over the samples whose label is not exactly 0; None if every label is 0."""
    t, p = _flat64(y_true, y_pred)
    keep = t != 0
    return (t[keep] > 0, p[keep] > 0) if keep.any() else None


def non0_acc2(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Negative vs positive, samples with label exactly 0 left out; a prediction of 0 counts as negative."""
    pair = _non_zero(y_true, y_pred)
    return float("nan") if pair is None else accuracy(*pair)


def non0_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    pair = _non_zero(y_true, y_pred)
    return float("nan") if pair is None else f1_weighted(*pair)


def mult_acc2(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """MulT's default binary accuracy (exclude_zero=False): (y > 0) against (p > 0) over all samples,
    so a zero label counts as negative (a third convention, yaohungt/Multimodal-Transformer eval_metrics.py)."""
    t, p = _flat64(y_true, y_pred)
    return accuracy(t > 0, p > 0)


def mult_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """MulT's binary F1 as its code computes it: f1_score(p > 0, y > 0, average="weighted"), arguments
    SWAPPED, so the class weights are prediction supports. Reported only to compare with MulT-protocol papers."""
    t, p = _flat64(y_true, y_pred)
    return f1_weighted(p > 0, t > 0)


def clipped_class_accuracy(y_true: np.ndarray, y_pred: np.ndarray, bound: float) -> float:
    """mean(round(clip(p, ±bound)) == round(clip(y, ±bound))) with numpy's round-half-to-even (0.5 -> 0)."""
    t, p = _flat64(y_true, y_pred)
    return accuracy(np.round(np.clip(t, -bound, bound)).astype(np.int64),
                    np.round(np.clip(p, -bound, bound)).astype(np.int64))


def acc7(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """7 classes -3..3: clip to [-3, 3], round half to even."""
    return clipped_class_accuracy(y_true, y_pred, 3.0)


def acc5(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """5 classes -2..2: clip to [-2, 2], round half to even."""
    return clipped_class_accuracy(y_true, y_pred, 2.0)


def acc3(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """3 classes -1..1 (MMSA computes it but does not return it)."""
    return clipped_class_accuracy(y_true, y_pred, 1.0)


# --- IEMOCAP as MulT-style four binary heads (neutral, happy, sad, angry): per-emotion accuracy and
# f1_weighted come from the classification table below (`accuracy_<emotion>`, `f1_weighted_mean`...).
# The 4-class view (docs/datasets.md#iemocap-metrics): accuracy ("WA" in SER papers) and unweighted average
# recall ("UA" = balanced accuracy), over the samples with exactly one emotion present.

def four_class_view(y_true_binary: np.ndarray, prob_present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(4-class truth, 4-class prediction) from binary truths [N, K] and P(present) [N, K].

    Truth = the one present emotion; prediction = the emotion with the highest P(present). Samples
    whose truth has no or several emotions present are left out (they have no 4-class label).
    """
    yb = np.asarray(y_true_binary)
    pp = np.asarray(prob_present, np.float64)
    if yb.shape != pp.shape or yb.ndim != 2:
        raise ValueError(f"four_class_view needs [N, K] truths and probabilities, got {yb.shape} and {pp.shape}")
    single = yb.sum(axis=1) == 1
    return yb[single].argmax(axis=1), pp[single].argmax(axis=1)


def acc4(y_true_binary: np.ndarray, prob_present: np.ndarray) -> float:
    """4-class accuracy (SER "WA") of the argmax over the emotions' P(present)."""
    t, p = four_class_view(y_true_binary, prob_present)
    return accuracy(t, p) if t.size else float("nan")


def uar4(y_true_binary: np.ndarray, prob_present: np.ndarray) -> float:
    """4-class unweighted average recall (SER "UA", balanced accuracy). Not MulT's `weighted_accuracy`."""
    t, p = four_class_view(y_true_binary, prob_present)
    return balanced_accuracy(t, p) if t.size else float("nan")


REGRESSION_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "ccc": ccc, "pearson": pearson, "mae": mae,
    # MMSA suite (MOSI / MOSEI); corr is Pearson r under MMSA's name
    "has0_acc2": has0_acc2, "has0_f1": has0_f1, "non0_acc2": non0_acc2, "non0_f1": non0_f1,
    "mult_acc2": mult_acc2, "mult_f1": mult_f1, "acc7": acc7, "acc5": acc5, "acc3": acc3, "corr": pearson,
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
