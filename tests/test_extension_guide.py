"""The guides docs/guides/adding-a-task.md and adding-a-method.md, followed to the letter, so that they cannot rot.

The package is made of the guides' own code blocks (each block with a `title="<path>"` is written to that path,
the task guide's first, then the method guide's), installed through its pyproject.toml's entry point as the
guide says (with pip, into a folder of this test instead of the environment), and run with the `harness run`
commands of the guides' bash blocks. Then the numbers are checked against independent computations: the method's
predictions against a closed-form ridge regression in numpy on the same data, the record's metrics against the
predictions table, the error messages the guides quote against what the CLI prints.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
GUIDES = [ROOT / "docs/guides/adding-a-task.md", ROOT / "docs/guides/adding-a-method.md"]
FILE_BLOCK = re.compile(r'^```\w+ title="([^"]+)"\n(.*?)^```$', re.S | re.M)
BASH_BLOCK = re.compile(r"^```bash\n(.*?)^```$", re.S | re.M)


def guide_commands(guide: Path, program: str) -> list[list[str]]:
    """The words of every `<program> ...` line of the guide's bash blocks, without their trailing comment."""
    lines = [line.split("#")[0].strip() for block in BASH_BLOCK.findall(guide.read_text()) for line in
             block.splitlines()]
    return [shlex.split(line) for line in lines if line.startswith(program + " ")]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The guides' package written from their blocks and installed with pip into a folder; (work dir, env)."""
    work = tmp_path_factory.mktemp("guide")
    written = []
    for guide in GUIDES:
        for path, code in FILE_BLOCK.findall(guide.read_text()):
            (work / path).parent.mkdir(parents=True, exist_ok=True)
            (work / path).write_text(code)
            written.append(path)
    assert {"pkd_extras/pyproject.toml", "pkd_extras/pkd_extras/linear_pi.py",
            "pkd_extras/pkd_extras/ridge_gd.py"} <= set(written)
    # The guide's `pip install -e ./pkd_extras`, into a folder of this test rather than the shared environment;
    # offline and without build isolation (setuptools is the environment's): the same entry-point metadata.
    (install,) = guide_commands(GUIDES[0], "pip")
    assert install[1:] == ["install", "-e", "./pkd_extras"]
    site = work / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(site), str(work / "pkd_extras")], check=True, capture_output=True)
    assert list(site.glob("pkd_extras-*.dist-info/entry_points.txt"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(site)]), "OMP_NUM_THREADS": "1"}
    return work, env


def harness(args: list[str], work: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=work, env=env, capture_output=True,
                          text=True, timeout=600)


def run_guide(guide: Path, work: Path, env: dict) -> list[tuple[Path, dict]]:
    """Every `harness run` of the guide, into the test's results folder; (run folder, record) of each run."""
    results = work / "results"
    commands = [c for c in guide_commands(guide, "harness") if c[1] == "run"]
    assert commands, f"{guide.name} has no `harness run` command"
    records = []
    for words in commands:
        before = set(results.rglob("record.json")) if results.exists() else set()
        proc = harness([*words[1:], f"results_dir={results}", "progress=false", "stats.bootstrap_resamples=0"],
                       work, env)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        records += [(p.parent, json.loads(p.read_text())) for p in sorted(set(results.rglob("record.json")) - before)]
    return records


def test_harness_list_shows_the_plugin_method_and_task(installed):
    work, env = installed
    proc = harness(["list"], work, env)
    assert proc.returncode == 0, proc.stderr
    rows = {tuple(line.split()[:2]) for line in proc.stdout.splitlines()}
    assert ("task", "linear_pi") in rows and ("method", "ridge_gd") in rows


def test_task_guide_runs_the_builtin_bounds_on_the_new_task(installed):
    work, env = installed
    records = [r for _, r in run_guide(GUIDES[0], work, env)]
    assert sorted(r["method"] for r in records) == ["student", "teacher"]
    for r in records:
        assert r["status"] == "ok" and r["task"] == "linear_pi" and r["data_source"] == "synthetic"
        assert r["privileged_modalities"] == ["x_star"] and r["student_modalities"] == ["x"]
        assert all(np.isfinite(v) for v in r["metrics"].values()) and list(r["metrics"]) == ["ccc", "mae", "pearson"]
    assert {r["method"]: r["uses_privileged_at_test"] for r in records} == {"student": False, "teacher": True}


def ridge(x: np.ndarray, y: np.ndarray, alpha: float):
    """Ridge regression with an unpenalised intercept by its normal equations: predict(x) of the fitted model."""
    mx, my = x.mean(0), y.mean(0)
    w = np.linalg.solve((x - mx).T @ (x - mx) + alpha * np.eye(x.shape[1]), (x - mx).T @ (y - my))
    return lambda new: (new - mx) @ w + my


def concordance(t: np.ndarray, p: np.ndarray) -> float:
    """Lin's CCC with population moments (the harness's convention, docs/datasets.md#metrics-ccc)."""
    return 2 * np.cov(t, p, ddof=0)[0, 1] / (t.var() + p.var() + (t.mean() - p.mean()) ** 2)


def test_method_guide_runs_and_its_numbers_are_ridge_distillation(installed, tmp_path):
    work, env = installed
    runs = run_guide(GUIDES[1], work, env)
    records = [r for _, r in runs]
    assert sorted(r["config"]["method"]["imitation"] for r in records) == [0, 0.5, 1]
    # The fold the runs used, loaded through the public registry in a fresh process (importing the plugin here
    # would add its tables to this test session's schema).
    fold = tmp_path / "fold.npz"
    script = ("import numpy as np\nfrom harness.config import compose_one\nfrom harness.registry import TASKS\n"
              "cfg = compose_one(['task=linear_pi'])\nd = TASKS.get('linear_pi')(cfg.task).load_fold(0)\n"
              f"np.savez({str(fold)!r}, **{{f'{{s}}_{{k}}': v for s in ('train', 'test') for k, v in "
              "[('x', getattr(d, s).inputs['x']), ('z', getattr(d, s).inputs['x_star']), "
              "('y', getattr(d, s).targets), ('ids', getattr(d, s).ids)]})\n")
    subprocess.run([sys.executable, "-c", script], cwd=work, env=env, check=True, capture_output=True)
    data = np.load(fold)
    x, z, y = (data[f"train_{k}"].astype(np.float64) for k in ("x", "z", "y"))
    for folder, r in runs:
        assert r["status"] == "ok" and r["method"] == "ridge_gd" and r["privileged_modalities"] == ["x_star"]
        alpha, imitation = r["config"]["method"]["alpha"], r["config"]["method"]["imitation"]
        teacher = ridge(z, y, alpha)
        student = ridge(x, imitation * teacher(z) + (1 - imitation) * y, alpha)
        want = student(data["test_x"].astype(np.float64))[:, 0]
        table = pd.read_csv(folder / "predictions.csv")
        assert list(table["id"]) == list(data["test_ids"])
        # float32 outputs (the predictions table's dtype) of float64 solutions by different solvers (sklearn's
        # and numpy's): equal to a few float32 ulps of values of order 1
        np.testing.assert_allclose(table["y_pred_y"], want, rtol=1e-5, atol=1e-5)
        # The table writes 7 significant digits (harness/records.py float_format="%.7g"): half a unit of the 7th
        np.testing.assert_allclose(table["y_true_y"], data["test_y"][:, 0], rtol=5e-7, atol=1e-12)
        # The record's metrics are the predictions table's: CCC by its formula, MAE, Pearson r by numpy. The table
        # rounds each value to 7 digits (relative error <= 5e-8): CCC and r move by ~1e-7 at most; MAE, whose
        # differences |t - p| ~ 0.1 lose a digit to cancellation, by ~1e-6
        t, p = table["y_true_y"].to_numpy(np.float64), table["y_pred_y"].to_numpy(np.float64)
        assert r["metrics"]["ccc"] == pytest.approx(concordance(t, p), rel=1e-6)
        assert r["metrics"]["mae"] == pytest.approx(np.abs(t - p).mean(), rel=1e-5)
        assert r["metrics"]["pearson"] == pytest.approx(np.corrcoef(t, p)[0, 1], rel=1e-6)
        assert r["extra"]["teacher_train_r2"] == pytest.approx(
            1 - ((y - teacher(z)) ** 2).sum() / ((y - y.mean()) ** 2).sum(), rel=1e-6)
    by_imitation = {r["config"]["method"]["imitation"]: r["metrics"]["ccc"] for r in records}
    assert len(set(by_imitation.values())) == 3  # imitation changes the student: three different fits


@pytest.mark.parametrize("args, message, quoted", [
    (["task=linear_pi", "task.noise=-1"], "task.noise=-1: expected a float >= 0", True),
    (["method=ridge_gd", "task=linear_pi", "method.imitation=2"], "method.imitation=2: expected a float in [0, 1]",
     True),
    (["method=ridge_gd", "task=synthetic"], "method=ridge_gd: task 'synthetic' needs vector modalities only", False),
])
def test_the_errors_the_guides_describe(installed, args, message, quoted):
    work, env = installed
    text = " ".join(g.read_text() for g in GUIDES)
    assert args[-1] in text and (not quoted or f"`{message}`" in text)  # what the guides say happens
    proc = harness(["run", *args, f"results_dir={work / 'refused'}"], work, env)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not (work / "refused").exists()  # refused before any folder is made


def test_add_method_refuses_a_config_and_schema_that_disagree(tmp_path):
    """add_method's own checks, in a fresh interpreter (a registration would stay in this session's tables)."""
    script = """
from harness.errors import ConfigError
from harness.method import Method
from harness.plugins import add_method
from harness.schema import float_

def attempt(name, config, schema):
    try:
        add_method(type("M", (Method,), {"name": name, "description": "d"}), config=config, schema=schema)
    except (ConfigError, ValueError) as e:
        print(str(e))
    else:
        print("registered")

attempt("m1", {"name": "m1", "alpha": 1.0, "beta": 2.0}, {"alpha": float_(gt=0)})
attempt("m2", {"name": "m2"}, {"alpha": float_(gt=0)})
attempt("m3", {"name": "m3", "alpha": -1.0}, {"alpha": float_(gt=0)})
attempt("kd", {"name": "kd"}, {})
attempt("m4", {"name": "other"}, {})
attempt("m5", {"name": "m5", "alpha": 1.0}, {"alpha": float_(gt=0)})
from harness.registry import METHODS
from harness import schema
print(METHODS.get("m5").name, sorted(schema.METHODS["m5"]))
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          check=True)
    lines = proc.stdout.splitlines()
    assert "no schema entry for beta" in lines[0]
    assert "no default for alpha" in lines[1]
    assert "its own default is invalid: method.alpha=-1.0: expected a float > 0" in lines[2]
    assert "method 'kd' is built in" in lines[3]
    assert "name='other': expected name: m4" in lines[4]
    assert lines[5:] == ["registered", "m5 ['alpha', 'name']"]
