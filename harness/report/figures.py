"""The report's figures: matplotlib (Agg), one PNG per figure, drawn from harness/report/data.py's plain data."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display, no GUI toolkit
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from harness.metrics import higher_is_better
from harness.report.data import Curve, ForestPoint, StripColumn

DPI = 100
LOWER, UPPER = "#1f77b4", "#d62728"  # student (lower bound) and teacher (upper bound), in every figure
PALETTE = plt.get_cmap("tab10")


def plot_label(label: str, width: int = 30) -> str:
    """A row label short enough for an axis: the method (and control) with its method./teacher. overrides,
    the training recipe (train.*, model.*, the same for every row of a paper's setting) elided, wrapped."""
    import textwrap
    head, _, rest = label.partition(" [")
    tokens = rest.rstrip("]").split()
    kept = [t for t in tokens if not t.startswith(("train.", "model."))]
    elided = ["…"] if len(kept) < len(tokens) else []
    short = head + (f" [{' '.join(elided + kept)}]" if tokens else "")
    return "\n".join(textwrap.wrap(short, width)) or head


def method_colour(method: str, order: list[str]) -> str:
    """One colour per method across a section's figures; the bounds keep theirs."""
    if method == "student":
        return LOWER
    if method == "teacher":
        return UPPER
    others = [m for m in order if m not in ("student", "teacher")]
    free = [k for k in range(10) if k not in (0, 3, 7)]  # not the bounds' blue and red, nor the grey
    return matplotlib.colors.to_hex(PALETTE(free[others.index(method) % len(free)] if method in others else 7))


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, metadata={"Software": None})  # no version stamp: same records, same bytes
    plt.close(fig)
    return path


def _better(metric: str) -> str:
    return "higher is better" if higher_is_better(metric) else "lower is better"


def forest(points: list[ForestPoint], primary: str, order: list[str], path: Path) -> Path | None:
    """Mean paired Δ vs the student with its 95 % t interval per row; controls hollow, indented under their
    method; ★ where significant after Holm. Left out (the page says so): rows without pairs, and the upper
    bound, whose large Δ would squeeze the methods' intervals to a point."""
    drawn = [p for p in points if p.n >= 1 and not math.isnan(p.mean) and p.bound != "upper_bound"]
    if not drawn:
        return None
    fig, ax = plt.subplots(figsize=(11, 1.1 + 0.45 * len(drawn)))
    ys = np.arange(len(drawn))[::-1]
    for y, p in zip(ys, drawn):
        colour = method_colour(p.method, order)
        control = p.control != "none"
        if not math.isnan(p.ci_low):
            ax.plot([p.ci_low, p.ci_high], [y, y], color=colour, lw=2, ls="--" if control else "-")
        ax.plot([p.mean], [y], "o", ms=8, color=colour, mfc="white" if control else colour, mew=2)
        interval = f" [{p.ci_low:+.3f}, {p.ci_high:+.3f}]" if not math.isnan(p.ci_low) else ""
        p_text = "1 pair: no test" if p.n == 1 else ("p=n/a" if math.isnan(p.p_t) else f"p={p.p_t:.3g}")
        mark = "  ★ Holm" if p.significant else ""
        ax.text(1.02, y, f"{p.mean:+.3f}{interval}  {p_text}  n={p.n}{mark}", transform=ax.get_yaxis_transform(),
                va="center", fontsize=9, fontweight="bold" if p.significant else "normal")
    ax.axvline(0, color="0.4", lw=1)
    ax.set_yticks(ys, [plot_label(p.label, 20) for p in drawn])
    ax.set_ylim(-0.7, len(drawn) - 0.3)
    ax.set_xlabel(f"Δ {primary} = method − student, paired by fold and seed ({_better(primary)})")
    ax.set_title(f"Δ {primary} vs student, 95 % t interval (★ significant after Holm)", fontsize=10, loc="left")
    ax.grid(axis="x", alpha=0.3)
    height = fig.get_figheight()
    fig.subplots_adjust(left=0.17, right=0.62, top=1 - 0.35 / height, bottom=0.6 / height)
    return _save(fig, path)


def strip(columns: list[StripColumn], primary: str, order: list[str], path: Path) -> Path | None:
    """Per row, each run's primary metric (jittered, seeded) and the row's mean; the student's and teacher's
    means as horizontal lines across, so every method reads against both bounds."""
    if not any(c.values for c in columns):
        return None
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(columns) + 2), 4.2))
    jitter = np.random.default_rng(0)
    for x, c in enumerate(columns):
        colour = method_colour(c.method, order)
        xs = x + jitter.uniform(-0.15, 0.15, len(c.values))
        ax.scatter(xs, c.values, s=28, color=colour, alpha=0.85, edgecolors="none" if c.control == "none" else colour,
                   facecolors=colour if c.control == "none" else "white", zorder=3)
        if not math.isnan(c.mean):
            ax.plot([x - 0.3, x + 0.3], [c.mean, c.mean], color="0.15", lw=2, zorder=4)
    for bound, colour, name in (("lower_bound", LOWER, "student mean"), ("upper_bound", UPPER, "teacher mean")):
        mean = next((c.mean for c in columns if c.bound == bound and not math.isnan(c.mean)), None)
        if mean is not None:
            ax.axhline(mean, color=colour, lw=1, ls="--", alpha=0.7, label=name)
    ax.set_xticks(range(len(columns)), [plot_label(c.label, 18) for c in columns], fontsize=9)
    ax.set_ylabel(f"{primary} ({_better(primary)})")
    ax.set_title(f"{primary} per run (each dot one seed × fold; bar: the row's mean)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # a section without bounds has no lines to name
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return _save(fig, path)


def curves(runs: list[Curve], label: str, model: str, primary: str, path: Path) -> Path | None:
    """Train loss and validation primary metric per epoch, every run overlaid; ○ the selected epoch."""
    if not runs:
        return None
    fig, (loss_ax, val_ax) = plt.subplots(1, 2, figsize=(11, 3.4))
    for i, c in enumerate(runs):
        colour = PALETTE(i % 10)
        for ax, ys in ((loss_ax, c.train_loss), (val_ax, c.val_metric)):
            ax.plot(c.epochs, ys, color=colour, lw=1.4, label=c.run)
            if c.selected_epoch in c.epochs:
                k = c.epochs.index(c.selected_epoch)
                ax.plot([c.selected_epoch], [ys[k]], "o", ms=9, mfc="none", mec=colour, mew=2)
    short = plot_label(label, 200)
    loss_ax.set_title(f"{short}: {model} train loss", fontsize=10)
    val_ax.set_title(f"{short}: {model} validation {primary} ({_better(primary)})", fontsize=10)
    validated = any(np.isfinite(np.asarray(c.val_metric, float)).any() for c in runs)
    if not validated:  # budget runs: no validation split
        val_ax.set_xticks([])
        val_ax.set_yticks([])
        val_ax.text(0.5, 0.5, "no validation split (train.stop=budget:\nthe last epoch is kept)",
                    transform=val_ax.transAxes, ha="center", va="center", fontsize=10, color="0.4")
    for ax in (loss_ax, val_ax) if validated else (loss_ax,):  # an empty panel keeps no ticks
        ax.set_xlabel("epoch (from 0); ○ = selected epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    (val_ax if validated else loss_ax).legend(fontsize=8, loc="best", ncol=2)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.16, top=0.9, wspace=0.18)  # fixed: tight_layout redraws
    return _save(fig, path)


def dmd_edges(runs: list[tuple[str, dict]], label: str, path: Path) -> Path | None:
    """DMD's batch-mean edge weights per epoch, homogeneous and heterogeneous units, every run overlaid in
    its edge's colour (runs of one row share the graph); the fixed priors dashed."""
    runs = [(r, e) for r, e in runs if e.get("edges")]
    if not runs or len(runs[0][1]["edges"]) < 2:  # one edge: its softmax weight is 1 throughout, a flat line
        return None
    names = runs[0][1]["edges"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    for ax, unit in zip(axes, ("homo", "hetero")):
        for _, edges in runs:
            hist = np.asarray((edges.get(unit) or {}).get("per_epoch") or [], float)
            for k in range(hist.shape[1] if hist.ndim == 2 else 0):
                ax.plot(np.arange(len(hist)), hist[:, k], color=PALETTE(k % 10), lw=1.2, alpha=0.8)
        for k, (name, prior) in enumerate(zip(names, (runs[0][1].get(unit) or {}).get("prior") or [])):
            ax.axhline(prior, color=PALETTE(k % 10), ls="--", lw=1,
                       label=f"{name.replace('->', ' → ')} (prior {prior:.2f})")
        title = f"{label}: {'homogeneous' if unit == 'homo' else 'heterogeneous'} unit, edge weight E"
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch (from 0)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    axes[0].set_ylabel(f"batch-mean E (training), {len(runs)} runs")
    fig.tight_layout()
    return _save(fig, path)


def teacher_choice(runs: list[tuple[str, dict]], label: str, path: Path) -> Path | None:
    """MT-PKDOT: how often each teacher was chosen per epoch, one stacked panel per run."""
    if not runs:
        return None
    fig, axes = plt.subplots(len(runs), 1, figsize=(11, 0.9 + 1.1 * len(runs)), sharex=True, squeeze=False)
    for ax, (run, choice) in zip(axes[:, 0], runs):
        names, per_epoch = choice.get("names") or [], choice["per_epoch"]
        counts = [[e.get(name, 0) for e in per_epoch] for name in names]
        # one filled band per teacher (stackplot), not one bar patch per epoch: ~100x fewer artists to draw
        ax.stackplot(np.arange(len(per_epoch)), counts, labels=names, step="mid",
                     colors=[PALETTE(k % 10) for k in range(len(names))])
        ax.set_xlim(-0.5, max(len(e["per_epoch"]) for _, e in runs) - 0.5)
        if choice.get("selected_epoch") is not None:
            ax.axvline(choice["selected_epoch"], color="0.2", ls=":", lw=1.5)
        ax.set_ylabel(f"{run}\n{choice.get('unit', '')}", fontsize=8)
    axes[0, 0].set_title(f"{label}: teacher chosen per epoch (selection by {runs[0][1].get('selection')}); "
                         f"dotted = selected epoch", fontsize=10, loc="left", pad=18)
    axes[0, 0].legend(fontsize=8, loc="lower right", bbox_to_anchor=(1, 1.15), ncol=len(runs[0][1].get("names") or []),
                      frameon=False)  # above the bands, not over them
    axes[-1, 0].set_xlabel("epoch (from 0)")
    axes[-1, 0].xaxis.set_major_locator(MaxNLocator(integer=True))
    height = fig.get_figheight()
    fig.subplots_adjust(left=0.08, right=0.98, top=1 - 0.6 / height, bottom=0.5 / height, hspace=0.25)
    return _save(fig, path)


def critical_difference(test, path: Path) -> Path | None:
    """The critical-difference diagram of a Friedman block (harness/leaderboard/crosstask.py): each method at its
    mean rank, methods the Nemenyi test does not tell apart at the block's alpha joined by a bar (scikit-posthocs'
    critical_difference_diagram, fed the Nemenyi p values of the same rank matrix). None without scikit-posthocs."""
    try:
        import scikit_posthocs
    except ImportError:
        return None
    k = test.ranks.shape[1]
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.3 * k), dpi=DPI)
    scikit_posthocs.critical_difference_diagram(test.mean_ranks, test.nemenyi(), ax=ax, alpha=0.05)
    ax.set_title(f"{test.data_source} data: mean rank over {len(test.ranks)} sections (1 = best); "
                 f"CD = {test.cd:.2f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
