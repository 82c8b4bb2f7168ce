"""The figure of DMD's learned edges (dmd_edges.png in a run's folder)."""

from __future__ import annotations

import math

import numpy as np

from harness.storage import atomic_savefig


# ----------------------------------------------------------------------------------------------
# Plot of the learned edges
# ----------------------------------------------------------------------------------------------

def plot_edges(edges: dict, path) -> None:
    """The paper's figure of dominant edges: per unit, a graph whose arrow widths are the final batch-mean
    E (teacher -> student) beside the per-epoch curves of every edge, priors dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch

    nodes, names = edges["nodes"], edges["edges"]
    pairs = [tuple(e.split("->")) for e in names]
    fig, axes = plt.subplots(2, 2, figsize=(12, 9.5), gridspec_kw={"width_ratios": [1, 1.25]})
    angle = {m: math.pi / 2 - 2 * math.pi * i / len(nodes) for i, m in enumerate(nodes)}
    pos = {m: (math.cos(a), math.sin(a)) for m, a in angle.items()}
    colours = plt.get_cmap("tab10")
    for row, unit in enumerate(("homo", "hetero")):
        info = edges[unit]
        final = np.asarray(info["final"], float)
        prior = np.asarray(info["prior"], float)
        ax = axes[row, 0]
        ax.set_title(f"{'Homogeneous' if unit == 'homo' else 'Heterogeneous'} GD: learned edges "
                     f"(final, batch-mean E)", fontsize=11)
        top = final.max() if final.size else 1.0
        fmt = "{:.3f}" if final.size and final.max() - final.min() < 0.02 else "{:.2f}"  # near-equal: more digits
        for k, (t, s) in enumerate(pairs):
            (x0, y0), (x1, y1) = pos[t], pos[s]
            dominant = final[k] >= 0.5 * top
            arrow = FancyArrowPatch((x0, y0), (x1, y1), connectionstyle="arc3,rad=0.18", arrowstyle="-|>",
                                    mutation_scale=18, shrinkA=28, shrinkB=28, lw=1 + 9 * final[k] / max(top, 1e-9),
                                    color=colours(k % 10) if dominant else "0.75", alpha=0.95 if dominant else 0.6,
                                    zorder=1)
            ax.add_patch(arrow)
            # label on the arc's midpoint (matplotlib's arc3 bends towards (dy, -dx) by rad/2 of the chord)
            mx, my = (x0 + x1) / 2 + 0.09 * (y1 - y0), (y0 + y1) / 2 - 0.09 * (x1 - x0)
            ax.text(mx, my, fmt.format(final[k]), ha="center", va="center", fontsize=9,
                    color=colours(k % 10) if dominant else "0.45", zorder=3,
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8})
        for m, (x, y) in pos.items():
            student = m in edges["predictors"]
            ax.scatter([x], [y], s=2300, zorder=2, color="#cfe3ff" if student else "#ffe2c6",
                       edgecolors="0.2", linewidths=1.2)
            ax.text(x, y, m + ("\n(student)" if student and edges["protocol"] == "privileged" else ""),
                    ha="center", va="center", fontsize=10, zorder=4)
        if len(pairs) == 1:
            ax.text(0, -1.5, "one edge: the softmax makes E = 1, the unit distils with a fixed weight",
                    ha="center", va="center", fontsize=9, color="0.3")
        ax.set_xlim(-1.6, 1.6)
        ax.set_ylim(-1.6, 1.6)
        ax.set_aspect("equal")
        ax.axis("off")
        ax = axes[row, 1]
        hist = np.asarray(info["per_epoch"], float)
        epochs = np.arange(1, len(hist) + 1)
        for k, name in enumerate(names):
            if len(hist):
                ax.plot(epochs, hist[:, k], color=colours(k % 10), lw=2, marker="o" if len(hist) < 25 else None,
                        ms=3, label=f"{name.replace('->', ' → ')}  (prior {prior[k]:.3f})")
            ax.axhline(prior[k], color=colours(k % 10), lw=1, ls="--", alpha=0.7)
        sel = edges.get("selected_epoch")
        if sel is not None:
            ax.axvline(sel + 1, color="0.3", lw=1, ls=":", label="selected epoch")
        ax.set_xlabel("epoch")
        ax.set_ylabel("batch-mean edge weight E (training)")
        lo, hi = ax.get_ylim()
        ax.set_title("per epoch; dashed = fixed prior π" + ("  (y axis zoomed: edges barely move)"
                                                           if hi - lo < 0.05 else ""), fontsize=11)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(f"DMD edge weights — {edges.get('title', '')}", fontsize=12)
    fig.tight_layout()
    try:
        atomic_savefig(fig, path, dpi=110)  # whole or not at all: a full disk leaves no half a PNG in the run folder
    finally:
        plt.close(fig)
