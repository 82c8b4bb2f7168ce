"""The options of the PKDOT/MT-PKDOT mechanism study (docs/prereg/2026-12-07_pkdot_mechanism.md): method.tnet.loss=both,
method.tnet.slot=zeros|oracle, method.selection_on=heldout_half|val. Each is checked against a computation made here,
from the split's arrays and the frozen models' own layers, not through the code path under test."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import harness.training as training
import methods.mtpkdot as mtpkdot
from harness.registry import METHODS
from harness.runner import execute
from harness.schema import ConfigError
from harness.validate import problems
from methods.blocks import MultimodalNet
from methods.pkdot import PrivilegedStudent, TNet, tnet_loss
from test_pkdot import make_ctx

# The frozen parts' outputs the method reads come from a table computed over evaluation batches
# (methods/teacher.py frozen_outputs); recomputed here on other row sets, float32 matmuls may use other kernels
# for the two shapes: equal to round-off, far below any difference between rows or heads (O(0.1)).
ROUND_OFF = dict(rtol=1e-5, atol=1e-5)


def np_mmd(x: np.ndarray, y: np.ndarray, n_kernels: int = 5, mul: float = 2.0) -> float:
    """The official multi-kernel MMD² (docs/fidelity.md#pkdot-tnet), loop by loop."""
    u = np.vstack([x, y])
    n = len(u)
    d2 = np.array([[np.sum((u[i] - u[j]) ** 2) for j in range(n)] for i in range(n)])
    sigma2 = d2.sum() / (n * n - n)
    kern = sum(np.exp(-d2 / (sigma2 * mul ** (m - n_kernels // 2))) for m in range(n_kernels))
    b = len(x)
    return kern[:b, :b].mean() + kern[b:, b:].mean() - kern[:b, b:].mean() - kern[b:, :b].mean()


def rows_of(split_visual: np.ndarray, batch_visual: torch.Tensor) -> np.ndarray:
    """Row numbers in the split of a batch's samples, found by their (continuous, random) visual inputs."""
    flat = split_visual.reshape(len(split_visual), -1)
    out = []
    for row in batch_visual.detach().cpu().numpy().reshape(len(batch_visual), -1):
        hit = np.flatnonzero((flat == row).all(1))
        assert len(hit) == 1
        out.append(hit[0])
    return np.array(out)


@pytest.fixture
def record_student_slots(monkeypatch):
    """Every forward of a student net with privileged slots: (grad enabled = a training step, its visual inputs,
    the slot features it was fed, the PrivilegedStudent), in call order."""
    calls = []
    real = PrivilegedStudent.forward

    def spy(self, inputs, lengths=None, features=None):
        used = features if features is not None else self.hallucinate(inputs, lengths)
        calls.append((torch.is_grad_enabled(), inputs["visual"].detach().clone(),
                      None if used is None else used.detach().clone(), self))
        return real(self, inputs, lengths, features)
    monkeypatch.setattr(PrivilegedStudent, "forward", spy)
    return calls


# --- tnet.loss=both -----------------------------------------------------------------------------------------------

def test_both_loss_is_mmd_plus_mse_computed_by_hand():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 4)), rng.normal(size=(6, 4)) * 1.5 + 0.3
    expected = np_mmd(x, y) + np.mean((x - y) ** 2)
    got = float(tnet_loss("both", torch.tensor(x), torch.tensor(y)))
    assert got == pytest.approx(expected, rel=1e-10)  # float64 both sides, only the summation order differs
    assert got > float(tnet_loss("mmd", torch.tensor(x), torch.tensor(y))) > 0


def test_both_selects_the_tnet_epoch_on_the_validation_sum_and_records_both(tiny_cfg):
    rec = execute(tiny_cfg("method=pkdot", "method.tnet.loss=both", "method.tnet.epochs=12", "method.tnet.patience=20"))
    assert rec["status"] == "ok", rec.get("traceback")
    tnet, log = rec["extra"]["tnet"], rec["logs"]["tnet"]
    assert tnet["loss"] == "both" and set(tnet["val_selected"]) == {"val_mmd", "val_mse"}
    sums = [e["val_mmd"] + e["val_mse"] for e in log]
    before = tnet["val_before"]["val_mmd"] + tnet["val_before"]["val_mse"]
    expected = int(np.argmin(sums)) if min(sums) < before else -1
    assert tnet["selected_epoch"] == expected
    if expected >= 0:
        assert tnet["val_selected"] == {"val_mmd": log[expected]["val_mmd"], "val_mse": log[expected]["val_mse"]}
    # the selected epoch is not what either term alone would pick in general; here at least the sum is what counts
    assert [e["selected"] for e in log] == [e["epoch"] == expected for e in log]


# --- tnet.slot=zeros -------------------------------------------------------------------------------------------------

def test_zeros_slot_feeds_zeros_everywhere_trains_no_tnet_and_keeps_the_architecture(tiny_cfg, monkeypatch,
                                                                                  record_student_slots):
    built = []
    cfg = tiny_cfg("method=pkdot", "method.tnet.slot=zeros")
    ctx, data = make_ctx(cfg)
    m = METHODS.get("pkdot")(cfg.method, ctx)
    with monkeypatch.context() as no_tnet:
        no_tnet.setattr(TNet, "__init__", lambda *a, **k: built.append(1) or pytest.fail("a T-Net was built"))
        m.fit(data.train, data.val)
        m.predict(data.test.restrict(("visual",)))
    assert not built and m.student._frozen[1] is None
    assert ctx.extra["tnet"]["trained"] is False and ctx.extra["tnet"]["slot"] == "zeros"
    train_calls = [c for c in record_student_slots if c[0]]
    eval_calls = [c for c in record_student_slots if not c[0]]
    assert train_calls and eval_calls  # training steps, validation passes and the test predict
    for _, visual, slot, _ in record_student_slots:
        assert slot.shape == (len(visual), cfg.model.hidden) and not slot.any()
    # the same student architecture as the default PKDOT (one privileged slot in the fusion)
    ctx2, _ = make_ctx(tiny_cfg("method=pkdot"))
    default = METHODS.get("pkdot")(ctx2.cfg.method, ctx2)
    default.fit(data.train, data.val)
    assert {k: v.shape for k, v in m.student.net.state_dict().items()} == \
        {k: v.shape for k, v in default.student.net.state_dict().items()}


# --- tnet.slot=oracle ------------------------------------------------------------------------------------------------

def test_oracle_slot_is_the_batch_samples_true_privileged_features_in_training_and_the_tnet_at_predict(
        tiny_cfg, record_student_slots):
    cfg = tiny_cfg("method=pkdot", "method.tnet.slot=oracle")
    ctx, data = make_ctx(cfg)
    m = METHODS.get("pkdot")(cfg.method, ctx)
    m.fit(data.train, data.val)
    teacher, tnet = m.student._frozen
    assert tnet is not None and ctx.extra["tnet"]["slot"] == "oracle"
    train_calls = [c for c in record_student_slots if c[0]]
    assert train_calls
    for _, visual, slot, _ in train_calls:
        idx = rows_of(data.train.inputs["visual"], visual)
        physio = torch.from_numpy(data.train.inputs["physio"][idx])
        lengths = data.train.lengths.get("physio")
        with torch.no_grad():  # the T-Net's target: the frozen teacher's pooled physio encoder feature of each row
            want = teacher.encoders["physio"](physio, None if lengths is None else torch.from_numpy(
                np.asarray(lengths)[idx]))[1]
        torch.testing.assert_close(slot, want, **ROUND_OFF)
    record_student_slots.clear()
    test = data.test.restrict(("visual",))
    m.predict(test)
    visual = torch.from_numpy(test.inputs["visual"])
    lengths = test.lengths.get("visual")
    with torch.no_grad():
        want = tnet(teacher.encoders["visual"](visual, None if lengths is None else torch.from_numpy(
            np.asarray(lengths)))[1])
    got = torch.cat([c[2] for c in record_student_slots])
    torch.testing.assert_close(got, want, **ROUND_OFF)


def test_oracle_under_zeros_control_reads_the_zeroed_privileged_inputs(tiny_cfg, record_student_slots):
    rec = execute(tiny_cfg("method=pkdot", "method.tnet.slot=oracle", "method.privileged_control=zeros"))
    assert rec["status"] == "ok", rec.get("traceback")
    train_calls = [c for c in record_student_slots if c[0]]
    student = train_calls[0][3]
    teacher = student.frozen_teacher
    physio_shape = rec["config"]["task"]["seq_len"], rec["config"]["task"]["physio_dim"]
    with torch.no_grad():  # the teacher's physio feature of an all-zero input (seq_len full, no padding)
        want = teacher.encoders["physio"](torch.zeros(1, *physio_shape), None)[1]
    for _, _, slot, _ in train_calls:
        torch.testing.assert_close(slot, want.expand_as(slot), **ROUND_OFF)


# --- selection_on (MT-PKDOT) -----------------------------------------------------------------------------------------

@pytest.fixture
def record_mt_steps(monkeypatch):
    """The teacher set of the run, each training batch fit draws (its split rows), and each stage-3 step's z*.
    Once stage 1 returns the set, its heads are made constant predictors near the training targets' mean (offsets
    -0.2, 0, +0.2 standard deviations): trained heads on the tiny task let one candidate win every batch, and a test
    of which rows the heads are scored on needs choices that depend on the rows (here: on their targets' mean)."""
    seen = {"batches": [], "z_star": []}
    real_set, real_batches, real_stage3 = mtpkdot.get_teacher_set, training.SplitTensors.batches, mtpkdot.stage3_loss

    def get_set(*a, **k):
        ts, meta = real_set(*a, **k)
        y = torch.as_tensor(np.asarray(a[3].targets, dtype=np.float32))  # get_teacher_set(ctx, cfg, teacher, train, val)
        with torch.no_grad():
            for offset, head in zip((-0.2, 0.0, 0.2), (*ts.heads.values(), ts.joint.head)):
                head.linear.weight.zero_()
                head.linear.bias.copy_(y.mean(0) + offset * y.std(0))
        seen["teachers"] = ts
        return ts, meta

    def batches(self, batch_size, shuffle=False, generator=None, drop_last=False):
        for b in real_batches(self, batch_size, shuffle, generator, drop_last):
            if shuffle:  # training batches (evaluation passes are in order)
                seen["batches"].append(b.index.clone())
            yield b

    def stage3(cfg, z_star, *a, **k):
        seen["z_star"].append(z_star.detach().clone())
        return real_stage3(cfg, z_star, *a, **k)
    monkeypatch.setattr(mtpkdot, "get_teacher_set", get_set)
    monkeypatch.setattr(training.SplitTensors, "batches", batches)
    monkeypatch.setattr(mtpkdot, "stage3_loss", stage3)
    return seen


def candidates_on(ts, split, rows: np.ndarray):
    """Every candidate's (z, output) on the split's rows, the frozen teacher set run here in eval mode."""
    ts.eval()
    inputs = {k: torch.from_numpy(np.asarray(v)[rows]) for k, v in split.inputs.items()}
    lengths = {k: torch.from_numpy(np.asarray(v)[rows]) for k, v in split.lengths.items()}
    with torch.no_grad():
        return ts(inputs, lengths)


def test_heldout_half_scores_on_one_half_and_the_student_steps_on_the_other(tiny_cfg, record_mt_steps,
                                                                           record_student_slots):
    cfg = tiny_cfg("method=mtpkdot", "method.selection_on=heldout_half", "method.batch_size=32")
    ctx, data = make_ctx(cfg)
    m = METHODS.get("mtpkdot")(cfg.method, ctx)
    m.fit(data.train, data.val)
    ts = record_mt_steps["teachers"]
    steps = [c for c in record_student_slots if c[0]]
    assert len(steps) == len(record_mt_steps["z_star"]) > 0
    student_batches = record_mt_steps["batches"][-len(steps):]  # the teacher and stage 1 drew theirs before
    y = np.asarray(data.train.targets, dtype=np.float32)
    picks, picks_on_student_rows = [], []
    for batch, (_, visual, _, _), z_star in zip(student_batches, steps, record_mt_steps["z_star"]):
        batch = batch.numpy()
        student_rows = rows_of(data.train.inputs["visual"], visual)
        held = np.setdiff1d(batch, student_rows)
        # the student sees only its half: disjoint from the scored half, together the whole batch
        assert set(student_rows) <= set(batch) and len(student_rows) == len(batch) - len(batch) // 2
        assert len(held) == len(batch) // 2
        # each head's MSE (train.regression_loss) on the held-out half, computed here; ties to the first
        losses = [float(np.mean((out.numpy() - y[held]) ** 2)) for _, out in candidates_on(ts, data.train, held)]
        pick = int(np.argmin(losses))
        picks.append(pick)
        picks_on_student_rows.append(int(np.argmin([float(np.mean((out.numpy() - y[student_rows]) ** 2))
                                                    for _, out in candidates_on(ts, data.train, student_rows)])))
        want = candidates_on(ts, data.train, student_rows)[pick][0]
        torch.testing.assert_close(z_star, want, **ROUND_OFF)
    # the check can fail: scoring on the student's own rows would have chosen otherwise in some steps
    assert picks != picks_on_student_rows
    total = ctx.extra["teacher_choice"]["total"]
    assert ctx.extra["teacher_choice"]["selection_on"] == "heldout_half"
    assert ctx.extra["teacher_choice"]["unit"] == "batches"
    assert list(total.values()) == np.bincount(picks, minlength=3).tolist()


def test_val_selection_picks_by_the_validation_split_loss(tiny_cfg, record_mt_steps, monkeypatch):
    seen_splits = []
    real = mtpkdot.candidate_losses
    monkeypatch.setattr(mtpkdot, "candidate_losses", lambda ts, split, c: seen_splits.append(split) or real(ts, split, c))
    cfg = tiny_cfg("method=mtpkdot", "method.selection_on=val")
    ctx, data = make_ctx(cfg)
    m = METHODS.get("mtpkdot")(cfg.method, ctx)
    m.fit(data.train, data.val)
    ts = record_mt_steps["teachers"]
    assert seen_splits[-1] is data.val  # the validation split (never test)
    val_rows = np.arange(len(data.val))
    y = np.asarray(data.val.targets, dtype=np.float32)
    losses = [float(np.mean((out.numpy() - y) ** 2)) for _, out in candidates_on(ts, data.val, val_rows)]
    pick = int(np.argmin(losses))
    choice = ctx.extra["teacher_choice"]
    assert choice["selection_on"] == "val" and choice["unit"] == "batches"
    assert list(choice["val_task_loss"].values()) == pytest.approx(losses, rel=1e-5, abs=1e-5)
    n_steps = len(record_mt_steps["z_star"])
    assert list(choice["total"].values()) == [n_steps * (i == pick) for i in range(3)]
    y_train = np.asarray(data.train.targets, dtype=np.float32)
    batch_picks = []
    for batch, z_star in zip(record_mt_steps["batches"][-n_steps:], record_mt_steps["z_star"]):  # the student's
        cands = candidates_on(ts, data.train, batch.numpy())
        torch.testing.assert_close(z_star, cands[pick][0], **ROUND_OFF)
        batch_picks.append(int(np.argmin([float(np.mean((o.numpy() - y_train[batch.numpy()]) ** 2)) for _, o in cands])))
    assert set(batch_picks) != {pick}  # the check can fail: scoring on the training batch would choose otherwise


# --- schema and run keys ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method,overrides,message", [
    ("pkdot", ["method.tnet.loss=sum"], "method.tnet.loss='sum': expected one of mmd, mse, both"),
    ("pkdot", ["method.tnet.slot=oracel"], "method.tnet.slot='oracel': expected one of tnet, zeros, oracle; did you "
                                          "mean oracle?"),
    ("pkdot", ["method.tnet.slot=oracle", "method.tnet.enabled=false"], "method.tnet.slot=oracle fills the privileged"),
    ("mtpkdot", ["method.tnet.slot=zeros", "method.tnet.enabled=false"], "method.tnet.slot=zeros fills the privileged"),
    ("mtpkdot", ["method.selection_on=test"], "method.selection_on='test': expected one of batch, heldout_half, val"),
    ("mtpkdot", ["method.selection_on=val", "method.selection=sample"], "method.selection_on=val scores the teachers"),
    ("mtpkdot", ["method.selection_on=heldout_half", "method.selection=joint"],
     "method.selection_on=heldout_half scores the teachers"),
])
def test_invalid_values_and_combinations_fail_before_training(method, overrides, message, tiny_cfg):
    cfg = tiny_cfg(f"method={method}", *overrides)
    assert any(message in p for p in problems(cfg)), problems(cfg)
    with pytest.raises(ConfigError, match=message[:30].replace("(", r"\(")):
        execute(cfg)


def test_new_keys_are_neutral_at_their_defaults_and_change_the_key_otherwise(tiny_cfg):
    """Records made before these keys keep their run key (tests/test_committed_results.py checks the committed ones)."""
    from harness.records import run_key, semantic_config
    for method in ("pkdot", "mtpkdot"):
        assert "slot" not in semantic_config(tiny_cfg(f"method={method}"))["method"]["tnet"]
    assert "selection_on" not in semantic_config(tiny_cfg("method=mtpkdot"))["method"]
    pk = {run_key(tiny_cfg("method=pkdot", *o)) for o in
          ([], ["method.tnet.loss=both"], ["method.tnet.slot=zeros"], ["method.tnet.slot=oracle"])}
    mt = {run_key(tiny_cfg("method=mtpkdot", *o)) for o in
          ([], ["method.selection_on=heldout_half"], ["method.selection_on=val"])}
    assert len(pk) == 4 and len(mt) == 3


def test_oracle_reuses_the_stored_tnet_of_the_default_arm(tiny_cfg):
    """tnet.slot says where the T-Net is read, not how it is trained: P4's T-Net is P0's (one T-Net trained)."""
    p0 = execute(tiny_cfg("method=pkdot"))
    p4 = execute(tiny_cfg("method=pkdot", "method.tnet.slot=oracle"))
    assert p0["extra"]["tnet"]["reused"] is False and p4["extra"]["tnet"]["reused"] is True
    assert p4["extra"]["tnet"]["store_path"] == p0["extra"]["tnet"]["store_path"]
