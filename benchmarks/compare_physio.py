"""BioVid physiology: the hand-written scipy ECG/EDA code vs neurokit2, on signals with a known answer.

  python benchmarks/compare_physio.py              # 4 heart rates x 5 noise levels x 4 gap kinds x 5 seeds
  python benchmarks/compare_physio.py --seeds 2    # quicker

Signals are BioVid-shaped: 5.5 s at 512 Hz (docs/datasets.md#biovid-files), features read at the 127
spectrogram frame centres of the 2.0-5.0 s analysis window, exactly as tasks/biovid.py does.

ECG: neurokit2.ecg_simulate(method="ecgsyn", heart_rate_std=0) at 55/70/90/120 bpm, simulated for 8 s and
cut to a 5.5 s window at a seed-dependent offset. The true R peaks are the local maxima of the noise-free
signal (ecgsyn with heart_rate_std=0 gives the set rate to 0.3 bpm). Noise level L (R amplitude ~1.2 mV):
white Gaussian SD L + baseline wander 2L at 0.3 Hz + 50 Hz hum L/2. Gaps (1 s at 3.0-4.0 s, inside the
analysis window): none | flat (held at the gap's first value, a saturated/disconnected lead) | nan (NaN, filled
by the task's linear interpolation, tasks/biovid.fill_nonfinite) | removed (rows missing: `time` jumps by 1 s);
and one disturbance that is not a gap: spike (a 0.1 s biphasic movement artefact of 3x the signal's range at 3.45 s).
Scores: heart-rate error = mean |HR - set rate| over the 127 frame centres (bpm; a window without two beats gives
HR 0, as the task does); R-peak F1 with a 50 ms tolerance (one-to-one matching; the first/last 0.25 s are not
scored; true peaks inside the gap are not expected, detections inside it are false positives).
Every detector feeds the same RR -> HR step (RR outside 0.3-2.0 s dropped, interpolated at the frame centres),
scored without and with a median-RR check (RR more than 30 % from the window's median dropped).
Outcome (5 seeds): tasks/biovid.py now uses "neurokit2 neurokit" with the median-RR check; the scipy detector
is kept here, verbatim, so the comparison stays reproducible. EDA keeps the scipy 1 Hz low-pass.

EDA: own construction with a known answer: tonic = level (2, 5 or 10 µS) + drift (±0.05 µS/s); phasic = two
skin-conductance responses (bi-exponential, rise 0.75 s, decay 2 s, peak 0.2-1.0 µS) at known onsets in
0.5-3.5 s. Noise: white Gaussian SD 0 / 0.01 / 0.03 / 0.1 µS; same gap kinds. Scores at the frame centres:
level error (vs tonic + phasic) and slope error (vs its derivative), which are the two EDA features the task
produces; for the decompositions also tonic error, phasic error and SCR-onset F1 (0.5 s tolerance).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from scipy.signal import butter, find_peaks, sosfiltfilt
from tabulate import tabulate

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import neurokit2 as nk  # noqa: E402

from tasks.biovid import fill_nonfinite, frame_centres  # noqa: E402

FS = 512.0
N_ROWS = 2817  # 5.5 s at 512 Hz, like the real files
WINDOW_S = (2.0, 5.0)
GAP_S = (3.0, 4.0)
SPIKE_SIZE = 3.0
HEART_RATES = (55, 70, 90, 120)
ECG_NOISE = (0.0, 0.05, 0.1, 0.2, 0.4)
EDA_NOISE = (0.0, 0.01, 0.03, 0.1)
GAP_KINDS = ("none", "flat", "nan", "removed", "spike")
PEAK_TOLERANCE_S = 0.05
ONSET_TOLERANCE_S = 0.5
EDGE_S = 0.25
NK_ECG_METHODS = ("neurokit", "pantompkins1985", "elgendi2010", "kalidas2017")  # + neurokit with correct_artifacts


# --- the implementations under test ------------------------------------------------------------------

def scipy_r_peaks(ecg: np.ndarray, fs: float) -> np.ndarray:
    """The harness's hand-written detector (tasks/biovid.heart_rate before neurokit2): 5-20 Hz band-pass,
    squared, peaks above a quarter of the 99.5th percentile at >= 0.33 s spacing. Sample indices."""
    sos = butter(3, (5.0, 20.0), btype="bandpass", fs=fs, output="sos")
    energy = sosfiltfilt(sos, ecg) ** 2
    top = np.percentile(energy, 99.5)
    if top <= 0:
        return np.array([], dtype=int)
    return find_peaks(energy, height=0.25 * top, distance=max(1, int(0.33 * fs)))[0]


def neurokit_r_peaks(method: str, correct_artifacts: bool = False):
    """neurokit2's ecg_clean (its default, 0.5 Hz high-pass + 50 Hz notch) then ecg_peaks with `method`. The
    method-specific cleanings (pantompkins1985, elgendi2010) filter causally and shift the peaks by 40-80 ms."""
    def detect(ecg: np.ndarray, fs: float) -> np.ndarray:
        clean = nk.ecg_clean(ecg, sampling_rate=int(round(fs)), method="neurokit")
        _, info = nk.ecg_peaks(clean, sampling_rate=int(round(fs)), method=method, correct_artifacts=correct_artifacts)
        return np.asarray(info["ECG_R_Peaks"], dtype=int)
    return detect


def hr_at(beats: np.ndarray, centres: np.ndarray, median_check: bool = False) -> np.ndarray:
    """The task's RR -> HR step: plausible RR (0.3-2.0 s) -> bpm at RR midpoints -> interpolated; 0 if none.
    median_check: also drop RR more than 30 % away from the window's median RR (a missed or extra beat, or an
    interval spanning a gap), so the rate is interpolated across it instead."""
    rr = np.diff(beats)
    ok = (rr >= 0.3) & (rr <= 2.0)
    if median_check and ok.any():
        ok &= np.abs(rr - np.median(rr[ok])) <= 0.3 * np.median(rr[ok])
    if not ok.any():
        return np.zeros_like(centres)
    return np.interp(centres, (beats[:-1] + beats[1:])[ok] / 2, 60.0 / rr[ok])


def scipy_eda(gsr: np.ndarray, fs: float) -> np.ndarray:
    """The harness's EDA cleaning: Butterworth order 2, 1 Hz low-pass, zero-phase, padded ~3 time constants."""
    sos = butter(2, 1.0, btype="lowpass", fs=fs, output="sos")
    return sosfiltfilt(sos, gsr, padlen=min(len(gsr) - 1, int(3 * fs / 1.0)))


def neurokit_eda(gsr: np.ndarray, fs: float) -> np.ndarray:
    return np.asarray(nk.eda_clean(gsr, sampling_rate=int(round(fs)), method="neurokit"))


# --- signals with a known answer ----------------------------------------------------------------------

def apply_gap(t: np.ndarray, x: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(time s, signal) after a 1 s gap of the given kind; NaN gaps are filled as the task fills them."""
    inside = (t >= GAP_S[0]) & (t < GAP_S[1])
    x = x.copy()
    if kind == "flat":
        x[inside] = x[np.flatnonzero(inside)[0]]
    elif kind == "nan":
        x[inside] = np.nan
        x = fill_nonfinite(x)[0]
    elif kind == "removed":
        return t[~inside], x[~inside]
    elif kind == "spike":  # not a gap: a movement artefact, one 0.1 s biphasic swing of `SPIKE_SIZE` x the signal's range
        x += SPIKE_SIZE * np.ptp(x[np.isfinite(x)]) * np.sin(2 * np.pi * (t - 3.45) / 0.1) * ((t >= 3.45) & (t < 3.55))
    return t, x


def ecg_case(hr: int, noise: float, gap: str, seed: int, template: np.ndarray):
    rng = np.random.default_rng([seed, hr, int(noise * 1000), GAP_KINDS.index(gap)])
    start = int(np.random.default_rng([seed, hr]).integers(0, int(1.5 * FS)))  # same window for every noise/gap
    clean = template[start:start + N_ROWS]
    true_peaks = find_peaks(clean, height=0.5 * clean.max(), distance=int(0.25 * FS))[0]
    t = np.arange(N_ROWS) / FS
    x = (clean + noise * rng.standard_normal(N_ROWS) + 2 * noise * np.sin(2 * np.pi * 0.3 * t + rng.uniform(0, 6.3))
         + noise / 2 * np.sin(2 * np.pi * 50 * t + rng.uniform(0, 6.3)))
    true_t = t[true_peaks]
    if gap not in ("none", "spike"):
        true_t = true_t[~((true_t >= GAP_S[0]) & (true_t < GAP_S[1]))]
    t, x = apply_gap(t, x, gap)
    return t, x, true_t


def scr(t: np.ndarray, onset: float, amplitude: float, rise: float = 0.75, decay: float = 2.0) -> np.ndarray:
    s = np.clip(t - onset, 0, None)
    shape = np.exp(-s / decay) - np.exp(-s / rise)
    peak_s = np.log(decay / rise) * rise * decay / (decay - rise)
    return amplitude * shape / (np.exp(-peak_s / decay) - np.exp(-peak_s / rise))


def eda_case(noise: float, gap: str, seed: int):
    rng = np.random.default_rng([seed, 7])
    t = np.arange(N_ROWS) / FS
    tonic = rng.choice([2.0, 5.0, 10.0]) + rng.choice([-0.05, 0.05]) * t
    onsets = np.sort([rng.uniform(0.5, 1.8), rng.uniform(2.2, 3.5)])
    phasic = sum(scr(t, o, rng.uniform(0.2, 1.0)) for o in onsets)
    noise_rng = np.random.default_rng([seed, int(noise * 1000), GAP_KINDS.index(gap)])
    x = tonic + phasic + noise * noise_rng.standard_normal(N_ROWS)
    t_kept, x = apply_gap(t, x, gap)
    return t_kept, x, t, tonic, phasic, onsets


# --- scoring -----------------------------------------------------------------------------------------

def match_f1(true_t: np.ndarray, found_t: np.ndarray, tolerance: float, lo: float, hi: float) -> float:
    """F1 of one-to-one matches within `tolerance` (closest pairs first), counting only times in [lo, hi]."""
    true_t = true_t[(true_t >= lo) & (true_t <= hi)]
    found_t = found_t[(found_t >= lo) & (found_t <= hi)]
    if not len(true_t) and not len(found_t):
        return 1.0
    pairs = sorted((abs(a - b), i, j) for i, a in enumerate(true_t) for j, b in enumerate(found_t) if abs(a - b) <= tolerance)
    used_true, used_found = set(), set()
    for _, i, j in pairs:
        if i not in used_true and j not in used_found:
            used_true.add(i)
            used_found.add(j)
    tp = len(used_true)
    return 2 * tp / (len(true_t) + len(found_t))


def centres_of(t: np.ndarray) -> np.ndarray:
    keep = (t >= WINDOW_S[0]) & (t <= WINDOW_S[1])
    return t[keep][0] + frame_centres(int(keep.sum()), FS, 16, 4)


def run_ecg(seeds: int) -> list[dict]:
    detectors = ({"scipy (ours)": scipy_r_peaks} | {f"neurokit2 {m}": neurokit_r_peaks(m) for m in NK_ECG_METHODS}
                 | {"neurokit2 neurokit +artifacts": neurokit_r_peaks("neurokit", correct_artifacts=True)})
    rows = []
    for hr in HEART_RATES:
        template = np.asarray(nk.ecg_simulate(duration=8, sampling_rate=int(FS), heart_rate=hr, heart_rate_std=0,
                                              noise=0, method="ecgsyn", random_state=0))
        for seed in range(seeds):
            for noise in ECG_NOISE:
                for gap in GAP_KINDS:
                    t, x, true_t = ecg_case(hr, noise, gap, seed, template)
                    centres = centres_of(t)
                    for name, detect in detectors.items():
                        try:
                            beats = t[detect(x, FS)]
                            failed = 0
                        except Exception:  # noqa: BLE001 -- a crash inside a library counts as "no beats"
                            beats, failed = np.array([]), 1
                        rows.append({"impl": name, "hr": hr, "noise": noise, "gap": gap, "seed": seed, "crash": failed,
                                     "hr_err": float(np.mean(np.abs(hr_at(beats, centres) - hr))),
                                     "hr_err_checked": float(np.mean(np.abs(hr_at(beats, centres, True) - hr))),
                                     "f1": match_f1(true_t, beats, PEAK_TOLERANCE_S, EDGE_S, t[-1] - EDGE_S)})
    return rows


def run_eda(seeds: int) -> list[dict]:
    rows = []
    for seed in range(seeds):
        for noise in EDA_NOISE:
            for gap in GAP_KINDS:
                t, x, t_full, tonic, phasic, onsets = eda_case(noise, gap, seed)
                centres = centres_of(t)
                level = np.interp(centres, t_full, tonic + phasic)
                slope = np.interp(centres, t_full, np.gradient(tonic + phasic, t_full))
                for name, clean_fn in (("scipy (ours): 1 Hz low-pass", scipy_eda), ("neurokit2 eda_clean", neurokit_eda)):
                    g = clean_fn(x, FS)
                    row = {"impl": name, "noise": noise, "gap": gap, "seed": seed,
                           "level_err": float(np.mean(np.abs(np.interp(centres, t, g) - level))),
                           "slope_err": float(np.mean(np.abs(np.interp(centres, t, np.gradient(g, t)) - slope)))}
                    rows.append(row)
                g = neurokit_eda(x, FS)
                true_tonic, true_phasic = np.interp(centres, t_full, tonic), np.interp(centres, t_full, phasic)
                for method in ("highpass", "smoothmedian"):
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        parts = nk.eda_phasic(g, sampling_rate=int(FS), method=method)
                        try:
                            _, info = nk.eda_peaks(parts["EDA_Phasic"].to_numpy(), sampling_rate=int(FS))
                            found = t[np.asarray(info["SCR_Onsets"], dtype=float)[
                                np.isfinite(np.asarray(info["SCR_Onsets"], dtype=float))].astype(int)]
                        except Exception:  # noqa: BLE001
                            found = np.array([])
                    rows.append({"impl": f"neurokit2 eda_phasic {method}", "noise": noise, "gap": gap, "seed": seed,
                                 "tonic_err": float(np.mean(np.abs(np.interp(centres, t, parts["EDA_Tonic"]) - true_tonic))),
                                 "phasic_err": float(np.mean(np.abs(np.interp(centres, t, parts["EDA_Phasic"]) - true_phasic))),
                                 "onset_f1": match_f1(onsets, found, ONSET_TOLERANCE_S, 0, t[-1])})
                # reference for the decompositions: tonic = the window's minimum (constant), phasic = the rest
                base = np.min(g)
                rows.append({"impl": "reference: tonic = window minimum", "noise": noise, "gap": gap, "seed": seed,
                             "tonic_err": float(np.mean(np.abs(base - true_tonic))),
                             "phasic_err": float(np.mean(np.abs(np.interp(centres, t, g) - base - true_phasic))),
                             "onset_f1": float("nan")})
    return rows


def summarise(rows: list[dict], by: list[str], metrics: dict[str, str]) -> list[list]:
    import pandas as pd

    df = pd.DataFrame(rows)
    out = []
    for key, g in df.groupby(by, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        out.append([*key, *(fmt(g, col, how) for col, how in metrics.items())])
    return out


def fmt(g, col: str, how: str) -> str:
    v = g[col].dropna()
    if not len(v):
        return "-"
    if how == "mean":
        return f"{v.mean():.3f}"
    if how.startswith("share<="):
        return f"{100 * (v <= float(how.split('=')[1])).mean():.0f}%"
    return f"{v.sum():.0f}"


def breakdowns(rows: list[dict], metrics: dict, headers: list[str], by: list[tuple[str, str, str]]) -> None:
    """One table per (title, grouping field, its column header): the implementations compared within each group."""
    for title, field, field_header in by:
        print(f"\n{title}")
        print(tabulate(summarise(rows, [field, "impl"], metrics), headers=[field_header, "implementation", *headers],
                       tablefmt="github"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    started = time.time()
    ecg = run_ecg(args.seeds)
    eda = run_eda(args.seeds)
    ecg_metrics = {"hr_err": "mean", "hr_err ": "share<=2", "hr_err_checked": "mean", "hr_err_checked ": "share<=2",
                   "f1": "mean", "crash": "sum"}
    for r in ecg:
        r["hr_err "], r["hr_err_checked "] = r["hr_err"], r["hr_err_checked"]
    headers = ["HR error (bpm)", "within 2 bpm", "HR error, median-RR check", "within 2 bpm ", "R-peak F1", "crashes"]
    n = len(ecg) // (2 + len(NK_ECG_METHODS))
    print(f"ECG, all {n} signals ({len(HEART_RATES)} heart rates x {len(ECG_NOISE)} noise levels x {len(GAP_KINDS)} "
          f"gap kinds x {args.seeds} seeds), 5.5 s at {FS:.0f} Hz")
    print(tabulate(summarise(ecg, ["impl"], ecg_metrics), headers=["implementation", *headers], tablefmt="github"))
    breakdowns(ecg, ecg_metrics, headers, [("ECG by noise level (mV; R amplitude ~1.2 mV), all gap kinds", "noise", "noise"),
                                           ("ECG by gap kind, all noise levels", "gap", "gap"),
                                           ("ECG by heart rate, all noise levels and gaps", "hr", "set bpm")])
    import pandas as pd
    df = pd.DataFrame(ecg)
    ours = df[df.impl == "scipy (ours)"].set_index(["hr", "noise", "gap", "seed"])
    print("\nHead to head on the same signals (HR error, without | with the median-RR check): signals where the "
          "neurokit2 detector is better / tie (within 0.1 bpm) / scipy is better")
    hh = []
    key = ["hr", "noise", "gap", "seed"]
    for m in (*NK_ECG_METHODS, "neurokit +artifacts"):
        theirs = df[df.impl == f"neurokit2 {m}"].set_index(key)
        cells = []
        for col in ("hr_err", "hr_err_checked"):
            d = theirs[col] - ours[col]
            cells.append(f"{int((d < -0.1).sum())} / {int((d.abs() <= 0.1).sum())} / {int((d > 0.1).sum())}")
        hh.append([f"neurokit2 {m}", *cells])
    print(tabulate(hh, headers=["detector", "task's RR step", "median-RR check"], tablefmt="github"))
    eda_metrics = {"level_err": "mean", "slope_err": "mean", "tonic_err": "mean", "phasic_err": "mean", "onset_f1": "mean"}
    eda_headers = ["level error (µS)", "slope error (µS/s)", "tonic error (µS)", "phasic error (µS)", "SCR onset F1"]
    print(f"\nEDA, all {len(eda) // 5} signals ({len(EDA_NOISE)} noise levels x {len(GAP_KINDS)} gap kinds x {args.seeds} seeds)")
    print(tabulate(summarise(eda, ["impl"], eda_metrics), headers=["implementation", *eda_headers], tablefmt="github"))
    ed = pd.DataFrame(eda)
    key = ["noise", "gap", "seed"]
    ours_eda = ed[ed.impl == "scipy (ours): 1 Hz low-pass"].set_index(key)
    theirs_eda = ed[ed.impl == "neurokit2 eda_clean"].set_index(key)
    print("\nHead to head on the same signals: neurokit2 eda_clean better / tie (within 1 %) / scipy better")
    cells = []
    for col in ("level_err", "slope_err"):
        d, scale = theirs_eda[col] - ours_eda[col], 0.01 * np.maximum(theirs_eda[col], ours_eda[col])
        cells.append(f"{int((d < -scale).sum())} / {int((d.abs() <= scale).sum())} / {int((d > scale).sum())}")
    print(tabulate([cells], headers=["level", "slope"], tablefmt="github"))
    breakdowns(eda, eda_metrics, eda_headers, [("EDA by noise level (µS), all gap kinds", "noise", "noise"),
                                               ("EDA by gap kind, all noise levels", "gap", "gap")])
    print(f"\nneurokit2 {nk.__version__}; {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
