"""DMD against the official code (mdswyz/DMD @ 516d4e1), from the numbers it produced (tests/parity/dmd_*.npz, written
by `python scripts/parity/make_reference.py --dmd DIR`; scripts/parity/ref_dmd.py says how each was made).

Every comparison is in float64. Where the arithmetic is the same operations in the same order the tolerance is
1e-12 relative (a few ulps of float64 summation-order noise between torch kernels). The full model's attention is
different arithmetic: the official MultiheadAttention takes its softmax in float32 (`attn_weights.float()`) even on
float64 inputs, so every attention weight carries float32 rounding (~6e-8 relative) through 4 layers of 12 encoders;
there the tolerance is 2e-6 relative (measured max relative error about 1e-7 on values, stated beside each bound).

Documented differences the comparison transforms (docs/fidelity.md#dmd-parity):
- node order: the harness stacks the task's order (text, audio, vision), the official code L, V, A. Logits, reprs
  and edges are compared by modality / by (student, teacher) pair; the fusion heads' weights are mapped with the
  matching permutation of their input blocks (the same function);
- the official GD units fold gd_reg (10) into loss_reg and w_losses [1, 10] into the logit/repr losses; the harness
  applies those as config weights (method.loss.gd_reg, gd_logit, gd_repr), so the test multiplies by the config's;
- L_ort: the official CosineEmbeddingLoss on 3-D tensors ran with torch 1.9's arithmetic (cosine across the batch);
  the harness's faithful `loss.ort_mode=batch_axis` is compared (its default `per_sample` is D1, a deliberate change);
- the dead proj_cosine_* layers have no counterpart (D10) and receive no gradient in the official loss either.
"""

from __future__ import annotations

import copy
import functools
import re

import numpy as np
import pytest
import torch

from harness.config import compose_one
from harness.data import TargetSpec
from methods.dmd.bert import TOKEN_DIM, BertTextEncoder, _transformers
from methods.dmd import GraphDistillationUnit, build_dmd, edge_priors, graph_edges, margin_loss, node_roles, resolve_hparams
from tests._parity import assert_parity, reference

import ref_dmd  # noqa: E402  (scripts/parity is on sys.path through tests._parity: the seeded weights' generator)

REG1 = TargetSpec("regression", ("sentiment",))
LETTER = {"l": "text", "v": "vision", "a": "audio"}
SAME_ARITHMETIC = 1e-12  # same operations, float64: summation-order noise only
FP32_SOFTMAX = 2e-6      # the official attention softmax runs in float32 (module docstring)


def near(what: str, got, want, rtol: float, floor: float = 0.0) -> float:
    """assert_parity with atol = rtol · max|want| (+ floor): an element near zero carries the absolute error of the
    larger ones it is computed from (float32 attention weights), so its own relative error is meaningless. Prints
    max |Δ| (pytest -s shows the parity table's numbers)."""
    scale = float(np.max(np.abs(want))) if np.size(want) else 0.0
    delta = assert_parity(what, got, want, rtol=rtol, atol=rtol * scale + floor)
    print(f"PARITY {what}: max|Δ| {delta:.3g} (max|official| {scale:.3g})")
    return delta


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@functools.lru_cache(maxsize=1)
def loss_weights() -> dict:
    return dict(resolve_hparams(compose_one(["method=dmd"]).method, "mosi")["loss"])


def t64(a) -> torch.Tensor:
    return torch.tensor(np.asarray(a), dtype=torch.float64)


def leaf(a) -> torch.Tensor:
    return t64(a).requires_grad_(True)


def copy_unit(unit: GraphDistillationUnit, arrays: dict) -> None:
    """W_logit / W_repr / W_edge of the official unit into the harness's."""
    names = {"logit_proj": "W_logit", "repr_proj": "W_repr", "edge_score": "W_edge"}
    with torch.no_grad():
        for ours, theirs in names.items():
            getattr(unit, ours).weight.copy_(t64(arrays[f"param.{theirs}.weight"]))
            getattr(unit, ours).bias.copy_(t64(arrays[f"param.{theirs}.bias"]))


# ---------------------------------------------------------------------------------------------------
# The graph-distillation units
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("component,unit_name", [("dmd_homo_gd", "homo"), ("dmd_hetero_gd", "hetero")])
def test_graph_distillation_unit_matches_the_official(component, unit_name):
    ref, meta = reference(component)
    assert meta["official_commit"].startswith("516d4e1")
    nodes = ref_dmd.NODES_LVA  # stacked as the official L, V, A: the harness's edges then come in its order
    edges = graph_edges(nodes, nodes)
    prior = edge_priors(nodes, edges, unit_name, "paper", node_roles(nodes), 0.25)
    # the priors: run.py's softmax(v, 0.25) in float32, both sides
    near(f"{component} prior", prior.double(), ref["prior"], rtol=0)
    unit = GraphDistillationUnit(1, meta["hidden"], meta["gd_size"], edges, prior, temperature=8.0).double()
    copy_unit(unit, ref)
    w = loss_weights()
    logits, reprs = leaf(ref["logits"]), leaf(ref["reprs"])
    E = unit(logits, reprs)
    near(f"{component} edges", E, ref["edges"], rtol=SAME_ARITHMETIC)
    repr_term = unit.l1_loss(reprs, E) if unit_name == "homo" else unit.cosine_push_loss(reprs, E)
    losses = {"reg": w["gd_reg"] * unit.reg_loss(E), "logit": w["gd_logit"] * unit.l1_loss(logits, E),
              "repr": w["gd_repr"] * repr_term}
    for name, loss in losses.items():
        near(f"{component} loss_{name}", loss, ref[f"loss_{name}"], rtol=SAME_ARITHMETIC)
        g_logits, g_reprs = torch.autograd.grad(loss, (logits, reprs), retain_graph=True)
        # gradients reach both sides through E (edge inputs not detached, D4) and the student side of each distance
        near(f"{component} d loss_{name} / d logits", g_logits, ref[f"grad_{name}.logits"],
                      rtol=SAME_ARITHMETIC)
        near(f"{component} d loss_{name} / d reprs", g_reprs, ref[f"grad_{name}.reprs"],
                      rtol=SAME_ARITHMETIC)
        assert np.abs(ref[f"grad_{name}.logits"]).max() > 0  # the comparison has something to compare


# ---------------------------------------------------------------------------------------------------
# The margin (hinge) loss
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["tied", "distinct"])
def test_margin_loss_matches_the_official_hinge_loss(case):
    ref, _ = reference("dmd_margin")
    feats = leaf(ref[f"{case}.feats"])
    loss = margin_loss(feats, t64(ref[f"{case}.ids"]), loss_weights()["margin_scale"])
    (grad,) = torch.autograd.grad(loss, feats)
    # the official loop and the vectorised form sum the same hinge terms in another order
    near(f"dmd_margin {case} value", loss, ref[f"{case}.loss"], rtol=SAME_ARITHMETIC)
    near(f"dmd_margin {case} gradient", grad, ref[f"{case}.grad"], rtol=SAME_ARITHMETIC)
    assert float(ref[f"{case}.loss"]) > 0


# ---------------------------------------------------------------------------------------------------
# The full model and combined_loss
# ---------------------------------------------------------------------------------------------------

def harness_hparams(dataset: str, fast: bool) -> dict:
    """The dataset's preset (MOSI defaults, or the MOSEI column: d 30, 6 heads, kernels 5/1/3) with every dropout 0
    (as the reference: its training forward is the eval forward) and the faithful L_ort (torch 1.9's cosine)."""
    hp = copy.deepcopy(resolve_hparams(compose_one(["method=dmd"]).method, dataset))
    hp.update(input_dropout_by_modality={"text": 0.0}, attn_dropout=0.0, attn_dropout_by_modality={"audio": 0.0,
              "vision": 0.0}, embed_dropout=0.0, output_dropout=0.0, relu_dropout=0.0, res_dropout=0.0,
              fast_kernels=fast)
    hp["loss"] = {**hp["loss"], "ort_mode": "batch_axis"}
    return hp


ENCODER_LAYER = {"self_attn.in_proj_weight": "in_w", "self_attn.in_proj_bias": "in_b",
                 "self_attn.out_proj.weight": "out_w", "self_attn.out_proj.bias": "out_b",
                 "layer_norms.0.weight": "ln0_w", "layer_norms.0.bias": "ln0_b",
                 "layer_norms.1.weight": "ln1_w", "layer_norms.1.bias": "ln1_b",
                 "fc1.weight": "fc1_w", "fc1.bias": "fc1_b", "fc2.weight": "fc2_w", "fc2.bias": "fc2_b"}


def fusion_permutations(net, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Index maps official -> harness for the homogeneous fusion input c (d per node) and the final fusion input
    z (2d per node, then c): harness block i holds the official block of the same modality."""
    official = ref_dmd.NODES_LVA
    perm_c = torch.cat([torch.arange(d) + d * official.index(m) for m in net.predictors])
    perm_z = torch.cat([torch.arange(2 * d) + 2 * d * official.index(m) for m in net.predictors] + [6 * d + perm_c])
    return perm_c, perm_z


def harness_slot(net, homo, het, name: str):
    """The harness tensor an official parameter maps to: (tensor, member of a stacked group or None, (rows, cols)
    permutation or None)."""
    unit, _, rest = name.partition(".")
    parts = rest.split(".")
    head, attr = parts[0], parts[-1]
    if head == "text_model":  # DMD*: the same transformers BertModel, its parameters by their own names
        return net.text_encoder.bert.get_parameter(".".join(parts[2:])), None, None
    if unit in ("dmd_homo_gd", "dmd_hetero_gd"):
        module = homo if unit == "dmd_homo_gd" else het
        layer = {"W_logit": module.logit_proj, "W_repr": module.repr_proj, "W_edge": module.edge_score}[head]
        return getattr(layer, attr), None, None
    # the twelve transformer encoders, stacked by shape in the harness
    encoder = None
    if head.startswith("self_attentions_c_"):
        encoder = net.self_attn, net.self_slots, LETTER[head[-1]]
    elif match := re.fullmatch(r"trans_([lva])_(mem|with_([lva]))", head):
        target = LETTER[match[1]]
        encoder = ((net.memory, net.memory_slots, target) if match[2] == "mem" else
                   (net.cross, net.cross_slots, (target, net.sources[target].index(LETTER[match[3]]))))
    if encoder is not None:
        groups, slots, key = encoder
        g, member = slots[key]
        if parts[1] == "layer_norm":
            return getattr(groups[g], "norm_w" if attr == "weight" else "norm_b"), member, None
        return getattr(groups[g].layers[int(parts[2])], ENCODER_LAYER[".".join(parts[3:])]), member, None
    perm_c, perm_z = fusion_permutations(net, net.d)
    if head == "encoder_c":
        return net.shared_enc.weight, None, None
    if head == "weight_c":  # sigmoid(G_c c): rows and columns follow c's blocks
        return getattr(net.gate_c, attr), None, (perm_c, perm_c if attr == "weight" else None)
    if match := re.fullmatch(r"(proj1|proj2|out_layer)(?:_([lva])_(low|high)|_(c))?", head):
        layer = {"proj1": "p1", "proj2": "p2", "out_layer": "out"}[match[1]]
        if match[2]:  # a per-modality head: no permutation
            heads = net.homo_head if match[3] == "low" else net.het_head
            return getattr(getattr(heads[LETTER[match[2]]], layer), attr), None, None
        module, perm = (net.homo_fusion, perm_c) if match[4] else (net.fusion, perm_z)
        # p1 and out read the permuted input (columns); p2 writes into the residual (rows and bias)
        rows, cols = (perm, None) if layer == "p2" else (None, perm)
        return getattr(getattr(module, layer), attr), None, (rows, cols if attr == "weight" else None)
    if match := re.fullmatch(r"(proj|encoder_s|decoder|align_c|weight)_([lva])", head):
        modules = {"proj": net.proj, "encoder_s": net.private_enc, "decoder": net.decoder, "align_c": net.align,
                   "weight": net.gate}[match[1]]
        return getattr(modules[LETTER[match[2]]], attr), None, None
    raise KeyError(f"no harness parameter for the official {name}")


def place(value: torch.Tensor, perm) -> torch.Tensor:
    """The official tensor in the harness's layout: rows/cols reindexed so harness index i holds official perm[i]."""
    if perm is None:
        return value
    rows, cols = perm
    if rows is not None:
        value = value[rows]
    if cols is not None:
        value = value[:, cols]
    return value


@functools.lru_cache(maxsize=2)
def model_reference(component: str):
    return reference(component)


@functools.lru_cache(maxsize=2)
def drawn_tensors(component: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The official weights and inputs, drawn again from the seeded generator, checked against the reference's
    SHA-256 (a changed generator fails here, not as a parity mismatch)."""
    ref, meta = model_reference(component)
    weights = {name: ref_dmd.seeded_array(ref_dmd.draw_name(component, name), tuple(shape),
                                          ref_dmd.param_kind(name, shape)) for name, shape in meta["shapes"].items()}
    x = ref_dmd.model_inputs(component, meta["batch"])
    got = ref_dmd.digest_all({**weights, **{f"input.{m}": x[m] for m in meta["dims"]}})
    assert got == meta["sha256_drawn"], f"{component}: the seeded generator no longer draws the reference's tensors"
    np.testing.assert_array_equal(x["labels"], ref["labels"])
    return weights, x


def build_harness_model(component: str, fast: bool):
    ref, meta = model_reference(component)
    hp = harness_hparams(meta["dataset"], fast)
    # the mosi/mosei tasks' node order (tasks/_mmsa.py): its sources per target are the official concatenation
    # order of the heterogeneous branch ([L<-A, L<-V], [A<-L, A<-V], [V<-L, V<-A]), so the memory encoders map 1:1
    dims = {m: meta["dims"][m] for m in ("text", "audio", "vision")}
    lens = {m: 50 for m in dims}
    text_encoder = None
    if meta["tiny_bert"]:  # DMD*: the text modality is the text_bert tokens [B, 50, 3], BERT the text encoder
        text_encoder = BertTextEncoder.from_config(_transformers().BertConfig(**meta["tiny_bert"]))
        dims["text"] = TOKEN_DIM
    net, homo, het, _ = build_dmd(dims, lens, REG1, hp, tuple(dims), text_encoder=text_encoder)
    assert net.sources == {"text": ["audio", "vision"], "audio": ["text", "vision"], "vision": ["text", "audio"]}
    net, homo, het = net.double(), homo.double(), het.double()
    weights, _ = drawn_tensors(component)
    mapped = set()
    with torch.no_grad():
        for name, drawn in weights.items():
            if ref_dmd.unused_official(name):
                continue  # dead proj_cosine_* layers (D10), the BERT pooler nothing reads: not built
            tensor, member, perm = harness_slot(net, homo, het, name)
            target = tensor[member] if member is not None else tensor
            value = place(t64(drawn), perm)
            assert target.shape == value.shape, f"{name}: official {tuple(value.shape)} vs harness {tuple(target.shape)}"
            target.copy_(value)
            mapped.add((id(tensor), member))
    # every harness parameter (member) received an official value
    expected = {(id(p), i) for mod in (net, homo, het) for p in mod.parameters()
                for i in (range(p.shape[0]) if any(p is s for s in stacked_params(net)) else [None])}
    assert expected == mapped, "harness parameters without an official counterpart"
    return net, homo, het, hp


def stacked_params(net):
    return [p for group in (net.self_attn, net.cross, net.memory) for p in group.parameters()]


@pytest.mark.parametrize("variant", ["official", "fp64_softmax"])
@pytest.mark.parametrize("fast", [True, False], ids=["fast_kernels", "plain_kernels"])
@pytest.mark.parametrize("component", ["dmd_model", "dmd_model_mosei", "dmd_model_bert"])
def test_full_model_and_combined_loss_match_the_official(component, fast, variant):
    """dmd_model: MOSI (every T' = 46); dmd_model_mosei: MOSEI's kernels 5/1/3 (T' = 46/50/48: offset causal masks
    |Tk - Tq|, heads of three sizes, encoders in groups of one shape). `official`: the code as it runs (float32
    attention softmax, tolerance FP32_SOFTMAX); `fp64_softmax`: the same code with that one cast skipped, where the
    harness must agree to float64 rounding (SAME_ARITHMETIC)."""
    from methods.dmd import DMDLoss

    everything, meta = model_reference(component)
    ref = {k.split(".", 1)[1]: v for k, v in everything.items() if k.startswith(variant + ".")}
    tol = FP32_SOFTMAX if variant == "official" else SAME_ARITHMETIC
    net, homo, het, hp = build_harness_model(component, fast)
    net.eval(), homo.eval(), het.eval()
    _, x = drawn_tensors(component)
    variant = f"{component} {variant}"  # in the printed lines
    inputs = {m: leaf(x[m]) for m in ("text", "audio", "vision")}
    if meta["tiny_bert"]:  # tokens: [B, 3, 50] rows as the official loader gives them, [B, 50, 3] in the harness
        inputs["text"] = t64(x["text"].transpose(0, 2, 1))
    y = t64(x["labels"])
    out = net(inputs, full=True)
    nodes = net.nodes
    # forward outputs (attention in float32 on the official side)
    near(f"{variant} output_logit", out.out, ref["out.output_logit"], rtol=tol)
    near(f"{variant} logits_c", out.out_c, ref["out.logits_c"], rtol=tol)
    for i, m in enumerate(nodes):
        letter = "lva"["text vision audio".split().index(m)]
        near(f"{variant} logits_{letter}_homo", out.homo_logits[i], ref[f"out.logits_{letter}_homo"], rtol=tol)
        near(f"{variant} logits_{letter}_hetero", out.het_logits[i], ref[f"out.logits_{letter}_hetero"],
                      rtol=tol)
        # homogeneous path: no attention, same arithmetic
        near(f"{variant} repr_{letter}_homo", out.homo_reprs[i], ref[f"out.repr_{letter}_homo"], rtol=SAME_ARITHMETIC)
        near(f"{variant} c_{letter}_sim", out.align[:, i], ref[f"out.c_{letter}_sim"], rtol=SAME_ARITHMETIC)
        near(f"{variant} repr_{letter}_hetero", out.het_reprs[i], ref[f"out.repr_{letter}_hetero"], rtol=tol)

    total, parts, e_homo, e_het = DMDLoss(net, homo, het, hp["loss"])(inputs, y)
    w = hp["loss"]
    want = {"task": "loss_task", "task_fusion": "loss_task_all", "homo_logit": "loss_logit_homo",
            "het_logit": "loss_logit_hetero", "recon": "loss_recon", "cycle": "loss_s_sr", "margin": "loss_sim",
            "ort": "loss_ort"}
    for ours, theirs in want.items():
        near(f"{variant} {ours} vs official {theirs}", np.float64(parts[ours]), ref[f"loss.{theirs}"],
                      rtol=tol)
    scaled = {"homo_reg": ("loss_reg_homo", w["gd_reg"]), "het_reg": ("loss_reg_hetero", w["gd_reg"]),
              "homo_repr_unused": ("loss_repr_homo", w["gd_repr"]),
              "het_repr_decorrelation": ("loss_repr_hetero", w["gd_repr"])}
    for ours, (theirs, factor) in scaled.items():
        near(f"{variant} {factor} * {ours} vs official {theirs}", np.float64(parts[ours] * factor),
                      ref[f"loss.{theirs}"], rtol=tol)
    # the edges, by (student, teacher) modality pair
    official_pairs = [(s, t) for s in range(3) for t in range(3) if s != t]
    for E, theirs in ((e_homo, "edges_homo"), (e_het, "edges_hetero")):
        for k, (s, t) in enumerate(zip(homo.student_idx.tolist(), homo.teacher_idx.tolist())):
            j = official_pairs.index((ref_dmd.NODES_LVA.index(nodes[s]), ref_dmd.NODES_LVA.index(nodes[t])))
            near(f"{variant} {theirs} {nodes[t]}->{nodes[s]}", E[k], ref[theirs][j], rtol=tol)
    near(f"{variant} combined_loss", total, ref["loss.combined_loss"], rtol=tol)

    # gradients of combined_loss: inputs (text reduced to its sums over time and over channels), and every parameter
    total.backward()
    for m, g in ((m, inputs[m].grad) for m in ("text", "audio", "vision") if f"grad.{m}_sum_time" in ref):
        if f"grad.{m}" in ref:  # whole where small, else its sums over time and over channels
            near(f"{variant} d combined_loss / d {m}", g, ref[f"grad.{m}"], rtol=tol)
        near(f"{variant} d combined_loss / d {m}, summed over time", g.sum(1), ref[f"grad.{m}_sum_time"], rtol=tol)
        near(f"{variant} d combined_loss / d {m}, summed over channels", g.sum(2), ref[f"grad.{m}_sum_channels"],
             rtol=tol)
    got_sum, got_sq = [], []
    for name in meta["param_names"]:
        tensor, member, _ = harness_slot(net, homo, het, name)
        g = tensor.grad[member] if member is not None else tensor.grad
        got_sum.append(float(g.sum()))  # sums are invariant to the fusion heads' block permutation
        got_sq.append(float((g ** 2).sum()))
    near(f"{variant} per-parameter gradient sums", np.array(got_sum), ref["param_grad_sum"], rtol=tol)
    near(f"{variant} per-parameter gradient sums of squares", np.array(got_sq), ref["param_grad_sumsq"],
                  rtol=tol)
