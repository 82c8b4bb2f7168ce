"""Issue 14's infrastructure: vector modalities and their encoders (model.encoder), a teacher restricted to the
privileged modalities (teacher.modalities), the `lupi` task (Lopez-Paz et al. 2016, §4) and kd's gd preset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from harness.config import compose_one
from harness.data import TargetSpec
from harness.records import config_id, run_key
from harness.runner import execute
from harness.task import TaskError
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


# the defaults of the synthetic generator and root train.min_delta before the recalibration of issue 13
BEFORE_RECALIBRATION = ["task.latent_gain=3.0", "task.subject_shift=0.8", "train.min_delta=0.0"]


def test_existing_run_keys_unchanged():
    # run keys and leaderboard ids of default configs, computed before model.encoder / teacher.modalities /
    # method.preset existed: the new keys are neutral at their defaults (harness/records.py KEYS_NEUTRAL_AT)
    old = BEFORE_RECALIBRATION
    for overrides, key, cid in [([], "f0-s0-9a19fc2a44e7", "86a6bba3"),
                                (["method=teacher", "task.target=classes"], "f0-s0-d0ac38af7870", "b2a1fd89"),
                                (["method=pkdot", "seed=3"], "f0-s3-94ed0e1e90bc", "f598e74d")]:
        cfg = compose_one([*overrides, *old])
        assert (run_key(cfg), config_id(cfg)) == (key, cid), overrides
    # kd's recipe is not named preset: DMD's method.preset=none must keep its key
    assert run_key(compose_one(["method=dmd", "method.preset=none", *old])) == "f0-s0-b1be9800280b"
    assert run_key(compose_one(["method=kd", "task.target=classes", "seed=2", *old])) == "f0-s2-420fc106d31a"
    assert run_key(compose_one(["model.encoder=mlp", *old])) != "f0-s0-9a19fc2a44e7"
    assert run_key(compose_one([])) != "f0-s0-9a19fc2a44e7"  # the recalibrated defaults are a new configuration


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


# ---------------------------------------------------------------------------------------------------------------
# 3. The lupi task

from tasks.lupi import generate, standardise  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

@pytest.fixture
def lupi_cfg(tmp_path):
    def make(*overrides: str):
        return compose_one(["task=lupi", "train.max_epochs=3", "progress=false", f"results_dir={tmp_path / 'r'}",
                            f"cache_dir={tmp_path / 'c'}", *overrides])
    return make


PAPER = ["task=lupi", "model.encoder=linear", "train.optimizer=rmsprop", "train.lr=0.001", "train.weight_decay=0",
         "train.grad_clip=null", "train.stop=budget", "train.batch_size=32", "train.drop_last=false"]


def test_exp1_labels_flip_at_the_rate_the_noise_implies():
    g = generate(1, 50, 40000, 0, 1, repetition=3)
    x, xs, y, _ = g["train"]
    np.testing.assert_allclose(xs[:, 0], x @ g["alpha"])
    sigma = np.linalg.norm(g["alpha"])  # x* ~ N(0, |α|²), ε ~ N(0, 1): P(sign agrees) = 1/2 + arcsin(σ/√(σ²+1))/π
    expected = 0.5 + np.arcsin(sigma / np.sqrt(sigma**2 + 1)) / np.pi
    assert abs(np.mean(y == (xs[:, 0] > 0)) - expected) < 0.005
    assert np.mean(y == (xs[:, 0] > 0)) < 1  # the noise is there


def test_exp2_noise_has_unit_variance_and_labels_are_clean():
    x, xs, y, _ = (g := generate(2, 50, 20000, 0, 1, repetition=0))["train"]
    np.testing.assert_allclose((x - xs).var(0), 1, atol=0.05)
    np.testing.assert_allclose(xs.var(0), 1, atol=0.05)
    np.testing.assert_array_equal(y, (xs @ g["alpha"] > 0).astype(int))


def test_exp3_x_star_is_the_fixed_columns_J():
    g = generate(3, 50, 300, 10, 500, repetition=5)
    for split in ("train", "val", "test"):
        x, xs, y, _ = g[split]
        np.testing.assert_array_equal(xs, x[:, g["J"]])
        np.testing.assert_array_equal(y, (x[:, g["J"]] @ g["alpha"][g["J"]] > 0).astype(int))
    assert len(set(g["J"].tolist())) == 3
    assert not np.array_equal(generate(3, 50, 2, 0, 1, repetition=6)["J"], g["J"])  # drawn anew per repetition


def test_exp4_J_is_per_sample_and_labels_cut_at_the_median():
    g = generate(4, 50, 2000, 0, 1, repetition=1)
    x, xs, y, Ji = g["train"]
    assert Ji.shape == (2000, 3) and all(len(set(r)) == 3 for r in Ji.tolist())
    np.testing.assert_array_equal(xs, x[np.arange(2000)[:, None], Ji])
    assert len({tuple(sorted(r)) for r in Ji.tolist()}) > 1500  # per sample, not one J for all
    score = (xs * g["alpha"][Ji]).sum(1)
    np.testing.assert_array_equal(y, (score > np.median(score)).astype(int))
    assert y.mean() == 0.5


def test_exp4_code_variant_draws_one_J_per_split_and_weights_by_the_first_alphas():
    g = generate(4, 50, 2000, 500, 500, repetition=1, exp4_relevant="code")
    Js = []
    for split in ("train", "val", "test"):
        x, xs, y, Ji = g[split]
        assert len({tuple(r) for r in Ji.tolist()}) == 1  # one J for the whole split
        J = Ji[0]
        np.testing.assert_array_equal(xs, x[:, J])
        score = xs @ g["alpha"][:3]  # α[0:3] whatever J is, as the reference code
        np.testing.assert_array_equal(y, (score > np.median(score)).astype(int))
        Js.append(tuple(J))
    assert len(set(Js)) == 3  # each split its own J
    with pytest.raises(TaskError, match="exp4_relevant='both'"):
        generate(4, 50, 10, 0, 10, repetition=1, exp4_relevant="both")


def test_repetition_is_the_seed_and_draws_alpha_anew():
    a0 = generate(1, 50, 2, 0, 1, repetition=0)["alpha"]
    assert not np.allclose(a0, generate(1, 50, 2, 0, 1, repetition=1)["alpha"])
    np.testing.assert_array_equal(a0, generate(1, 50, 2, 0, 1, repetition=0)["alpha"])
    from harness.runner import build_task
    task = build_task(compose_one(["task=lupi", "seed=4"]))
    assert task.cfg.repetition == 4
    raw = generate(1, 50, 200, 0, 10000, repetition=4)
    data = task.load_fold(0)
    np.testing.assert_array_equal(data.test.targets[:, 0], raw["test"][2])
    assert (len(data.train), len(data.val), len(data.test)) == (200, 0, 10000)
    assert task.spec.privileged_modalities == ("x_star",) and task.spec.student_modalities == ("x",)
    assert task.data_source == "synthetic" and task.n_folds == 1 and task.spec.primary_metric == "accuracy"


def test_standardisation_uses_training_statistics_only():
    from harness.runner import build_task
    cfg = compose_one(["task=lupi", "task.experiment=2", "task.n_val=30", "seed=2"])
    data = build_task(cfg).load_fold(0)
    raw = generate(2, 50, 200, 30, 10000, repetition=2)
    for m, i in (("x", 0), ("x_star", 1)):
        tr = raw["train"][i]
        mean, std = tr.mean(0), tr.std(0)
        np.testing.assert_allclose(data.train.inputs[m], (tr - mean) / std, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(data.test.inputs[m], (raw["test"][i] - mean) / std, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(data.val.inputs[m], (raw["val"][i] - mean) / std, rtol=1e-4, atol=1e-5)
        assert abs(data.test.inputs[m].mean(0)).max() > 1e-3  # test is not standardised with its own statistics
    a = np.array([[1.0, 5.0], [3.0, 5.0]])
    np.testing.assert_allclose(standardise(a, np.array([[2.0, 6.0]]))[1], [[0.0, 1.0]])  # constant column: centred


def test_lupi_without_validation_needs_the_budget(lupi_cfg):
    from harness.task import TaskError
    with pytest.raises(TaskError, match="no validation split.*train.stop=budget"):
        execute(lupi_cfg("task=lupi", "method=student", "model.encoder=linear"))


@pytest.mark.parametrize("method", ["student", "kd"])
def test_lupi_firewall(method, lupi_cfg, monkeypatch):
    """x_star never reaches a student's predict, and changing it cannot change the student's predictions."""
    from harness.registry import METHODS
    cls = METHODS.get(method)
    seen, outs = [], []
    real = cls.predict

    def spy(self, split):
        seen.append(split.modalities)
        out = real(self, split)
        outs.append(out)
        noisy = split.restrict(("x",))
        noisy.inputs = {**noisy.inputs, "x_star": np.full((len(split), 1), 1e3, np.float32)}
        np.testing.assert_array_equal(out, real(self, noisy))
        return out
    monkeypatch.setattr(cls, "predict", spy)
    rec = execute(lupi_cfg(*PAPER, f"method={method}", "teacher.modalities=privileged", "task.n_test=300"))
    assert rec["status"] == "ok", rec.get("traceback")
    assert seen == [("x",)] and rec["privileged_modalities"] == ["x_star"] and rec["data_source"] == "synthetic"
    assert rec["extra"]["training"]["student"]["stop_reason"] == "budget"


def test_lupi_paper_settings_learn(lupi_cfg):
    """Logistic regression on x* of experiment 3 (the labels are a linear function of x*) is near perfect."""
    rec = execute(lupi_cfg(*PAPER, "method=teacher", "teacher.modalities=privileged", "task.experiment=3",
                           "train.max_epochs=200", "train.lr=0.01", "task.n_test=2000"))
    assert rec["status"] == "ok", rec.get("traceback")
    assert rec["metrics"]["accuracy"] > 0.95


# ---------------------------------------------------------------------------------------------------------------
# 4. kd's gd recipe


def test_gd_recipe_weights_and_adjusted():
    from methods.kd import resolved_weights
    cfg = compose_one(["method=kd", "method.recipe=gd"]).method
    assert resolved_weights(cfg) == {"task_weight": 0.0, "response_weight": 1.0, "feature_weight": 0.0,
                                     "temperature": 1.0}
    assert resolved_weights(compose_one(["method=kd"]).method) == {"task_weight": 1.0, "response_weight": 1.0,
                                                                   "feature_weight": 0.5, "temperature": 4.0}

    class Ctx:
        adjusted = {}

        def adjust(self, key, asked, used, why):
            self.adjusted[key] = (asked, used)
    ctx = Ctx()
    resolved_weights(cfg, ctx)
    assert ctx.adjusted == {"method.task_weight": (1.0, 0.0), "method.feature_weight": (0.5, 0.0),
                            "method.temperature": (4.0, 1.0)}


def test_response_loss_at_T1_is_soft_cross_entropy_minus_teacher_entropy():
    from methods.kd import response_loss
    torch.manual_seed(0)
    s, t = torch.randn(6, 1, 2), torch.randn(6, 1, 2)
    p_t = t.softmax(-1).reshape(-1, 2).numpy()
    log_p_s = s.log_softmax(-1).reshape(-1, 2).numpy()
    ce = -(p_t * log_p_s).sum(1).mean()
    entropy = -(p_t * np.log(p_t)).sum(1).mean()
    assert float(response_loss(s, t, "classification", 1.0)) == pytest.approx(ce - entropy, rel=1e-5)


def test_gd_run_records_its_recipe(lupi_cfg):
    rec = execute(lupi_cfg(*PAPER, "method=kd", "method.recipe=gd", "teacher.modalities=privileged",
                           "task.n_test=200"))
    assert rec["status"] == "ok", rec.get("traceback")
    assert rec["adjusted"]["method.temperature"] == {"asked": 4.0, "used": 1.0, "why": "method.recipe=gd sets it"}
    assert rec["logs"]["student"][-1]["train_loss"] == pytest.approx(rec["logs"]["student"][-1]["train_response"])


@pytest.mark.parametrize("signal", [0.0, 0.6])
def test_privileged_signal_mixes_noise_into_x_star_only(signal):
    paper, mixed = generate(3, 20, 20000, 0, 5000, repetition=1), generate(3, 20, 20000, 0, 5000, 1, signal)
    for s in ("train", "test"):
        np.testing.assert_array_equal(mixed[s][0], paper[s][0])  # x and y untouched
        np.testing.assert_array_equal(mixed[s][2], paper[s][2])
        for j in range(3):  # corr(x*, paper's x*) = s, column by column
            r = np.corrcoef(mixed[s][1][:, j], paper[s][1][:, j])[0, 1]
            assert r == pytest.approx(signal, abs=4 / np.sqrt(len(paper[s][2])))  # 4 standard errors
    with pytest.raises(TaskError, match=r"privileged_signal=1.5.*\[0, 1\]"):
        generate(1, 5, 10, 0, 10, 0, 1.5)
    assert generate(1, 5, 10, 0, 10, 0, 1.0)["train"][1].tolist() == generate(1, 5, 10, 0, 10, 0)["train"][1].tolist()


def test_reproduction_table_shows_the_leaderboard_numbers_beside_the_paper(lupi_cfg, tmp_path):
    import importlib.util
    from harness.leaderboard import collect, compare, summarise
    spec = importlib.util.spec_from_file_location("lupi_table", ROOT / "scripts" / "lupi_table.py")
    lupi_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lupi_table)
    results = tmp_path / "r"  # lupi_cfg writes there
    for seed in (0, 1, 2):
        for kind in (["method=teacher", "teacher.modalities=privileged"], ["method=student"],
                     ["method=kd", "method.recipe=gd", "teacher.modalities=privileged"]):
            rec = execute(lupi_cfg(*PAPER, *kind, f"seed={seed}", "task.n_test=300", "train.max_epochs=20"))
            assert rec["status"] == "ok", rec.get("traceback")
    text = lupi_table.table(str(results))
    runs = collect(results)
    summary, cmp = summarise(runs), compare(runs)
    acc = summary[summary.metric == "accuracy"].set_index("method")
    row = next(line for line in text.splitlines()[2:] if line.split("|")[1].strip() == "1")
    for method in ("teacher", "student", "kd"):
        assert f"{acc.loc[method, 'mean']:.3f} ± {acc.loc[method, 'std']:.3f} (n=3)" in row
    d = cmp[(cmp.method == "kd") & (cmp.reference == "student")].iloc[0]
    assert f"{d['mean']:+.3f} [{d.ci_low:+.3f}, {d.ci_high:+.3f}]" in row and "3 pairs" in row
    assert "paper 0.96 ± 0.00" in row and "paper 0.95 ± 0.01" in row
    assert len(text.splitlines()) == 3  # experiment 1 only: the header, the rule and one row


@pytest.mark.parametrize("method", ["pkdot", "mtpkdot"])
def test_structural_methods_run_without_a_validation_split(method, lupi_cfg):
    """n_val=0 (the paper's protocol): the T-Net and MT-PKDOT's stage 1 train a fixed budget and keep the last
    epoch, and the record says so (they crashed on the empty split before)."""
    stage1 = ["method.stage1.epochs=2"] if method == "mtpkdot" else []
    rec = execute(lupi_cfg("model.encoder=mlp", "train.stop=budget", f"method={method}", "method.tnet.epochs=3",
                           *stage1, "task.n_test=300"))
    assert rec["status"] == "ok", rec.get("traceback")
    tnet = rec["extra"]["tnet"]
    assert tnet["selection"] == "last epoch (no validation split)" and tnet["selected_epoch"] == 2
    assert tnet["val_before"] is None
    assert rec["extra"]["training"]["student"]["stop_reason"] == "budget"


def test_dmd_without_a_validation_split_names_its_own_loop_keys(lupi_cfg):
    from harness.task import TaskError
    with pytest.raises(TaskError, match=r"no validation split.*method\.training\.stop=budget"):
        execute(lupi_cfg("method=dmd", "train.stop=budget"))
    with pytest.raises(TaskError, match=r"method\.training\.schedule=plateau follows the validation score"):
        execute(lupi_cfg("method=dmd", "method.preset=none", "method.training.stop=budget"))
    rec = execute(lupi_cfg("method=dmd", "method.preset=none", "method.training.stop=budget",
                           "method.training.schedule=none", "method.training.max_epochs=1", "task.n_test=200",
                           "task.n_train=40"))
    assert rec["status"] == "ok", rec.get("traceback")
    assert rec["extra"]["dmd_edges"]["final_is"].endswith("training (no validation split) split")


def test_a_validation_split_is_its_own_section(lupi_cfg):
    from harness.registry import TASKS
    from omegaconf import OmegaConf
    base = OmegaConf.create({"name": "lupi", "experiment": 4, "d": 50, "n_train": 200, "n_val": 0, "n_test": 10,
                             "repetition": 0, "privileged_signal": 1.0, "exp4_relevant": "paper"})
    variant = lambda **kw: TASKS.get("lupi")(OmegaConf.merge(base, kw)).variant()  # noqa: E731
    assert variant() == "experiment 4, d=50, n_train=200"
    assert variant(n_val=200) == "experiment 4, d=50, n_train=200, n_val=200"
    assert variant(exp4_relevant="code") == "experiment 4, d=50, n_train=200, J as the reference code"
