"""Every metric against an independent computation: numbers worked by hand, numpy, scipy, sklearn."""

import math

import numpy as np
import pytest
from scipy.stats import pearsonr
from sklearn.metrics import f1_score

from harness import metrics


def test_ccc_hand_worked_cases():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    assert metrics.ccc(y, y) == pytest.approx(1.0)
    c = y - y.mean()
    assert metrics.ccc(c, -c) == pytest.approx(-1.0)  # equal means (0), cov = -var
    # negated without centring: cov -1.25, denominator 1.25 + 1.25 + 5² = 27.5
    assert metrics.ccc(y, -y) == pytest.approx(-2.5 / 27.5)
    # constant offset +1: cov = var = 1.25, so CCC = 2.5 / (2.5 + 1) = 5/7
    assert metrics.ccc(y, y + 1) == pytest.approx(2.5 / 3.5)
    # constant prediction: covariance 0
    assert metrics.ccc(y, np.full(4, 2.5)) == 0.0
    # both constant with equal means: 0/0 -> nan
    assert math.isnan(metrics.ccc(np.ones(3), np.ones(3)))


def test_ccc_matches_numpy_population_moments_and_ddof_variant():
    rng = np.random.default_rng(0)
    t, p = rng.normal(size=200), rng.normal(size=200) * 0.5 + 0.3
    cov = np.cov(t, p, ddof=0)[0, 1]
    expected = 2 * cov / (np.var(t) + np.var(p) + (t.mean() - p.mean()) ** 2)
    assert metrics.ccc(t, p) == pytest.approx(expected, rel=1e-12)
    cov1 = np.cov(t, p, ddof=1)[0, 1]
    expected1 = 2 * cov1 / (np.var(t, ddof=1) + np.var(p, ddof=1) + (t.mean() - p.mean()) ** 2)
    assert metrics.ccc(t, p, ddof=1) == pytest.approx(expected1, rel=1e-12)


def test_ccc_concatenated_differs_from_per_video_mean():
    # Two "videos": perfect within each but offset between them. The challenge concatenates.
    a_t, a_p = np.array([0.0, 1.0]), np.array([0.0, 1.0])
    b_t, b_p = np.array([0.0, 1.0]), np.array([0.5, 1.5])
    concat = metrics.ccc(np.r_[a_t, b_t], np.r_[a_p, b_p])
    # by hand: t=[0,1,0,1] mean .5 var .25; p=[0,1,.5,1.5] mean .75 var .3125; cov .25
    assert concat == pytest.approx(2 * 0.25 / (0.25 + 0.3125 + 0.0625))
    assert concat != pytest.approx(np.mean([metrics.ccc(a_t, a_p), metrics.ccc(b_t, b_p)]))


def test_pearson_mae_against_scipy_numpy():
    rng = np.random.default_rng(1)
    t, p = rng.normal(size=50), rng.normal(size=50)
    assert metrics.pearson(t, p) == pytest.approx(np.corrcoef(t, p)[0, 1])
    assert metrics.pearson(t, p) == pytest.approx(pearsonr(t, p).statistic)
    assert metrics.mae(t, p) == pytest.approx(np.abs(t - p).mean())
    assert math.isnan(metrics.pearson(t, np.ones(50)))


def test_classification_metrics_hand_worked():
    y = np.array([0, 0, 0, 1, 1, 2])
    p = np.array([0, 0, 1, 1, 2, 2])
    assert metrics.accuracy(y, p) == pytest.approx(4 / 6)
    # per-class F1: c0 P=1 R=2/3 -> .8; c1 P=.5 R=.5 -> .5; c2 P=.5 R=1 -> 2/3
    f1s = np.array([0.8, 0.5, 2 / 3])
    assert metrics.f1_macro(y, p) == pytest.approx(f1s.mean())
    assert metrics.f1_weighted(y, p) == pytest.approx((3 * 0.8 + 2 * 0.5 + 1 * 2 / 3) / 6)
    assert metrics.balanced_accuracy(y, p) == pytest.approx((2 / 3 + 0.5 + 1) / 3)
    # weighted F1 weights by the support of y_true: swapping the arguments changes it
    assert metrics.f1_weighted(y, p) != pytest.approx(f1_score(p, y, average="weighted"))


def test_score_columns_names_and_means():
    yt = {"valence": np.array([0.0, 1, 2, 3]), "arousal": np.array([1.0, 0, 1, 0])}
    yp = {"valence": np.array([0.0, 1, 2, 3]), "arousal": np.array([0.0, 1, 0, 1])}
    out = metrics.score_columns(yt, yp, ["ccc_mean", "ccc_valence", "ccc_arousal", "mae_mean"], "regression")
    assert out["ccc_valence"] == pytest.approx(1.0)
    assert out["ccc_arousal"] == pytest.approx(-1.0)
    assert out["ccc_mean"] == pytest.approx(0.0)
    assert out["mae_mean"] == pytest.approx((0 + 1) / 2)
    cls = metrics.score_columns({"pain": np.array([0, 1, 1])}, {"pain": np.array([0, 1, 0])},
                                ["accuracy", "f1_macro"], "classification")
    assert cls["accuracy"] == pytest.approx(2 / 3)
    with pytest.raises(KeyError, match="unknown metric"):
        metrics.score_columns(yt, yp, ["cccc"], "regression")
    with pytest.raises(KeyError, match="names dimension"):
        metrics.score_columns(yt, yp, ["ccc_dominance"], "regression")
