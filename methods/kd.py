"""Point-to-point privileged KD (Hinton et al. 2015 response matching + FitNets feature matching).

loss = task_weight · task
     + response_weight · [ T² · KL(softmax(t/T) ‖ softmax(s/T))  (classes) | MSE(s, t) (regression) ]
     + feature_weight · MSE(P z_S, z_T)      P: a learned linear projection (FitNets' regressor)
The teacher is the stored multimodal teacher of this (task, fold, seed) (methods/teacher.py).

`method.recipe=gd`: generalized distillation (Lopez-Paz et al., ICLR 2016) at imitation λ = 1 and T = 1: only
the soft loss, KL(softmax(t) ‖ softmax(s)), i.e. the cross-entropy against the teacher's softmax up to the
teacher's entropy (a constant): the same gradients. With teacher.modalities=privileged the teacher sees x* only.
(Not `method.preset`: DMD's preset has a value `none` whose run keys must not change.)
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.data import Split
from harness.method import Method
from harness.registry import register_method
from harness.training import Batch, fit
from methods.blocks import task_loss
from methods.teacher import build_net, frozen_outputs, get_teacher, predict_split, predictor


def response_loss(student_out: torch.Tensor, teacher_out: torch.Tensor, kind: str, temperature: float,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """Hinton KD (T²-scaled KL from the teacher's softened distribution) or MSE between predictions."""
    if mask is not None:
        student_out, teacher_out = student_out[mask], teacher_out[mask]
    if kind == "classification":
        c = student_out.shape[-1]
        log_p_s = F.log_softmax(student_out.reshape(-1, c) / temperature, dim=-1)
        log_p_t = F.log_softmax(teacher_out.reshape(-1, c) / temperature, dim=-1)
        return F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean") * temperature**2
    return F.mse_loss(student_out, teacher_out)


# Named settings of kd: the values they replace (recorded in the run's `adjusted`).
RECIPES = {"gd": {"task_weight": 0.0, "response_weight": 1.0, "feature_weight": 0.0, "temperature": 1.0}}


def resolved_weights(cfg, ctx=None) -> dict[str, float]:
    """task_weight, response_weight, feature_weight and temperature after method.recipe."""
    values = {k: float(cfg[k]) for k in ("task_weight", "response_weight", "feature_weight", "temperature")}
    recipe = str(cfg.get("recipe", "none"))
    if recipe == "none":
        return values
    if recipe not in RECIPES:
        raise ValueError(f"method.recipe={recipe!r}: choose none or {', '.join(RECIPES)}")
    for key, used in RECIPES[recipe].items():
        if ctx is not None and values[key] != used:
            ctx.adjust(f"method.{key}", values[key], used, f"method.recipe={recipe} sets it")
        values[key] = used
    return values


@register_method
class KD(Method):
    name = "kd"
    description = "point-to-point privileged KD: Hinton/MSE response matching + FitNets feature matching"

    def fit(self, train: Split, val: Split) -> None:
        ctx, cfg = self.ctx, self.cfg
        teacher, _ = get_teacher(ctx, train, val)
        self.net = build_net(ctx, ctx.spec.student_modalities)
        self.proj = nn.Linear(self.net.hidden, teacher.hidden).to(ctx.device)
        module = nn.ModuleDict({"net": self.net, "proj": self.proj})
        target = ctx.spec.target
        w = resolved_weights(cfg, ctx)

        def teacher_outputs(inputs, lengths):
            out = teacher(inputs, lengths)
            return out.out, out.z
        frozen = frozen_outputs(teacher_outputs, train, ctx)

        def loss_fn(batch: Batch):
            t_logits, t_z = frozen(batch)
            s_out = self.net(batch.inputs, batch.lengths)
            l_task = task_loss(s_out.out, batch.targets, target, batch.mask, ctx.cfg.train.regression_loss)
            l_resp = response_loss(s_out.out, t_logits, target.kind, w["temperature"], batch.mask)
            l_feat = F.mse_loss(self.proj(s_out.z), t_z)
            loss = w["task_weight"] * l_task + w["response_weight"] * l_resp + w["feature_weight"] * l_feat
            return loss, {"task": float(l_task.detach()), "response": float(l_resp.detach()), "feature": float(l_feat.detach())}

        fit("student", module, loss_fn, predictor(self.net, ctx), train, val, ctx, ctx.cfg.train)

    def predict(self, split: Split) -> np.ndarray:
        return predict_split(self.net, split, self.ctx)
