"""`harness report`: the figures draw the leaderboard's own numbers, the page names every section and row, every
image it links is a readable PNG, and headless Chromium renders it (skipped when Chromium is absent)."""

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from _records import control_overrides, hand_made_record

from harness.cli import main
from harness.leaderboard import collect, compare, section_layouts, summarise
from harness.report import ReportError, write_report
from harness.report.data import forest_points, strip_columns

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REGRESSION, CLASSES = "valence/arousal regression", "5-class"


def write(root: Path, method: str, seed: int, value: float | None, control: str | None = None,
          variant: str = REGRESSION, epochs: int = 4, error: str | None = None, **extra) -> None:
    """A record like tests/test_leaderboard.py's `write`, with a training log of the evaluated model."""
    config = {"method": {"name": method, **({"privileged_control": control} if control else {})},
              "task": {"name": "synthetic", "variant": variant}}
    log = [{"epoch": e, "train_loss": 1.0 / (e + 1), "val_ccc_mean": value * e / epochs,
            "selected": e == epochs - 2} for e in range(epochs)] if error is None else []
    failed = {} if error is None else {"status": "failed", "error": error}
    hand_made_record(root, method, seed, {"ccc_mean": value, "mae_mean": 1 - value} if error is None else {},
                     task_variant=variant, config=config, git="abc123", overrides=control_overrides(control),
                     logs={"teacher" if method == "teacher" else "student": log}, extra=extra, **failed)


def hand_made(root: Path) -> Path:
    """Regression: student, kd, kd · PI zeros, dmd (two edges), mtpkdot, teacher over 5 seeds.
    5-class: kd only, so that section has no pairs. A failed kd run in each; a section of one failed run."""
    rng = np.random.default_rng(0)
    edges = {"edges": ["audio->visual", "physio->visual"], "nodes": ["visual", "audio", "physio"],
             "homo": {"prior": [0.5, 0.5], "per_epoch": [[0.5, 0.5], [0.6, 0.4], [0.7, 0.3], [0.7, 0.3]]},
             "hetero": {"prior": [0.5, 0.5], "per_epoch": [[0.5, 0.5], [0.4, 0.6], [0.3, 0.7], [0.3, 0.7]]}}
    choice = {"names": ["visual", "joint"], "selection": "batch", "unit": "batches", "selected_epoch": 2,
              "per_epoch": [{"visual": 1, "joint": 6}, {"visual": 3, "joint": 4}, {"visual": 0, "joint": 7},
                            {"visual": 2, "joint": 5}]}
    for seed in range(5):
        base = 0.3 + 0.05 * rng.standard_normal()
        write(root, "student", seed, base)
        write(root, "kd", seed, base + 0.08 + 0.01 * rng.standard_normal())
        write(root, "kd", seed, base + 0.01 * rng.standard_normal(), control="zeros")
        write(root, "dmd", seed, base + 0.02 * rng.standard_normal(), dmd_edges=edges)
        write(root, "mtpkdot", seed, base - 0.01, teacher_choice=choice)
        write(root, "teacher", seed, 0.8 + 0.02 * rng.standard_normal())
        write(root, "kd", seed, 0.4, variant=CLASSES)
    write(root, "kd", 9, None, error="RuntimeError: out of memory")
    write(root, "kd", 9, None, variant=CLASSES, error="RuntimeError: out of memory")
    write(root, "kd", 0, None, variant="binary", error="ValueError: boom")
    return root


def img_sources(index: Path) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', index.read_text())


def assert_images_load(out: Path) -> None:
    """Every <img src> is a relative file beside index.html holding a non-empty PNG that PIL decodes."""
    sources = img_sources(out / "index.html")
    assert sources
    for src in sources:
        assert "/" not in src and not src.startswith(("http", "file:"))
        path = out / src
        assert path.stat().st_size > 0, src
        with Image.open(path) as im:
            assert im.format == "PNG"
            im.load()
            assert np.asarray(im.convert("L")).std() > 1, f"{src} is blank"


@pytest.fixture(scope="module")
def hand_report(tmp_path_factory):
    root = hand_made(tmp_path_factory.mktemp("records"))
    out = tmp_path_factory.mktemp("site") / "report"
    write_report(root, out)
    return root, out


def test_forest_points_are_compare_numbers_with_controls_under_their_method(hand_report):
    root, _ = hand_report
    runs = collect(root)
    comparisons = compare(runs)
    layout = next(lay for lay in section_layouts(summarise(runs), comparisons) if lay.section[1] == REGRESSION)
    points = forest_points(layout)
    vs_student = comparisons[(comparisons.reference == "student") & (comparisons.variant == REGRESSION)]
    assert len(points) == len(vs_student) == 5  # every row but the student
    for p in points:
        c = vs_student[(vs_student.method == p.method) & (vs_student.config_id == p.config_id)].iloc[0]
        np.testing.assert_equal([p.n, p.mean, p.ci_low, p.ci_high, p.p_t, p.p_holm, p.significant],
                                [c.n, c["mean"], c.ci_low, c.ci_high, c.p_t, c.p_holm, c.significant])  # nan == nan
    labels = [p.label for p in points]
    assert labels.index("kd · PI zeros") == labels.index("kd") + 1
    assert any(p.significant for p in points)  # kd's +0.08 over 5 seeds, and the teacher


def test_strip_columns_are_the_runs_metrics(hand_report):
    root, _ = hand_report
    runs = collect(root)
    layout = next(lay for lay in section_layouts(summarise(runs), compare(runs)) if lay.section[1] == REGRESSION)
    sec = runs[runs.variant == REGRESSION]
    for col in strip_columns(layout, sec):
        mine = sec[(sec.method == col.method) & (sec.control == col.control) & (sec.status == "ok")]
        assert sorted(col.values) == sorted(mine["m:ccc_mean"]) and col.mean == pytest.approx(np.mean(col.values))


def test_page_names_every_section_row_and_figure(hand_report):
    _, out = hand_report
    html = (out / "index.html").read_text()
    assert "synthetic — valence/arousal regression — synthetic data" in html
    assert "synthetic — 5-class — synthetic data" in html
    for label in ("student", "kd", "kd · PI zeros", "dmd", "mtpkdot", "teacher"):
        assert f"<td>{label}</td>" in html and f"{label} — training" in html
    assert "abc123" in html and "harness report --results" in html and "30 ok runs, 1 failed" in html
    assert "kd: f0-s9-" in html and "RuntimeError: out of memory" in html
    assert "<script" not in html
    names = set(img_sources(out / "index.html"))
    # one training-curve figure per row per section: 6 regression rows, 1 classification row
    assert sum(n.startswith("s3-") and n.endswith("-curves.png") for n in names) == 6
    assert sum(n.startswith("s1-") and n.endswith("-curves.png") for n in names) == 1
    assert {"s3-forest.png", "s3-strip.png"} <= names
    assert any(n.endswith("-dmd-edges.png") for n in names) and any(n.endswith("-teacher-choice.png") for n in names)
    assert_images_load(out)


def test_a_section_without_pairs_renders_without_a_forest_plot(hand_report):
    _, out = hand_report
    html = (out / "index.html").read_text()
    first = html.split('<section id="s1">')[1].split("</section>")[0]
    assert "5-class" in first and "No paired comparison with the student" in first
    assert not (out / "s1-forest.png").exists() and (out / "s1-strip.png").exists()


def test_a_section_of_failed_runs_only_renders(hand_report):
    _, out = hand_report
    html = (out / "index.html").read_text()
    binary = html.split('<section id="s2">')[1].split("</section>")[0]
    assert "synthetic — binary — synthetic data" in binary and "ValueError: boom" in binary
    assert "0 ok runs, 1 failed" in binary and not list(out.glob("s2-*.png"))


def test_cli_replaces_a_report_but_not_another_folder(tmp_path, hand_report):
    root, _ = hand_report
    out = tmp_path / "report"
    assert main(["report", "--results", str(root), "--out", str(out)]) == 0
    (out / "stale.png").write_bytes(b"x")
    assert main(["report", "--results", str(root), "--out", str(out)]) == 0
    assert not (out / "stale.png").exists() and (out / "index.html").exists()  # replaced as a whole
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep")
    with pytest.raises(ReportError, match="not a report"):
        write_report(root, other)
    assert main(["report", "--results", str(root), "--out", str(other)]) == 2
    assert (other / "mine.txt").read_text() == "keep"
    assert not list(tmp_path.glob(".report.*")) and not list(tmp_path.glob(".notes.*"))  # no temp folder left


def test_empty_results_give_a_page(tmp_path):
    write_report(tmp_path / "none", tmp_path / "report")
    assert "No records yet" in (tmp_path / "report" / "index.html").read_text()


COMMITTED = sorted((ROOT / "results").glob("*/*/*/record.json"))


@pytest.fixture(scope="module")
def committed_report(tmp_path_factory):
    if not COMMITTED:
        pytest.skip("no committed records")
    out = tmp_path_factory.mktemp("committed") / "report"
    write_report(ROOT / "results", out)
    return out


def test_committed_results_report(committed_report):
    html = (committed_report / "index.html").read_text()
    runs = collect(ROOT / "results")
    for layout in section_layouts(summarise(runs), compare(runs)):
        task, variant, source, _ = layout.section
        assert f"{task} — {variant} — {source} data" in html
        for _, rows in layout.rows:
            assert f"{rows.iloc[0].label} — training" in html
    assert f"from {len(COMMITTED)} run records" in html
    assert_images_load(committed_report)


def screenshot(index: Path, png: Path) -> np.ndarray:
    subprocess.run([CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
                    f"--screenshot={png}", "--window-size=1400,3000", index.resolve().as_uri()],
                   check=True, capture_output=True, timeout=120)
    assert png.exists() and png.stat().st_size > 0
    with Image.open(png) as im:
        return np.asarray(im.convert("L"), dtype=float)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium): no browser render")
@pytest.mark.parametrize("which", ["hand_report", "committed_report"])
def test_chromium_renders_the_page(which, request, tmp_path):
    out = request.getfixturevalue(which)
    out = out[1] if isinstance(out, tuple) else out
    pixels = screenshot(out / "index.html", tmp_path / "shot.png")
    assert pixels.shape == (3000, 1400)
    assert pixels.std() > 10  # text and figures, not a blank page
    # the first figure's rows (below the header, tables and forest plot) hold drawn pixels too
    assert pixels[1200:2400].std() > 10


def test_curves_of_budget_runs_leave_the_validation_panel_empty(tmp_path, monkeypatch):
    """Runs without a validation split (train.stop=budget) get a labelled empty panel: no ticks, no legend."""
    from harness.report import figures
    from harness.report.data import Curve

    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: drawn.append(fig) or path)
    nan = float("nan")
    runs = [Curve(f"f0-s{s}", [0, 1, 2], [0.9, 0.5 - s / 10, 0.3], [nan] * 3, 2, "budget") for s in range(2)]
    figures.curves(runs, "lupi", "student", "accuracy", tmp_path / "budget.png")
    runs[1] = Curve("f0-s1", [0, 1, 2], [0.9, 0.4, 0.3], [0.6, 0.7, 0.65], 1, "patience")
    figures.curves(runs, "lupi", "student", "accuracy", tmp_path / "validated.png")
    (loss_ax, val_ax), (loss_ax2, val_ax2) = (fig.axes for fig in drawn)
    assert len(val_ax.get_xticks()) == 0 and len(val_ax.get_yticks()) == 0
    assert any("no validation split" in t.get_text() for t in val_ax.texts)
    assert val_ax.get_legend() is None and loss_ax.get_legend() is not None
    assert list(loss_ax.get_xticks()) == [int(t) for t in loss_ax.get_xticks()]  # integer epochs on the loss panel
    assert len(val_ax2.get_xticks()) > 0 and val_ax2.get_legend() is not None
