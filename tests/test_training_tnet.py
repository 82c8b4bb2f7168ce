"""PKDOT's T-Net trains through harness.training.fit (issue #29, one epoch loop). Its algorithm is the one it had in
a loop of its own: Adam at tnet.lr, a fresh permutation of the training pairs per epoch from the generator seeded
"tnet-batches", the last short batch dropped, the tnet.loss, selection on the validation value of that loss with the
untrained state a candidate too, a stop once MORE than tnet.patience epochs pass without improvement, and without a
validation split every epoch run and the last kept. That loop is written out below in plain PyTorch, and the T-Net
get_tnet trains must equal the one it trains: weights, log and stored meta."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from harness.config import compose_one
from harness.method import RunContext
from harness.runner import build_task, derive_seed, resolve_device
from harness.teachers import TeacherStore
from harness.training import BatchSource, TensorRows
from methods.pkdot import TNet, _teacher_feature_pairs, get_tnet, mmd_multi_kernel, mmd_multi_kernel_value
from methods.teacher import get_teacher

from conftest import TINY

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def plain_tnet_loop(tnet: TNet, x_tr, y_tr, x_va, y_va, loss: str, lr: float, epochs: int, patience: int,
                    batch_size: int, seed: int) -> dict:
    """The T-Net's training as its own loop wrote it, with nothing of the harness: returns the meta get_tnet stores."""
    def loss_of(pred, target):
        mmd, mse = mmd_multi_kernel(pred, target), F.mse_loss(pred, target)
        return {"mmd": mmd, "mse": mse, "both": mmd + mse}[loss]

    def scores():
        if x_va is None:
            return {}
        with torch.no_grad():
            pred = tnet(x_va)
            # the validation MMD as the harness scores it (block-summed, no [n, n] matrices); that it equals
            # mmd_multi_kernel to round-off is tests/test_pkdot.py's: here the loops, not the MMD, are compared
            return {"val_mmd": mmd_multi_kernel_value(pred, y_va), "val_mse": float(F.mse_loss(pred, y_va))}

    def selection(s):
        return s["val_mmd"] + s["val_mse"] if loss == "both" else s[f"val_{loss}"]

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(tnet.parameters(), lr=lr)
    before = scores()
    best_score, best_epoch = selection(before) if before else math.inf, -1
    best_state = {k: v.clone() for k, v in tnet.state_dict().items()}
    n, log = len(x_tr), []
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen)
        last = n if n <= batch_size else n - n % batch_size  # the short last batch is dropped
        total, steps = 0.0, 0
        for start in range(0, last, batch_size):
            rows = order[start:start + batch_size]
            value = loss_of(tnet(x_tr[rows]), y_tr[rows])
            opt.zero_grad()
            value.backward()
            opt.step()
            total += float(value.detach())
            steps += 1
        s = scores()
        log.append({"epoch": epoch, "train_loss": total / steps, **s})
        if not s:
            best_epoch = epoch
            continue
        if selection(s) < best_score:
            best_score, best_epoch = selection(s), epoch
            best_state = {k: v.clone() for k, v in tnet.state_dict().items()}
        if epoch - best_epoch > patience:
            break
    if before:
        tnet.load_state_dict(best_state)
    for entry in log:
        entry["selected"] = entry["epoch"] == best_epoch
    return {"log": log, "val_before": before or None, "val_selected": scores() or None, "selected_epoch": best_epoch,
            "selection": "lowest validation loss" if before else "last epoch (no validation split)"}


LUPI = ["task=lupi", "model.encoder=mlp", "train.stop=budget", "train.max_epochs=3", "task.n_test=300",
        "progress=false"]
CASES = {  # what each case must exercise is asserted below, so a change of the tiny task cannot hollow it out
    "mmd, stopped by patience": [*TINY, "method.tnet.epochs=30", "method.tnet.patience=0", "method.tnet.lr=0.05"],
    "both, two batches an epoch": [*TINY, "method.tnet.loss=both", "method.tnet.epochs=6", "method.tnet.patience=5",
                                   "method.tnet.batch_size=32"],
    "mse, no epoch beats the untrained state": [*TINY, "method.tnet.loss=mse", "method.tnet.lr=3.0",
                                                "method.tnet.epochs=4", "method.tnet.patience=1"],
    "mmd, no validation split": [*LUPI, "method.tnet.epochs=5", "method.tnet.batch_size=64"],
}


@pytest.mark.parametrize("case", CASES)
def test_tnet_through_fit_equals_the_plain_pytorch_loop(case, tmp_path):
    cfg = compose_one([*CASES[case], "method=pkdot", f"results_dir={tmp_path / 'r'}", f"cache_dir={tmp_path / 'c'}"])
    task = build_task(cfg)
    data = task.load_fold(0)
    ctx = RunContext(cfg=cfg, task=task, fold=0, seed=0, device=resolve_device("cpu"),
                     teachers=TeacherStore(Path(cfg.cache_dir) / "teachers"), run_dir=Path(cfg.results_dir),
                     progress=False)
    teacher, _ = get_teacher(ctx, data.train, data.val)
    val = ctx.frozen_val(data.val, tuple(ctx.spec.modalities))
    tcfg = cfg.method.tnet
    tnet, meta = get_tnet(ctx, tcfg, teacher, data.train, val)

    # The loop's input, the frozen teacher's feature pairs, is not what is tested: the same helper makes them.
    x_tr, y_tr = _teacher_feature_pairs(teacher, data.train, ctx, cfg.train.eval_batch_size)
    has_val = val is not None and len(val) > 0
    x_va, y_va = _teacher_feature_pairs(teacher, val, ctx, cfg.train.eval_batch_size) if has_val else (None, None)
    torch.manual_seed(derive_seed(0, cfg.task.name, 0, "tnet"))  # get_tnet's initial weights
    plain = TNet(x_tr.shape[1], y_tr.shape[1], tcfg.width, tcfg.arch)
    want = plain_tnet_loop(plain, x_tr, y_tr, x_va, y_va, tcfg.loss, tcfg.lr, tcfg.epochs, tcfg.patience,
                           tcfg.batch_size, derive_seed(0, cfg.task.name, 0, "tnet-batches"))

    # Exact equality: both sides run the same torch ops on the same tensors in the same order (the same shapes,
    # batch rows and Adam kernel), on one thread (one_torch_thread), so no summation order can differ.
    got_state, want_state = tnet.state_dict(), plain.state_dict()
    assert got_state.keys() == want_state.keys()
    for name in want_state:
        assert torch.equal(got_state[name], want_state[name]), name
    for key in ("val_before", "val_selected", "selected_epoch", "selection"):
        assert meta[key] == want[key], key
    assert len(meta["log"]) == len(want["log"])
    for got_entry, want_entry in zip(meta["log"], want["log"]):
        assert {k: got_entry[k] for k in want_entry} == want_entry  # the old keys, their values unchanged
        if has_val:  # the loop's own field: the selection quantity the epoch was compared on
            assert got_entry["val_loss"] == (got_entry["val_mmd"] + got_entry["val_mse"] if tcfg.loss == "both"
                                             else got_entry[f"val_{tcfg.loss}"])
    assert ctx.logs["tnet"] == meta["log"]
    assert ctx.extra["tnet"]["selected_epoch"] == want["selected_epoch"]

    # what the case is there for
    n_epochs, selected, training = len(want["log"]), want["selected_epoch"], ctx.extra["training"]["tnet"]
    assert training["selected_epoch"] == selected and training["epochs_run"] == n_epochs
    if case == "mmd, stopped by patience":
        assert n_epochs < tcfg.epochs and n_epochs - 1 - selected == tcfg.patience + 1
        assert training["stop_reason"] == "patience"
    elif case == "both, two batches an epoch":
        assert len(x_tr) // tcfg.batch_size == 2 and len(x_tr) % tcfg.batch_size > 0
        assert all(e["optimizer_steps"] == 2 for e in meta["log"])
    elif case == "mse, no epoch beats the untrained state":
        assert selected == -1 and not any(e["selected"] for e in meta["log"])
        assert meta["val_selected"] == meta["val_before"]
    else:
        assert not has_val and selected == tcfg.epochs - 1 and meta["val_before"] is None
        assert training["stop_reason"] == "budget"
        assert len(x_tr) > tcfg.batch_size and len(x_tr) % tcfg.batch_size > 0  # the drop_last rule is exercised


def test_tensor_rows_serve_the_same_batches_as_the_split_rows_rule():
    """TensorRows are a BatchSource: an epoch is one permutation drawn from the generator, cut into batch_size rows,
    the last short batch dropped under drop_last unless it is the only one."""
    x = torch.arange(10.0)[:, None] * torch.ones(1, 3)
    y = torch.arange(10.0) * 2
    rows = TensorRows({"x": x}, y)
    assert isinstance(rows, BatchSource) and rows.n == 10
    order = torch.randperm(10, generator=torch.Generator().manual_seed(7))
    batches = list(rows.batches(4, shuffle=True, generator=torch.Generator().manual_seed(7), drop_last=True))
    assert [b.index.tolist() for b in batches] == [order[:4].tolist(), order[4:8].tolist()]
    for b in batches:
        assert torch.equal(b.inputs["x"], x[b.index]) and torch.equal(b.targets, y[b.index])
    assert rows.n_batches(4, drop_last=True) == 2 and rows.n_batches(4) == 3
    assert [len(b.index) for b in rows.batches(16, drop_last=True)] == [10]  # one short batch is kept
    with pytest.raises(ValueError, match="same number of rows"):
        TensorRows({"x": x}, y[:9])
