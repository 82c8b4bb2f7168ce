"""The multimodal teacher (all modalities at train and test): the upper bound.

With `teacher.modalities=privileged` (root key) the teacher's net has encoders for the privileged modalities
only: it sees x* alone, at train and (method `teacher`) at test, as Lopez-Paz et al.'s teacher.

`get_teacher` is what every distillation method calls: it returns the teacher of this run's
(task, fold, seed, model and training config) from the store, training it only the first time.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from omegaconf import OmegaConf

from harness.data import Split
from harness.method import Method, RunContext
from harness.records import semantic_config
from harness.registry import register_method
from harness.runner import derive_seed
from harness.training import Batch, SplitTensors, adopt_stored_log, fit, predict_in_batches
from methods.blocks import MultimodalNet, task_loss


def build_net(ctx: RunContext, modalities: tuple[str, ...], slots: tuple[str, ...] | None = None) -> MultimodalNet:
    m = ctx.cfg.model
    return MultimodalNet({k: ctx.spec.modalities[k] for k in modalities}, ctx.spec.target, hidden=m.hidden,
                         layers=m.layers, kernel=m.kernel, dropout=m.dropout, slots=slots,
                         encoder=m.get("encoder", "temporal"), fusion=m.get("fusion", "gated"),
                         batch_mixing=bool(m.get("batch_mixing", False))).to(ctx.device)


def supervised_loss(net: MultimodalNet, ctx: RunContext):
    target, reg = ctx.spec.target, ctx.cfg.train.regression_loss

    def loss_fn(batch: Batch):
        loss = task_loss(net(batch.inputs, batch.lengths).out, batch.targets, target, batch.mask, reg)
        return loss, {"task": float(loss.detach())}
    return loss_fn


def predictor(net: MultimodalNet, ctx: RunContext):
    target = ctx.spec.target

    def predict_fn(batch: Batch) -> torch.Tensor:
        out = net(batch.inputs, batch.lengths).out
        return out.softmax(-1) if target.kind == "classification" else out
    return predict_fn


def predict_split(net: MultimodalNet, split: Split, ctx: RunContext) -> np.ndarray:
    data = SplitTensors(split, ctx.device, ctx.spec.target.kind == "classification")
    return predict_in_batches(predictor(net, ctx), data, ctx.cfg.train.eval_batch_size)


def frozen_outputs(fn: Callable[[dict, dict], tuple[torch.Tensor, ...]], split: Split, ctx: RunContext
                   ) -> Callable[[Batch], tuple[torch.Tensor, ...]]:
    """fn's outputs for a batch of `split` (the training split, or the validation split that every epoch
    evaluates), fn being frozen and deterministic (a stored teacher, the T-Net, MT-PKDOT's stage-1 teachers:
    eval mode, no dropout, no gradient).

    With teacher.cache_outputs (the default) fn runs once over the split before training, and every
    batch reads its rows (Batch.index) from that table: a frozen model gives a sample the same output in every
    epoch, so running it on every batch repeats the same arithmetic epoch after epoch (for kd, a teacher
    forward per step; for PKDOT, the teacher and the T-Net). A row's values are fn's on that row, computed in
    an evaluation batch instead of the training batch: the same to float32 round-off (BLAS may pick other kernels
    for the two shapes; tests/test_frozen_outputs.py), so the option is not part of a run's key. Off, fn runs
    on every batch, as before."""
    def per_batch(batch: Batch) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            return tuple(fn(batch.inputs, batch.lengths))

    if not bool(OmegaConf.select(ctx.cfg, "teacher.cache_outputs", default=True)):
        return per_batch
    data = SplitTensors(split, ctx.device, ctx.spec.target.kind == "classification")
    table, n = None, len(split)
    for batch in data.batches(int(ctx.cfg.train.eval_batch_size)):  # in order: rows index..index+len
        part = per_batch(batch)
        if table is None:  # filled in place: a list of parts and their concatenation would hold it twice
            table = tuple(column.new_empty((n, *column.shape[1:])) for column in part)
        start = int(batch.index[0])
        for column, values in zip(table, part):
            column[start:start + len(values)] = values
    table = table or ()  # an empty split: no rows to read

    def cached(batch: Batch) -> tuple[torch.Tensor, ...]:
        index = batch.index.to(ctx.device)
        return tuple(column[index] for column in table)
    return cached


def teacher_train_cfg(ctx: RunContext):
    """The teacher's training keys: train.* with teacher.train's overrides (none by default)."""
    overrides = OmegaConf.select(ctx.cfg, "teacher.train", default=None)
    return OmegaConf.merge(ctx.cfg.train, overrides) if overrides else ctx.cfg.train


# model keys added after teachers were stored, at the value those teachers had: left out of the key there
_MODEL_KEYS_NEUTRAL_AT = {"encoder": "temporal", "fusion": "gated", "batch_mixing": False}


def teacher_key(ctx: RunContext) -> dict:
    cfg = ctx.cfg
    train = semantic_config(OmegaConf.merge(cfg, {"train": teacher_train_cfg(ctx)}))["train"]
    return {"role": "teacher", "task": cfg.task.name, "task_cfg": semantic_config(cfg)["task"],
            "fold": int(cfg.fold), "seed": int(cfg.seed),
            "model": {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items()
                      if _MODEL_KEYS_NEUTRAL_AT.get(k, object()) != v},
            "train": train,
            **({"modalities": "privileged"} if teacher_modalities(cfg) == "privileged" else {}),
            # a privileged-information control trains its own teacher, on the controlled data
            **({"privileged_control": control} if (control := cfg.method.get("privileged_control", "none")) != "none"
               else {}),
            # a task read from files: the files' signature, so a teacher trained on replaced files (features
            # re-extracted at the same path) is never reused; tasks generated in memory keep their earlier keys
            **({"data": data} if (data := ctx.task.source_fingerprint()) is not None else {}),
            # selection_split=test where the method's split holds every modality: stored parts select on test
            **({"selection_split": "test"} if selects_frozen_on_test(ctx) else {})}


def selects_frozen_on_test(ctx: RunContext) -> bool:
    """selection_split=test and the split the method is handed holds every modality (the `teacher` method, or a
    task variant without privileged modalities), so its stored parts (RunContext.frozen_val) select on the test
    split too and are stored apart from those selected on validation. A student method's split has no
    privileged modality: its stored parts select on the validation split, as under selection_split=val."""
    if str(OmegaConf.select(ctx.cfg, "selection_split", default="val")) != "test":
        return False
    from harness.registry import METHODS
    return METHODS.get(ctx.cfg.method.name).uses_privileged_at_test or not ctx.spec.privileged_modalities


def teacher_modalities(cfg) -> str:
    """teacher.modalities: all (every modality of the task) or privileged (the privileged ones only)."""
    return str(OmegaConf.select(cfg, "teacher.modalities", default="all"))


def teacher_inputs(ctx: RunContext) -> tuple[str, ...]:
    """The modalities the teacher sees, at train and (method `teacher`) at test."""
    if teacher_modalities(ctx.cfg) == "all":
        return tuple(ctx.spec.modalities)
    if not ctx.spec.privileged_modalities:
        raise ValueError("teacher.modalities=privileged: this task variant has no privileged modality")
    return tuple(ctx.spec.privileged_modalities)


def stored_training_summary(meta: dict) -> dict:
    """How a stored model's training ended (harness.training.fit's summary); read from its log for models
    stored before summaries existed (their stop reason is then unknown)."""
    if "training" in meta:
        return dict(meta["training"])
    log = meta.get("log", [])
    selected = [e["epoch"] for e in log if e.get("selected")]
    return {"stop_reason": "unknown", "selected_epoch": selected[0] if selected else None, "epochs_run": len(log)}


def note_stored_adjustments(ctx: RunContext, name: str, summary: dict) -> None:
    """A model reused from the store was not trained in this run: its summary says what its training cut."""
    if summary.get("accumulate_reduced"):
        ctx.adjust("train.accumulate", int(ctx.cfg.train.accumulate), summary["accumulate"],
                   f"an epoch of {name} has {summary['batches_per_epoch']} batches")


def get_teacher(ctx: RunContext, train: Split, val: Split) -> tuple[MultimodalNet, dict]:
    """The stored teacher for this run's key, trained on `train` (its teacher.modalities) the first time."""
    modalities = teacher_inputs(ctx)
    val = ctx.frozen_val(val, modalities)  # selection_split=test: the validation split unless val holds them

    def build():
        # Same initial weights whichever method asks first: the seed depends on the key, not the method.
        torch.manual_seed(derive_seed(ctx.seed, ctx.cfg.task.name, ctx.fold, "teacher"))
        return build_net(ctx, modalities)

    key = teacher_key(ctx)

    def train_fn(net):
        # Runs under the store's lock. A checkpointed teacher resumes from the store's checkpoint, whichever
        # run of the sweep was training it when it was preempted.
        log = fit("teacher", net, supervised_loss(net, ctx), predictor(net, ctx), train, val, ctx, teacher_train_cfg(ctx),
                  checkpoint_path=ctx.teachers.checkpoint_path(key),
                  config_key="teacher.train" if OmegaConf.select(ctx.cfg, "teacher.train", default=None) else "train")
        return {"log": log, "training": ctx.extra["training"]["teacher"]}

    # The caller's random stream must not depend on whether the teacher was trained or loaded.
    with torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda" else []):
        net, meta = ctx.teachers.get_or_train(key, build, train_fn, ctx.device)
    adopt_stored_log(ctx, "teacher", meta)
    ctx.extra["teacher"] = {"store_path": meta["store_path"], "reused": meta["reused"]}
    ctx.extra.setdefault("training", {})["teacher"] = {**stored_training_summary(meta), "reused": meta["reused"]}
    if meta["reused"]:
        note_stored_adjustments(ctx, "teacher", ctx.extra["training"]["teacher"])
    return net, meta


@register_method
class Teacher(Method):
    name = "teacher"
    description = "multimodal teacher scored WITH privileged modalities at test: the upper bound, not a student"
    uses_privileged_at_test = True
    bound = "upper_bound"

    def fit(self, train: Split, val: Split) -> None:
        self.net, _ = get_teacher(self.ctx, train, val)

    def predict(self, split: Split) -> np.ndarray:
        return predict_split(self.net, split, self.ctx)
