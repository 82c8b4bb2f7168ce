"""`harness leaderboard`: leaderboard.md, leaderboard.csv and optionally the LaTeX export, written together from
one summary and one set of comparisons."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.leaderboard.common import LeaderboardError
from harness.leaderboard.crosstask import entrants, summary_table
from harness.leaderboard.csvfile import csv_table
from harness.leaderboard.latex import render_latex
from harness.leaderboard.markdown import render
from harness.leaderboard.paired import compare
from harness.leaderboard.records import collect, mixed_data
from harness.leaderboard.summary import summarise
from harness.storage import atomic_write_all


def ranks_csv_path(out_csv: Path | str) -> Path:
    """The cross-task summary's CSV beside the leaderboard's: leaderboard.csv -> leaderboard_ranks.csv."""
    out_csv = Path(out_csv)
    return out_csv.with_name(f"{out_csv.stem}_ranks{out_csv.suffix or '.csv'}")


def write_leaderboard(results_dir: Path | str = "results", out_md: Path | str = "leaderboard.md",
                      out_csv: Path | str | None = "leaderboard.csv", out_latex: Path | str | None = None,
                      strict: bool = False) -> tuple[str, pd.DataFrame]:
    """leaderboard.md, leaderboard.csv and beside it leaderboard_ranks.csv (the cross-task summary), and the LaTeX
    export when out_latex is given. strict: a task variant whose runs read different data files is an error (default: separate sections,
    with a footnote naming the fingerprints)."""
    df = collect(results_dir)
    if strict and (mixed := mixed_data(df)):
        raise LeaderboardError("\n".join(mixed) + "\n(--strict) recompute the stale runs on the current data with "
                               "overwrite=true, or restore the data; without --strict each version gets its own section")
    summary = summarise(df)
    comparisons = compare(df)
    text = render(summary, df, comparisons)
    files = [(Path(out_md), text)]
    if out_csv is not None:
        files.append((Path(out_csv), csv_table(summary, comparisons).to_csv(index=False)))
        files.append((ranks_csv_path(out_csv), summary_table(entrants(df, summary)).to_csv(index=False)))
    if out_latex is not None:  # from the same summary and comparisons as the markdown
        files.append((Path(out_latex), render_latex(summary, comparisons)))
    atomic_write_all(files)  # all or none: a full disk never leaves a new markdown beside an old csv
    return text, summary
