"""PKDOT against the official code (haseebaslam95/PKDOT @ 4f1b6d4, and MT-PKDOT @ 5eb596e for the T-Net's MMD
and the 8-layer T-Net), from the numbers scripts/parity/make_reference.py wrote into tests/parity/ (see
scripts/parity/ref_pkdot.py for how each was produced). Everything here is float64.

Rebuilding the inputs: ref_pkdot's `small_ints`, `low_rank` and `lattice` (integer formulas, no RNG), checked
against sums stored in each file so a changed formula fails loudly instead of comparing other numbers.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from omegaconf import OmegaConf

from harness.data import TargetSpec
from methods.blocks import task_loss
from methods.pkdot import TNet, mmd_multi_kernel, ot_terms, structural_ot_loss
from tests._parity import assert_parity, reference

import ref_pkdot  # noqa: E402  (scripts/parity is on sys.path through tests/_parity)

F64 = torch.float64
PKDOT_COMMIT = "4f1b6d4"
MTPKDOT_COMMIT = "5eb596e"
CLASSES = TargetSpec("classification", ("pain",), n_classes=2)
PKDOT_CFG = OmegaConf.load(ref_pkdot.Path(__file__).resolve().parents[1] / "harness/conf/method/pkdot.yaml")

# The harness rule that each anchor reading of the reference corresponds to.
READINGS = {"per_row_lowest": ("lowest", "per_row"), "per_row_highest": ("highest", "per_row"),
            "shared_lowest": ("lowest", "shared"), "shared_highest": ("highest", "shared")}


def _check_commit(meta: dict, commit: str) -> None:
    assert meta["official_commit"].startswith(commit), meta["official_commit"]


def _state(meta: dict, template: nn.Module) -> dict[str, torch.Tensor]:
    """The lattice weights the builder loaded into the official module, rebuilt, checked against their sums."""
    state = ref_pkdot.module_weights(template, meta["weights"]["salt"])
    assert list(state) == meta["official_keys"]
    for k, v in state.items():
        np.testing.assert_allclose([float(v.sum()), float((v * v).sum())], meta["weights"]["sums"][k], rtol=1e-12)
    return state


# --------------------------------------------------------------------------------------------------
# The structural loss.

def _structural_inputs():
    arrays, meta = reference("pkdot_structural_loss")
    _check_commit(meta, PKDOT_COMMIT)
    fresh = ref_pkdot.structural_features()
    for k, v in fresh.items():
        np.testing.assert_array_equal(arrays[k], v, err_msg=f"ref_pkdot.structural_features()[{k!r}] changed")
    z_t = ref_pkdot.low_rank(arrays["u_t"], arrays["v_t"])
    z_s = ref_pkdot.low_rank(arrays["u_s"], arrays["v_s"])
    return arrays, meta, z_t, z_s


@pytest.mark.parametrize("reading", list(READINGS))
def test_structural_loss_matches_the_official_code(reading):
    """methods/pkdot.py's loss (CE + 0.6 · S_ε through ot_terms with the pkdot.yaml defaults) against
    PKDOT_kfold.py's own loss statements, run on the same features. The official block selects anchors with
    np.argpartition; here it ran with each row's k columns SORTED by teacher similarity (per_row_lowest: the
    harness's documented reading, docs/fidelity.md#pkdot-loss A2), or with the harness's anchor rule in place of
    argpartition for the readings the official code lacks (highest, shared: then everything after the anchor
    choice is the official code's, and the choice itself is checked against the stored teacher cloud).

    Tolerance 1e-12 relative (value; gradient 1e-11 of its largest entry): the two sides share the inputs
    exactly and run the same algorithm (cosine, shift, gather, geomloss's ε-scaling Sinkhorn) with different but
    equivalent float64 arithmetic (F.normalize vs a division by norms; a fused log-domain solver vs geomloss's
    tensorized one), each step accurate to ~1e-16 relative. Measured: ≤ 1e-15 relative; the margin covers other
    BLAS/libm builds, whose round-off the Sinkhorn loop can amplify by up to the cost scale over ε (~1e3)."""
    arrays, meta, z_t, z_s = _structural_inputs()
    anchors, anchor_set = READINGS[reading]
    cfg = OmegaConf.merge(PKDOT_CFG, {"anchors": anchors, "anchor_set": anchor_set})
    assert (cfg.k, cfg.ot_weight, cfg.task_weight, cfg.epsilon, cfg.scaling, cfg.shift) == (30, 0.6, 1.0, 0.01, 0.5, "min")

    z_s = z_s.requires_grad_(True)
    logits = (torch.tensor(arrays["logits"], dtype=F64) / 16.0).requires_grad_(True)
    labels = torch.tensor(arrays["labels"])
    l_task = task_loss(logits[:, None, :], labels[:, None], CLASSES)
    l_struct, parts = ot_terms(cfg, z_t, z_s)
    total = cfg.task_weight * l_task + l_struct
    total.backward()

    d_s = assert_parity(f"S_ε ({reading})", torch.tensor(parts["ot"], dtype=F64), arrays[f"{reading}/sinkhorn"], rtol=1e-12)
    d_total = assert_parity(f"total loss ({reading})", total.detach(), arrays[f"{reading}/total"], rtol=1e-12)
    assert_parity("CE", l_task.detach(), arrays["gt_loss"], rtol=1e-12)  # the same log-softmax: ~1 ulp
    # Gradient w.r.t. the student features: the official one is stored as coordinates in the features' row space
    # (residual outside it, in float64 round-off, recorded by the builder).
    assert meta["residual_outside_row_space"][reading] < 1e-15
    want = arrays[f"{reading}/grad_z_s_coords"] @ arrays["v_s"].astype(np.float64)
    scale = np.abs(want).max()
    d_grad = assert_parity(f"d total / d z_s ({reading})", z_s.grad, want, rtol=0, atol=1e-11 * scale)
    assert_parity(f"d total / d logits ({reading})", logits.grad[:, :], arrays[f"{reading}/grad_logits"], rtol=1e-12)
    print(f"\n[parity] pkdot_structural_loss/{reading}: max|Δ| S={d_s:.2e} total={d_total:.2e} grad={d_grad:.2e} "
          f"(grad scale {scale:.2e})")


@pytest.mark.parametrize("reading", list(READINGS))
def test_anchor_rules_pick_the_stored_columns(reading):
    """The anchors the harness picks are, in order, the columns the official block gathered in that reading
    (exact: integer indices; the teacher matrix has no ties)."""
    from methods.pkdot import anchor_indices, cosine_matrix
    arrays, _, z_t, _ = _structural_inputs()
    anchors, anchor_set = READINGS[reading]
    ours = anchor_indices(cosine_matrix(z_t), 30, anchors, anchor_set).numpy()
    np.testing.assert_array_equal(ours, arrays[f"{reading}/anchors"])
    if anchor_set == "per_row":  # the diagonal is never an anchor of its own row
        assert not (ours == np.arange(128)[:, None]).any()
    else:  # shared: the k chosen columns are the k rows whose own self-similarity is one of their coordinates
        assert (ours == np.arange(128)[:, None]).any(1).sum() == 30


def test_the_official_unsorted_anchor_order_gives_another_value():
    """A2 in numbers. On this numpy (x86-simd-sort), np.argpartition returns each 128-long row's 30 smallest in
    ascending order, so the official code computes exactly the harness's sorted reading; on numpy's generic
    introselect (numpy < 2.0's only path) the order is arbitrary and the value differs. Both are stored."""
    arrays, meta, z_t, z_s = _structural_inputs()
    ours = float(structural_ot_loss(z_t, z_s))
    assert meta["rows_sorted"]["official_introselect"] < 0.5  # the historical order is not sorted
    official, historical = float(arrays["official/sinkhorn"]), float(arrays["official_introselect/sinkhorn"])
    if meta["rows_sorted"]["official (this numpy)"] == 1.0:
        assert official == pytest.approx(ours, rel=1e-9)
    assert abs(historical - ours) > 1e-3 * ours, "unsorted anchors should change S_ε by far more than round-off"
    print(f"\n[parity] pkdot_structural_loss: S sorted={ours:.9f}, official introselect order={historical:.9f} "
          f"(Δ={historical - ours:+.3e})")


# --------------------------------------------------------------------------------------------------
# The T-Net's MMD.

def test_mmd_matches_the_official_mmd_loss():
    """mmd_multi_kernel against mmd_loss.py's MMD_loss (MT-PKDOT repo: the loss PKDOT's T-Net trains with).
    Tolerance 1e-12 relative: the inputs are small integers over 64, so every squared distance is exact on both
    sides (theirs (a − b)² summed, ours |a|² + |b|² − 2a·b); what remains is exp and the sums, ~1e-16 each."""
    arrays, meta = reference("pkdot_mmd")
    _check_commit(meta, MTPKDOT_COMMIT)
    x = ref_pkdot.low_rank(arrays["u_x"], arrays["v"]).requires_grad_(True)
    y = ref_pkdot.low_rank(arrays["u_y"], arrays["v"]) + 0.25
    value = mmd_multi_kernel(x, y)
    value.backward()
    basis = np.concatenate([arrays["v"].astype(np.float64), np.ones((1, 512))])
    want = arrays["grad_x_coords"] @ basis
    assert meta["residual_outside_basis"] < 1e-15
    d_v = assert_parity("MMD²", value.detach(), arrays["value"], rtol=1e-12)
    d_g = assert_parity("d MMD² / d x", x.grad, want, rtol=0, atol=1e-10 * np.abs(want).max())
    print(f"\n[parity] pkdot_mmd: max|Δ| value={d_v:.2e} grad={d_g:.2e}")


# --------------------------------------------------------------------------------------------------
# The official T-Nets in the harness's TNet.

def _official_tnet_template(arch: str) -> nn.Module:
    """A module with the official TransformNet's state_dict keys and shapes (no official code: the keys are
    read from the reference file, the shapes from the architecture), to rebuild the lattice weights."""
    sizes = {"autoencoder": [512, 256, 128, 256, 512],
             "linear8": [512, 2048, 1024, 512, 256, 512, 1024, 2048, 512]}[arch]
    half = (len(sizes) - 1) // 2
    encoder = nn.Module()
    decoder = nn.Module()
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        part, j = (encoder, i + 1) if i < half else (decoder, i - half + 1)
        setattr(part, f"fc{j}", nn.Linear(a, b, dtype=F64))
    root = nn.Module()
    root.encoder, root.decoder = encoder, decoder
    return root


@pytest.mark.parametrize("component, arch, commit", [("tnet_autoencoder", "autoencoder", PKDOT_COMMIT),
                                                     ("tnet_linear8", "linear8", MTPKDOT_COMMIT)])
def test_official_tnet_weights_in_the_harness_tnet(component, arch, commit):
    """TNet(512, 512, width=256, arch) with the official TransformNet's weights copied in layer by layer (encoder
    fc1.. then decoder fc1..) computes the official forward and input gradient. Tolerance 1e-10 relative: the
    same affine maps and activations in the same order; matmul summation order may differ (~1e-16 per sum),
    and the 8-layer linear stack multiplies that by the layers' norms."""
    arrays, meta = reference(component)
    _check_commit(meta, commit)
    state = _state(meta, _official_tnet_template(arch))
    tnet = TNet(512, 512, width=256, arch=arch).to(F64).eval()
    layers = tnet.linear_layers()
    assert len(layers) * 2 == len(state)
    with torch.no_grad():
        for layer, key in zip(layers, [k[:-len(".weight")] for k in state if k.endswith(".weight")]):
            layer.weight.copy_(state[f"{key}.weight"])
            layer.bias.copy_(state[f"{key}.bias"])
    x = torch.tensor(arrays["x"], dtype=F64, requires_grad=True)
    out = tnet(x)
    direction = torch.tensor(ref_pkdot.lattice(tuple(x.shape), meta["direction_salt"], 1.0), dtype=F64)
    (out * direction).sum().backward()
    d_o = assert_parity(f"{component} forward", out.detach(), arrays["out"], rtol=1e-10, atol=1e-14)
    d_g = assert_parity(f"{component} d/dx", x.grad, arrays["grad_x"], rtol=1e-10, atol=1e-12 * np.abs(arrays["grad_x"]).max())
    print(f"\n[parity] {component}: max|Δ| out={d_o:.2e} grad={d_g:.2e}")


@pytest.mark.parametrize("arch", ["autoencoder", "linear8"])
def test_tnet_at_other_widths_is_the_official_pad_and_cut(arch):
    """Feature width d < 512: the official forward zero-pads the input to 512 and cuts the output to d. A TNet(d, d)
    whose first layer is the official first layer's first d columns and whose last layer is its first d rows
    computes the same function (the official forward is reproduced here with torch ops on the 512-wide weights)."""
    d = 48
    full = TNet(512, 512, width=256, arch=arch).to(F64)
    small = TNet(d, d, width=256, arch=arch).to(F64)
    big_layers, small_layers = full.linear_layers(), small.linear_layers()
    with torch.no_grad():
        for i, (b, s) in enumerate(zip(big_layers, small_layers)):
            w, bias = b.weight, b.bias
            if i == 0:
                w = w[:, :d]
            if i == len(big_layers) - 1:
                w, bias = w[:d], bias[:d]
            s.weight.copy_(w)
            s.bias.copy_(bias)
    x = torch.randn(5, d, dtype=F64, generator=torch.Generator().manual_seed(0))
    official_way = full(torch.cat([x, torch.zeros(5, 512 - d, dtype=F64)], 1))[:, :d]
    torch.testing.assert_close(small(x), official_way, rtol=1e-12, atol=1e-14)


def test_tnet_arch_sizes_and_errors():
    widths = lambda t: [(m.in_features, m.out_features) for m in t.linear_layers()]  # noqa: E731
    assert widths(TNet(512, 512, 256, "autoencoder")) == [(512, 256), (256, 128), (128, 256), (256, 512)]
    assert widths(TNet(512, 512, 256, "linear8")) == [(512, 2048), (2048, 1024), (1024, 512), (512, 256), (256, 512),
                                                      (512, 1024), (1024, 2048), (2048, 512)]
    assert widths(TNet(64, 128, 16, "autoencoder")) == [(64, 16), (16, 8), (8, 16), (16, 128)]
    out = TNet(8, 8, 16, "autoencoder")(torch.randn(4, 8) * 100)
    assert ((out >= 0) & (out <= 1)).all(), "the official sigmoid output"
    lin = TNet(8, 8, 4, "linear8")
    x = torch.randn(3, 8)
    torch.testing.assert_close(lin(2 * x) - lin(x), lin(x) - lin(torch.zeros(3, 8)))  # affine: no activation
    with pytest.raises(ValueError, match="tnet.arch must be one of mlp, linear, autoencoder, linear8"):
        TNet(8, 8, 4, "resnet")
    with pytest.raises(ValueError, match="width >= 2"):
        TNet(8, 8, 1, "autoencoder")


# --------------------------------------------------------------------------------------------------
# The official fusion transformer in the harness's TransformerFusion + Head.

def official_fusion_names(hidden: int = 512) -> dict[str, str]:
    """Official MultimodalTransformer state_dict key -> the harness's (TransformerFusion under `fusion.`, the
    classifier under `head.`), slots a = visual, b = physio. Written from the two architectures, not copied."""
    names = {}
    for official, ours in (("visual_encoder", "fusion.blocks.visual"), ("physiological_encoder", "fusion.blocks.physio")):
        for p in ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"):
            names[f"{official}.attention.{p}"] = f"{ours}.attention.{p}"
        for i in (0, 2):
            for p in ("weight", "bias"):
                names[f"{official}.feed_forward.{i}.{p}"] = f"{ours}.ffn.{i}.{p}"
        for i in (1, 2):
            for p in ("weight", "bias"):
                names[f"{official}.layer_norm{i}.{p}"] = f"{ours}.norm{i}.{p}"
    for official, ours in (("cross_attention_v", "fusion.cross.visual"), ("cross_attention_p", "fusion.cross.physio")):
        for p in ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"):
            names[f"{official}.{p}"] = f"{ours}.{p}"
    names.update({"gated_attention.weight": "fusion.gate.weight", "gated_attention.bias": "fusion.gate.bias",
                  "fc.weight": "head.linear.weight", "fc.bias": "head.linear.bias"})
    return names


def _official_fusion_in_harness(batch_mixing: bool):
    from methods.blocks import MultimodalNet
    arrays, meta = reference("pkdot_fusion")
    _check_commit(meta, PKDOT_COMMIT)
    net = MultimodalNet({"visual": 512}, CLASSES, hidden=512, slots=("visual", "physio"), fusion="transformer",
                        batch_mixing=batch_mixing).to(F64).eval()
    names = official_fusion_names()
    assert sorted(names) == sorted(meta["official_keys"])
    ours = net.state_dict()
    template = {k: ours[names[k]] for k in meta["official_keys"]}  # official order, our shapes
    state = _state(meta, template)
    with torch.no_grad():
        for k, v in state.items():
            ours[names[k]].copy_(v)
    return net, arrays


@pytest.mark.parametrize("reading, batch_mixing", [("batch_mixing", True), ("per_sample", False)])
def test_fusion_transformer_matches_the_official_module(reading, batch_mixing):
    """model.fusion=transformer's fusion and head with the official MultimodalTransformer's weights copied in, in
    eval mode, on the official inputs (B, 1, 512): batch_mixing=true is the official call on the whole batch
    (self-attention across its 6 samples, B1); false is the fixed reading, which equals the official module called
    on each sample alone. Tolerance 1e-10 relative: the same layers in the same order (torch's
    MultiheadAttention on both sides, our batch_first layout vs their sequence-first one; fused fast paths may
    sum in another order, ~1e-16 per op through two attention layers, two LayerNorms and the gate)."""
    net, arrays = _official_fusion_in_harness(batch_mixing)
    v, p = torch.tensor(arrays["v"][:, 0]), torch.tensor(arrays["p"][:, 0])
    with torch.no_grad():
        z = net.fusion({"visual": v, "physio": p})
        logits = net.head(z)[:, 0]
    d_z = assert_parity(f"fusion z ({reading})", z, arrays[f"{reading}/z"], rtol=1e-10, atol=1e-12)
    d_l = assert_parity(f"fusion logits ({reading})", logits, arrays[f"{reading}/logits"], rtol=1e-10, atol=1e-12)
    other = "per_sample" if batch_mixing else "batch_mixing"
    assert np.abs(z.numpy() - arrays[f"{other}/z"]).max() > 1e-3, "the two readings must differ on this batch"
    print(f"\n[parity] pkdot_fusion/{reading}: max|Δ| z={d_z:.2e} logits={d_l:.2e}")


def test_batch_mixing_predictions_depend_on_the_batch_and_per_sample_ones_do_not():
    net, arrays = _official_fusion_in_harness(True)
    v, p = torch.tensor(arrays["v"][:, 0]), torch.tensor(arrays["p"][:, 0])
    with torch.no_grad():
        whole = net.fusion({"visual": v, "physio": p})
        half = net.fusion({"visual": v[:3], "physio": p[:3]})
        assert (whole[:3] - half).abs().max() > 1e-3
        net.fusion.batch_mixing = False
        whole = net.fusion({"visual": v, "physio": p})
        half = net.fusion({"visual": v[:3], "physio": p[:3]})
        torch.testing.assert_close(whole[:3], half, rtol=1e-12, atol=1e-12)
