"""Leaderboard: a pure function of the records on disk.

Per task, task variant, data source and data files (a section), one row per (method, config): mean ± std (sample std,
ddof=1) of each metric over every ok run (seeds × folds), or a single run's test-set bootstrap CI; the
number of runs; failed runs counted and named, never averaged. Each row is compared with the `student`
lower bound on the primary metric, runs paired by (fold, seed) (harness/stats.py: mean paired Δ, t interval,
paired t p with Holm's correction over the section, exact sign-flip p beside it). Runs of a method with its
privileged input replaced (`method.privileged_control=zeros|shuffle`) are their own rows, and each method row
is compared with them the same way. Footnotes name unpaired runs and possibly undertrained ones. Bounds are
marked. Published numbers (real datasets only) are listed apart, never beside mimic or synthetic numbers.
Runs of one task variant on different data files (their records' `source_fingerprint` differ: the files were
replaced between runs) get one section per version with a footnote naming the others; runs of one task config,
fold and seed with different `data_fingerprint` (a generated task whose generator changed) are named under their
section. Either is an error with `harness leaderboard --strict`.

The package, by concern (each module imports only the ones above it; nothing here imports a renderer except
write.py):
- common.py: the section and row keys, roles, labels and notes every part shares; LeaderboardError.
- flags.py: possibly undertrained runs and frozen parts that ran to their epoch cap.
- records.py: reading and validating the records (collect), data versions.
- summary.py: one line per row and metric (summarise).
- paired.py: the paired comparisons with the student and the controls (compare).
- layout.py: a section's rows and columns as every renderer shows them (section_layouts).
- cells.py: the text of a mean ± std, a p value, a paired difference (leaderboard.md and the report).
- crosstask.py: the cross-task summary (mean ranks, Friedman test, critical difference).
- markdown.py, latex.py, csvfile.py: leaderboard.md, the LaTeX export, leaderboard.csv and leaderboard_ranks.csv.
- write.py: `harness leaderboard` (all files written together).
"""

from harness.leaderboard.cells import _delta_cell, _fmt, _p
from harness.leaderboard.common import (BOUND_LABEL, CONTROL_KEY, CONTROL_ROLE, CONTROLS, DATA_UNKNOWN,
                                        EVALUATED_MODEL, FAMILY_KEY, LABEL_PREFIXES, MAIN_FAMILY, REFERENCE, ROW,
                                        SECTION, SELECTED_ON_TEST, SOURCE_NOTE, VARIANT, LeaderboardError)
from harness.leaderboard.csvfile import csv_table
from harness.leaderboard.flags import EARLY_EPOCH, MIN_UPDATES, STOP_REASONS, UNDERTRAINED_RULE, tnet_ran_to_cap
from harness.leaderboard.layout import SectionLayout, holm_families, natural_key, role_of, section_layouts, task_note
from harness.leaderboard.markdown import HEADER, render
from harness.leaderboard.paired import _recipe, _values, compare
from harness.leaderboard.records import collect, collect_records, data_versions, mixed_data, random_features
from harness.leaderboard.summary import label_of, summarise
from harness.leaderboard.write import ranks_csv_path, write_leaderboard

__all__ = [
    "BOUND_LABEL", "CONTROL_KEY", "CONTROL_ROLE", "CONTROLS", "DATA_UNKNOWN", "EARLY_EPOCH", "EVALUATED_MODEL",
    "FAMILY_KEY", "HEADER", "LABEL_PREFIXES", "MAIN_FAMILY", "MIN_UPDATES", "REFERENCE", "ROW", "SECTION",
    "SELECTED_ON_TEST", "SOURCE_NOTE", "STOP_REASONS", "UNDERTRAINED_RULE", "VARIANT", "LeaderboardError",
    "SectionLayout",
    "_delta_cell", "_fmt", "_p", "_recipe", "_values", "collect", "collect_records", "compare", "csv_table",
    "data_versions", "holm_families", "label_of", "mixed_data", "natural_key", "random_features", "render",
    "role_of", "section_layouts", "summarise", "task_note", "tnet_ran_to_cap", "write_leaderboard", "ranks_csv_path",
]
