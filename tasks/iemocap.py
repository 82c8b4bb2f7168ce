"""`iemocap`: IEMOCAP emotions as MulT's four binary tasks (docs/datasets.md#iemocap).

Files: MulT's `iemocap_data.pkl` (aligned) or `iemocap_data_noalign.pkl` (task.aligned=false) in
`<data_root>/` (yaohungt/Multimodal-Transformer: src/dataset.py). Each of train/valid/test holds `text`
(GloVe 300), `audio` (COVAREP 74), `vision` (FACET 35) as [N, T, D] (read from the file, no lengths
in these pickles), `labels` [N, 4, 2] one-hot [absent, present] for (neutral, happy, sad, angry), and
optionally `id`. Target: argmax over the pair, i.e. four binary heads (TargetSpec classification,
4 dims x 2 classes). The file's own split is used as given (one fold; seeds vary initialisation only);
MulT's split is not documented as session-based (docs/datasets.md#iemocap-files). Protocols as mosi:
privileged (default, student audio + vision, text privileged; task.student_modalities) or full (every
modality at test, MulT's setting).

Metrics (MulT convention): per emotion `accuracy_<e>` and `f1_weighted_<e>` (sklearn, truth first), their
means `accuracy_mean` / `f1_weighted_mean`, and with task.four_class_metrics the 4-class view
(docs/datasets.md#iemocap-metrics): `acc4` (SER "WA") and `uar4` (SER "UA", balanced accuracy) of the
argmax over the four P(present), over the samples with exactly one emotion present. DMD's official code
has no IEMOCAP path (docs/fidelity.md#dmd-other-tasks): results here are an extension, not a reproduction.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from harness.data import Split, TargetSpec
from harness.metrics import acc4, score_columns, uar4
from harness.predictions import columns_by_dim
from harness.registry import register_task
from harness.task import TaskError
from tasks._mmsa import (MIMIC_MARKER_KEY, SPLITS, PickleTask, decode_ids, dump_pickle, group_of, mimic_sizes,
                         mixing_matrices, planted_sequences, read_modalities, require, split_of)

EMOTIONS = ("neutral", "happy", "sad", "angry")  # MulT's label order
FOUR_CLASS = {"acc4": acc4, "uar4": uar4}


@register_task
class IEMOCAP(PickleTask):
    name = "iemocap"
    bootstrap_unit = "sample"  # MulT's test utterances are resampled one by one (Split.groups holds the dialog)
    description = ("IEMOCAP neutral/happy/sad/angry as 4 binary tasks from MulT pickles; per-emotion acc/F1 "
                   "(+ 4-class WA/UA); pickle's own split, seeds vary init only")
    look_in = (".", "IEMOCAP")
    file_description = "MulT IEMOCAP pickle (the data download of yaohungt/Multimodal-Transformer's README)"
    target = TargetSpec("classification", EMOTIONS, n_classes=2, class_names=("absent", "present"))
    per_emotion = tuple(f"{m}_{e}" for e in EMOTIONS for m in ("accuracy", "f1_weighted"))
    metric_choices = ("f1_weighted_mean", "accuracy_mean", *per_emotion, *FOUR_CLASS)
    published = [
        {"method": "DMD (aggregator listing)", "metrics": {"score (metric not stated)": 0.695},
         "citation": "wizwand listing of Li, Wang, Cui, CVPR 2023, via docs/fidelity.md#dmd-reported-results",
         "setting": "unknown", "note": "unclear provenance: DMD's official code has no IEMOCAP path; verify"},
    ]

    @property
    def file_name(self) -> str:
        return "iemocap_data.pkl" if self.cfg.aligned else "iemocap_data_noalign.pkl"

    @staticmethod
    def cast_on_read(array: np.ndarray) -> bool:
        """The [N, T, D] inputs; `labels` [N, 4, 2] are read as the file has them."""
        return array.ndim == 3 and array.shape[1:] != (len(EMOTIONS), 2)

    def metric_names(self) -> tuple[str, ...]:
        return ("f1_weighted_mean", "accuracy_mean", *self.per_emotion,
                *(FOUR_CLASS if self.cfg.four_class_metrics else ()))

    def variant(self) -> str:
        return (f"{'aligned' if self.cfg.aligned else 'unaligned'}, MulT 4 binary emotions, {self.protocol_label()}, "
                f"file's train/valid/test split (seeds vary init only)")

    def read(self, data: dict, path: Path) -> tuple[dict[str, Split], dict]:
        splits, info = {}, {}
        for field_name, key in SPLITS.items():
            d = split_of(data, key, path)
            where = f"{path}['{key}']"
            require(d, ("text", "audio", "vision", "labels"), where)
            labels = np.nan_to_num(np.asarray(d["labels"], np.float64))
            if labels.ndim != 3 or labels.shape[1:] != (len(EMOTIONS), 2):
                raise TaskError(f"{where}['labels']: expected [N, 4, 2] (one-hot [absent, present] for "
                                f"{', '.join(EMOTIONS)}), got shape {labels.shape}")
            n = len(labels)
            ids = decode_ids(d["id"], f"{where}['id']") if "id" in d else np.array([f"{key}-{i}" for i in range(n)])
            if len(ids) != n:
                raise TaskError(f"{where}['id']: {len(ids)} ids for {n} labels")
            sinfo: dict = {} if "id" in d else {"ids": "no 'id' key: row numbers used"}
            inputs, lengths = read_modalities(d, self.modality_order, where, n, sinfo)
            y = labels.argmax(-1).astype(np.int64)  # MulT: argmax over [absent, present]
            sinfo["label_pairs_not_one_hot"] = int((labels.sum(-1) != 1).sum())
            sinfo["samples_without_exactly_one_emotion"] = int((y.sum(1) != 1).sum())
            sinfo["present"] = dict(zip(EMOTIONS, y.sum(0).tolist()))
            splits[field_name] = Split(ids=ids, groups=np.array([group_of(i) for i in ids]), inputs=inputs,
                                       targets=y, lengths=lengths)
            info[key] = sinfo
        return splits, info

    def score(self, predictions: pd.DataFrame, metrics: tuple[str, ...] | None = None) -> dict[str, float]:
        """Per-emotion metrics through score_columns; acc4/uar4 need P(present) of every emotion at once."""
        names = metrics or self.spec.metrics
        yt, yp = columns_by_dim(predictions, self.target)
        out = score_columns(yt, yp, [n for n in names if n not in FOUR_CLASS], "classification")
        if any(n in FOUR_CLASS for n in names):
            truth = np.stack([yt[e] for e in EMOTIONS], axis=1)
            present = np.stack([predictions[f"prob_{e}_1"].to_numpy() for e in EMOTIONS], axis=1)
            out.update({n: fn(truth, present) for n, fn in FOUR_CLASS.items() if n in names})
        return {n: out[n] for n in names}

    @classmethod
    def write_mimic_files(cls, folder: Path, cfg) -> list[Path]:
        """iemocap_data.pkl (T=20 for all) and iemocap_data_noalign.pkl (T 20/400/500, zero padding after a
        random length, no lengths key) with the same samples; labels [N, 4, 2] one-hot, one emotion present.

        Planted relation: the emotion's one-hot vector, plus per-sample noise (text 0.3, audio 1.0, vision
        1.3), is mixed into every valid step: text is the strong privileged modality. ids [N, 3] bytes
        (utterance, start, end) as MulT's MOSI ids [verify for IEMOCAP]; -inf and a NaN in audio.
        """
        rng = np.random.default_rng(int(cfg.mimic.seed))
        dims = {"text": 300, "audio": 74, "vision": 35}
        T_un = {"text": 20, "audio": 400, "vision": 500}
        W = mixing_matrices(rng, len(EMOTIONS), dims)
        out = {"aligned": {MIMIC_MARKER_KEY: "mimic data written by pkd-harness: not real data"}}
        out["unaligned"] = dict(out["aligned"])
        for s, (key, n) in enumerate(mimic_sizes(cfg).items()):
            emotion = rng.choice(len(EMOTIONS), n, p=[0.31, 0.30, 0.20, 0.19])
            labels = np.zeros((n, len(EMOTIONS), 2), np.float32)
            labels[:, :, 0] = 1
            labels[np.arange(n), emotion] = [0, 1]
            onehot = np.eye(len(EMOTIONS))[emotion]
            # one session per split (train 1, valid 2, test 3), 8 utterances per dialog
            utterances = [f"Ses0{s + 1}{'FM'[i // 8 % 2]}_impro{i // 16:02d}_{'FM'[i % 2]}{i:03d}" for i in range(n)]
            ids = np.array([[u.encode(), f"{i * 3.1:.2f}".encode(), f"{i * 3.1 + 2.5:.2f}".encode()]
                            for i, u in enumerate(utterances)])
            noise = {"text": 0.3, "audio": 1.0, "vision": 1.3}
            for layout, T in (("aligned", {m: 20 for m in dims}), ("unaligned", T_un)):
                split = {"labels": labels, "id": ids}
                for m in dims:
                    lens = np.full(n, T[m]) if layout == "aligned" else rng.integers(T[m] // 4, T[m] + 1, n)
                    signal = onehot + noise[m] * rng.standard_normal(onehot.shape)
                    split[m] = planted_sequences(rng, signal, W[m], lens, T[m])
                split["audio"][0, 0, 0] = -np.inf
                if key == "train":
                    split["audio"][1, 0, 0] = np.nan
                out[layout][key] = split
        return [dump_pickle(out["aligned"], folder / "iemocap_data.pkl"),
                dump_pickle(out["unaligned"], folder / "iemocap_data_noalign.pkl")]
