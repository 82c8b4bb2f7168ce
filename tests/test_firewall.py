"""The privileged firewall: a student never sees privileged test inputs, and they cannot change its output."""

import numpy as np
import pytest

from harness.registry import METHODS
from harness.runner import build_task, execute

STUDENTS = [n for n, c in METHODS.items() if not c.uses_privileged_at_test]


@pytest.mark.parametrize("method", STUDENTS)
def test_runner_hands_predict_only_student_modalities(method, tiny_cfg, monkeypatch):
    cls = METHODS.get(method)
    seen = []
    real_predict = cls.predict
    def spy(self, split):
        seen.append(split.modalities)
        return real_predict(self, split)
    monkeypatch.setattr(cls, "predict", spy)
    rec = execute(tiny_cfg(f"method={method}"))
    assert rec["status"] == "ok", rec.get("traceback")
    assert seen == [("visual",)]


@pytest.mark.parametrize("method", STUDENTS)
def test_privileged_test_inputs_cannot_change_predictions(method, tiny_cfg):
    from harness.method import RunContext
    from harness.runner import resolve_device
    from harness.teachers import TeacherStore
    cfg = tiny_cfg(f"method={method}")
    task = build_task(cfg)
    data = task.load_fold(0)
    ctx = RunContext(cfg=cfg, task=task, fold=0, seed=0, device=resolve_device("cpu"),
                     teachers=TeacherStore(cfg.cache_dir + "/teachers"), run_dir=__import__("pathlib").Path(cfg.results_dir),
                     progress=False)
    m = METHODS.get(method)(cfg.method, ctx)
    m.fit(data.train, data.val)
    base = m.predict(data.test.restrict(("visual",)))
    noisy = data.test.restrict(tuple(data.test.inputs))
    noisy.inputs = {**noisy.inputs, "physio": np.random.default_rng(0).normal(size=noisy.inputs["physio"].shape).astype(np.float32) * 100}
    np.testing.assert_array_equal(base, m.predict(noisy))


def test_teacher_is_the_only_method_using_privileged_at_test():
    assert [n for n, c in METHODS.items() if c.uses_privileged_at_test] == ["teacher"]
    assert METHODS.get("teacher").bound == "upper_bound"
