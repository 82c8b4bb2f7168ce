"""The privileged firewall: a student never sees privileged test inputs, and they cannot change its output."""

import numpy as np
import pytest

from harness.registry import METHODS
from harness.runner import build_task, execute

STUDENTS = [n for n, c in METHODS.items() if not c.uses_privileged_at_test]
# Options that feed a student privileged data while it trains: each is checked here as well (the oracle slot puts the
# true privileged features of each training sample in PKDOT's slot; at test it must read the T-Net, never physio).
PRIVILEGED_IN_TRAINING = [("pkdot", ("method.tnet.slot=oracle",)), ("mtpkdot", ("method.tnet.slot=oracle",))]
ARMS = [pytest.param(m, (), id=m) for m in STUDENTS] + \
    [pytest.param(m, o, id=f"{m}[{','.join(o)}]") for m, o in PRIVILEGED_IN_TRAINING]


@pytest.mark.parametrize("method,options", ARMS)
def test_runner_hands_predict_only_student_modalities(method, options, tiny_cfg, record_predict_modalities):
    seen = record_predict_modalities(METHODS.get(method))
    rec = execute(tiny_cfg(f"method={method}", *options))
    assert rec["status"] == "ok", rec.get("traceback")
    assert seen == [("visual",)]


@pytest.mark.parametrize("method,options", ARMS)
def test_privileged_test_inputs_cannot_change_predictions(method, options, tiny_cfg):
    from harness.method import RunContext
    from harness.runner import resolve_device
    from harness.teachers import TeacherStore
    cfg = tiny_cfg(f"method={method}", *options)
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


# --- selection_split=test: the student selects on the test split, the firewall still holds -----------------------

@pytest.mark.parametrize("method,options", ARMS)
def test_selection_on_test_hands_fit_the_test_split_without_privileged_modalities(method, options, tiny_cfg,
                                                                                  monkeypatch):
    cls = METHODS.get(method)
    seen = {}
    real_fit = cls.fit
    def spy(self, train, val):
        seen["val"] = (val.modalities, len(val))
        seen["validation"] = (self.ctx.validation.modalities, len(self.ctx.validation))
        return real_fit(self, train, val)
    monkeypatch.setattr(cls, "fit", spy)
    cfg = tiny_cfg(f"method={method}", "selection_split=test", *options)
    rec = execute(cfg)
    assert rec["status"] == "ok", rec.get("traceback")
    assert rec["selection_split"] == "test" and rec["config"]["selection_split"] == "test"
    data = build_task(cfg).load_fold(0)
    assert seen["val"] == (("visual",), len(data.test))  # the test split, as predict() sees it
    assert seen["validation"] == (("visual", "physio"), len(data.val))  # frozen parts that need physio: val


def _scrambled_physio(monkeypatch, scale: float):
    """Every fold the synthetic task loads gets its TEST physio replaced by noise (train and val untouched)."""
    from tasks.synthetic import Synthetic as SyntheticTask
    real = SyntheticTask.load_fold
    def load_fold(self, fold):
        data = real(self, fold)
        physio = data.test.inputs["physio"]
        data.test.inputs = {**data.test.inputs, "physio": (np.random.default_rng(int(scale)).normal(
            size=physio.shape) * scale).astype(physio.dtype)}
        return data
    monkeypatch.setattr(SyntheticTask, "load_fold", load_fold)


@pytest.mark.parametrize("method,options", ARMS)
def test_selection_on_test_never_reads_privileged_test_inputs(method, options, tmp_path, monkeypatch):
    """Two whole runs, selected on test, whose privileged test inputs differ: the same metrics and selected epochs,
    bit for bit (each run trains its own teacher: separate caches, so a stored teacher cannot hide a leak)."""
    from harness.config import compose_one
    from tests.conftest import METHOD_TINY, TINY
    records = []
    for scale in (1.0, 100.0):
        with monkeypatch.context() as m:
            _scrambled_physio(m, scale)
            cfg = compose_one([*TINY, f"results_dir={tmp_path / str(scale) / 'r'}",
                               f"cache_dir={tmp_path / str(scale) / 'c'}", f"method={method}", "selection_split=test",
                               *options, *METHOD_TINY.get(method, [])])
            records.append(execute(cfg))
    a, b = records
    assert a["status"] == b["status"] == "ok", (a.get("traceback"), b.get("traceback"))
    assert a["metrics"] == b["metrics"]
    assert a["extra"]["training"]["student"]["selected_epoch"] == b["extra"]["training"]["student"]["selected_epoch"]


def test_selection_split_defaults_to_val_and_keeps_earlier_run_keys(tiny_cfg):
    from harness.records import run_key
    cfg = tiny_cfg("method=student")
    assert cfg.selection_split == "val"
    assert run_key(cfg) == run_key(tiny_cfg("method=student", "selection_split=val"))  # records before the key
    assert run_key(cfg) != run_key(tiny_cfg("method=student", "selection_split=test"))
    rec = execute(cfg)
    assert rec["status"] == "ok" and rec["selection_split"] == "val"


def test_selection_on_test_is_a_validated_choice(tiny_cfg):
    from harness.validate import problems
    assert problems(tiny_cfg("selection_split=val")) == []
    assert problems(tiny_cfg("selection_split=train")) == ["selection_split='train': expected one of val, test"]


def test_selection_on_test_stores_the_teacher_method_apart_and_a_student_methods_teacher_with_val(tiny_cfg):
    """The `teacher` method (which sees physio at test anyway) selects on the whole test split: its stored teacher
    is another than the one selected on validation. A distiller's stored teacher needs physio, which its test copy
    lacks: it is the validation-selected one, reused as is."""
    def store(*overrides):
        rec = execute(tiny_cfg(*overrides))
        assert rec["status"] == "ok", rec.get("traceback")
        return rec["extra"]["teacher"]["store_path"], rec["extra"]["teacher"]["reused"]
    on_val, _ = store("method=teacher")
    on_test, reused = store("method=teacher", "selection_split=test")
    assert on_test != on_val and not reused
    kd_store, kd_reused = store("method=kd", "selection_split=test")
    assert kd_store == on_val and kd_reused
