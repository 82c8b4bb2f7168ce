"""The committed records: every predictions.csv re-scores to its record's metrics with independent
code, and leaderboard.md is exactly what `harness leaderboard` generates from them."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score

from harness.leaderboard import collect, render, summarise
from harness.leaderboard.crosstask import entrants, summary_table

ROOT = Path(__file__).resolve().parent.parent
RECORDS = sorted((ROOT / "results").glob("*/*/*/record.json"))


def ccc(t, p):
    c = np.cov(t, p, bias=True)
    return 2 * c[0, 1] / (c[0, 0] + c[1, 1] + (t.mean() - p.mean()) ** 2)


# Records written with save_predictions=false (the lupi reproduction) have no predictions.csv: they must say so.
WITH_PREDICTIONS = [p for p in RECORDS if (p.parent / "predictions.csv").exists()]


def test_every_committed_record_has_its_predictions_or_says_it_has_none():
    lacking = [p for p in RECORDS if p not in WITH_PREDICTIONS]
    assert all(json.loads(p.read_text()).get("predictions_saved") is False for p in lacking)


@pytest.mark.skipif(not WITH_PREDICTIONS, reason="no committed records with predictions")
@pytest.mark.parametrize("path", WITH_PREDICTIONS, ids=lambda p: str(p.parent.relative_to(ROOT / "results")))
def test_committed_predictions_rescore_to_record_metrics(path):
    rec = json.loads(path.read_text())
    if rec["status"] != "ok":
        pytest.skip("failed run")
    pred = pd.read_csv(path.parent / "predictions.csv")
    m = rec["metrics"]
    if rec["task"] == "synthetic" and "ccc_mean" in m:
        cv = ccc(pred.y_true_valence.to_numpy(), pred.y_pred_valence.to_numpy())
        ca = ccc(pred.y_true_arousal.to_numpy(), pred.y_pred_arousal.to_numpy())
        assert m["ccc_valence"] == pytest.approx(cv, abs=1e-5)
        assert m["ccc_arousal"] == pytest.approx(ca, abs=1e-5)
        assert m["ccc_mean"] == pytest.approx((cv + ca) / 2, abs=1e-5)
    elif "accuracy" in m and "y_pred" in pred:
        assert m["accuracy"] == pytest.approx(accuracy_score(pred.y_true, pred.y_pred), abs=1e-9)
        assert m["f1_macro"] == pytest.approx(f1_score(pred.y_true, pred.y_pred, average="macro"), abs=1e-9)
    else:
        pytest.skip(f"no independent re-scorer here for {rec['task']}")


def test_leaderboard_md_is_generated_from_the_records():
    md = ROOT / "leaderboard.md"
    if not RECORDS:
        pytest.skip("no committed records")
    df = collect(ROOT / "results")
    assert md.read_text() == render(summarise(df), df), "leaderboard.md is stale: run `harness leaderboard`"


def test_every_committed_record_keeps_its_run_key():
    """A config key added later must be neutral at the value older records ran with (harness/records.py
    KEYS_NEUTRAL_AT): each record's command (method, task, seed, fold and its overrides), composed by today's
    code, gives its run key and folder, so the same sweep sent today skips it as done (a new lupi key once
    changed every lupi key without any test noticing)."""
    from harness.config import Composer
    from harness.records import run_key
    paths, combos = [], []
    for path in RECORDS:
        rec = json.loads(path.read_text())
        paths.append((path, rec["run_key"]))
        combos.append([f"method={rec['method']}", f"task={rec['task']}", f"seed={rec['seed']}", f"fold={rec['fold']}",
                       *(o for o in rec.get("overrides") or []
                         if not o.startswith(("method=", "task=", "seed=", "fold=")))])
    # composed as a sweep composes its runs (harness.launch.plan_runs), which is what decides that a re-sent
    # sweep skips them; tests/test_launch.py checks compose_plain against composing each run
    with Composer() as composer:
        configs = [config for config, _ in composer.compose_plain(combos)]
    n = len(configs)
    bad = [f"{path.parent} -> {key}" for (path, recorded), key in zip(paths, map(run_key, configs))
           if key != recorded or key != path.parent.name]
    assert n > 300
    assert not bad, f"{len(bad)} of {n} records re-key differently today, e.g. {bad[:3]}"


def test_leaderboard_ranks_csv_is_generated_from_the_records():
    ranks = ROOT / "leaderboard_ranks.csv"
    if not RECORDS:
        pytest.skip("no committed records")
    df = collect(ROOT / "results")
    assert ranks.read_text() == summary_table(entrants(df, summarise(df))).to_csv(index=False), \
        "leaderboard_ranks.csv is stale: run `harness leaderboard`"


MAX_LABEL = 24  # the longest short label today, `mtpkdot·e · PI zeros`, is 20 characters


def test_committed_leaderboard_row_labels_are_short():
    """Every table row of leaderboard.md starts with a short label (the method, a variant tag, a control), never
    the overrides (they are listed once under each table): a table fits a screen."""
    text = (ROOT / "leaderboard.md").read_text().split("## Published reference numbers")[0]
    sections = [s for s in text.split("\n## ")[1:] if not s.startswith("Cross-task summary")]
    labels = [line.split("|")[1].strip() for s in sections for line in s.splitlines()
              if line.startswith("| ") and not line.startswith("| method")]
    assert labels and max(map(len, labels)) <= MAX_LABEL, max(labels, key=len)
    assert not any("[" in label or "=" in label for label in labels)
