"""LaTeX export of the leaderboard: the tables' structure on a hand-made record set, and that pdflatex
compiles the file (skipped, saying why, where no LaTeX is installed)."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from test_leaderboard import METHODS, STUDENT, write

from harness.cli import main
from harness.leaderboard.latex import escape, render_latex
from harness.leaderboard import collect, compare, summarise

KD = METHODS["kd"]
# kd · PI zeros beats the student at p = 0.030, not after Holm (0.060): the dagger must follow Holm, not p
KD_ZEROS = [0.31, 0.365, 0.31, 0.41, 0.355]
ODD_VARIANT = "50% a&b #1_x"  # a task variant full of LaTeX special characters


def hand_made_records(root: Path, **fields) -> None:
    """student, kd (with its privileged-zeros control), pkdot and teacher, 5 seeds each, paired by seed."""
    for s in range(5):
        write(root, "student", s, STUDENT[s], **fields)
        for method, values in METHODS.items():
            write(root, method, s, values[s], **fields)
        write(root, "kd", s, KD_ZEROS[s], control="zeros", **fields)


def latex_of(root: Path) -> tuple[str, object]:
    df = collect(root)
    comparisons = compare(df)
    return render_latex(summarise(df), comparisons), comparisons


def table_rows(tex: str) -> tuple[list[str], list[list[str]]]:
    """Header cells and body lines of the first table; a body line is its cells, or ["midrule"]."""
    tabular = tex.split(r"\begin{tabular}")[1].split(r"\end{tabular}")[0]
    lines = [line for line in tabular.splitlines()[1:] if line]
    assert lines[0] == r"\toprule" and lines[2] == r"\midrule" and lines[-1] == r"\bottomrule"
    body = [["midrule"] if line == r"\midrule" else _cells(line) for line in lines[3:-1]]
    return _cells(lines[1]), body


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.removesuffix(r"\\").split(" & ")]


def test_escape_leaves_ascii_that_latex_reads_as_the_text():
    assert escape("a_b 50% & #1 {x} $y ~ ^ \\ <>|") == (
        r"a\_b 50\% \& \#1 \{x\} \$y \textasciitilde{} \textasciicircum{} \textbackslash{} "
        r"\textless{}\textgreater{}\textbar{}")
    assert escape("kd · PI zeros ± Δ ≤ 1 — é ☃") == r"kd $\cdot$ PI zeros $\pm$ $\Delta$ $\leq$ 1 --- e ?"
    assert escape("mean ± std, Δ → x").isascii()
    assert escape("Lopez-Paz et al. §4") == r"Lopez-Paz et al. \S{}4"  # the section sign, not `?`


def test_rows_blocks_bold_daggers_and_caption(tmp_path):
    hand_made_records(tmp_path)
    tex, comparisons = latex_of(tmp_path)
    header, body = table_rows(tex)
    assert header[:3] == ["method", r"ccc\_mean $\uparrow$", r"mae\_mean $\downarrow$"]
    assert header[3:] == [r"$\Delta$ ccc\_mean vs student [95\% CI]", r"$\Delta$ vs PI zeros [95\% CI]", "runs"]
    # bounds in blocks of their own: the lower bound first, the upper bound last, \midrule between
    labels = [row[0] for row in body]
    assert labels == ["student (lower bound)", "midrule", "kd", r"kd $\cdot$ PI zeros", "pkdot", "midrule",
                      "teacher (upper bound: privileged input at test)"]
    rows = {row[0]: dict(zip(header, row)) for row in body if row != ["midrule"]}
    # bold: the best non-bound row of each metric, higher ccc and lower mae (= 1 - ccc here) both kd's;
    # the teacher is better still but a bound
    for metric, column in (("ccc_mean", header[1]), ("mae_mean", header[2])):
        bold = [label for label, row in rows.items() if r"\mathbf" in row[column]]
        assert bold == ["kd"], metric
    kd_ccc = np.mean(KD)
    assert rows["kd"][header[1]] == rf"$\mathbf{{{kd_ccc:.3f}}} \pm {np.std(KD, ddof=1):.3f}$"
    # the dagger exactly on the differences significant after Holm, in each family, with compare()'s numbers
    summary = summarise(collect(tmp_path)).drop_duplicates(["method", "config_id"])
    label = {(r.method, r.config_id): escape(r.label) for r in summary.itertuples()}
    by_label = {lbl.split(" (")[0]: row for lbl, row in rows.items()}  # without the bound's suffix
    for reference, column in (("student", header[3]), ("PI zeros", header[4])):
        family = comparisons[comparisons.reference == reference]
        assert len(family) == {"student": 4, "PI zeros": 1}[reference]
        if reference == "student":  # the record set has a difference that Holm's correction unmarks
            assert ((family.p_t < 0.05) & ~family.significant.astype(bool)).any()
        for c in family.itertuples():
            cell = by_label[label[c.method, c.config_id]][column]
            assert cell.startswith(f"${c.mean:+.3f}") and f"[{c.ci_low:+.3f}, {c.ci_high:+.3f}]$" in cell
            assert (r"\dagger" in cell) == bool(c.significant), (reference, c.method)
    assert sum(r"\dagger" in row[header[3]] for row in rows.values()) == \
        int(comparisons[comparisons.reference == "student"].significant.sum())
    assert rows["teacher (upper bound: privileged input at test)"][header[3]].startswith(
        f"${comparisons.set_index('method').loc['teacher', 'mean']:+.3f}" + r"^{\dagger}")
    assert rows["pkdot"][header[3]] and r"\dagger" not in rows["pkdot"][header[3]]
    assert rows["student (lower bound)"][header[3]] == ""  # the reference itself
    caption = tex.split(r"\caption{")[1].split("}\n")[0]
    assert "synthetic data" in caption and "valence/arousal regression" in caption
    assert (r"$^{\dagger}$: significant at 0.05 (paired t-test) after Holm's correction over each family of the "
            "section: 4 comparisons with the student; 1 with PI zeros.") in tex


def test_a_single_run_shows_its_bootstrap_ci_as_in_the_markdown(tmp_path):
    ci = {"ccc_mean": [0.351, 0.449], "unit": "subject", "n_units": 8, "n_resamples": 1000}
    write(tmp_path, "student", 0, 0.4, metrics_ci=ci)
    for s in range(3):
        write(tmp_path, "kd", s, 0.4 + s / 100, metrics_ci=ci)
    tex, _ = latex_of(tmp_path)
    header, body = table_rows(tex)
    rows = {row[0]: dict(zip(header, row)) for row in body if row != ["midrule"]}
    assert rows["student (lower bound)"][r"ccc\_mean $\uparrow$"] == r"$0.400\ [0.351, 0.449]$"
    assert rows["kd"][r"ccc\_mean $\uparrow$"] == rf"$\mathbf{{0.410}} \pm {np.std([0.40, 0.41, 0.42], ddof=1):.3f}$"
    assert rows["kd"][r"$\Delta$ ccc\_mean vs student [95\% CI]"] == "$+0.000$ (1 pair: no test)"
    assert "a single-run row shows instead its test-set 95\\% bootstrap CI of ccc\\_mean" in tex


def test_mimic_caption_and_escaped_variant(tmp_path):
    hand_made_records(tmp_path, data_source="mimic", task_variant=ODD_VARIANT)
    tex, _ = latex_of(tmp_path)
    caption = tex.split(r"\caption{")[1].split("}\n")[0]
    assert caption == r"synthetic --- 50\% a\&b \#1\_x --- mimic data: format fixture, not the real dataset " \
                      "(not comparable to published numbers)"
    assert r"\label{tab:leaderboard-synthetic-50-a-b-1-x-mimic}" in tex
    assert tex.isascii()


def test_cli_latex_writes_the_same_document(tmp_path, capsys):
    hand_made_records(tmp_path / "results")
    out = tmp_path / "out"
    assert main(["leaderboard", "--results", str(tmp_path / "results"), "--out", str(out / "lb.md"),
                 "--csv", str(out / "lb.csv"), "--latex", str(out / "lb.tex")]) == 0
    assert (out / "lb.tex").read_text() == latex_of(tmp_path / "results")[0]
    assert f"and {out / 'lb.tex'}" in capsys.readouterr().out
    assert not list(out.glob(".*tmp*"))  # written atomically, no temporary left behind


def _latex_tools() -> str | None:
    """Why the compile test cannot run here, or None."""
    missing = [tool for tool in ("pdflatex", "pdftotext", "kpsewhich") if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not on PATH (apt-get install texlive-latex-base texlive-latex-recommended " \
               "poppler-utils)"
    for package in ("booktabs.sty", "geometry.sty", "graphicx.sty"):
        if not subprocess.run(["kpsewhich", package], capture_output=True, text=True, check=False).stdout.strip():
            return f"LaTeX package {package} not installed (texlive-latex-recommended)"
    return None


@pytest.mark.skipif(_latex_tools() is not None, reason=str(_latex_tools()))
@pytest.mark.parametrize("records", ["hand-made", "committed results"])
def test_pdflatex_compiles_the_tables(tmp_path, records):
    if records == "hand-made":
        results = tmp_path / "results"
        hand_made_records(results, task_variant=ODD_VARIANT)
        expected = ["kd", "pkdot", "teacher", f"{np.mean(KD):.3f}"]
    else:
        results = Path(__file__).parents[1] / "results"
        if not any(results.rglob("record.json")):
            pytest.skip("no committed records under results/")
        df = collect(results)
        # a student mean as one section shows it (a mean over every section's students appears nowhere)
        summary = summarise(df)
        student = summary[(summary.method == "student") & (summary.metric == summary.primary_metric)].iloc[0]
        expected = [*df.method.unique(), f"{student['mean']:.3f}"]
        if (df.task == "lupi").any():  # its note cites the paper's section: the PDF shows the section sign
            expected.append("(ICLR 2016) §4")
    tex, _ = latex_of(results)
    (tmp_path / "lb.tex").write_text(tex)
    build = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "lb.tex"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120, check=False)
    assert build.returncode == 0, build.stdout[-3000:]
    text = subprocess.run(["pdftotext", "-layout", "lb.pdf", "-"], cwd=tmp_path, capture_output=True, text=True,
                          check=True).stdout
    for word in expected:
        assert word in text, word


def test_a_control_is_never_bold_even_when_it_beats_every_method(tmp_path):
    for s in range(5):
        write(tmp_path, "student", s, STUDENT[s])
        write(tmp_path, "kd", s, METHODS["kd"][s])
        write(tmp_path, "kd", s, METHODS["kd"][s] + 0.1, control="zeros")  # better than kd, but a diagnostic
    header, body = table_rows(latex_of(tmp_path)[0])
    rows = {row[0]: dict(zip(header, row)) for row in body if row != ["midrule"]}
    assert r"\mathbf" in rows["kd"][header[1]]
    assert r"\mathbf" not in rows[r"kd $\cdot$ PI zeros"][header[1]]
