"""BioVid physiology features against known answers: generated ECG at a set heart rate, EDA with known parts.

The signals are BioVid-shaped (5.5 s at 512 Hz, features at the 127 frame centres of 2.0-5.0 s), like
benchmarks/compare_physio.py, which scores the detectors on many more of them.
"""

from __future__ import annotations

from functools import cache

import neurokit2 as nk
import numpy as np
import pytest
from _task_trees import task_cfg
from scipy.signal import find_peaks

from harness.task import TaskError
from tasks.biovid import frame_centres, heart_rate, physio_features


def _benchmark():
    """benchmarks/compare_physio.py, whose R-peak scoring the tests share (one matcher, not two)."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_physio.py"
    spec = importlib.util.spec_from_file_location("compare_physio", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


match_f1 = _benchmark().match_f1

FS = 512
N_ROWS = 2817
T_US = np.round(np.arange(N_ROWS) * 1e6 / FS).astype(np.int64)
T = T_US / 1e6
KEEP = (T_US >= 2_000_000) & (T_US <= 5_000_000)
CENTRES = T[KEEP][0] + frame_centres(int(KEEP.sum()), 1e6 / 1953, 16, 4)


@cache
def simulated_ecg(bpm: int) -> np.ndarray:
    """ecgsyn at exactly `bpm` (heart_rate_std=0), cut to one BioVid window after 0.7 s of lead-in."""
    x = nk.ecg_simulate(duration=8, sampling_rate=FS, heart_rate=bpm, heart_rate_std=0, noise=0, method="ecgsyn",
                        random_state=0)
    return np.asarray(x)[360:360 + N_ROWS]


def true_peak_times(clean: np.ndarray) -> np.ndarray:
    return T[find_peaks(clean, height=0.5 * clean.max(), distance=FS // 4)[0]]


def noisy(clean: np.ndarray, level: float, seed: int) -> np.ndarray:
    """White noise SD `level` + baseline wander 2·level at 0.3 Hz + 50 Hz hum level/2 (R amplitude ~1.2)."""
    rng = np.random.default_rng(seed)
    return (clean + level * rng.standard_normal(N_ROWS) + 2 * level * np.sin(2 * np.pi * 0.3 * T + 1.0)
            + level / 2 * np.sin(2 * np.pi * 50 * T))


def peak_f1(true_t: np.ndarray, found_t: np.ndarray, tolerance: float = 0.05, edge: float = 0.25) -> float:
    """One-to-one matches within `tolerance` s (closest pairs first); F1 without the first and last `edge` s,
    where a beat cut by the window's border is not always found: the benchmark's own scoring."""
    return match_f1(true_t, found_t, tolerance, edge, T[-1] - edge)


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    return task_cfg("biovid", None, tmp_path_factory.mktemp("cache"), "task.physio.emg_channels=[]").physio


def features(cfg, ecg: np.ndarray, gsr: np.ndarray | None = None, time_us: np.ndarray = T_US, source: str = "x_bio.csv"):
    gsr = np.full(len(time_us), 5.0) if gsr is None else gsr
    return physio_features(time_us, {"gsr": gsr, "ecg": ecg}, [], cfg, source)


# --- ECG: heart rate and R peaks ------------------------------------------------------------------------

@pytest.mark.parametrize("bpm", [55, 70, 90, 120])
@pytest.mark.parametrize("level", [0.0, 0.1, 0.4])
def test_heart_rate_matches_the_generated_rate(cfg, bpm, level):
    clean = simulated_ecg(bpm)
    ecg = noisy(clean, level, seed=bpm)
    feats, facts = features(cfg, ecg)
    assert feats.shape == (127, 3) and facts["no_beats"] == 0
    assert np.abs(feats[:, 2] - bpm).max() < 1.0
    beats, _ = heart_rate(ecg, T, FS)
    assert peak_f1(true_peak_times(clean), beats) >= 0.9  # 5-11 beats a window: one missed beat gives 0.89-0.95


@pytest.mark.parametrize("bpm", [55, 90])
def test_a_movement_artefact_does_not_blind_the_detector(cfg, bpm):
    """One 0.1 s swing of 3x the ECG's range: the old global-threshold detector found only the swing (HR 0
    everywhere). neurokit2 may take the swing for the beat next to it: one displaced beat, which bends the
    interpolated rate over the next few frames (6-9 bpm mean error here), but no window loses its heart rate."""
    clean = simulated_ecg(bpm)
    swing = (T >= 3.45) & (T < 3.55)
    ecg = clean + 3 * np.ptp(clean) * np.sin(2 * np.pi * (T - 3.45) / 0.1) * swing
    feats, facts = features(cfg, ecg)
    assert facts["no_beats"] == 0
    assert np.all(feats[:, 2] > 0.75 * bpm) and np.mean(np.abs(feats[:, 2] - bpm)) < 0.15 * bpm
    true_t = true_peak_times(clean)
    beats, _ = heart_rate(ecg, T, FS)
    assert peak_f1(true_t, beats) >= 0.8


@pytest.mark.parametrize("bpm", [70, 120])
def test_rows_missing_from_the_file_do_not_change_the_rate(cfg, bpm):
    """1 s of rows dropped (time jumps 3.0 -> 4.0 s): the interval across the jump is not a beat interval."""
    kept = ~((T >= 3.0) & (T < 4.0))
    feats, facts = features(cfg, simulated_ecg(bpm)[kept], time_us=T_US[kept])
    assert facts["no_beats"] == 0 and feats.shape[1] == 3
    assert np.abs(feats[:, 2] - bpm).max() < 1.0


@pytest.mark.parametrize("bpm", [70, 90])
def test_a_nan_stretch_is_interpolated_counted_and_the_rate_kept(cfg, bpm):
    ecg = simulated_ecg(bpm).copy()
    ecg[(T >= 3.0) & (T < 3.5)] = np.nan
    feats, facts = features(cfg, ecg)
    assert facts["nonfinite"] == int(((T >= 3.0) & (T < 3.5)).sum()) and facts["no_beats"] == 0
    assert np.mean(np.abs(feats[:, 2] - bpm)) < 2.0


def test_rr_intervals_far_from_the_median_are_dropped():
    """Beats every 0.8 s with one missed (a 1.6 s interval): the rate stays 75 bpm across it, not 37.5."""
    beats = np.array([0.5, 1.3, 2.1, 3.7, 4.5])
    ecg = sum(np.exp(-0.5 * ((T - b) / 0.008) ** 2) for b in beats)
    found, hr = heart_rate(ecg, T, FS)
    assert peak_f1(beats, found) == 1.0
    assert np.allclose(hr[1], 75, atol=0.5) and len(hr[1]) == 3


# --- ECG: bad input --------------------------------------------------------------------------------------

def test_a_flat_ecg_has_no_beats_and_is_counted(cfg):
    feats, facts = features(cfg, np.full(N_ROWS, 0.3))
    assert facts["no_beats"] == 1 and np.all(feats[:, 2] == 0)


def test_an_all_nan_ecg_is_zeroed_counted_and_has_no_beats(cfg):
    feats, facts = features(cfg, np.full(N_ROWS, np.nan))
    assert facts["channels_all_nonfinite"] == 1 and facts["no_beats"] == 1 and np.all(feats[:, 2] == 0)


def test_an_ecg_too_short_for_heart_rate_names_the_file_and_the_fix():
    with pytest.raises(TaskError, match=r"s1_bio.csv: column 'ecg' holds 100 samples .* at least 2 s.*task.physio.ecg=false"):
        heart_rate(np.random.default_rng(0).standard_normal(100), T[:100], FS, "s1_bio.csv")


def test_neurokit_failures_become_a_task_error_naming_the_file(monkeypatch):
    def broken(*args, **kwargs):
        raise IndexError("index 0 is out of bounds")
    monkeypatch.setattr(nk, "ecg_peaks", broken)
    with pytest.raises(TaskError, match=r"s2_bio.csv: neurokit2 could not find R peaks in column 'ecg' \(IndexError"):
        heart_rate(simulated_ecg(70), T, FS, "s2_bio.csv")


# --- EDA: level and slope ---------------------------------------------------------------------------------

def scr(onset: float, amplitude: float, rise: float = 0.75, decay: float = 2.0) -> np.ndarray:
    s = np.clip(T - onset, 0, None)
    peak_s = np.log(decay / rise) * rise * decay / (decay - rise)
    return amplitude * (np.exp(-s / decay) - np.exp(-s / rise)) / (np.exp(-peak_s / decay) - np.exp(-peak_s / rise))


@pytest.mark.parametrize("level", [0.0, 0.03])
def test_eda_level_and_slope_follow_a_known_tonic_plus_responses(cfg, level):
    """Tonic 5 µS + 0.05 µS/s drift, responses of 0.8 and 0.5 µS at 1.2 s and 3.0 s (known onsets)."""
    truth = 5.0 + 0.05 * T + scr(1.2, 0.8) + scr(3.0, 0.5)
    gsr = truth + level * np.random.default_rng(1).standard_normal(N_ROWS)
    feats, _ = features(cfg, simulated_ecg(70), gsr)
    assert np.mean(np.abs(feats[:, 0] - np.interp(CENTRES, T, truth))) < 0.02  # µS
    assert np.mean(np.abs(feats[:, 1] - np.interp(CENTRES, T, np.gradient(truth, T)))) < 0.15  # µS/s
    # the response at 3.0 s shows as a rise: the slope peaks after the onset, inside the response's rise
    assert 3.0 < CENTRES[np.argmax(feats[:, 1])] < 4.0

