"""Stale data is never reused silently (harness/stale.py): a BioVid mimic tree whose visual feature files are
replaced at the same path (re-extracted with other weights) gets a new teacher, its recorded runs are refused
rather than skipped as done, and the leaderboard keeps the two data versions apart. Unchanged data still reuses
the teacher and skips the run."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from _records import hand_made_record
from _task_trees import TINY, copy_tree, one_torch_thread, shared_tree

from harness.cli import main
from harness.config import compose_one
from harness.launch import PlannedRun, runs_to_do
from harness.leaderboard import DATA_UNKNOWN, LeaderboardError, collect, summarise, write_leaderboard
from harness.method import RunContext
from harness.records import run_dir
from harness.runner import build_task, execute, resolve_device
from harness.stale import StaleDataError, signature_path
from harness.teachers import TeacherStore, stable_hash
from methods.teacher import teacher_key
from tasks.biovid import BioVid

RUN = ["train.max_epochs=2", "train.patience=1", "model.hidden=8", "model.layers=1", "progress=false",
       "stats.bootstrap_resamples=0"]


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    with one_torch_thread():
        yield


@pytest.fixture()
def tree(tmp_path):
    """A private copy of the tiny BioVid mimic tree (its files get replaced)."""
    return copy_tree(shared_tree("biovid"), tmp_path / "PartA")


def cfg_for(tree: Path, tmp_path: Path, *overrides: str):
    return compose_one(["task=biovid", *TINY["biovid"], f"task.data_root={tree}", f"cache_dir={tmp_path / 'cache'}",
                        f"results_dir={tmp_path / 'results'}", *RUN, *overrides])


def run(tree, tmp_path, *overrides) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the mimic split audit's warnings
        return execute(cfg_for(tree, tmp_path, *overrides), raise_errors=True)


def reextract_features(tree: Path, seed: int = 1) -> list[str]:
    """Replace every visual feature file at its path with other values of the same shape (as re-running the
    feature extractor with other weights does); return their names relative to the tree."""
    rng = np.random.default_rng(seed)
    names = []
    for path in sorted((tree / "features" / "visual").glob("*/*.npy")):
        old = np.load(path)
        np.save(path, rng.standard_normal(old.shape).astype(np.float32))
        names.append(str(path.relative_to(tree)))
    return names


# --- 1. the teacher store is keyed on the data ------------------------------------------------------------

def test_teacher_is_not_reused_after_the_features_are_replaced(tree, tmp_path):
    first = run(tree, tmp_path, "method=kd")
    assert first["status"] == "ok" and first["extra"]["teacher"]["reused"] is False
    # unchanged data: another method of the same fold and seed reuses that teacher (negative case)
    same = run(tree, tmp_path, "method=teacher")
    assert same["extra"]["teacher"] == {"store_path": first["extra"]["teacher"]["store_path"], "reused": True}
    assert same["source_fingerprint"] == first["source_fingerprint"]
    reextract_features(tree)
    again = run(tree, tmp_path, "method=kd", "overwrite=true")
    assert again["extra"]["teacher"]["reused"] is False
    assert again["extra"]["teacher"]["store_path"] != first["extra"]["teacher"]["store_path"]
    assert again["source_fingerprint"] != first["source_fingerprint"]
    assert again["data_fingerprint"] != first["data_fingerprint"]  # the loaded data did change
    # both teachers are kept, each under its own key naming its data
    stored = [json.loads((Path(r["extra"]["teacher"]["store_path"]) / "meta.json").read_text())["key"]["data"]
              for r in (first, again)]
    assert stored == [first["source_fingerprint"], again["source_fingerprint"]]


def test_tasks_generated_in_memory_keep_their_teacher_keys(tmp_path):
    """synthetic and lupi have no files: no `data` entry, the keys of teachers stored before are unchanged."""
    for task, pinned in (("synthetic", "687c04091a2f"), ("lupi", "58bf0241b45e")):  # computed before this change
        cfg = compose_one([f"task={task}", "method=kd", f"results_dir={tmp_path / 'r'}", f"cache_dir={tmp_path / 'c'}"])
        ctx = RunContext(cfg=cfg, task=build_task(cfg), fold=0, seed=0, device=resolve_device("cpu"),
                         teachers=TeacherStore(tmp_path / "t"), run_dir=tmp_path, progress=False)
        assert "data" not in teacher_key(ctx) and stable_hash(teacher_key(ctx)) == pinned


# --- 2. a recorded run is skipped as done only on its own data -------------------------------------------

def test_skip_as_done_is_refused_when_the_features_changed(tree, tmp_path):
    first = run(tree, tmp_path, "method=kd")
    folder = run_dir(cfg_for(tree, tmp_path, "method=kd"))
    # unchanged data: skipped as done, the record as it was (negative case)
    skipped = run(tree, tmp_path, "method=kd")
    assert skipped["skipped"] is True and skipped["metrics"] == first["metrics"]
    names = reextract_features(tree)
    new_fp = BioVid(cfg_for(tree, tmp_path).task).source_fingerprint()
    assert new_fp != first["source_fingerprint"]
    with pytest.raises(StaleDataError) as err:
        run(tree, tmp_path, "method=kd")
    msg = str(err.value)
    assert str(folder / "record.json") in msg
    assert f"data fingerprint {first['source_fingerprint']} in the record, {new_fp} now" in msg
    # the 24 feature files of BL1 and PA4 samples, 5 of them named; PA1..PA3 files are not read (binary labels)
    read = [n for n in names if "-BL1-" in n or "-PA4-" in n]
    assert len(names) == 60 and len(read) == 24
    assert f"24 changed: {', '.join(read[:5])} and 19 more)" in msg
    assert "overwrite=true" in msg and "restore the data" in msg
    assert json.loads((folder / "record.json").read_text())["metrics"] == first["metrics"]  # nothing overwritten
    # the fix: overwrite=true recomputes on the current data
    redone = run(tree, tmp_path, "method=kd", "overwrite=true")
    assert redone.get("skipped") is None and redone["source_fingerprint"] == new_fp
    assert run(tree, tmp_path, "method=kd")["skipped"] is True


def test_the_cli_refuses_with_exit_status_2_and_one_message(tree, tmp_path, capsys):
    args = ["run", "method=kd", "task=biovid", *TINY["biovid"], f"task.data_root={tree}",
            f"cache_dir={tmp_path / 'cache'}", f"results_dir={tmp_path / 'results'}", *RUN]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(args) == 0
        assert main(args) == 0  # unchanged: skipped as done
        assert "already has a record" in capsys.readouterr().out
        (tree / "features" / "visual" / "extractor.json").write_text('{"weights": "other"}')  # a new sidecar
        assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("harness: error:") == 1
    assert "was computed on other data" in err and "1 added: features/visual/extractor.json" in err


def test_the_check_lists_files_and_never_loads_the_data(tree, tmp_path, monkeypatch):
    """Deciding to skip reads the index and stats the files: no biosignal or feature file is parsed."""
    run(tree, tmp_path, "method=kd")
    cfg = cfg_for(tree, tmp_path, "method=kd")

    def no_loading(*a, **k):
        raise AssertionError("the skip check loaded the data")

    for name in ("load_fold", "_physio", "_visual"):
        monkeypatch.setattr(BioVid, name, no_loading)
    assert execute(cfg)["skipped"] is True  # unchanged: skipped without loading
    reextract_features(tree)
    with pytest.raises(StaleDataError):
        execute(cfg)


def test_a_sweep_refuses_once_naming_the_first_stale_record_and_counting_the_others(tree, tmp_path):
    for seed in (0, 1):
        run(tree, tmp_path, "method=student", f"seed={seed}")
    planned = [PlannedRun([f"seed={s}"], cfg_for(tree, tmp_path, "method=student", f"seed={s}")) for s in (0, 1, 2)]
    assert [r.cfg.seed for r in runs_to_do(planned)] == [2]  # unchanged: the two recorded runs are skipped
    reextract_features(tree)
    with pytest.raises(StaleDataError) as err:
        runs_to_do(planned)
    first, rest = str(err.value).split("\n")
    assert str(planned[0].folder / "record.json") in first
    assert rest.startswith(f"1 more runs of this sweep were computed on other data and are not run: {planned[1].folder}")
    assert [r.cfg.seed for r in runs_to_do([PlannedRun(p.overrides, cfg_for(tree, tmp_path, "method=student",
                                                                             f"seed={p.cfg.seed}", "overwrite=true"))
                                            for p in planned])] == [0, 1, 2]


def test_the_old_file_listing_is_kept_once_per_fingerprint(tree, tmp_path):
    rec = run(tree, tmp_path, "method=student")
    listing = json.loads(signature_path(tmp_path / "results", "biovid", rec["source_fingerprint"]).read_text())
    assert ["samples.csv", (tree / "samples.csv").stat().st_size, (tree / "samples.csv").stat().st_mtime_ns] in listing
    assert len(listing) == 1 + 2 * 24  # samples.csv, then a _bio.csv and a .npy per sample (6 subjects x 4)


def test_the_signature_does_not_depend_on_where_the_tree_is_mounted(tree, tmp_path):
    """task.data_root is not part of a run's key: the same files elsewhere keep their fingerprint."""
    moved = tree.rename(tmp_path / "elsewhere")
    a = BioVid(cfg_for(moved, tmp_path).task)
    assert "samples.csv" in {name for name, _, _ in a.source_signature} and a.source_fingerprint() is not None
    moved.rename(tree)
    assert BioVid(cfg_for(tree, tmp_path).task).source_fingerprint() == a.source_fingerprint()


# --- 3. the leaderboard never averages across data versions silently -----------------------------------------

def fake_record(root: Path, method: str, seed: int, value: float, source_fp: str | None, data_fp: str = "d0",
                fold: int = 0):
    hand_made_record(root, method, seed, {"accuracy": value}, task="biovid",
                     task_variant="BL1 vs PA4, 5-fold by subject", primary_metric="accuracy", data_source="mimic",
                     fold=fold, run_key=f"f{fold}-s{seed}-{source_fp}", data_fingerprint=data_fp,
                     **({"source_fingerprint": source_fp} if source_fp else {}))


def test_leaderboard_separates_data_versions_with_a_footnote_or_errors_when_strict(tmp_path):
    for seed, (student, kd) in enumerate([(0.5, 0.6), (0.6, 0.7)]):
        fake_record(tmp_path, "student", seed, student, "aaaa")
        fake_record(tmp_path, "kd", seed, kd, "aaaa")
    fake_record(tmp_path, "kd", 2, 0.9, "bbbb", data_fp="d1")  # after the features were replaced
    text, summary = write_leaderboard(tmp_path, tmp_path / "lb.md", tmp_path / "lb.csv")
    acc = summary[summary.metric == "accuracy"].set_index(["method", "data"])
    assert acc.loc[("kd", "aaaa"), "mean"] == pytest.approx(0.65) and acc.loc[("kd", "aaaa"), "n_runs"] == 2
    assert acc.loc[("kd", "bbbb"), "mean"] == pytest.approx(0.9) and acc.loc[("kd", "bbbb"), "n_runs"] == 1
    assert "— data files aaaa" in text and "— data files bbbb" in text
    assert "Runs on other files are in their own section, never averaged or compared with these: bbbb (1 run)" in text
    with pytest.raises(LeaderboardError, match=r"runs on different data files: aaaa \(4 runs, .*\); bbbb \(1 run,"):
        write_leaderboard(tmp_path, tmp_path / "lb.md", None, strict=True)
    assert main(["leaderboard", "--results", str(tmp_path), "--out", str(tmp_path / "s.md"), "--csv",
                 str(tmp_path / "s.csv"), "--strict"]) == 2
    assert not (tmp_path / "s.md").exists()


def test_leaderboard_keeps_one_section_when_the_data_is_the_same(tmp_path):
    """Negative case: one fingerprint (and an older record without one whose fold data matches) -> one section,
    no data label, --strict passes."""
    fake_record(tmp_path, "student", 0, 0.5, "aaaa")
    fake_record(tmp_path, "kd", 0, 0.6, "aaaa")
    fake_record(tmp_path, "kd", 1, 0.8, None)  # recorded before file fingerprints, same fold data
    text, summary = write_leaderboard(tmp_path, tmp_path / "lb.md", None, strict=True)
    kd = summary[(summary.metric == "accuracy") & (summary.method == "kd")]
    assert len(kd) == 1 and kd["mean"].iloc[0] == pytest.approx(0.7) and kd.data.iloc[0] == ""
    assert "data files" not in text and "Data changed" not in text
    assert collect(tmp_path).set_index("seed").data_files.loc[1] == "aaaa"  # kd's seed 1, bridged
    # an older record of another fold (nothing to match its fold data with) is assumed the same, and said so
    fake_record(tmp_path, "kd", 0, 0.4, None, data_fp="d5", fold=1)
    text, _ = write_leaderboard(tmp_path, tmp_path / "lb.md", None, strict=True)
    assert "1 run recorded before data fingerprints: assumed to read the same files as the others (data " \
           "fingerprint aaaa)." in text


def test_leaderboard_puts_unmatched_older_records_apart_when_the_data_changed(tmp_path):
    fake_record(tmp_path, "kd", 0, 0.6, "aaaa")
    fake_record(tmp_path, "kd", 1, 0.9, "bbbb", data_fp="d1")
    fake_record(tmp_path, "kd", 2, 0.3, None, data_fp="d9")  # no fingerprint, fold data matches neither
    summary = summarise(collect(tmp_path))
    assert sorted(set(summary.data)) == ["aaaa", "bbbb", DATA_UNKNOWN]


# --- the other file-read tasks list what they read ------------------------------------------------------------

def test_affwild2_lists_annotations_features_and_wavs_and_notices_a_replaced_wav(tmp_path):
    from _task_trees import task_cfg

    from harness.registry import TASKS
    tree = copy_tree(shared_tree("affwild2"), tmp_path / "aw")
    make = lambda: TASKS.get("affwild2")(task_cfg("affwild2", tree, tmp_path / "c"))  # noqa: E731
    names = [name for name, _, _ in make().source_signature]
    n_tracks = len(list(tree.rglob("Train_Set/*.txt"))) + len(list(tree.rglob("Validation_Set/*.txt")))
    assert sum(n.endswith(".txt") for n in names) == n_tracks and sum(n.endswith(".npy") for n in names) == n_tracks
    assert sorted(n for n in names if n.endswith(".wav")) == sorted(f"audio/{p.name}" for p in tree.glob("audio/*.wav"))
    before = make().source_fingerprint()
    assert make().source_fingerprint() == before  # listing twice changes nothing
    wav = min(tree.glob("audio/*.wav"))
    wav.write_bytes(wav.read_bytes()[:-2])  # re-extracted audio, 2 bytes shorter
    assert make().source_fingerprint() != before


def test_mmsa_tasks_list_their_pickle(tmp_path):
    from harness.registry import TASKS
    cfg = compose_one(["task=iemocap", "task.source=mimic", "task.mimic.n_train=24", "task.mimic.n_valid=12",
                       "task.mimic.n_test=16", f"cache_dir={tmp_path}"])
    task = TASKS.get("iemocap")(cfg.task)
    assert task.source_files() == [task.data_file()]
    assert [name for name, _, _ in task.source_signature] == [task.data_file().name]


def test_leaderboard_says_when_runs_of_a_generated_task_saw_different_data(tmp_path):
    """synthetic has no files: two runs of one task config, fold and seed with different data_fingerprint (the
    generator changed between them) are said under the section, and are an error with --strict."""
    def rec(method, data_fp):
        r = {"run_key": f"f0-s0-{method}", "method": method, "task": "synthetic", "task_variant": "regression",
             "fold": 0, "seed": 0, "status": "ok", "primary_metric": "ccc_mean", "data_source": "synthetic",
             "overrides": [], "metrics": {"ccc_mean": 0.5}, "data_fingerprint": data_fp,
             "config": {"task": {"name": "synthetic", "n_subjects": 10}, "method": {"name": method}, "seed": 0,
                        "fold": 0}}
        (tmp_path / "synthetic" / method / r["run_key"]).mkdir(parents=True, exist_ok=True)
        (tmp_path / "synthetic" / method / r["run_key"] / "record.json").write_text(json.dumps(r))
    rec("student", "d-new")
    rec("kd", "d-old")
    text, _ = write_leaderboard(tmp_path, tmp_path / "lb.md", None)
    assert "Runs that should have seen the same data did not" in text
    assert "fold 0, seed 0: data fingerprints d-new (student); d-old (kd)" in text
    with pytest.raises(LeaderboardError, match="runs of one config, fold and seed saw different data"):
        write_leaderboard(tmp_path, tmp_path / "lb.md", None, strict=True)
    (tmp_path / "synthetic" / "kd" / "f0-s0-kd" / "record.json").unlink()  # negative: one fingerprint, nothing said
    rec("kd", "d-new")
    text, _ = write_leaderboard(tmp_path, tmp_path / "lb.md", None, strict=True)
    assert "should have seen the same data" not in text
