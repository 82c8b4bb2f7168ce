"""Aff-Wild2 task: mimic format, per-frame windows, audio framing against librosa, fps, cache, bad input."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
import soundfile
from _task_trees import copy_tree, shared_tree, task_cfg

from harness.task import TaskError
from tasks.affwild2 import AffWild2, pool_to_frames, video_of, window_starts

VA = "ABAW Annotations/VA_Estimation_Challenge"


@pytest.fixture(scope="module")
def tree():
    return shared_tree("affwild2")


@pytest.fixture()
def copy(tree, tmp_path):
    return copy_tree(tree, tmp_path / "Aff-Wild2")


def make(root, tmp_path, *overrides) -> AffWild2:
    return AffWild2(task_cfg("affwild2", root, tmp_path / "cache", *overrides))


def load(root, tmp_path, *overrides):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        task = make(root, tmp_path, *overrides)
        return task, task.load_fold(0)


def annotation(root, set_name, track):
    return root / VA / set_name / f"{track}.txt"


# --- format -----------------------------------------------------------------------------------------

def test_mimic_tree_has_the_real_format(tree):
    train = sorted(p.stem for p in (tree / VA / "Train_Set").glob("*.txt"))
    assert any(t.endswith("_left") for t in train) and any(t.endswith("_right") for t in train)
    lines = annotation(tree, "Train_Set", train[0]).read_text().splitlines()
    assert lines[0] == "valence,arousal"
    values = np.array([[float(v) for v in line.split(",")] for line in lines[1:]])
    invalid = (values == -5).all(axis=1)
    assert np.abs(values[~invalid]).max() <= 1
    assert len(np.load(tree / "features" / "visual" / f"{train[0]}.npy")) == len(lines) - 1
    fps = pd.read_csv(tree / "video_fps.csv")
    assert list(fps.columns) == ["video", "fps"] and set(fps.fps) == {25.0, 30.0}
    left = next(t for t in train if t.endswith("_left"))
    n_left = len(annotation(tree, "Train_Set", left).read_text().splitlines()) - 1
    assert len(annotation(tree, "Train_Set", left.replace("_left", "_right")).read_text().splitlines()) - 1 == n_left
    wav = tree / "audio" / f"{video_of(left)}.wav"  # _left and _right share the video's audio
    info = soundfile.info(str(wav))
    rate = float(fps.set_index("video").fps[video_of(left)])
    assert info.samplerate == 16000 and info.duration == pytest.approx(n_left / rate, abs=1e-3)
    assert not (tree / "audio" / f"{left}.wav").exists()


def test_video_of_strips_the_person_suffix():
    assert video_of("10-60-1280x720_right") == "10-60-1280x720" and video_of("video69_left") == "video69"
    assert video_of("video69") == "video69" and video_of("left_video") == "left_video"


# --- windows and splits -----------------------------------------------------------------------------

def test_window_starts():
    assert window_starts(10, 4).tolist() == [0, 4, 8]  # evaluation: every frame once, last window padded
    assert window_starts(10, 4, 4).tolist() == [0, 4, 6]  # training: a last window ends at the last frame
    assert window_starts(10, 4, 2).tolist() == [0, 2, 4, 6]
    assert window_starts(3, 4, 4).tolist() == [0]


def test_test_windows_cover_every_valid_frame_of_the_official_validation_set_once(tree, tmp_path):
    task, fd = load(tree, tmp_path, "task.window=32")
    expected = set()
    for path in (tree / VA / "Validation_Set").glob("*.txt"):
        va = pd.read_csv(path)
        valid = ~(va == -5).any(axis=1).to_numpy()
        expected |= {f"{path.stem}:{k + 1}" for k in np.flatnonzero(valid)}
    m = fd.test.target_mask
    rows = np.char.add(np.char.add(np.repeat(fd.test.ids[:, None], m.shape[1], 1)[m], ":"),
                       fd.test.step_index[m].astype(str))
    assert len(rows) == len(set(rows)) and set(rows) == expected
    # the targets of those frames are the file's values
    path = next((tree / VA / "Validation_Set").glob("*.txt"))
    va = pd.read_csv(path).to_numpy()
    w = np.flatnonzero(fd.test.ids == path.stem)
    y = fd.test.targets[w].reshape(-1, 2)[fd.test.target_mask[w].reshape(-1)]
    assert np.allclose(y, va[~(va == -5).any(axis=1)], atol=1e-6)
    assert fd.test.inputs["visual"].shape[1] == 32 and task.spec.target.per_step


def test_validation_holds_out_whole_training_videos(tree, tmp_path):
    _, fd = load(tree, tmp_path)
    train_videos, val_videos = set(fd.train.groups), set(fd.val.groups)
    assert val_videos and not (train_videos & val_videos)
    assert not (set(fd.train.ids) & set(fd.test.ids))
    assert fd.info["split_audit"]["leaks"] == []
    left = [t for t in set(fd.train.ids) | set(fd.val.ids) if t.endswith("_left")]
    for t in left:  # both people of a video land on the same side
        side = fd.train if t in set(fd.train.ids) else fd.val
        assert t.replace("_left", "_right") in set(side.ids)


# --- audio ------------------------------------------------------------------------------------------

def test_pool_to_frames_by_hand():
    logmel = np.arange(2 * 10, dtype=float).reshape(2, 10)  # 10 mel frames at 0, 10, ..., 90 ms
    out, past = pool_to_frames(logmel, 0.01, 3, 25.0)  # video frames of 40 ms: mel frames 0-3, 4-7, 8-9
    assert past == 0
    assert np.allclose(out[:, 0], [1.5, 5.5, 8.5]) and np.allclose(out[:, 1], [11.5, 15.5, 18.5])
    out, past = pool_to_frames(logmel, 0.01, 5, 25.0)  # frames 3 and 4 lie past the audio: silence floor
    assert past == 2 and np.all(out[3:] == -100)
    # fps above the mel rate: mel frames 0, 1, 2 land in video frames 0, 1, 3; frame 2 gets none -> interpolated
    out, past = pool_to_frames(np.arange(4, dtype=float)[None], 0.01, 4, 150.0)
    assert past == 0 and np.allclose(out[:, 0], [0, 1, 1.5, 2])


def test_audio_features_equal_librosa_logmel_averaged_per_video_frame(tree, tmp_path):
    import librosa

    _, fd = load(tree, tmp_path, "task.standardize=false")
    track = fd.test.ids[0]
    video = video_of(track)
    fps = float(pd.read_csv(tree / "video_fps.csv").set_index("video").fps[video])
    y, sr = librosa.load(tree / "audio" / f"{video}.wav", sr=16000)
    mel = librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr=sr, n_fft=400, hop_length=160, win_length=400,
                                                             n_mels=40, fmin=0.0, fmax=None), ref=1.0, amin=1e-10,
                              top_db=None)
    got = fd.test.inputs["audio"][np.flatnonzero(fd.test.ids == track)].reshape(-1, 40)
    for frame in (0, 7, 50):  # mel frames whose centre j·10 ms lies in [k/fps, (k+1)/fps)
        js = [j for j in range(mel.shape[1]) if int(np.floor(j * 0.01 * fps)) == frame]
        assert len(js) >= 3
        assert np.allclose(got[frame], mel[:, js].mean(axis=1), atol=1e-3)
    assert fd.info["audio"]["fps_source"] == {"video_fps.csv": 7, "inferred_lines_over_wav_duration": 0}


def test_fps_is_inferred_from_the_wav_when_the_table_is_absent(copy, tmp_path):
    table = pd.read_csv(copy / "video_fps.csv").set_index("video").fps
    (copy / "video_fps.csv").unlink()
    task, fd = load(copy, tmp_path)
    assert fd.info["audio"]["fps_source"] == {"video_fps.csv": 0, "inferred_lines_over_wav_duration": 7}
    lines = {v: max(len(pd.read_csv(p)) for p in (copy / VA).glob("*/*.txt") if video_of(p.stem) == v)
             for v in table.index}
    fps, _ = task._fps(lines)
    assert all(abs(fps[v] - table[v]) < 0.01 for v in table.index)


def test_second_load_reads_the_audio_cache(tree, tmp_path):
    a = make(tree, tmp_path)._dataset
    b = make(tree, tmp_path)._dataset
    assert a["facts"]["audio"]["cache_hit"] is False and b["facts"]["audio"]["cache_hit"] is True
    ta, tb = a["sets"]["Train_Set"][0], b["sets"]["Train_Set"][0]
    assert np.array_equal(ta["audio"], tb["audio"])
    c = make(tree, tmp_path, "task.audio.n_mels=24")._dataset
    assert c["facts"]["audio"]["cache_hit"] is False and c["sets"]["Train_Set"][0]["audio"].shape[1] == 24


# --- bad input ----------------------------------------------------------------------------------------

def test_no_data_is_one_clear_error_with_layout_and_mimic_hint(tmp_path):
    with pytest.raises(TaskError) as e:
        make(tmp_path / "nothing", tmp_path).load_fold(0)
    msg = str(e.value)
    assert "no data at task.data_root=" in msg and "VA_Estimation_Challenge" in msg and "<video>.wav" in msg
    assert "task.source=mimic" in msg and "harness data mimic task=affwild2 out=DIR" in msg


def test_missing_set_folder(copy, tmp_path):
    shutil.rmtree(copy / VA / "Validation_Set")
    with pytest.raises(TaskError, match="missing folder .*Validation_Set"):
        load(copy, tmp_path)


def test_missing_visual_features(copy, tmp_path):
    path = sorted((copy / "features" / "visual").glob("*.npy"))[0]
    path.unlink()
    with pytest.raises(TaskError, match=rf"missing visual features .*{path.name}"):
        load(copy, tmp_path)


def test_missing_wav_names_the_file_and_the_extraction(copy, tmp_path):
    wav = sorted((copy / "audio").glob("*.wav"))[0]
    wav.unlink()
    with pytest.raises(TaskError, match=rf"missing audio .*{wav.name}.*ffmpeg"):
        load(copy, tmp_path)


def test_tab_separated_annotation_is_named_as_such(copy, tmp_path):
    path = sorted((copy / VA / "Train_Set").glob("*.txt"))[0]
    path.write_text(path.read_text().replace(",", "\t"))
    with pytest.raises(TaskError, match=rf"{path.name} reads as ONE column .*tab-separated.*comma-separated"):
        load(copy, tmp_path)


def test_annotation_missing_a_column(copy, tmp_path):
    path = sorted((copy / VA / "Train_Set").glob("*.txt"))[0]
    lines = path.read_text().splitlines()
    path.write_text("\n".join(["valence"] + [ln.split(",")[0] for ln in lines[1:]]) + "\n")
    with pytest.raises(TaskError, match=rf"{path.name} lacks column\(s\) \['arousal'\]"):
        load(copy, tmp_path)


def test_labels_out_of_range(copy, tmp_path):
    path = sorted((copy / VA / "Train_Set").glob("*.txt"))[0]
    lines = path.read_text().splitlines()
    lines[5] = "1.7,0.2"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(TaskError, match=rf"{path.name}: labels out of range on 1 line\(s\), first line 6"):
        load(copy, tmp_path)


def test_nonfinite_features_are_zeroed_and_counted(copy, tmp_path):
    path = sorted((copy / "features" / "visual").glob("*.npy"))[0]
    x = np.load(path)
    x[2, 1], x[4, 0] = np.nan, np.inf
    np.save(path, x)
    _, fd = load(copy, tmp_path)
    assert fd.info["cleaning"]["counts"]["visual_nonfinite_features_zeroed"] == 2
    assert all(np.isfinite(s.inputs["visual"]).all() for s in (fd.train, fd.val, fd.test))


def test_small_length_mismatch_is_trimmed_and_counted_large_is_an_error(copy, tmp_path):
    path = sorted((copy / "features" / "visual").glob("*.npy"))[0]
    x = np.load(path)
    np.save(path, x[:-3])
    _, fd = load(copy, tmp_path)
    counts = fd.info["cleaning"]["counts"]
    assert counts["tracks_length_trimmed"] == 1 and counts["frames_dropped_length_mismatch"] == 3
    np.save(path, x[:-30])
    with pytest.raises(TaskError, match=rf"{path.name} has {len(x) - 30} frames but .*{path.stem}.txt annotates "
                                        rf"{len(x)}.*max_length_mismatch=10"):
        load(copy, tmp_path)


def test_track_with_all_frames_invalid_is_left_out_and_counted(copy, tmp_path):
    path = sorted((copy / VA / "Train_Set").glob("*.txt"))[0]
    n = len(path.read_text().splitlines()) - 1
    path.write_text("valence,arousal\n" + "-5,-5\n" * n)
    _, fd = load(copy, tmp_path)
    assert fd.info["cleaning"]["counts"]["tracks_all_frames_invalid_left_out"] == 1
    assert path.stem not in set(fd.train.ids) | set(fd.val.ids)
    for p in (copy / VA / "Validation_Set").glob("*.txt"):
        p.write_text("valence,arousal\n-5,-5\n")
    with pytest.raises(TaskError, match="every track in .*Validation_Set has only invalid"):
        load(copy, tmp_path / "again")


def test_wav_much_shorter_than_the_annotation(copy, tmp_path):
    wav = sorted((copy / "audio").glob("*.wav"))[0]
    y, sr = soundfile.read(wav)
    soundfile.write(wav, y[: len(y) - sr * 2], sr)  # 2 s short: 50-60 frames at 25-30 fps
    with pytest.raises(TaskError, match=rf"{wav.name} ends \d+ video frames before the annotation ends"):
        load(copy, tmp_path)
    soundfile.write(wav, y[: len(y) - sr // 10], sr)  # 0.1 s short: up to 3 frames, silence-padded
    _, fd = load(copy, tmp_path / "b")
    assert 2 <= fd.info["cleaning"]["counts"]["audio_frames_past_wav_end_silence"] <= 3
