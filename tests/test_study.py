"""`harness study`: the pkdot_mechanism definition against its pre-registration; the tables of a study against
numbers computed here with numpy/scipy from hand-made records (Δ, t intervals, paired t p, Holm, verdicts, T-Net
medians, teacher-choice counts, flags, failed and missing runs); a real tiny study run end to end; the errors."""

from __future__ import annotations

import math
import re
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats as sps

from harness.cli import main
from harness.config import expand
from harness.launch import plan_command_lines
from harness.records import config_value, iter_records, write_record
from harness.study import command_lines, load_study

ROOT = Path(__file__).resolve().parent.parent
PREREG = ROOT / "docs" / "prereg" / "2026-12-07_pkdot_mechanism.md"
# Our numbers and the ones computed here come from different arithmetic (scipy's ttest_1samp and its interval vs
# ttest_rel and t.ppf by hand; statsmodels' Holm vs the loop below): equal to round-off, far below any digit shown.
REL = 1e-9


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["study", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _table(markdown: str, after: str) -> list[dict]:
    """The rows of the first github table after the line starting with `after`, as {header: cell}."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(after))
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("|"):
            rows.append(line)
        elif rows:
            break
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in r.strip("|").split("|")))) for r in rows[2:]]


# --- the pkdot_mechanism definition is the pre-registration ----------------------------------------------------


def _prereg_runs() -> list[frozenset]:
    """Every run the pre-registration's "Commands" section asks for, as the set of its overrides."""
    text = PREREG.read_text()
    block = text.split("## Commands", 1)[1].split("```bash", 1)[1].split("```", 1)[0].replace("\\\n", " ")
    variables = dict(re.findall(r'^(\w+)="([^"]*)"', block, flags=re.M))
    assert set(variables) == {"L", "S"}
    loop = re.search(r'for C in "\$L" "\$S"; do(.*?)done', block, flags=re.S).group(1)
    commands = [line.strip() for line in loop.splitlines() if line.strip().startswith("harness run -m $C")]
    assert len(commands) == 8
    runs = []
    for name in ("L", "S"):
        for command in commands:
            words = shlex.split(variables[name]) + shlex.split(command.removeprefix("harness run -m $C"))
            runs += [frozenset(o) for o in expand(words, multirun=True)]
    return runs


def _definition_runs(study) -> list[frozenset]:
    return [frozenset(o) for line in command_lines(study) if line.arm != study.reference.id
            for o in expand(line.overrides, multirun=True)]


def test_the_pkdot_mechanism_definition_runs_exactly_the_preregistered_commands():
    study = load_study("pkdot_mechanism")
    prereg = _prereg_runs()
    ours = _definition_runs(study)
    assert len(prereg) == len(set(prereg)) == 2 * 20 * 12 * 2 + 2 * 5 * 12 * 2  # lupi 2 exps × 20 seeds, synthetic
    assert sorted(map(sorted, ours)) == sorted(map(sorted, prereg))
    assert study.family == "pkdot_mechanism" and study.control == "zeros"
    # the arms are the pre-registration's table, in its order
    arms = re.findall(r"^\| (P\d|M\d) \| ", PREREG.read_text(), flags=re.M)
    assert [a.id for a in study.arms] == arms
    # the attribution contrasts of its "Analysis" section: P0 − P3, P0 − P5 and P6, P1/P2 − P0, P4 − P0, P7/P8 − P0,
    # M1/M2 − M0 (P6's is against the student: the OT term on a student without a slot)
    assert [(c.a, c.b) for c in study.attribution] == [
        ("P0", "P3"), ("P0", "P5"), ("P6", "student"), ("P1", "P0"), ("P2", "P0"), ("P4", "P0"), ("P7", "P0"),
        ("P8", "P0"), ("M1", "M0"), ("M2", "M0")]
    # the student is the task's settings without the arms' method keys, and outside the study's Holm family
    (lupi_student,) = [line for line in command_lines(study) if line.task == "lupi" and line.arm == "student"]
    assert "method=student" in lupi_student.overrides and "train.max_epochs=400" in lupi_student.overrides
    assert not any(o.startswith(("method.", "stats.family")) for o in lupi_student.overrides)


def test_print_commands_prints_one_sweep_per_task_and_arm(capsys):
    code, out, _ = _cli(capsys, "pkdot_mechanism", "--print-commands")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 2 * 13 and all(line.startswith("harness run -m task=") for line in lines)
    assert [shlex.split(line)[3:] for line in lines] == [line.overrides for line in
                                                         command_lines(load_study("pkdot_mechanism"))]


def test_list_shows_the_studies(capsys):
    code, out, _ = _cli(capsys, "--list")
    assert code == 0 and "pkdot_mechanism" in out and "lupi, synthetic" in out


# --- a study of hand-made records: every number against numpy/scipy here --------------------------------------

TINY = ["task.n_subjects=10", "task.samples_per_subject=12", "task.seq_len=8", "train.max_epochs=2",
        "train.patience=2", "model.hidden=8", "model.layers=1", "progress=false", "stats.bootstrap_resamples=0"]
SEEDS = [0, 1, 2, 3, 4, 5]
ARMS = {"A": ["method=pkdot"], "B": ["method=pkdot", "method.ot_weight=0"], "M": ["method=mtpkdot"]}


def _study_file(tmp_path: Path, **changes) -> Path:
    data = {"title": "a tiny study", "prereg": "docs/prereg/none.md", "family": "tiny_study", "control": "zeros",
            "reference": {"id": "student", "label": "the student", "overrides": ["method=student"]},
            "tasks": [{"name": "synthetic", "overrides": ["task=synthetic", *TINY],
                       "arm_overrides": ["method.batch_size=null", "method.tnet.epochs=2"],
                       "sections": {"key": "task.target", "values": ["regression", "classes"]}, "seeds": SEEDS}],
            "arms": [{"id": k, "label": f"arm {k}", "overrides": v} for k, v in ARMS.items()],
            "attribution": [{"a": "A", "b": "B", "what": "the OT term"}, {"a": "B", "b": "student"},
                            {"a": "M", "b": "A"}]}
    data.update(changes)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path


def _planned_folders(results: Path) -> dict[tuple, Path]:
    """(target, arm, control, seed) -> run folder, each run composed here from the command line a user would type
    (harness/launch.py plan_command_lines, not the study's planner)."""
    lines, keys = [], []
    for target in ("regression", "classes"):
        common = ["task=synthetic", *TINY, f"task.target={target}", f"results_dir={results}"]
        for seed in SEEDS:
            lines.append([*common, "method=student", f"seed={seed}"])
            keys.append((target, "student", "none", seed))
            for arm, overrides in ARMS.items():
                for control in ("none", "zeros"):
                    lines.append([*common, "method.batch_size=null", "method.tnet.epochs=2", *overrides,
                                  "stats.family=tiny_study", f"method.privileged_control={control}", f"seed={seed}"])
                    keys.append((target, arm, control, seed))
    planned = plan_command_lines(lines, multirun=False)
    return {k: runs[0] for k, runs in zip(keys, planned)}


def _designed_values(rng) -> dict[tuple, float]:
    """Primary metric per (target, arm, control, seed): A transfers (beats its control and the student), B undoes a
    harm of its own machinery (beats its control, below the student), M is noise around the student."""
    out = {}
    for target in ("regression", "classes"):
        for seed in SEEDS:
            s = 0.6 + 0.05 * rng.standard_normal()
            out[target, "student", "none", seed] = s
            for arm, shift, control_shift in (("A", 0.05, 0.0), ("B", -0.02, -0.07), ("M", 0.0, 0.0)):
                out[target, arm, "none", seed] = s + shift + 0.005 * rng.standard_normal()
                out[target, arm, "zeros", seed] = s + control_shift + 0.005 * rng.standard_normal()
    return out


def _write(run, value: float | None, extra: dict | None = None, status: str = "ok", family: str | None = None) -> None:
    cfg = run.config if family is None else {**run.config, "stats": {**run.config["stats"], "family": family}}
    primary = "ccc_mean" if cfg["task"]["target"] == "regression" else "accuracy"
    rec = {"status": status, "method": cfg["method"]["name"], "task": "synthetic", "fold": cfg["fold"],
           "seed": cfg["seed"], "primary_metric": primary, "data_source": "synthetic",
           "task_variant": cfg["task"]["target"], "config": cfg, "overrides": run.overrides,
           "run_key": run.folder.name, **({"metrics": {primary: value}} if status == "ok" else
                                           {"error": "RuntimeError: boom"}), "extra": extra or {}}
    run.folder.mkdir(parents=True)
    write_record(run.folder, rec, None)


def _holm(p: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, by hand."""
    order = np.argsort(p)
    m, out, running = len(p), [0.0] * len(p), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def _paired(a: dict, b: dict) -> dict:
    keys = sorted(set(a) & set(b))
    x, y = np.array([a[k] for k in keys]), np.array([b[k] for k in keys])
    d = x - y
    half = sps.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return {"n": len(d), "mean": d.mean(), "ci_low": d.mean() - half, "ci_high": d.mean() + half,
            "p_t": sps.ttest_rel(x, y).pvalue}


@pytest.fixture(scope="module")
def hand_made(tmp_path_factory):
    """The tiny study's records, written by hand at the folders of its runs: B seed 2 (regression) missing,
    A · PI zeros seed 3 (regression) failed; T-Net and teacher-choice extras; one early and one capped run; one
    record of B · PI zeros (classes) written by another study (its own stats.family)."""
    tmp = tmp_path_factory.mktemp("study")
    results = tmp / "results"
    folders = _planned_folders(results)
    values = _designed_values(np.random.default_rng(7))
    rng = np.random.default_rng(11)
    tnet, choices = {}, {}
    for key, run in folders.items():
        target, arm, control, seed = key
        if key == ("regression", "B", "none", 2):
            continue  # missing: never ran
        if key == ("regression", "A", "zeros", 3):
            _write(run, None, status="failed")
            continue
        extra = {}
        if arm in ("A", "B", "M"):
            t = {"before_mse": rng.uniform(0.3, 0.5), "before_mmd": rng.uniform(3, 5),
                 "selected_mse": rng.uniform(0.1, 0.3), "selected_mmd": rng.uniform(0, 1),
                 "epoch": int(rng.integers(60))}
            tnet[key] = t
            extra["tnet"] = {"val_before": {"val_mse": t["before_mse"], "val_mmd": t["before_mmd"]},
                             "val_selected": {"val_mse": t["selected_mse"], "val_mmd": t["selected_mmd"]},
                             "selected_epoch": t["epoch"], "selection": "lowest validation loss", "loss": "mmd"}
        if arm == "M":
            counts = {"x": int(rng.integers(10)), "joint": int(rng.integers(50, 100))}
            choices[key] = counts
            extra["teacher_choice"] = {"names": list(counts), "selection": "batch", "unit": "batches",
                                       "total": counts}
        extra["training"] = {"student": {"stop_reason": "patience", "selected_epoch": 0 if key == (
            "classes", "A", "none", 4) else 5}}
        if key == ("classes", "M", "none", 1):
            extra["training"]["teacher"] = {"stop_reason": "max_epochs", "selected_epoch": 9}
        # a record another study computed under the same run key (stats.family is not part of it)
        _write(run, values[key], extra, family="other_study" if key == ("classes", "B", "zeros", 0) else None)
    out = tmp / "doc.md"
    code = main(["study", str(_study_file(tmp)), f"results_dir={results}", "--out", str(out)])
    assert code == 0
    return {"values": values, "tnet": tnet, "choices": choices, "md": out.read_text(),
            "csv": pd.read_csv(tmp / "doc.csv"), "tmp": tmp, "results": results}


def _ok_values(hand_made, target: str, arm: str, control: str) -> dict:
    skip = {("regression", "B", "none", 2), ("regression", "A", "zeros", 3)}
    return {s: hand_made["values"][target, arm, control, s] for s in SEEDS if (target, arm, control, s) not in skip}


@pytest.mark.parametrize("target", ["regression", "classes"])
def test_deltas_intervals_p_and_holm_are_numpy_and_scipys(hand_made, target):
    csv = hand_made["csv"]
    section = f"synthetic — task.target={target}"
    cmp = csv[(csv.kind == "comparison") & (csv.section == section)]
    student = _ok_values(hand_made, target, "student", "none")
    want = {}
    for arm in ARMS:
        for control in ("none", "zeros"):
            want[arm, control, "student"] = _paired(_ok_values(hand_made, target, arm, control), student)
        want[arm, "none", "PI zeros"] = _paired(_ok_values(hand_made, target, arm, "none"),
                                                 _ok_values(hand_made, target, arm, "zeros"))
    for reference in ("student", "PI zeros"):  # Holm per section and reference kind: 6 and 3 comparisons
        keys = [k for k in want if k[2] == reference]
        for k, p in zip(keys, _holm([want[k]["p_t"] for k in keys])):
            want[k]["p_holm"], want[k]["m"] = p, len(keys)
    assert len(cmp) == len(want) == 9
    for (arm, control, reference), w in want.items():
        (got,) = cmp[(cmp.arm == arm) & (cmp.control == control) & (cmp.reference == reference)].itertuples()
        assert got.n == w["n"] and got.holm_family_size == w["m"]
        for f in ("mean", "ci_low", "ci_high", "p_t", "p_holm"):
            assert getattr(got, f) == pytest.approx(w[f], rel=REL), (arm, control, reference, f)
        assert got.significant == (w["p_holm"] < 0.05)
    if target == "regression":  # the missing and the failed run leave 5 pairs
        assert want["B", "none", "student"]["n"] == 5 and want["A", "none", "PI zeros"]["n"] == 5
    # the markdown shows the same numbers, 3 decimals
    rows = {r["arm"]: r for r in _table(hand_made["md"].split(f"### {section}")[1], "**Arms**")}
    w = want["A", "none", "student"]
    shown = f"{w['mean']:+.3f} [{w['ci_low']:+.3f}, {w['ci_high']:+.3f}] (n={w['n']})"
    assert rows["A"]["Δ vs student [95% CI]"] == shown


@pytest.mark.parametrize("target", ["regression", "classes"])
def test_verdicts_follow_the_decision_rule(hand_made, target):
    csv = hand_made["csv"]
    rows = csv[(csv.kind == "row") & (csv.section == f"synthetic — task.target={target}")]
    verdicts = {r.arm: r.verdict for r in rows[rows.control == "none"].itertuples() if r.arm != "student"}
    cmp = csv[(csv.kind == "comparison") & (csv.section == f"synthetic — task.target={target}")]
    for arm, v in verdicts.items():  # the rule, from the CSV's own numbers
        (ref,) = cmp[(cmp.arm == arm) & (cmp.control == "none") & (cmp.reference == "student")].itertuples()
        (ctl,) = cmp[(cmp.arm == arm) & (cmp.reference == "PI zeros")].itertuples()
        better = bool(ctl.significant) and ctl.mean > 0
        expected = ("transfers privileged information" if better and ref.ci_low > 0 else
                    "undoes a harm of its own machinery" if better else "no transfer shown")
        assert v.startswith(expected)
    incomplete = " (on 5 of 6 planned pairs)" if target == "regression" else ""
    # the designed values: A transfers, B undoes a harm, M is noise
    assert verdicts == {"A": "transfers privileged information" + incomplete,
                        "B": "undoes a harm of its own machinery" + incomplete, "M": "no transfer shown"}


def test_attribution_is_the_mean_paired_difference_with_its_interval(hand_made):
    csv = hand_made["csv"]
    att = csv[csv.kind == "attribution"]
    assert len(att) == 6 and att.p_t.isna().all()  # descriptive: no test
    for target in ("regression", "classes"):
        for a, b in (("A", "B"), ("B", "student"), ("M", "A")):
            w = _paired(_ok_values(hand_made, target, a, "none"), _ok_values(hand_made, target, b, "none"))
            (got,) = att[(att.section == f"synthetic — task.target={target}") & (att.arm == a)
                         & (att.reference == b)].itertuples()
            assert got.n == w["n"]
            for f in ("mean", "ci_low", "ci_high"):
                assert getattr(got, f) == pytest.approx(w[f], rel=REL)


def test_tnet_medians_teacher_choices_and_flags_are_the_records(hand_made):
    csv = hand_made["csv"]
    rows = csv[csv.kind == "row"]
    for target in ("regression", "classes"):
        for arm in ARMS:
            for control in ("none", "zeros"):
                t = [v for k, v in hand_made["tnet"].items() if k[:3] == (target, arm, control)]
                (got,) = rows[(rows.section == f"synthetic — task.target={target}") & (rows.arm == arm)
                              & (rows.control == control)].itertuples()
                assert got.tnet_n == len(t)
                for col, field in (("tnet_mse_before", "before_mse"), ("tnet_mmd_before", "before_mmd"),
                                   ("tnet_mse_selected", "selected_mse"), ("tnet_mmd_selected", "selected_mmd"),
                                   ("tnet_selected_epoch", "epoch")):
                    assert getattr(got, col) == pytest.approx(np.median([x[field] for x in t]), rel=REL)
                if arm == "M":
                    c = [v for k, v in hand_made["choices"].items() if k[:3] == (target, arm, control)]
                    assert got.teacher_choice_x == sum(x["x"] for x in c)
                    assert got.teacher_choice_joint == sum(x["joint"] for x in c)
    md = hand_made["md"]
    classes = md.split("### synthetic — task.target=classes")[1]
    assert "- A: 1 of 6 (selected at epoch ≤ 1: f0-s4 (epoch 0))" in classes
    assert "- M: 1 of 6 runs: teacher in 1 (f0-s1)" in classes
    (row,) = _table(classes, "**Teacher choice**")[:1]
    total = [v for k, v in hand_made["choices"].items() if k[:3] == ("classes", "M", "none")]
    x, joint = sum(c["x"] for c in total), sum(c["joint"] for c in total)
    assert row["arm"] == "M"
    assert row["selection"] == "batch on batch"  # records without selection_on were scored on the training batch
    assert f"x {x} ({100 * x / (x + joint):.1f} %)" in row["teacher choices (total over runs, share)"]


def test_missing_and_failed_runs_are_named_never_dropped(hand_made):
    md = hand_made["md"].split("### synthetic — task.target=regression")[1].split("###")[0]
    assert "Missing runs (planned, no record yet; not in any mean or test):\n- B: fold 0: seed 2" in md
    assert re.search(r"Failed runs .*\n- A · PI zeros: f0-s3: RuntimeError: boom \(.*record.json\)", md)
    rows = {r["arm"]: r for r in _table(md, "**Arms**")}
    assert rows["B"]["runs"] == "5/6" and rows["A · PI zeros"]["runs"] == "5/6" and rows["A"]["runs"] == "6/6"
    assert "- B vs student: student fold 0: seed 2 without a partner" in md
    csv = hand_made["csv"]
    (b,) = csv[(csv.kind == "row") & (csv.arm == "B") & (csv.control == "none")
               & (csv.section == "synthetic — task.target=regression")].itertuples()
    assert (b.runs_planned, b.runs_ok, b.runs_missing, b.runs_failed) == (6, 5, 1, 0)
    assert "84 runs planned: 82 ok, 1 failed, 1 without a record" in hand_made["md"]


def test_records_reused_from_another_family_are_used_and_named(hand_made):
    classes = hand_made["md"].split("### synthetic — task.target=classes")[1]
    assert ("- B · PI zeros: 1 record(s) reused from Holm family `other_study` (fold 0: seed 0): the leaderboard "
            "corrects them in `other_study`, this table in `tiny_study`") in classes
    rows = {r["arm"]: r for r in _table(classes, "**Arms**")}
    assert rows["B · PI zeros"]["runs"] == "6/6"


def test_an_arm_left_out_is_said_with_its_reason_and_its_contrasts(hand_made, tmp_path, capsys):
    path = _study_file(tmp_path, left_out=[{"id": "C", "label": "arm C", "why": "no honest way to build it"}],
                       attribution=[{"a": "C", "b": "A", "what": "the ceiling"}, {"a": "A", "b": "B"}])
    code, out, _ = _cli(capsys, str(path), f"results_dir={hand_made['results']}")
    assert code == 0
    assert ("Pre-registered arms left out (not run; their rows and contrasts are absent):\n"
            "- C (arm C): no honest way to build it") in out
    rows = _table(out.split("### synthetic — task.target=classes")[1], "**Attribution**")
    assert rows[0]["contrast"] == "C − A" and rows[0]["mean paired difference of accuracy [95% CI]"] == \
        "not run: C left out"
    assert rows[1]["contrast"] == "A − B" and rows[1]["pairs"] == "6"


def test_out_replaces_only_the_generated_block_and_refuses_a_file_written_by_hand(hand_made, capsys):
    tmp, results = hand_made["tmp"], hand_made["results"]
    study = _study_file(tmp)
    doc = tmp / "result.md"
    begin = hand_made["md"].splitlines()[2]
    assert begin.startswith("<!-- BEGIN generated by `harness study")
    end = next(line for line in hand_made["md"].splitlines() if line.startswith("<!-- END"))
    doc.write_text(f"# Result\n\nProse before.\n\n{begin}\nold tables\n{end}\n\nProse after.\n")
    code, out, _ = _cli(capsys, str(study), f"results_dir={results}", "--out", str(doc), "--csv", str(tmp / "x.csv"))
    assert code == 0, out
    text = doc.read_text()
    assert text.startswith("# Result\n\nProse before.\n\n") and text.endswith("\n\nProse after.\n")
    assert "old tables" not in text and "### synthetic — task.target=classes" in text
    by_hand = tmp / "by_hand.md"
    by_hand.write_text("# written by hand\n")
    code, _, err = _cli(capsys, str(study), f"results_dir={results}", "--out", str(by_hand))
    assert code == 2 and "without one pair of the study's marker lines" in err
    assert by_hand.read_text() == "# written by hand\n"


def test_stdout_is_the_same_tables(hand_made, capsys):
    code, out, _ = _cli(capsys, str(_study_file(hand_made["tmp"])), f"results_dir={hand_made['results']}")
    assert code == 0
    generated = hand_made["md"].split("\n", 2)[2]  # without the title line a new --out file gets
    assert out == generated.replace(f" --out {hand_made['tmp'] / 'doc.md'}", "")


# --- a real tiny study: --run launches the sweeps, the tables are their records ----------------------------------


def test_a_real_tiny_study_runs_resumes_and_its_tables_are_its_records(tmp_path, capsys):
    study = _study_file(tmp_path, tasks=[{"name": "synthetic", "overrides": ["task=synthetic", *TINY],
                                          "arm_overrides": ["method.batch_size=null", "method.tnet.epochs=2"],
                                          "seeds": [0, 1, 2]}],
                        arms=[{"id": "P0", "label": "pkdot", "overrides": ["method=pkdot"]},
                              {"id": "P5", "label": "no OT", "overrides": ["method=pkdot", "method.ot_weight=0"]}],
                        attribution=[{"a": "P0", "b": "P5"}])
    where = [f"results_dir={tmp_path / 'r'}", f"cache_dir={tmp_path / 'c'}"]
    code, out, _ = _cli(capsys, str(study), "--run", *where, "--out", str(tmp_path / "doc.md"))
    assert code == 0, out
    records = iter_records(tmp_path / "r")
    assert len(records) == 3 * 5 and all(r["status"] == "ok" for r in records)
    # each record's arm from its own config, not from the study's planner
    values: dict[tuple, dict] = {}
    for r in records:
        cfg = r["config"]
        arm = "student" if r["method"] == "student" else ("P5" if config_value(cfg, "method.ot_weight") == 0 else "P0")
        control = config_value(cfg, "method.privileged_control") or "none"
        values.setdefault((arm, control), {})[r["seed"]] = r["metrics"][r["primary_metric"]]
        assert config_value(cfg, "stats.family") == ("tiny_study" if arm != "student" else "main")
    csv = pd.read_csv(tmp_path / "doc.csv")
    cmp = csv[csv.kind == "comparison"]
    want = {(arm, control, "student"): _paired(values[arm, control], values["student", "none"])
            for arm in ("P0", "P5") for control in ("none", "zeros")}
    keys = list(want)
    for k, p in zip(keys, _holm([want[k]["p_t"] for k in keys])):
        want[k]["p_holm"] = p
    for (arm, control, _), w in want.items():
        (got,) = cmp[(cmp.arm == arm) & (cmp.control == control) & (cmp.reference == "student")].itertuples()
        for f in ("mean", "ci_low", "ci_high", "p_t", "p_holm"):
            assert getattr(got, f) == pytest.approx(w[f], rel=REL), (arm, control, f)
    rows = csv[(csv.kind == "row") & (csv.control == "none") & (csv.arm == "P0")]
    tnets = [r["extra"]["tnet"] for r in records if r["method"] == "pkdot"
             and config_value(r["config"], "method.ot_weight") != 0
             and (config_value(r["config"], "method.privileged_control") or "none") == "none"]
    assert rows.tnet_mse_selected.iloc[0] == pytest.approx(np.median([t["val_selected"]["val_mse"] for t in tnets]),
                                                           rel=REL)
    # a second --run launches nothing and writes the same tables
    first = (tmp_path / "doc.md").read_text()
    stamps = sorted(p.stat().st_mtime_ns for p in (tmp_path / "r").glob("*/*/*/record.json"))
    code, out, _ = _cli(capsys, str(study), "--run", *where, "--out", str(tmp_path / "doc.md"))
    assert code == 0 and "resume: 15 of 15 runs already have a record and are skipped" in out
    assert sorted(p.stat().st_mtime_ns for p in (tmp_path / "r").glob("*/*/*/record.json")) == stamps
    assert (tmp_path / "doc.md").read_text() == first


# --- errors: each names the file and the field; nothing runs -------------------------------------------------------

ERRORS = [
    ({"arms": [{"id": "A", "label": "a", "overrides": ["method=pkdot", "seed=3"]}]},
     "arms[0].overrides: 'seed=3': seed is set by `seeds`"),
    ({"arms": [{"id": "A", "label": "a", "overrides": ["method=pkdot", "method.ot_weight=0,1"]}]},
     "sweeps several values: give each value its own arm"),
    ({"arms": [{"id": "A", "label": "a", "overrides": ["method=pkdot"]},
               {"id": "A", "label": "b", "overrides": ["method=kd"]}]}, "the id 'A' is used 2 times"),
    ({"attribution": [{"a": "A", "b": "Q"}]}, "attribution[0].b='Q': no such arm"),
    ({"attribution": [{"a": "student", "b": "A"}]}, "the reference goes second"),
    ({"family": "has space"}, "family='has space': expected a name of letters, digits, _ or -"),
    ({"control": "ones"}, "control='ones': expected one of"),
    ({"tasks": [{"name": "s", "overrides": ["task.n_subjects=10"], "seeds": [0]}]}, "no task=NAME override"),
    ({"extra_key": 1}, "unknown config key 'extra_key'"),
    ({"left_out": [{"id": "A", "label": "a", "why": "w"}]}, "the id 'A' is used 2 times"),
]


@pytest.mark.parametrize("changes,message", ERRORS)
def test_every_definition_error_names_the_file_and_the_field(changes, message, tmp_path, capsys):
    path = _study_file(tmp_path, **changes)
    code, _, err = _cli(capsys, str(path), f"results_dir={tmp_path / 'r'}", "--run")
    assert code == 2 and f"{path}: " in err and message in err, err
    assert not (tmp_path / "r").exists()


def test_two_arms_that_plan_the_same_run_are_refused(tmp_path, capsys):
    path = _study_file(tmp_path, arms=[{"id": "A", "label": "a", "overrides": ["method=pkdot"]},
                                       {"id": "B", "label": "b", "overrides": ["method=pkdot", "method.k=30"]}],
                       attribution=[])
    code, _, err = _cli(capsys, str(path), f"results_dir={tmp_path / 'r'}")
    assert code == 2 and "arms A and B plan the same run" in err


def test_the_command_line_sets_only_keys_that_change_no_result(tmp_path, capsys):
    code, _, err = _cli(capsys, "pkdot_mechanism", "method.k=3", "--print-commands")
    assert code == 2 and "the command line sets only keys that change no result" in err


def test_a_run_config_problem_is_refused_before_anything_runs(tmp_path, capsys):
    path = _study_file(tmp_path, arms=[{"id": "A", "label": "a", "overrides": ["method=pkdot", "method.k=-1"]}],
                       attribution=[])
    code, _, err = _cli(capsys, str(path), f"results_dir={tmp_path / 'r'}", "--run")
    assert code == 2 and "its runs' configs have problems (nothing was run)" in err and "method.k" in err
    assert not list((tmp_path).glob("r/*/*/*/record.json"))


def test_an_unknown_study_says_which_exist(capsys):
    code, _, err = _cli(capsys, "pkdot_mechanisms")
    assert code == 2 and "did you mean pkdot_mechanism" in err
