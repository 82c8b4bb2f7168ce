"""MT-PKDOT (Aslam et al., arXiv 2408.09035): multi-teacher structural privileged distillation.

Fidelity: docs/fidelity.md#mtpkdot (and #pkdot-loss for the structural OT loss, imported from methods/pkdot.py).

Stage 1, self-distillation among teachers (`train_self_distil_wadn`). The candidate teachers are
  - one per modality m: an adapter A_m (two linear layers, H → width → H, no activation, as coded) on
    the teacher's pooled encoder feature f_m, with its own head h_m;
  - the joint teacher (fusion + head over every modality), giving z_J.
  Loss = align_weight · Σ_m mean_i(1 − cos(A_m(f_m)_i, z_J,i))
         + task_weight · [task(joint) + unimodal_weight · Σ_m task(h_m)]
  (0.5 / 0.5 / 0.5 as coded; z_J is not detached, so the alignment also moves the joint teacher.)
  Released code trains the joint fusion from scratch in this stage. Here the joint teacher is a COPY of
  the stored teacher of this (task, fold, seed) that is fine-tuned (its fusion and head; the encoders
  stay frozen, as the official backbones do in every distillation stage), so the stored teacher is
  never modified and stage 1 starts from a trained joint representation. Adam-style learning rates
  5e-3 (adapters, heads) and 1e-4 (joint) as coded; the harness loop (AdamW) selects the epoch with
  the best validation primary metric of the joint head (B9: the code selected on the test fold; B11:
  the code's validation scored the visual head twice, here each head's validation loss is reported
  separately in the record). The stage-1 teachers are stored (ctx.teachers, their own key), so a
  sweep trains them once per (task, fold, seed, teacher and stage-1 config).

Stage 2, the T-Net: the one of methods/pkdot.py (trained, stored, frozen: B5 fixed), shared with PKDOT.

Stage 3, the student (`train_student_mt`): as PKDOT's student. For each batch, every candidate's head
is scored with the task loss on the batch's labels (cross-entropy for classes; for regression
train.regression_loss, MSE or 1 − CCC, the loss the student itself optimises) and the candidate with
the lowest loss is distilled; ties go to the first in the order (modalities in the task's order, then
the joint teacher), the official order {ẑ_v, ẑ_p, z_J}. Loss = 0.8 · task + 0.2 · S_ε(Z*, z_S)
[+ 0.2 · L_cent when centroid=true; off by default as released, A3 of docs/fidelity.md#pkdot-bugs].
selection = `batch` is the faithful rule; `sample` chooses per sample (CCC is a batch statistic, so per
sample the regression loss is the squared error) and OT-matches the mixed teacher set (A4); `joint`
always distils z_J.
What the heads are scored on (selection_on; pre-registration 2026-12-07_pkdot_mechanism, arms M1 and M2):
`batch` = the training batch itself (as coded); `heldout_half` = each training batch is split in two halves by a
permutation from the run's seeded generator: the heads are scored on the first half (floor(B/2) rows), the student
steps on the other (task and OT terms on those rows only); `val` = the heads' task loss on the whole validation
split (candidate_losses, the stage's regression loss), the lowest kept for every batch of the epoch. The candidate
heads are frozen in stage 3 and evaluated in eval mode, so their validation scores are the same in every epoch:
they are computed once, which is what scoring them once per epoch gives. Both need selection=batch (the schema
says so): their scores are not made on the student's own rows, so no per-sample choice can follow from them.
Teacher-choice counts per epoch go to the record (extra.teacher_choice, unit: training batches, or samples under
selection=sample) and the per-epoch log.

B1 (batch-mixing attention) is fixed by construction (per-sample GatedFusion), as in PKDOT.

Training as coded (docs/fidelity.md#mtpkdot-loops): stage1.optimizer=official (Adam, no weight decay, no
clipping), stage1.frozen_mode=eval (the frozen encoders without dropout in stage 1), student_loop=official
(Adam 5e-4, 10 epochs). Parity with the official code: tests/test_parity_mtpkdot.py.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from harness.data import Split, TargetSpec, TaskSpec
from harness.method import Method, RunContext
from harness.registry import register_method
from harness.runner import derive_seed
from harness.training import Batch, SplitTensors, adopt_stored_log, fit
from methods.blocks import Head, MultimodalNet, masked_mean, task_loss
from methods.pkdot import (
    build_student,
    check_structural,
    note_k_cap,
    ot_terms,
    predict_student,
    student_train_cfg,
    validation_predictor,
)
from methods.teacher import (build_net, frozen_outputs, get_teacher, note_stored_adjustments, stored_training_summary,
                             teacher_key)


class TeacherSet(nn.Module):
    """The candidate teachers of MT-PKDOT: per-modality adapters + heads, and the joint teacher."""

    def __init__(self, joint: MultimodalNet, width: int):
        super().__init__()
        self.joint = joint
        h, target = joint.hidden, joint.target
        self.modalities = tuple(joint.modalities)
        self.adapters = nn.ModuleDict({m: nn.Sequential(nn.Linear(h, width), nn.Linear(width, h))
                                       for m in self.modalities})
        self.heads = nn.ModuleDict({m: Head(h, target) for m in self.modalities})

    @property
    def names(self) -> tuple[str, ...]:
        return (*self.modalities, "joint")

    def train(self, mode: bool = True) -> "TeacherSet":
        """As nn.Module.train; with frozen_encoders_eval (stage1.frozen_mode=eval, the official reading) the
        frozen encoders of the joint copy stay in eval mode (no dropout), as they are in stage 3."""
        super().train(mode)
        if mode and getattr(self, "frozen_encoders_eval", False):
            self.joint.encoders.eval()
        return self

    def forward(self, inputs, lengths=None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(z, out) per candidate, in `names` order. Per-step targets adapt per step and pool z."""
        seqs, pooled = self.joint.encode(inputs, lengths)
        joint = self.joint.fuse_and_predict(seqs, pooled, None, lengths)
        return [*self.unimodal_candidates(seqs, pooled, lengths), (joint.z, joint.out)]

    def unimodal_candidates(self, seqs, pooled, lengths=None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(A_m(f_m), h_m(A_m(f_m))) per modality, from the teacher's encoder features."""
        cands = []
        for m in self.modalities:
            if self.joint.target.per_step:
                z_seq = self.adapters[m](seqs[m])
                z = masked_mean(z_seq, (lengths or {}).get(m))
                cands.append((z, self.heads[m](z_seq)))
            else:
                z = self.adapters[m](pooled[m])
                cands.append((z, self.heads[m](z)))
        return cands


def stage1_loss(s1, cands: list[tuple[torch.Tensor, torch.Tensor]], targets: torch.Tensor, target: TargetSpec,
                mask: torch.Tensor | None = None, regression_loss: str = "mse"
                ) -> tuple[torch.Tensor, dict[str, float]]:
    """Stage 1 (`train_self_distil_wadn`): cands = [(z, out) per modality..., (z_J, out_J)].
    align_weight · Σ_m mean_i(1 − cos(A_m(f_m)_i, z_J,i)) + task_weight · [task(joint) + unimodal_weight · Σ_m
    task(h_m)]; z_J is not detached (the alignment also moves the joint teacher, as coded)."""
    z_j, out_j = cands[-1]
    align = sum((1 - F.cosine_similarity(z, z_j, dim=-1)).mean() for z, _ in cands[:-1])
    l_joint = task_loss(out_j, targets, target, mask, regression_loss)
    l_uni = sum(task_loss(o, targets, target, mask, regression_loss) for _, o in cands[:-1])
    loss = s1.align_weight * align + s1.task_weight * (l_joint + s1.unimodal_weight * l_uni)
    return loss, {"align": float(align.detach()), "task_joint": float(l_joint.detach()),
                  "task_unimodal": float(l_uni.detach())}


def choose_teacher(selection: str, cands: list[tuple[torch.Tensor, torch.Tensor]], targets: torch.Tensor,
                   target: TargetSpec, mask: torch.Tensor | None = None, regression_loss: str = "mse"
                   ) -> tuple[torch.Tensor, list[int]]:
    """Stage 3's teacher Z* for one batch and how many units (the batch, or samples) each candidate won.
    `batch`: the candidate whose head has the lowest task loss on the batch's labels (as coded), ties to the
    first; `sample`: the same per sample; `joint`: always z_J."""
    with torch.no_grad():
        if selection == "batch":
            pick = select_teacher([task_loss(o, targets, target, mask, regression_loss) for _, o in cands])
            return cands[pick][0], [int(i == pick) for i in range(len(cands))]
        if selection == "sample":
            per = torch.stack([per_sample_task_loss(o, targets, target, mask) for _, o in cands])
            pick_s = select_teacher_per_sample(per)
            z_star = torch.stack([z for z, _ in cands])[pick_s, torch.arange(len(pick_s))]
            return z_star, torch.bincount(pick_s, minlength=len(cands)).tolist()
        if selection == "joint":
            return cands[-1][0], [0] * (len(cands) - 1) + [1]
    raise ValueError(f"selection must be batch, sample or joint, got {selection!r}")


def stage3_loss(cfg, z_star: torch.Tensor, z_s: torch.Tensor, out_s: torch.Tensor, targets: torch.Tensor,
                target: TargetSpec, mask: torch.Tensor | None = None, regression_loss: str = "mse"
                ) -> tuple[torch.Tensor, dict[str, float]]:
    """Stage 3 (`train_student_mt`): task_weight · task + ot_weight · S_ε(Z*, z_S) [+ centroid_weight · L_cent]."""
    l_task = task_loss(out_s, targets, target, mask, regression_loss)
    l_struct, parts = ot_terms(cfg, z_star, z_s)
    return cfg.task_weight * l_task + l_struct, {"task": float(l_task.detach()), **parts}


def select_teacher(losses: list[float] | torch.Tensor) -> int:
    """Index of the lowest loss; ties go to the first candidate (the official order)."""
    values = [float(v) for v in losses]
    return min(range(len(values)), key=values.__getitem__)


def select_teacher_per_sample(losses: torch.Tensor) -> torch.Tensor:
    """[C, B] per-sample losses -> [B] index of the lowest, ties to the lowest index."""
    best = losses.min(0, keepdim=True).values
    # First index attaining the minimum (explicit, not relying on argmin's tie behaviour).
    hit = (losses == best).to(torch.int64)
    return (hit.cumsum(0) == 1).to(torch.int64).mul(hit).argmax(0)


def per_sample_task_loss(out: torch.Tensor, targets: torch.Tensor, target: TargetSpec,
                         mask: torch.Tensor | None = None) -> torch.Tensor:
    """[B] loss per sample: cross-entropy (classes) or squared error (regression), averaged over
    heads and valid steps."""
    if target.kind == "classification":
        per = F.cross_entropy(out.movedim(-1, 1), targets.long(), reduction="none")  # [B, (T,) K]
    else:
        per = (out - targets) ** 2
    if mask is not None:  # [B, T]
        m = mask.unsqueeze(-1).to(per.dtype)
        return (per * m).sum((1, 2)) / (m.sum((1, 2)) * per.shape[-1]).clamp(min=1)
    return per.reshape(per.shape[0], -1).mean(1)


# `stage1.optimizer: official` and `student_loop: official`: the loops of mtpkdot.py as coded (docs/fidelity.md
# #mtpkdot-loops). Stage 1 (train_self_distil_wadn): torch.optim.Adam with its defaults at the stage's two learning
# rates, no weight decay, no clipping. Stage 3 (train_student_mt): Adam at 5e-4 (lr_mmtransformer), no weight decay,
# no clipping, 10 epochs all run (the best epoch by validation accuracy kept, `val_acc > best`: min_delta 0), no
# schedule (the ReduceLROnPlateau it builds is never stepped); batch 128 is method.batch_size.
OFFICIAL_STAGE1_LOOP = {"optimizer": "adam", "weight_decay": 0.0, "grad_clip": None}
OFFICIAL_STUDENT_LOOP = {"optimizer": "adam", "lr": 5e-4, "weight_decay": 0.0, "grad_clip": None, "schedule": "none",
                         "max_epochs": 10, "patience": 10, "min_delta": 0.0, "stop": "patience"}
# stage1 keys added after stage-1 teacher sets were first stored, with the values those were trained with: at these
# values they stay out of the store key, so the stored sets are reused
_STAGE1_KEY_DEFAULTS = {"optimizer": "harness", "frozen_mode": "train"}


def stage1_key(ctx: RunContext, cfg) -> dict:
    s1 = OmegaConf.to_container(cfg.stage1, resolve=True)
    s1 = {k: v for k, v in s1.items() if _STAGE1_KEY_DEFAULTS.get(k, object()) != v}
    return {**teacher_key(ctx), "role": "mt_teachers", "stage1": s1}


def stage1_train_cfg(ctx: RunContext, s1) -> DictConfig:
    """The run's train config for stage 1: the stage's epochs/patience/batch, and with `stage1.optimizer: official`
    the official optimiser (Adam, no weight decay, no clipping); the learning rates are the stage's param groups."""
    loop = {"max_epochs": int(s1.epochs), "patience": int(s1.patience), "batch_size": int(s1.batch_size)}
    if s1.optimizer == "official":
        loop.update(OFFICIAL_STAGE1_LOOP)
    return OmegaConf.merge(ctx.cfg.train, loop)


def mt_student_train_cfg(ctx: RunContext, cfg) -> DictConfig:
    """The student's (stage 3) train config: PKDOT's (method.batch_size over train), and with `student_loop:
    official` the official loop's optimiser, learning rate, epochs and selection rule."""
    base = student_train_cfg(ctx, cfg)
    return OmegaConf.merge(base, OFFICIAL_STUDENT_LOOP) if cfg.student_loop == "official" else base


def get_teacher_set(ctx: RunContext, cfg, teacher: MultimodalNet, train: Split, val: Split
                    ) -> tuple[TeacherSet, dict]:
    """Stage 1 (trained once, stored, then frozen): adapters, heads and a fine-tuned copy of `teacher`
    (the stored teacher of this run, which is left untouched)."""
    s1 = cfg.stage1
    target, reg = ctx.spec.target, ctx.cfg.train.regression_loss

    def build():
        torch.manual_seed(derive_seed(ctx.seed, ctx.cfg.task.name, ctx.fold, "mt_teachers"))
        joint = build_net(ctx, tuple(ctx.spec.modalities))
        joint.load_state_dict(teacher.state_dict())  # a copy: the stored teacher is never modified
        return TeacherSet(joint, int(s1.adapter_width or joint.hidden // 2))

    def train_fn(ts: TeacherSet) -> dict:
        for p in ts.joint.encoders.parameters():
            p.requires_grad_(False)
        ts.frozen_encoders_eval = s1.frozen_mode == "eval"  # the official backbones' eval mode (no dropout)

        def loss_fn(batch: Batch):
            return stage1_loss(s1, ts(batch.inputs, batch.lengths), batch.targets, target, batch.mask, reg)

        def predict_fn(batch: Batch) -> torch.Tensor:
            out = ts.joint(batch.inputs, batch.lengths).out
            return out.softmax(-1) if target.kind == "classification" else out

        groups = [{"params": [*ts.adapters.parameters(), *ts.heads.parameters()], "lr": float(s1.lr_adapters)},
                  {"params": [*ts.joint.fusion.parameters(), *ts.joint.head.parameters()], "lr": float(s1.lr_joint)}]
        log = fit("mt_teachers", ts, loss_fn, predict_fn, train, val, ctx, stage1_train_cfg(ctx, s1), params=groups)
        has_val = val is not None and len(val) > 0  # lupi's n_val=0: nothing to score the candidates on
        return {"log": log, "val_task_loss": candidate_losses(ts, val, ctx) if has_val else None,
                "training": ctx.extra["training"]["mt_teachers"]}

    with torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda" else []):
        ts, meta = ctx.teachers.get_or_train(stage1_key(ctx, cfg), build, train_fn, ctx.device)
    adopt_stored_log(ctx, "mt_teachers", meta)
    ctx.extra["mt_teachers"] = {"store_path": meta["store_path"], "reused": meta["reused"],
                                "val_task_loss": meta.get("val_task_loss")}
    ctx.extra.setdefault("training", {})["mt_teachers"] = {**stored_training_summary(meta), "reused": meta["reused"]}
    if meta["reused"]:
        note_stored_adjustments(ctx, "mt_teachers", ctx.extra["training"]["mt_teachers"])
    return ts, meta


def candidate_losses(ts: TeacherSet, split: Split, ctx: RunContext) -> dict[str, float]:
    """Each candidate head's task loss on a whole split (diagnostic: which teacher is informative)."""
    target = ctx.spec.target
    data = SplitTensors(split, ctx.device, target.kind == "classification")
    ts.eval()
    outs = [[] for _ in ts.names]
    with torch.no_grad():
        for b in data.batches(ctx.cfg.train.eval_batch_size):
            for i, (_, o) in enumerate(ts(b.inputs, b.lengths)):
                outs[i].append(o)
    whole = next(data.batches(data.n))
    return {name: float(task_loss(torch.cat(o), whole.targets, target, whole.mask, ctx.cfg.train.regression_loss))
            for name, o in zip(ts.names, outs)}


SELECTION_ON = ("batch", "heldout_half", "val")


def heldout_halves(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of a batch of n for selection_on=heldout_half: (scoring half of floor(n/2) rows, the student's rest),
    from one permutation drawn from `generator`."""
    if n < 2:
        raise ValueError(f"method.selection_on=heldout_half splits each training batch in two, and a batch has {n} "
                         f"row: use a larger method.batch_size or method.selection_on=batch")
    order = torch.randperm(n, generator=generator)
    return order[:n // 2], order[n // 2:]


def batch_rows(batch: Batch, rows: torch.Tensor) -> Batch:
    """The batch restricted to `rows` (positions in the batch), every field alike."""
    return Batch(inputs={k: v[rows] for k, v in batch.inputs.items()},
                 lengths={k: v[rows] for k, v in batch.lengths.items()}, targets=batch.targets[rows],
                 mask=None if batch.mask is None else batch.mask[rows], index=batch.index[rows])


def batches_per_epoch(n: int, batch_size: int) -> int:
    """How many batches harness.training.fit draws per epoch (drop_last unless the split is smaller)."""
    return n // batch_size if n > batch_size else 1


@register_method
class MTPKDOT(Method):
    name = "mtpkdot"
    description = "MT-PKDOT: self-distilled modality/joint teachers, per-batch best teacher distilled by entropic OT"

    @classmethod
    def check(cls, cfg: DictConfig, spec: TaskSpec) -> None:
        check_structural(cfg, spec)

    def fit(self, train: Split, val: Split) -> None:
        ctx, cfg = self.ctx, self.cfg
        loop = mt_student_train_cfg(ctx, cfg)
        selection_on = cfg.get("selection_on", "batch")
        if selection_on not in SELECTION_ON:
            raise ValueError(f"method.selection_on must be one of {', '.join(SELECTION_ON)}, got {selection_on!r}")
        if selection_on != "batch" and cfg.selection != "batch":  # the schema's rule, for callers that skip it
            raise ValueError(f"method.selection_on={selection_on} needs method.selection=batch, got {cfg.selection}")
        note_k_cap(ctx, cfg, len(train), loop)
        if selection_on == "heldout_half":  # the student's OT term sees the other half of each batch only
            full = min(int(loop.batch_size), len(train))
            half = full - full // 2
            if int(cfg.k) > half - 1:
                ctx.adjust("method.k", int(cfg.k), half - 1, f"method.selection_on=heldout_half: the student steps on "
                                                             f"{half} rows of each batch of {full}")
        teacher, _ = get_teacher(ctx, train, val)  # the stored one (copied by stage 1; feeds the T-Net)
        frozen_val = ctx.frozen_val(val, tuple(ctx.spec.modalities))  # validation data, never the test split
        teachers, _ = get_teacher_set(ctx, cfg, teacher, train, frozen_val)  # frozen, in eval mode (get_or_train)
        self.student = build_student(ctx, cfg, teacher, train, val)
        target, reg = ctx.spec.target, ctx.cfg.train.regression_loss
        names = teachers.names
        choices: list[list[int]] = []  # per training batch, samples assigned to each candidate
        val_pick, val_scores = None, None
        if selection_on == "val":
            if frozen_val is None or len(frozen_val) == 0:
                raise ValueError("method.selection_on=val scores the teachers on the validation split, and this run "
                                 "has none (e.g. lupi's task.n_val=0): give the task a validation split or set "
                                 "method.selection_on=batch")
            val_scores = candidate_losses(teachers, frozen_val, ctx)
            val_pick = select_teacher([val_scores[n] for n in names])
        halves_gen = torch.Generator().manual_seed(derive_seed(ctx.seed, ctx.cfg.task.name, ctx.fold, "mt-heldout"))

        def frozen_fn(inputs, lengths) -> tuple[torch.Tensor, ...]:
            """Every candidate's (z, output), flattened, then the slots' training features (when there are slots)."""
            flat = tuple(t for pair in teachers(inputs, lengths) for t in pair)
            features = self.student.training_features(inputs, lengths)
            return flat if features is None else flat + (features,)
        frozen = frozen_outputs(frozen_fn, train, ctx)
        n_flat = 2 * len(names)

        def loss_fn(batch: Batch):
            values = frozen(batch)
            if selection_on == "heldout_half":
                scoring, rows = heldout_halves(len(batch.index), halves_gen)
                held = batch_rows(batch, scoring)
                held_cands = [tuple(v[scoring] for v in values[i:i + 2]) for i in range(0, n_flat, 2)]
                _, counts = choose_teacher("batch", held_cands, held.targets, target, held.mask, reg)
                batch, values = batch_rows(batch, rows), tuple(v[rows] for v in values)
                z_star = values[2 * counts.index(1)]
            cands = [values[i:i + 2] for i in range(0, n_flat, 2)]
            features = values[n_flat] if len(values) > n_flat else None
            if selection_on == "batch":
                z_star, counts = choose_teacher(cfg.selection, cands, batch.targets, target, batch.mask, reg)
            elif selection_on == "val":
                z_star, counts = cands[val_pick][0], [int(i == val_pick) for i in range(len(cands))]
            choices.append(counts)
            s_out = self.student(batch.inputs, batch.lengths, features)
            loss, parts = stage3_loss(cfg, z_star, s_out.z, s_out.out, batch.targets, target, batch.mask, reg)
            share = {f"choice_{n}": c / max(sum(counts), 1) for n, c in zip(names, counts)}
            return loss, {**parts, **share}

        def saved_state() -> dict:
            return {"heldout_generator": halves_gen.get_state(), "choices": [list(c) for c in choices]}

        def put_state(saved: dict) -> None:  # a resumed run draws the same halves and counts every epoch's choices
            halves_gen.set_state(saved["heldout_generator"])
            choices[:] = [list(c) for c in saved["choices"]]

        log = fit("student", self.student.net, loss_fn, validation_predictor(self.student, val, ctx), train, val, ctx,
                  loop, caller_state=(saved_state, put_state))
        nb = batches_per_epoch(len(train), int(loop.batch_size))
        per_epoch = [np.sum(choices[e * nb:(e + 1) * nb], axis=0).astype(int).tolist() for e in range(len(log))]
        ctx.extra["teacher_choice"] = {
            "names": list(names), "selection": cfg.selection,
            **({"selection_on": selection_on} if selection_on != "batch" else {}),
            **({"val_task_loss": val_scores} if val_scores is not None else {}),
            "unit": "samples" if cfg.selection == "sample" else "batches",
            "per_epoch": [dict(zip(names, c)) for c in per_epoch],
            "total": dict(zip(names, np.sum(per_epoch, axis=0).astype(int).tolist())),
            "selected_epoch": next((e["epoch"] for e in log if e.get("selected")), None)}

    def predict(self, split: Split) -> np.ndarray:
        return predict_student(self.student, split, self.ctx)
