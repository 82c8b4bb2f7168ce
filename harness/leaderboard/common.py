"""Names every part of the leaderboard shares: the section and row keys, the reference row, the roles and labels
of bounds and controls, the data-source notes, and the error every reader raises."""

from __future__ import annotations

from harness.errors import RecordError



# Overrides that change a method's own setting are shown in its row label (teacher.*: what the teacher sees,
# e.g. lupi's teacher.modalities=privileged); task overrides already define the section, and paths / launcher
# settings do not change results.
LABEL_PREFIXES = ("method.", "train.", "model.", "teacher.")
BOUND_LABEL = {"lower_bound": "lower bound", "upper_bound": "UPPER BOUND (uses privileged at test)"}
SOURCE_NOTE = {
    "synthetic": "Synthetic data generated in memory: these numbers say nothing about any real dataset.",
    "mimic": "MIMIC data written by the harness in the real on-disk format: NOT results on the real dataset, "
             "not comparable to published numbers.",
    "random_weights": "Visual features extracted with RANDOM backbone weights (harness extract extract.weights=none, "
                      "for tests): NOT results on the real dataset, not comparable to published numbers.",
    "real": "Real data.",
}
VARIANT = ["task", "variant", "data_source"]
# A section is a task variant on one data version: runs whose task files differ (their records'
# `source_fingerprint`, harness/stale.py) are never averaged or compared together (see `data_versions`).
SECTION = [*VARIANT, "data"]
DATA_UNKNOWN = "not fingerprinted"  # the data label of older records in a variant whose data changed
ROW = ["method", "config_id"]
REFERENCE = "student"
# Holm families: a row's comparisons are corrected with the section's other rows of its family (`stats.family`,
# declared when its runs are launched; older records are in the main family).
FAMILY_KEY = "stats.family"
MAIN_FAMILY = "main"
# Privileged-information controls: the method trained with its privileged input zeroed or shuffled.
CONTROL_KEY = "method.privileged_control"
CONTROLS = ("zeros", "shuffle")
CONTROL_ROLE = {"zeros": "control: privileged input zeroed", "shuffle": "control: privileged input shuffled"}
# Runs that selected on the test split (root key selection_split=test, the official codes' protocol): their rows say so.
SELECTED_ON_TEST = "selected on test (optimistic)"
# The model a run is scored on, whose training is checked: the student (DMD's too), or the teacher of the
# upper bound's runs (`teacher`).
EVALUATED_MODEL = {"upper_bound": "teacher"}


class LeaderboardError(RecordError):
    """A record the leaderboard cannot read: the message names the file and the field. A RecordError, as every
    reader's: the CLI answers it with one line and exit status 2, whichever command read the record."""


def _runs(n: int) -> str:
    return f"{n} run" + ("" if n == 1 else "s")


def _run_name(r) -> str:
    return f"f{int(r.fold)}-s{int(r.seed)}"
