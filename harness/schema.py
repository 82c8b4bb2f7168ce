"""What every config value may be: type, range or choices, and whether null is allowed (one table per group).

The YAML files under harness/conf/ stay the user-facing documentation (their comments say what a key
does); this module says which values are valid, so `harness run` can check every composed config of a
sweep before anything runs (harness/validate.py). Tables are keyed by the dotted path inside their
group: ROOT (seed, fold, ... with `model.*` and `train.*`), METHODS[name] (`method.*`), TASKS[name]
(`task.*`), LAUNCHERS[name] (`launcher.*`). An entry is built from the constructors below:

    float_(gt=0)  int_(ge=1)  bool_()  str_()  choice("a", "b")  nullable(f)  list_of(f)  dict_()  either(f, g)

tests/test_schema.py keeps the tables and the YAML files in step: every key of every YAML has an entry,
and every entry is in a YAML except the few in MAY_BE_ABSENT. Checks that involve several keys at once
are RULES; checks that need the task's data are the tasks' and methods' own (Task.check_fold,
Method.check), run before a run's folder is made.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, replace
from typing import Any, Callable

from harness.errors import ConfigError  # noqa: F401 - imported from here by the modules that raise it


# ----------------------------------------------------------------------------------------------------------------
# Entries


@dataclass(frozen=True)
class Field:
    expected: str                      # what a valid value is, as the error message says it ("a float > 0")
    test: Callable[[Any], bool]        # the value (never None) is valid
    nullable: bool = False             # null is valid too
    optional: bool = False             # the key may be absent (only the keys of MAY_BE_ABSENT)
    choices: tuple = ()                # choice(): the allowed values, for "did you mean"

    def accepts(self, value: Any) -> bool:
        return self.nullable if value is None else bool(self.test(value))

    def describe(self) -> str:
        return self.expected + (" or null" if self.nullable else "")

    def message(self, path: str, value: Any) -> str:
        msg = f"{path}={show(value)}: expected {self.describe()}"
        if isinstance(value, float) and not math.isfinite(value):
            msg += " (a finite number)"
        if isinstance(value, str) and self.choices:
            close = difflib.get_close_matches(value, [c for c in self.choices if isinstance(c, str)], n=2, cutoff=0.6)
            if close:
                msg += f"; did you mean {' or '.join(close)}?"
        return msg


def show(value: Any) -> str:
    """A value as the command line writes it: strings quoted, true/false, null, [a, b], {k: v}."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
    return str(value)


def _word(value: Any) -> str:
    return show(value) if not isinstance(value, str) else value


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _bounds(gt=None, ge=None, lt=None, le=None) -> tuple[str, Callable[[float], bool]]:
    """The range's text (" > 0", " in [0, 1)") and its test."""
    low = (gt, "(", ">") if gt is not None else (ge, "[", ">=") if ge is not None else None
    high = (lt, ")", "<") if lt is not None else (le, "]", "<=") if le is not None else None

    def ok(v) -> bool:
        return ((gt is None or v > gt) and (ge is None or v >= ge) and (lt is None or v < lt)
                and (le is None or v <= le))
    if low and high:
        return f" in {low[1]}{low[0]}, {high[0]}{high[1]}", ok
    if low or high:
        bound = low or high
        return f" {bound[2]} {bound[0]}", ok
    return "", ok


def float_(gt=None, ge=None, lt=None, le=None) -> Field:
    """A finite number (an integer is a float too): float_(gt=0), float_(ge=0, lt=1)."""
    text, ok = _bounds(gt, ge, lt, le)
    return Field(f"a float{text}", lambda v: _is_number(v) and ok(v))


def int_(ge=None, gt=None, le=None, lt=None, odd: bool = False) -> Field:
    """An integer (not a bool, not 2.0): int_(ge=1), int_(ge=1, odd=True)."""
    text, ok = _bounds(gt, ge, lt, le)
    return Field(f"{'an odd' if odd else 'an'} integer{text}", lambda v: _is_int(v) and ok(v) and (not odd or v % 2))


def bool_() -> Field:
    return Field("true or false", lambda v: isinstance(v, bool))


def str_() -> Field:
    """A non-empty string (a path, a name); a number on the command line must be quoted to be one."""
    return Field("a non-empty string", lambda v: isinstance(v, str) and v != "")


FAMILY_NAME_TEXT = "a name of letters, digits, _ or -"


def is_family_name(v: Any) -> bool:
    """A stats.family value (harness/leaderboard/records.py reads it from records with the same rule)."""
    return isinstance(v, str) and re.fullmatch(r"[A-Za-z0-9_-]+", v) is not None


def choice(*values) -> Field:
    """One of the values, of the same type (1 is not true, 2.0 is not 2)."""
    def ok(v):
        return any(type(v) is type(c) and v == c for c in values)
    text = _word(values[0]) if len(values) == 1 else f"one of {', '.join(_word(c) for c in values)}"
    return Field(text, ok, choices=tuple(values))


def nullable(field: Field) -> Field:
    return replace(field, nullable=True)


def optional(field: Field) -> Field:
    return replace(field, optional=True)


def list_of(item: Field, length: int | None = None, min_len: int = 0, unique: bool = False) -> Field:
    size = f" of {length}" if length is not None else " (non-empty)" if min_len == 1 else \
        f" of at least {min_len}" if min_len else ""
    text = f"a list{size}{' without repeats' if unique else ''}, each {item.describe()}"

    def ok(v):
        return (isinstance(v, list) and all(item.accepts(x) for x in v) and len(v) >= min_len
                and (length is None or len(v) == length) and (not unique or len(set(map(repr, v))) == len(v)))
    return Field(text, ok)


def dict_(values: Field | None = None) -> Field:
    """A mapping whose keys are free (sbatch options, per-modality settings); values checked when given."""
    text = "a mapping" + (f" of names to {values.describe()}" if values is not None else "")
    return Field(text, lambda v: isinstance(v, dict) and (values is None or all(values.accepts(x) for x in v.values())))


def either(*fields: Field) -> Field:
    return Field(" or ".join(f.describe() for f in fields), lambda v: any(f.accepts(v) for f in fields),
                 choices=tuple(c for f in fields for c in f.choices))


# ----------------------------------------------------------------------------------------------------------------
# Rules: checks across keys of one group. check(*values) returns the one-line problem or None; it runs only
# when each of its keys is present and valid on its own.


@dataclass(frozen=True)
class Rule:
    keys: tuple[str, ...]
    check: Callable[..., str | None]


def _slot_needs_tnet(enabled, slot):
    if slot != "tnet" and not enabled:
        return (f"method.tnet.slot={slot} fills the privileged fusion slots, and method.tnet.enabled=false builds a "
                f"student without them: set method.tnet.enabled=true or method.tnet.slot=tnet")
    return None


def _selection_on_scores_batches(selection, selection_on):
    # heldout_half and val score each candidate on rows the student does not train on, so a choice cannot be made
    # per training sample (sample), and `joint` makes no choice at all.
    if selection_on != "batch" and selection != "batch":
        return (f"method.selection_on={selection_on} scores the teachers on other rows than the student's (a held-out "
                f"half of the batch, or the validation split), so it chooses one teacher for the student's rows and "
                f"needs method.selection=batch (got {selection}): set method.selection=batch or "
                f"method.selection_on=batch")
    return None


def _budget_selects_nothing(prefix: str) -> Rule:
    def check(stop, select_on):
        if stop == "budget" and select_on == "loss":
            return (f"{prefix}.select_on='loss' with {prefix}.stop='budget': budget keeps the last epoch and "
                    f"selects nothing; use {prefix}.select_on=primary or {prefix}.stop=patience")
        return None
    return Rule(("stop", "select_on"), check)


def _ordered_pair(key: str, path: str, what: str) -> Rule:
    def check(pair):
        return None if pair[0] < pair[1] else f"{path}={show(pair)}: expected [low, high] with low < high ({what})"
    return Rule((key,), check)


# ----------------------------------------------------------------------------------------------------------------
# The tables

# The training loop's options (harness/training.py imports them from here: one place for the choices).
LOOP_CHOICES: dict[str, tuple] = {
    "optimizer": ("adamw", "adam", "rmsprop", "sgd", "rmsprop_keras"), "fused": ("auto", True, False), "schedule": ("none", "plateau"),
    "grad_clip_by": ("norm", "value"), "select_on": ("primary", "loss"), "stop": ("patience", "budget")}

TRAIN: dict[str, Field] = {
    "optimizer": choice(*LOOP_CHOICES["optimizer"]),
    "fused": choice(*LOOP_CHOICES["fused"]),
    "momentum": float_(ge=0),
    "lr": float_(gt=0),
    "weight_decay": float_(ge=0),
    "schedule": choice(*LOOP_CHOICES["schedule"]),
    "plateau_factor": float_(gt=0, lt=1),
    "plateau_patience": int_(ge=0),
    "min_lr": float_(ge=0),
    "batch_size": int_(ge=1),
    "eval_batch_size": int_(ge=1),
    "drop_last": bool_(),
    "accumulate": int_(ge=1),
    "grad_clip": nullable(float_(gt=0)),   # 0 would silently mean no clipping: null says it
    "grad_clip_by": choice(*LOOP_CHOICES["grad_clip_by"]),
    "select_on": choice(*LOOP_CHOICES["select_on"]),
    "stop": choice(*LOOP_CHOICES["stop"]),
    "max_epochs": int_(ge=1),
    "patience": int_(ge=1),                # 0 would stop after the first epoch whatever it scores
    "min_delta": float_(ge=0),
    "regression_loss": choice("mse", "ccc"),
    "checkpoint": bool_(),
}

MODEL: dict[str, Field] = {
    "hidden": int_(ge=1),
    "layers": int_(ge=0),
    "kernel": int_(ge=1, odd=True),        # 'same' padding of the residual convolutions needs an odd kernel
    "dropout": float_(ge=0, lt=1),
    "encoder": choice("temporal", "linear", "mlp"),   # methods/blocks.py ENCODERS (tested)
    "fusion": choice("gated", "transformer"),           # methods/blocks.py FUSIONS
    "batch_mixing": bool_(),                            # fusion=transformer only (B1)
}

ROOT: dict[str, Field] = {
    "seed": int_(ge=0),
    "fold": int_(ge=0),                    # the upper end is the task's: Task.check_fold
    "selection_split": choice("val", "test"),  # test: selection on the test fold (harness/runner.py), optimistic
    "device": Field("auto, cpu, cuda, cuda:<index> or mps", choices=("auto", "cpu", "cuda", "mps"),
                    test=lambda v: isinstance(v, str) and (v in ("auto", "cpu", "cuda", "mps")
                                                           or (v.startswith("cuda:") and v[5:].isdigit()))),
    "results_dir": str_(),
    "cache_dir": str_(),
    "overwrite": bool_(),
    "progress": bool_(),
    "logger": choice("none", "tensorboard", "mlflow"),
    "log_every": int_(ge=1),
    "save_predictions": bool_(),  # harness/live.py LOGGERS (tests/test_live_logger.py)
    "stats.bootstrap_resamples": int_(ge=0),
    "stats.family": Field(f"{FAMILY_NAME_TEXT} (a Holm family, e.g. batch_size_sensitivity)", is_family_name),
    "teacher.modalities": choice("all", "privileged"),
    "teacher.cache_outputs": bool_(),  # methods/teacher.py frozen_outputs
    **{f"teacher.train.{k}": optional(f) for k, f in TRAIN.items()},  # methods/teacher.py teacher_train_cfg
    **{f"model.{k}": f for k, f in MODEL.items()},
    **{f"train.{k}": f for k, f in TRAIN.items()},
}

PRIVILEGED_CONTROLS = ("none", "zeros", "shuffle")  # harness/controls.py applies them
_PRIVILEGED_CONTROL = choice(*PRIVILEGED_CONTROLS)
_WEIGHT = float_(ge=0)
_DROPOUT = float_(ge=0, lt=1)

_TNET = {
    "tnet.enabled": bool_(),
    "tnet.loss": choice("mmd", "mse", "both"),                      # methods/pkdot.py TNET_LOSSES
    "tnet.slot": choice("tnet", "zeros", "oracle"),                 # methods/pkdot.py TNET_SLOTS
    "tnet.arch": choice("mlp", "linear", "autoencoder", "linear8"),  # methods/pkdot.py TNet
    "tnet.width": int_(ge=1),
    "tnet.lr": float_(gt=0),
    "tnet.epochs": int_(ge=1),
    "tnet.patience": int_(ge=0),           # the T-Net stops after MORE than `patience` epochs without improvement
    "tnet.batch_size": int_(ge=1),
}
_STRUCTURAL_OT = {
    "k": int_(ge=1),                       # capped at batch size - 1 at run time, recorded under `adjusted`
    "anchors": choice("lowest", "highest"),
    "anchor_set": choice("per_row", "shared"),
    "shift": choice("min", "affine"),
    "epsilon": float_(gt=0),
    "scaling": float_(gt=0, lt=1),
    "centroid": bool_(),
    "centroid_weight": _WEIGHT,
    "batch_size": nullable(int_(ge=1)),
}

METHODS: dict[str, dict[str, Field]] = {
    "student": {"name": choice("student")},
    "teacher": {"name": choice("teacher")},
    "kd": {
        "name": choice("kd"), "task_weight": _WEIGHT, "response_weight": _WEIGHT, "feature_weight": _WEIGHT,
        "temperature": float_(gt=0), "privileged_control": _PRIVILEGED_CONTROL,
        "recipe": choice("none", "gd"),   # methods/kd.py RECIPES (tested)
    },
    "pkdot": {
        "name": choice("pkdot"), "task_weight": _WEIGHT, "ot_weight": _WEIGHT, **_STRUCTURAL_OT, **_TNET,
        "privileged_control": _PRIVILEGED_CONTROL,
    },
    "mtpkdot": {
        "name": choice("mtpkdot"), "task_weight": _WEIGHT, "ot_weight": _WEIGHT, **_STRUCTURAL_OT,
        "selection": choice("batch", "sample", "joint"),
        "selection_on": choice("batch", "heldout_half", "val"),        # methods/mtpkdot.py SELECTION_ON
        "stage1.align_weight": _WEIGHT, "stage1.task_weight": _WEIGHT, "stage1.unimodal_weight": _WEIGHT,
        "stage1.adapter_width": nullable(int_(ge=1)), "stage1.lr_adapters": float_(gt=0),
        "stage1.lr_joint": float_(gt=0), "stage1.epochs": int_(ge=1), "stage1.patience": int_(ge=1),
        "stage1.batch_size": int_(ge=1),
        "stage1.optimizer": choice("harness", "official"),     # methods/mtpkdot.py OFFICIAL_STAGE1_LOOP
        "stage1.frozen_mode": choice("train", "eval"),
        "student_loop": choice("harness", "official"),         # methods/mtpkdot.py OFFICIAL_STUDENT_LOOP
        **_TNET, "privileged_control": _PRIVILEGED_CONTROL,
    },
    "dmd": {
        "name": choice("dmd"),
        "preset": choice("auto", "none", "mosi", "mosei"),   # methods/dmd/method.py PRESETS (tested)
        "d": int_(ge=1), "heads": int_(ge=1), "layers": int_(ge=1), "kernel": int_(ge=1),
        "kernel_by_modality": dict_(int_(ge=1)),
        "attn_dropout": _DROPOUT, "attn_dropout_by_modality": dict_(_DROPOUT),
        "relu_dropout": _DROPOUT, "res_dropout": _DROPOUT, "embed_dropout": _DROPOUT, "output_dropout": _DROPOUT,
        "input_dropout_by_modality": dict_(_DROPOUT),
        "causal_mask": bool_(), "fast_kernels": bool_(),
        "text_encoder": choice("frozen", "bert"), "bert_path": str_(), "bert_init": choice("pretrained", "random_tiny"),
        "bert_lr": float_(gt=0),
        "bert_weight_decay": float_(ge=0),
        "gd.homo_hidden": int_(ge=1), "gd.het_hidden": int_(ge=1), "gd.temperature": float_(gt=0),
        "gd.prior": choice("paper", "uniform"), "gd.prior_temperature": float_(gt=0),
        "gd.roles": nullable(list_of(str_(), length=3, unique=True)),
        "gd.edges": choice("auto", "all", "into_student"), "gd.detach_edge_inputs": bool_(),
        **{f"loss.{k}": _WEIGHT for k in ("task", "homo_gd", "het_gd", "gd_logit", "gd_repr", "gd_reg", "homo_repr",
                                          "het_repr_decorrelation", "recon", "cycle", "margin", "ort",
                                          "margin_scale")},
        "loss.ort_mode": choice("per_sample", "batch_axis"),
        # DMD's own training block overrides any `train` key for its model; its YAML lists only those it changes.
        **{f"training.{k}": optional(f) for k, f in TRAIN.items()},
        "privileged_control": _PRIVILEGED_CONTROL,
    },
}

_SOURCE = choice("real", "mimic")
_PROTOCOL = choice("privileged", "full")
_PATH = str_()
_SEED = int_(ge=0)
_FRACTION = float_(gt=0, lt=1)

_TEXT_INPUT = choice("frozen", "bert")  # mosi/mosei: the text features, or text_bert's tokens for DMD's BERT

_PICKLE_TASK = {   # mosi, mosei, iemocap (tasks/_mmsa.py)
    "source": _SOURCE, "data_root": _PATH, "aligned": bool_(), "protocol": _PROTOCOL,
    "student_modalities": list_of(choice("text", "audio", "vision"), min_len=1, unique=True),
    "feature_cache": bool_(), "feature_cache_dir": _PATH, "mimic_dir": _PATH,
    "mimic.n_train": int_(ge=1), "mimic.n_valid": int_(ge=1), "mimic.n_test": int_(ge=1), "mimic.seed": _SEED,
}
MMSA_METRICS = ("non0_acc2", "non0_f1", "has0_acc2", "has0_f1", "acc5", "acc7", "mae", "corr", "mult_acc2", "mult_f1",
                "acc3")
IEMOCAP_METRICS = ("f1_weighted_mean", "accuracy_mean",
                   *(f"{m}_{e}" for e in ("neutral", "happy", "sad", "angry") for m in ("accuracy", "f1_weighted")),
                   "acc4", "uar4")

TASKS: dict[str, dict[str, Field]] = {
    "synthetic": {
        "name": choice("synthetic"), "target": choice("regression", "classes"), "n_classes": choice(5, 2),
        "privileged": list_of(choice("physio", "audio"), min_len=1, unique=True), "protocol": _PROTOCOL,
        "n_subjects": int_(ge=2), "samples_per_subject": int_(ge=1), "seq_len": int_(ge=2),
        "visual_dim": int_(ge=1), "physio_dim": int_(ge=1), "audio_dim": int_(ge=1), "latent_dim": int_(ge=1),
        "nuisance_dim": int_(ge=0), "event_fraction": float_(gt=0, le=1), "latent_gain": float_(ge=0),
        "visual_noise": float_(ge=0), "privileged_noise": float_(ge=0), "subject_shift": float_(ge=0),
        "label_noise": float_(ge=0), "explained_label_noise": float_(ge=0), "privileged_signal": float_(ge=0),
        "labelled_per_subject": nullable(int_(ge=1)), "n_folds": int_(ge=2), "val_fraction": _FRACTION, "data_seed": _SEED,
    },
    "biovid": {
        "name": choice("biovid"), "source": _SOURCE, "data_root": _PATH, "features_root": nullable(_PATH),
        "cache_dir": _PATH, "mimic_dir": nullable(_PATH), "signals": choice("filtered", "raw"),
        "labels": choice("binary", "multiclass"), "protocol": choice("group5", "loso", "folds_file"),
        "modality_protocol": _PROTOCOL, "n_folds": int_(ge=2), "folds_dir": nullable(_PATH),
        "dedupe_folds": bool_(), "strict_splits": bool_(), "val_fraction": _FRACTION,
        "exclude_subjects": either(choice("reduced67"), list_of(str_())), "on_missing": choice("error", "drop"),
        "standardize": bool_(), "data_seed": _SEED,
        "physio.window_s": list_of(float_(ge=0), length=2), "physio.fs": nullable(float_(gt=0)),
        "physio.emg_channels": either(choice("auto"), list_of(str_())),
        "physio.nperseg": int_(ge=1), "physio.noverlap": int_(ge=0), "physio.nfft": int_(ge=1),
        "physio.log_power": bool_(), "physio.eda": bool_(), "physio.eda_lowpass_hz": float_(gt=0),
        "physio.ecg": bool_(),
        "mimic.n_subjects": int_(ge=2), "mimic.samples_per_class": int_(ge=1), "mimic.part": choice("A", "B"),
        "mimic.visual_dim": int_(ge=1), "mimic.n_frames": int_(ge=1), "mimic.write_raw": bool_(),
        "mimic.seed": _SEED,
    },
    "affwild2": {
        "name": choice("affwild2"), "source": _SOURCE, "data_root": _PATH, "annotations_dir": _PATH,
        "features_root": nullable(_PATH), "audio_root": nullable(_PATH),
        "fps": either(choice("auto"), float_(gt=0)), "fps_file": _PATH, "cache_dir": _PATH,
        "mimic_dir": nullable(_PATH), "window": int_(ge=1), "train_stride": int_(ge=1), "val_fraction": _FRACTION,
        "max_length_mismatch": int_(ge=0), "strict_splits": bool_(), "standardize": bool_(), "data_seed": _SEED,
        "protocol": _PROTOCOL,
        "audio.sample_rate": int_(ge=1), "audio.n_mels": int_(ge=1), "audio.win_ms": float_(gt=0),
        "audio.hop_ms": float_(gt=0), "audio.fmin": float_(ge=0), "audio.fmax": nullable(float_(gt=0)),
        "mimic.n_train_videos": int_(ge=1), "mimic.n_val_videos": int_(ge=1), "mimic.two_person_videos": int_(ge=0),
        "mimic.min_frames": int_(ge=1), "mimic.max_frames": int_(ge=1), "mimic.visual_dim": int_(ge=1),
        "mimic.seed": _SEED,
    },
    "lupi": {
        "name": choice("lupi"), "experiment": choice(1, 2, 3, 4), "d": int_(ge=3), "n_train": int_(ge=2),
        "n_val": int_(ge=0), "n_test": int_(ge=1), "repetition": _SEED,
        "privileged_signal": float_(ge=0, le=1), "exp4_relevant": choice("paper", "code"),
    },
    "mosi": {"name": choice("mosi"), **_PICKLE_TASK, "primary_metric": choice(*MMSA_METRICS), "clip_labels": bool_(),
             "text_input": _TEXT_INPUT},
    "mosei": {"name": choice("mosei"), **_PICKLE_TASK, "primary_metric": choice(*MMSA_METRICS),
              "clip_labels": bool_(), "text_input": _TEXT_INPUT},
    "iemocap": {"name": choice("iemocap"), **_PICKLE_TASK, "primary_metric": choice(*IEMOCAP_METRICS),
                "four_class_metrics": bool_()},
}

# `harness extract` (harness/conf/extract.yaml and conf/backbone/*.yaml; harness/extract/config.py checks them with
# the task's own table above).
EXTRACT_ROOT: dict[str, Field] = {
    "device": ROOT["device"], "progress": bool_(), "cache_dir": str_(),
    "extract.weights": str_(),             # default | none | a path to a state_dict file
    "extract.seed": _SEED,
    "extract.input": choice("auto", "frames", "video"),
    "extract.videos_dir": nullable(_PATH), "extract.frames_dir": nullable(_PATH),
    "extract.gap_fill": choice("previous", "zeros"),
    "extract.audio": bool_(),
    "extract.on_error": choice("error", "skip"),
    "extract.overwrite": bool_(),
    "extract.batch_size": int_(ge=1),
    "extract.num_workers": int_(ge=0),
    "extract.amp": choice("auto", True, False),
}
_BACKBONE = {"size": int_(ge=16), "clip_len": int_(ge=1), "clip_stride": int_(ge=1)}
BACKBONES: dict[str, dict[str, Field]] = {      # harness/extract/backbones.py BACKBONES (tested)
    "resnet18": {"name": choice("resnet18"), **_BACKBONE, "clip_len": choice(1)},
    "r3d_18": {"name": choice("r3d_18"), **_BACKBONE},
}

_SUBMITIT = {
    "gpus_per_node": int_(ge=0), "cpus_per_task": int_(ge=1), "timeout_min": int_(ge=1),
    "signal_delay_s": int_(ge=0), "max_num_timeout": int_(ge=0), "setup": list_of(str_()), "python": nullable(_PATH),
}
LAUNCHERS: dict[str, dict[str, Field]] = {
    "inprocess": {"name": choice("inprocess")},
    "local": {"name": choice("local"), "executor": choice("local"), "parallelism": int_(ge=1), **_SUBMITIT},
    "slurm": {
        "name": choice("slurm", "slurm_cpu"), "executor": choice("slurm"),
        "partition": nullable(str_()), "account": nullable(str_()), "qos": nullable(str_()),
        "constraint": nullable(str_()), "gres": nullable(str_()), "mem_gb": nullable(float_(gt=0)),
        "array_parallelism": int_(ge=1), "srun_args": list_of(str_()), "additional_parameters": dict_(),
        "runs_per_task": either(int_(ge=1), choice("auto")), "target_task_minutes": float_(gt=0),
        "run_minutes": nullable(float_(gt=0)), "max_array_size": nullable(int_(ge=1)),
        **_SUBMITIT,
    },
}
LAUNCHERS["slurm_cpu"] = LAUNCHERS["slurm"]


def _signal_before_limit(timeout_min, signal_delay_s):
    # SLURM may send the --signal up to 60 s early; the job must have started its handler by then.
    if timeout_min * 60 > signal_delay_s + 60:
        return None
    return (f"launcher.timeout_min={timeout_min} is too short for launcher.signal_delay_s={signal_delay_s}: the "
            f"checkpoint signal would come before the run starts; use launcher.timeout_min >= "
            f"{int((signal_delay_s + 60) // 60) + 1} or lower launcher.signal_delay_s")


def _packed_task_within_limit(runs_per_task, target_task_minutes, timeout_min):
    # auto packs runs up to target_task_minutes: a target beyond the time limit would requeue every task at it.
    if runs_per_task != "auto" or target_task_minutes < timeout_min:
        return None
    return (f"launcher.target_task_minutes={target_task_minutes} with launcher.runs_per_task=auto: expected < "
            f"launcher.timeout_min={timeout_min} (each packed task would reach its time limit); lower "
            f"launcher.target_task_minutes or raise launcher.timeout_min")


def _nfft_covers_segment(nperseg, nfft):
    return None if nfft >= nperseg else f"task.physio.nfft={nfft}: expected >= task.physio.nperseg={nperseg}"


def _overlap_below_segment(nperseg, noverlap):
    return None if noverlap < nperseg else \
        f"task.physio.noverlap={noverlap}: expected < task.physio.nperseg={nperseg}"


def _frames_ordered(min_frames, max_frames):
    return None if max_frames >= min_frames else \
        f"task.mimic.max_frames={max_frames}: expected >= task.mimic.min_frames={min_frames}"


def _fmax_above_fmin(fmin, fmax):
    return None if fmax is None or fmax > fmin else f"task.audio.fmax={fmax}: expected > task.audio.fmin={fmin} or null"


def _folds_within_subjects(n_subjects, n_folds):
    return None if n_folds <= n_subjects else \
        f"task.n_folds={n_folds}: expected <= task.n_subjects={n_subjects} (folds are groups of subjects)"


# Per table: the root ("" = seed, fold, model.*, train.*), "method/<name>", "task/<name>", "launcher/<name>".
RULES: dict[str, list[Rule]] = {
    "": [Rule(("train.stop", "train.select_on"), _budget_selects_nothing("train").check)],
    "method/dmd": [Rule(("training.stop", "training.select_on"), _budget_selects_nothing("method.training").check)],
    "method/pkdot": [Rule(("tnet.enabled", "tnet.slot"), _slot_needs_tnet)],
    "method/mtpkdot": [Rule(("tnet.enabled", "tnet.slot"), _slot_needs_tnet),
                       Rule(("selection", "selection_on"), _selection_on_scores_batches)],
    "task/synthetic": [Rule(("n_subjects", "n_folds"), _folds_within_subjects)],
    "task/biovid": [_ordered_pair("physio.window_s", "task.physio.window_s", "seconds"),
                    Rule(("physio.nperseg", "physio.nfft"), _nfft_covers_segment),
                    Rule(("physio.nperseg", "physio.noverlap"), _overlap_below_segment)],
    "task/affwild2": [Rule(("audio.fmin", "audio.fmax"), _fmax_above_fmin),
                      Rule(("mimic.min_frames", "mimic.max_frames"), _frames_ordered)],
    "launcher/slurm": [Rule(("timeout_min", "signal_delay_s"), _signal_before_limit),
                       Rule(("runs_per_task", "target_task_minutes", "timeout_min"), _packed_task_within_limit)],
}
RULES["launcher/slurm_cpu"] = RULES["launcher/slurm"]

# Keys with an entry that a YAML need not have, and why (tests/test_schema.py allows exactly these to be absent).
MAY_BE_ABSENT = (
    "method.training.*",              # dmd: its block sets only the `train` keys DMD changes; the others apply as is
    "teacher.train.*",                # the teacher's block sets only the `train` keys it changes (default: none)
)

GROUP_TABLES = {"method": METHODS, "task": TASKS, "launcher": LAUNCHERS}


def table(method: str, task: str, launcher: str) -> tuple[dict[str, Field], list[tuple[str, Rule]]]:
    """The entries (full dotted paths) and rules (with their table's prefix) of a run with these group choices."""
    fields: dict[str, Field] = dict(ROOT)
    rules: list[tuple[str, Rule]] = [("", r) for r in RULES[""]]
    for group, name in (("method", method), ("task", task), ("launcher", launcher)):
        fields.update({f"{group}.{k}": f for k, f in GROUP_TABLES[group][name].items()})
        rules += [(f"{group}.", r) for r in RULES.get(f"{group}/{name}", [])]
    return fields, rules


def unknown_key_message(key: str, known: list[str]) -> str:
    """`unknown config key 'train.lrr'; did you mean train.lr?` The candidates are the known keys beside it
    (same parent), else, when its parent is unknown too, every known key at its depth."""
    parent, _, leaf = key.rpartition(".")
    siblings = [k.rpartition(".")[2] for k in known if k.rpartition(".")[0] == parent]
    if siblings:
        close = [f"{parent}.{c}" if parent else c for c in difflib.get_close_matches(leaf, siblings, n=2, cutoff=0.6)]
    else:
        close = difflib.get_close_matches(key, [k for k in known if k.count(".") == key.count(".")], n=2, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else " (see `harness run --cfg` for all keys)"
    return f"unknown config key '{key}'{hint}"
