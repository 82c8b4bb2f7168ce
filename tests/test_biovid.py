"""BioVid task: the mimic tree's format, loading, physio features against scipy, protocols, cache, bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from _task_trees import copy_tree, shared_tree, task_cfg
from scipy.signal import spectrogram

from harness.task import TaskError
from tasks.biovid import BioVid, frame_centres, physio_features


@pytest.fixture(scope="module")
def tree():
    return shared_tree("biovid")


@pytest.fixture()
def copy(tree, tmp_path):
    return copy_tree(tree, tmp_path / "PartA")


def make(root, tmp_path, *overrides) -> BioVid:
    return BioVid(task_cfg("biovid", root, tmp_path / "cache", *overrides))


def first_bio(root):
    return sorted((root / "biosignals_filtered").glob("*/*-BL1-*_bio.csv"))[0]


# --- format -----------------------------------------------------------------------------------------

def test_mimic_tree_has_the_real_format(tree):
    index = pd.read_csv(tree / "samples.csv", sep="\t")
    assert list(index.columns) == ["subject_id", "subject_name", "class_id", "class_name", "sample_id", "sample_name"]
    assert len(index) == 6 * 5 * 2 and set(index.class_name) == {"BL1", "PA1", "PA2", "PA3", "PA4"}
    row = index.iloc[0]
    assert row.sample_name.startswith(row.subject_name + "-" + row.class_name + "-")
    bio = pd.read_csv(tree / "biosignals_raw" / row.subject_name / f"{row.sample_name}_bio.csv", sep="\t")
    assert list(bio.columns) == ["time", "gsr", "ecg", "emg_trapezius"]
    assert bio.time.dtype == np.int64 and bio.time.iloc[1] == 1953  # microseconds at 512 Hz
    assert abs(bio.time.iloc[-1] / 1e6 - 5.5) < 0.01
    assert np.load(tree / "features" / "visual" / row.subject_name / f"{row.sample_name}.npy").shape == (40, 8)
    assert (tree / "MIMIC_DATA.txt").is_file()


def test_part_b_mimic_adds_facial_emg_and_physio_uses_every_emg_column(tmp_path):
    root = BioVid.write_mimic(tmp_path / "PartB", task_cfg("biovid", None, tmp_path / "c", "task.mimic.n_subjects=2",
                                                                "task.mimic.samples_per_class=1", "task.mimic.part=B"))
    assert list(pd.read_csv(first_bio(root), sep="\t").columns) == [
        "time", "gsr", "ecg", "emg_trapezius", "emg_corrugator", "emg_zygomaticus"]
    d = make(root, tmp_path, "task.n_folds=2")._dataset
    assert d["facts"]["physio"]["emg_channels"] == ["emg_corrugator", "emg_trapezius", "emg_zygomaticus"]
    assert d["physio"].shape[2] == 3 * 65 + 2 + 1


# --- loading and protocols --------------------------------------------------------------------------

def test_group5_folds_are_subject_disjoint_and_cover_every_subject_once(tree, tmp_path):
    task = make(tree, tmp_path)
    assert task.data_source == "mimic" and task.n_folds == 5
    seen = []
    for fold in range(task.n_folds):
        fd = task.load_fold(fold)
        tr, va, te = (set(s.groups) for s in (fd.train, fd.val, fd.test))
        assert not (tr & te) and not (va & te) and not (tr & va)
        assert fd.info["split_audit"]["leaks"] == []
        seen += sorted(te)
        for split in (fd.train, fd.val, fd.test):  # binary: BL1 -> 0, PA4 -> 1, nothing else
            names = pd.Series(split.ids).str.split("-").str[1]
            assert set(names) <= {"BL1", "PA4"}
            assert np.array_equal(split.targets[:, 0], (names == "PA4").to_numpy().astype(int))
    assert sorted(seen) == sorted(set(pd.read_csv(tree / "samples.csv", sep="\t").subject_name))
    spec = task.spec
    assert spec.modalities == {"visual": 8, "physio": 65 + 3} and spec.student_modalities == ("visual",)
    assert spec.metrics[0] == "accuracy"


def test_multiclass_and_loso(tree, tmp_path):
    task = make(tree, tmp_path, "task.labels=multiclass", "task.protocol=loso")
    assert task.n_folds == 6
    fd = task.load_fold(2)
    assert len(set(fd.test.groups)) == 1 and fd.info["test_subject"] == task._subjects[2]
    assert sorted(np.unique(fd.test.targets)) == [0, 1, 2, 3, 4] and len(fd.test) == 10
    assert task.spec.target.n_classes == 5


def test_standardize_uses_training_statistics_only(tree, tmp_path):
    fd = make(tree, tmp_path).load_fold(0)
    x = fd.train.inputs["physio"].reshape(-1, fd.train.inputs["physio"].shape[2])  # physio has no padding here
    assert np.allclose(x.mean(0), 0, atol=1e-4) and np.allclose(x.std(0), 1, atol=1e-3)
    raw = make(tree, tmp_path, "task.standardize=false").load_fold(0)
    flat = raw.train.inputs["physio"].reshape(-1, x.shape[1]).astype(np.float64)
    mean, std = flat.mean(0), flat.std(0)
    expect = (raw.test.inputs["physio"] - mean) / std
    assert np.allclose(fd.test.inputs["physio"], expect, atol=1e-3)


# --- physio features against scipy ------------------------------------------------------------------

def test_emg_spectrogram_equals_scipy_on_the_pkdot_window(tree):
    path = first_bio(tree)
    bio = pd.read_csv(path, sep="\t")
    cfg = task_cfg("biovid", tree, tree.parent / "c").physio
    feats, facts = physio_features(bio.time.to_numpy(), {c: bio[c].to_numpy() for c in ("gsr", "ecg", "emg_trapezius")},
                                   ["emg_trapezius"], cfg, str(path))
    fs = 1e6 / 1953  # the time column's step
    keep = (bio.time >= 2_000_000) & (bio.time <= 5_000_000)
    _, t, S = spectrogram(bio.emg_trapezius[keep].to_numpy(), fs=fs, nperseg=16, noverlap=4, nfft=128)
    assert S.shape == (65, 127) and feats.shape == (127, 65 + 3)
    assert facts["fs"] == pytest.approx(fs)
    assert np.allclose(feats[:, :65], 10 * np.log10(S.T + 1e-20))
    assert np.allclose(frame_centres(int(keep.sum()), fs, 16, 4), t)
    # PKDOT's fs=1000 only rescales the PSD density, by fs_true / 1000 (compared without the dB floor)
    signals = {c: bio[c].to_numpy() for c in ("gsr", "ecg", "emg_trapezius")}
    linear, linear1000 = (physio_features(bio.time.to_numpy(), signals, ["emg_trapezius"],
                                          task_cfg("biovid", tree, tree.parent / "c", "task.physio.log_power=false",
                                                   *extra).physio)[0] for extra in ([], ["task.physio.fs=1000"]))
    assert np.allclose(linear[:, :65], S.T) and np.allclose(linear1000[:, :65], S.T * fs / 1000)


def test_heart_rate_and_eda_features_on_known_signals(tree):
    fs = 512
    t_us = np.round(np.arange(2817) * 1e6 / fs).astype(np.int64)
    t = t_us / 1e6
    ecg = sum(np.exp(-0.5 * ((t - b) / 0.008) ** 2) for b in np.arange(0.3, 5.5, 0.8))  # one beat every 0.8 s
    gsr = 2.0 + 0.5 * t  # a ramp: level 2 + 0.5 t, slope 0.5 µS/s
    cfg = task_cfg("biovid", tree, tree.parent / "c", "task.physio.emg_channels=[]").physio
    feats, facts = physio_features(t_us, {"gsr": gsr, "ecg": ecg}, [], cfg)
    centres = 2.0 + frame_centres(int(((t_us >= 2e6) & (t_us <= 5e6)).sum()), 1e6 / 1953, 16, 4)
    assert feats.shape == (127, 3) and facts["no_beats"] == 0
    assert np.allclose(feats[:, 0], 2.0 + 0.5 * centres, atol=2e-3)
    assert np.allclose(feats[:, 1], 0.5, atol=2e-3)
    assert np.allclose(feats[:, 2], 60 / 0.8, atol=0.2)  # 75 bpm


def test_nonfinite_signal_values_are_interpolated_and_counted(copy, tmp_path):
    path = first_bio(copy)
    bio = pd.read_csv(path, sep="\t")
    clean = bio.gsr.to_numpy().copy()
    bio.loc[100, "gsr"], bio.loc[101, "gsr"], bio.loc[2000, "emg_trapezius"] = np.nan, np.inf, -np.inf
    bio.to_csv(path, sep="\t", index=False)
    task = make(copy, tmp_path)
    with pytest.warns(UserWarning, match="cleaning steps"):
        fd = task.load_fold(0)
    assert fd.info["cleaning"]["counts"]["signal_nonfinite_values_interpolated"] == 3
    for split in (fd.train, fd.val, fd.test):
        assert np.isfinite(split.inputs["physio"]).all()
    from tasks.biovid import fill_nonfinite
    filled, n, _ = fill_nonfinite(bio.gsr.to_numpy())
    assert n == 2 and np.allclose(filled[100:102], np.interp([100, 101], [99, 102], [clean[99], clean[102]]))


def test_nonfinite_visual_features_are_zeroed_and_counted(copy, tmp_path):
    path = sorted((copy / "features" / "visual").glob("*/*-PA4-*.npy"))[0]
    x = np.load(path)
    x[0, 0], x[3, 2], x[5, 1] = np.nan, np.inf, -np.inf
    np.save(path, x)
    with pytest.warns(UserWarning, match="cleaning steps"):
        fd = make(copy, tmp_path, "task.standardize=false").load_fold(0)
    assert fd.info["cleaning"]["counts"]["visual_nonfinite_features_zeroed"] == 3
    split = next(s for s in (fd.train, fd.val, fd.test) if path.stem in s.ids)
    row = split.inputs["visual"][list(split.ids).index(path.stem)]
    assert row[0, 0] == 0 and row[3, 2] == 0 and row[5, 1] == 0 and np.isfinite(row).all()


# --- cache --------------------------------------------------------------------------------------------

def test_second_load_reads_the_feature_cache_and_config_changes_recompute(tree, tmp_path):
    first = make(tree, tmp_path)._dataset
    second = make(tree, tmp_path)._dataset
    assert first["facts"]["physio"]["cache_hit"] is False and second["facts"]["physio"]["cache_hit"] is True
    assert np.array_equal(first["physio"], second["physio"])
    other = make(tree, tmp_path, "task.physio.nfft=64")._dataset
    assert other["facts"]["physio"]["cache_hit"] is False and other["physio"].shape[2] == 33 + 3


# --- bad input ------------------------------------------------------------------------------------------

def test_no_data_is_one_clear_error_with_layout_and_mimic_hint(tmp_path):
    task = make(tmp_path / "nowhere", tmp_path, "task.source=real")
    with pytest.raises(TaskError) as e:
        task.load_fold(0)
    msg = str(e.value)
    assert "no data at task.data_root=" in msg and "samples.csv" in msg and "biosignals_filtered" in msg
    assert "task.source=mimic" in msg and "harness data mimic task=biovid out=DIR" in msg


def test_missing_biosignals_folder(copy, tmp_path):
    import shutil
    shutil.rmtree(copy / "biosignals_raw")
    with pytest.raises(TaskError, match="missing folder .*biosignals_raw.*task.signals"):
        make(copy, tmp_path, "task.signals=raw").load_fold(0)


def test_missing_sample_file_errors_or_is_dropped_and_counted(copy, tmp_path):
    path = first_bio(copy)
    path.unlink()
    with pytest.raises(TaskError, match=f"missing biosignal file .*{path.name}.*on_missing=drop"):
        make(copy, tmp_path).load_fold(0)
    with pytest.warns(UserWarning):
        fd = make(copy, tmp_path, "task.on_missing=drop").load_fold(0)
    assert fd.info["cleaning"]["counts"]["samples_dropped_missing_files"] == 1
    assert fd.info["index_rows"] == 6 * 2 * 2
    assert sum(len(s) for s in (fd.train, fd.val, fd.test)) == 6 * 2 * 2 - 1


def test_comma_separated_index_is_named_as_such(copy, tmp_path):
    index = pd.read_csv(copy / "samples.csv", sep="\t")
    index.to_csv(copy / "samples.csv", index=False)  # commas
    with pytest.raises(TaskError, match=r"samples.csv reads as ONE column .*comma-separated.*tab-separated"):
        make(copy, tmp_path).load_fold(0)


def test_comma_separated_signal_file_is_named_as_such(copy, tmp_path):
    path = first_bio(copy)
    pd.read_csv(path, sep="\t").to_csv(path, index=False)
    with pytest.raises(TaskError, match=rf"{path.name} reads as ONE column named 'time,gsr,ecg,emg_trapezius'"):
        make(copy, tmp_path).load_fold(0)


def test_missing_signal_column(copy, tmp_path):
    path = first_bio(copy)
    pd.read_csv(path, sep="\t").drop(columns=["ecg"]).to_csv(path, sep="\t", index=False)
    with pytest.raises(TaskError, match=rf"{path.name} lacks column\(s\) \['ecg'\]"):
        make(copy, tmp_path).load_fold(0)


def test_missing_index_column(copy, tmp_path):
    pd.read_csv(copy / "samples.csv", sep="\t").drop(columns=["class_id"]).to_csv(copy / "samples.csv", sep="\t", index=False)
    with pytest.raises(TaskError, match=r"samples.csv lacks column\(s\) \['class_id'\]"):
        make(copy, tmp_path).load_fold(0)


def test_class_id_out_of_range(copy, tmp_path):
    index = pd.read_csv(copy / "samples.csv", sep="\t")
    index.loc[3, "class_id"] = 7
    index.to_csv(copy / "samples.csv", sep="\t", index=False)
    with pytest.raises(TaskError, match=r"samples.csv: class_id out of range \(line 5: 7\).*0\.\.4"):
        make(copy, tmp_path).load_fold(0)


def test_class_id_that_contradicts_the_sample_name(copy, tmp_path):
    index = pd.read_csv(copy / "samples.csv", sep="\t")
    index.loc[0, ["class_id", "class_name"]] = [4, "PA4"]  # row 0 is a BL1 sample
    index.to_csv(copy / "samples.csv", sep="\t", index=False)
    with pytest.raises(TaskError, match=r"line 2: sample_name .*BL1.* does not match"):
        make(copy, tmp_path).load_fold(0)


def test_visual_features_of_another_width(copy, tmp_path):
    path = sorted((copy / "features" / "visual").glob("*/*-PA4-*.npy"))[-1]
    np.save(path, np.zeros((40, 5), np.float32))
    with pytest.raises(TaskError, match=rf"{path.name} has 5 feature dims, earlier samples have 8"):
        make(copy, tmp_path).load_fold(0)


def test_signal_shorter_than_the_analysis_window(copy, tmp_path):
    path = first_bio(copy)
    bio = pd.read_csv(path, sep="\t")
    bio[bio.time < 1_500_000].to_csv(path, sep="\t", index=False)
    with pytest.raises(TaskError, match=rf"{path.name}: the 'time' column spans 0.00-1.50 s.*window_s"):
        make(copy, tmp_path).load_fold(0)


def test_subjects_without_samples_are_left_out_and_counted(copy, tmp_path):
    index = pd.read_csv(copy / "samples.csv", sep="\t")
    lonely = index.subject_name.iloc[-1]
    index = index[~((index.subject_name == lonely) & index.class_name.isin(["BL1", "PA4"]))]
    index.to_csv(copy / "samples.csv", sep="\t", index=False)
    (copy / "biosignals_filtered" / "010101_m_30").mkdir()  # a subject folder with no rows in samples.csv
    task = make(copy, tmp_path, "task.protocol=loso")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fd = task.load_fold(0)
    assert fd.info["subjects_without_samples"] == sorted(["010101_m_30", lonely])
    assert fd.info["cleaning"]["counts"]["subjects_without_samples"] == 2
    assert task.n_folds == 5 and lonely not in task._subjects  # no empty LOSO fold


def test_too_few_subjects_for_the_folds(tree, tmp_path):
    with pytest.raises(TaskError, match="6 subjects have samples but task.n_folds=8"):
        make(tree, tmp_path, "task.n_folds=8").load_fold(0)


def test_bad_config_values_are_named(tree, tmp_path):
    with pytest.raises(TaskError, match="task.labels='three'"):
        make(tree, tmp_path, "task.labels=three")
    with pytest.raises(TaskError, match="task.source='cloud'"):
        make(tree, tmp_path, "task.source=cloud").load_fold(0)
