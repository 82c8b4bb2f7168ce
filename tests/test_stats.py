"""harness.stats against hand-worked numbers, brute-force enumeration, scipy, and simulated metric tables."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from harness.stats import (cluster_bootstrap_ci, holm, metric_ci, min_sign_flip_p, pair, paired_test, unit_rows)


# --- paired comparison: hand-worked ------------------------------------------------------------------

def test_paired_t_hand_worked_with_two_degrees_of_freedom():
    """d = (0.1, 0.2, 0.1): mean 2/15, sd 0.057735, se 1/30, t = 4 on 2 df.

    With 2 df the t distribution has a closed form: F(t) = 1/2 + t / (2 sqrt(2 + t^2)), so the two-sided
    p is 1 - t / sqrt(2 + t^2), and the quantile of level a is (2a - 1) sqrt(2 / (4 a (1 - a))).
    """
    res = paired_test([0.1, 0.2, 0.1])
    assert res.n == 3 and res.mean == pytest.approx(2 / 15)
    assert res.p_t == pytest.approx(1 - 4 / math.sqrt(18), rel=1e-9)  # 0.057191
    q = 0.95 * math.sqrt(2 / (4 * 0.975 * 0.025))  # 4.302653
    assert res.ci_low == pytest.approx(2 / 15 - q / 30, rel=1e-9)
    assert res.ci_high == pytest.approx(2 / 15 + q / 30, rel=1e-9)
    # every sign the same: 2 of the 8 sign patterns reach |mean| >= 2/15
    assert res.p_sign_flip == pytest.approx(2 / 8) and res.sign_flip_exact


def test_sign_flip_hand_worked_and_against_brute_force_enumeration():
    # d = (3, -1, 2, 4), sum 8: |sum| >= 8 for the sign patterns flipping {} or {1} (sums 10, 8) and their
    # mirror images (-10, -8): 4 of 16
    assert paired_test([3, -1, 2, 4]).p_sign_flip == pytest.approx(4 / 16)
    rng = np.random.default_rng(1)
    for n in (2, 5, 7, 9):
        d = rng.normal(0.3, 1.0, n)
        sums = np.array([np.dot(s, d) for s in itertools.product((-1, 1), repeat=n)])
        brute = np.mean(np.abs(sums) >= abs(d.sum()) * (1 - 1e-12))
        assert paired_test(d).p_sign_flip == pytest.approx(brute, rel=1e-12), n


def test_paired_t_matches_scipy_ttest_rel_on_the_runs():
    rng = np.random.default_rng(2)
    a, b = rng.normal(0.5, 0.1, 8), rng.normal(0.45, 0.1, 8)
    res = paired_test(a - b)
    ref = sps.ttest_rel(a, b)
    assert res.p_t == pytest.approx(ref.pvalue, rel=1e-12)
    ci = ref.confidence_interval(0.95)
    assert (res.ci_low, res.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-12)
    # the interval excludes 0 exactly when p < 0.05: the marker and the interval never disagree
    for shift in np.linspace(-0.2, 0.2, 41):
        r = paired_test(a - b + shift)
        assert (r.p_t < 0.05) == (r.ci_low > 0 or r.ci_high < 0)


def test_five_pairs_sign_flip_floor_and_the_t_test_that_can_reject():
    d = [1.0, 1.2, 0.9, 1.1, 1.05]
    res = paired_test(d)
    assert min_sign_flip_p(5) == 0.0625 and res.min_p_sign_flip == 0.0625
    assert res.p_sign_flip == pytest.approx(0.0625)  # the floor: it can never go below, never reject at 0.05
    assert res.p_t < 1e-4  # t = 1.05 / (0.1118 / sqrt 5) = 21.0 on 4 df
    assert res.p_t == pytest.approx(2 * sps.t.sf(1.05 / (np.std(d, ddof=1) / math.sqrt(5)), 4), rel=1e-9)
    assert min_sign_flip_p(10) == pytest.approx(2 / 1024)


def test_degenerate_pair_counts():
    none = paired_test([])
    assert none.n == 0 and math.isnan(none.mean) and math.isnan(none.p_t)
    one = paired_test([0.2])
    assert one.n == 1 and one.mean == 0.2 and math.isnan(one.p_t) and math.isnan(one.ci_low)
    flat = paired_test([0.1, 0.1, 0.1])  # no spread: no t statistic, the interval is the value
    assert math.isnan(flat.p_t) and flat.ci_low == flat.ci_high == pytest.approx(0.1)
    assert flat.p_sign_flip == pytest.approx(2 / 8)
    with pytest.raises(ValueError, match="finite"):
        paired_test([0.1, float("nan")])


def test_pairing_by_key_names_the_unpaired():
    p = pair({(0, 0): 0.5, (0, 1): 0.6, (0, 2): 0.7}, {(0, 1): 0.4, (0, 2): 0.5, (0, 3): 0.1})
    assert p.keys == [(0, 1), (0, 2)] and p.only_a == [(0, 0)] and p.only_b == [(0, 3)]
    np.testing.assert_allclose(p.deltas, [0.2, 0.2])


def test_holm_hand_worked():
    # sorted: 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> made monotone: 0.03, 0.06, 0.06
    adj, rej = holm([0.01, 0.04, 0.03])
    np.testing.assert_allclose(adj, [0.03, 0.06, 0.06])
    assert rej.tolist() == [True, False, False]
    adj, rej = holm([0.01, float("nan"), 0.03])  # no test: not counted in the family (m = 2)
    np.testing.assert_allclose(adj, [0.02, np.nan, 0.03])
    assert rej.tolist() == [True, False, True]


# --- simulated metric tables ---------------------------------------------------------------------------

def simulated_table(rng, n: int, effect: float, noise: float = 0.02):
    """Metric of the student and of a method for n seeds (fold 0): a seed-level component both share (the
    split and initialisation luck), plus each its own run noise; the method adds `effect`."""
    shared = rng.normal(0.4, 0.05, n)
    student = {(0, s): shared[s] + rng.normal(0, noise) for s in range(n)}
    method = {(0, s): shared[s] + effect + rng.normal(0, noise) for s in range(n)}
    return method, student


def test_null_tables_reject_at_the_stated_rate():
    rng = np.random.default_rng(3)
    tables = [simulated_table(rng, 10, 0.0) for _ in range(2000)]
    rejected = sum(paired_test(pair(m, s).deltas, sign_flip=False).p_t < 0.05 for m, s in tables)
    assert sps.binomtest(rejected, 2000, 0.05).pvalue > 0.001, rejected / 2000
    # the exact sign-flip test has size at most 0.05 (fewer tables: scipy enumerates 1024 patterns each)
    flips = sum(paired_test(pair(m, s).deltas).p_sign_flip < 0.05 for m, s in tables[:200])
    assert sps.binomtest(flips, 200, 0.05, alternative="greater").pvalue > 0.001, flips / 200


def test_planted_effect_of_one_sd_is_detected_at_the_t_tests_power():
    rng = np.random.default_rng(4)
    sd_delta = 0.02 * math.sqrt(2)  # the paired difference's sd
    tables = [simulated_table(rng, 10, sd_delta) for _ in range(1000)]
    detected = sum(paired_test(pair(m, s).deltas, sign_flip=False).p_t < 0.05 for m, s in tables)
    crit = sps.t.ppf(0.975, 9)
    power = sps.nct.sf(crit, 9, math.sqrt(10)) + sps.nct.cdf(-crit, 9, math.sqrt(10))  # 0.80
    assert power > 0.75 and detected / 1000 > 0.7
    assert sps.binomtest(detected, 1000, power).pvalue > 0.001, (detected / 1000, power)


def test_holm_keeps_the_familywise_error_of_a_null_section(monkeypatch):
    """Sections of 4 methods none of which differs from the student: any rejection after Holm is a
    family-wise error; its rate stays at or under 0.05. Without the correction it would be near 1-0.95^4."""
    import gc
    # statsmodels' Holm branch calls gc.collect() on every call (~80 ms in a process holding torch): harmless
    # for a leaderboard's few sections, 40 s for these 500; the numbers do not depend on it
    monkeypatch.setattr(gc, "collect", lambda *args: 0)
    rng = np.random.default_rng(5)
    any_raw, any_holm, n_sections = 0, 0, 500
    for _ in range(n_sections):
        ps = [paired_test(pair(*simulated_table(rng, 10, 0.0)).deltas, sign_flip=False).p_t for _ in range(4)]
        any_raw += min(ps) < 0.05
        any_holm += holm(ps)[1].any()
    assert sps.binomtest(any_holm, n_sections, 0.05, alternative="greater").pvalue > 0.001, any_holm / n_sections
    assert any_raw / n_sections > 0.12  # 1 - 0.95^4 = 0.185: the correction is doing something


# --- cluster bootstrap -------------------------------------------------------------------------------

def test_unit_rows_groups_rows_by_unit_in_order_of_appearance():
    rows = unit_rows(np.array(["b", "a", "b", "c", "a"]))
    assert [r.tolist() for r in rows] == [[0, 2], [1, 4], [3]]


def test_cluster_bootstrap_of_the_mean_equals_scipys_bootstrap_of_unit_means():
    """Equal-sized units: the mean of the drawn units' rows is the mean of their unit means, and the same
    seed draws the same units, so the interval is scipy's percentile interval on the unit means."""
    rng = np.random.default_rng(6)
    k, size = 12, 5
    units = np.repeat([f"u{i}" for i in range(k)], size)
    values = rng.normal(0, 1, k)[np.arange(k).repeat(size)] + rng.normal(0, 0.3, k * size)
    ci = cluster_bootstrap_ci(units, lambda rows: values[rows].mean(), 500, seed=11)
    ref = sps.bootstrap((values.reshape(k, size).mean(1),), np.mean, n_resamples=500, method="percentile",
                        rng=np.random.default_rng(11)).confidence_interval
    assert (ci.low, ci.high) == pytest.approx((ref.low, ref.high), rel=1e-12)
    assert ci.n_units == k and ci.n_resamples == 500


def test_cluster_bootstrap_draws_whole_units_and_is_wider_than_a_row_bootstrap_on_clustered_data():
    rng = np.random.default_rng(7)
    sizes = rng.integers(3, 15, 30)
    units = np.repeat(np.arange(30), sizes)
    values = rng.normal(0, 1, 30)[units] + rng.normal(0, 0.1, len(units))  # strong unit effect

    def stat(rows):
        counts = np.bincount(units[rows], minlength=30)
        assert np.all(counts % sizes == 0), "a unit was split"  # every drawn unit comes with all its rows
        return values[rows].mean()

    ci = cluster_bootstrap_ci(units, stat, 400, seed=0)
    rows_ci = sps.bootstrap((values,), np.mean, n_resamples=400, method="percentile",
                            rng=np.random.default_rng(0)).confidence_interval
    assert (ci.high - ci.low) > 2.5 * (rows_ci.high - rows_ci.low)
    # and about as wide as the spread of unit-level means says: 2 · 1.96 · sd / sqrt(units), within 30 %
    unit_means = np.bincount(units, weights=values) / sizes
    expected = 2 * 1.96 * np.std(unit_means, ddof=1) / math.sqrt(30)
    assert (ci.high - ci.low) == pytest.approx(expected, rel=0.3)


def test_metric_ci_record_field():
    preds = pd.DataFrame({"y_true": [0, 1, 1, 0, 1, 0, 1, 1], "y_pred": [0, 1, 0, 0, 1, 1, 1, 1]})
    acc = lambda df: float((df.y_true == df.y_pred).mean())  # noqa: E731
    units = np.array(["a", "a", "b", "b", "c", "c", "d", "d"])
    out = metric_ci(preds, units, acc, "accuracy", "subject", 200, seed=3)
    lo, hi = out["accuracy"]
    assert 0 <= lo <= acc(preds) <= hi <= 1
    assert out["unit"] == "subject" and out["n_units"] == 4 and out["n_resamples"] == 200 and out["seed"] == 3
    # the same seed gives the same interval; a single unit gives none, and says why
    assert metric_ci(preds, units, acc, "accuracy", "subject", 200, seed=3)["accuracy"] == [lo, hi]
    one = metric_ci(preds, np.zeros(8), acc, "accuracy", "subject", 200, seed=3)
    assert one["accuracy"] is None and "no bootstrap interval" in one["note"]
    with pytest.raises(ValueError, match="7 unit ids for 8 prediction rows"):
        metric_ci(preds, units[:7], acc, "accuracy", "subject", 200, seed=3)


def test_sign_flip_beyond_the_exact_limit_draws_random_patterns_reproducibly():
    from harness.stats import EXACT_SIGN_FLIP_MAX_N, SIGN_FLIP_DRAWS

    rng = np.random.default_rng(8)
    d = rng.normal(0.1, 1.0, EXACT_SIGN_FLIP_MAX_N + 4)
    res = paired_test(d, seed=3)
    assert not res.sign_flip_exact and res.min_p_sign_flip == 0.0
    assert res.p_sign_flip == paired_test(d, seed=3).p_sign_flip  # seeded
    signs = rng.choice((-1, 1), size=(200_000, d.size))  # an independent Monte Carlo estimate of the same p
    mc = np.mean(np.abs(signs @ d) >= abs(d.sum()))
    assert res.p_sign_flip == pytest.approx(mc, abs=4 * math.sqrt(mc * (1 - mc) / SIGN_FLIP_DRAWS) + 1e-3)
