"""`synthetic`: a privileged task generated in memory in a second, built like the real problem.

Generator (all from `data_seed`):
- Each sample n of subject s has latent label factors u_n ~ N(0, I_L) (L = latent_dim).
- Targets: regression = (valence, arousal) = tanh(0.9·u·a_v), tanh(0.9·u·a_a) + label_noise·N(0,1),
  two random unit directions a_v, a_a; classes = ordinal level of u·a_p cut at the quintiles of the
  generated scores (5 levels 0..4), or with n_classes=2 only the lowest and highest level (0 vs 1,
  like Biovid's BL1 vs PA4).
- Student modality "visual" [T, visual_dim]: the latent shows only during an event window of
  event_fraction·T steps at a random onset (a Hann bump e_t), and is mixed NON-linearly
  (two random tanh layers) with a subject style vector, a per-sample random-walk nuisance of
  nuisance_dim dims and a per-subject offset (subject_shift), plus visual_noise. All the label
  information is there, but it is hard to read from few samples.
- Privileged "physio" [T, physio_dim]: a LINEAR image of all of u at every step, plus a slow drift
  and privileged_noise: easy. Optional privileged "audio" [T, audio_dim]: a linear image of half of
  the latent factors, noisier; it helps, but alone it cannot explain the labels (a weaker teacher).
- Folds: GroupKFold over subjects (shuffled by data_seed); validation = val_fraction of the training
  subjects (GroupShuffleSplit), so model selection never sees test subjects.
- Knobs for the mechanisms by which privileged information can help (both off by default):
  `explained_label_noise` (label noise the physio stream shows and the face never does: what the
  privileged information can explain) and `labelled_per_subject` (fewer labelled training samples).
  `label_noise` is noise no stream shows (a clean privileged view lets a teacher smooth it away);
  `privileged_signal=0` makes the privileged streams pure noise (a negative control).

Recalibration (issue "Comparisons a reviewer can trust"), PRE-REGISTERED on 2026-12-01 before any
distillation method was run on the new settings.
- Why: with the generator above (latent_gain 3.0, subject_shift 0.8) the regression student is selected
  at epoch 0-1 in every seed (validation CCC peaks at epoch 1 while the training loss keeps falling), and
  the 5-class student sits near chance (accuracy 0.21-0.30): the lower bound is a barely trained network
  and differences between methods are early-stopping noise.
- Criteria, judged on student and teacher runs ONLY (5 seeds, fold 0, both targets): the student's
  selected epoch >= 5 in every seed; the student clearly above chance (mean 5-class accuracy >= 0.40,
  mean regression CCC >= 0.45); the teacher at least 0.15 above the student.
- Screened with `python scripts/calibrate_synthetic.py --grid G --seeds S --methods student` (grids
  in that script; seed 0 unless said; student alone unless said):
  | candidate                          | regression CCC (selected epoch) | 5-class acc (selected) |
  | current (gain 3, shift .8)         | 0.42, 0.35 (1, 1) seeds 0-1      | 0.28, 0.23 (46, 22)    |
  | 100 samples per subject            | 0.40, 0.43 (0, 1) seeds 0-1      | 0.31, 0.33 (0, 1)      |
  | clearer face (gain 6, shift .4)    | 0.70 (59 of 60: the cap)         | 0.41 (35)              |
  | clearer face, lr 5e-4              | 0.73 (59 of 60: the cap)         | 0.34 (50)              |
  | much clearer (gain 10, shift .2,   | 0.90 (26): the teacher's 0.97 is | not run                |
  |   visual_noise .1)                 |   less than 0.15 above           |                        |
  | clearer face, min_delta 1e-3       | 0.70, 0.70 (42, 28); teacher     | 0.41, 0.39 (35, 31);   |
  |   (round3, seeds 0-1, + teacher)   |   0.97, 0.97                     |   teacher 0.74, 0.72   |
  The clearer face crept up by < 0.001 CCC an epoch until the 60-epoch cap; on a validation split of
  280 samples CCC's standard error is about 0.02, so such steps are noise: min_delta 1e-3 stops there.
- CHOSEN: task.latent_gain = 6.0, task.subject_shift = 0.4, train.min_delta = 0.001 (root default,
  every task: an improvement below 0.001 of a metric is noise at the validation sizes of this field);
  everything else as above; the two new knobs stay off. Risk stated in advance: the 5-class student
  met its floor only at the mean of two seeds (0.400); the 5-seed runs decide, and are reported
  whatever they show. These values become the defaults together with the re-run of the committed
  sweep (all six methods, both targets, the zeros controls), which had not started when this was written.
- OUTCOME on the 5 seeds (student and teacher runs of the committed sweep, fold 0; written after they ran):
  | target     | student (selected epochs)                          | teacher                        |
  | regression | CCC 0.696 0.698 0.700 0.675 0.726, mean 0.699      | 0.966 0.970 0.972 0.967 0.972, |
  |            |   (42, 28, 22, 6, 41)                              |   mean 0.969 (+0.270)          |
  | 5-class    | acc 0.409 0.391 0.353 0.362 0.453, mean 0.394      | 0.741 0.719 0.734 0.744 0.728, |
  |            |   (35, 31, 10, 21, 23)                             |   mean 0.733 (+0.339)          |
  Regression meets every criterion. 5-class meets the epoch and teacher-gap criteria but MISSES the
  accuracy floor: mean 0.394 < 0.40 (chance 0.20), the risk stated above. Left as pre-registered, not
  re-tuned; the leaderboard's 5-class section is read with that in mind.
  Addendum (2026-12-02): the committed records were re-run at da96294, whose temporal encoder computes the same
  function with other float32 round-off. Same seeds, same config: student CCC mean 0.703, 5-class accuracy mean
  0.410, which would pass the floor. The judgment above stands as made; the difference is run-to-run noise, and
  a criterion judged on 5 seeds sits inside it.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from sklearn.model_selection import GroupKFold, GroupShuffleSplit

from harness.data import FoldData, Split, TargetSpec, TaskSpec
from harness.registry import register_task
from harness.task import Task, TaskError

PRIVILEGED_CHOICES = ("physio", "audio")
# (key, label in the task variant, neutral value)
MECHANISM_KNOBS = (("privileged_signal", "privileged signal", 1.0), ("explained_label_noise", "explained label noise", 0.0),
                   ("labelled_per_subject", "labelled per subject", None))


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal(n)
    return v / np.linalg.norm(v)


def generate(cfg) -> dict[str, np.ndarray]:
    """All samples of the synthetic dataset (before any split), as numpy arrays."""
    rng = np.random.default_rng(cfg.data_seed)
    S, K, T, L, Q = cfg.n_subjects, cfg.samples_per_subject, cfg.seq_len, cfg.latent_dim, cfg.nuisance_dim
    N = S * K
    subject = np.repeat(np.arange(S), K)
    u = rng.standard_normal((N, L))

    # Event window: the latent shows in the face only briefly, at a random onset.
    width = max(2, int(round(cfg.event_fraction * T)))
    onset = rng.integers(0, T - width + 1, size=N)
    bump = np.hanning(width + 2)[1:-1]
    env = np.zeros((N, T))
    for n in range(N):
        env[n, onset[n]:onset[n] + width] = bump
    style = rng.standard_normal((S, Q))[subject]  # subject style
    walk = np.cumsum(rng.standard_normal((N, T, Q)) * 0.3, axis=1)  # per-sample nuisance
    h = np.concatenate([u[:, None, :] * env[..., None] * cfg.latent_gain, style[:, None, :] + walk], axis=-1)
    W1 = rng.standard_normal((L + Q, 64)) / np.sqrt(L + Q)
    W2 = rng.standard_normal((64, cfg.visual_dim)) / np.sqrt(64)
    offset = rng.standard_normal((S, cfg.visual_dim))[subject] * cfg.subject_shift
    visual = np.tanh(np.tanh(h @ W1) @ W2 * 1.5) + offset[:, None, :]
    visual += cfg.visual_noise * rng.standard_normal(visual.shape)

    drift = np.linspace(0, 1, T)[None, :, None]
    A_p = rng.standard_normal((L, cfg.physio_dim)) / np.sqrt(L)
    signal = float(cfg.get("privileged_signal", 1.0))  # 0: the privileged streams are pure noise
    physio = (signal * (u @ A_p))[:, None, :] * (1 + 0.2 * drift) \
        + cfg.privileged_noise * rng.standard_normal((N, T, cfg.physio_dim))
    half = max(1, L // 2)
    A_a = rng.standard_normal((half, cfg.audio_dim)) / np.sqrt(half)
    audio = (signal * (u[:, :half] @ A_a))[:, None, :] \
        + 3 * cfg.privileged_noise * rng.standard_normal((N, T, cfg.audio_dim))

    a_v, a_a, a_p = _unit(rng, L), _unit(rng, L), _unit(rng, L)
    valence = np.tanh(0.9 * u @ a_v) + cfg.label_noise * rng.standard_normal(N)
    arousal = np.tanh(0.9 * u @ a_a) + cfg.label_noise * rng.standard_normal(N)
    score = u @ a_p + cfg.label_noise * rng.standard_normal(N)
    explained = float(cfg.get("explained_label_noise", 0.0))
    if explained > 0:  # drawn last, so the streams above are the same whatever its value
        e = rng.standard_normal((N, 3))  # per-sample label noise of valence, arousal and the class score
        valence, arousal = valence + explained * e[:, 0], arousal + explained * e[:, 1]
        score = score + explained * e[:, 2]
        B = np.linalg.qr(rng.standard_normal((cfg.physio_dim, 3)))[0].T  # 3 orthonormal physio directions
        physio = physio + (e @ B)[:, None, :]  # the privileged stream shows it at every step; the face never does
    level = np.searchsorted(np.quantile(score, [0.2, 0.4, 0.6, 0.8]), score)  # 0..4
    return {"subject": subject, "visual": visual, "physio": physio, "audio": audio,
            "valence": valence, "arousal": arousal, "level": level}


@lru_cache(maxsize=8)
def _generate_cached(frozen: tuple) -> dict[str, np.ndarray]:
    from omegaconf import OmegaConf
    return generate(OmegaConf.create(dict(frozen)))


@register_task
class Synthetic(Task):
    name = "synthetic"
    # Split.groups = the subject. A subject's samples share its style and offset, so their errors are correlated:
    # on the committed runs a subject bootstrap's spread of the primary metric is 1.1-2.2 times a sample
    # bootstrap's. The subject is the independent unit (as for the folds, grouped by subject).
    bootstrap_unit = "subject"
    description = "synthetic privileged task generated in memory (seconds on a CPU); numbers labelled synthetic"

    def __init__(self, cfg):
        super().__init__(cfg)
        bad = [p for p in cfg.privileged if p not in PRIVILEGED_CHOICES]
        if bad or not cfg.privileged:
            raise TaskError(f"task.privileged={list(cfg.privileged)}: choose one or more of {list(PRIVILEGED_CHOICES)}")
        if cfg.target not in ("regression", "classes"):
            raise TaskError(f"task.target={cfg.target!r}: choose regression or classes")
        if cfg.target == "classes" and cfg.n_classes not in (2, 5):
            raise TaskError(f"task.n_classes={cfg.n_classes}: the synthetic task has 5 levels (5) or "
                            f"lowest-vs-highest (2)")
        self.full_protocol  # noqa: B018 -- validates task.protocol up front

    @property
    def data_source(self) -> str:
        return "synthetic"

    @property
    def n_folds(self) -> int:
        return int(self.cfg.n_folds)

    @property
    def config_n_folds(self) -> int:
        return self.n_folds

    @property
    def spec(self) -> TaskSpec:
        c = self.cfg
        dims = {"visual": c.visual_dim, "physio": c.physio_dim, "audio": c.audio_dim}
        modalities = {"visual": c.visual_dim, **{p: dims[p] for p in c.privileged}}
        if c.target == "regression":
            target = TargetSpec("regression", ("valence", "arousal"))
            metrics = ("ccc_mean", "ccc_valence", "ccc_arousal", "pearson_mean", "mae_mean")
        else:
            names = ("level0", "level1", "level2", "level3", "level4") if c.n_classes == 5 else ("low", "high")
            target = TargetSpec("classification", ("level",), n_classes=int(c.n_classes), class_names=names)
            metrics = ("accuracy", "f1_macro", "f1_weighted")
        return TaskSpec(modalities=modalities, student_modalities=self.test_modalities(("visual",), modalities),
                        target=target, metrics=metrics)

    def variant(self) -> str:
        c = self.cfg
        kind = "valence/arousal regression" if c.target == "regression" else f"{c.n_classes}-class"
        # the mechanism knobs change what the comparison means, so a non-default value names its own section
        knobs = [f"{label} {c.get(key)}" for key, label, default in MECHANISM_KNOBS if c.get(key, default) != default]
        return (kind + ("" if list(c.privileged) == ["physio"] else f", privileged={'+'.join(c.privileged)}")
                + "".join(f", {k}" for k in knobs) + self.protocol_suffix())

    def load_fold(self, fold: int) -> FoldData:
        self.check_fold(fold)
        c = self.cfg
        from omegaconf import OmegaConf
        d = _generate_cached(tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                                          for k, v in OmegaConf.to_container(c, resolve=True).items())))
        keep = np.arange(len(d["subject"]))
        if c.target == "regression":
            y = np.stack([d["valence"], d["arousal"]], axis=1).astype(np.float32)
        else:
            y = d["level"].astype(np.int64)
            if c.n_classes == 2:
                keep = np.flatnonzero((y == 0) | (y == 4))
                y = (y == 4).astype(np.int64)
            y = y[:, None]
        groups = np.array([f"s{s:03d}" for s in d["subject"]])
        ids = np.array([f"s{s:03d}-{i:04d}" for i, s in enumerate(d["subject"])])
        inputs = {m: d[m].astype(np.float32) for m in self.spec.modalities}
        full = Split(ids=ids, groups=groups, inputs=inputs, targets=y).subset(keep)

        outer = GroupKFold(n_splits=self.n_folds, shuffle=True, random_state=int(c.data_seed))
        train_idx, test_idx = list(outer.split(full.ids, groups=full.groups))[fold]
        inner = GroupShuffleSplit(n_splits=1, test_size=c.val_fraction, random_state=int(c.data_seed) + fold)
        tr, va = next(inner.split(train_idx, groups=full.groups[train_idx]))
        train = full.subset(train_idx[tr])
        k = c.get("labelled_per_subject")
        if k is not None:  # fewer labelled training samples per subject (validation and test keep theirs)
            if not 1 <= int(k) <= int(c.samples_per_subject):
                raise TaskError(f"task.labelled_per_subject={k}: choose 1..{c.samples_per_subject} or null (all)")
            order = np.random.default_rng(int(c.data_seed) + 7919 * fold).permutation(len(train))
            seen: dict[str, int] = {}
            keep_rows = []
            for i in order:
                g = train.groups[i]
                if seen.get(g, 0) < int(k):
                    seen[g] = seen.get(g, 0) + 1
                    keep_rows.append(i)
            train = train.subset(np.sort(np.array(keep_rows)))
        return FoldData(train=train, val=full.subset(train_idx[va]), test=full.subset(test_idx),
                        info={"n_subjects": int(c.n_subjects), "n_train": len(train)})
