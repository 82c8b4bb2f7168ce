"""The DMD recipes (harness/conf/recipe/dmd-mosi.yaml, dmd-mosei.yaml): every arm composes, full size and smoke,
runs the official configuration, and quotes the same published numbers as the tasks' own published lists."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from harness.config import compose_one
from harness.registry import TASKS
from methods.dmd import resolve_hparams

RECIPES = Path(__file__).resolve().parents[1] / "harness" / "conf" / "recipe"
NAMES = ["dmd-mosi", "dmd-mosei"]


def load(name: str) -> dict:
    return yaml.safe_load((RECIPES / f"{name}.yaml").read_text())


def runner_keys_here(overrides: list[str]) -> list[str]:
    """selection_split is the reproduce runner's key (another branch): dropped where this tree does not have it."""
    known = "selection_split" in compose_one([])
    return [o for o in overrides if known or not o.startswith("selection_split=")]


@pytest.mark.parametrize("name", NAMES)
def test_recipe_shape_and_published_numbers(name):
    r = load(name)
    assert {"title", "paper", "protocol", "task", "overrides", "arms", "sweep", "published", "smoke"} <= set(r)
    arms = [a["name"] for a in r["arms"]]
    assert arms[0] == "student" and len(set(arms)) == len(arms)
    assert r["sweep"] == {"seed": [1111, 1112, 1113, 1114, 1115], "fold": [0]}  # run.py's DMD_run seeds, one split
    assert set(r["smoke"]["arms"]) <= set(arms)
    # the published numbers are the task's own DMD (DMD*) row, metric by metric
    task_row = next(p for p in TASKS.get(r["task"]).published if p["method"] == "DMD" and "DMD*" in p["setting"])
    quoted = {(p["arm"], p["metric"]): p["value"] for p in r["published"]}
    assert quoted == {("dmd-bert", m): v for m, v in task_row["metrics"].items()}
    assert all(p["source"] for p in r["published"])


@pytest.mark.parametrize("smoke", [False, True], ids=["full", "smoke"])
@pytest.mark.parametrize("name", NAMES)
def test_every_arm_composes_with_the_official_settings(name, smoke, tmp_path):
    r = load(name)
    for arm in r["arms"]:
        overrides = [f"task={r['task']}", *r["overrides"], *arm["overrides"], f"cache_dir={tmp_path}"]
        if smoke:
            overrides += [*r["smoke"]["overrides"], *r["smoke"]["arms"].get(arm["name"], [])]
        cfg = compose_one(runner_keys_here(overrides))
        assert cfg.task.protocol == "full" and cfg.task.aligned is True
        assert (cfg.task.source == "mimic") is smoke
        if cfg.method.name != "dmd":
            continue
        hp = resolve_hparams(cfg.method, r["task"])
        assert hp["loss"]["ort_mode"] == "batch_axis" and hp["training"]["min_lr"] == 0  # faithful (D1, no floor)
        assert hp["training"]["select_on"] == "loss"  # the official KeyEval
        assert (hp["loss"]["homo_gd"], hp["loss"]["het_gd"]) == ((0, 0) if arm["name"] == "dmd-no-gd" else (0.05, 0.05))
        bert = arm["name"].startswith("dmd-bert")
        assert (hp["text_encoder"] == "bert") is bert and cfg.task.text_input == ("bert" if bert else "frozen")
        # smoke never loads a model from disk or the network
        assert hp["bert_init"] == ("random_tiny" if smoke and bert else "pretrained")
        if not smoke:
            assert (hp["d"], hp["heads"], hp["layers"]) == ((30, 6, 4) if r["task"] == "mosei" else (50, 10, 4))
            assert (hp["training"]["accumulate"], hp["training"]["grad_clip"], hp["training"]["lr"]) == (10, 0.6, 1e-4)
