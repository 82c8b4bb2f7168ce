"""scripts/tnet_convergence.py reads the T-Net's convergence from records' logs: checked against hand-made curves."""

import importlib.util
from pathlib import Path

import numpy as np
from _records import hand_made_record

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "tnet_convergence.py"


def load():
    spec = importlib.util.spec_from_file_location("tnet_convergence", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def curve(seed: int, selected: int, last: int) -> list[float]:
    """A decreasing validation MMD whose minimum is at `selected`, flat after it."""
    values = 4.0 / (1 + np.arange(last + 1)) + 0.01 * seed
    values[selected + 1:] = values[selected] + 0.001
    return [float(v) for v in values]


def write(root, method, seed, selected, last, store):
    mmd = curve(seed, selected, last)
    config = {"method": {"name": method, "privileged_control": "none", "tnet": {"epochs": 100, "patience": 10}},
              "task": {"name": "lupi"}, "train": {"max_epochs": 400, "patience": 40}}
    hand_made_record(root, method, seed, {"accuracy": 0.8}, task="lupi", task_variant="experiment 1",
                     primary_metric="accuracy", config=config,
                     extra={"tnet": {"selected_epoch": selected, "selection": "lowest validation loss", "loss": "mmd",
                                     "store_path": store, "val_before": {"val_mmd": 9.0}}},
                     logs={"tnet": [{"epoch": e, "val_mmd": v} for e, v in enumerate(mmd)]})
    return mmd


def test_each_stored_tnet_once_with_its_medians_and_cap(tmp_path, capsys):
    curves = {0: write(tmp_path, "pkdot", 0, 99, 99, "/store/a"),   # selected at the last of 100 epochs: at its cap
              1: write(tmp_path, "pkdot", 1, 40, 51, "/store/b"),   # 51 - 40 > 10: stopped by patience
              2: write(tmp_path, "pkdot", 2, 92, 99, "/store/c")}   # 99 - 92 <= 10: patience not run out at the cap
    write(tmp_path, "mtpkdot", 0, 99, 99, "/store/a")              # the same stored T-Net as pkdot seed 0
    module = load()
    assert module.main(["--results", str(tmp_path), "--at", "30"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("| experiment 1"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    at = [curves[s][30] for s in (0, 1, 2)]
    selected = [curves[0][99], curves[1][40], curves[2][92]]
    left = [(a - b) / (9.0 - b) for a, b in zip(at, selected)]
    assert cells[1:7] == ["400 / 40", "100 / 10", "none", "3", "92", "2"]  # 3 T-Nets, 2 at their cap
    assert cells[7:] == ["9.000", f"{np.median(at):.3f}", f"{np.median(selected):.3f}", f"{np.median(left):.1%}"]
