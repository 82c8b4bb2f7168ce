"""The cross-task summary (harness/leaderboard/crosstask.py) and the short row labels, against computations by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from test_leaderboard import write

from harness import api
from harness.leaderboard import collect, compare, render, section_layouts, summarise, write_leaderboard
from harness.leaderboard.crosstask import entrants, friedman, mean_ranks
from harness.leaderboard.layout import section_labels, variant_tag

SECTIONS = [f"variant {i}" for i in range(5)]
FULL = ["student", "kd", "pkdot", "mtpkdot"]  # in every section; dmd in one only, the teacher everywhere


def put(root, method: str, seed: int, value: float, variant: str, **kw):
    """test_leaderboard's `write` with a run key unique across sections (their task config is the same)."""
    key = f"f0-s{seed}-{variant.replace(' ', '')}-{kw.get('lr', 0.01)}-{kw.get('control')}-{kw.get('data_source')}"
    return write(root, method, seed, value, task_variant=variant, run_key=key, **kw)


def selected_log(val: float) -> dict:
    """A student log whose selected epoch has this validation ccc_mean (what the summary chooses a configuration on)."""
    return {"student": [{"epoch": 0, "selected": False, "val_ccc_mean": val - 0.5},
                        {"epoch": 1, "selected": True, "val_ccc_mean": val}]}


def grid(root) -> dict:
    """Two seeds per row; kd has a second configuration (method.lr=0.05) with the better test but the worse
    validation value: the summary must take the default one. Returns {(section, method): mean test value entered}."""
    rng = np.random.default_rng(7)
    entered = {}
    for variant in SECTIONS:
        for method in [*FULL, "teacher"] + (["dmd"] if variant == SECTIONS[0] else []):
            values = rng.uniform(0.2, 0.8, size=2)
            for seed, v in enumerate(values):
                put(root, method, seed, float(v), variant, logs=selected_log(0.6))
            entered[(variant, method)] = float(values.mean())
            if method == "kd":
                for seed in range(2):
                    put(root, method, seed, 0.99, variant, lr=0.05, logs=selected_log(0.1))
    return entered


def test_mean_ranks_choose_on_validation_and_leave_out_the_teacher(tmp_path):
    entered = grid(tmp_path)
    df = collect(tmp_path)
    ranked = entrants(df, summarise(df))
    assert "teacher" not in set(ranked.method)  # the upper bound sees the privileged input at test
    kd = ranked[ranked.method == "kd"]
    assert (kd.test < 0.99).all()  # the lr=0.05 configuration (test 0.99, validation 0.1) never enters
    # by hand: each section's methods ordered by mean test value, best first (no ties in uniform draws)
    by_hand = {}
    for variant in SECTIONS:
        values = {m: v for (s, m), v in entered.items() if s == variant and m != "teacher"}
        for r, m in enumerate(sorted(values, key=values.get, reverse=True), start=1):
            by_hand.setdefault(m, []).append(r)
    got = mean_ranks(ranked).set_index("method")
    for m, ranks in by_hand.items():
        assert got.loc[m, "mean_rank"] == pytest.approx(np.mean(ranks), abs=1e-12)  # same rationals
        assert got.loc[m, "n_sections"] == len(ranks) and got.loc[m, "n_won"] == ranks.count(1)
    assert got.loc["dmd", "n_sections"] == 1


def test_friedman_statistic_and_critical_difference_against_independent_computations(tmp_path):
    entered = grid(tmp_path)
    df = collect(tmp_path)
    test = friedman(entrants(df, summarise(df)), "synthetic")
    # dmd ran in one section: the complete block would be one section, so dmd is left out and named
    assert test.dropped == ["dmd"] and sorted(test.ranks.columns) == sorted(FULL) and len(test.ranks) == 5
    values = np.array([[entered[(s, m)] for m in sorted(FULL)] for s in SECTIONS])
    want = sps.friedmanchisquare(*values.T)  # on the raw test values: scipy ranks them itself
    # floats of two rankings of the same numbers, then the same formula: equal to round-off
    assert test.statistic == pytest.approx(want.statistic, rel=1e-12)
    assert test.pvalue == pytest.approx(want.pvalue, rel=1e-9)
    # Demšar (2006) eq. for chi2_F with the mean ranks R_j over N blocks of k methods (no ties here)
    n, k = values.shape
    mean_rank = pd.DataFrame(-values).rank(axis=1).mean().to_numpy()
    chi2 = 12 * n / (k * (k + 1)) * (np.sum(mean_rank ** 2) - k * (k + 1) ** 2 / 4)
    assert test.statistic == pytest.approx(chi2, rel=1e-12)
    # Demšar's Table 5a: q_0.05 = 2.569 for k = 4 (three decimals, hence the tolerance)
    assert test.cd == pytest.approx(2.569 * math.sqrt(k * (k + 1) / (6 * n)), abs=1e-3)


def test_summary_never_pools_data_sources(tmp_path):
    for source in ("synthetic", "mimic"):
        for variant in SECTIONS[:2]:
            for i, method in enumerate(FULL):
                put(tmp_path, method, 0, 0.1 * (i + 1) + (0.5 if source == "mimic" else 0), variant,
                    data_source=source)
    df = collect(tmp_path)
    ranked = entrants(df, summarise(df))
    assert ranked.groupby("data_source").section.nunique().to_dict() == {"mimic": 2, "synthetic": 2}
    text = render(summarise(df), df)
    assert "## Cross-task summary — mimic data" in text and "## Cross-task summary — synthetic data" in text
    mimic = text.split("## Cross-task summary — mimic data")[1].split("## Cross-task summary")[0]
    assert "MIMIC data" in mimic and "4 sections" not in mimic  # 2 sections each, never 4 pooled


def test_variant_tags_are_deterministic_unique_and_the_overrides_listed_once(tmp_path):
    assert [variant_tag(i) for i in (0, 1, 25, 26, 27)] == ["a", "b", "z", "aa", "ab"]
    for lr in (0.05, 0.01, 0.2):  # written in another order than the tags come out
        for seed in range(2):
            write(tmp_path, "kd", seed, 0.5 + lr, lr=lr)
            write(tmp_path, "kd", seed, 0.4, lr=lr, control="zeros")
    for seed in range(2):
        write(tmp_path, "student", seed, 0.4)
    df = collect(tmp_path)
    summary = summarise(df)
    layout = next(section_layouts(summary, compare(df)))
    names = section_labels(layout)
    again = section_labels(next(section_layouts(summarise(collect(tmp_path)), compare(collect(tmp_path)))))
    assert names == again
    kd_rows = {k: v for k, v in names.labels.items() if k[0] == "kd"}
    assert sorted(set(kd_rows.values())) == ["kd·a", "kd·a · PI zeros", "kd·b", "kd·b · PI zeros", "kd·c",
                                             "kd·c · PI zeros"]
    assert len(set(names.labels.values())) == len(names.labels)  # unique within the section
    # fewest overrides first (the default lr has none), then alphabetically: lr=0.05 before lr=0.2
    assert names.variants == [("kd·a", "(no overrides beyond the shared ones)"), ("kd·b", "method.lr=0.05"),
                              ("kd·c", "method.lr=0.2")]
    text = render(summary, df)
    assert text.count("`method.lr=0.05`") == 1 and "| kd·b · PI zeros" in text


def test_files_and_api_carry_the_same_summary(tmp_path):
    grid(tmp_path / "res")
    text, _ = write_leaderboard(tmp_path / "res", tmp_path / "lb.md", tmp_path / "lb.csv")
    on_disk = pd.read_csv(tmp_path / "lb_ranks.csv")
    from_api = api.cross_task(tmp_path / "res")
    assert from_api.to_csv(index=False) == (tmp_path / "lb_ranks.csv").read_text()  # the same table
    means = on_disk[on_disk.kind == "mean"].set_index("method")
    assert means.loc["kd", "mean_rank"] == pytest.approx(
        on_disk[(on_disk.kind == "section") & (on_disk.method == "kd")]["rank"].mean())
    assert means.friedman_statistic.dropna().nunique() == 1
    board = pd.read_csv(tmp_path / "lb.csv")
    assert {"short_label", "config_tag"} <= set(board.columns)
    assert board[board.label == "kd [method.lr=0.05]"].short_label.unique().tolist() == ["kd·b"]


def test_report_shows_the_summary_and_its_critical_difference_diagram(tmp_path):
    from harness.report import write_report

    grid(tmp_path / "res")
    write_report(tmp_path / "res", tmp_path / "report")
    html = (tmp_path / "report" / "index.html").read_text()
    df = collect(tmp_path / "res")
    test = friedman(entrants(df, summarise(df)), "synthetic")
    assert "Cross-task summary — synthetic data" in html
    assert f"χ²(3) = {test.statistic:.2f}" in html and f"{test.cd:.2f}" in html
    try:
        import scikit_posthocs  # noqa: F401  (a dependency; without it the page says how to install it)
    except ImportError:
        assert "scikit-posthocs is not installed" in html
        return
    assert (tmp_path / "report" / "cd-1.png").stat().st_size > 0 and 'src="cd-1.png"' in html
    # the diagram's bars come from the Nemenyi p values of the same rank matrix: symmetric, 1 on the diagonal
    p = test.nemenyi()
    assert list(p.columns) == list(test.ranks.columns) and np.allclose(np.diag(p), 1) and np.allclose(p, p.T)


def test_a_key_given_twice_counts_with_its_last_value():
    from harness.leaderboard.layout import effective_overrides

    assert effective_overrides("train.optimizer=rmsprop train.batch_size=32 train.optimizer=rmsprop_keras "
                               "train.batch_size=128") == ["train.optimizer=rmsprop_keras", "train.batch_size=128"]
    assert effective_overrides("") == []
