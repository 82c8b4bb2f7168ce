"""MT-PKDOT against the official code (haseebaslam95/MT-PKDOT), from the committed references tests/parity/mtpkdot_*.npz
(written by `python scripts/parity/make_reference.py --mtpkdot DIR`, which runs the official training loops up to
their first optimizer step; docs/fidelity.md#parity). Everything in float64.

Tolerances. Stage 1 and the selection do the same arithmetic as the official code (linear layers, cross-entropy,
a cosine) except the cosine's epsilon placement (torch's CosineEmbeddingLoss: x.y / sqrt((|x|^2 + 1e-12)(|y|^2 +
1e-12)); F.cosine_similarity: x.y / (max(|x|, 1e-8) max(|y|, 1e-8))), which moves the result by ~1e-12 relative
for the O(10) norms here, and summation order: rtol 1e-10. Stage 3 adds the Sinkhorn divergence, which the official
code takes from geomloss (0.3.1 here; the authors used 0.2.6) and the harness from its own solver (methods/ot.py),
which runs geomloss's ε-scaling schedule with the same number of iterations and the same final extrapolation step
but different tensor layouts (stacked problems, in-place updates): round-off only, so rtol 1e-9 (measured:
0 on the value, 2e-16 on the gradient). atol on gradients: 1e-15, or 1e-9 of the largest entry, for the
entries that are zero up to round-off.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from harness.data import TargetSpec
from methods.blocks import MultimodalNet, task_loss
from methods.mtpkdot import TeacherSet, choose_teacher, per_sample_task_loss, stage1_loss, stage3_loss
from methods.pkdot import centroid_loss
from _parity import assert_parity, reference
from ref_mtpkdot import draw  # the builder's seeded draws (numpy PCG64): the same weights the official run used

METHOD_DEFAULTS = OmegaConf.load(Path(__file__).resolve().parents[1] / "harness/conf/method/mtpkdot.yaml")
PAIN = TargetSpec("classification", ("pain",), n_classes=2)
RTOL_EXACT = 1e-10   # same arithmetic up to the cosine's eps placement and summation order (module docstring)
RTOL_OT = 1e-9       # two Sinkhorn solvers with geomloss's schedule (module docstring)


def seeded(spec: dict) -> torch.Tensor:
    value = draw(tuple(spec["key"]), tuple(spec["shape"]), spec["scale"])
    assert hashlib.sha256(value.tobytes()).hexdigest() == spec["sha256"], \
        "the seeded weights differ from those the official run used (numpy's generator changed?)"
    return torch.from_numpy(value)


def harness_teacher_set(plans: dict) -> TeacherSet:
    """The harness's stage-1 modules holding the official weights: AdapterNetwork fc1/fc4 -> adapters[m][0]/[1]
    (model.hidden 512, stage1.adapter_width null = 256, the official shapes), ClassifierHead.fc -> heads[m].linear."""
    joint = MultimodalNet({"video": 512, "physio": 512}, PAIN, hidden=512, encoder="mlp")
    ts = TeacherSet(joint, 256).double()
    with torch.no_grad():
        for m, tag in (("video", "vis"), ("physio", "phy")):
            for layer, name in ((0, "fc1"), (1, "fc4")):
                ts.adapters[m][layer].weight.copy_(seeded(plans[f"adapter_{tag}"][f"{name}.weight"]))
                ts.adapters[m][layer].bias.copy_(seeded(plans[f"adapter_{tag}"][f"{name}.bias"]))
            ts.heads[m].linear.weight.copy_(seeded(plans[f"head_{tag}"]["fc.weight"]))
            ts.heads[m].linear.bias.copy_(seeded(plans[f"head_{tag}"]["fc.bias"]))
    return ts


def test_stage1_loss_and_gradients_match_the_official_loop():
    ref, meta = reference("mtpkdot_stage1")
    assert meta["official_commit"].startswith("5eb596e")
    ts = harness_teacher_set(meta["weights"])
    vis = torch.tensor(ref["vis"], requires_grad=True)
    phy = torch.tensor(ref["phy"], requires_grad=True)
    z_j = torch.tensor(ref["z_joint"], requires_grad=True)
    out_j = torch.tensor(ref["out_joint"], requires_grad=True)
    labels = torch.from_numpy(ref["labels"]).long()[:, None]  # [N, K = 1]
    cands = ts.unimodal_candidates(None, {"video": vis, "physio": phy}) + [(z_j, out_j[:, None, :])]
    loss, parts = stage1_loss(METHOD_DEFAULTS.stage1, cands, labels, PAIN)  # the default weights: 0.5 / 0.5 / 0.5
    loss.backward()

    assert_parity("stage-1 loss", loss, ref["loss"], rtol=RTOL_EXACT)
    assert_parity("alignment", parts["align"], ref["align"], rtol=RTOL_EXACT)
    assert_parity("joint CE", parts["task_joint"], ref["task_joint"], rtol=RTOL_EXACT)
    assert_parity("unimodal CE", parts["task_unimodal"], ref["task_vis"] + ref["task_phy"], rtol=RTOL_EXACT)
    # gradients w.r.t. the adapters' inputs (the teacher's backbone features) and the joint teacher's outputs
    for what, got, want in (("d/d vis", vis.grad, ref["grad_vis"]), ("d/d phy", phy.grad, ref["grad_phy"]),
                            ("d/d z_J", z_j.grad, ref["grad_z_joint"]), ("d/d logits_J", out_j.grad,
                                                                          ref["grad_out_joint"])):
        assert_parity(what, got, want, rtol=RTOL_EXACT, atol=1e-15)
    # gradients w.r.t. the adapters' and heads' parameters (512 x 256 matrices on seeded projections)
    modules = {"adapter_vis": ts.adapters["video"], "adapter_phy": ts.adapters["physio"],
               "head_vis": ts.heads["video"], "head_phy": ts.heads["physio"]}
    names = {"fc1": "0", "fc4": "1", "fc": "linear"}
    checked = 0
    for key in ref:
        if not key.startswith("grad_adapter") and not key.startswith("grad_head"):
            continue
        module_name, pname = key.removeprefix("grad_").removesuffix("@R").split(".", 1)
        layer, kind = pname.split(".")
        grad = modules[module_name].get_submodule(names[layer]).get_parameter(kind).grad
        if key.endswith("@R"):
            proj = meta["projections"][key.removesuffix("@R")]
            grad = grad @ torch.from_numpy(draw(tuple(proj["key"]), tuple(proj["shape"])))
        assert_parity(key, grad, ref[key], rtol=RTOL_EXACT, atol=1e-15)
        checked += 1
    assert checked == 12  # 2 adapters x (2 weights + 2 biases) + 2 heads x (weight + bias)


def test_stage1_learning_rates_and_official_modes_recorded():
    """The official optimisers' learning rates are the harness's defaults; the official loop keeps the backbone in
    eval mode and the joint transformer in train mode (what stage1.frozen_mode=eval reproduces)."""
    _, meta = reference("mtpkdot_stage1")
    lrs = meta["official_lrs"]
    assert {lrs[k] for k in ("adapter_vis", "adapter_phy", "head_vis", "head_phy")} == {METHOD_DEFAULTS.stage1.lr_adapters}
    assert lrs["joint"] == METHOD_DEFAULTS.stage1.lr_joint
    assert meta["official_modes"] == {"backbone_training": False, "joint_training": True}
    assert meta["official_state_dict_keys"]["adapter_vis"] == {"fc1.weight": [256, 512], "fc1.bias": [256],
                                                               "fc4.weight": [512, 256], "fc4.bias": [512]}


def test_batch_selection_matches_the_official_rule():
    """`selection: batch` picks what the official loop picked, on logits and labels where each candidate wins once
    and where the joint teacher ties a unimodal one (bit-identical losses: the first in the order wins)."""
    ref, meta = reference("mtpkdot_selection")
    assert meta["candidates"] == ["vis", "phy", "joint"]
    for case, logits, labels, losses, pick in zip(meta["cases"], ref["logits"], ref["labels"], ref["losses"],
                                                   ref["official_pick"]):
        y = torch.from_numpy(labels).long()[:, None]
        outs = [torch.from_numpy(o)[:, None, :] for o in logits]
        ours = [float(task_loss(o, y, PAIN)) for o in outs]
        assert_parity(f"{case}: candidate losses", np.array(ours), losses, rtol=RTOL_EXACT)
        cands = [(torch.full((len(y), 3), float(i)), o) for i, o in enumerate(outs)]
        z_star, counts = choose_teacher("batch", cands, y, PAIN)
        assert counts.index(1) == pick, f"{case}: harness picks {counts.index(1)}, the official code {pick}"
        assert torch.equal(z_star, cands[pick][0])
    assert list(ref["official_pick"]) == [0, 1, 2, 0, 1]  # each candidate once, then the two ties to the first


def test_sample_selection_is_the_batch_rule_per_sample():
    """`selection: sample` is not the official rule: it applies it to each sample (per-sample cross-entropy), so on
    the official cases it mixes teachers; it agrees with `batch` only where one candidate is best for every sample."""
    ref, meta = reference("mtpkdot_selection")
    for case, logits, labels, pick in zip(meta["cases"], ref["logits"], ref["labels"], ref["official_pick"]):
        y = torch.from_numpy(labels).long()[:, None]
        outs = [torch.from_numpy(o)[:, None, :] for o in logits]
        per = torch.stack([per_sample_task_loss(o, y, PAIN) for o in outs])
        cands = [(torch.full((len(y), 3), float(i)), o) for i, o in enumerate(outs)]
        z_star, counts = choose_teacher("sample", cands, y, PAIN)
        np.testing.assert_array_equal(z_star[:, 0].numpy(), per.argmin(0).numpy())  # ties: argmin's first
        assert sum(counts) == len(y)
        if counts[pick] == len(y):
            assert counts == [int(i == pick) * len(y) for i in range(3)]


def stage3_cfg(centroid: bool):
    return OmegaConf.merge(METHOD_DEFAULTS, {"centroid": centroid})


@pytest.mark.parametrize("centroid", [False, True])
def test_stage3_loss_weighting_and_centroid_match_the_official_loop(centroid):
    """0.8 · CE + 0.2 · S_ε (official line 701), and with `centroid: true` + 0.2 · L_cent (the commented-out line
    699; its L_cent is the official l2_norm_centroid, computed every step). Compared with the official run whose
    per-row anchors are sorted by teacher similarity (the harness's documented difference A2; on numpy 2.4 the
    official argpartition returned them sorted anyway, so both official runs are equal)."""
    ref, meta = reference("mtpkdot_stage3")
    z_t = torch.tensor(ref["z_teacher"])
    z_s = torch.tensor(ref["z_student"], requires_grad=True)
    out_s = torch.tensor(ref["out_student"], requires_grad=True)
    y = torch.from_numpy(ref["labels"]).long()[:, None]
    loss, parts = stage3_loss(stage3_cfg(centroid), z_t, z_s, out_s[:, None, :], y, PAIN)
    loss.backward()
    want = ref["loss_sorted"] + (0.2 * ref["centroid_sorted"] if centroid else 0.0)
    want_grad_z = ref["grad_z_sorted"] + (0.2 * ref["grad_centroid_z_sorted"] if centroid else 0.0)
    assert_parity("task", parts["task"], ref["task_sorted"], rtol=RTOL_EXACT)
    assert_parity("OT", parts["ot"], ref["ot_sorted"], rtol=RTOL_OT)
    assert_parity("stage-3 loss", loss, want, rtol=RTOL_OT)
    assert_parity("d/d logits_S", out_s.grad, ref["grad_out_sorted"], rtol=RTOL_EXACT, atol=1e-15)
    assert_parity("d/d z_S", z_s.grad, want_grad_z, rtol=RTOL_OT, atol=1e-9 * np.abs(want_grad_z).max())
    if centroid:
        assert_parity("centroid", parts["centroid"], ref["centroid_sorted"], rtol=RTOL_EXACT)
        z = z_s.detach().requires_grad_(True)
        centroid_loss(z_t, z).backward()
        assert_parity("d L_cent / d z_S", z.grad, ref["grad_centroid_z_sorted"], rtol=RTOL_EXACT, atol=1e-15)


def test_stage3_official_anchor_order_is_the_sorted_one_here():
    """The reference keeps the official run as coded too; with numpy 2.4's argpartition it equals the sorted run."""
    ref, _ = reference("mtpkdot_stage3")
    for key in ("loss", "ot", "grad_z"):
        np.testing.assert_array_equal(ref[key], ref[f"{key}_sorted"])
