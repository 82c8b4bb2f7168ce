"""Every command that reads records answers a bad one alike: one line naming the file, the field and the fix, exit
status 2, no traceback (harness/records.py check_record; the CLI's error handling, in one place). The Python API
raises the same error type, RecordError."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import TINY

from harness import api
from harness.cli import main
from harness.errors import RecordError
from harness.launch import plan_runs

RUN = [*TINY, "method=student", "task=synthetic", "seed=0,1"]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> Path:
    """Two real records (student, seeds 0 and 1) and the manifest of a finished local sweep that made them."""
    root = tmp_path_factory.mktemp("bad_records")
    results = root / "results"
    assert main(["run", "-m", *RUN, f"results_dir={results}", f"cache_dir={root / 'cache'}"]) == 0
    runs = plan_runs([*RUN, f"results_dir={results}"], multirun=True)
    result = results / "_sweeps" / "job.pkl"
    result.parent.mkdir()
    result.write_text("finished")
    manifest = {"sweep_id": "20250101-000000-abcd", "created_at": "2025-01-01T00:00:00+00:00", "executor": "local",
                "launcher": {"name": "local"}, "results_dir": str(results), "logs_dir": str(results / "_sweeps"),
                "jobs": [{"job_id": "1", "stdout": "", "stderr": "", "result": str(result)}],
                "runs": [{"run_dir": str(r.folder), "overrides": r.overrides, "task": "synthetic", "method": "student",
                          "fold": 0, "seed": i, "job_id": "1", "position": i, "stdout": "", "stderr": ""}
                         for i, r in enumerate(runs)]}
    (results / "_sweeps" / f"{manifest['sweep_id']}.json").write_text(json.dumps(manifest))
    return root


def spoil(record: Path, kind: str) -> str:
    """Make the record bad in one way; return what the error line must say after the file's name."""
    text = record.read_text()
    rec = json.loads(text)
    if kind == "invalid JSON":
        record.write_text(text[:300])
        return "not valid JSON (line "
    if kind == "missing field":
        del rec["metrics"]
        what = "field 'metrics' is missing"
    elif kind == "invalid family":
        rec["config"]["stats"]["family"] = "lr sensitivity"
        what = "config.stats.family = 'lr sensitivity': expected a name of letters, digits, _ or -"
    elif kind == "wrong type":
        rec["seed"] = "one"
        what = "seed = 'one': expected a whole number"
    record.write_text(json.dumps(rec, indent=1))
    return what


KINDS = ("invalid JSON", "missing field", "invalid family", "wrong type")
COMMANDS = {
    "leaderboard": lambda r, t: ["leaderboard", "--results", str(r), "--out", str(t / "lb.md"), "--csv",
                                 str(t / "lb.csv")],
    "leaderboard --latex": lambda r, t: ["leaderboard", "--results", str(r), "--out", str(t / "lb.md"), "--csv",
                                         str(t / "lb.csv"), "--latex", str(t / "lb.tex")],
    "report": lambda r, t: ["report", "--results", str(r), "--out", str(t / "report")],
    "scaling": lambda r, t: ["scaling", "--results", str(r), "--task", "synthetic", "--x", "seed", "--out",
                             str(t / "scaling.png")],
    "status": lambda r, t: ["status", "--results", str(r)],
    "run -m (resume)": lambda r, t: ["run", "-m", *RUN, f"results_dir={r}", f"cache_dir={t / 'cache'}"],
}


@pytest.fixture
def spoilt(two_runs, tmp_path, request):
    results = tmp_path / "results"
    shutil.copytree(two_runs / "results", results)
    # the manifest names the fixture's folders: point it at the copy
    for m in (results / "_sweeps").glob("*.json"):
        m.write_text(m.read_text().replace(str(two_runs / "results"), str(results)))
    record = sorted(results.glob("synthetic/student/*/record.json"))[1]
    return results, record, spoil(record, request.param)


@pytest.mark.parametrize("spoilt", KINDS, indirect=True)
@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_answers_a_bad_record_in_one_line(spoilt, command, tmp_path, capsys):
    results, record, what = spoilt
    before = record.read_bytes()
    assert main(COMMANDS[command](results, tmp_path)) == 2
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert len(err.splitlines()) == 1, err
    line = err.strip()
    assert line.startswith(f"harness: error: {record}: {what}"), line
    assert line.endswith(f"; fix: restore the file, or recompute the run (overwrite=true, or delete {record.parent} "
                         f"and re-send its command)"), line
    assert record.read_bytes() == before  # nothing rewritten it
    assert not (tmp_path / "lb.md").exists() and not (tmp_path / "report").exists()


@pytest.mark.parametrize("spoilt", KINDS, indirect=True)
def test_the_python_api_raises_the_same_error_type(spoilt):
    results, record, what = spoilt
    for read in (api.records, api.leaderboard):
        with pytest.raises(RecordError) as e:
            read(results)
        assert str(e.value).startswith(f"{record}: {what}")


def test_overwrite_recomputes_a_run_whose_record_is_bad(two_runs, tmp_path, capsys):
    results = tmp_path / "results"
    shutil.copytree(two_runs / "results", results)
    record = sorted(results.glob("synthetic/student/*/record.json"))[1]
    spoil(record, "invalid JSON")
    args = ["run", *TINY, "method=student", "task=synthetic", "seed=1", f"results_dir={results}",
            f"cache_dir={tmp_path / 'cache'}", "overwrite=true"]
    assert main(args) == 0
    assert json.loads(record.read_text())["status"] == "ok"
