"""Student modalities only, trained on the labels alone: the lower bound every distiller must beat."""

from __future__ import annotations

import numpy as np

from harness.data import Split
from harness.method import Method
from harness.registry import register_method
from harness.training import fit
from methods.teacher import build_net, predict_split, predictor, supervised_loss


@register_method
class Student(Method):
    name = "student"
    description = "student modalities only, no teacher: the lower bound"
    bound = "lower_bound"

    def fit(self, train: Split, val: Split) -> None:
        self.net = build_net(self.ctx, self.ctx.spec.student_modalities)
        fit("student", self.net, supervised_loss(self.net, self.ctx), predictor(self.net, self.ctx),
            train, val, self.ctx, self.ctx.cfg.train)

    def predict(self, split: Split) -> np.ndarray:
        return predict_split(self.net, split, self.ctx)
