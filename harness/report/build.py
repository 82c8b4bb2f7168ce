"""Assemble the report: the leaderboard's tables, the records' logs, one PNG per figure, index.html."""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness.leaderboard.cells import _delta_cell, _fmt, _p
from harness.leaderboard.crosstask import entrants, friedman, mean_ranks
from harness.leaderboard.common import BOUND_LABEL, CONTROL_ROLE, REFERENCE, SELECTED_ON_TEST, SOURCE_NOTE
from harness.leaderboard.layout import SectionLayout, section_layouts, task_note
from harness.leaderboard.paired import compare
from harness.leaderboard.records import collect
from harness.leaderboard.summary import summarise
from harness.metrics import higher_is_better
from harness.records import git_sha, iter_records
from harness.report import data, figures
from harness.report.page import render_page
from harness.storage import atomic_write_text, disk_full_guard, make_dirs


class ReportError(ValueError):
    """The output folder cannot be written (it holds something other than a previous report)."""


@dataclass(frozen=True)
class ReportSummary:
    index: Path
    n_records: int
    n_sections: int
    n_figures: int


def write_report(results_dir: Path | str = "results", out_dir: Path | str = "report",
                 command: str | None = None) -> ReportSummary:
    """Write out_dir/index.html and its PNGs from the records under results_dir. The page is built in a
    temporary folder beside out_dir and renamed into place, so a reader never sees half a report."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "index.html").exists():
        raise ReportError(f"{out_dir} exists and is not a report (no index.html): choose another --out")
    command = command or f"harness report --results {results_dir} --out {out_dir}"
    make_dirs(out_dir.parent)
    # a full disk anywhere in the page or its figures: DiskFullError, the temporary folder removed, the old report kept
    with disk_full_guard(out_dir.parent, f"writing the report {out_dir.name}", restate=True):
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
        try:
            context = build(Path(results_dir), tmp, command)
            atomic_write_text(tmp / "index.html", render_page(context))
            os.chmod(tmp, 0o755)  # mkdtemp makes it private; a report is for reading
            _swap_into_place(tmp, out_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    n_figures = sum(1 for _ in out_dir.glob("*.png"))
    return ReportSummary(out_dir / "index.html", context["n_records"], len(context["sections"]), n_figures)


def _swap_into_place(new: Path, out_dir: Path) -> None:
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old{os.getpid()}")
        os.rename(out_dir, old)
    os.rename(new, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def build(results_dir: Path, out: Path, command: str) -> dict:
    """Draw every figure into out and return the page's context."""
    records = {rec["_dir"]: rec for rec in iter_records(results_dir)}
    runs = collect(results_dir)
    summary = summarise(runs)
    comparisons = compare(runs)
    sections = []
    if not summary.empty:
        for i, layout in enumerate(section_layouts(summary, comparisons)):
            task, variant, source, data_version = layout.section
            sec_runs = runs[(runs.task == task) & (runs.variant == variant) & (runs.data_source == source)
                            & (runs.data == data_version)]
            sections.append(_section(f"s{i + 1}", layout, sec_runs, records, out))
    statuses = Counter(r.get("status") for r in records.values())
    return {"command": command, "results_dir": str(results_dir), "generator_git": git_sha(),
            "n_records": len(records), "n_ok": statuses.get("ok", 0),
            "n_failed": len(records) - statuses.get("ok", 0),
            "git_counts": Counter(str(r.get("git", "unknown")) for r in records.values()).most_common(),
            "sections": sections, "cross_task": _cross_task(runs, summary, out)}


def _cross_task(runs: pd.DataFrame, summary: pd.DataFrame, out: Path) -> list[dict]:
    """Per data source: leaderboard.md's cross-task mean ranks, its Friedman test and the critical-difference
    diagram (crosstask.py: nothing recomputed here)."""
    ranked = entrants(runs, summary)
    blocks = []
    for i, source in enumerate(sorted(set(ranked.data_source))):
        test = friedman(ranked, source)
        block = {"source": source, "note": SOURCE_NOTE.get(source, source), "figure": None, "friedman": None,
                 "means": [{"method": r.method, "mean_rank": f"{r.mean_rank:.2f}", "n_sections": int(r.n_sections),
                            "n_won": int(r.n_won),
                            "block": f"{test.mean_ranks[r.method]:.2f}" if test and r.method in test.mean_ranks
                            else ""} for r in mean_ranks(ranked[ranked.data_source == source]).itertuples()]}
        if test is not None:
            k, n = test.ranks.shape[1], len(test.ranks)
            block["friedman"] = (f"Friedman test over the {n} sections where all of {', '.join(test.ranks.columns)} "
                                 f"ran: χ²({k - 1}) = {test.statistic:.2f}, {_p(test.pvalue, 'p')}; Nemenyi critical "
                                 f"difference of mean ranks at 0.05: {test.cd:.2f}.")
            path = figures.critical_difference(test, out / f"cd-{i + 1}.png")
            block["figure"] = path.name if path else None
        blocks.append(block)
    return blocks


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40]


def _section(sid: str, layout: SectionLayout, runs: pd.DataFrame, records: dict, out: Path) -> dict:
    task, variant, source, data_version = layout.section
    primary = layout.primary
    order = sorted({method for (method, _), _ in layout.rows})  # alphabetical: a method keeps its colour across sections
    points = data.forest_points(layout)
    cmp = layout.comparisons
    context = {"id": sid, "heading": f"{task}" + (f" — {variant}" if variant else "") + f" — {source} data"
               + (f" — data files {data_version}" if data_version else ""),
               "source": source, "source_note": SOURCE_NOTE.get(source, source), "task_note": task_note(task),
               "primary": primary or "n/a", "better": _better(primary), "controls": layout.controls,
               "has_student": bool((cmp.reference == REFERENCE).any()) or any(m == REFERENCE for m in order),
               "n_ok": int((runs.status == "ok").sum()), "n_failed": int((runs.status != "ok").sum()),
               "gits": ", ".join(f"{sha[:10]} ({n})" for sha, n in Counter(
                   str(records[d].get("git", "unknown")) for d in runs.dir).most_common()),
               "rows": [_table_row(layout, key, rows) for key, rows in layout.rows], "forest": None,
               "strip": None, "methods": []}
    if primary:
        path = figures.forest(points, primary, order, out / f"{sid}-forest.png")
        context["forest"] = path.name if path else None
        context["forest_caption"] = _forest_caption(points)
        path = figures.strip(data.strip_columns(layout, runs), primary, order, out / f"{sid}-strip.png")
        context["strip"] = path.name if path else None
    for (method, cid), rows in layout.rows:
        mine = runs[(runs.method == method) & (runs.config_id == cid) & (runs.status == "ok")]
        context["methods"].append(_method(sid, rows.iloc[0], [records[d] for d in mine.dir], primary, out))
    context["failures"] = [f"{r.label}: {r.failed_runs}" for _, rows in layout.rows
                           if (r := rows.iloc[0]).n_failed]
    return context


def _better(primary: str | None) -> str:
    return "n/a" if primary is None else ("higher is better" if higher_is_better(primary) else "lower is better")


def _table_row(layout: SectionLayout, key: tuple, rows: pd.DataFrame) -> dict:
    first, cmp = rows.iloc[0], layout.comparisons
    mean = rows[rows.metric == layout.primary]

    def cell(reference: str) -> str:
        c = cmp[(cmp.reference == reference) & (cmp.method == key[0]) & (cmp.config_id == key[1])]
        return _delta_cell(c.iloc[0] if len(c) else None, with_n=reference != REFERENCE)

    role = CONTROL_ROLE.get(first.control) or BOUND_LABEL.get(first.bound, "")
    if first.get("selected_on_test", False):  # selection_split=test: optimistic, said wherever the row is shown
        role = (f"{role}; " if role else "") + SELECTED_ON_TEST
    return {"label": first.label, "role": role,
            "kind": "control" if first.control != "none" else ("bound" if first.bound else "method"),
            "primary": _fmt(float(mean["mean"].iloc[0]), float(mean["std"].iloc[0]), int(first.n_runs))
            if len(mean) else "n/a", "runs": int(first.n_runs), "failed": int(first.n_failed),
            "vs_student": cell(REFERENCE), "vs_controls": [cell(c) for c in layout.controls]}


def _forest_caption(points: list[data.ForestPoint]) -> str:
    parts = [("Mean paired difference from the student per row with its 95 % t interval (compare()'s numbers, as "
              "in the table above); hollow points and dashed intervals are the privileged-information controls, "
              "drawn under their method.")]
    for p in points:
        if p.bound == "upper_bound" and p.n >= 1:  # left out of the plot, which its Δ would squeeze
            interval = f" [{p.ci_low:+.3f}, {p.ci_high:+.3f}]" if not math.isnan(p.ci_low) else ""
            parts.append(f"Not drawn, to keep the methods' scale: the upper bound {p.label}, Δ {p.mean:+.3f}{interval}"
                         f"{' (significant after Holm)' if p.significant else ''}.")
    unpaired = [p.label for p in points if p.n == 0 or math.isnan(p.mean)]
    if unpaired:
        parts.append(f"No pairs with the student (not drawn): {', '.join(unpaired)}.")
    return " ".join(parts)


def _method(sid: str, first: pd.Series, recs: list[dict], primary: str | None, out: Path) -> dict:
    label, stem = first.label, f"{sid}-{_slug(first.label)}-{first.config_id}"
    model = data.evaluated_model(recs[0]) if recs else "student"
    curves = [c for c in (data.curve_of(r, primary) for r in recs) if c is not None] if primary else []
    figs = []
    path = figures.curves(curves, label, model, primary, out / f"{stem}-curves.png") if curves else None
    if path:
        figs.append({"src": path.name, "caption": f"{label}: the {model}'s train loss and validation {primary} per "
                     f"epoch, {len(curves)} runs overlaid, the selected epoch circled."})
    extras = data.run_extras(recs)
    path = figures.dmd_edges(extras.dmd_edges, label, out / f"{stem}-dmd-edges.png")
    if path:
        figs.append({"src": path.name, "caption": f"{label}: DMD's learned edge weights per epoch "
                     "(batch-mean E in training), every run overlaid; dashed: the fixed priors."})
    single_edge = [r for r, e in extras.dmd_edges if len(e.get("edges") or []) == 1]
    if single_edge:
        figs.append({"src": None, "caption": f"DMD edge weights: the graph has one edge per unit here "
                     f"({extras.dmd_edges[0][1]['edges'][0]}), so its softmax weight is 1 at every epoch; no figure."})
    path = figures.teacher_choice(extras.teacher_choice, label, out / f"{stem}-teacher-choice.png")
    if path:
        figs.append({"src": path.name, "caption": f"{label}: MT-PKDOT's teacher choices per epoch, one panel per "
                     "run (record extra.teacher_choice)."})
    stops = Counter(c.stop_reason or "unknown" for c in curves)
    selected = [c.selected_epoch for c in curves if c.selected_epoch is not None]
    summary = (f"{len(recs)} ok runs; {len(curves)} with a training log of the {model}"
               + (f"; selected epochs {', '.join(map(str, selected))}" if selected else "")
               + (f"; stop reasons: {', '.join(f'{k} ({n})' for k, n in stops.items())}" if curves else "") + ".")
    if first.n_flagged:  # the leaderboard's own flag (harness/leaderboard/flags.py _flags), not recomputed
        summary += f" Possibly undertrained, {int(first.n_flagged)} of {int(first.n_runs)}: {first.flagged_runs}."
    return {"id": stem, "label": label, "summary": summary, "figures": figs}
