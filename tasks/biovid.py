"""`biovid`: BioVid Heat Pain Database, Part A (and Part B's facial EMG columns when present).

On disk (docs/datasets.md#biovid-files; every table is read by column name, never by position):
  <data_root>/samples.csv                                     TAB-separated index with a header; columns
      subject_name, sample_name, class_id (0=BL1, 1..4=PA1..PA4) are required; class_name is checked when present.
  <data_root>/biosignals_filtered/<subject_name>/<sample_name>_bio.csv   (task.signals=raw: biosignals_raw/)
      TAB-separated, header: time (int, microseconds from the window start), gsr, ecg, emg_trapezius
      [Part B: + emg_corrugator, emg_zygomaticus], 512 Hz.
  <features_root>/<subject_name>/<sample_name>.npy            visual frame features, float [T, D], one row per
      video frame (default features_root: <data_root>/features/visual), written from the videos by
      `harness extract task=biovid` with an EXTRACTED.json beside them that every record copies (data_info).

Modalities: `visual` (the student's, [T, D] frame features as stored) and `physio` (privileged), computed
here from the signals with scipy and neurokit2 (`physio_features`), one row per spectrogram frame [T=127, D]:
  - per EMG channel, PKDOT's spectrogram: keep 2.0 s <= time <= 5.0 s, scipy.signal.spectrogram(nperseg=16,
    noverlap=4, nfft=128) -> 65 bins x 127 frames, in dB (10·log10(PSD + 1e-20); task.physio.log_power).
    fs is measured from the `time` column (the PKDOT code's fs=1000 is a bug, B18 of docs/fidelity.md#pkdot-bugs; set
    task.physio.fs=1000 to reproduce it: it only rescales the PSD).
  - EDA: the gsr signal low-passed (Butterworth, 1 Hz, zero-phase) at each frame centre, and its slope (µS/s).
  - ECG: heart rate (bpm) from R peaks found by neurokit2 (ecg_clean + ecg_peaks, method "neurokit"); RR
    intervals outside 0.3-2.0 s or more than 30 % from the window's median RR ignored; interpolated at the frame
    centres. neurokit2 replaced a scipy band-pass + global-threshold detector that one movement artefact could
    blind (benchmarks/compare_physio.py scores both on signals with a known heart rate).
  Every dimension is then z-scored with the training split's statistics (task.standardize).
Labels: binary BL1 vs PA4 (default, 0/1) or 5-class (task.labels=multiclass).
Protocols (task.protocol): group5 = GroupKFold by subject (shuffled by data_seed); loso = one fold per
subject; folds_file = the MT-PKDOT fold files `<folds_dir>/fold_{k}_{train,test}.txt`, lines
`<class_dir>/<sample_name> <start> <end> <label>`, used verbatim (their start/end frames are recorded, all
frames of the feature file are used). Validation for model selection = held-out training subjects.
Every split is audited (tasks/_common.audit_split): the public MT-PKDOT files share subjects between train
and test and repeat samples; that is a warning with the counts (an error with task.strict_splits=true).

Cleaning steps (counted in the record's data_info.cleaning): non-finite signal values are replaced by linear
interpolation between their finite neighbours (a channel with none left becomes zeros); non-finite features
become 0 after the float32 cast; a sample without two detectable heart beats (a flat ECG included) gets heart
rate 0; an ECG shorter than 2 s is an error naming the file; identical
duplicate rows of samples.csv are dropped; subjects without any sample of the chosen classes are left out.
"""

from __future__ import annotations

import copy
import os
import re
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf
from scipy.signal import butter, sosfiltfilt, spectrogram
from sklearn.model_selection import GroupKFold

from harness.cache import cached_arrays
from harness.data import FoldData, FrameWindows, Split, TargetSpec, TaskSpec, zero_padded_store
from harness.extract.sources import Item, Plan
from harness.registry import register_task
from harness.task import Task, TaskError
from tasks._common import (Cleaning, audit_split, check_memory, data_source_of, features_info, finite_float32,
                           holdout_groups,
                           prepare_out_dir, read_table, resolve_root, standardize_inputs, write_mimic_marker, write_tsv)

CLASS_NAMES = ("BL1", "PA1", "PA2", "PA3", "PA4")
BINARY_CLASSES = {0: 0, 4: 1}  # class_id -> label: BL1 (no pain) vs PA4 (highest pain)
INDEX_COLUMNS = ("subject_name", "sample_name", "class_id")
PROTOCOLS = ("group5", "loso", "folds_file")
# 20 subjects with weak facial responses, dropped in the "reduced 67" variant; the list comes from public
# Part-A code and is unverified against an official list (docs/datasets.md#biovid-protocols).
# task.exclude_subjects=reduced67.
REDUCED67_EXCLUDE = (
    "082315_w_60 082414_m_64 082909_m_47 083009_w_42 083013_w_47 083109_m_60 083114_w_55 091914_m_46 092009_m_54 "
    "092014_m_56 092509_w_51 092714_m_64 100514_w_51 100914_m_39 101114_w_37 101209_w_61 101809_m_59 101916_m_40 "
    "111313_m_64 120614_w_61").split()
PHYSIO_BYTES_PER_SAMPLE = 127 * (3 * 65 + 3) * 4  # at most: 127 frames x (Part B's 3 EMG channels + EDA, HR)
FOLD_LINE = re.compile(r"^(\d+)/(\S+)\s+(-?\d+)\s+(-?\d+)\s+(-?\d+)$")

LAYOUT = """  <data_root>/samples.csv                                        (TAB-separated: subject_name, sample_name, class_id, ...)
  <data_root>/biosignals_filtered/<subject_name>/<sample_name>_bio.csv  (TAB-separated: time, gsr, ecg, emg_*; or biosignals_raw/ with task.signals=raw)
  <features_root>/<subject_name>/<sample_name>.npy               (visual frame features [T, D]; default <data_root>/features/visual)
  e.g. task.data_root=/data/BioVid/PartA"""


# --- signal processing ----------------------------------------------------------------------------

def frame_centres(n: int, fs: float, nperseg: int, noverlap: int) -> np.ndarray:
    """Centre times (s, from the first kept sample) of the spectrogram segments of an n-sample signal."""
    step = nperseg - noverlap
    n_frames = (n - noverlap) // step
    return (nperseg / 2 + step * np.arange(n_frames)) / fs


def fill_nonfinite(x: np.ndarray) -> tuple[np.ndarray, int, bool]:
    """Linear interpolation over non-finite values; (signal, how many were replaced, whole channel was bad)."""
    bad = ~np.isfinite(x)
    n_bad = int(bad.sum())
    if not n_bad:
        return x, 0, False
    if n_bad == len(x):
        return np.zeros_like(x), n_bad, True
    idx = np.arange(len(x))
    x = x.copy()
    x[bad] = np.interp(idx[bad], idx[~bad], x[~bad])
    return x, n_bad, False


MIN_ECG_SECONDS = 2.0  # shorter than this, neurokit2 fails deep inside (filter padding, smoothing window)
RR_RANGE_S = (0.3, 2.0)  # plausible RR intervals (200-30 bpm)
RR_MEDIAN_TOLERANCE = 0.3  # an RR further than this (relative) from the window's median RR is a missed/extra beat


def r_peaks(ecg: np.ndarray, fs: float, source: str = "") -> np.ndarray:
    """R-peak sample indices: neurokit2.ecg_clean (0.5 Hz high-pass, 50 Hz notch) + ecg_peaks(method="neurokit").

    A constant ECG (a flat or all-NaN lead) has no peaks (the caller counts it); an ECG shorter than
    MIN_ECG_SECONDS, or one neurokit2 cannot process, is a TaskError naming the file and the field.
    """
    import neurokit2 as nk  # ~1 s to import: only when heart rate is computed (cache misses)

    if len(ecg) < MIN_ECG_SECONDS * fs:
        raise TaskError(f"{source}: column 'ecg' holds {len(ecg)} samples ({len(ecg) / fs:.2f} s at {fs:.0f} Hz); heart "
                        f"rate needs at least {MIN_ECG_SECONDS:g} s. Re-export the full window, or set "
                        f"task.physio.ecg=false")
    if np.ptp(ecg) == 0:
        return np.array([], dtype=int)
    try:
        cleaned = nk.ecg_clean(ecg, sampling_rate=fs, method="neurokit")
        _, info = nk.ecg_peaks(cleaned, sampling_rate=fs, method="neurokit", correct_artifacts=False)
    except Exception as e:  # noqa: BLE001 -- neurokit2 raises TypeError/ValueError/IndexError from deep inside
        raise TaskError(f"{source}: neurokit2 could not find R peaks in column 'ecg' ({type(e).__name__}: {e}). "
                        f"Check the column holds an ECG trace at the file's sampling rate ({fs:.0f} Hz), or set "
                        f"task.physio.ecg=false") from None
    return np.asarray(info["ECG_R_Peaks"], dtype=int)


def heart_rate(ecg: np.ndarray, t: np.ndarray, fs: float, source: str = "") -> tuple[np.ndarray, np.ndarray]:
    """R-peak times (s) and instantaneous heart rate [[RR midpoint s], [bpm]] over the kept RR intervals.

    RR intervals outside RR_RANGE_S, or more than RR_MEDIAN_TOLERANCE away from the window's median RR (a missed
    or extra beat, an interval across a gap in the recording), are dropped: the rate is interpolated across them.
    Peak times come from `t`, so rows missing from the file do not shorten the intervals.
    """
    beats = t[r_peaks(ecg, fs, source)]
    rr = np.diff(beats)
    ok = (rr >= RR_RANGE_S[0]) & (rr <= RR_RANGE_S[1])
    if ok.any():
        median = np.median(rr[ok])
        ok &= np.abs(rr - median) <= RR_MEDIAN_TOLERANCE * median
    return beats, np.stack([(beats[:-1] + beats[1:])[ok] / 2, 60.0 / rr[ok]]) if ok.any() else np.zeros((2, 0))


def physio_features(time_us: np.ndarray, signals: dict[str, np.ndarray], emg_channels: list[str], pcfg,
                    source: str = "") -> tuple[np.ndarray, dict]:
    """Privileged features of one sample: [T, D] rows = spectrogram frames of the analysis window.

    Columns: for each EMG channel its nfft//2+1 spectrogram bins, then (eda) gsr level and slope,
    then (ecg) heart rate. Returns (features float64, facts {fs, no_beats, nonfinite...}).
    """
    time_us = np.asarray(time_us, dtype=np.float64)
    if time_us.size < 2 or np.any(np.diff(time_us) <= 0):
        raise TaskError(f"{source}: column 'time' must increase strictly (microseconds from the window start); "
                        f"re-export the file from the original dataset")
    fs = float(pcfg.fs) if pcfg.get("fs") else 1e6 / float(np.median(np.diff(time_us)))
    lo, hi = (float(v) for v in pcfg.window_s)
    keep = (time_us >= lo * 1e6) & (time_us <= hi * 1e6)
    n = int(keep.sum())
    nperseg, noverlap, nfft = int(pcfg.nperseg), int(pcfg.noverlap), int(pcfg.nfft)
    if n < nperseg + (nperseg - noverlap):
        raise TaskError(f"{source}: the 'time' column spans {time_us[0] / 1e6:.2f}-{time_us[-1] / 1e6:.2f} s, which "
                        f"leaves {n} samples in task.physio.window_s={[lo, hi]}: too few for a spectrogram. Set "
                        f"task.physio.window_s inside the recorded span")
    t_sec = time_us / 1e6
    centres = t_sec[keep][0] + frame_centres(n, fs, nperseg, noverlap)
    facts = {"fs": fs, "nonfinite": 0, "channels_all_nonfinite": 0, "no_beats": 0}
    clean = {}
    for name, x in signals.items():
        x, n_bad, all_bad = fill_nonfinite(np.asarray(x, dtype=np.float64))
        facts["nonfinite"] += n_bad
        facts["channels_all_nonfinite"] += int(all_bad)
        clean[name] = x
    cols = []
    for ch in emg_channels:
        _, _, S = spectrogram(clean[ch][keep], fs=fs, nperseg=nperseg, noverlap=noverlap, nfft=nfft)
        cols.append(10 * np.log10(S + 1e-20) if pcfg.log_power else S)
    feats = [c.T for c in cols]
    if pcfg.eda:
        cutoff = float(pcfg.eda_lowpass_hz)
        sos = butter(2, cutoff, btype="lowpass", fs=fs, output="sos")
        # pad by ~3 filter time constants (odd extension): the default padding leaves edge transients
        g = sosfiltfilt(sos, clean["gsr"], padlen=min(len(clean["gsr"]) - 1, int(3 * fs / cutoff)))
        feats.append(np.stack([np.interp(centres, t_sec, g), np.interp(centres, t_sec, np.gradient(g, t_sec))], axis=1))
    if pcfg.ecg:
        _, hr = heart_rate(clean["ecg"], t_sec, fs, source)
        if hr.shape[1] == 0:
            facts["no_beats"] = 1
            feats.append(np.zeros((len(centres), 1)))
        else:
            feats.append(np.interp(centres, hr[0], hr[1])[:, None])
    if not feats:
        raise TaskError("task.physio selects no features: give emg_channels, or set physio.eda / physio.ecg to true")
    return np.concatenate(feats, axis=1), facts


# --- files ----------------------------------------------------------------------------------------

def read_index(path: Path, cleaning: Cleaning) -> pd.DataFrame:
    """samples.csv -> one row per sample with subject_name, sample_name, class_id (checked)."""
    fix = ("samples.csv is the TAB-separated index shipped with BioVid (subject_id, subject_name, class_id, "
           "class_name, sample_id, sample_name); check task.data_root")
    df = read_table(path, INDEX_COLUMNS, "\t", fix, dtype={"subject_name": str, "sample_name": str})
    line = np.arange(len(df)) + 2  # header is line 1
    for col in ("subject_name", "sample_name"):
        empty = df[col].isna() | (df[col].astype(str).str.strip() == "")
        if empty.any():
            raise TaskError(f"{path} line {line[empty.to_numpy()][0]}: empty {col}; every row needs one")
    cid = pd.to_numeric(df["class_id"], errors="coerce")
    bad = cid.isna() | (cid % 1 != 0) | ~cid.isin(range(len(CLASS_NAMES)))
    if bad.any():
        rows = [f"line {ln}: {v}" for ln, v in zip(line[bad.to_numpy()][:5], df["class_id"][bad].head(5))]
        raise TaskError(f"{path}: class_id out of range ({'; '.join(rows)}); it must be an integer 0..4 "
                        f"(0=BL1, 1..4=PA1..PA4). Fix those rows (or the file is not BioVid's samples.csv)")
    df = df.assign(class_id=cid.astype(int), subject_name=df.subject_name.str.strip(),
                   sample_name=df.sample_name.str.strip(), _line=line)
    parts = df.sample_name.str.split("-")
    token = parts.str[1]
    expected = df.class_id.map(dict(enumerate(CLASS_NAMES)))
    wrong = (parts.str.len() < 3) | (token != expected) | (parts.str[0] != df.subject_name)
    if "class_name" in df.columns:
        wrong |= df["class_name"].astype(str).str.strip() != expected
    if wrong.any():
        r = df[wrong].iloc[0]
        raise TaskError(f"{path} line {r._line}: sample_name {r.sample_name!r} does not match subject_name "
                        f"{r.subject_name!r} / class_id {r.class_id} ({CLASS_NAMES[r.class_id]}); names are "
                        f"<subject_name>-<BL1|PA1..PA4>-<idx>. Fix the row so the three agree")
    dup = df.duplicated("sample_name", keep=False)
    if dup.any():
        conflicting = df[dup].groupby("sample_name").filter(lambda g: g[list(INDEX_COLUMNS)].drop_duplicates().shape[0] > 1)
        if len(conflicting):
            r = conflicting.iloc[0]
            raise TaskError(f"{path}: sample {r.sample_name} is listed more than once with different subject/class "
                            f"(lines {conflicting[conflicting.sample_name == r.sample_name]._line.tolist()}); keep one")
        n_drop = int(df.duplicated("sample_name").sum())
        cleaning.add("index_duplicate_rows_dropped", n_drop, df[df.duplicated("sample_name")].sample_name.iloc[0])
        df = df.drop_duplicates("sample_name")
    return df.reset_index(drop=True)


def read_fold_file(path: Path) -> list[tuple[int, str, int, int, int, int]]:
    """An MT-PKDOT fold file: (class_dir, sample_name, start, end, label, line number) per line, verbatim."""
    if not path.is_file():
        raise TaskError(f"missing fold file {path}; protocol=folds_file reads <folds_dir>/fold_<k>_train.txt and "
                        f"fold_<k>_test.txt for k=1..K (set task.folds_dir)")
    out = []
    for i, raw in enumerate(path.read_text().splitlines(), start=1):
        s = raw.strip()
        if not s:
            continue
        m = FOLD_LINE.match(s)
        if m is None:
            raise TaskError(f"{path} line {i}: {raw!r} is not '<class_dir>/<sample_name> <start> <end> <label>' "
                            f"(e.g. '4/073109_w_28-PA4-062 50 70 1'); fix or remove the line")
        out.append((int(m[1]), m[2], int(m[3]), int(m[4]), int(m[5]), i))
    if not out:
        raise TaskError(f"{path} holds no sample lines")
    return out


# --- the task -------------------------------------------------------------------------------------

@register_task
class BioVid(Task):
    modality_protocol_key = "modality_protocol"  # `protocol` is the fold scheme here
    name = "biovid"
    bootstrap_unit = "subject"  # Split.groups = subject_name: a subject's samples share face and physiology
    description = "BioVid heat pain (Part A/B): face video features -> pain; physiological signals privileged"
    mimic_version = 3  # bump when write_mimic changes: source=mimic then writes a fresh tree
    published = [
        {"method": "MT-PKDOT vs its visual-only baseline",
         "metrics": {"accuracy": "+5.5 % (gain over the visual-only baseline)"},
         "citation": "Aslam, Pedersoli, Koerich, Granger, 'Multi Teacher Privileged Knowledge Distillation for "
                     "Multimodal Expression Recognition', arXiv:2408.09035 (2024), abstract",
         "setting": "BL1 vs PA4, physiological signals privileged; the authors' 5 sample-level folds (their public "
                    "fold files share subjects between train and test)",
         "note": "a DELTA claimed in the abstract, not an accuracy; absolute points or relative is not stated. The "
                 "per-method tables of the paper were not available here and are not reproduced."},
        {"method": "PKDOT",
         "metrics": {"accuracy": "claim only: outperforms state-of-the-art privileged KD methods (no number)"},
         "citation": "Aslam, Zeeshan, Belharbi, Pedersoli, Koerich, Bacon, Granger, 'Distilling Privileged "
                     "Multimodal Information for Expression Recognition using Optimal Transport', arXiv:2401.15489 "
                     "(IEEE FG 2024), abstract",
         "setting": "BL1 vs PA4, physiological signals privileged",
         "note": "a qualitative CLAIM of the abstract; no number is stated there and none is given here."},
    ]

    def __init__(self, cfg):
        super().__init__(cfg)
        c = self.cfg
        if c.labels not in ("binary", "multiclass"):
            raise TaskError(f"task.labels={c.labels!r}: choose binary (BL1 vs PA4) or multiclass (BL1, PA1..PA4)")
        if c.protocol not in PROTOCOLS:
            raise TaskError(f"task.protocol={c.protocol!r}: choose one of {list(PROTOCOLS)}")
        if c.signals not in ("filtered", "raw"):
            raise TaskError(f"task.signals={c.signals!r}: choose filtered (biosignals_filtered/) or raw (biosignals_raw/)")
        self.full_protocol  # noqa: B018 -- validates task.modality_protocol up front
        if c.on_missing not in ("error", "drop"):
            raise TaskError(f"task.on_missing={c.on_missing!r}: choose error or drop")
        if c.protocol == "folds_file" and not c.get("folds_dir"):
            raise TaskError("task.protocol=folds_file needs task.folds_dir (the folder with fold_<k>_train.txt / "
                            "fold_<k>_test.txt in the MT-PKDOT format)")

    # --- where the data is ------------------------------------------------------------------------
    @cached_property
    def root(self) -> Path:
        return resolve_root(self.cfg, self.name, self.write_mimic, lambda r: (r / "samples.csv").is_file(), LAYOUT,
                            self.mimic_version)

    @property
    def data_source(self) -> str:
        return data_source_of(self.root, self.features_root)

    @property
    def features_root(self) -> Path:
        fr = self.cfg.get("features_root")
        return Path(fr) if fr and self.cfg.source == "real" else self.root / "features" / "visual"

    @cached_property
    def _dirs(self) -> tuple[str, str]:
        # plain strings, resolved once: path building is per sample (8700 on the real data)
        return str(self.root / f"biosignals_{self.cfg.signals}"), str(self.features_root)

    def bio_path(self, subject: str, sample: str) -> Path:
        return Path(f"{self._dirs[0]}/{subject}/{sample}_bio.csv")

    def visual_path(self, subject: str, sample: str) -> Path:
        return Path(f"{self._dirs[1]}/{subject}/{sample}.npy")

    # --- contract ---------------------------------------------------------------------------------
    @property
    def spec(self) -> TaskSpec:
        d = self._dataset
        if self.cfg.labels == "binary":
            target = TargetSpec("classification", ("pain",), n_classes=2, class_names=("BL1", "PA4"))
        else:
            target = TargetSpec("classification", ("pain",), n_classes=5, class_names=CLASS_NAMES)
        modalities = {"visual": d["visual"].shape[2], "physio": d["physio"].shape[2]}
        return TaskSpec(modalities=modalities, student_modalities=self.test_modalities(("visual",), modalities),
                        target=target, metrics=("accuracy", "f1_macro"))

    @property
    def config_n_folds(self) -> int | None:
        return int(self.cfg.n_folds) if self.cfg.protocol == "group5" else None  # loso, folds_file: the data says

    @property
    def n_folds(self) -> int:
        c = self.cfg
        if c.protocol == "group5":
            return int(c.n_folds)
        if c.protocol == "loso":
            return len(self._subjects)
        k = 0
        while (Path(c.folds_dir) / f"fold_{k + 1}_test.txt").is_file():
            k += 1
        if k == 0:
            raise TaskError(f"no fold_1_test.txt in task.folds_dir={c.folds_dir}; the MT-PKDOT fold files are "
                            f"fold_<k>_train.txt and fold_<k>_test.txt, k=1..5")
        return k

    def variant(self) -> str:
        c = self.cfg
        labels = "BL1 vs PA4" if c.labels == "binary" else "5-class"
        protocol = {"group5": f"{c.n_folds}-fold by subject", "loso": "leave-one-subject-out",
                    "folds_file": "external fold files (MT-PKDOT format)"}[c.protocol]
        extra = [] if c.signals == "filtered" else ["raw signals"]
        if c.protocol == "folds_file" and c.dedupe_folds:
            extra.append("deduplicated")
        if c.exclude_subjects:
            extra.append("reduced67" if c.exclude_subjects == "reduced67" else f"{len(c.exclude_subjects)} subjects excluded")
        return ", ".join([labels, protocol, *extra]) + self.protocol_suffix()

    # --- loading ----------------------------------------------------------------------------------
    def _label_of(self, class_id: int) -> int | None:
        if self.cfg.labels == "binary":
            return BINARY_CLASSES.get(int(class_id))
        return int(class_id)

    @cached_property
    def _index(self) -> tuple[pd.DataFrame, Cleaning, dict]:
        """Kept samples (label set, exclusions, files present), with the cleaning counter and index facts."""
        cleaning = Cleaning()
        df = read_index(self.root / "samples.csv", cleaning)
        excl = self.cfg.exclude_subjects
        excl = set(REDUCED67_EXCLUDE if excl == "reduced67" else (excl or []))
        all_subjects = set(df.subject_name)
        df = df[~df.subject_name.isin(excl)]
        # one lookup per class, not per row: the config lookup cost ~0.6 s over the real index's 8,700 rows
        labels = {c: self._label_of(c) for c in df.class_id.unique()}
        df = df.assign(label=df.class_id.map(labels)).dropna(subset=["label"])
        df = df.assign(label=df.label.astype(int)).sort_values(["subject_name", "sample_name"]).reset_index(drop=True)
        facts = {"index_rows": int(len(df)), "excluded_subjects": sorted(excl & all_subjects)}
        # Subjects on disk or in the index without any sample of the chosen classes: left out, counted.
        bio_dir = self.root / f"biosignals_{self.cfg.signals}"
        if not bio_dir.is_dir():
            raise TaskError(f"missing folder {bio_dir}; BioVid ships biosignals_filtered/ and biosignals_raw/ "
                            f"(task.signals=filtered|raw selects one). Check task.data_root")
        on_disk = {p.name for p in bio_dir.iterdir() if p.is_dir()}
        empty = sorted(((all_subjects - excl) | on_disk) - set(df.subject_name) - excl)
        for s in empty:
            cleaning.add("subjects_without_samples", 1, s)
        facts["subjects_without_samples"] = empty
        missing = []
        bio_dir, vis_dir = self._dirs
        for i, subject, sample in zip(df.index, df.subject_name, df.sample_name):
            for p in (f"{bio_dir}/{subject}/{sample}_bio.csv", f"{vis_dir}/{subject}/{sample}.npy"):
                if not os.path.isfile(p):
                    missing.append((i, Path(p)))
        if missing:
            if self.cfg.on_missing == "error":
                idx, p = missing[0]
                kind = "biosignal" if p.name.endswith("_bio.csv") else "visual feature"
                raise TaskError(f"missing {kind} file {p} (sample {df.sample_name[idx]} of samples.csv; {len(missing)} "
                                f"file(s) missing in all). Fix: restore the files, check task.signals / "
                                f"task.features_root (layout below), or set task.on_missing=drop to leave such samples "
                                f"out (counted in the record).\n{LAYOUT}")
            drop = sorted({i for i, _ in missing})
            cleaning.add("samples_dropped_missing_files", len(drop), str(missing[0][1]))
            df = df.drop(index=drop).reset_index(drop=True)
        if df.empty:
            raise TaskError(f"no sample of the chosen classes (task.labels={self.cfg.labels}) is left in "
                            f"{self.root / 'samples.csv'}")
        return df, cleaning, facts

    def source_files(self) -> list[Path | str]:
        """samples.csv, each kept sample's biosignal and visual feature files, any file directly in features_root
        (a sidecar describing the feature extractor) and the fold files: listed from the index, never read."""
        df = self._index[0]
        bio_dir, vis_dir = self._dirs
        files: list[Path | str] = [self.root / "samples.csv"]
        for subject, sample in zip(df.subject_name, df.sample_name):  # plain strings: 17,400 paths on the real data
            files += [f"{bio_dir}/{subject}/{sample}_bio.csv", f"{vis_dir}/{subject}/{sample}.npy"]
        with os.scandir(vis_dir) as entries:
            files += [e.path for e in entries if e.is_file()]
        if self.cfg.protocol == "folds_file":
            files += sorted(Path(self.cfg.folds_dir).glob("fold_*_*.txt"))
        return files

    def extract_plan(self, extract_cfg) -> Plan:
        """`harness extract task=biovid`: <videos_dir>/<subject>/<sample>.mp4 (default <data_root>/video) ->
        visual_path(subject, sample) for every sample of samples.csv: one row per video frame (a clip backbone:
        one row per clip_stride frames)."""
        root = self.root
        df = read_index(root / "samples.csv", Cleaning())
        vdir = Path(extract_cfg.videos_dir) if extract_cfg.get("videos_dir") else root / "video"
        if not vdir.is_dir():
            raise TaskError(f"no video folder {vdir}: BioVid ships its face videos as video/<subject>/<sample>.mp4 "
                            f"under the data root; point extract.videos_dir at the folder holding the <subject>/ "
                            f"folders")
        items = [Item(key=f"{s}/{n}.npy", out=str(self.visual_path(s, n)), kind="video",
                      source=str(vdir / s / f"{n}.mp4"), rows=None) for s, n in zip(df.subject_name, df.sample_name)]
        return Plan(self.features_root, items, [], {"input": "video", "videos_dir": str(vdir)})

    @cached_property
    def _subjects(self) -> list[str]:
        return sorted(set(self._index[0].subject_name))

    def _emg_channels(self, first_file: Path) -> list[str]:
        chans = self.cfg.physio.emg_channels
        if chans == "auto":
            header = read_table(first_file, ["time"], "\t", "BioVid biosignal files are TAB-separated with a header "
                                "time, gsr, ecg, emg_*", dtype=None).columns
            return sorted(c for c in header if c.startswith("emg_"))
        return list(chans)

    def _physio(self, df: pd.DataFrame, cleaning: Cleaning) -> tuple[list[np.ndarray], dict]:
        pcfg = self.cfg.physio
        files = [self.bio_path(s, n) for s, n in zip(df.subject_name, df.sample_name)]
        emg = self._emg_channels(files[0])
        needed = ["time"] + (["gsr"] if pcfg.eda else []) + (["ecg"] if pcfg.ecg else []) + emg
        config = {"physio": OmegaConf.to_container(pcfg, resolve=True), "channels": emg, "version": 2}

        def build():
            feats, fs, nonfinite, all_bad, no_beats = [], [], [], [], []
            fix = ("BioVid biosignal files are TAB-separated with a header row: time, gsr, ecg, emg_trapezius "
                   "[, emg_corrugator, emg_zygomaticus]; re-export the file, or choose task.physio.emg_channels / "
                   "physio.eda / physio.ecg to match the columns you have")
            for path in files:
                table = read_table(path, needed, "\t", fix)
                x, facts = physio_features(table["time"].to_numpy(), {c: table[c].to_numpy() for c in needed[1:]},
                                           emg, pcfg, source=str(path))
                feats.append(x.astype(np.float32))
                fs.append(facts["fs"])
                nonfinite.append(facts["nonfinite"])
                all_bad.append(facts["channels_all_nonfinite"])
                no_beats.append(facts["no_beats"])
            return {"sample": np.array(df.sample_name, dtype=str), "physio": feats, "fs": np.array(fs),
                    "signal_nonfinite": np.array(nonfinite), "channels_all_nonfinite": np.array(all_bad),
                    "no_beats": np.array(no_beats)}

        arrays, hit = cached_arrays("biovid-physio", files, config, build, self.cfg.cache_dir or ".cache")
        names = np.asarray(df.sample_name)
        for key, col in (("signal_nonfinite_values_interpolated", "signal_nonfinite"),
                         ("signal_channels_all_nonfinite_zeroed", "channels_all_nonfinite"),
                         ("samples_without_heartbeats_hr_zero", "no_beats")):
            vals = np.asarray(arrays[col])
            if vals.sum():
                cleaning.add(key, int(vals.sum()), names[np.flatnonzero(vals)[0]])
        seqs = [finite_float32(x, cleaning, "physio_nonfinite_features_zeroed", n) for x, n in zip(arrays["physio"], names)]
        fs = np.asarray(arrays["fs"])
        return seqs, {"emg_channels": emg, "dims": int(seqs[0].shape[1]), "fs_measured_hz": [float(fs.min()), float(fs.max())],
                      "cache_hit": bool(hit)}

    def _visual_shapes(self, df: pd.DataFrame) -> list[tuple[int, int]]:
        """(frames, dims) of every sample's feature file, read from the .npy headers (no data read)."""
        shapes, dim = [], None
        for s, n in zip(df.subject_name, df.sample_name):
            path = self.visual_path(s, n)
            try:
                x = np.load(path, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError) as e:
                raise TaskError(f"cannot read visual features {path} ({e}); each sample needs a .npy float array "
                                f"[frames, dims] (np.save)") from None
            if x.ndim != 2 or x.shape[0] == 0 or x.dtype.kind not in "fiu":
                raise TaskError(f"{path} holds a {x.dtype} array of shape {x.shape}; visual features must be a "
                                f"numeric [frames, dims] array with at least one frame")
            if dim is None:
                dim = x.shape[1]
            elif x.shape[1] != dim:
                raise TaskError(f"{path} has {x.shape[1]} feature dims, earlier samples have {dim}; all samples "
                                f"need features from the same extractor")
            shapes.append(x.shape)
        return shapes

    def _visual(self, df: pd.DataFrame, cleaning: Cleaning, shapes: list[tuple[int, int]]) -> FrameWindows:
        """Every sample's visual frames (`shapes` from `_visual_shapes`) read once into one store (unpadded,
        FrameWindows' zero row last); rows in index order, padded to the longest sample."""
        lengths = np.array([t for t, _ in shapes], dtype=np.int64)
        store = zero_padded_store(int(lengths.sum()), shapes[0][1])
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        for (s, n), a, t in zip(zip(df.subject_name, df.sample_name), starts, lengths):
            path = self.visual_path(s, n)
            store[a:a + t] = finite_float32(np.load(path, allow_pickle=False), cleaning,
                                            "visual_nonfinite_features_zeroed", str(path))
        return FrameWindows(store, starts, lengths, int(lengths.max()))

    @cached_property
    def _dataset(self) -> dict:
        """Every kept sample's frames stored once per modality; `visual` and `physio` are FrameWindows over them."""
        df, index_cleaning, facts = self._index
        cleaning = copy.deepcopy(index_cleaning)  # a re-read (see load_fold) counts its cleaning afresh
        shapes = self._visual_shapes(df)  # the .npy headers: the memory check comes before anything is read
        frames = sum(t for t, _ in shapes)
        check_memory(frames * shapes[0][1] * 4 + len(df) * PHYSIO_BYTES_PER_SAMPLE,
                     f"BioVid's {len(df)} samples ({frames} frames x {shapes[0][1]} visual dims, and the physio "
                     f"features) as float32 (features under {self.features_root})")
        physio, pinfo = self._physio(df, cleaning)
        visual = self._visual(df, cleaning, shapes)
        plen = np.array([len(x) for x in physio], dtype=np.int64)
        pstore = zero_padded_store(int(plen.sum()), physio[0].shape[1])
        pstart = np.concatenate([[0], np.cumsum(plen)[:-1]]).astype(np.int64)
        for x, a in zip(physio, pstart):
            pstore[a:a + len(x)] = x
        del physio
        return {"df": df, "visual": visual, "visual_len": visual.lengths,
                "physio": FrameWindows(pstore, pstart, plen, int(plen.max())), "physio_len": plen,
                "cleaning": cleaning, "facts": {**facts, "physio": pinfo}, "standardized_for": None}

    def _full_split(self) -> Split:
        d = self._dataset
        df = d["df"]
        return Split(ids=np.asarray(df.sample_name, dtype=str), groups=np.asarray(df.subject_name, dtype=str),
                     inputs={"visual": d["visual"], "physio": d["physio"]},
                     targets=np.asarray(df.label, dtype=np.int64)[:, None],
                     lengths={"visual": d["visual_len"], "physio": d["physio_len"]})

    def _fold_indices(self, fold: int) -> tuple[np.ndarray, np.ndarray, dict]:
        """(train, test) row indices into the full split (repeats allowed for fold files), protocol facts."""
        c, df = self.cfg, self._dataset["df"]
        groups = np.asarray(df.subject_name)
        if c.protocol == "group5":
            n_subj = len(set(groups))
            if n_subj < c.n_folds:
                raise TaskError(f"{n_subj} subjects have samples but task.n_folds={c.n_folds}; set task.n_folds<={n_subj}")
            outer = GroupKFold(n_splits=int(c.n_folds), shuffle=True, random_state=int(c.data_seed))
            tr, te = list(outer.split(groups, groups=groups))[fold]
            return tr, te, {}
        if c.protocol == "loso":
            subject = self._subjects[fold]
            return np.flatnonzero(groups != subject), np.flatnonzero(groups == subject), {"test_subject": subject}
        pos = {n: i for i, n in enumerate(df.sample_name)}
        out, ranges = [], set()
        for part in ("train", "test"):
            path = Path(c.folds_dir) / f"fold_{fold + 1}_{part}.txt"
            idx = []
            for class_dir, sample, start, end, label, line in read_fold_file(path):
                if sample not in pos:
                    raise TaskError(f"{path} line {line}: sample {sample} is not among the loaded samples of "
                                    f"{self.root / 'samples.csv'} (task.labels={c.labels}, excluded subjects and "
                                    f"task.on_missing apply); fix the fold file or the data root")
                row = df.iloc[pos[sample]]
                if class_dir != row.class_id or label != row.label:
                    raise TaskError(f"{path} line {line}: class_dir {class_dir} / label {label} for {sample}, but the "
                                    f"sample is class {row.class_id} ({CLASS_NAMES[row.class_id]}) with label {row.label} "
                                    f"under task.labels={c.labels}; labels out of range or wrong: fix the line or "
                                    f"choose task.labels to match the file")
                idx.append(pos[sample])
                ranges.add((start, end))
            out.append(np.array(idx, dtype=np.int64))
        return out[0], out[1], {"fold_files": [str(Path(c.folds_dir) / f"fold_{fold + 1}_{p}.txt") for p in ("train", "test")],
                                "frame_ranges_in_file": sorted(ranges), "frame_ranges_used": "all frames of the feature file"}

    def load_fold(self, fold: int) -> FoldData:
        self.check_fold(fold)
        c = self.cfg
        done = self.__dict__.get("_dataset", {}).get("standardized_for")
        if c.standardize and done is not None and done != fold:
            # The stored frames were standardised in place for another fold: read them again (a run loads one
            # fold; several folds in one process pay a re-read, never a second copy of the data).
            del self.__dict__["_dataset"]
        full = self._full_split()
        tr, te, pfacts = self._fold_indices(fold)
        if c.protocol == "folds_file" and c.dedupe_folds:
            te = np.array(list(dict.fromkeys(te.tolist())), dtype=np.int64)
            in_test = set(te.tolist())
            tr = np.array([i for i in dict.fromkeys(tr.tolist()) if i not in in_test], dtype=np.int64)
        keep, held = holdout_groups(full.groups[tr], float(c.val_fraction), int(c.data_seed) + fold)
        train, val, test = full.subset(tr[keep]), full.subset(tr[held]), full.subset(te)
        audit = audit_split({"train": (train.ids, train.groups), "val": (val.ids, val.groups),
                             "test": (test.ids, test.groups)},
                            f"biovid fold {fold} (protocol={c.protocol})", bool(c.strict_splits))
        d = self._dataset
        if c.standardize and d["standardized_for"] is None:
            # in place, once, on the stored frames: the splits are rows of the same stores
            standardize_inputs(train, (val, test), ("visual", "physio"))
            d["standardized_for"] = fold
        d["cleaning"].warn(self.name)
        info = {"protocol": c.protocol, **pfacts, "n_subjects": len(self._subjects), "split_audit": audit,
                "cleaning": d["cleaning"].as_info(), **d["facts"], "data_root": str(self.root),
                "visual_features": features_info(self.features_root),
                "labels": c.labels, "validation": f"{c.val_fraction} of the training subjects held out"}
        return FoldData(train=train, val=val, test=test, info=info)

    # --- mimic ------------------------------------------------------------------------------------
    @classmethod
    def write_mimic(cls, out_dir: Path, cfg: DictConfig) -> Path:
        """A BioVid tree in the real format (samples.csv, biosignals_{filtered,raw}, visual features), NOT real data.

        Planted relation (pain level p = class_id/4, scaled per subject): EDA rises after ~2 s by ~1.5·p µS,
        heart rate rises by ~15·p bpm, EMG gains 30-150 Hz activity ∝ p after 2.5 s (the spectrum changes
        shape), and the face features move along a fixed "pain" direction ∝ p · expressiveness (some subjects
        barely express) during frames 45-115, under subject offsets and frame noise: the physiology is the
        easy view, the face the hard one.
        """
        out = prepare_out_dir(Path(out_dir))
        m = cfg.mimic
        rng = np.random.default_rng(int(m.seed))
        fs, n_rows = 512, int(round(5.5 * 512)) + 1  # 5.5 s windows, 2817 rows like the real ~2816
        t = np.arange(n_rows) / fs
        time_us = np.round(np.arange(n_rows) * 1e6 / fs).astype(np.int64)
        emg_names = ["emg_trapezius"] + (["emg_corrugator", "emg_zygomaticus"] if str(m.part).upper() == "B" else [])
        D, F = int(m.visual_dim), int(m.n_frames)
        pain_dir = rng.standard_normal(D)
        pain_dir /= np.linalg.norm(pain_dir)
        pose_mix = rng.standard_normal((3, D)) / np.sqrt(3)
        band = butter(4, (30, 150), btype="bandpass", fs=fs, output="sos")
        low = butter(2, 8, btype="lowpass", fs=fs, output="sos")
        rows = []
        sid = 0
        ages = rng.integers(20, 66, size=int(m.n_subjects))
        for s in range(int(m.n_subjects)):
            subject = f"{(7 + s % 5):02d}{(10 + s % 18):02d}{(9 + s % 7):02d}_{'wm'[s % 2]}_{ages[s]}"
            gsr_base, gsr_resp = rng.uniform(2, 10), rng.uniform(0.5, 1.5)
            hr_base, hr_resp = rng.uniform(60, 85), rng.uniform(0.6, 1.4)
            emg_gain, expressive = rng.uniform(0.6, 1.4), rng.uniform(0.3, 1.0)
            offset = rng.standard_normal(D) * 0.3
            for c, cname in enumerate(CLASS_NAMES):
                for k in range(int(m.samples_per_class)):
                    idx = 81 + k if c == 0 else 1 + k + (c - 1) * int(m.samples_per_class)
                    sample = f"{subject}-{cname}-{idx:03d}"
                    p = c / 4 * rng.uniform(0.8, 1.2)
                    gsr = (gsr_base + 0.05 * t + 1.5 * gsr_resp * p / (1 + np.exp(-(t - 2.0) / 0.4))
                           + 0.01 * rng.standard_normal(n_rows))
                    hr = hr_base + 15 * hr_resp * p / (1 + np.exp(-(t - 1.5) / 0.5))
                    phase = np.cumsum(hr / 60 / fs) + rng.uniform()
                    beat_t = t[np.flatnonzero(np.diff(np.floor(phase)) > 0) + 1]
                    ecg = 0.03 * rng.standard_normal(n_rows) + 0.1 * np.sin(2 * np.pi * 0.3 * t)
                    for bt in beat_t:
                        ecg += np.exp(-0.5 * ((t - bt) / 0.008) ** 2) + 0.25 * np.exp(-0.5 * ((t - bt - 0.25) / 0.04) ** 2)
                    env = 1 / (1 + np.exp(-(t - 2.5) / 0.2))
                    emg = {}
                    for j, name in enumerate(emg_names):
                        weight = (1.0, 1.5, 0.3)[j]
                        base = 3e-6 * rng.standard_normal(n_rows) + 2e-5 * sosfiltfilt(low, rng.standard_normal(n_rows))
                        act = 2e-5 * emg_gain * weight * p * env * sosfiltfilt(band, rng.standard_normal(n_rows))
                        emg[name] = base + act
                    filtered = {"time": time_us, "gsr": gsr, "ecg": ecg, **emg}
                    raw = {"time": time_us, "gsr": gsr + 0.2 * np.sin(2 * np.pi * 0.05 * t),
                           "ecg": ecg + 0.3 * np.sin(2 * np.pi * 0.2 * t) + 0.05 * np.sin(2 * np.pi * 50 * t),
                           **{k: v + 5e-6 * np.sin(2 * np.pi * 50 * t) for k, v in emg.items()}}
                    for folder, sig in (("biosignals_filtered", filtered), ("biosignals_raw", raw))[: 2 if m.write_raw else 1]:
                        path = out / folder / subject / f"{sample}_bio.csv"
                        path.parent.mkdir(parents=True, exist_ok=True)
                        write_tsv(path, sig, int_columns=("time",))
                    frames = np.arange(F)
                    bump = np.clip(np.sin(np.pi * (frames - 45) / 70), 0, None) * ((frames >= 45) & (frames <= 115))
                    pose = np.cumsum(rng.standard_normal((F, 3)) * 0.05, axis=0) @ pose_mix
                    vis = (offset + pose + rng.standard_normal((F, D))
                           + 3.0 * expressive * p * bump[:, None] * pain_dir[None, :])
                    vpath = out / "features" / "visual" / subject / f"{sample}.npy"
                    vpath.parent.mkdir(parents=True, exist_ok=True)
                    np.save(vpath, vis.astype(np.float32))
                    rows.append({"subject_id": s, "subject_name": subject, "class_id": c, "class_name": cname,
                                 "sample_id": sid, "sample_name": sample})
                    sid += 1
        pd.DataFrame(rows).to_csv(out / "samples.csv", sep="\t", index=False)
        write_mimic_marker(out, cls.name, OmegaConf.to_container(m, resolve=True))
        return out

