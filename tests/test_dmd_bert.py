"""DMD with fine-tuned text (method.text_encoder=bert, the paper's DMD*): BERT on the MMSA pickles' text_bert tokens.

Every BERT here is a tiny, randomly initialised BertConfig written with save_pretrained to a tmp folder:
nothing is downloaded. Frozen text stays the default and keeps its run keys.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
from methods.dmd.bert import _transformers  # noqa: E402  (imports torchvision first where the CPU torch needs it)

transformers = _transformers()

import harness.training  # noqa: E402
from harness.config import compose_one  # noqa: E402
from harness.records import run_key, semantic_config  # noqa: E402
from harness.registry import TASKS  # noqa: E402
from harness.runner import execute  # noqa: E402
from harness.schema import ConfigError  # noqa: E402
from methods.dmd import DMD  # noqa: E402
from methods.dmd.bert import BertTextEncoder  # noqa: E402

SMALL = ["task.source=mimic", "task.mimic.n_train=24", "task.mimic.n_valid=12", "task.mimic.n_test=16",
         "method.d=8", "method.heads=2", "method.layers=1", "method.training.max_epochs=2",
         "method.training.accumulate=2", "stats.bootstrap_resamples=0", "progress=false"]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    """A 1-layer, 16-wide BERT with the bert-base vocabulary (the mimic's ids go up to 30000), random weights."""
    folder = tmp_path_factory.mktemp("tiny_bert")
    config = transformers.BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=64)
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(folder)
    return str(folder)


def bert_cfg(tmp_path, bert_path: str, *overrides: str):
    return compose_one(["method=dmd", "task=mosi", "method.text_encoder=bert", f"method.bert_path={bert_path}",
                        f"results_dir={tmp_path / 'r'}", f"cache_dir={tmp_path / 'c'}", *SMALL, *overrides])


def test_frozen_text_is_the_default_and_keeps_its_run_keys(tmp_path):
    """The keys of configs that existed before text_encoder (computed on the code before it) are unchanged."""
    before = {("method=dmd", "task=mosi"): "f0-s0-423d7057b3fa",
              ("method=dmd", "task=mosi", "task.protocol=full"): "f0-s0-b4aad1f6cb7e",
              ("method=dmd", "task=mosei"): "f0-s0-159f2a7b0770",
              ("method=kd", "task=mosi"): "f0-s0-8008cea9ea06"}
    for overrides, key in before.items():
        cfg = compose_one(list(overrides))
        assert cfg.task.text_input == "frozen" and run_key(cfg) == key
    frozen = compose_one(["method=dmd", "task=mosi"])
    assert frozen.method.text_encoder == "frozen"
    bert = compose_one(["method=dmd", "task=mosi", "method.text_encoder=bert"])
    assert bert.task.text_input == "bert"  # the task key follows the method's
    assert run_key(bert) != run_key(frozen)
    assert semantic_config(bert)["task"]["text_input"] == "bert"
    # the frozen task reads the features as before (and its feature cache keeps its key)
    task = TASKS.get("mosi")(compose_one(["task=mosi", "task.source=mimic", f"cache_dir={tmp_path}",
                                          "task.mimic.n_train=12", "task.mimic.n_valid=10",
                                          "task.mimic.n_test=10"]).task)
    assert task.reader_config() == {"file": "aligned_50.pkl", "clip_labels": True}
    assert task.spec.modalities["text"] == 768 and "frozen BERT features" in task.variant()


def test_the_task_delivers_text_bert_tokens_as_the_text_modality(tmp_path):
    cfg = compose_one(["task=mosi", "task.source=mimic", "task.text_input=bert", f"cache_dir={tmp_path}",
                       "task.mimic.n_train=12", "task.mimic.n_valid=10", "task.mimic.n_test=10"])
    task = TASKS.get("mosi")(cfg.task)
    fold = task.load_fold(0)
    text = fold.train.inputs["text"]
    assert text.shape == (12, 50, 3) and text.dtype == np.float32 and task.spec.modalities["text"] == 3
    assert (text[:, 0, 0] == 101).all() and set(np.unique(text[:, :, 1])) <= {0.0, 1.0}  # [CLS], 0/1 mask
    np.testing.assert_array_equal(fold.train.lengths["text"], text[:, :, 1].sum(1))
    assert "BERT fine-tuned" in task.variant() and task.reader_config()["text_input"] == "bert"
    assert fold.train.inputs["audio"].shape[-1] == 5  # audio and vision as before


@pytest.mark.parametrize("protocol", ["full", "privileged"])
def test_bert_run_trains_bert_with_its_own_lr_and_respects_the_firewall(tmp_path, tiny_bert, monkeypatch, protocol):
    optimizers, fitted, seen = [], [], []
    real_make, real_predict = harness.training.make_optimizer, DMD.predict

    def spy_optimizer(params, opts):
        optimizers.append(real_make(params, opts))
        return optimizers[-1]

    def spy_predict(self, split):
        fitted.append(self)
        seen.append(tuple(split.inputs))
        return real_predict(self, split)

    monkeypatch.setattr(harness.training, "make_optimizer", spy_optimizer)
    monkeypatch.setattr(DMD, "predict", spy_predict)
    cfg = bert_cfg(tmp_path, tiny_bert, "method.bert_lr=3e-5", f"task.protocol={protocol}")
    rec = execute(cfg, raise_errors=True)
    assert rec["status"] == "ok" and np.isfinite(rec["metrics"]["mae"])
    assert "BERT fine-tuned" in rec["task_variant"] and rec["modalities"]["text"] == 3
    assert rec["extra"]["dmd"]["text_features"].startswith("BERT fine-tuned")
    assert rec["extra"]["dmd"]["n_params_text_encoder"] > 0
    # the optimizer: DMD's groups at method.training.lr, BERT's at method.bert_lr, no weight decay
    (opt,) = optimizers
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(1e-4), pytest.approx(3e-5)]
    assert opt.param_groups[1]["name"] == "bert" and opt.param_groups[1]["weight_decay"] == 0.0
    bert = fitted[0].net.text_encoder.bert
    assert {id(p) for p in opt.param_groups[1]["params"]} == {id(p) for p in bert.parameters()}
    assert not {id(p) for p in opt.param_groups[0]["params"]} & {id(p) for p in bert.parameters()}
    # its gradients reached BERT: the selected weights (after >= 1 optimizer step) differ from the saved ones
    start = transformers.BertModel.from_pretrained(tiny_bert, add_pooling_layer=False).state_dict()
    moved = [k for k, v in bert.state_dict().items() if not torch.equal(v, start[k])]
    assert any(k.startswith("encoder.layer.0.") for k in moved) and any(k.startswith("embeddings.") for k in moved)
    # the firewall: in the privileged protocol text (and so BERT) is privileged, stripped at test
    assert seen == [("text", "audio", "vision") if protocol == "full" else ("audio", "vision")]


def test_missing_model_is_one_line_naming_the_path_and_how_to_get_it(tmp_path):
    missing = tmp_path / "no_bert_here"
    with pytest.raises(ConfigError) as err:
        execute(bert_cfg(tmp_path, str(missing)), raise_errors=True)
    msg = str(err.value)
    assert "\n" not in msg and str(missing) in msg and "hf download" in msg and "huggingface-cli download" in msg
    assert not (tmp_path / "r" / "mosi").exists()  # a config error: no run folder, no record


def test_text_tokens_and_bert_go_together(tmp_path, tiny_bert):
    common = [f"results_dir={tmp_path / 'r'}", f"cache_dir={tmp_path / 'c'}", *SMALL[:4]]
    with pytest.raises(ConfigError, match="only method=dmd method.text_encoder=bert"):
        execute(compose_one(["method=kd", "task=mosi", "task.text_input=bert", *common]), raise_errors=True)
    with pytest.raises(ConfigError, match="needs the MMSA pickles' text_bert tokens"):
        execute(compose_one(["method=dmd", "task=synthetic", "method.text_encoder=bert",
                             f"method.bert_path={tiny_bert}", f"results_dir={tmp_path / 'r'}",
                             f"cache_dir={tmp_path / 'c'}"]), raise_errors=True)


def test_encoder_reads_ids_mask_and_segments_and_returns_the_last_hidden_states(tiny_bert):
    encoder = BertTextEncoder.from_path(tiny_bert).eval()
    ids = torch.tensor([[101, 2023, 2003, 102, 0, 0]])
    mask = (ids != 0).long()
    tokens = torch.stack([ids, mask, torch.zeros_like(ids)], dim=-1).float()  # [B, L, 3] as the task gives it
    with torch.no_grad():
        out = encoder(tokens)
        ref = encoder.bert(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids))
    assert out.shape == (1, 6, 16) and torch.equal(out, ref.last_hidden_state)


def test_random_tiny_bert_runs_offline_and_says_so(tmp_path, monkeypatch):
    """method.bert_init=random_tiny (the recipes' smoke runs of DMD*): no model on disk is read (bert_path points
    nowhere), the encoder is the tiny random BERT, the record says it is one, and the key stays neutral at its
    default (pretrained) so earlier DMD* records keep their run keys."""
    def no_loading(*args, **kwargs):
        raise AssertionError("bert_init=random_tiny must not load a model")

    monkeypatch.setattr(BertTextEncoder, "from_path", classmethod(no_loading))
    cfg = bert_cfg(tmp_path, str(tmp_path / "nothing_here"), "method.bert_init=random_tiny")
    rec = execute(cfg, raise_errors=True)
    assert rec["status"] == "ok" and np.isfinite(rec["metrics"]["mae"])
    assert "tiny RANDOM BERT" in rec["extra"]["dmd"]["text_features"]
    config = BertTextEncoder.tiny_random().bert.config
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (16, 1, 30522)
    pretrained = compose_one(["method=dmd", "task=mosi", "method.text_encoder=bert"])
    assert pretrained.method.bert_init == "pretrained" and "bert_init" not in semantic_config(pretrained)["method"]
    assert semantic_config(cfg)["method"]["bert_init"] == "random_tiny"
    assert run_key(cfg) != run_key(bert_cfg(tmp_path, str(tmp_path / "nothing_here")))
