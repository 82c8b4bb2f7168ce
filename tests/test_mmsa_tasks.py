"""mosi / mosei / iemocap: loaders on mimic trees, config errors, data-source labels, end-to-end runs."""

import pickle
import shutil

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from harness.config import compose_one
from harness.registry import TASKS
from harness.runner import execute
from harness.task import TaskError
from tasks._mmsa import MIMIC_MARKER_FILE, MIMIC_MARKER_KEY

SMALL = ["task.mimic.n_train=24", "task.mimic.n_valid=12", "task.mimic.n_test=16"]
FILES = {("mosi", True): "MOSI/Processed/aligned_50.pkl", ("mosi", False): "MOSI/Processed/unaligned_50.pkl",
         ("mosei", True): "MOSEI/Processed/aligned_50.pkl", ("mosei", False): "MOSEI/Processed/unaligned_50.pkl",
         ("iemocap", True): "iemocap_data.pkl", ("iemocap", False): "iemocap_data_noalign.pkl"}
EMOTIONS = ("neutral", "happy", "sad", "angry")


def task_for(name, *overrides):
    cfg = compose_one([f"task={name}", *SMALL, *overrides])
    return TASKS.get(name)(cfg.task)


@pytest.fixture(scope="module")
def mimic(tmp_path_factory):
    """A small mimic tree per task, written as `harness data mimic` writes it."""
    roots = {}
    for name in ("mosi", "mosei", "iemocap"):
        cfg = compose_one([f"task={name}", *SMALL])
        roots[name] = TASKS.get(name).write_mimic(tmp_path_factory.mktemp(name), cfg.task)
    return roots


def raw(root, name, aligned):
    with open(root / FILES[(name, aligned)], "rb") as f:
        return pickle.load(f)  # our own mimic file: the plain unpickler is the independent reference


def test_missing_files_error_says_where_they_go_and_how_to_try_the_mimic(tmp_path):
    for (name, aligned), rel in FILES.items():
        task = task_for(name, f"task.data_root={tmp_path}", f"task.aligned={aligned}")
        with pytest.raises(TaskError) as err:
            task.load_fold(0)
        msg = str(err.value)
        assert f"{tmp_path}/{rel}" in msg
        assert "task.source=mimic" in msg and f"harness data mimic task={name} out=DIR" in msg


@pytest.mark.parametrize("name", ["mosi", "mosei"])
@pytest.mark.parametrize("aligned", [True, False])
def test_mmsa_loader_reads_keys_shapes_lengths_and_cleans_with_counts(mimic, name, aligned):
    task = task_for(name, f"task.data_root={mimic[name]}", f"task.aligned={aligned}", "task.feature_cache=false")
    fold = task.load_fold(0)
    data = raw(mimic[name], name, aligned)
    assert task.data_source == "mimic"
    assert task.spec.modalities == {m: data["train"][m].shape[-1] for m in ("text", "audio", "vision")}
    for field, key in (("train", "train"), ("val", "valid"), ("test", "test")):
        split, d, info = getattr(fold, field), data[key], fold.info[key]
        for m in ("text", "audio", "vision"):
            with np.errstate(over="ignore"):
                cast = d[m].astype(np.float32)
            np.testing.assert_array_equal(split.inputs[m], np.nan_to_num(cast, nan=0, posinf=0, neginf=0))
            assert info["cleaned"][m] == {"nan": np.isnan(cast).sum(), "posinf": np.isposinf(cast).sum(),
                                          "neginf": np.isneginf(cast).sum(),
                                          "overflow": (np.isinf(cast) & np.isfinite(d[m])).sum()}
        if aligned:
            assert set(split.lengths) == {"text"}
        else:
            np.testing.assert_array_equal(split.lengths["audio"], d["audio_lengths"])
            np.testing.assert_array_equal(split.lengths["vision"], d["vision_lengths"])
            assert info["lengths"]["audio"]["nonzero_after_length"] == 0
        np.testing.assert_array_equal(split.lengths["text"], d["text_bert"][:, 1].sum(1))
        np.testing.assert_array_equal(split.targets[:, 0], np.clip(d["regression_labels"], -3, 3))
        assert info["labels_clipped"] == (np.abs(d["regression_labels"]) > 3).sum()
        assert list(split.ids) == list(d["id"]) and list(split.groups) == [i.split("$_$")[0] for i in d["id"]]
    # what the mimic plants, as the real files have it: -inf and a NaN in audio; MOSEI overflow and labels > 3
    train = fold.info["train"]["cleaned"]["audio"]
    assert train["nan"] == 1 and train["neginf"] >= 1
    assert (train["overflow"], fold.info["train"]["labels_clipped"]) == ((2, 1) if name == "mosei" else (0, 0))
    assert fold.info["groups_in_train_and_test"] == 0 and fold.info["duplicate_ids"] == 0


@pytest.mark.parametrize("aligned", [True, False])
def test_iemocap_loader_gives_four_binary_heads(mimic, aligned):
    task = task_for("iemocap", f"task.data_root={mimic['iemocap']}", f"task.aligned={aligned}",
                    "task.feature_cache=false")
    fold = task.load_fold(0)
    data = raw(mimic["iemocap"], "iemocap", aligned)
    assert task.spec.target.dims == EMOTIONS and task.spec.target.n_classes == 2
    for field, key in (("train", "train"), ("val", "valid"), ("test", "test")):
        split, d = getattr(fold, field), data[key]
        np.testing.assert_array_equal(split.targets, d["labels"].argmax(-1))
        assert split.targets.shape == (len(d["labels"]), 4) and split.lengths == {}
        assert split.ids[0] == "$_$".join(v.decode() for v in d["id"][0])
        assert split.groups[0] == d["id"][0][0].decode().rsplit("_", 1)[0]  # the dialog
        assert {m: split.inputs[m].shape for m in split.inputs} == {m: d[m].shape for m in ("text", "audio", "vision")}
        assert fold.info[key]["samples_without_exactly_one_emotion"] == 0
    assert fold.info["train"]["cleaned"]["audio"]["nan"] == 1


def test_python2_mult_pickle_loads_through_the_iemocap_task(tmp_path):
    from test_mmsa_pickle import py2_dumps

    rng = np.random.default_rng(0)
    splits = {}
    for key, n in (("train", 8), ("valid", 4), ("test", 4)):
        labels = np.zeros((n, 4, 2), np.float32)
        labels[:, :, 0] = 1
        labels[np.arange(n), np.arange(n) % 4] = [0, 1]
        splits[key] = {"text": rng.standard_normal((n, 5, 6)).astype(np.float32),
                       "audio": rng.standard_normal((n, 7, 3)), "vision": rng.standard_normal((n, 5, 2)),
                       "labels": labels, "id": np.array([f"Ses01F_impro01_F{i:03d}".encode() for i in range(n)])}
    (tmp_path / "iemocap_data.pkl").write_bytes(py2_dumps(splits))
    task = task_for("iemocap", f"task.data_root={tmp_path}", "task.feature_cache=false")
    fold = task.load_fold(0)
    assert task.data_source == "real"  # no marker anywhere
    np.testing.assert_array_equal(fold.train.targets, splits["train"]["labels"].argmax(-1))
    np.testing.assert_allclose(fold.train.inputs["audio"], splits["train"]["audio"].astype(np.float32))
    assert task.spec.modalities == {"text": 6, "audio": 3, "vision": 2}
    assert fold.train.ids[1] == "Ses01F_impro01_F001" and fold.train.groups[1] == "Ses01F_impro01"


def test_data_source_is_mimic_whenever_a_mimic_tree_is_read(mimic, tmp_path):
    assert task_for("mosi", f"task.data_root={mimic['mosi']}").data_source == "mimic"  # marker file beside it
    # a mimic pickle copied without its MIMIC_DATA.txt is still recognised once read (the key inside)
    bare = tmp_path / "bare"
    (bare / "MOSI/Processed").mkdir(parents=True)
    shutil.copy(mimic["mosi"] / FILES[("mosi", True)], bare / FILES[("mosi", True)])
    task = task_for("mosi", f"task.data_root={bare}", "task.feature_cache=false")
    task.load_fold(0)
    assert task.data_source == "mimic" and task.load_fold(0).info["mimic_marker"]
    # without either marker the file counts as real
    data = raw(mimic["mosi"], "mosi", True)
    del data[MIMIC_MARKER_KEY]
    with open(bare / FILES[("mosi", True)], "wb") as f:
        pickle.dump(data, f)
    task = task_for("mosi", f"task.data_root={bare}", "task.feature_cache=false")
    task.load_fold(0)
    assert task.data_source == "real"
    assert not (bare / "MOSI/Processed" / MIMIC_MARKER_FILE).exists()


def test_source_mimic_writes_into_the_cache_once(tmp_path):
    task = task_for("mosei", "task.source=mimic", f"cache_dir={tmp_path}")
    path = task.data_file()
    assert path.is_relative_to(tmp_path / "mimic" / "mosei") and path.name == "aligned_50.pkl"
    stamp = path.stat().st_mtime_ns
    again = task_for("mosei", "task.source=mimic", f"cache_dir={tmp_path}", "task.aligned=false")
    assert again.data_file().parent == path.parent and path.stat().st_mtime_ns == stamp
    assert again.data_source == "mimic"


def test_feature_cache_returns_the_same_fold(mimic, tmp_path):
    common = [f"task.data_root={mimic['mosei']}", "task.aligned=false", f"task.feature_cache_dir={tmp_path}"]
    direct = task_for("mosei", *common, "task.feature_cache=false").load_fold(0)
    first = task_for("mosei", *common).load_fold(0)
    cached = task_for("mosei", *common)
    hit = cached.load_fold(0)
    assert cached.data_source == "mimic" and any((tmp_path / "features").iterdir())
    for fold in (first, hit):
        assert fold.info == direct.info
        for field in ("train", "val", "test"):
            a, b = getattr(direct, field), getattr(fold, field)
            assert list(a.ids) == list(b.ids) and list(a.groups) == list(b.groups)
            np.testing.assert_array_equal(a.targets, b.targets)
            assert a.targets.dtype == b.targets.dtype
            for m in a.inputs:
                np.testing.assert_array_equal(a.inputs[m], b.inputs[m])
            assert {k: v.tolist() for k, v in a.lengths.items()} == {k: v.tolist() for k, v in b.lengths.items()}


def test_protocols_set_the_student_and_the_privileged_modalities(mimic):
    root = f"task.data_root={mimic['mosi']}"
    full = task_for("mosi", root, "task.protocol=full").spec
    assert full.student_modalities == ("text", "audio", "vision") and full.privileged_modalities == ()
    default = task_for("mosi", root).spec
    assert default.student_modalities == ("audio", "vision") and default.privileged_modalities == ("text",)
    assert default.metrics[0] == "non0_acc2"
    text_student = task_for("iemocap", f"task.data_root={mimic['iemocap']}", "task.student_modalities=[text]").spec
    assert text_student.privileged_modalities == ("audio", "vision")
    task = task_for("mosei", root, "task.protocol=full", "task.aligned=false")
    assert "protocol=full" in task.variant() and "seeds vary init only" in task.variant()


@pytest.mark.parametrize("override, fragment", [
    ("task.protocol=both", "task.protocol"), ("task.source=web", "task.source"),
    ("task.student_modalities=[]", "student_modalities"), ("task.student_modalities=[face]", "student_modalities"),
    ("task.student_modalities=[text,audio,vision]", "protocol=full"), ("task.primary_metric=acc2", "primary_metric")])
def test_bad_config_is_one_clear_error(override, fragment):
    with pytest.raises(TaskError, match=fragment.replace("[", r"\[")):
        task_for("mosi", override)


def test_damaged_files_name_the_file_and_the_field(mimic, tmp_path):
    data = raw(mimic["mosi"], "mosi", True)
    (tmp_path / "MOSI/Processed").mkdir(parents=True)
    path = tmp_path / FILES[("mosi", True)]
    for damage, fragment in ((lambda d: d["valid"].pop("vision"), "'vision'"),
                             (lambda d: d["test"]["regression_labels"].__setitem__(3, np.nan), "non-finite labels")):
        broken = pickle.loads(pickle.dumps(data))
        damage(broken)
        path.write_bytes(pickle.dumps(broken))
        with pytest.raises(TaskError, match=fragment) as err:
            task_for("mosi", f"task.data_root={tmp_path}", "task.feature_cache=false").load_fold(0)
        assert str(path) in str(err.value)
    data = raw(mimic["iemocap"], "iemocap", True)
    data["train"]["labels"] = data["train"]["labels"][:, :3]
    (tmp_path / "iemocap_data.pkl").write_bytes(pickle.dumps(data))
    with pytest.raises(TaskError, match=r"expected \[N, 4, 2\]"):
        task_for("iemocap", f"task.data_root={tmp_path}", "task.feature_cache=false").load_fold(0)


def test_published_numbers_use_the_tasks_metric_names_and_cite():
    for name in ("mosi", "mosei", "iemocap"):
        cls = TASKS.get(name)
        assert cls.published
        for ref in cls.published:
            assert ref["citation"] and "note" in ref and ref["setting"]
            if name != "iemocap":
                assert set(ref["metrics"]) <= set(cls.metric_choices), ref
                assert all(0 < v < 1 for k, v in ref["metrics"].items() if k != "mae")  # fractions, not percent


# --- end to end: kd (teacher + student) on mimic files, record metrics == an independent re-scoring ---------

def run(tmp_path, task, *overrides):
    cfg = compose_one(["method=kd", f"task={task}", "task.source=mimic", *SMALL, "train.max_epochs=2",
                       "model.hidden=16", "model.layers=1", f"results_dir={tmp_path}/results",
                       f"cache_dir={tmp_path}/cache", "progress=false", *overrides])
    rec = execute(cfg, raise_errors=True)
    assert rec["status"] == "ok" and rec["data_source"] == "mimic"
    folder = tmp_path / "results" / task / "kd"
    preds = pd.read_csv(next(folder.glob("*/predictions.csv")))
    return rec, preds


def mmsa_rescore(y, p):
    keep = y != 0
    return {"non0_acc2": accuracy_score(y[keep] > 0, p[keep] > 0),
            "non0_f1": f1_score(y[keep] > 0, p[keep] > 0, average="weighted"),
            "has0_acc2": accuracy_score(y >= 0, p >= 0), "has0_f1": f1_score(y >= 0, p >= 0, average="weighted"),
            "acc5": np.mean(np.round(np.clip(p, -2, 2)) == np.round(np.clip(y, -2, 2))),
            "acc7": np.mean(np.round(np.clip(p, -3, 3)) == np.round(np.clip(y, -3, 3))),
            "mae": np.mean(np.abs(p - y)), "corr": np.corrcoef(p, y)[0, 1]}


@pytest.mark.parametrize("task, overrides", [("mosi", ["task.protocol=full"]), ("mosei", ["task.aligned=false"])])
def test_kd_end_to_end_on_mmsa_mimic(tmp_path, task, overrides):
    rec, preds = run(tmp_path, task, *overrides)
    assert rec["privileged_modalities"] == ([] if "task.protocol=full" in overrides else ["text"])
    assert len(preds) == 16 and rec["n_samples"] == {"train": 24, "val": 12, "test": 16}
    expect = mmsa_rescore(preds["y_true_sentiment"].to_numpy(), preds["y_pred_sentiment"].to_numpy())
    assert list(rec["metrics"]) == list(expect)
    for k, v in expect.items():
        assert rec["metrics"][k] == pytest.approx(v, rel=1e-5, abs=1e-6), k


def test_kd_end_to_end_on_iemocap_mimic(tmp_path):
    rec, preds = run(tmp_path, "iemocap")
    truth = np.stack([preds[f"y_true_{e}"] for e in EMOTIONS], 1)
    prob = np.stack([preds[f"prob_{e}_1"] for e in EMOTIONS], 1)
    expect = {}
    for k, e in enumerate(EMOTIONS):
        pred = np.stack([preds[f"prob_{e}_0"], preds[f"prob_{e}_1"]], 1).argmax(1)
        expect[f"accuracy_{e}"] = accuracy_score(truth[:, k], pred)
        expect[f"f1_weighted_{e}"] = f1_score(truth[:, k], pred, average="weighted")
    expect["accuracy_mean"] = np.mean([expect[f"accuracy_{e}"] for e in EMOTIONS])
    expect["f1_weighted_mean"] = np.mean([expect[f"f1_weighted_{e}"] for e in EMOTIONS])
    expect["acc4"] = accuracy_score(truth.argmax(1), prob.argmax(1))  # every mimic sample has one emotion
    expect["uar4"] = balanced_accuracy_score(truth.argmax(1), prob.argmax(1))
    assert set(rec["metrics"]) == set(expect) and list(rec["metrics"])[0] == "f1_weighted_mean"
    for k, v in expect.items():
        assert rec["metrics"][k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
