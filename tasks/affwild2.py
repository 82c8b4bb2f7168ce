"""`affwild2`: Aff-Wild2 valence-arousal estimation (ABAW VA challenge), per frame.

On disk (docs/datasets.md#affwild2-files):
  <data_root>/<annotations_dir>/VA_Estimation_Challenge/{Train_Set,Validation_Set}/<track>.txt
      line 1 `valence,arousal`, then one `v,a` line per video frame (frame k = line k+1), values in [-1, 1],
      `-5` = invalid / unannotated frame. annotations_dir is found automatically (the edition-specific
      `<N>th ABAW Annotations` folder, or data_root itself) unless task.annotations_dir names it.
      A video with two annotated people gives `<video>_left` and `<video>_right` tracks.
  <features_root>/<track>.npy    visual features float [frames, D], row k = frame k+1 (default
      <data_root>/features/visual), written from the face crops or the videos by `harness extract task=affwild2`
      with an EXTRACTED.json beside them that every record copies (data_info).
  <audio_root>/<video>.wav       the video's audio track, one per VIDEO (its _left/_right tracks share it;
      default <data_root>/audio; `harness extract` writes the missing ones, 16 kHz mono, from the videos).
  <data_root>/video_fps.csv      optional, comma-separated `video,fps`: each video's frame rate (read it from the
      video, e.g. cv2.CAP_PROP_FPS). Videos it does not list get fps = annotation lines / wav duration (true
      when the annotation has one line per video frame and the wav spans the video); task.fps=<number>
      forces one rate for all.

Modalities: `visual` (the student's) and `audio` (privileged), computed here with librosa: the wav resampled
to task.audio.sample_rate (mono), a log-mel spectrogram (n_mels, 25 ms windows, 10 ms hop, dB with a
-100 dB floor), averaged over the mel frames that fall inside each video frame [k/fps, (k+1)/fps) (frames
with none get linear interpolation), so audio row k belongs to video frame k+1 like the labels.
Every frame is stored once (one float32 array per modality); a window is an index into it (harness.data.
FrameWindows), gathered per batch, so the stride costs no memory; z-scoring is done once, in place, on the stored
frames. Tracks are cut into windows of task.window frames (stride task.train_stride) for training; validation
(held-out training videos) and test (the official Validation_Set) are cut into non-overlapping windows
that cover every frame once, the padded tail masked. Predictions are per frame (id `<track>:<frame>`,
1-based), invalid frames masked out of losses and metrics. Metric: CCC of valence and of arousal over all
valid frames of all test tracks concatenated (population moments), and their mean ccc_mean (primary).

Cleaning steps (counted in the record's data_info.cleaning): tracks whose frames are all invalid are left out;
feature/annotation length differences up to task.max_length_mismatch frames are trimmed to the common
length (more is an error); audio frames past the end of the wav get the silence floor; non-finite features
become 0 after the float32 cast.
"""

from __future__ import annotations

import os
import re
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from harness.cache import cached_arrays
from harness.data import FoldData, FrameWindows, Split, TargetSpec, TaskSpec, zero_padded_store
from harness.errors import ConfigError
from harness.extract.sources import VIDEO_SUFFIXES, Item, Plan
from harness.registry import register_task
from harness.task import Task, TaskError
from tasks._common import (Cleaning, audit_split, check_memory, data_source_of, features_info, finite_float32,
                           holdout_groups, prepare_out_dir,
                           read_table, resolve_root, standardize_inputs, write_mimic_marker)

VA_DIR = "VA_Estimation_Challenge"
SETS = ("Train_Set", "Validation_Set")
INVALID = -5.0
SILENCE_DB = -100.0  # 10·log10(amin) with amin=1e-10: the log-mel floor
TRACK_SUFFIX = re.compile(r"_(left|right)$")

LAYOUT = f"""  <data_root>/<N>th ABAW Annotations/{VA_DIR}/Train_Set/<track>.txt        (header valence,arousal; -5 = invalid)
  <data_root>/<N>th ABAW Annotations/{VA_DIR}/Validation_Set/<track>.txt
  <features_root>/<track>.npy     (visual features [frames, D]; default <data_root>/features/visual)
  <audio_root>/<video>.wav        (one per video, _left/_right tracks share it; default <data_root>/audio)
  <data_root>/video_fps.csv       (optional: video,fps)
  e.g. task.data_root=/data/Aff-Wild2"""


def video_of(track: str) -> str:
    """`10-60-1280x720_right` -> `10-60-1280x720`: the two people of one video share its audio."""
    return TRACK_SUFFIX.sub("", track)


def find_va_root(root: Path, annotations_dir: str | None) -> Path | None:
    """The folder holding VA_Estimation_Challenge/ (None when there is none)."""
    if annotations_dir not in (None, "", "auto"):
        cand = root / annotations_dir
        return cand if (cand / VA_DIR).is_dir() else None
    if (root / VA_DIR).is_dir():
        return root
    found = sorted(p.parent for p in root.glob(f"*/{VA_DIR}") if p.is_dir())
    if len(found) > 1:
        raise TaskError(f"{root} holds several annotation folders with {VA_DIR}/: {[p.name for p in found]}; "
                        f"choose one with task.annotations_dir=<folder name>")
    return found[0] if found else None


def read_va(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One VA annotation file -> (values float64 [N, 2], valid bool [N]); -5 in either column = invalid frame."""
    fix = ("Aff-Wild2 VA files are comma-separated: a first line `valence,arousal`, then one `v,a` line per "
           "video frame (-5 = invalid)")
    df = read_table(path, ["valence", "arousal"], ",", fix)
    values = df[["valence", "arousal"]].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64, copy=True)
    bad_text = np.isnan(values).any(axis=1) & df[["valence", "arousal"]].notna().all(axis=1).to_numpy()
    if bad_text.any() or np.isinf(values).any():
        line = int(np.flatnonzero(bad_text | np.isinf(values).any(axis=1))[0]) + 2
        raise TaskError(f"{path} line {line}: {df.iloc[line - 2].tolist()} is not two numbers; {fix}")
    invalid = (values == INVALID).any(axis=1) | np.isnan(values).any(axis=1)
    out_of_range = ~invalid & (np.abs(values) > 1 + 1e-6).any(axis=1)
    if out_of_range.any():
        rows = np.flatnonzero(out_of_range)
        raise TaskError(f"{path}: labels out of range on {len(rows)} line(s), first line {rows[0] + 2}: "
                        f"{values[rows[0]].tolist()}; valence and arousal lie in [-1, 1] and -5 marks an invalid "
                        f"frame. Fix the file (or re-download it)")
    values[invalid] = 0.0
    return values, ~invalid


def read_fps_table(path: Path) -> dict[str, float]:
    df = read_table(path, ["video", "fps"], ",", "video_fps.csv is comma-separated with a header `video,fps`")
    fps = pd.to_numeric(df["fps"], errors="coerce")
    bad = fps.isna() | (fps <= 0)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise TaskError(f"{path} line {i + 2}: fps {df['fps'].iloc[i]!r} for video {df['video'].iloc[i]!r} is not a "
                        f"positive number; fix the line")
    return dict(zip(df["video"].astype(str).str.strip(), fps.astype(float)))


def pool_to_frames(logmel: np.ndarray, hop_s: float, n_frames: int, fps: float) -> tuple[np.ndarray, int]:
    """Average mel frames (centred at j·hop_s) over video frames [k/fps, (k+1)/fps); [n_frames, n_mels], #past-end.

    Video frames with no mel frame inside (fps above the mel rate) are linearly interpolated; frames past
    the end of the audio get the silence floor.
    """
    n_mels, n_mel_frames = logmel.shape
    k = np.floor(np.arange(n_mel_frames) * hop_s * fps).astype(np.int64)
    inside = k < n_frames
    sums = np.zeros((n_frames, n_mels))
    np.add.at(sums, k[inside], logmel[:, inside].T)
    counts = np.bincount(k[inside], minlength=n_frames)[:n_frames]
    out = np.full((n_frames, n_mels), SILENCE_DB)
    have = counts > 0
    out[have] = sums[have] / counts[have, None]
    audio_end = int(np.ceil(n_mel_frames * hop_s * fps))  # first video frame entirely past the audio
    past_end = np.arange(n_frames) >= audio_end
    gaps = ~have & ~past_end
    if gaps.any() and have.sum() >= 1:
        idx = np.arange(n_frames)
        for d in range(n_mels):
            out[gaps, d] = np.interp(idx[gaps], idx[have], out[have, d])
    return out, int(past_end.sum())


def audio_features(wav: Path, n_frames: int, fps: float, acfg) -> tuple[np.ndarray, int]:
    """Log-mel features of one video's wav, one row per video frame: ([n_frames, n_mels] float32, #padded)."""
    import librosa

    try:
        y, sr = librosa.load(wav, sr=int(acfg.sample_rate), mono=True)
    except Exception as e:  # soundfile / audioread raise many types; all mean "not a readable audio file"
        raise TaskError(f"cannot read audio {wav} ({type(e).__name__}: {e}); it must be a wav file "
                        f"(ffmpeg -i <video> -ac 1 -ar 16000 {wav.name})") from None
    if not np.all(np.isfinite(y)):
        y = np.nan_to_num(y, nan=0.0, posinf=0.0, neginf=0.0)
    win = int(round(acfg.win_ms * sr / 1000))
    hop = int(round(acfg.hop_ms * sr / 1000))
    mel = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=win, hop_length=hop, win_length=win,
                                         n_mels=int(acfg.n_mels), fmin=float(acfg.fmin),
                                         fmax=None if acfg.fmax is None else float(acfg.fmax), center=True)
    logmel = librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None)
    feats, past_end = pool_to_frames(logmel, hop / sr, n_frames, fps)
    return feats.astype(np.float32), past_end


def window_starts(n: int, window: int, stride: int | None = None) -> np.ndarray:
    """Window starts over frames 0..n-1.

    stride None (evaluation): non-overlapping windows that cover every frame once, the last one padded.
    Otherwise (training): a window every `stride` frames, plus one ending at the last frame when the
    stride skips the tail; a track shorter than the window gives one padded window.
    """
    if stride is None:
        return np.arange(0, n, window)
    starts = np.arange(0, max(n - window, 0) + 1, stride)
    if starts[-1] + window < n:
        starts = np.append(starts, n - window)
    return starts


def index_videos(folder: Path, skip: list[Path]) -> dict[str, Path]:
    """{stem: path} of the video files under `folder`, not descending into `skip` (crop and feature folders)."""
    skip_set = {os.path.realpath(p) for p in skip}
    found: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if os.path.realpath(os.path.join(dirpath, d)) not in skip_set
                       and d not in ("cropped_aligned", "cropped")]
        for f in filenames:
            stem, ext = os.path.splitext(f)
            if ext.lower() in VIDEO_SUFFIXES:
                if stem in found:
                    raise TaskError(f"two videos named {stem}: {found[stem]} and {Path(dirpath) / f}; keep one, or "
                                    f"point extract.videos_dir at one folder")
                found[stem] = Path(dirpath) / f
    return found


@register_task
class AffWild2(Task):
    name = "affwild2"
    bootstrap_unit = "video"  # Split.groups = the video of each track window; frames are never units
    description = "Aff-Wild2 valence/arousal per frame: face features -> VA; audio privileged"
    mimic_version = 2  # bump when write_mimic changes: source=mimic then writes a fresh tree
    published = [
        {"method": "MT-PKDOT vs its visual-only baseline",
         "metrics": {"ccc_valence": "+3 % (gain over the visual-only baseline)",
                     "ccc_arousal": "+5 % (gain over the visual-only baseline)"},
         "citation": "Aslam, Pedersoli, Koerich, Granger, 'Multi Teacher Privileged Knowledge Distillation for "
                     "Multimodal Expression Recognition', arXiv:2408.09035 (2024), abstract",
         "setting": "valence/arousal on the official validation set (test labels are withheld), audio privileged",
         "note": "DELTAS claimed in the abstract, not CCC values; absolute or relative is not stated. The paper's "
                 "per-method tables were not available here and are not reproduced."},
        {"method": "PKDOT",
         "metrics": {"ccc_mean": "claim only: outperforms state-of-the-art privileged KD methods (no number)"},
         "citation": "Aslam, Zeeshan, Belharbi, Pedersoli, Koerich, Bacon, Granger, 'Distilling Privileged "
                     "Multimodal Information for Expression Recognition using Optimal Transport', arXiv:2401.15489 "
                     "(IEEE FG 2024), abstract",
         "setting": "valence/arousal, audio privileged",
         "note": "a qualitative CLAIM of the abstract; no number is stated there and none is given here."},
        {"method": "M2PKD (privileged KD baseline)",
         "metrics": {"ccc_arousal": "+2 % (improvement claimed in the abstract)"},
         "citation": "Aslam et al., 'Privileged Knowledge Distillation for Dimensional Emotion Recognition in the "
                     "Wild', CVPR Workshops 2023, abstract",
         "setting": "arousal, audio privileged",
         "note": "a DELTA claimed in the abstract, not a CCC value; its reference model is not restated here."},
    ]

    def __init__(self, cfg):
        super().__init__(cfg)
        c = self.cfg
        if int(c.window) < 1 or int(c.train_stride) < 1:
            raise TaskError(f"task.window={c.window} and task.train_stride={c.train_stride} must be >= 1 frame")
        self.full_protocol  # noqa: B018 -- validates task.protocol up front
        self._standardized = False  # load_fold standardises the stored frames in place, once
        if c.fps != "auto":
            try:
                ok = float(c.fps) > 0
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise TaskError(f"task.fps={c.fps!r}: use auto (video_fps.csv, else annotation lines / wav duration) "
                                f"or a positive number of frames per second")

    # --- where the data is ------------------------------------------------------------------------
    @cached_property
    def root(self) -> Path:
        ann = self.cfg.get("annotations_dir")
        return resolve_root(self.cfg, self.name, self.write_mimic, lambda r: find_va_root(r, ann) is not None, LAYOUT,
                            self.mimic_version)

    @property
    def data_source(self) -> str:
        return data_source_of(self.root, self.features_root)

    def _under_root(self, key: str, default: str) -> Path:
        v = self.cfg.get(key)
        return Path(v) if v and self.cfg.source == "real" else self.root / default

    @property
    def features_root(self) -> Path:
        return self._under_root("features_root", "features/visual")

    @property
    def audio_root(self) -> Path:
        return self._under_root("audio_root", "audio")

    # --- contract ---------------------------------------------------------------------------------
    @property
    def spec(self) -> TaskSpec:
        d = self._dataset
        modalities = {"visual": d["visual_dim"], "audio": d["audio_dim"]}
        return TaskSpec(modalities=modalities, student_modalities=self.test_modalities(("visual",), modalities),
                        target=TargetSpec("regression", ("valence", "arousal"), per_step=True),
                        metrics=("ccc_mean", "ccc_valence", "ccc_arousal"))

    @property
    def n_folds(self) -> int:
        return 1

    @property
    def config_n_folds(self) -> int:
        return self.n_folds

    def variant(self) -> str:
        return (f"valence/arousal per frame, official Validation_Set as test, windows of {self.cfg.window}"
                + self.protocol_suffix())

    def source_files(self) -> list[Path]:
        """The annotation files of both sets, each track's visual features, each video's wav, any file directly in
        features_root (a sidecar describing the extractor) and video_fps.csv: listed by name, never read."""
        va_root = find_va_root(self.root, self.cfg.get("annotations_dir"))
        if va_root is None:
            raise TaskError(f"no {VA_DIR}/ under {self.root} (task.annotations_dir={self.cfg.get('annotations_dir')})."
                            f"\n{LAYOUT}")
        files: list[Path] = []
        for set_name in SETS:
            for path in sorted((va_root / VA_DIR / set_name).glob("*.txt")):
                files.append(path)
                for p in (self.features_root / f"{path.stem}.npy", self.audio_root / f"{video_of(path.stem)}.wav"):
                    if p.is_file():
                        files.append(p)
        if self.features_root.is_dir():
            files += [p for p in self.features_root.iterdir() if p.is_file() and p.suffix != ".npy"]
        if (fps := self.root / str(self.cfg.fps_file)).is_file():
            files.append(fps)
        return list(dict.fromkeys(files))  # a video's wav is shared by its _left/_right tracks

    def extract_plan(self, extract_cfg) -> Plan:
        """`harness extract task=affwild2`: <frames_dir>/<track>/<frame:05d>.jpg (default <data_root>/cropped_aligned),
        or the video <video>.mp4 found under extract.videos_dir (default the data root; a two-person video's
        _left/_right tracks read that half of the frame) -> <features_root>/<track>.npy with exactly one row per
        annotation line (row k = line k+1 = frame k), for every track of VA_Estimation_Challenge/{Train_Set,
        Validation_Set}; <audio_root>/<video>.wav from the video when absent (extract.audio); <data_root>/
        <fps_file> from the videos' frame rates when absent."""
        root = self.root
        va_root = find_va_root(root, self.cfg.get("annotations_dir"))
        tracks: dict[str, int] = {}
        for set_name in SETS:
            for p in sorted((va_root / VA_DIR / set_name).glob("*.txt")):
                tracks[p.stem] = len(read_va(p)[0])
        if not tracks:
            raise TaskError(f"no annotation files under {va_root / VA_DIR}/{{{','.join(SETS)}}}/: nothing to extract")
        frames_dir = Path(extract_cfg.frames_dir) if extract_cfg.get("frames_dir") else root / "cropped_aligned"
        mode = extract_cfg.input
        if mode == "auto":
            mode = "frames" if frames_dir.is_dir() else "video"
        elif mode == "frames" and not frames_dir.is_dir():
            raise ConfigError(f"extract.input=frames: no frame folder {frames_dir} (set extract.frames_dir)")
        videos_dir = Path(extract_cfg.videos_dir) if extract_cfg.get("videos_dir") else root
        audio_root = self.audio_root
        need_wav = sorted({video_of(t) for t in tracks if not (audio_root / f"{video_of(t)}.wav").is_file()}) \
            if extract_cfg.audio else []
        fps_file = root / self.cfg.fps_file
        videos = (index_videos(videos_dir, [frames_dir, self.features_root, audio_root, va_root])
                  if mode == "video" or need_wav or not fps_file.is_file() else {})
        items = []
        for track, rows in tracks.items():
            key = f"{track}.npy"
            out = str(self.features_root / key)
            if mode == "frames":
                items.append(Item(key, out, "frames", str(frames_dir / track), rows))
            else:
                v = video_of(track)
                half = track.rsplit("_", 1)[1] if v != track else None
                src = videos.get(v)
                items.append(Item(key, out, "video", str(src) if src else str(videos_dir / f"{v}.mp4"), rows, half))
        wavs = [(v, videos.get(v), audio_root / f"{v}.wav") for v in need_wav]
        facts = {"input": mode, "annotations": str(va_root / VA_DIR)}
        facts.update({"frames_dir": str(frames_dir)} if mode == "frames" else
                     {"videos_dir": str(videos_dir), "two_person_tracks": "left/right half of the frame"})
        if need_wav:
            facts["videos_dir"] = str(videos_dir)
        annotated = {v: videos[v] for v in sorted({video_of(t) for t in tracks}) if v in videos}
        return Plan(self.features_root, items, wavs, facts, None if fps_file.is_file() else fps_file, annotated)

    # --- loading ----------------------------------------------------------------------------------
    @cached_property
    def _tracks(self) -> tuple[dict[str, list[dict]], Cleaning, dict]:
        """Annotations + visual features of every track of both sets (audio comes from `_audio`)."""
        c, cleaning = self.cfg, Cleaning()
        va_root = find_va_root(self.root, c.get("annotations_dir"))
        if va_root is None:
            raise TaskError(f"no {VA_DIR}/ under {self.root} (task.annotations_dir={c.get('annotations_dir')}).\n{LAYOUT}")
        tol = int(c.max_length_mismatch)
        sets: dict[str, list[dict]] = {}
        dim = None
        for set_name in SETS:
            folder = va_root / VA_DIR / set_name
            if not folder.is_dir():
                raise TaskError(f"missing folder {folder}; the VA challenge annotations come as {VA_DIR}/Train_Set and "
                                f"{VA_DIR}/Validation_Set (check task.data_root / task.annotations_dir)")
            files = sorted(folder.glob("*.txt"))
            if not files:
                raise TaskError(f"{folder} holds no <track>.txt annotation files")
            tracks = []
            for path in files:
                track = path.stem
                va, valid = read_va(path)
                if not valid.any():
                    cleaning.add("tracks_all_frames_invalid_left_out", 1, f"{set_name}/{track}")
                    continue
                fpath = self.features_root / f"{track}.npy"
                if not fpath.is_file():
                    raise TaskError(f"missing visual features {fpath} for track {track} ({path}). Each annotated "
                                    f"track needs <features_root>/<track>.npy [frames, D] (task.features_root; "
                                    f"layout below).\n{LAYOUT}")
                try:
                    vis = np.load(fpath, mmap_mode="r", allow_pickle=False)
                except (ValueError, OSError) as e:
                    raise TaskError(f"cannot read visual features {fpath} ({e}); expected a .npy float array "
                                    f"[frames, dims]") from None
                if vis.ndim != 2 or vis.dtype.kind not in "fiu":
                    raise TaskError(f"{fpath} holds a {vis.dtype} array of shape {vis.shape}; expected [frames, dims]")
                dim = vis.shape[1] if dim is None else dim
                if vis.shape[1] != dim:
                    raise TaskError(f"{fpath} has {vis.shape[1]} feature dims, other tracks have {dim}; all tracks "
                                    f"need features from the same extractor")
                n = len(va)
                if len(vis) != n:
                    if abs(len(vis) - n) > tol:
                        raise TaskError(f"{fpath} has {len(vis)} frames but {path} annotates {n}: lengths disagree by "
                                        f"more than task.max_length_mismatch={tol} frames. Re-extract the features "
                                        f"with one row per video frame, or raise task.max_length_mismatch to trim")
                    cleaning.add("tracks_length_trimmed", 1, f"{track}: features {len(vis)}, annotations {n}")
                    cleaning.add("frames_dropped_length_mismatch", abs(len(vis) - n))
                    n = min(n, len(vis))
                    va, valid = va[:n], valid[:n]
                # still memory-mapped: read (cast, cleaned) once, into the frame store of `_dataset`
                tracks.append({"track": track, "video": video_of(track), "set": set_name, "va": va, "valid": valid,
                               "visual": vis[:n], "path": str(path), "features_path": str(fpath)})
            if not tracks:
                raise TaskError(f"every track in {folder} has only invalid (-5) frames: nothing to train or test on")
            sets[set_name] = tracks
        return sets, cleaning, {"va_root": str(va_root)}

    def _fps(self, videos: dict[str, int]) -> tuple[dict[str, float], dict]:
        """Frame rate of each video (see the module doc) and how many came from where."""
        c = self.cfg
        if c.fps != "auto":
            return {v: float(c.fps) for v in videos}, {"fixed": len(videos)}
        table_path = self.root / c.fps_file
        table = read_fps_table(table_path) if table_path.is_file() else {}
        import soundfile

        out, n_table, n_inferred = {}, 0, 0
        for v, n_frames in videos.items():
            if v in table:
                out[v], n_table = table[v], n_table + 1
            else:
                wav = self.audio_root / f"{v}.wav"
                self._check_wav(wav, v)
                out[v], n_inferred = n_frames / soundfile.info(str(wav)).duration, n_inferred + 1
        return out, {"video_fps.csv": n_table, "inferred_lines_over_wav_duration": n_inferred}

    def _check_wav(self, wav: Path, video: str) -> None:
        if not wav.is_file():
            raise TaskError(f"missing audio {wav} for video {video}; the harness computes the audio features from one "
                            f"wav per video (its _left/_right tracks share it): `harness extract task=affwild2 "
                            f"task.data_root=...` writes it from the video, or e.g. "
                            f"`ffmpeg -i <video file> -ac 1 -ar 16000 {wav}` (task.audio_root sets the folder)")

    def _audio(self, videos: dict[str, int], cleaning: Cleaning) -> tuple[dict[str, np.ndarray], dict]:
        fps, fps_info = self._fps(videos)
        wavs = []
        for v in videos:
            wav = self.audio_root / f"{v}.wav"
            self._check_wav(wav, v)
            wavs.append(wav)
        names = list(videos)
        config = {"audio": OmegaConf.to_container(self.cfg.audio, resolve=True), "version": 1,
                  "frames": [[v, int(videos[v]), round(float(fps[v]), 6)] for v in names]}
        tol = int(self.cfg.max_length_mismatch)

        def build():
            feats, padded = [], []
            for v, wav in zip(names, wavs):
                x, past_end = audio_features(wav, videos[v], fps[v], self.cfg.audio)
                if past_end > tol:
                    raise TaskError(f"{wav} ends {past_end} video frames before the annotation ends ({videos[v]} "
                                    f"frames at {fps[v]:.3f} fps): more than task.max_length_mismatch={tol}. Check the "
                                    f"wav is the whole video's audio and the fps (video_fps.csv / task.fps)")
                feats.append(x)
                padded.append(past_end)
            return {"video": np.array(names, dtype=str), "audio": feats, "padded": np.array(padded, dtype=np.int64)}

        arrays, hit = cached_arrays("affwild2-audio", wavs, config, build, self.cfg.cache_dir or ".cache")
        padded = np.asarray(arrays["padded"])
        if padded.sum():
            cleaning.add("audio_frames_past_wav_end_silence", int(padded.sum()), names[int(np.flatnonzero(padded)[0])])
        out = {v: finite_float32(a, cleaning, "audio_nonfinite_features_zeroed", v) for v, a in zip(names, arrays["audio"])}
        fps_vals = np.array([fps[v] for v in names])
        return out, {"cache_hit": bool(hit), "fps_source": fps_info,
                     "fps_range": [float(fps_vals.min()), float(fps_vals.max())]}

    @cached_property
    def _dataset(self) -> dict:
        sets, cleaning, facts = self._tracks
        videos: dict[str, int] = {}
        for tracks in sets.values():
            for t in tracks:
                videos[t["video"]] = max(videos.get(t["video"], 0), len(t["va"]))
        every = [t for name in SETS for t in sets[name]]
        offsets = np.concatenate([[0], np.cumsum([len(t["va"]) for t in every])])
        dims = {"visual": int(every[0]["visual"].shape[1]), "audio": int(self.cfg.audio.n_mels)}
        check_memory(int(offsets[-1]) * sum(dims.values()) * 4, f"Aff-Wild2's {int(offsets[-1])} frames x "
                     f"{dims['visual']} visual + {dims['audio']} audio dims as float32 ({len(every)} tracks under "
                     f"{self.features_root})")
        audio, ainfo = self._audio(videos, cleaning)
        # One store per modality holds every frame of every track once (FrameWindows' zero row last); each
        # track's arrays become views of it, so the memory maps and the per-video audio arrays are let go.
        stores = {m: zero_padded_store(int(offsets[-1]), d) for m, d in dims.items()}
        for t, start in zip(every, offsets[:-1]):
            n = len(t["va"])
            stores["visual"][start:start + n] = finite_float32(t["visual"], cleaning, "visual_nonfinite_features_zeroed",
                                                               t["features_path"])
            stores["audio"][start:start + n] = audio[t["video"]][:n]
            t.update(offset=int(start), visual=stores["visual"][start:start + n],
                     audio=stores["audio"][start:start + n])
        del audio
        return {"sets": sets, "cleaning": cleaning, "facts": {**facts, "audio": ainfo}, "stores": stores,
                "visual_dim": dims["visual"], "audio_dim": dims["audio"]}

    def _windows(self, tracks: list[dict], stride: int | None, drop_empty: bool, cleaning: Cleaning | None = None) -> Split:
        """Cut tracks into windows of task.window frames; padded tails and invalid frames are masked.

        The inputs are FrameWindows: an index (start in the frame store, length) per window over the frames that
        `_dataset` stores once, so overlapping training windows cost no memory; the targets, mask and frame
        numbers (a few bytes per step) are arrays."""
        L = int(self.cfg.window)
        rows = [(ti, s) for ti, t in enumerate(tracks) for s in window_starts(len(t["va"]), L, stride)]
        if drop_empty:
            kept = [(ti, s) for ti, s in rows if tracks[ti]["valid"][s:s + L].any()]
            if cleaning is not None:
                cleaning.add("train_windows_without_valid_frames_dropped", len(rows) - len(kept))
            rows = kept
        ti = np.array([r[0] for r in rows], dtype=np.int64)
        first = np.array([r[1] for r in rows], dtype=np.int64)  # frame index within the track
        track_len = np.array([len(t["va"]) for t in tracks], dtype=np.int64)[ti]
        lengths = np.minimum(first + L, track_len) - first
        starts = np.array([t["offset"] for t in tracks], dtype=np.int64)[ti] + first
        stores = self._dataset["stores"]
        steps = np.arange(L, dtype=np.int64)
        inside = steps[None, :] < lengths[:, None]
        frame = np.where(inside, starts[:, None] + steps[None, :], 0)
        every = [t for name in SETS for t in self._dataset["sets"][name]]
        va = np.concatenate([t["va"] for t in every]).astype(np.float32)  # float64 -> float32, as assigned before
        valid = np.concatenate([t["valid"] for t in every])
        y = np.where(inside[..., None], va[frame], np.float32(0))
        mask = inside & valid[frame]
        step = np.where(inside, first[:, None] + steps[None, :] + 1, 0)  # 1-based frame numbers, as the annotation lines
        return Split(ids=np.array([tracks[i]["track"] for i in ti], dtype=str),
                     groups=np.array([tracks[i]["video"] for i in ti], dtype=str),
                     inputs={m: FrameWindows(stores[m], starts, lengths, L) for m in ("visual", "audio")},
                     targets=y, lengths={"visual": lengths, "audio": lengths.copy()}, target_mask=mask, step_index=step)

    def load_fold(self, fold: int) -> FoldData:
        self.check_fold(fold)
        c = self.cfg
        d = self._dataset
        sets, cleaning = d["sets"], d["cleaning"]
        train_tracks, test_tracks = sets["Train_Set"], sets["Validation_Set"]
        keep, held = holdout_groups(np.array([t["video"] for t in train_tracks]), float(c.val_fraction),
                                    int(c.data_seed))
        fit_tracks, val_tracks = [train_tracks[i] for i in keep], [train_tracks[i] for i in held]
        part = lambda ts: (np.array([t["track"] for t in ts]), np.array([t["video"] for t in ts]))
        audit = audit_split({"train": part(fit_tracks), "val": part(val_tracks), "test": part(test_tracks)},
                            "affwild2 (train = Train_Set minus held-out videos, val = held-out Train_Set videos, "
                            "test = Validation_Set)", bool(c.strict_splits), group_name="video")
        window_cleaning = Cleaning()
        train = self._windows(fit_tracks, int(c.train_stride), drop_empty=True, cleaning=window_cleaning)
        val = self._windows(val_tracks, None, drop_empty=False)
        test = self._windows(test_tracks, None, drop_empty=False)
        if c.standardize and not self._standardized:
            # In place, on the stored frames, once: the statistics depend on the task config alone (one fold),
            # so a second load_fold finds the frames standardised already.
            standardize_inputs(train, (val, test), ("visual", "audio"))
            self._standardized = True
        cleaning.warn(self.name)
        info = {"protocol": "official: Train_Set (minus held-out videos) / Validation_Set as test",
                "split_audit": audit, "cleaning": {**cleaning.as_info(), "windows": window_cleaning.as_info()["counts"]},
                **d["facts"], "data_root": str(self.root),
                "visual_features": features_info(self.features_root),
                "n_tracks": {"train": len(fit_tracks), "val": len(val_tracks), "test": len(test_tracks)},
                "n_valid_frames": {"train": int(train.target_mask.sum()), "val": int(val.target_mask.sum()),
                                   "test": int(test.target_mask.sum())},
                "validation": f"{c.val_fraction} of the Train_Set videos held out"}
        return FoldData(train=train, val=val, test=test, info=info)

    # --- mimic ------------------------------------------------------------------------------------
    @classmethod
    def write_mimic(cls, out_dir: Path, cfg: DictConfig) -> Path:
        """An Aff-Wild2 tree in the real format (VA txt files, _left/_right tracks, .npy features, wavs), NOT real data.

        Planted relation: each track's valence and arousal are smooth random curves in [-1, 1] (the two
        people of a video share most of their arousal). The audio's spectral tilt follows the video's arousal
        and a voiced tone's pitch its valence (loudness is constant); the face features are a noisy linear
        image of the track's own valence (clear) and arousal (faint). Audio is the privileged view that
        explains arousal; runs of -5 mark invalid frames.
        """
        import soundfile
        from scipy.ndimage import gaussian_filter1d
        from scipy.signal import butter, sosfilt

        out = prepare_out_dir(Path(out_dir))
        m = cfg.mimic
        rng = np.random.default_rng(int(m.seed))
        D, sr = int(m.visual_dim), 16000
        ann = out / "ABAW Annotations" / VA_DIR
        W_v = rng.standard_normal((2, D)) / np.sqrt(D) * np.array([[1.2], [0.4]])  # valence clear, arousal faint
        lowpass = butter(4, 800, btype="lowpass", fs=sr, output="sos")
        highpass = butter(4, 2500, btype="highpass", fs=sr, output="sos")

        def smooth(n, sigma):
            z = gaussian_filter1d(rng.standard_normal(n), sigma)
            return z / (z.std() + 1e-9)

        fps_rows = []
        counter = 0
        n_two = int(m.two_person_videos)
        for set_name, n_videos in (("Train_Set", int(m.n_train_videos)), ("Validation_Set", int(m.n_val_videos))):
            (ann / set_name).mkdir(parents=True, exist_ok=True)
            for i in range(n_videos):
                counter += 1
                fps = (30.0, 25.0)[counter % 2]
                video = f"video{counter}" if counter % 3 else f"{counter}-{int(fps)}-640x360"
                n = int(rng.integers(int(m.min_frames), int(m.max_frames) + 1))
                # the first videos of each set get two people (_left/_right): ceil(n/2) in train, the rest in val
                two = i < ((n_two + 1) // 2 if set_name == "Train_Set" else n_two // 2)
                shared_arousal = smooth(n, 25)
                tracks = [f"{video}_left", f"{video}_right"] if two else [video]
                vals, aros = [], []
                for track in tracks:
                    val = np.tanh(0.9 * smooth(n, 30))
                    aro = np.tanh(0.9 * (0.8 * shared_arousal + 0.6 * smooth(n, 25)))
                    valid = np.ones(n, bool)
                    for _ in range(int(rng.integers(0, 3))):  # face-absent runs
                        s0 = int(rng.integers(0, n - 20))
                        valid[s0:s0 + int(rng.integers(10, 40))] = False
                    va = np.stack([val, aro], 1)
                    text = "valence,arousal\n" + "".join(f"{v:.3f},{a:.3f}\n" if ok else "-5,-5\n"
                                                         for (v, a), ok in zip(va, valid))
                    (ann / set_name / f"{track}.txt").write_text(text)
                    vis = (va @ W_v + rng.standard_normal(D) * 0.5 + rng.standard_normal((n, D)) * 1.0
                           + np.cumsum(rng.standard_normal((n, D)) * 0.02, axis=0))
                    fpath = out / "features" / "visual" / f"{track}.npy"
                    fpath.parent.mkdir(parents=True, exist_ok=True)
                    np.save(fpath, vis.astype(np.float32))
                    vals.append(val)
                    aros.append(aro)
                # audio of the whole video, driven by the mean of its people's labels
                n_samples = int(round(n / fps * sr))
                t_frames = (np.arange(n) + 0.5) / fps
                t_samp = np.arange(n_samples) / sr
                aro_s = np.interp(t_samp, t_frames, np.mean(aros, 0))
                val_s = np.interp(t_samp, t_frames, np.mean(vals, 0))
                tilt = 1 / (1 + np.exp(-2.5 * aro_s))
                noise_lo = sosfilt(lowpass, rng.standard_normal(n_samples))
                noise_hi = sosfilt(highpass, rng.standard_normal(n_samples))
                phase = 2 * np.pi * np.cumsum(180 + 80 * val_s) / sr
                y = 0.1 * ((1 - tilt) * noise_lo + tilt * noise_hi * 1.5 + 0.6 * np.sin(phase))
                wav = out / "audio" / f"{video}.wav"
                wav.parent.mkdir(parents=True, exist_ok=True)
                soundfile.write(wav, np.clip(y, -1, 1).astype(np.float32), sr, subtype="PCM_16")
                fps_rows.append({"video": video, "fps": fps})
        pd.DataFrame(fps_rows).to_csv(out / "video_fps.csv", index=False)
        write_mimic_marker(out, cls.name, OmegaConf.to_container(m, resolve=True))
        return out
