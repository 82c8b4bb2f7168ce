"""Issue 14's infrastructure: vector modalities and their encoders (model.encoder), a teacher restricted to the
privileged modalities (teacher.modalities), the `lupi` task (Lopez-Paz et al. 2016, §4) and kd's gd preset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.config import compose_one
from harness.data import TargetSpec
from harness.records import config_id, run_key
from harness.runner import execute
from methods.blocks import MultimodalNet
from methods.teacher import teacher_key

BINARY = TargetSpec("classification", ("y",), n_classes=2, class_names=("neg", "pos"))

# ---------------------------------------------------------------------------------------------------------------
# 1. Vector modalities and model.encoder


def test_linear_student_is_exactly_logistic_regression():
    torch.manual_seed(0)
    net = MultimodalNet({"x": 7}, BINARY, hidden=16, encoder="linear").eval()
    x = torch.randn(11, 7)
    params = dict(net.named_parameters())
    assert sorted(params) == ["encoders.x.linear.bias", "encoders.x.linear.weight"]  # no hidden layer, no fusion
    W, b = params["encoders.x.linear.weight"].detach().numpy(), params["encoders.x.linear.bias"].detach().numpy()
    expected = x.numpy() @ W.T + b
    got = net({"x": x}).out
    assert got.shape == (11, 1, 2)
    np.testing.assert_allclose(got[:, 0, :].detach().numpy(), expected, rtol=1e-6, atol=1e-6)


def test_linear_net_of_two_modalities_sums_their_affine_maps():
    torch.manual_seed(1)
    net = MultimodalNet({"a": 3, "b": 5}, BINARY, encoder="linear").eval()
    a, b = torch.randn(4, 3), torch.randn(4, 5)
    la, lb = net.encoders["a"].linear, net.encoders["b"].linear
    expected = (a @ la.weight.T + la.bias + b @ lb.weight.T + lb.bias).detach().numpy()
    np.testing.assert_allclose(net({"a": a, "b": b}).out[:, 0].detach().numpy(), expected, rtol=1e-6, atol=1e-6)


def test_one_modality_mlp_is_one_hidden_layer():
    torch.manual_seed(2)
    net = MultimodalNet({"x": 6}, BINARY, hidden=5, dropout=0.0, encoder="mlp").eval()
    assert net.fusion is None
    x = torch.randn(9, 6)
    enc, head = net.encoders["x"].proj, net.head.linear
    expected = (torch.relu(x @ enc.weight.T + enc.bias) @ head.weight.T + head.bias).detach().numpy()
    np.testing.assert_allclose(net({"x": x}).out[:, 0].detach().numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("encoder", ["mlp", "temporal"])
def test_mlp_and_temporal_take_vector_modalities(encoder):
    net = MultimodalNet({"x": 6, "x_star": 2}, BINARY, hidden=8, layers=1, encoder=encoder)
    out = net({"x": torch.randn(10, 6), "x_star": torch.randn(10, 2)})
    assert out.out.shape == (10, 1, 2) and out.z.shape == (10, 8)
    out.out.sum().backward()  # trains
    assert all(p.grad is not None for p in net.parameters())


def test_linear_and_mlp_refuse_sequences():
    with pytest.raises(ValueError, match="vector inputs"):
        MultimodalNet({"x": 6}, BINARY, encoder="linear")({"x": torch.randn(2, 4, 6)})


def test_existing_run_keys_unchanged():
    # run keys and leaderboard ids of default configs, computed before model.encoder / teacher.modalities /
    # method.preset existed: the new keys are neutral at their defaults (harness/records.py KEYS_NEUTRAL_AT)
    for overrides, key, cid in [([], "f0-s0-9a19fc2a44e7", "86a6bba3"),
                                (["method=teacher", "task.target=classes"], "f0-s0-d0ac38af7870", "b2a1fd89"),
                                (["method=pkdot", "seed=3"], "f0-s3-94ed0e1e90bc", "f598e74d")]:
        cfg = compose_one(overrides)
        assert (run_key(cfg), config_id(cfg)) == (key, cid), overrides
    assert run_key(compose_one(["model.encoder=mlp"])) != "f0-s0-9a19fc2a44e7"


def test_sequence_task_refuses_vector_encoders(tiny_cfg):
    from harness.task import TaskError
    with pytest.raises(TaskError, match="model.encoder=linear takes vector inputs.*visual"):
        execute(tiny_cfg("method=student", "model.encoder=linear"))


# ---------------------------------------------------------------------------------------------------------------
# 2. teacher.modalities


def _ctx(cfg):
    from pathlib import Path

    from harness.method import RunContext
    from harness.runner import build_task, resolve_device
    from harness.teachers import TeacherStore
    task = build_task(cfg)
    return task.load_fold(int(cfg.fold)), RunContext(
        cfg=cfg, task=task, fold=int(cfg.fold), seed=int(cfg.seed), device=resolve_device("cpu"),
        teachers=TeacherStore(Path(cfg.cache_dir) / "teachers"), run_dir=Path(cfg.results_dir), progress=False)


def test_privileged_teacher_sees_only_the_privileged_modalities(tiny_cfg):
    from harness.registry import METHODS
    cfg = tiny_cfg("method=teacher", "teacher.modalities=privileged")
    data, ctx = _ctx(cfg)
    m = METHODS.get("teacher")(cfg.method, ctx)
    m.fit(data.train, data.val)
    assert list(m.net.encoders) == ["physio"]
    base = m.predict(data.test)
    noisy = data.test.restrict(tuple(data.test.inputs))
    noisy.inputs = {**noisy.inputs, "visual": noisy.inputs["visual"] * 0 + 100}
    np.testing.assert_array_equal(base, m.predict(noisy))  # the student's modality cannot change its output
    # its stored key differs from the all-modality teacher's; the default key has no such entry
    assert teacher_key(ctx)["modalities"] == "privileged"
    assert "modalities" not in teacher_key(_ctx(tiny_cfg("method=teacher"))[1])


def test_privileged_teacher_needs_a_privileged_modality(tiny_cfg):
    from harness.task import TaskError
    with pytest.raises(TaskError, match="teacher.modalities=privileged"):
        execute(tiny_cfg("method=teacher", "teacher.modalities=privileged", "task.protocol=full"))
