"""The leaderboard is a pure function of the records: check its numbers against pandas/numpy by hand."""

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ttest_rel

from _records import control_overrides, hand_made_record

from harness.errors import RecordError
from harness.leaderboard.latex import render_latex
from harness.leaderboard import LeaderboardError, collect, compare, render, summarise, write_leaderboard


def fake_record(root: Path, method, seed, fold, value, status="ok", bound="", error=None, cid="c1"):
    """A record without a config: its row is `cid`, its bound as given."""
    hand_made_record(root, method, seed, {} if status != "ok" else {"ccc_mean": value, "mae_mean": 1 - value},
                     fold=fold, config_id=cid, run_key=f"f{fold}-s{seed}-x", bound=bound, status=status,
                     **({"error": error} if error else {}))


def test_mean_std_delta_bounds_and_failures(tmp_path):
    vals = {"student": [0.2, 0.3, 0.4], "kd": [0.35, 0.45, 0.40], "teacher": [0.9, 0.95, 0.92]}
    bounds = {"student": "lower_bound", "teacher": "upper_bound", "kd": ""}
    for m, vs in vals.items():
        for s, v in enumerate(vs):
            fake_record(tmp_path, m, s, 0, v, bound=bounds[m])
    fake_record(tmp_path, "kd", 3, 0, None, status="failed", error="ValueError: boom")
    summary = summarise(collect(tmp_path))
    kd = summary[(summary.method == "kd") & (summary.metric == "ccc_mean")].iloc[0]
    assert kd["mean"] == pytest.approx(np.mean(vals["kd"]))
    assert kd["std"] == pytest.approx(np.std(vals["kd"], ddof=1))
    assert kd.n_runs == 3 and kd.n_failed == 1 and "boom" in kd.failed_runs
    text = render(summary, collect(tmp_path))
    assert f"{np.mean(vals['kd']):.3f} ± {np.std(vals['kd'], ddof=1):.3f}" in text
    assert f"+{np.mean(vals['kd']) - np.mean(vals['student']):.3f}" in text  # delta over the student
    assert "UPPER BOUND" in text and "lower bound" in text
    assert "f0-s3-x: ValueError: boom" in text
    assert "Synthetic data" in text
    # rows: lower bound first, upper bound last (the tasks' published numbers follow in their own table)
    section = text.split("## Published reference numbers")[0].split("\n## synthetic")[-1]  # not the cross-task table
    lines = [l for l in section.splitlines() if l.startswith("| ") and "method" not in l]
    assert lines[0].startswith("| student") and lines[-1].startswith("| teacher")


def test_write_leaderboard_files(tmp_path):
    fake_record(tmp_path / "res", "student", 0, 0, 0.5, bound="lower_bound")
    text, _ = write_leaderboard(tmp_path / "res", tmp_path / "lb.md", tmp_path / "lb.csv")
    assert (tmp_path / "lb.md").read_text() == text
    csv = pd.read_csv(tmp_path / "lb.csv")
    assert set(csv.metric) == {"ccc_mean", "mae_mean"}


def test_empty_results(tmp_path):
    text, _ = write_leaderboard(tmp_path, tmp_path / "lb.md", None)
    assert "No records yet" in text


def test_row_labels_show_only_method_settings(tmp_path):
    fake_record(tmp_path, "student", 0, 0, 0.3, bound="lower_bound")
    fake_record(tmp_path, "kd", 0, 0, 0.4, cid="c2")
    rec_path = next(tmp_path.glob("synthetic/kd/*/record.json"))
    rec = json.loads(rec_path.read_text())
    rec["overrides"] = ["results_dir=/tmp/x", "task.source=mimic", "method.temperature=2", "train.lr=0.01",
                        "teacher.modalities=privileged"]
    rec_path.write_text(json.dumps(rec))
    text = render(summarise(collect(tmp_path)), collect(tmp_path))
    # the row is labelled by its method alone, its overrides listed once under the table
    assert "| kd " in text and "- `kd`: `method.temperature=2 train.lr=0.01 teacher.modalities=privileged`" in text
    assert "results_dir" not in text and "+0.100" in text


def test_frozen_text_note_sits_under_mmsa_sections_and_beside_published_numbers(tmp_path):
    """The harness feeds frozen BERT features; DMD* rows fine-tune BERT: every mosi section says so."""
    from harness.registry import TASKS

    fake_record(tmp_path, "dmd", 0, 0, 0.5)
    rec_path = next(tmp_path.glob("synthetic/dmd/*/record.json"))
    rec = json.loads(rec_path.read_text())
    rec.update(task="mosi", task_variant="aligned, frozen BERT features, protocol=full", data_source="mimic")
    (tmp_path / "mosi" / "dmd" / rec["run_key"]).mkdir(parents=True)
    (tmp_path / "mosi" / "dmd" / rec["run_key"] / "record.json").write_text(json.dumps(rec))
    fake_record(tmp_path, "student", 0, 0, 0.4)
    df = collect(tmp_path)
    text = render(summarise(df), df)
    note = TASKS.get("mosi").leaderboard_note
    assert "frozen BERT features" in note and "DMD*" in note
    mosi = text.split("## mosi")[1].split("## ")[0]
    synthetic = text.split("## synthetic")[1].split("## ")[0]
    assert f"Note: {note}" in mosi and "Note:" not in synthetic
    assert f"- mosi: {note}" in text.split("## Published reference numbers")[1]


# --- paired statistics, controls, flags: records written as dicts, numbers checked against scipy -------------

def write(root: Path, method: str, seed: int, value: float, fold: int = 0, control: str | None = None,
          task_variant: str = "valence/arousal regression", lr: float = 0.01, family: str | None = None,
          **extra_fields) -> Path:
    """A record with a config (so privileged-information controls can be matched) and any extra fields; a
    method.lr other than 0.01 is a row of its own (its override in the label), a family goes in stats.family."""
    method_cfg = {"name": method, "lr": lr, **({"privileged_control": control} if control is not None else {})}
    config = {"method": method_cfg, "task": {"name": "synthetic", "target": "regression"}, "results_dir": "/somewhere",
              **({"stats": {"family": family}} if family is not None else {})}
    overrides = control_overrides(control) + ([f"method.lr={lr}"] if lr != 0.01 else []) + \
        ([f"stats.family={family}"] if family is not None else [])
    return hand_made_record(root, method, seed, {"ccc_mean": value, "mae_mean": 1 - value}, fold=fold,
                            task_variant=task_variant, config=config, overrides=overrides, **extra_fields)


def section_rows(text: str) -> dict[str, list[str]]:
    """{row label: cells} of the first section's table."""
    table = text.split("## synthetic")[1].split("\n\n")[2]
    lines = [l for l in table.splitlines() if l.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for l in lines[1:]:
        cells = [c.strip() for c in l.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header, cells))
    return rows


def holm_by_hand(p):
    order = np.argsort(p)
    adj = np.maximum.accumulate(np.array(p)[order] * (len(p) - np.arange(len(p))))
    out = np.empty(len(p))
    out[order] = np.minimum(adj, 1)
    return out


STUDENT = [0.30, 0.36, 0.28, 0.40, 0.33]
METHODS = {"kd": [0.33, 0.37, 0.33, 0.42, 0.36],      # a small consistent gain
           "pkdot": [0.35, 0.30, 0.31, 0.36, 0.36],   # noise
           "teacher": [0.90, 0.93, 0.91, 0.94, 0.92]}


def test_paired_delta_ci_p_values_and_holm_against_scipy(tmp_path):
    for s, v in enumerate(STUDENT):
        write(tmp_path, "student", s, v)
    for m, vs in METHODS.items():
        for s, v in enumerate(vs):
            write(tmp_path, m, s, v)
    df = collect(tmp_path)
    cmp = compare(df).set_index("method")
    p_ref = {m: ttest_rel(vs, STUDENT).pvalue for m, vs in METHODS.items()}
    holm_ref = dict(zip(p_ref, holm_by_hand(list(p_ref.values()))))
    for m, vs in METHODS.items():
        c = cmp.loc[m]
        d = np.subtract(vs, STUDENT)
        ci = ttest_rel(vs, STUDENT).confidence_interval(0.95)
        assert c.n == 5 and c["mean"] == pytest.approx(d.mean())
        assert (c.ci_low, c.ci_high) == pytest.approx((ci.low, ci.high))
        assert c.p_t == pytest.approx(p_ref[m]) and c.p_holm == pytest.approx(holm_ref[m])
        signs = np.array(list(itertools.product((-1, 1), repeat=5)))
        assert c.p_sign_flip == pytest.approx(np.mean(np.abs(signs @ d) >= abs(d.sum()) - 1e-12))
        assert c.significant == (holm_ref[m] < 0.05)
    assert cmp.loc["teacher"].significant and not cmp.loc["pkdot"].significant
    rows = section_rows(render(summarise(df), df))
    kd = cmp.loc["kd"]
    cell = rows["kd"]["Δ ccc_mean vs student [95% CI], paired t p"]
    assert cell.startswith(f"{kd['mean']:+.3f} [{kd.ci_low:+.3f}, {kd.ci_high:+.3f}] p=")
    assert cell.endswith(" *") == bool(kd.significant)
    assert rows["teacher"]["Δ ccc_mean vs student [95% CI], paired t p"].endswith("p<0.001 *")
    # 5 pairs: the line under the table states the exact test's floor, 2/2^5
    assert rows["kd"]["sign-flip p"] == "0.0625"
    assert "`sign-flip p`: exact two-sided sign-flip test; its floor is 0.0625 at n=5." in render(summarise(df), df)
    assert rows["kd"]["pairs"] == "5" and rows["student"]["pairs"] == ""
    text = render(summarise(df), df)
    assert "Holm's correction over the section's 3 comparisons with the student" in text


STUDY = {"kd": [0.36, 0.41, 0.35, 0.45, 0.38], "pkdot": [0.31, 0.37, 0.27, 0.42, 0.35]}  # method.lr=0.05


@pytest.mark.parametrize("declared", [True, False])
def test_a_study_declared_in_stats_family_is_corrected_apart_from_the_main_rows(tmp_path, declared):
    for s, v in enumerate(STUDENT):
        write(tmp_path, "student", s, v)
    for m, vs in METHODS.items():
        for s, v in enumerate(vs):
            write(tmp_path, m, s, v)
    for m, vs in STUDY.items():
        for s, v in enumerate(vs):
            write(tmp_path, m, s, v, lr=0.05, family="lr_sensitivity" if declared else None)
    df = collect(tmp_path)
    cmp = compare(df)
    main_rows = cmp[cmp.config_id.isin(df[df.overrides == ""].config_id)]  # the rows without method.lr=0.05
    study_rows = cmp[~cmp.index.isin(main_rows.index)]
    p_main = [ttest_rel(METHODS[m], STUDENT).pvalue for m in main_rows.method]
    p_study = [ttest_rel(STUDY[m], STUDENT).pvalue for m in study_rows.method]
    assert list(main_rows.p_t) == pytest.approx(p_main) and list(study_rows.p_t) == pytest.approx(p_study)
    if declared:  # each family alone: the main rows' Holm p are the ones without the study (the test above)
        assert list(main_rows.p_holm) == pytest.approx(list(holm_by_hand(p_main)))
        assert list(study_rows.p_holm) == pytest.approx(list(holm_by_hand(p_study)))
        assert set(study_rows.family) == {"lr_sensitivity"} and set(main_rows.family) == {"main"}
    else:  # undeclared, the study's rows join the main family: 5 comparisons, every main p larger
        both = list(holm_by_hand(p_main + p_study))
        assert list(main_rows.p_holm) + list(study_rows.p_holm) == pytest.approx(both)
        alone = holm_by_hand(p_main)
        assert all(a >= b for a, b in zip(both, alone)) and any(a > b for a, b in zip(both, alone))
    text = render(summarise(df), df)
    rows = section_rows(text)
    if declared:
        # kd·a: the defaults (fewest overrides), kd·b: the study's configuration, its override listed once
        assert rows["kd·b"]["role"] == "Holm family lr_sensitivity" and rows["kd·a"]["role"] == ""
        assert "- `kd·b`: `method.lr=0.05`" in text
        assert ("Holm's correction over each family of the section (stats.family), separately: main: 3 comparisons "
                "with the student; lr_sensitivity: 2 comparisons with the student.") in text
        tex = render_latex(summarise(df), cmp)
        assert r"kd [method.lr=0.05] (Holm family lr\_sensitivity)" in tex
        assert r"main: 3 comparisons with the student; lr\_sensitivity: 2 comparisons with the student." in tex
    else:
        assert rows["kd·b"]["role"] == ""
        assert "Holm's correction over the section's 5 comparisons with the student." in text


def test_a_row_whose_runs_declare_different_families_names_them_and_the_fix(tmp_path):
    for s, v in enumerate(STUDENT):
        write(tmp_path, "student", s, v)
    write(tmp_path, "kd", 0, 0.4, lr=0.05)
    second = write(tmp_path, "kd", 1, 0.4, lr=0.05, family="lr_sensitivity")
    df = collect(tmp_path)
    with pytest.raises(LeaderboardError, match=r"kd \[method.lr=0.05\] of synthetic: its runs declare different "
                       r"Holm families in config.stats.family \(lr_sensitivity: f0-s1 \(e.g. " + str(second.parent) +
                       r"/record.json\); main: f0-s0 .*overwrite=true"):
        summarise(df)


def test_a_bad_family_name_names_the_file_and_field(tmp_path):
    path = write(tmp_path, "kd", 0, 0.4, family="lr sensitivity")
    with pytest.raises(RecordError, match=rf"{path}: config.stats.family = 'lr sensitivity': expected a name"):
        collect(tmp_path)


def test_unpaired_runs_are_counted_named_and_left_out(tmp_path):
    for s in (0, 1, 2, 3, 4):
        write(tmp_path, "student", s, STUDENT[s])
    for s in (0, 1, 2, 3, 5):  # no seed 4, an extra seed 5
        write(tmp_path, "kd", s, 0.5 + 0.01 * s)
    df = collect(tmp_path)
    c = compare(df).iloc[0]
    assert c.n == 4 and c.unpaired == ["f0-s5"] and c.unpaired_reference == ["f0-s4"]
    assert c["mean"] == pytest.approx(np.mean([0.5 + 0.01 * s - STUDENT[s] for s in range(4)]))
    text = render(summarise(df), df)
    assert "- kd vs student: kd f0-s5 (no student partner); student f0-s4 (no kd partner)" in text
    rows = section_rows(text)
    assert rows["kd"]["runs"] == "5" and rows["kd"]["pairs"] == "4"
    assert "sign-flip p" in rows["kd"] and "its floor is 0.125 at n=4." in text


def test_privileged_information_control_rows_and_method_minus_control(tmp_path):
    kd = [0.40, 0.45, 0.43, 0.47, 0.41]
    zeros = [0.35, 0.41, 0.40, 0.42, 0.37]
    for s in range(5):
        write(tmp_path, "student", s, STUDENT[s])
        write(tmp_path, "kd", s, kd[s])  # older records: no privileged_control key at all = none
        write(tmp_path, "kd", s, zeros[s], control="zeros")
        if s != 4:
            write(tmp_path, "kd", s, kd[s] - 0.001 * s, control="shuffle")
        write(tmp_path, "pkdot", s, 0.3, control="none")  # explicit none, no control runs of its own
    df = collect(tmp_path)
    assert set(df[df.method == "kd"].control) == {"none", "zeros", "shuffle"}
    text = render(summarise(df), df)
    rows = section_rows(text)
    assert "kd · PI zeros" in rows and "kd · PI shuffle" in rows
    assert "privileged_control=" not in text.split("## synthetic")[1]  # never the raw override text
    assert rows["kd · PI zeros"]["role"] == "control: privileged input zeroed"
    order = [r for r in rows]
    assert order.index("kd · PI zeros") == order.index("kd") + 1
    assert order.index("kd · PI shuffle") == order.index("kd") + 2
    cmp = compare(df)
    vs_zeros = cmp[cmp.reference == "PI zeros"]
    assert list(vs_zeros.method) == ["kd"]  # pkdot has no control runs
    c = vs_zeros.iloc[0]
    ref = ttest_rel(kd, zeros)
    assert c["mean"] == pytest.approx(np.mean(np.subtract(kd, zeros))) and c.p_t == pytest.approx(ref.pvalue)
    cell = rows["kd"]["Δ vs PI zeros [95% CI], paired t p"]
    assert cell == f"{c['mean']:+.3f} [{c.ci_low:+.3f}, {c.ci_high:+.3f}] p<0.001 * (n=5)"  # 5 consistent pairs
    assert rows["pkdot"]["Δ vs PI zeros [95% CI], paired t p"] == ""
    # the control rows are compared with the student too; each reference is its own Holm family
    assert len(cmp[(cmp.reference == "student") & (cmp.method == "kd")]) == 3
    assert ("Holm's correction over each family of the section: 4 comparisons with the student; 1 with PI zeros; "
            "1 with PI shuffle.") in text
    assert "- kd vs PI shuffle: kd f0-s4 (no PI shuffle partner)" in text
    assert rows["kd"]["Δ vs PI shuffle [95% CI], paired t p"].endswith("(n=4)")


def test_bad_control_value_names_the_file_and_field(tmp_path):
    path = write(tmp_path, "kd", 0, 0.4, control="noise")
    with pytest.raises(LeaderboardError, match=rf"{path}: config.method.privileged_control = 'noise'"):
        collect(tmp_path)


def test_possibly_undertrained_runs_are_flagged_with_counts(tmp_path):
    def summary(model, reason, epoch):
        return {"extra": {"training": {model: {"stop_reason": reason, "selected_epoch": epoch, "epochs_run": 9}}}}

    def logs(epoch):
        return {"logs": {"student": [{"epoch": e, "selected": e == epoch} for e in range(epoch + 3)]}}

    def counted(epoch, per_epoch):  # a newer record: its log counts each epoch's optimizer updates
        return {"logs": {"student": [{"epoch": e, "selected": e == epoch, "optimizer_steps": per_epoch}
                                     for e in range(epoch + 12)]},
                **summary("student", "patience", epoch)}

    write(tmp_path, "student", 0, 0.3, **summary("student", "patience", 0))     # selected at epoch 0: flag
    write(tmp_path, "student", 1, 0.3, **summary("student", "max_epochs", 30))  # hit the cap: flag
    write(tmp_path, "student", 2, 0.3, **summary("student", "budget", 1))       # fixed budget: no flag
    write(tmp_path, "student", 3, 0.3, **logs(1))                               # older record, epoch 1: flag
    write(tmp_path, "student", 4, 0.3, **logs(7))                               # older record, epoch 7: fine
    write(tmp_path, "student", 5, 0.3, **counted(7, 12))   # epoch 7, but 8 x 12 = 96 updates < 100: flag
    write(tmp_path, "student", 6, 0.3, **counted(7, 13))   # 8 x 13 = 104 updates: fine
    write(tmp_path, "student", 7, 0.3, **counted(1, 1000))  # epoch 1 (many updates): flagged once, as early
    write(tmp_path, "kd", 0, 0.3, **{"extra": {"training": {"teacher": {"stop_reason": "max_epochs",
                                                                        "selected_epoch": 0},
                                                            "student": {"stop_reason": "min_lr",
                                                                        "selected_epoch": 12}}}})
    write(tmp_path, "teacher", 0, 0.9, **summary("teacher", "max_epochs", 40))  # the teacher row's own model
    df = collect(tmp_path)
    summ = summarise(df)
    student = summ[summ.method == "student"].iloc[0]
    assert (student.n_flagged, student.n_selected_early, student.n_few_updates, student.n_max_epochs) == (5, 3, 1, 1)
    text = render(summ, df)
    assert "Possibly undertrained: 6 of 10 runs" in text
    assert ("- student: 5 of 8 (selected at epoch ≤ 1: f0-s0 (epoch 0), f0-s3 (epoch 1), f0-s7 (epoch 1); "
            "selected after < 100 updates: f0-s5 (96); stopped at max_epochs: f0-s1)") in text
    assert "- teacher: 1 of 1 (stopped at max_epochs: f0-s0)" in text
    undertrained = text.split("Possibly undertrained")[1].split("\n\n")[0]
    assert "- kd:" not in undertrained  # kd's own teacher hit its cap, but kd is scored on its student...
    assert "- kd: 1 of 1 runs: teacher in 1 (f0-s0)" in text.split("Frozen parts")[1]  # ...said apart


def test_frozen_parts_that_ran_to_their_epoch_cap_are_named_apart(tmp_path):
    """PKDOT's T-Net stops when epoch - selected > patience, else at its last epoch (methods/pkdot.py): it ran to
    its cap exactly when its log reaches epoch epochs - 1 and epochs - 1 - selected <= patience. A record whose
    extra.training.tnet has a stop reason (the T-Net trained by harness.training.fit) is read from it instead."""
    def tnet(selected, last_epoch, epochs=60, patience=10, reused=False):
        return {"config": {"method": {"name": "pkdot", "lr": 0.01, "tnet": {"epochs": epochs, "patience": patience}},
                           "task": {"name": "synthetic", "target": "regression"}},
                "extra": {"tnet": {"selected_epoch": selected, "selection": "lowest validation loss", "reused": reused},
                          "training": {"student": {"stop_reason": "patience", "selected_epoch": 20},
                                       "teacher": {"stop_reason": "patience", "selected_epoch": 9}}},
                "logs": {"tnet": [{"epoch": e} for e in range(0, last_epoch + 1, 5)] + [{"epoch": last_epoch}]}}

    cases = {0: tnet(59, 59), 1: tnet(49, 59),  # at the cap: still improving, or patience not yet out
             2: tnet(48, 59),                   # 59 - 48 = 11 > 10: patience ran out at the last epoch
             3: tnet(30, 41),                   # stopped by patience long before the cap
             4: tnet(55, 59, reused=True),      # a stored T-Net: its log and selection travel with it
             5: tnet(59, 59), 6: tnet(48, 59)}  # trained by harness.training.fit: its summary says why it stopped
    cases[5]["extra"]["training"]["tnet"] = {"stop_reason": "max_epochs", "selected_epoch": 59}  # named once
    cases[6]["extra"]["training"]["tnet"] = {"stop_reason": "max_epochs", "selected_epoch": 48}  # the summary wins
    for seed, fields in cases.items():
        config = fields.pop("config")
        hand_made_record(tmp_path, "pkdot", seed, {"ccc_mean": 0.3, "mae_mean": 0.7}, config=config, **fields)
    no_validation = tnet(59, 59)
    no_validation["extra"]["tnet"]["selection"] = "last epoch (no validation split)"  # nothing to stop on: by design
    no_validation["config"]["method"]["lr"] = 0.02
    config = no_validation.pop("config")
    hand_made_record(tmp_path, "pkdot", 0, {"ccc_mean": 0.3, "mae_mean": 0.7}, config=config, **no_validation)
    df = collect(tmp_path)
    assert dict(zip(df.seed[df.parts_at_cap != ""], df.parts_at_cap[df.parts_at_cap != ""])) == \
        {0: "tnet", 1: "tnet", 4: "tnet", 5: "tnet", 6: "tnet"}
    text = render(summarise(df), df)
    assert "- pkdot: 5 of 7 runs: tnet in 5 (f0-s0, f0-s1, f0-s4, f0-s5, f0-s6)" in text.split("Frozen parts")[1]
    assert text.count("runs: tnet in") == 1  # not the no-validation row


def test_a_part_at_its_cap_in_every_run_of_a_row_is_counted_not_listed(tmp_path):
    """More than 3 runs, all with the part at its cap: `tnet in all 4`, not the four names (footnote lines of
    hundreds of characters said nothing more); fewer, or not all: the names."""
    config = {"method": {"name": "pkdot", "tnet": {"epochs": 60, "patience": 10}},
              "task": {"name": "synthetic", "target": "regression"}}
    for seed in range(4):
        hand_made_record(tmp_path / "all", "pkdot", seed, {"ccc_mean": 0.3, "mae_mean": 0.7}, config=config,
                         extra={"training": {"tnet": {"stop_reason": "max_epochs", "selected_epoch": 59}}})
    for seed in range(4):
        stop = "max_epochs" if seed < 3 else "patience"
        hand_made_record(tmp_path / "some", "pkdot", seed, {"ccc_mean": 0.3, "mae_mean": 0.7}, config=config,
                         extra={"training": {"tnet": {"stop_reason": stop, "selected_epoch": 30}}})
    df_all, df_some = collect(tmp_path / "all"), collect(tmp_path / "some")
    assert "- pkdot: 4 of 4 runs: tnet in all 4" in render(summarise(df_all), df_all)
    assert "- pkdot: 3 of 4 runs: tnet in 3 (f0-s0, f0-s1, f0-s2)" in render(summarise(df_some), df_some)


def test_bad_training_summary_names_the_file_and_field(tmp_path):
    path = write(tmp_path, "student", 0, 0.3,
                 extra={"training": {"student": {"stop_reason": "tired", "selected_epoch": 3}}})
    with pytest.raises(LeaderboardError, match=rf"{path}: extra.training.student.stop_reason = 'tired'"):
        collect(tmp_path)


def test_a_single_run_shows_its_bootstrap_ci_instead_of_a_std(tmp_path):
    ci = {"ccc_mean": [0.351, 0.449], "unit": "subject", "n_units": 8, "n_resamples": 1000}
    write(tmp_path, "student", 0, 0.4, metrics_ci=ci)
    for s in range(3):
        write(tmp_path, "kd", s, 0.4 + s / 100, metrics_ci=ci)
    text = render(summarise(collect(tmp_path)), collect(tmp_path))
    rows = section_rows(text)
    assert rows["student"]["ccc_mean"] == "0.400 [0.351, 0.449]"
    assert rows["kd"]["ccc_mean"] == f"0.410 ± {np.std([0.40, 0.41, 0.42], ddof=1):.3f}"  # 3 runs: ± std
    assert "- student: subjects resampled (8 in the test split, 1000 resamples)" in text
    assert rows["kd"]["Δ ccc_mean vs student [95% CI], paired t p"] == "+0.000 (1 pair: no test)"


def test_bad_metrics_ci_names_the_file_and_field(tmp_path):
    path = write(tmp_path, "student", 0, 0.4, metrics_ci={"ccc_mean": [0.3], "unit": "subject"})
    with pytest.raises(LeaderboardError, match=rf"{path}: metrics_ci.ccc_mean = \[0.3\]"):
        collect(tmp_path)


def test_two_runs_of_one_row_with_the_same_fold_and_seed_name_both_files(tmp_path):
    first = write(tmp_path, "student", 0, 0.4)
    write(tmp_path, "kd", 0, 0.5)
    dup = first.parent.with_name(first.parent.name + "-copy")
    dup.mkdir()
    (dup / "record.json").write_text(first.read_text())
    with pytest.raises(LeaderboardError, match="two runs with fold=0, seed=0"):
        compare(collect(tmp_path))


def test_csv_carries_the_comparisons_on_the_primary_metric_line(tmp_path):
    for s, v in enumerate(STUDENT):
        write(tmp_path, "student", s, v)
        write(tmp_path, "kd", s, METHODS["kd"][s])
    write_leaderboard(tmp_path, tmp_path / "lb.md", tmp_path / "lb.csv")
    csv = pd.read_csv(tmp_path / "lb.csv")
    kd = csv[(csv.method == "kd") & (csv.metric == "ccc_mean")].iloc[0]
    assert kd.vs_student_n == 5 and kd.vs_student_p_t == pytest.approx(ttest_rel(METHODS["kd"], STUDENT).pvalue)
    assert kd.vs_student_delta == pytest.approx(np.mean(np.subtract(METHODS["kd"], STUDENT)))
    assert pd.isna(csv[(csv.method == "kd") & (csv.metric == "mae_mean")].iloc[0].vs_student_delta)


def test_sections_sort_their_numbers_as_numbers(tmp_path):
    """A sample-size sweep's sections read n_train=200, 500, 1000, not the string order 1000, 200, 500."""
    for n in (1000, 200, 500):
        for s in range(2):
            hand_made_record(tmp_path, "student", s, {"accuracy": 0.5 + s / 10},
                             task_variant=f"experiment 1, n_train={n}", primary_metric="accuracy", config_id=f"c{n}")
    df = collect(tmp_path)
    text = render(summarise(df), df)
    headings = [line for line in text.splitlines() if line.startswith("## synthetic")]
    assert [h.split("n_train=")[1].split()[0] for h in headings] == ["200", "500", "1000"]


def test_each_section_names_the_commits_its_runs_were_computed_at(tmp_path):
    sha_a, sha_b = "a" * 40, "b" * 40
    for seed in range(3):
        write(tmp_path, "student", seed, 0.5, git=sha_a)
        write(tmp_path, "kd", seed, 0.6, git=sha_a if seed else f"{sha_b}-dirty")
    write(tmp_path, "pkdot", 0, 0.4, task_variant="5-class")  # a record without its commit
    text = render(summarise(df := collect(tmp_path)), df)
    regression, classes = text.split("## synthetic — valence")[1], text.split("## synthetic — 5-class")[1]
    assert ("Code: `aaaaaaa` 5 runs (kd, student); `bbbbbbb-dirty` 1 run (kd) (`-dirty`: computed with "
            "uncommitted changes, which the commit alone may not reproduce).") in regression.split("\n## ")[0]
    assert "Code: `unknown` 1 run (pkdot)." in classes.split("\n## ")[0]


def test_updates_at_selection_are_counted_right_in_a_log_thinned_by_log_every(tmp_path):
    """log_every keeps every k-th epoch (and the selected one): summing the kept epochs' counts would undercount
    and flag a run that made enough updates."""
    from harness.records import thin_log

    def thinned(epoch, per_epoch):
        full = [{"epoch": e, "selected": e == epoch, "optimizer_steps": per_epoch} for e in range(epoch + 12)]
        log = thin_log(full, 5)
        assert [e["epoch"] for e in log] == [0, 5, 7, 10, 15, 18]  # epochs 1-4 and 6 are gone
        return {"logs": {"student": log},
                "extra": {"training": {"student": {"stop_reason": "patience", "selected_epoch": epoch}}}}

    write(tmp_path, "student", 0, 0.3, **thinned(7, 13))  # 8 x 13 = 104 updates (the kept epochs hold 39): fine
    write(tmp_path, "student", 1, 0.3, **thinned(7, 12))  # 8 x 12 = 96 updates: flag
    mixed = thinned(7, 13)
    mixed["logs"]["student"][1]["optimizer_steps"] = 14   # kept epochs that disagree: the log cannot tell
    write(tmp_path, "student", 2, 0.3, **mixed)
    df = collect(tmp_path).set_index("seed")
    assert df.updates_at_selection[[0, 1]].tolist() == [104, 96] and pd.isna(df.updates_at_selection[2])
    student = summarise(df.reset_index()).iloc[0]
    assert (student.n_flagged, student.n_few_updates) == (1, 1)
    assert "selected after < 100 updates: f0-s1 (96)" in student.flagged_runs


def test_rows_selected_on_test_are_marked_and_paired_with_a_student_selected_on_test(tmp_path):
    """selection_split=test runs are rows of their own, marked optimistic in the row and under the section title,
    and compared with the student selected on test, not with the one selected on validation."""
    from harness.leaderboard import SELECTED_ON_TEST, collect, compare, render, summarise
    values = {("student", "val"): [0.50, 0.52, 0.51], ("student", "test"): [0.60, 0.61, 0.65],
              ("kd", "test"): [0.70, 0.72, 0.74]}
    for (method, split), accs in values.items():
        for seed, acc in enumerate(accs):
            hand_made_record(tmp_path, method, seed, {"accuracy": acc}, primary_metric="accuracy",
                             config={"method": {"name": method}, "selection_split": split})
    df = collect(tmp_path)
    summary, cmp = summarise(df), compare(df)
    marked = summary.drop_duplicates(["method", "config_id"]).set_index(["method", "config_id"]).selected_on_test
    assert sorted(marked.values.tolist()) == [False, True, True]
    (kd,) = cmp[(cmp.method == "kd") & (cmp.reference == "student")].itertuples()
    assert kd.mean == pytest.approx(np.mean(np.subtract(values["kd", "test"], values["student", "test"])))
    text = render(summary, df, cmp)
    assert text.count(f"| {SELECTED_ON_TEST}") + text.count(f"; {SELECTED_ON_TEST}") == 2  # both test rows' roles
    assert f"**Rows marked `{SELECTED_ON_TEST}`**" in text
    assert render_latex(summary, cmp).count(SELECTED_ON_TEST) == 2  # the LaTeX export marks the same rows
