"""`harness scaling`: the sample-size figure's numbers against independent computations (numpy and the t
distribution by hand), pairing by seed with the student of the same recipe, and the error for a missing key."""

from __future__ import annotations

import json
import math
from csv import DictReader
from pathlib import Path

import numpy as np
import pytest
from _records import hand_made_record
from scipy import stats as sps

from harness.cli import main
from harness.scaling import ScalingError, footnote, scaling_table

RECIPE = ["model.encoder=linear", "train.optimizer=rmsprop"]


def write(root: Path, method: str, experiment: int, n_train: int, seed: int, accuracy: float,
          overrides: list[str] | None = None, teacher: str | None = None) -> None:
    task = {"name": "lupi", "experiment": experiment, "d": 50, "n_train": n_train, "n_val": 0}
    config = {"method": {"name": method}, "task": task, "model": {"encoder": "linear"},
              "train": {"optimizer": "rmsprop"}, **({"teacher": {"modalities": teacher}} if teacher else {})}
    hand_made_record(root, method, seed, {"accuracy": accuracy, "f1_macro": accuracy}, task="lupi",
                     task_variant=f"experiment {experiment}, d=50, n_train={n_train}", primary_metric="accuracy",
                     config=config, overrides=RECIPE + (overrides or []))


def t_ci(values) -> tuple[float, float]:
    """The 95 % t interval written out: mean ± t_{0.975, n-1} · s / √n."""
    v = np.asarray(values, float)
    half = sps.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    return v.mean() - half, v.mean() + half


@pytest.fixture
def tree(tmp_path):
    rng = np.random.default_rng(0)
    truth = {}
    for n, gain in ((200, 0.07), (1000, 0.01)):
        for seed in range(6):
            s = 0.85 + 0.02 * rng.standard_normal()
            d = gain + 0.005 * rng.standard_normal()
            write(tmp_path, "student", 1, n, seed, s)
            write(tmp_path, "kd", 1, n, seed, s + d, ["method.recipe=gd"], teacher="privileged")
            truth.setdefault(("student", n), []).append(s)
            truth.setdefault(("kd", n), []).append(s + d)
    write(tmp_path, "kd", 1, 200, 99, 0.5, ["method.recipe=gd"], teacher="privileged")  # no student partner
    write(tmp_path, "teacher", 1, 200, 0, 0.95)  # one n only: not a line of the figure
    return tmp_path, truth


def test_means_intervals_and_paired_deltas_match_independent_computations(tree):
    root, truth = tree
    table, n_records = scaling_table(root, "lupi", "task.n_train")
    assert n_records == 2 * 2 * 6 + 2
    assert set(table.panel) == {"experiment 1, d=50"}  # the swept key's part left out of the variant
    assert "teacher" not in set(table.method)
    for n in (200, 1000):
        st = table[(table.method == "student") & (table.x == n)].iloc[0]
        assert st["mean"] == pytest.approx(np.mean(truth[("student", n)]))
        assert (st.ci_low, st.ci_high) == pytest.approx(t_ci(truth[("student", n)]))
        assert st.runs == 6
        kd = table[(table.method == "kd") & (table.x == n)].iloc[0]
        deltas = np.subtract(truth[("kd", n)], truth[("student", n)])
        assert kd.pairs == 6  # the seed-99 run has no student partner: left out
        assert kd.delta == pytest.approx(deltas.mean())
        assert (kd.delta_low, kd.delta_high) == pytest.approx(t_ci(deltas))
        assert kd.p_t == pytest.approx(sps.ttest_1samp(deltas, 0).pvalue)
    kd200 = table[(table.method == "kd") & (table.x == 200)].iloc[0]
    assert kd200.runs == 7 and kd200["mean"] == pytest.approx(np.mean(truth[("kd", 200)] + [0.5]))
    # the planted gains: 0.07 at n=200 clearly above 0, 0.01 at n=1000 far below it
    assert kd200.delta_low > 0.05


def test_cli_writes_the_figure_and_its_numbers(tree, tmp_path, capsys):
    root, truth = tree
    other = root / "synthetic" / "student" / "f0-s0-x"  # another task's record, whose config lacks task.n_train
    other.mkdir(parents=True)
    (other / "record.json").write_text(json.dumps({
        "schema_version": 1, "run_key": "f0-s0-x", "method": "student", "task": "synthetic", "fold": 0, "seed": 0,
        "status": "ok", "primary_metric": "accuracy", "data_source": "synthetic", "metrics": {"accuracy": 0.4},
        "config": {"method": {"name": "student"}, "task": {"name": "synthetic"}, "seed": 0, "fold": 0}}))
    out = tmp_path / "fig" / "sizes.png"
    assert main(["scaling", "--results", str(root), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    csv = out.with_suffix(".csv").read_text().splitlines()
    assert csv[0].startswith("panel,label,method,control,overrides,x,metric,mean")
    assert len(csv) == 1 + 4  # student and kd at two sizes
    assert {row["x"] for row in DictReader(csv)} == {"200", "1000"}
    # the other task's record leaves NaN in pandas' column of the key: x stays the configs' int (tick labels
    # read "200", not "200.0")
    table = scaling_table(root, "lupi", "task.n_train")[0]
    assert {str(x) for x in table.x} == {"200", "1000"}
    # the figure says its data are synthetic, as the leaderboard does
    assert {row["data"] for row in DictReader(csv)} == {"synthetic"}
    assert footnote(table, ["model.encoder=linear"]) == ("data: synthetic (not a real dataset: these numbers say "
                                                         "nothing about one); every row: model.encoder=linear")
    assert "wrote" in capsys.readouterr().out


def test_a_key_the_records_lack_is_named_with_the_fix(tree):
    root, _ = tree
    with pytest.raises(ScalingError, match=r"record\.json: config has no task\.n_samples.*--x"):
        scaling_table(root, "lupi", "task.n_samples")
    assert main(["scaling", "--results", str(root), "--task", "synthetic"]) == 2
