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
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from sklearn.model_selection import GroupKFold, GroupShuffleSplit

from harness.data import FoldData, Split, TargetSpec, TaskSpec
from harness.registry import register_task
from harness.task import Task, TaskError

PRIVILEGED_CHOICES = ("physio", "audio")


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
    physio = (u @ A_p)[:, None, :] * (1 + 0.2 * drift) + cfg.privileged_noise * rng.standard_normal((N, T, cfg.physio_dim))
    half = max(1, L // 2)
    A_a = rng.standard_normal((half, cfg.audio_dim)) / np.sqrt(half)
    audio = (u[:, :half] @ A_a)[:, None, :] + 3 * cfg.privileged_noise * rng.standard_normal((N, T, cfg.audio_dim))

    a_v, a_a, a_p = _unit(rng, L), _unit(rng, L), _unit(rng, L)
    valence = np.tanh(0.9 * u @ a_v) + cfg.label_noise * rng.standard_normal(N)
    arousal = np.tanh(0.9 * u @ a_a) + cfg.label_noise * rng.standard_normal(N)
    score = u @ a_p + cfg.label_noise * rng.standard_normal(N)
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
            raise TaskError(f"task.n_classes={cfg.n_classes}: the synthetic task has 5 levels (5) or lowest-vs-highest (2)")
        self.full_protocol  # noqa: B018 -- validates task.protocol up front

    @property
    def data_source(self) -> str:
        return "synthetic"

    @property
    def n_folds(self) -> int:
        return int(self.cfg.n_folds)

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
        return (kind + ("" if list(c.privileged) == ["physio"] else f", privileged={'+'.join(c.privileged)}")
                + self.protocol_suffix())

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
        return FoldData(train=full.subset(train_idx[tr]), val=full.subset(train_idx[va]), test=full.subset(test_idx),
                        info={"n_subjects": int(c.n_subjects)})
