"""Tasks: one file per task (synthetic, biovid, affwild2, ...): loader, mimic writer, splits, metrics.

CATALOGUE lists every registered task: the module that registers it and its description, the same as the
class's (checked when the class registers). `harness list` reads it without importing the task modules, and a
run imports only the module of the task it uses (harness/registry.py). A new task needs its line here.
"""

from harness.registry import Listed

CATALOGUE: dict[str, Listed] = {
    "affwild2": Listed("tasks.affwild2", "Aff-Wild2 valence/arousal per frame: face features -> VA; audio privileged"),
    "biovid": Listed("tasks.biovid", "BioVid heat pain (Part A/B): face video features -> pain; physiological "
                     "signals privileged"),
    "iemocap": Listed("tasks.iemocap", "IEMOCAP neutral/happy/sad/angry as 4 binary tasks from MulT pickles; "
                      "per-emotion acc/F1 (+ 4-class WA/UA); pickle's own split, seeds vary init only"),
    "lupi": Listed("tasks.lupi", "Lopez-Paz et al. 2016 §4 synthetic experiments 1-4 (linear, x* privileged): a "
                   "positive control; numbers labelled synthetic"),
    "mosei": Listed("tasks.mosei", "CMU-MOSEI sentiment regression from MMSA pickles (text/audio/vision); MMSA "
                    "metrics; pickle's own split, seeds vary init only"),
    "mosi": Listed("tasks.mosi", "CMU-MOSI sentiment regression from MMSA pickles (text/audio/vision); MMSA metrics; "
                   "pickle's own split, seeds vary init only"),
    "synthetic": Listed("tasks.synthetic", "synthetic privileged task generated in memory (seconds on a CPU); numbers "
                        "labelled synthetic"),
}
