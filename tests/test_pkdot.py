"""PKDOT / MT-PKDOT: the structural loss against a by-hand computation, its invariances, gradients,
the T-Net, MT teacher selection, the centroid term, end-to-end runs re-scored from predictions.csv."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score

from harness.data import TargetSpec
from harness.method import RunContext
from harness.records import run_dir
from harness.registry import METHODS
from harness.runner import build_task, derive_seed, execute, resolve_device
from harness.schema import ConfigError
from harness.teachers import TeacherStore
from harness.training import SplitTensors
from methods.blocks import TemporalEncoder, separable_conv_steps
from methods.mtpkdot import per_sample_task_loss, select_teacher, select_teacher_per_sample
from methods.ot import sinkhorn_divergence
from methods.pkdot import PrivilegedStudent, TNet, centroid_loss, frozen_path, mmd_multi_kernel, mmd_multi_kernel_value, pooled_features, structural_clouds, structural_ot_loss


def np_cos(z):
    zn = z / np.linalg.norm(z, axis=1, keepdims=True)
    return zn @ zn.T


def np_clouds(zt, zs, k, anchors="lowest", anchor_set="per_row"):
    """docs/fidelity.md#pkdot-loss written out with numpy: cosine matrices, global-min shift, sorted teacher
    anchors, gather."""
    at, as_ = np_cos(zt), np_cos(zs)
    B = len(zt)
    sign = 1.0 if anchors == "lowest" else -1.0
    if anchor_set == "per_row":
        idx = np.empty((B, k), dtype=int)
        for i in range(B):
            others = [j for j in range(B) if j != i]
            order = sorted(others, key=lambda j: sign * at[i, j])
            idx[i] = order[:k]
    else:
        mean_sim = np.array([np.mean([at[i, j] for i in range(B) if i != j]) for j in range(B)])
        cols = sorted(range(B), key=lambda j: sign * mean_sim[j])[:k]
        idx = np.tile(cols, (B, 1))
    xt = np.take_along_axis(at - at.min(), idx, 1)
    xs = np.take_along_axis(as_ - as_.min(), idx, 1)
    return xt, xs


@pytest.mark.parametrize("anchors,anchor_set", [("lowest", "per_row"), ("highest", "per_row"),
                                                ("lowest", "shared"), ("highest", "shared")])
def test_structural_loss_equals_direct_computation(anchors, anchor_set):
    rng = np.random.default_rng(0)
    zt, zs = rng.normal(size=(9, 6)), rng.normal(size=(9, 6))
    xt_np, xs_np = np_clouds(zt, zs, 4, anchors, anchor_set)
    tz, sz = torch.tensor(zt), torch.tensor(zs)
    xt, xs = structural_clouds(tz, sz, 4, anchors, anchor_set)
    np.testing.assert_allclose(xt.numpy(), xt_np, atol=1e-12)
    np.testing.assert_allclose(xs.numpy(), xs_np, atol=1e-12)
    # profiles are sorted by teacher similarity (increasing for lowest, decreasing for highest)
    if anchor_set == "per_row":
        d = np.diff(xt_np, axis=1)
        assert (d >= 0).all() if anchors == "lowest" else (d <= 0).all()
    expected = sinkhorn_divergence(torch.tensor(xt_np), torch.tensor(xs_np), eps=0.01)
    got = structural_ot_loss(tz, sz, k=4, anchors=anchors, anchor_set=anchor_set)
    assert float(got) == pytest.approx(float(expected), rel=1e-10)
    assert float(got) > 0


def test_k_is_capped_below_batch_size_and_single_sample_batch_is_zero():
    z = torch.randn(5, 3, dtype=torch.float64)
    xt, _ = structural_clouds(z, z + 0.1, k=30)
    assert xt.shape == (5, 4)
    assert float(structural_ot_loss(z, z, k=30)) == pytest.approx(0.0, abs=1e-8)
    assert float(structural_ot_loss(z[:1], z[:1] * 2)) == 0.0


def test_batch_permutation_invariance_and_what_is_not_invariant():
    g = torch.Generator().manual_seed(1)
    zt = torch.randn(40, 16, generator=g, dtype=torch.float64)
    zs = zt + 0.8 * torch.randn(40, 16, generator=g, dtype=torch.float64)
    base = float(structural_ot_loss(zt, zs, k=10))
    perm = torch.randperm(40, generator=g)
    # the same permutation of the batch for teacher and student: invariant (sorted anchors)
    assert float(structural_ot_loss(zt[perm], zs[perm], k=10)) == pytest.approx(base, rel=1e-9)
    assert float(structural_ot_loss(zt[perm], zs[perm], k=10, anchor_set="shared")) == pytest.approx(
        float(structural_ot_loss(zt, zs, k=10, anchor_set="shared")), rel=1e-9)
    # re-pairing teacher and student rows changes the loss
    assert abs(float(structural_ot_loss(zt, zs[perm], k=10)) - base) > 1e-3 * base
    # unsorted anchors inside rows (argpartition-like order) change it too: why they are sorted
    xt, xs = structural_clouds(zt, zs, k=10)
    shuffle = torch.stack([torch.randperm(10, generator=g) for _ in range(40)])
    unsorted = float(sinkhorn_divergence(xt.gather(1, shuffle), xs.gather(1, shuffle)))
    assert float(sinkhorn_divergence(xt, xs)) == pytest.approx(base, rel=1e-12)
    assert abs(unsorted - base) > 1e-3 * base


def test_gradient_reaches_only_the_student_features():
    zt = torch.randn(32, 8, requires_grad=True)
    zs = torch.randn(32, 8, requires_grad=True)
    (structural_ot_loss(zt, zs, k=10) + centroid_loss(zt, zs)).backward()
    assert zt.grad is None
    assert zs.grad is not None and torch.isfinite(zs.grad).all() and zs.grad.abs().sum() > 0


@pytest.mark.parametrize("steps,kernel", [(1, 5), (2, 5), (3, 3), (16, 5), (40, 7)])
def test_conv_block_without_conv1d_is_the_conv1d_computation(steps, kernel):
    """separable_conv_steps (shifted scaled copies + Linear, the fast path) computes TemporalEncoder's conv
    block as nn.Conv1d does: values and the gradients of input and weights, in float64 to round-off and in
    float32 within float tolerance."""
    torch.manual_seed(0)
    enc = TemporalEncoder(6, 8, layers=1, kernel=kernel).double()
    block = enc.convs[0]
    for p in block.parameters():
        p.data.normal_()
    h = torch.randn(4, steps, 8, dtype=torch.float64, requires_grad=True)
    grads = []
    for fast in (True, False):
        out = separable_conv_steps(h, block) if fast else block(h.transpose(1, 2)).transpose(1, 2)
        g = torch.autograd.grad(out.square().sum(), [h, *block.parameters()])
        grads.append((out.detach(), g))
    (out_fast, g_fast), (out_ref, g_ref) = grads
    torch.testing.assert_close(out_fast, out_ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    block32, h32 = block.float(), h.detach().float()
    torch.testing.assert_close(separable_conv_steps(h32, block32), block32(h32.transpose(1, 2)).transpose(1, 2),
                               rtol=1e-5, atol=1e-5)


def test_frozen_path_shares_the_teacher_encoders_and_changes_nothing():
    """The training step's teacher pass feeds the T-Net too (one teacher encoder pass per step): z_t and the
    student's output fed the path's features are bit for bit those of teacher(x) and student(x), dropout included."""
    from methods.blocks import MultimodalNet

    torch.manual_seed(0)
    target = TargetSpec(kind="classification", dims=("pain",), n_classes=2)
    teacher = MultimodalNet({"visual": 6, "physio": 5}, target, hidden=8).eval()
    tnet = TNet(8, 8, width=16).eval()
    net = MultimodalNet({"visual": 6}, target, hidden=8, slots=("visual", "physio")).train()
    student = PrivilegedStudent(net, teacher, tnet, ("visual",), ("physio",))
    x = {"visual": torch.randn(10, 7, 6), "physio": torch.randn(10, 7, 5)}
    lengths = {"visual": torch.randint(1, 8, (10,)), "physio": torch.randint(1, 8, (10,))}
    with torch.no_grad():
        z_t, features = frozen_path(teacher, student)(x, lengths)
    torch.manual_seed(1)
    s_out = student(x, lengths, features)
    torch.manual_seed(1)
    with torch.no_grad():
        z_ref = teacher(x, lengths).z
    ref = student(x, lengths)
    assert torch.equal(z_t, z_ref) and torch.equal(s_out.out, ref.out) and torch.equal(s_out.z, ref.z)
    assert features.shape == (10, 8)
    student_alone = PrivilegedStudent(net, teacher, None, ("visual",), ("physio",))
    assert len(frozen_path(teacher, student_alone)(x, lengths)) == 1  # no T-Net: z_t only


def test_centroid_term_by_hand():
    rng = np.random.default_rng(3)
    zt, zs = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
    at, as_ = np_cos(zt), np_cos(zs)
    col_t = [sum(at[i, j] for i in range(6)) / 6 for j in range(6)]
    col_s = [sum(as_[i, j] for i in range(6)) / 6 for j in range(6)]
    expected = np.sqrt(sum((a - b) ** 2 for a, b in zip(col_t, col_s)))
    assert float(centroid_loss(torch.tensor(zt), torch.tensor(zs))) == pytest.approx(expected, rel=1e-12)


def test_mmd_matches_the_official_formula_by_hand():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(5, 3)) + 0.5
    u = np.vstack([x, y])
    n = len(u)
    d2 = np.array([[np.sum((u[i] - u[j]) ** 2) for j in range(n)] for i in range(n)])
    sigma2 = d2.sum() / (n * n - n)
    kern = sum(np.exp(-d2 / (sigma2 * 2.0 ** (m - 2))) for m in range(5))
    expected = kern[:5, :5].mean() + kern[5:, 5:].mean() - kern[:5, 5:].mean() - kern[5:, :5].mean()
    assert float(mmd_multi_kernel(torch.tensor(x), torch.tensor(y))) == pytest.approx(expected, rel=1e-10)
    assert float(mmd_multi_kernel(torch.tensor(x), torch.tensor(x))) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_mmd_value_in_row_blocks_equals_the_whole_matrix_formula(dtype):
    # the T-Net's validation MMD (mmd_multi_kernel_value) over a split of 700 rows in blocks of 2-3 rows, straddling
    # neither x's nor y's end, against mmd_multi_kernel's whole matrices: the same terms summed in another order,
    # so equal to float64 round-off (1e-10) and, in float32, to the round-off of sums of 490,000 terms (1e-4 relative)
    rng = np.random.default_rng(5)
    x = torch.tensor(rng.normal(size=(400, 16)), dtype=dtype)
    y = torch.tensor(rng.normal(size=(300, 16)) + 0.3, dtype=dtype)
    want = float(mmd_multi_kernel(x, y))
    got = mmd_multi_kernel_value(x, y, block_elements=2000)
    assert got == pytest.approx(want, rel=1e-10 if dtype == torch.float64 else 1e-4)
    assert mmd_multi_kernel_value(x, x, block_elements=2000) == pytest.approx(0.0, abs=1e-6)


def test_teacher_selection_argmin_with_spec_tie_order():
    assert select_teacher([0.5, 0.3, 0.4]) == 1
    assert select_teacher([0.3, 0.3, 0.3]) == 0  # all tied: the first modality
    assert select_teacher([0.9, 0.2, 0.2]) == 1  # physio before joint
    assert select_teacher(torch.tensor([0.7, 0.8, 0.1])) == 2
    per = torch.tensor([[1.0, 0.5, 0.2, 0.4],
                        [1.0, 0.5, 0.3, 0.1],
                        [0.5, 0.5, 0.3, 0.1]])
    assert select_teacher_per_sample(per).tolist() == [2, 0, 0, 1]


def test_per_sample_task_loss_by_hand():
    cls = TargetSpec(kind="classification", dims=("pain",), n_classes=3)
    logits = torch.tensor([[[2.0, 0.0, -1.0]], [[0.0, 1.0, 0.0]]])
    y = torch.tensor([[0], [2]])
    lse = torch.logsumexp(logits[:, 0], -1)
    expected = torch.stack([lse[0] - 2.0, lse[1] - 0.0])
    torch.testing.assert_close(per_sample_task_loss(logits, y, cls), expected)
    reg = TargetSpec(kind="regression", dims=("valence", "arousal"))
    pred, t = torch.tensor([[0.0, 1.0], [2.0, 2.0]]), torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    torch.testing.assert_close(per_sample_task_loss(pred, t, reg), torch.tensor([0.5, 4.0]))


def test_per_step_targets_masked_loss_and_teacher_set_shapes():
    """Aff-Wild2-style per-frame targets: per-sample loss over valid steps only; candidates per step."""
    from methods.blocks import MultimodalNet
    from methods.mtpkdot import TeacherSet
    reg = TargetSpec(kind="regression", dims=("valence", "arousal"), per_step=True)
    pred = torch.zeros(2, 3, 2)
    y = torch.tensor([[[1.0, 1.0], [2.0, 2.0], [9.0, 9.0]], [[3.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    torch.testing.assert_close(per_sample_task_loss(pred, y, reg, mask), torch.tensor([2.5, 4.5]))
    ts = TeacherSet(MultimodalNet({"visual": 4, "physio": 3}, reg, hidden=8, layers=1), width=4)
    cands = ts({"visual": torch.randn(2, 3, 4), "physio": torch.randn(2, 3, 3)})
    assert [tuple(z.shape) for z, _ in cands] == [(2, 8)] * 3
    assert [tuple(o.shape) for _, o in cands] == [(2, 3, 2)] * 3


def ccc_independent(t, p):
    c = np.cov(t, p, bias=True)
    return 2 * c[0, 1] / (c[0, 0] + c[1, 1] + (t.mean() - p.mean()) ** 2)


@pytest.mark.parametrize("method", ["pkdot", "mtpkdot"])
@pytest.mark.parametrize("target", ["regression", "classes"])
def test_end_to_end_and_rescoring(method, target, tiny_cfg):
    cfg = tiny_cfg(f"method={method}", f"task.target={target}")
    rec = execute(cfg)
    assert rec["status"] == "ok", rec.get("traceback")
    pred = pd.read_csv(run_dir(cfg) / "predictions.csv")
    assert len(pred) == rec["n_samples"]["test"]
    if target == "regression":
        v = ccc_independent(pred.y_true_valence.to_numpy(), pred.y_pred_valence.to_numpy())
        a = ccc_independent(pred.y_true_arousal.to_numpy(), pred.y_pred_arousal.to_numpy())
        assert rec["metrics"]["ccc_mean"] == pytest.approx((v + a) / 2, abs=1e-5)
    else:
        assert rec["metrics"]["accuracy"] == pytest.approx(accuracy_score(pred.y_true, pred.y_pred))
    assert rec["logs"]["student"][0]["train_ot"] >= 0
    assert rec["logs"]["tnet"], "the T-Net log is in the record"
    assert rec["extra"]["teacher"]["reused"] is False  # fresh store: this run trained it, and says so
    if method == "mtpkdot":
        choice = rec["extra"]["teacher_choice"]
        assert choice["names"] == ["visual", "physio", "joint"]
        n_train, bs = rec["n_samples"]["train"], 128
        per_epoch_batches = n_train // bs if n_train > bs else 1
        assert [sum(c.values()) for c in choice["per_epoch"]] == [per_epoch_batches] * len(rec["logs"]["student"])


@pytest.mark.parametrize("method", ["pkdot", "mtpkdot"])
def test_misspelt_options_fail_before_training(method, tiny_cfg):
    cfg = tiny_cfg(f"method={method}", "method.anchors=top")
    with pytest.raises(ConfigError, match=r"^method.anchors='top': expected one of lowest, highest$"):
        execute(cfg)
    assert not run_dir(cfg).exists()  # a config mistake leaves no record, not even a failed one


def make_ctx(cfg):
    task = build_task(cfg)
    data = task.load_fold(0)
    ctx = RunContext(cfg=cfg, task=task, fold=0, seed=0, device=resolve_device("cpu"),
                     teachers=TeacherStore(Path(cfg.cache_dir) / "teachers"), run_dir=Path(cfg.results_dir),
                     progress=False)
    return ctx, data


def test_tnet_is_trained_then_frozen_and_improves_validation_mmd(tiny_cfg):
    cfg = tiny_cfg("method=pkdot", "method.tnet.epochs=15")
    ctx, data = make_ctx(cfg)
    m = METHODS.get("pkdot")(cfg.method, ctx)
    m.fit(data.train, data.val)
    teacher, tnet = m.student._frozen
    stored = torch.load(Path(ctx.extra["tnet"]["store_path"]) / "teacher.pt", weights_only=True)
    # the student trained after the T-Net was stored: the T-Net still equals the stored weights
    for name, p in tnet.state_dict().items():
        torch.testing.assert_close(p, stored[name], rtol=0, atol=0)
    assert not any(p.requires_grad for p in tnet.parameters())
    assert not any(p.requires_grad for p in teacher.parameters())
    # validation MMD recomputed here: the selected T-Net against the same T-Net at its initial weights
    b = next(SplitTensors(data.val, ctx.device, False).batches(10_000))
    with torch.no_grad():
        x = pooled_features(teacher, b.inputs, b.lengths, ("visual",))
        y = pooled_features(teacher, b.inputs, b.lengths, ("physio",))
        torch.manual_seed(derive_seed(0, "synthetic", 0, "tnet"))
        initial = TNet(x.shape[1], y.shape[1], cfg.method.tnet.width, cfg.method.tnet.arch)
        mmd_initial, mmd_trained = float(mmd_multi_kernel(initial(x), y)), float(mmd_multi_kernel(tnet(x), y))
    assert mmd_initial == pytest.approx(ctx.extra["tnet"]["val_before"]["val_mmd"], rel=1e-4)
    assert mmd_trained < 0.9 * mmd_initial


def test_kd_then_pkdot_reuses_the_teacher_and_mtpkdot_reuses_the_tnet(tiny_cfg):
    kd = execute(tiny_cfg("method=kd"))
    pk = execute(tiny_cfg("method=pkdot"))
    mt = execute(tiny_cfg("method=mtpkdot"))
    assert kd["extra"]["teacher"]["reused"] is False
    assert pk["extra"]["teacher"]["reused"] is True
    assert pk["extra"]["teacher"]["store_path"] == kd["extra"]["teacher"]["store_path"]
    assert pk["extra"]["tnet"]["reused"] is False and mt["extra"]["tnet"]["reused"] is True
    assert mt["extra"]["teacher"]["reused"] is True and mt["extra"]["mt_teachers"]["reused"] is False
    assert execute(tiny_cfg("method=mtpkdot", "seed=0", "overwrite=true"))["extra"]["mt_teachers"]["reused"] is True


def test_mt_stage1_fine_tunes_a_copy_and_leaves_the_stored_teacher(tiny_cfg):
    from methods.mtpkdot import TeacherSet, get_teacher_set
    from methods.teacher import build_net, get_teacher
    cfg = tiny_cfg("method=mtpkdot", "method.stage1.epochs=40", "method.stage1.patience=40")
    ctx, data = make_ctx(cfg)
    teacher, meta = get_teacher(ctx, data.train, data.val)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    ts, _ = get_teacher_set(ctx, cfg.method, teacher, data.train, data.val)
    on_disk = torch.load(Path(meta["store_path"]) / "teacher.pt", weights_only=True)
    for k, v in teacher.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
        torch.testing.assert_close(v, on_disk[k], rtol=0, atol=0)
    joint = ts.joint.state_dict()
    enc = [k for k in joint if k.startswith("encoders.")]
    fus = [k for k in joint if k.startswith(("fusion.", "head."))]
    assert all(torch.equal(joint[k], before[k]) for k in enc)  # encoders frozen in stage 1
    assert any(not torch.equal(joint[k], before[k]) for k in fus)  # fusion/head fine-tuned
    assert not any(p.requires_grad for p in ts.parameters())  # frozen for stage 3
    # stage 1 aligned the unimodal candidates to the joint teacher: mean cosine up from the initial adapters
    torch.manual_seed(derive_seed(0, "synthetic", 0, "mt_teachers"))
    initial = TeacherSet(build_net(ctx, ("visual", "physio")), ts.adapters["visual"][0].out_features)
    initial.joint.load_state_dict(before)
    b = next(SplitTensors(data.val, ctx.device, False).batches(10_000))
    with torch.no_grad():
        after, start = ts(b.inputs, b.lengths), initial(b.inputs, b.lengths)
    for m in range(2):
        cos_after = float(F.cosine_similarity(after[m][0], after[-1][0]).mean())
        cos_start = float(F.cosine_similarity(start[m][0], start[-1][0]).mean())
        assert cos_after > cos_start + 0.2
