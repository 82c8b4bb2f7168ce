"""One section as every renderer shows it (leaderboard.md, the LaTeX export, the report): its metric columns,
comparisons, controls and rows in display order, each row's role, and the words naming its Holm families."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass

import pandas as pd

from harness.leaderboard.common import (BOUND_LABEL, CONTROL_ROLE, CONTROLS, MAIN_FAMILY, REFERENCE, ROW, SECTION,
                                        SELECTED_ON_TEST)
from harness.metrics import higher_is_better
from harness.registry import TASKS


def role_of(row: pd.Series) -> str:
    """A row's role: bound or control, and its Holm family when it is not the main one."""
    role = CONTROL_ROLE.get(row.control) or BOUND_LABEL.get(row.bound, "")
    if row.get("selected_on_test", False):
        role = (f"{role}; " if role else "") + SELECTED_ON_TEST
    if row.family != MAIN_FAMILY:
        role = (f"{role}; " if role else "") + f"Holm family {row.family}"
    return role


def holm_families(cmp: pd.DataFrame, controls: list[str]) -> str:
    """The families a section's comparisons were corrected in, with their sizes: "the section's 9 comparisons with
    the student", or one clause per family (the main one first), each counting the comparisons with the student
    and with each control."""
    def counts(c: pd.DataFrame) -> list[str]:
        n = {r: int(c[c.reference == r].p_holm.notna().sum()) for r in [REFERENCE, *controls]}
        return [f"{n[REFERENCE]} comparisons with the student"] * bool((c.reference == REFERENCE).any()) + \
            [f"{n[r]} with {r}" for r in controls if (c.reference == r).any()]

    names = sorted(set(cmp.family), key=lambda f: (f != MAIN_FAMILY, f))
    if names in ([], [MAIN_FAMILY]):
        parts = counts(cmp)
        return f"the section's {parts[0]}" if len(parts) == 1 else f"each family of the section: {'; '.join(parts)}"
    return "each family of the section (stats.family), separately: " + "; ".join(
        f"{name}: {', '.join(counts(cmp[cmp.family == name]))}" for name in names)


def _row_order(groups: dict, primary: str | None) -> list:
    """Lower bound first, then methods best first by the primary metric, each followed by its privileged-
    information controls; upper bound last."""
    better = 1 if primary is None or higher_is_better(primary) else -1

    def badness(g) -> float:
        p = g[g.metric == primary]["mean"]
        return -better * float(p.iloc[0]) if len(p) and not math.isnan(float(p.iloc[0])) else math.inf

    parents = {(k[0], g.base_id.iloc[0]): k for k, g in groups.items() if g.control.iloc[0] == "none"}

    def key(item):
        k, g = item
        control = g.control.iloc[0]
        parent = parents.get((k[0], g.base_id.iloc[0]), k) if control != "none" else k
        pg = groups[parent]
        rank = {"lower_bound": 0, "": 1, "upper_bound": 2}.get(pg.bound.iloc[0], 1)
        return (rank, badness(pg), str(parent), ("none", *CONTROLS).index(control))

    return sorted(groups.items(), key=key)


@dataclass(frozen=True)
class SectionLayout:
    """One section as every renderer shows it (leaderboard.md, the LaTeX export): its summary lines, primary
    metric first among the metric columns, its comparisons, the controls that have a column, and its rows in
    display order as ((method, config_id), summary lines of the row)."""
    section: tuple[str, str, str]
    summary: pd.DataFrame
    primary: str | None
    metrics: list[str]
    comparisons: pd.DataFrame
    controls: list[str]
    rows: list[tuple[tuple, pd.DataFrame]]


def natural_key(section: tuple) -> tuple:
    """Sort key of a section: its numbers compared as numbers ("n_train=200" before "n_train=1000")."""
    return tuple(tuple((0, int(part), "") if part.isdigit() else (1, 0, part)
                       for part in re.split(r"(\d+)", str(field))) for field in section)


def section_layouts(summary: pd.DataFrame, comparisons: pd.DataFrame) -> Iterator[SectionLayout]:
    sections = sorted(summary.groupby(SECTION, sort=False), key=lambda kv: natural_key(kv[0]))
    for section, sec in sections:
        task, variant, source, data = section
        ok = sec[sec.metric.notna()]
        primary = ok.primary_metric.dropna().iloc[0] if ok.primary_metric.notna().any() else None
        metrics = ([primary] if primary else []) + [m for m in dict.fromkeys(ok.metric) if m != primary]
        cmp = comparisons[(comparisons.task == task) & (comparisons.variant == variant)
                          & (comparisons.data_source == source) & (comparisons.data == data)]
        controls = [f"PI {c}" for c in CONTROLS if (cmp.reference == f"PI {c}").any()]
        groups = {k: g for k, g in sec.groupby(ROW, sort=False)}
        yield SectionLayout(section, sec, primary, metrics, cmp, controls, _row_order(groups, primary))


def task_note(task: str) -> str:
    return TASKS.get(task).leaderboard_note if task in TASKS.names() else ""


# --- short row labels ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SectionLabels:
    """A section's short row labels: the method, a variant tag when the section has several configurations of
    it (`kd·a`, `kd·b`: tags in order of the variants' override lists, fewest overrides first, so the same runs get
    the same tags on every regeneration), and ` · PI zeros` on a control. The overrides are listed once: those
    every row of the section shares (`shared`), then each tagged or overridden row's own (`variants`); a key given
    twice counts with its last value (effective_overrides)."""
    labels: dict[tuple, str]
    tags: dict[tuple, str]
    variants: list[tuple[str, str]]
    shared: list[str]


def variant_tag(i: int) -> str:
    """a, b, ..., z, aa, ab, ...: the i-th variant's tag (0-based)."""
    tag = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        tag = chr(ord("a") + r) + tag
    return tag


def effective_overrides(overrides: str) -> list[str]:
    """A row's overrides as the config saw them: a key given twice keeps its last value (Hydra's rule), in the
    place of its first mention (`train.batch_size=32 ... train.batch_size=128` is `train.batch_size=128`)."""
    last: dict[str, str] = {}
    for token in overrides.split():
        key = token.partition("=")[0]
        last[key] = token
    return list(last.values())


def section_labels(layout: SectionLayout) -> SectionLabels:
    own = {key: effective_overrides(g.iloc[0].overrides) for key, g in layout.rows}
    shared = set.intersection(*(set(o) for o in own.values())) if own else set()
    shared_list = [o for o in (own[next(iter(own))] if own else []) if o in shared]
    rest = {key: " ".join(o for o in overrides if o not in shared) for key, overrides in own.items()}
    labels, tags, variants = {}, {}, []
    by_method: dict[str, list[str]] = {}
    for (method, _), text in rest.items():
        by_method.setdefault(method, [])
        if text not in by_method[method]:
            by_method[method].append(text)
    for method, texts in by_method.items():
        ordered = sorted(texts, key=lambda t: (len(t.split()), t))
        for i, text in enumerate(ordered):
            tag = variant_tag(i) if len(ordered) > 1 else ""
            name = f"{method}·{tag}" if tag else method
            if text or tag:
                variants.append((name, text or "(no overrides beyond the shared ones)"))
            for key, t in rest.items():
                if key[0] == method and t == text:
                    tags[key] = tag
                    control = layout.summary[(layout.summary.method == key[0])
                                             & (layout.summary.config_id == key[1])].control.iloc[0]
                    labels[key] = name + (f" · PI {control}" if control != "none" else "")
    order = {m: i for i, m in enumerate(dict.fromkeys(k[0] for k, _ in layout.rows))}  # methods as in the table
    variants.sort(key=lambda v: (order.get(v[0].split("·")[0], len(order)), v[0]))
    return SectionLabels(labels, tags, variants, shared_list)
