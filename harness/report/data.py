"""What each figure of the report draws, taken from the leaderboard's tables and the run records.

No statistic is recomputed here: the forest plot's points are compare()'s rows as they are, the strip plot's
points are the runs' own metrics. Each function returns plain data, so a test can check a figure's numbers
without reading pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from harness.leaderboard.common import EVALUATED_MODEL, REFERENCE
from harness.leaderboard.layout import SectionLayout


@dataclass(frozen=True)
class ForestPoint:
    """One row's paired comparison with the student, as compare() gave it."""
    label: str
    method: str
    config_id: str
    control: str
    bound: str
    n: int
    mean: float
    ci_low: float
    ci_high: float
    p_t: float
    p_holm: float
    significant: bool


def forest_points(layout: SectionLayout) -> list[ForestPoint]:
    """Every row compared with the student, in the section's display order (controls under their method)."""
    vs_student = layout.comparisons[layout.comparisons.reference == REFERENCE]
    points = []
    for (method, cid), rows in layout.rows:
        c = vs_student[(vs_student.method == method) & (vs_student.config_id == cid)]
        if not len(c):  # the student itself, or no student in the section
            continue
        c, first = c.iloc[0], rows.iloc[0]
        points.append(ForestPoint(first.label, method, cid, first.control, first.bound or "", int(c.n),
                                  float(c["mean"]), float(c.ci_low), float(c.ci_high), float(c.p_t),
                                  _float(c.p_holm), bool(c.significant) if not pd.isna(c.significant) else False))
    return points


def _float(v) -> float:
    return math.nan if v is None or pd.isna(v) else float(v)


@dataclass(frozen=True)
class StripColumn:
    """One row's primary metric, one value per ok run, with the summary's mean (not recomputed)."""
    label: str
    method: str
    bound: str
    control: str
    values: list[float]
    mean: float


def strip_columns(layout: SectionLayout, runs: pd.DataFrame) -> list[StripColumn]:
    """Per row of the section, the primary metric of each ok run (runs: collect()'s table for the section)."""
    if layout.primary is None:
        return []
    col = f"m:{layout.primary}"
    columns = []
    for (method, cid), rows in layout.rows:
        first = rows.iloc[0]
        mine = runs[(runs.method == method) & (runs.config_id == cid) & (runs.status == "ok")]
        values = [float(v) for v in mine[col].dropna()] if col in mine else []
        mean = rows[rows.metric == layout.primary]["mean"]
        columns.append(StripColumn(first.label, method, first.bound or "", first.control, values,
                                   float(mean.iloc[0]) if len(mean) else math.nan))
    return columns


@dataclass(frozen=True)
class Curve:
    """One run's training log of the evaluated model: per epoch train loss and validation primary metric."""
    run: str  # f<fold>-s<seed>
    epochs: list[int]
    train_loss: list[float]
    val_metric: list[float]
    selected_epoch: int | None
    stop_reason: str | None


def evaluated_model(record: dict) -> str:
    return EVALUATED_MODEL.get(record.get("bound") or "", "student")


def curve_of(record: dict, primary: str) -> Curve | None:
    """The run's curve from record["logs"][model]; the selected epoch from extra.training, else the log."""
    model = evaluated_model(record)
    log = (record.get("logs") or {}).get(model)
    if not isinstance(log, list) or not log:
        return None
    training = ((record.get("extra") or {}).get("training") or {}).get(model) or {}
    selected = training.get("selected_epoch")
    if selected is None:
        selected = next((e.get("epoch") for e in log if e.get("selected")), None)
    epochs = [int(e.get("epoch", i)) for i, e in enumerate(log)]
    return Curve(f"f{record.get('fold')}-s{record.get('seed')}", epochs,
                 [_float(e.get("train_loss")) for e in log], [_float(e.get(f"val_{primary}")) for e in log],
                 selected, training.get("stop_reason"))


@dataclass(frozen=True)
class RunExtras:
    """A row's method-specific records: DMD edge histories and MT-PKDOT teacher-choice counts, per run."""
    dmd_edges: list[tuple[str, dict]] = field(default_factory=list)
    teacher_choice: list[tuple[str, dict]] = field(default_factory=list)


def run_extras(records: list[dict]) -> RunExtras:
    extras = RunExtras()
    for rec in records:
        extra, run = rec.get("extra") or {}, f"f{rec.get('fold')}-s{rec.get('seed')}"
        if isinstance(extra.get("dmd_edges"), dict):
            extras.dmd_edges.append((run, extra["dmd_edges"]))
        if isinstance(extra.get("teacher_choice"), dict) and extra["teacher_choice"].get("per_epoch"):
            extras.teacher_choice.append((run, extra["teacher_choice"]))
    return extras
