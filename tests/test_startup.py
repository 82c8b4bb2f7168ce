"""Start-up: what each command imports (checked in a fresh interpreter through sys.modules; the times themselves
are measured by benchmarks/bench_startup.py, not here).

- `import harness.cli`, building the parser and `harness --help`: no torch, pandas, scipy, submitit, Hydra;
- `harness list`: no torch (names and descriptions come from the packages' catalogues);
- submitting a sweep (plan, check every config, skip the recorded runs, import the job side): no torch and no
  method module, so that a 5000-run sweep reaches its prompt without them (the jobs import them);
- a synthetic student run in process: none of the libraries it does not use (POT, geomloss, matplotlib,
  TensorBoard, MLflow, submitit, statsmodels) and no other method's or task's module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent


def modules_after(code: str, tmp_path: Path) -> set[str]:
    """The names in sys.modules after `code` ran in a fresh interpreter (this checkout first on sys.path)."""
    out = tmp_path / "modules.json"
    script = f"{code}\nimport json, sys\nopen({str(out)!r}, 'w').write(json.dumps(sorted(sys.modules)))\n"
    path = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return set(json.loads(out.read_text()))


def imported(modules: set[str], *packages: str) -> list[str]:
    """Those of `packages` (top-level names or dotted modules) that are in `modules`."""
    return [p for p in packages if p in modules or any(m.startswith(p + ".") for m in modules)]


def test_cli_parser_and_help_import_no_heavy_library(tmp_path):
    modules = modules_after(
        "import contextlib, io\n"
        "import harness.cli\n"
        "harness.cli.build_parser()\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    harness.cli.main(['--help'])\n", tmp_path)
    assert "harness.cli" in modules
    assert imported(modules, "torch", "pandas", "scipy", "sklearn", "submitit", "hydra", "omegaconf") == []


def test_list_imports_no_torch_nor_any_method_or_task_module(tmp_path):
    modules = modules_after(
        "import contextlib, io\n"
        "from harness.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['list']) == 0\n", tmp_path)
    assert imported(modules, "torch", "pandas", "scipy", "sklearn", "hydra") == []
    assert sorted(m for m in modules if m.startswith(("methods.", "tasks."))) == []


def test_synthetic_student_run_imports_only_what_it_uses(tmp_path):
    modules = modules_after(
        "import contextlib, io\n"
        "from harness.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['run', 'method=student', 'task=synthetic', 'results_dir=results', 'cache_dir=cache',\n"
        "                 'progress=false', 'train.max_epochs=1', 'task.n_subjects=10',\n"
        "                 'task.samples_per_subject=10', 'stats.bootstrap_resamples=10']) == 0\n", tmp_path)
    assert "torch" in modules and "methods.student" in modules  # it did run
    assert imported(modules, "ot", "geomloss", "matplotlib", "tensorboard", "mlflow", "submitit", "statsmodels") == []
    others = {m for m in modules if m.startswith(("methods.", "tasks."))}
    # student trains through the teacher module's network builder and loss; tasks._common is not needed
    assert others <= {"methods.student", "methods.teacher", "methods.blocks", "tasks.synthetic"}, others


def test_submitting_a_sweep_imports_no_torch_nor_any_method_module(tmp_path):
    modules = modules_after(
        "import harness.jobs\n"
        "from harness.launch import check_planned, plan_runs, runs_to_do\n"
        "runs = plan_runs(['method=student,kd,pkdot', 'seed=0,1', 'task=synthetic', 'results_dir=results'], True)\n"
        "check_planned(runs)\n"
        "assert len(runs_to_do(runs)) == 6\n", tmp_path)
    assert "submitit" in modules and "tasks.synthetic" in modules  # it did plan and check the runs
    assert imported(modules, "torch", "harness.runner") == []
    assert sorted(m for m in modules if m.startswith("methods.")) == []


def test_registry_require_checks_a_name_without_importing_its_module(tmp_path):
    modules = modules_after(
        "from harness.registry import METHODS, UnknownNameError\n"
        "METHODS.require('pkdot')\n"
        "try:\n"
        "    METHODS.require('pkdott')\n"
        "except UnknownNameError as e:\n"
        "    assert 'did you mean pkdot' in str(e), str(e)\n"
        "else:\n"
        "    raise AssertionError('pkdott was accepted')\n", tmp_path)
    assert sorted(m for m in modules if m.startswith("methods.")) == [] and "torch" not in modules
