"""The one training loop (harness/training.py): each option against an independent hand computation.

A linear model on the mean of the synthetic task's visual stream is trained by `fit` and by a plain loop
written here from the option's definition (same batch order: the loop's generator seeded with batch_seed);
the weights must agree. Stop reasons, the selected epoch and the summary in the record are checked too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import OmegaConf

from harness.config import compose_one
from harness.method import RunContext
from harness.registry import TASKS
from harness.runner import execute
from harness.teachers import TeacherStore
from harness.training import fit, make_optimizer
from tests.conftest import TINY

SEED = 1234


@pytest.fixture(scope="module")
def data():
    cfg = compose_one([*TINY, "task=synthetic"])
    task = TASKS.get("synthetic")(cfg.task)
    fold = task.load_fold(0)
    return cfg, task, fold


def make_ctx(cfg, task, tmp_path):
    return RunContext(cfg=cfg, task=task, fold=0, seed=0, device=torch.device("cpu"),
                      teachers=TeacherStore(tmp_path / "c"), run_dir=tmp_path, progress=False)


class Linear(nn.Module):
    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(d_in, d_out)

    def forward(self, batch):
        return self.lin(batch.inputs["visual"].mean(1))


def train_cfg(cfg, **options):
    return {**OmegaConf.to_container(cfg.train, resolve=True), **options}


def run_fit(data, tmp_path, val=True, frozen=False, select_initial=False, **options):
    cfg, task, fold = data
    n_out = fold.train.targets.shape[-1]
    model = Linear(fold.train.inputs["visual"].shape[-1], n_out)
    ctx = make_ctx(cfg, task, tmp_path)

    def loss_fn(batch):
        loss = F.mse_loss(model(batch), batch.targets)
        if frozen:  # a loss with zero gradients: the weights, hence the validation score, never change
            loss = loss * 0.0
        return loss, {"mse": float(loss.detach())}

    log = fit("m", model, loss_fn, model, fold.train, fold.val if val else None, ctx, train_cfg(cfg, **options),
              batch_seed=SEED, select_initial=select_initial)
    return model, log, ctx


def hand_train(data, epochs, batch_size, lr, accumulate=1, clip_value=None, drop_last=True):
    """Plain SGD written from the definitions: gradients SUMMED over `accumulate` batches, clipped by value after
    every backward, one step per full group; the trailing partial group of an epoch is dropped."""
    _, _, fold = data
    model = Linear(fold.train.inputs["visual"].shape[-1], fold.train.targets.shape[-1])
    x = torch.from_numpy(fold.train.inputs["visual"]).mean(1)
    y = torch.from_numpy(fold.train.targets.astype("float32"))
    gen = torch.Generator().manual_seed(SEED)
    n = len(y)
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        stop = n - (n % batch_size if drop_last and n > batch_size else 0)
        batches = [order[s:s + batch_size] for s in range(0, stop, batch_size)]
        grads = None
        for i, idx in enumerate(batches):
            model.zero_grad()
            F.mse_loss(model.lin(x[idx]), y[idx]).backward()
            g = [p.grad.clone() for p in model.parameters()]
            grads = g if i % accumulate == 0 else [a + b for a, b in zip(grads, g)]
            if clip_value is not None:
                grads = [a.clamp(-clip_value, clip_value) for a in grads]
            if (i + 1) % accumulate == 0:
                with torch.no_grad():
                    for p, gr in zip(model.parameters(), grads):
                        p -= lr * gr
    return model


def assert_same_weights(a, b, atol=1e-6):
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, atol=atol, rtol=1e-5)


def test_sgd_with_accumulation_and_value_clipping_matches_a_hand_loop(data, tmp_path):
    opts = dict(optimizer="sgd", lr=0.05, weight_decay=0.0, batch_size=7, accumulate=3, grad_clip=0.01,
                grad_clip_by="value", stop="budget", max_epochs=3, drop_last=False)
    model, log, ctx = run_fit(data, tmp_path, **opts)
    ref = hand_train(data, epochs=3, batch_size=7, lr=0.05, accumulate=3, clip_value=0.01, drop_last=False)
    assert_same_weights(model, ref)
    n_batches = -(-len(data[2].train) // 7)
    assert [e["optimizer_steps"] for e in log] == [n_batches // 3] * 3  # the partial group of an epoch: no step
    # the clipping matters here: without it the weights differ
    unclipped = hand_train(data, epochs=3, batch_size=7, lr=0.05, accumulate=3, drop_last=False)
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(model.parameters(), unclipped.parameters()))


def test_accumulation_is_cut_to_the_batches_of_an_epoch_and_recorded(data, tmp_path):
    n = len(data[2].train)
    _, log, ctx = run_fit(data, tmp_path, batch_size=n // 2, accumulate=50, stop="budget", max_epochs=1)
    summary = ctx.extra["training"]["m"]
    assert summary["accumulate"] == 2 and summary["accumulate_reduced"] and log[0]["optimizer_steps"] == 1
    assert ctx.adjusted == {"train.accumulate": {"asked": 50, "used": 2, "why": "an epoch of m has 2 batches"}}


def test_norm_clipping_clips_the_summed_gradient_before_the_step(data, tmp_path):
    opts = dict(optimizer="sgd", lr=0.1, weight_decay=0.0, batch_size=16, accumulate=1, grad_clip=1e-3,
                grad_clip_by="norm", stop="budget", max_epochs=1)
    model, _, _ = run_fit(data, tmp_path, **opts)
    ref = Linear(model.lin.in_features, model.lin.out_features)
    _, _, fold = data
    x = torch.from_numpy(fold.train.inputs["visual"]).mean(1)
    y = torch.from_numpy(fold.train.targets.astype("float32"))
    gen = torch.Generator().manual_seed(SEED)
    order = torch.randperm(len(y), generator=gen)
    for s in range(0, len(y) - len(y) % 16, 16):
        idx = order[s:s + 16]
        ref.zero_grad()
        F.mse_loss(ref.lin(x[idx]), y[idx]).backward()
        grads = [p.grad for p in ref.parameters()]
        norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
        with torch.no_grad():
            for p, g in zip(ref.parameters(), grads):
                p -= 0.1 * g * min(1.0, 1e-3 / (float(norm) + 1e-6))
    assert_same_weights(model, ref)


@pytest.mark.parametrize("select_on", ["primary", "loss"])
def test_plateau_schedule_halves_lr_after_patience_and_min_lr_stops(data, tmp_path, select_on):
    # Zero gradients, no weight decay: the validation score is constant, so the plateau rule (ReduceLROnPlateau,
    # patience 1: reduce when 2 epochs in a row are not better) halves lr every 2nd epoch. The score is positive
    # (CCC) with select_on=primary and negative (-loss) with select_on=loss: a tie must never count as progress
    # on either sign (torch's relative threshold on -CCC made it one).
    lr = 0.01
    _, log, ctx = run_fit(data, tmp_path, frozen=True, weight_decay=0.0, lr=lr, schedule="plateau", plateau_patience=1,
                          plateau_factor=0.5, select_on=select_on,
                          patience=50, max_epochs=20, min_lr=lr / 3)
    score = log[0]["val_ccc_mean"] if select_on == "primary" else -log[0]["val_loss"]
    assert (score > 0) == (select_on == "primary")  # both signs are exercised
    assert [e["lr"] for e in log] == pytest.approx([lr, lr, lr, lr / 2, lr / 2], rel=1e-6)
    # after epoch 4 the schedule has taken lr to lr/4 < min_lr = lr/3: the loop stops there
    summary = ctx.extra["training"]["m"]
    assert summary["stop_reason"] == "min_lr" and summary["epochs_run"] == 5 and summary["selected_epoch"] == 0


def test_patience_stop_keeps_the_best_epoch(data, tmp_path):
    model, log, ctx = run_fit(data, tmp_path, frozen=True, weight_decay=0.0, patience=3, max_epochs=20)
    summary = ctx.extra["training"]["m"]
    assert (summary["stop_reason"], summary["selected_epoch"], summary["epochs_run"]) == ("patience", 0, 4)
    assert [e["selected"] for e in log] == [True, False, False, False]


def test_select_initial_keeps_the_untrained_state_when_no_epoch_beats_it(data, tmp_path):
    """The frozen loss never moves the weights: every epoch's score ties the untrained state's, a tie is no
    improvement, so the untrained state stays selected (epoch -1) and patience counts from it."""
    model, log, ctx = run_fit(data, tmp_path, frozen=True, select_initial=True, weight_decay=0.0, patience=3,
                              max_epochs=20)
    summary = ctx.extra["training"]["m"]
    assert (summary["stop_reason"], summary["selected_epoch"], summary["epochs_run"]) == ("patience", -1, 3)
    assert not any(e["selected"] for e in log)
    # scored before the first epoch, on the same weights as every epoch's
    assert summary["val_before"] == {k: v for k, v in log[0].items() if k.startswith("val_")}


def test_select_initial_changes_nothing_once_an_epoch_beats_the_untrained_state(data, tmp_path):
    plain, log_p, ctx_p = run_fit(data, tmp_path / "a", lr=0.01, max_epochs=4, patience=10)
    with_initial, log_i, ctx_i = run_fit(data, tmp_path / "b", select_initial=True, lr=0.01, max_epochs=4, patience=10)
    before = ctx_i.extra["training"]["m"]["val_before"]["val_ccc_mean"]
    assert max(e["val_ccc_mean"] for e in log_i) > before  # an epoch beats it, so the selection is the usual one
    assert [e["selected"] for e in log_i] == [e["selected"] for e in log_p]
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), with_initial.parameters()))
    assert "val_before" not in ctx_p.extra["training"]["m"]


def test_fixed_budget_keeps_the_last_epoch_and_needs_no_validation(data, tmp_path):
    model, log, ctx = run_fit(data, tmp_path, val=False, optimizer="sgd", lr=0.05, weight_decay=0.0, stop="budget",
                              max_epochs=4, batch_size=16)
    ref = hand_train(data, epochs=4, batch_size=16, lr=0.05)
    assert_same_weights(model, ref)  # the last epoch's weights, not a "best" one
    summary = ctx.extra["training"]["m"]
    assert (summary["stop_reason"], summary["selected_epoch"], summary["epochs_run"]) == ("budget", 3, 4)
    assert log[-1]["selected"] and not any(k.startswith("val_") for k in log[0])


def test_select_on_loss_uses_the_validation_loss(data, tmp_path):
    _, log, _ = run_fit(data, tmp_path, select_on="loss", lr=0.01, max_epochs=6, patience=6)
    best = min(log, key=lambda e: e["val_loss"])
    assert best["selected"]


def test_max_epochs_is_the_stop_reason_when_nothing_stops_earlier(data, tmp_path):
    _, log, ctx = run_fit(data, tmp_path, max_epochs=2, patience=10)
    assert ctx.extra["training"]["m"]["stop_reason"] == "max_epochs" and len(log) == 2


@pytest.mark.parametrize("name,cls", [("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam),
                                      ("rmsprop", torch.optim.RMSprop), ("sgd", torch.optim.SGD)])
def test_optimizer_choice_and_fused_where_torch_has_it(name, cls):
    params = [nn.Parameter(torch.zeros(3))]
    opt = make_optimizer(params, {"optimizer": name, "lr": 0.1, "weight_decay": 0.0})
    assert type(opt) is cls
    # auto: fused Adam and SGD (no fused RMSprop in torch; AdamW stays on torch's default, the committed records')
    assert bool(opt.defaults.get("fused")) == (name in ("adam", "sgd"))


def test_rmsprop_keras_follows_keras_0x_update_rule_not_torchs():
    """Against the rule written out in numpy (Keras 0.x keras/optimizers.py: a = rho*a + (1-rho)*g^2,
    p -= lr*g/sqrt(a + eps), rho 0.9, eps 1e-6) along a least-squares trajectory and on one step whose gradient
    (1e-4) is small enough for eps under the root to matter; torch's RMSprop differs on both."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 3))
    y = X @ np.array([0.5, -1.0, 2.0]) + rng.normal(size=20)

    def grad(w):  # of mean squared error / 2
        return X.T @ (X @ w - y) / len(y)

    w, a = np.zeros(3), np.zeros(3)  # 120 steps: past ~150 the steps near the optimum amplify rounding differences
    for _ in range(120):
        g = grad(w)
        a = 0.9 * a + 0.1 * g ** 2
        w = w - 0.01 * g / np.sqrt(a + 1e-6)

    def torch_run(name):
        p = nn.Parameter(torch.zeros(3, dtype=torch.float64))
        opt = make_optimizer([p], {"optimizer": name, "lr": 0.01, "weight_decay": 0.0})
        Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
        for _ in range(120):
            opt.zero_grad()
            (((Xt @ p - yt) ** 2).mean() / 2).backward()
            opt.step()
        return p.detach().numpy()

    np.testing.assert_allclose(torch_run("rmsprop_keras"), w, rtol=0, atol=1e-12)
    assert np.abs(torch_run("rmsprop") - w).max() > 1e-3

    def one_step(name):  # from a zero accumulator, gradient 1e-4 in every coordinate
        p = nn.Parameter(torch.zeros(3, dtype=torch.float64))
        p.grad = torch.full((3,), 1e-4, dtype=torch.float64)
        make_optimizer([p], {"optimizer": name, "lr": 0.01, "weight_decay": 0.0}).step()
        return p.detach().numpy()

    keras_step = 0.01 * 1e-4 / np.sqrt(0.1 * 1e-8 + 1e-6)  # ~1e-3 * lr: eps dominates the root
    np.testing.assert_allclose(one_step("rmsprop_keras"), -keras_step, rtol=1e-12)
    np.testing.assert_allclose(one_step("rmsprop"), -0.01 * 1e-4 / (np.sqrt(0.01 * 1e-8) + 1e-8), rtol=1e-6)


def test_rmsprop_keras_refuses_momentum():
    with pytest.raises(ValueError, match="rmsprop_keras has no momentum"):
        make_optimizer([nn.Parameter(torch.zeros(3))], {"optimizer": "rmsprop_keras", "lr": 0.1, "momentum": 0.9})


@pytest.mark.parametrize("key,value", [("optimizer", "lbfgs"), ("schedule", "cosine"), ("grad_clip_by", "max"),
                                       ("select_on", "acc"), ("stop", "never")])
def test_a_bad_option_fails_before_training(data, tmp_path, key, value):
    with pytest.raises(ValueError, match=f"train.{key}={value!r}"):
        run_fit(data, tmp_path, **{key: value})


def test_every_record_says_how_each_model_stopped(tiny_cfg):
    rec = execute(tiny_cfg("method=kd"))
    training = rec["extra"]["training"]
    assert set(training) == {"teacher", "student"}
    for name, summary in training.items():
        log = rec["logs"][name]
        assert summary["epochs_run"] == len(log)
        assert summary["selected_epoch"] == next(e["epoch"] for e in log if e["selected"])
        assert summary["stop_reason"] in ("patience", "max_epochs")
    again = execute(tiny_cfg("method=kd", "seed=0", "overwrite=true"))
    assert again["extra"]["training"]["teacher"]["reused"] is True
    assert {k: v for k, v in again["extra"]["training"]["teacher"].items() if k != "reused"} == \
        {k: v for k, v in training["teacher"].items() if k != "reused"}


def test_resume_through_the_loop_with_schedule_and_accumulation_equals_an_uninterrupted_run(data, tmp_path):
    opts = dict(lr=0.01, schedule="plateau", plateau_patience=0, accumulate=2, grad_clip=0.05, grad_clip_by="value",
                checkpoint=True, max_epochs=4, patience=10)
    straight, log_s, _ = run_fit(data, tmp_path / "a", **opts)
    run_fit(data, tmp_path / "b", **{**opts, "max_epochs": 2})
    resumed, log_r, ctx = run_fit(data, tmp_path / "b", **opts)
    assert ctx.extra["resumed_from_epoch"]["m"] == 2
    assert [(e["train_loss"], e["lr"]) for e in log_s] == [(e["train_loss"], e["lr"]) for e in log_r]
    assert all(torch.equal(a, b) for a, b in zip(straight.parameters(), resumed.parameters()))


def test_resume_keeps_the_untrained_state_as_a_candidate(data, tmp_path):
    """select_initial's score travels in the checkpoint: a resumed run still compares with it (and does not score a
    state it resumed from as if it were the untrained one)."""
    opts = dict(frozen=True, select_initial=True, weight_decay=0.0, checkpoint=True, patience=3, max_epochs=20)
    _, _, ctx_s = run_fit(data, tmp_path / "a", **opts)
    run_fit(data, tmp_path / "b", **{**opts, "max_epochs": 2})
    _, log_r, ctx_r = run_fit(data, tmp_path / "b", **opts)
    assert ctx_r.extra["resumed_from_epoch"]["m"] == 2
    assert ctx_r.extra["training"]["m"]["selected_epoch"] == -1 and len(log_r) == 3
    assert ctx_r.extra["training"]["m"]["val_before"] == ctx_s.extra["training"]["m"]["val_before"]


@pytest.fixture(autouse=True)
def _dirs(tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
    yield


class _RunsCode:
    """Unpickling this calls a function of our choosing: what a planted checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_resume_refuses_a_checkpoint_whose_unpickling_would_run_code(data, tmp_path):
    from harness.training import UnsafeCheckpointError
    marker = tmp_path / "code_ran"
    ckpt = tmp_path / "checkpoint_m.pt"
    torch.save({"module": {}, "payload": _RunsCode(marker)}, ckpt)
    # the plain unpickler would run it (the danger is real) ...
    torch.load(ckpt, weights_only=False)
    assert marker.exists()
    marker.unlink()
    # ... the loop's resume refuses the file with a message naming it, and runs nothing
    with pytest.raises(UnsafeCheckpointError, match="checkpoint_m.pt: refused to resume"):
        run_fit(data, tmp_path, checkpoint=True, max_epochs=2)
    assert not marker.exists()


def test_a_real_checkpoint_loads_with_the_safe_loader(data, tmp_path):
    run_fit(data, tmp_path, checkpoint=True, max_epochs=1, schedule="plateau", accumulate=2)
    ck = torch.load(tmp_path / "checkpoint_m.pt", weights_only=True)  # raises if anything unsafe was saved
    assert ck["epoch"] == 0 and ck["scheduler"] is not None and ck["generator"].dtype == torch.uint8
