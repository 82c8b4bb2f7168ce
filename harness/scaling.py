"""`harness scaling`: a metric against one task config key (lupi's training-set size by default), from the records.

One panel per task variant with that key left out (lupi: one per experiment), one line per leaderboard row
(method, control and label overrides) present at two values or more. Top: the primary metric's mean over the
row's runs at each value, with its 95 % t interval over those runs (repetitions). Bottom: the mean paired
difference with the `student` of the same training recipe, pairs by (fold, seed), with the 95 % t interval of
the paired test the leaderboard uses (harness.stats.paired_test). The numbers are printed as a table too, and
written to a CSV beside the figure, so every point of the figure can be checked.

    harness scaling                                   # lupi, task.n_train, docs/lupi_sample_size.png
    harness scaling --task lupi --x task.n_train --out docs/lupi_sample_size.png
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.stats as sps

from harness.leaderboard import _recipe, collect, label_of
from harness.stats import CONFIDENCE, paired_test
from harness.storage import atomic_savefig, atomic_write_text

REFERENCE = "student"


class ScalingError(ValueError):
    """No record to plot, or a record without the swept key: one line for the CLI."""


@dataclass
class Scaling:
    table: pd.DataFrame   # one row per (panel, label, x): mean, CI, n runs; delta vs student, its CI, p, pairs
    figure: Path
    csv: Path
    n_records: int


def _panel_title(variant: str, key: str) -> str:
    """The variant without the swept key's own part (lupi: `experiment 1, d=50, n_train=200` -> `experiment 1,
    d=50`)."""
    name = key.rsplit(".", 1)[-1]
    return re.sub(rf",?\s*{re.escape(name)}=[^,]+", "", variant).strip(" ,") or variant


def _t_interval(values: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    if len(values) < 2 or np.ptp(values) == 0:
        m = float(np.mean(values))
        return m, m
    lo, hi = sps.t.interval(confidence, len(values) - 1, loc=np.mean(values), scale=sps.sem(values))
    return float(lo), float(hi)


def _common_overrides(overrides: list[str]) -> list[str]:
    """Overrides every row of the figure shares (said once under it, not in each legend entry)."""
    sets = [set(o.split()) for o in overrides]
    return [o for o in overrides[0].split() if o in set.intersection(*sets)] if sets else []


def scaling_table(results_dir: Path | str, task: str, key: str) -> tuple[pd.DataFrame, int]:
    df = collect(results_dir, config_keys=(key,))
    if df.empty:
        raise ScalingError(f"no records under {results_dir}/")
    df = df[(df.task == task) & (df.status == "ok")].copy()
    if df.empty:
        raise ScalingError(f"no finished {task} record under {results_dir}/")
    df["x"] = df[f"c:{key}"]
    missing = df[df.x.isna()]
    if len(missing):
        raise ScalingError(f"{missing.dir.iloc[0]}/record.json: config has no {key}; choose a key of the task's "
                           f"config with --x (e.g. task.n_train)")
    df["panel"] = [_panel_title(v, key) for v in df.variant]
    df["label"] = [label_of(m, c, o) for m, c, o in zip(df.method, df.control, df.overrides)]
    df["recipe"] = [_recipe(o) for o in df.overrides]
    primary = df.primary_metric.iloc[0]
    df["value"] = df[f"m:{primary}"].astype(float)
    rows = []
    for (panel, label), g in df.groupby(["panel", "label"], sort=True):
        if g.x.nunique() < 2:
            continue
        method, recipe = g.method.iloc[0], g.recipe.iloc[0]
        for x, gx in g.groupby("x", sort=True):
            lo, hi = _t_interval(gx.value.to_numpy())
            row = {"panel": panel, "label": label, "method": method, "control": gx.control.iloc[0],
                   "overrides": gx.overrides.iloc[0], "x": x,
                   "metric": primary, "mean": float(gx.value.mean()), "ci_low": lo, "ci_high": hi, "runs": len(gx)}
            if method != REFERENCE:
                ref = df[(df.panel == panel) & (df.x == x) & (df.method == REFERENCE) & (df.control == "none")
                         & (df.recipe == recipe)]
                a = gx.set_index(["fold", "seed"]).value
                b = ref.groupby(["fold", "seed"]).value.mean()
                both = a.index.intersection(b.index)
                t = paired_test((a[both] - b[both]).to_numpy(), sign_flip=False)
                row.update(delta=t.mean, delta_low=t.ci_low, delta_high=t.ci_high, p_t=t.p_t, pairs=t.n)
            row["data"] = ", ".join(sorted(set(gx.data_source)))
            rows.append(row)
    if not rows:
        raise ScalingError(f"no {task} row has runs at two values of {key} or more under {results_dir}/")
    table = pd.DataFrame(rows)
    return table[[c for c in table.columns if c != "data"] + ["data"]], len(df)  # data last, whichever row came first


def footnote(table: pd.DataFrame, common: list[str]) -> str:
    """The figure's last line: which data its points come from (synthetic and mimic numbers are always labelled as
    such) and the overrides every row shares."""
    sources = sorted({s for cell in table.data for s in cell.split(", ")})
    line = f"data: {', '.join(sources)}"
    if any(s != "real" for s in sources):
        line += " (not a real dataset: these numbers say nothing about one)"
    return line + ("; every row: " + " ".join(common) if common else "")


def plot(table: pd.DataFrame, key: str, out: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted(table.panel.unique())
    common = _common_overrides(list(table.overrides.unique()))
    fig, axes = plt.subplots(2, len(panels), figsize=(5.2 * len(panels), 7.2), squeeze=False, sharex="col",
                             gridspec_kw={"height_ratios": [3, 2]})
    metric = table.metric.iloc[0]
    styles: dict[str, tuple[str, str, str]] = {}  # row -> colour, marker, line style: rows that coincide stay visible
    markers, lines = "osD^v<>", ("-", "--", ":", "-.")
    for j, panel in enumerate(panels):
        top, bottom = axes[0, j], axes[1, j]
        groups = list(table[table.panel == panel].groupby("label", sort=True))
        for k, (label, g) in enumerate(groups):
            first = g.iloc[0]
            short = label_of(first.method, first.control, " ".join(o for o in first.overrides.split() if o not in common))
            n = len(styles)
            colour, marker, line = styles.setdefault(short, (f"C{n}", markers[n % len(markers)], lines[n % len(lines)]))
            g = g.sort_values("x")
            # each row a little apart on the (log) x axis, so that rows with equal values (a distilled student that
            # reaches its teacher) do not hide one another; the ticks stay at the true values
            x = g.x.astype(float) * 1.035 ** (k - (len(groups) - 1) / 2)
            kw = {"marker": marker, "ls": line, "ms": 4, "capsize": 3, "color": colour, "label": short}
            err = np.vstack([g["mean"] - g.ci_low, g.ci_high - g["mean"]])
            top.errorbar(x, g["mean"], yerr=err, **kw)
            if "delta" in g and g.delta.notna().any():
                keep = g.delta.notna().to_numpy()
                d = g[keep]
                derr = np.vstack([d.delta - d.delta_low, d.delta_high - d.delta])
                bottom.errorbar(x[keep], d.delta, yerr=derr, **kw)
        top.set_title(panel, fontsize=10)
        top.set_xscale("log")
        top.set_ylabel(f"test {metric} (mean, 95% t CI over repetitions)", fontsize=8)
        top.grid(alpha=0.3)
        bottom.axhline(0, color="k", lw=0.8)
        bottom.set_xscale("log")
        bottom.set_xlabel(key)
        bottom.set_ylabel(f"Δ {metric} vs student (paired, 95% CI)", fontsize=8)
        bottom.grid(alpha=0.3)
        xs = sorted(table[table.panel == panel].x.unique())
        bottom.set_xticks(xs, [str(x) for x in xs])  # the true values, under the rows drawn a little apart
        bottom.minorticks_off()
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 0.02), ncol=min(len(labels), 3),
               frameon=False)
    fig.text(0.5, 0.005, footnote(table, common), fontsize=6, ha="center", wrap=True)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    try:
        atomic_savefig(fig, out, dpi=130)  # whole or not at all; a full disk: DiskFullError
    finally:
        plt.close(fig)
    return out


def write_scaling(results_dir: Path | str = "results", task: str = "lupi", key: str = "task.n_train",
                  out: Path | str = "docs/lupi_sample_size.png") -> Scaling:
    table, n = scaling_table(results_dir, task, key)
    out = Path(out)
    figure = plot(table, key, out)
    csv = out.with_suffix(".csv")
    atomic_write_text(csv, table.to_csv(index=False, float_format="%.6g"))
    return Scaling(table, figure, csv, n)
