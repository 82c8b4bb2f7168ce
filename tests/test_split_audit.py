"""Split audit: counts by hand, and the leaks of MT-PKDOT-format fold files (shared subjects, repeated samples)."""

from __future__ import annotations

import warnings

import pandas as pd
import pytest
from _task_trees import TINY, one_torch_thread, shared_tree, task_cfg

from harness.config import compose_one
from harness.runner import execute
from harness.task import TaskError
from tasks._common import SplitLeakWarning, audit_split
from tasks.biovid import BioVid


def test_audit_counts_by_hand():
    splits = {"train": (["a", "b", "b", "c", "e"], ["s1", "s1", "s1", "s2", "s4"]),
              "val": (["e"], ["s4"]),
              "test": (["c", "d", "d", "d"], ["s2", "s3", "s3", "s3"])}
    with pytest.warns(SplitLeakWarning, match="1 repeated sample.s. in train; 2 repeated sample.s. in test"):
        info = audit_split(splits, "hand-made split", strict=False)
    assert info["duplicates"] == {"train": 1, "val": 0, "test": 2}
    assert info["shared_samples"] == {"train-val": 1, "train-test": 1, "val-test": 0}
    assert info["shared_subjects"] == {"train-val": 1, "train-test": 1, "val-test": 0}
    assert info["examples"]["shared_samples_train-test"] == ["c"]
    with pytest.raises(TaskError, match="1 subject.s. in both train and test.*strict_splits=false"):
        audit_split(splits, "hand-made split", strict=True)


def test_a_clean_split_passes_silently():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        info = audit_split({"train": (["a", "b"], ["s1", "s1"]), "test": (["c"], ["s2"])}, "clean", strict=False)
    assert info["leaks"] == [] and info["shared_samples"] == {"train-test": 0}


# --- MT-PKDOT fold files ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tree():
    return shared_tree("biovid")


@pytest.fixture(scope="module")
def fold_files(tree):
    """fold_1_{train,test}.txt split over LINES (as MT-PKDOT's StratifiedKFold did): subjects on both sides,
    plus one test line written twice and one sample in both train and test."""
    index = pd.read_csv(tree / "samples.csv", sep="\t")
    index = index[index.class_name.isin(["BL1", "PA4"])].reset_index(drop=True)
    lines = [f"{4 if r.class_name == 'PA4' else 0}/{r.sample_name} 50 70 {int(r.class_name == 'PA4')}"
             for r in index.itertuples()]
    assert all(len(line) == 29 for line in lines)  # the public files' exact line width
    test = lines[::3]
    train = [line for i, line in enumerate(lines) if i % 3]
    test = test + [test[0]]  # a repeated test line
    train = train + [test[1]]  # a test sample also in train
    folder = tree.parent / "folds"
    folder.mkdir()
    (folder / "fold_1_train.txt").write_text("\n".join(train) + "\n")
    (folder / "fold_1_test.txt").write_text("\n".join(test) + "\n")
    return folder, train, test


def subjects(lines):
    return {line.split("/")[1].split("-")[0] for line in lines}


def test_mt_pkdot_fold_files_are_loaded_verbatim_and_their_leaks_reported(tree, fold_files, tmp_path):
    folder, train_lines, test_lines = fold_files
    task = BioVid(task_cfg("biovid", tree, tmp_path / "c", "task.protocol=folds_file", f"task.folds_dir={folder}"))
    assert task.n_folds == 1
    with pytest.warns(SplitLeakWarning, match=r"1 repeated sample\(s\) in test") as caught:
        fd = task.load_fold(0)
    message = str(next(w.message for w in caught if w.category is SplitLeakWarning))
    assert "not subject-independent" in message and "strict_splits=true" in message
    assert len(fd.test) == len(test_lines) and len(fd.train) + len(fd.val) == len(train_lines)
    audit = fd.info["split_audit"]
    assert audit["duplicates"]["test"] == 1
    assert audit["shared_samples"]["train-test"] + audit["shared_samples"]["val-test"] == 1
    expected_shared = len(subjects(train_lines) & subjects(test_lines))
    assert expected_shared > 0
    got = set(fd.train.groups) & set(fd.test.groups) | set(fd.val.groups) & set(fd.test.groups)
    assert len(got) == expected_shared
    assert audit["shared_subjects"]["train-test"] == len(set(fd.train.groups) & set(fd.test.groups))
    assert fd.info["frame_ranges_in_file"] == [(50, 70)]


def test_strict_splits_turns_the_leaks_into_an_error(tree, fold_files, tmp_path):
    folder, _, _ = fold_files
    task = BioVid(task_cfg("biovid", tree, tmp_path / "c", "task.protocol=folds_file", f"task.folds_dir={folder}",
                           "task.strict_splits=true"))
    with pytest.raises(TaskError, match=r"split audit of biovid fold 0 \(protocol=folds_file\): 1 repeated sample"):
        task.load_fold(0)


def test_dedupe_removes_repeats_but_not_the_shared_subjects(tree, fold_files, tmp_path):
    folder, train_lines, test_lines = fold_files
    task = BioVid(task_cfg("biovid", tree, tmp_path / "c", "task.protocol=folds_file", f"task.folds_dir={folder}",
                           "task.dedupe_folds=true"))
    with pytest.warns(SplitLeakWarning, match="subject.s. in both"):
        fd = task.load_fold(0)
    audit = fd.info["split_audit"]
    assert audit["duplicates"] == {"train": 0, "val": 0, "test": 0}
    assert sum(audit["shared_samples"].values()) == 0
    assert len(fd.test) == len(set(test_lines)) and len(fd.train) + len(fd.val) == len(set(train_lines) - set(test_lines))


def test_the_audit_reaches_the_run_record(tree, fold_files, tmp_path):
    folder, _, _ = fold_files
    cfg = compose_one(["method=student", "task=biovid", *TINY["biovid"], f"task.data_root={tree}",
                       "task.protocol=folds_file", f"task.folds_dir={folder}", f"cache_dir={tmp_path / 'c'}",
                       f"results_dir={tmp_path / 'r'}", "train.max_epochs=1", "model.hidden=8", "progress=false"])
    with warnings.catch_warnings(), one_torch_thread():
        warnings.simplefilter("ignore")
        record = execute(cfg, raise_errors=True)
    assert record["data_info"]["split_audit"]["duplicates"]["test"] == 1
    assert record["data_info"]["split_audit"]["leaks"]


@pytest.mark.parametrize("line, error", [
    ("4/071009_w_60-PA4-001 50 70", "is not '<class_dir>/<sample_name> <start> <end> <label>'"),
    ("0/999999_w_99-BL1-081 50 70 0", "sample 999999_w_99-BL1-081 is not among the loaded samples"),
])
def test_bad_fold_lines_name_the_file_and_line(tree, fold_files, tmp_path, line, error):
    _, train_lines, test_lines = fold_files
    bad = tmp_path / "folds"
    bad.mkdir()
    (bad / "fold_1_train.txt").write_text("\n".join(train_lines) + "\n")
    (bad / "fold_1_test.txt").write_text("\n".join(test_lines[:3] + [line]) + "\n")
    task = BioVid(task_cfg("biovid", tree, tmp_path / "c", "task.protocol=folds_file", f"task.folds_dir={bad}"))
    with pytest.raises(TaskError, match=rf"fold_1_test.txt line 4: .*{error}".replace("(", r"\(").replace(")", r"\)")):
        task.load_fold(0)


def test_a_label_that_contradicts_the_class_dir(tree, fold_files, tmp_path):
    _, train_lines, test_lines = fold_files
    bad = tmp_path / "folds"
    bad.mkdir()
    (bad / "fold_1_train.txt").write_text("\n".join(train_lines) + "\n")
    pa4 = next(line for line in test_lines if line.startswith("4/"))
    (bad / "fold_1_test.txt").write_text(pa4[:-1] + "7\n")
    task = BioVid(task_cfg("biovid", tree, tmp_path / "c", "task.protocol=folds_file", f"task.folds_dir={bad}"))
    with pytest.raises(TaskError, match=r"fold_1_test.txt line 1: class_dir 4 / label 7 .*labels out of range"):
        task.load_fold(0)
