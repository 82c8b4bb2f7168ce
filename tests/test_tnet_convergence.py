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
    assert cells[1:8] == ["400 / 40", "100 / 10", "mmd", "none", "3", "92", "2"]  # 3 T-Nets, 2 at their cap
    assert cells[8:] == ["9.000", f"{np.median(at):.3f}", f"{np.median(selected):.3f}", f"{np.median(left):.1%}"]


def test_a_tnet_trained_on_both_losses_is_read_on_their_sum_in_its_own_row(tmp_path, capsys):
    # method.tnet.loss=both selects on val_mmd + val_mse (methods/pkdot.py tnet_selection_score); its log has the
    # two terms, no val_both. It gets its own row: its values are not MMDs to take a median with.
    write(tmp_path, "pkdot", 0, 20, 40, "/store/mmd")
    mmd, mse = curve(1, 20, 40), [0.5 / (1 + e) for e in range(41)]
    config = {"method": {"name": "pkdot", "privileged_control": "none",
                         "tnet": {"epochs": 100, "patience": 10, "loss": "both"}},
              "task": {"name": "lupi"}, "train": {"max_epochs": 400, "patience": 40}}
    hand_made_record(tmp_path, "pkdot", 1, {"accuracy": 0.8}, task="lupi", task_variant="experiment 1",
                     primary_metric="accuracy", config=config,
                     extra={"tnet": {"selected_epoch": 20, "selection": "lowest validation loss", "loss": "both",
                                     "store_path": "/store/both", "val_before": {"val_mmd": 9.0, "val_mse": 1.0}}},
                     logs={"tnet": [{"epoch": e, "val_mmd": a, "val_mse": b}
                                    for e, (a, b) in enumerate(zip(mmd, mse))]})
    assert load().main(["--results", str(tmp_path), "--at", "10"]) == 0
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in capsys.readouterr().out.splitlines()
            if line.startswith("| experiment 1")]
    both = next(r for r in rows if r[3] == "both")
    assert len(rows) == 2 and [r[3] for r in rows].count("mmd") == 1
    assert both[8:11] == ["10.000", f"{mmd[10] + mse[10]:.3f}", f"{mmd[20] + mse[20]:.3f}"]
