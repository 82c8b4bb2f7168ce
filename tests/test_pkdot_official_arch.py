"""The official PKDOT architecture as model options (model.fusion=transformer, model.batch_mixing, the T-Net's
autoencoder/linear8, teacher.train): config errors, what each option builds, the firewall, and the run keys of
earlier records. Parity with the official modules themselves: tests/test_parity_pkdot.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from harness.config import compose_one
from harness.data import TargetSpec
from harness.records import run_key, semantic_config
from harness.runner import build_task, execute
from harness.schema import GROUP_TABLES, ROOT
from harness.validate import problems
from methods.blocks import FUSIONS, MultimodalNet, TransformerFusion
from methods.pkdot import TNET_ARCHS

CLASSES = TargetSpec("classification", ("y",), n_classes=2)
OFFICIAL = ["model.fusion=transformer", "model.layers=0", "method.tnet.arch=autoencoder"]


def test_schema_choices_are_the_code_s():
    assert ROOT["model.fusion"].choices == FUSIONS
    assert GROUP_TABLES["method"]["pkdot"]["tnet.arch"].choices == TNET_ARCHS
    assert GROUP_TABLES["method"]["mtpkdot"]["tnet.arch"].choices == TNET_ARCHS
    assert {k[len("teacher.train."):] for k in ROOT if k.startswith("teacher.train.")} == \
        {k[len("train."):] for k in ROOT if k.startswith("train.")}


@pytest.mark.parametrize("overrides, message", [
    (["model.fusion=attention"], "model.fusion='attention': expected one of gated, transformer"),
    (["model.batch_mixing=sometimes"], "model.batch_mixing='sometimes': expected true or false"),
    (["method=pkdot", "method.tnet.arch=resnet"],
     "method.tnet.arch='resnet': expected one of mlp, linear, autoencoder, linear8"),
    (["method=mtpkdot", "method.tnet.arch=linear9"],
     "method.tnet.arch='linear9': expected one of mlp, linear, autoencoder, linear8; did you mean linear or linear8?"),
    (["+teacher.train.lr=0"], "teacher.train.lr=0: expected a float > 0"),
    (["+teacher.train.optimizer=sgdd"],
     "teacher.train.optimizer='sgdd': expected one of adamw, adam, rmsprop, sgd, rmsprop_keras; did you mean sgd?"),
    (["+teacher.train.lrr=1"], "unknown config key 'teacher.train.lrr'; did you mean teacher.train.lr?"),
])
def test_bad_values_are_named(overrides, message):
    assert problems(compose_one(overrides)) == [message]


def test_a_composition_error_names_the_bad_key_not_an_added_one():
    from harness.errors import ConfigError
    with pytest.raises(ConfigError, match="unknown config key 'foo'"):
        compose_one(["+teacher.train={lr: 0.1}", "foo=1"])


def test_the_recipe_keys_are_valid():
    cfg = compose_one(["task=biovid", "method=pkdot", *OFFICIAL, "model.hidden=512", "model.batch_mixing=true",
                       "+teacher.train={optimizer: sgd, lr: 0.001, max_epochs: 100, batch_size: 64}",
                       "method.tnet.arch=linear8"])
    assert problems(cfg) == []


def test_autoencoder_width_below_two_is_a_config_error(tiny_cfg):
    from harness.errors import ConfigError
    with pytest.raises(ConfigError, match=r"method.tnet.width=1: set method.tnet.width >= 2"):
        execute(tiny_cfg("method=pkdot", "method.tnet.arch=autoencoder", "method.tnet.width=1"))


def test_batch_mixing_needs_the_teacher_on_the_training_batch(tiny_cfg):
    from harness.errors import ConfigError
    with pytest.raises(ConfigError, match="set teacher.cache_outputs=false"):
        execute(tiny_cfg("method=pkdot", *OFFICIAL, "model.batch_mixing=true"))


def test_transformer_fusion_refuses_what_it_cannot_fuse():
    with pytest.raises(ValueError, match="exactly two modalities"):
        MultimodalNet({"a": 4, "b": 4, "c": 4}, CLASSES, hidden=8, fusion="transformer")
    with pytest.raises(ValueError, match="per-step targets"):
        MultimodalNet({"a": 4, "b": 4}, TargetSpec("regression", ("v",), per_step=True), hidden=8, fusion="transformer")
    with pytest.raises(ValueError, match="divisible"):
        MultimodalNet({"a": 4, "b": 4}, CLASSES, hidden=7, fusion="transformer")
    with pytest.raises(ValueError, match="model.fusion='x'"):
        MultimodalNet({"a": 4}, CLASSES, hidden=8, fusion="x")


def test_one_modality_is_the_official_visual_only_baseline():
    """The official visual-only model is its backbone feature then a linear classifier: no fusion."""
    net = MultimodalNet({"a": 4}, CLASSES, hidden=8, layers=0, fusion="transformer").eval()
    assert net.fusion is None
    x = torch.randn(5, 3, 4)
    out = net({"a": x})
    torch.testing.assert_close(out.out, net.head(net.encoders["a"](x)[1]))


def test_student_with_hallucinated_slot_uses_the_transformer():
    net = MultimodalNet({"visual": 4}, CLASSES, hidden=8, slots=("visual", "physio"), fusion="transformer",
                        batch_mixing=True)
    assert isinstance(net.fusion, TransformerFusion) and net.fusion.batch_mixing
    out = net({"visual": torch.randn(6, 3, 4)}, injected={"physio": torch.randn(6, 8)})
    assert out.out.shape == (6, 1, 2) and out.z.shape == (6, 8)


def test_defaults_leave_earlier_run_keys_unchanged():
    """model.fusion=gated, model.batch_mixing=false and no teacher.train are what every earlier record ran: they
    are not in a run's key, so records made before these keys existed keep theirs."""
    cfg = compose_one(["method=pkdot"])
    sem = semantic_config(cfg)
    assert "fusion" not in sem["model"] and "batch_mixing" not in sem["model"] and "teacher" not in sem
    assert run_key(compose_one(["method=pkdot", "model.fusion=transformer"])) != run_key(cfg)
    assert run_key(compose_one(["method=pkdot", "model.batch_mixing=true"])) != run_key(cfg)
    assert run_key(compose_one(["method=pkdot", "+teacher.train.lr=0.001"])) != run_key(cfg)


def test_teacher_train_overrides_train_the_teacher_only(tiny_cfg):
    """teacher.train.* replaces train.* for the stored teacher (its key, its optimizer, its epochs) and only for it."""
    from harness.method import RunContext
    from harness.runner import resolve_device
    from harness.teachers import TeacherStore
    from methods.teacher import teacher_key, teacher_train_cfg

    cfg = tiny_cfg("method=pkdot", "+teacher.train={stop: budget, max_epochs: 2, optimizer: sgd, lr: 0.01}",
                   "train.stop=budget", "train.max_epochs=3", "method.tnet.epochs=1")
    rec = execute(cfg)
    assert rec["status"] == "ok", rec.get("traceback")
    assert rec["extra"]["training"]["teacher"]["epochs_run"] == 2
    assert rec["extra"]["training"]["student"]["epochs_run"] == 3
    task = build_task(cfg)
    ctx = RunContext(cfg=cfg, task=task, fold=0, seed=0, device=resolve_device("cpu"),
                     teachers=TeacherStore(cfg.cache_dir + "/teachers"), run_dir=None, progress=False)
    merged = teacher_train_cfg(ctx)
    assert (merged.optimizer, merged.lr, merged.max_epochs, merged.batch_size) == ("sgd", 0.01, 2, cfg.train.batch_size)
    plain = OmegaConf.to_container(cfg)
    del plain["teacher"]["train"]
    plain = OmegaConf.create(plain)
    ctx_plain = RunContext(cfg=plain, task=task, fold=0, seed=0, device=resolve_device("cpu"),
                           teachers=TeacherStore(cfg.cache_dir + "/teachers"), run_dir=None, progress=False)
    assert teacher_key(ctx)["train"] != teacher_key(ctx_plain)["train"]
    assert teacher_key(ctx_plain)["train"] == semantic_config(plain)["train"]


@pytest.mark.parametrize("method", ["student", "pkdot"])
@pytest.mark.parametrize("batch_mixing", [False, True])
def test_official_architecture_never_sees_privileged_test_inputs(method, batch_mixing, tiny_cfg,
                                                                 record_predict_modalities):
    """The firewall with the official architecture: predict gets the student modalities only, and privileged test
    inputs replaced by noise change nothing (batch-mixing too: the batch mixes samples, never modalities)."""
    from harness.method import RunContext
    from harness.registry import METHODS
    from harness.runner import resolve_device
    from harness.teachers import TeacherStore

    cfg = tiny_cfg(f"method={method}", *OFFICIAL[:2], f"model.batch_mixing={str(batch_mixing).lower()}",
                   *([OFFICIAL[2], "method.tnet.epochs=2"] if method == "pkdot" else []),
                   *(["teacher.cache_outputs=false"] if batch_mixing else []))
    cls = METHODS.get(method)
    seen = record_predict_modalities(cls)
    rec = execute(cfg)
    assert rec["status"] == "ok", rec.get("traceback")
    assert seen == [("visual",)]

    task = build_task(cfg)
    data = task.load_fold(0)
    ctx = RunContext(cfg=cfg, task=task, fold=0, seed=0, device=resolve_device("cpu"),
                     teachers=TeacherStore(cfg.cache_dir + "/teachers"), run_dir=None, progress=False)
    m = cls(cfg.method, ctx)
    m.fit(data.train, data.val)
    base = m.predict(data.test.restrict(("visual",)))
    noisy = data.test.restrict(tuple(data.test.inputs))
    rng = np.random.default_rng(0)
    noisy.inputs = {**noisy.inputs, "physio": rng.normal(size=noisy.inputs["physio"].shape).astype(np.float32) * 100}
    np.testing.assert_array_equal(base, m.predict(noisy))


def test_the_recipe_arms_compose_and_validate():
    """Every arm of harness/conf/recipe/pkdot-biovid.yaml, full and smoke, is a valid run config."""
    import yaml
    from pathlib import Path
    recipe = yaml.safe_load((Path(__file__).resolve().parents[1] / "harness/conf/recipe/pkdot-biovid.yaml").read_text())
    for arm in recipe["arms"]:
        for extra in ([], recipe["smoke"]["overrides"]):
            cfg = compose_one([f"task={recipe['task']}", *recipe["overrides"], *extra, *arm["overrides"]])
            assert problems(cfg) == [], (arm["name"], problems(cfg))
            assert cfg.model.fusion == "transformer" and cfg.teacher.train.optimizer == "sgd"
            assert cfg.model.batch_mixing == (arm["name"] == "pkdot-batch-mixing")
            assert cfg.selection_split == ("test" if arm["name"] == "pkdot-test-selected" else "val")
    assert {a["name"] for a in recipe["arms"]} >= {"student", "teacher", "pkdot"}
