"""`harness reproduce`: every recipe under harness/conf/recipe/ runs with --smoke and its table is checked against an
independent computation from the records; every recipe error; --list; resume; failed and missing runs."""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats as sps

from harness.cli import main
from harness.config import Composer, compose_one
from harness.records import read_record, run_dir
from harness.reproduce import SMOKE_MIMIC, load_recipe, recipe_dir, recipe_names

RECIPES = recipe_names()
# The table prints 3 decimals: a printed number equals ours when they differ by at most half a unit of the last
# digit (the scipy/numpy arithmetic here and the harness's pandas/scipy may differ in the last bits only).
HALF_UNIT = 0.0005 + 1e-9


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["reproduce", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _table(markdown: str) -> list[dict]:
    """The rows of the first github table of a markdown text, as {header: cell}."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]


def _numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"[-+]?\d+\.\d+(?:e[-+]?\d+)?", text)]


def _independent_configs(composer, recipe, variant, arm, results: Path, cache: Path, from_files: bool):
    """Each run of a smoke arm composed by Hydra's full compose (not the sweep planner), one per sweep point."""
    mimic = ["task.source=mimic", *SMOKE_MIMIC.get(recipe.task, [])] if from_files else []
    folds = recipe.smoke_sweep.get("fold", [None])
    for fold in folds:
        for seed in recipe.smoke_sweep["seed"]:
            yield composer.compose([f"task={recipe.task}", *recipe.overrides, *variant.overrides, *arm.overrides,
                                    *mimic, *recipe.smoke_overrides, *recipe.smoke_arms.get(arm.name, []),
                                    f"seed={seed}",
                                    *([f"fold={fold}"] if fold is not None else []), f"results_dir={results}",
                                    f"cache_dir={cache}"])


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_runs_with_smoke_and_its_table_is_the_records(name, tmp_path, capsys):
    check_smoke(name, tmp_path, capsys)


def test_a_recipe_of_a_task_read_from_files_smokes_on_its_mimic_tree(tmp_path, capsys):
    """The path every file-task recipe (biovid, affwild2, mosi...) takes: task.source=mimic at the tests' sizes."""
    path = tmp_path / "tiny-biovid.yaml"
    path.write_text(yaml.safe_dump({
        "title": "tiny biovid", "paper": "nobody 2026", "protocol": "a test", "task": "biovid",
        "overrides": ["model.hidden=8", "model.layers=1", "train.max_epochs=2", "train.patience=2", "progress=false",
                      "stats.bootstrap_resamples=0", "task.mimic.write_raw=false"],
        "arms": [{"name": "student", "overrides": ["method=student"]}, {"name": "kd", "overrides": ["method=kd"]}],
        "sweep": {"seed": [0, 1, 2, 3, 4], "fold": [0, 1, 2, 3, 4]},
        "published": [{"arm": "kd", "metric": "accuracy", "value": 0.5, "source": "Table 1"}],
        "smoke": {"overrides": [], "sweep": {"seed": [0, 1], "fold": [0]}}}, sort_keys=False))
    md = check_smoke(str(path), tmp_path, capsys)
    assert "mimic: MIMIC data written by the harness" in md


def check_smoke(name: str, tmp_path: Path, capsys) -> str:
    """Run a recipe with --smoke and check its table against the records, recomputed here; return the markdown."""
    recipe = load_recipe(name)
    code, out, err = _cli(capsys, name, "--smoke", f"results_dir={tmp_path / 'results'}",
                          f"cache_dir={tmp_path / 'cache'}")
    assert code == 0, out[-3000:] + err
    smoke_results, smoke_cache = tmp_path / "results-smoke", tmp_path / "cache" / "smoke"
    assert not (tmp_path / "results").exists()  # smoke records never mix with real ones
    md = (smoke_results / "reproduce" / f"{recipe.name}.md").read_text()
    assert f"wrote {smoke_results / 'reproduce' / f'{recipe.name}.md'}" in out
    assert "SMOKE RUN" in md and "NOT comparable" in md
    rows = _table(md)
    pub_col = next(h for h in rows[0] if h.startswith("published"))
    assert "NOT comparable" in pub_col
    n_rows = 0
    from_files = "source" in compose_one([f"task={recipe.task}"]).task  # a task read from files: its mimic tree
    with Composer() as composer:
        configs = {(v.name, arm.name): list(_independent_configs(composer, recipe, v, arm, smoke_results, smoke_cache,
                                                                 from_files))
                   for v in recipe.variants for arm in recipe.arms}
    for variant in recipe.variants:
        values = {}
        for arm in recipe.arms:
            values[arm.name] = {}
            for cfg in configs[variant.name, arm.name]:
                rec = read_record(run_dir(cfg))
                assert rec is not None and rec["status"] == "ok", (arm.name, variant.name, rec and rec.get("error"))
                if from_files:
                    assert rec["data_source"] == "mimic"
                assert f"{rec['data_source']}:" in md  # the caption names the data source
                values[arm.name][int(cfg.fold), int(cfg.seed)] = rec["metrics"]
        primary = rec["primary_metric"]
        metrics = list(dict.fromkeys([primary, *(p.metric for p in recipe.published if p.variant == variant.name)]))
        for arm in recipe.arms:
            for metric in metrics:
                (row,) = [r for r in rows if r["arm"].split(" — ")[0] == arm.name and r["metric"].split(" (")[0] == metric
                          and r.get("variant", "") == (variant.name if len(recipe.variants) > 1 else "")]
                n_rows += 1
                mine = np.array([m[metric] for _, m in sorted(values[arm.name].items())])
                shown = _numbers(row["ours: mean ± std"])
                assert abs(shown[0] - mine.mean()) <= HALF_UNIT
                if len(mine) == 1:  # one run (a one-seed smoke): no std is printed
                    assert len(shown) == 1
                else:
                    assert len(shown) == 2 and abs(shown[1] - mine.std(ddof=1)) <= HALF_UNIT
                assert row["runs"] == f"{len(mine)}/{len(mine)}"
                pub = [p for p in recipe.published if (p.variant, p.arm, p.metric) == (variant.name, arm.name, metric)]
                if pub:  # the value and the std as written in the recipe, and its source
                    assert _numbers(row[pub_col]) == [pub[0].value] + ([pub[0].std] if pub[0].std is not None else [])
                    assert row[pub_col].startswith("Δ ") == bool(pub[0].relative_to)  # a gain is shown as one
                    assert row["source"].startswith(pub[0].source)
                else:
                    assert row[pub_col] == row["source"] == ""
                if arm.name == "student":
                    assert row["Δ vs student [95% CI]"] == "(baseline)"
                    continue
                keys = sorted(values[arm.name])
                a = np.array([values[arm.name][k][metric] for k in keys])
                b = np.array([values["student"][k][metric] for k in keys])
                d = a - b
                if len(d) == 1:  # one pair (a one-seed smoke): the difference, no interval, no test
                    assert row["Δ vs student [95% CI]"].endswith(" (1 pair: no interval)")
                    assert abs(_numbers(row["Δ vs student [95% CI]"])[0] - d[0]) <= HALF_UNIT
                    assert row["paired t p (Holm)"] == ""
                    continue
                delta, lo, hi = _numbers(row["Δ vs student [95% CI]"].split(" (n=")[0])
                half = sps.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
                assert abs(delta - d.mean()) <= HALF_UNIT
                assert abs(lo - (d.mean() - half)) <= HALF_UNIT and abs(hi - (d.mean() + half)) <= HALF_UNIT
                assert f"(n={len(d)})" in row["Δ vs student [95% CI]"]
                shown = row["paired t p (Holm)"].split(" (")[0]
                if np.ptp(d) == 0:  # equal differences (tiny mimic test sets): no t statistic
                    assert row["paired t p (Holm)"] == "n/a (no spread)"
                    continue
                p = sps.ttest_rel(a, b).pvalue
                if shown.startswith("<"):
                    assert p < 0.001
                else:  # 3 significant digits from 0.01 up, 3 decimals below (the leaderboard's format)
                    assert abs(float(shown) - p) <= (0.0005 if p < 0.01 else 0.005 * p + 1e-12)
    assert n_rows == len(rows)
    return md


def test_smoke_sizes_are_the_tests_mimic_sizes():
    from _task_trees import TINY
    from test_mmsa_tasks import SMALL
    assert {k: SMOKE_MIMIC[k] for k in TINY} == TINY
    assert all(SMOKE_MIMIC[k] == SMALL for k in ("mosi", "mosei", "iemocap"))


def test_list_shows_every_recipe_with_its_run_counts(capsys):
    code, out, err = _cli(capsys, "--list")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split() == ["recipe", "task", "runs", "smoke", "runs", "title"]
    for name in RECIPES:
        data = yaml.safe_load((recipe_dir() / f"{name}.yaml").read_text())
        per_sweep = lambda s: math.prod(len(v) for v in s.values())  # noqa: E731
        n_cells = len(data["arms"]) * len(data.get("variants", [None]))
        (line,) = [ln for ln in lines if ln.split()[:1] == [name]]
        assert line.split()[1:4] == [data["task"], str(n_cells * per_sweep(data["sweep"])),
                                     str(n_cells * per_sweep(data["smoke"]["sweep"]))]
        assert data["title"][:40] in line


# --- a tiny recipe of the synthetic task: resume, failed and missing runs, selection on test ---------------------

TINY_RUN = ["task.n_subjects=10", "task.samples_per_subject=12", "task.seq_len=8", "train.max_epochs=2",
            "train.patience=2", "model.hidden=8", "model.layers=1", "progress=false", "stats.bootstrap_resamples=0"]


def _recipe(tmp_path: Path, **changes) -> Path:
    data = {"title": "tiny", "paper": "nobody 2026", "protocol": "a test", "task": "synthetic", "overrides": TINY_RUN,
            "arms": [{"name": "student", "overrides": ["method=student"]},
                     {"name": "kd", "overrides": ["method=kd"]}],
            "sweep": {"seed": [0, 1, 2], "fold": [0]},
            "published": [{"arm": "kd", "metric": "ccc_mean", "value": 0.5, "source": "Table 1"}],
            "smoke": {"overrides": [], "sweep": {"seed": [0, 1]}}}
    for key, value in changes.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_a_second_run_skips_every_recorded_run_and_renders_the_same_table(tmp_path, capsys):
    path = _recipe(tmp_path)
    where = [f"results_dir={tmp_path / 'r'}", f"cache_dir={tmp_path / 'c'}"]
    code, out, _ = _cli(capsys, str(path), *where)
    assert code == 0, out
    md = (tmp_path / "r" / "reproduce" / "tiny.md").read_text()
    records = sorted((tmp_path / "r").glob("*/*/*/record.json"))
    assert len(records) == 6
    stamps = [p.stat().st_mtime_ns for p in records]
    code, out, _ = _cli(capsys, str(path), *where)
    assert code == 0 and "resume: 6 of 6 runs already have a record and are skipped" in out
    assert [p.stat().st_mtime_ns for p in records] == stamps
    assert (tmp_path / "r" / "reproduce" / "tiny.md").read_text() == md
    assert "_Data: synthetic:" in md and "published (paper)" in md  # synthetic, not smoke: comparable column


def test_failed_and_missing_runs_are_named_and_the_table_uses_what_finished(tmp_path, capsys):
    path = _recipe(tmp_path)
    where = [f"results_dir={tmp_path / 'r'}", f"cache_dir={tmp_path / 'c'}"]
    assert _cli(capsys, str(path), *where)[0] == 0
    recipe = load_recipe(path)
    kd = {int(c.seed): run_dir(c) for c in (compose_one(["task=synthetic", *TINY_RUN, "method=kd", f"seed={s}",
                                                          *where]) for s in (0, 1, 2))}
    shutil.rmtree(kd[2])  # missing: no record
    rec_path = kd[1] / "record.json"
    rec = yaml.safe_load(rec_path.read_text())  # JSON is YAML
    rec.update(status="failed", error="RuntimeError: boom")
    rec.pop("metrics")
    import json
    rec_path.write_text(json.dumps(rec))
    code, out, _ = _cli(capsys, str(path), "--no-run", *where)
    assert code == 1
    md = (tmp_path / "r" / "reproduce" / "tiny.md").read_text()
    assert "- failed: kd fold 0, seed 1: RuntimeError: boom" in md
    assert "- missing (no record): kd fold 0: seed 2" in md
    assert "- unpaired (ccc_mean): kd; student without a partner: fold 0: seeds 1-2" in md
    (row,) = [r for r in _table(md) if r["arm"] == "kd" and r["metric"] == "ccc_mean"]
    assert row["runs"] == "1/3" and row["Δ vs student [95% CI]"].endswith("(1 pair: no interval)")
    assert "1 failed, 1 without a record" in out
    assert recipe.n_runs() == 6


def test_arms_selected_on_test_are_marked_optimistic(tmp_path, capsys):
    path = _recipe(tmp_path, arms=[{"name": "student", "overrides": ["method=student"]},
                                   {"name": "student-test-selected",
                                    "overrides": ["method=student", "selection_split=test"]}],
                   published=[], sweep={"seed": [0, 1]})
    code, out, _ = _cli(capsys, str(path), f"results_dir={tmp_path / 'r'}", f"cache_dir={tmp_path / 'c'}")
    assert code == 0, out
    arms = [r["arm"] for r in _table((tmp_path / "r" / "reproduce" / "tiny.md").read_text())]
    assert "student-test-selected — selected on test (optimistic)" in arms and "student" in arms


# --- validation: every error names the file, the field and the fix; exit 2; nothing run ---------------------------

ERRORS = [
    (dict(titel="x"), "unknown config key 'titel'; did you mean title?"),
    (dict(paper=None), "paper is missing: expected a non-empty string"),
    (dict(sweep={"seed": "0"}), "sweep.seed='0': expected a list (non-empty) without repeats, each an integer >= 0"),
    (dict(sweep={"seed": [0], "lr": [1]}), "unknown config key 'sweep.lr' (a recipe's keys here: seed, fold)"),
    (dict(arms=[{"name": "kd", "overrides": ["method=kd"]}]),
     "arms: no arm named 'student', the baseline every arm is paired with: add {name: student, overrides: "
     "[method=student]}"),
    (dict(arms=[{"name": "student", "overrides": ["method=student"]}, {"name": "kd"}]),
     "arms[1].overrides is missing: expected a list, each a non-empty string"),
    (dict(arms=[{"name": "student", "overrides": ["method=student"]}, {"name": "student", "overrides": []}]),
     "arms: the name 'student' is used 2 times: give each entry its own name"),
    (dict(arms=[{"name": "student", "overrides": ["method=student", "seed=3"]}]),
     "arms[0].overrides: 'seed=3': seed is set by `sweep`, not by overrides; remove it"),
    (dict(overrides=["train.lr"]), "overrides: 'train.lr' is not an override: write key=value"),
    (dict(task="synthetc"), "task='synthetc': no such task (known: "),
    (dict(published=[{"arm": "kdd", "metric": "ccc_mean", "value": 0.5, "source": "T1"}]),
     "published[0].arm='kdd': no such arm (arms: student, kd); did you mean kd?"),
    (dict(published=[{"arm": "kd", "metric": "ccc_mean", "value": "high", "source": "T1"}]),
     "published[0].value='high': expected a float"),
    (dict(published=[{"arm": "kd", "metric": "ccc_mean", "value": 0.5, "source": "T1", "variant": "x"}]),
     "published[0].variant='x': the recipe has no `variants`; remove it"),
    (dict(variants=[{"name": "a", "overrides": []}]), "published[0].variant is missing: the recipe has variants"),
    (dict(smoke={"overrides": []}), "smoke.sweep is missing"),
    (dict(arms=[]), "arms=[]: expected a non-empty list of {name, overrides}"),
    (dict(published=[{"arm": "kd", "metric": "ccc_mean", "value": 0.5, "source": "T1"},
                     {"arm": "kd", "metric": "ccc_mean", "value": 0.6, "source": "T2"}]),
     "published[1]: a second value for arm 'kd', metric 'ccc_mean': keep one"),
    (dict(variants=[{"name": "a", "overrides": []}],
          published=[{"arm": "kd", "metric": "ccc_mean", "value": 0.5, "source": "T1", "variant": "b"}]),
     "published[0].variant='b': no such variant (variants: a)"),
    (dict(arms=[{"name": "student", "overrides": ["method=student", "launcher=slurm"]}]),
     "arms[0].overrides: 'launcher=slurm': launcher is set by the command line"),
    (dict(published=[{"arm": "kd", "metric": "ccc_mean", "value": 0.05, "source": "T1", "relative_to": "studnt"}]),
     "published[0].relative_to='studnt': no such arm (arms: student, kd); did you mean student?"),
    (dict(smoke={"overrides": [], "sweep": {"seed": [0]}, "arms": {"kdd": ["method.k=2"]}}),
     "smoke.arms.kdd: no such arm (arms: student, kd); did you mean kd?"),
    (dict(smoke={"overrides": [], "sweep": {"seed": [0]}, "arms": {"kd": ["seed=2"]}}),
     "smoke.arms.kd: 'seed=2': seed is set by `sweep`, not by overrides; remove it"),
]


@pytest.mark.parametrize("changes,message", ERRORS, ids=[m[:40] for _, m in ERRORS])
def test_every_recipe_error_names_the_file_and_the_field_and_runs_nothing(changes, message, tmp_path, capsys):
    path = _recipe(tmp_path, **changes)
    code, out, err = _cli(capsys, str(path), f"results_dir={tmp_path / 'r'}")
    assert code == 2
    lines = err.splitlines()
    assert any(line.startswith(f"harness: error: {path}: ") and message in line for line in lines), err
    assert not (tmp_path / "r").exists()


def test_a_published_metric_the_task_does_not_have_is_refused_before_anything_runs(tmp_path, capsys):
    path = _recipe(tmp_path, published=[{"arm": "kd", "metric": "accuracy", "value": 0.5, "source": "T1"}])
    code, _, err = _cli(capsys, str(path), f"results_dir={tmp_path / 'r'}")
    assert code == 2 and not (tmp_path / "r").exists()
    assert (f"{path}: published[0].metric='accuracy': task synthetic has no such metric (its metrics: ccc_mean, "
            "ccc_valence, ccc_arousal, pearson_mean, mae_mean)") in err


def test_a_run_config_problem_is_refused_by_the_existing_checks_before_anything_runs(tmp_path, capsys):
    path = _recipe(tmp_path, arms=[{"name": "student", "overrides": ["method=student"]},
                                   {"name": "kd", "overrides": ["method=kd", "train.lr=-1"]}])
    code, _, err = _cli(capsys, str(path), f"results_dir={tmp_path / 'r'}")
    assert code == 2 and not (tmp_path / "r").exists()
    assert f"{path}: its runs' configs have problems (nothing was run):" in err
    assert "train.lr=-1: expected a float > 0" in err


def test_the_command_line_sets_only_keys_that_change_no_result(tmp_path, capsys):
    path = _recipe(tmp_path)
    code, _, err = _cli(capsys, str(path), "train.lr=0.1", f"results_dir={tmp_path / 'r'}")
    assert code == 2 and "train.lr=0.1: the command line sets only keys that change no result" in err
    assert not (tmp_path / "r").exists()


def test_an_unknown_recipe_name_says_which_exist(capsys):
    code, _, err = _cli(capsys, "lupi-2061")
    assert code == 2 and "no recipe 'lupi-2061'" in err and "did you mean lupi-2016?" in err


def test_a_submitting_launcher_gets_every_run_and_the_table_says_they_are_pending(tmp_path, capsys, monkeypatch):
    import harness.jobs
    sent = []
    def fake_submit(runs, launcher):  # the scheduler side is tests/test_launch.py's; here: what reproduce sends
        sent.append(([r.config["seed"] for r in runs], launcher.name))
        return {"sweep_id": "20261207-000000-abcd", "n_submitted": len(runs)}
    monkeypatch.setattr(harness.jobs, "submit_jobs", fake_submit)
    path = _recipe(tmp_path)
    code, out, _ = _cli(capsys, str(path), "launcher=local", f"results_dir={tmp_path / 'r'}",
                        f"cache_dir={tmp_path / 'c'}")
    assert code == 0, out
    assert sent == [([0, 1, 2, 0, 1, 2], "local")]
    assert "Submitted 6 runs (sweep 20261207-000000-abcd)" in out
    assert f"harness reproduce {path} --no-run` renders the table" in out
    assert "- missing (no record): kd fold 0: seeds 0-2" in out
