"""DMD (methods/dmd/): blocks, losses against hand and naive computations, GD-unit semantics, the
privileged firewall, and short end-to-end runs in both protocols re-scored independently."""

from __future__ import annotations

import copy
import functools
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from scipy.stats import pearsonr
from sklearn.metrics import mean_absolute_error

from harness.config import compose_one
from harness.data import Split, TargetSpec
from harness.registry import METHODS, TASKS
from harness.runner import execute
from methods.dmd import (DMD, DMDLoss, GraphDistillationUnit, attention_scores, build_dmd, edge_priors, graph_edges,
                         keep_mask, make_optimizer, margin_loss, node_roles, orthogonality_loss, pool_step_targets,
                         resolve_hparams, weighted_values)
from tasks.synthetic import Synthetic

REG1 = TargetSpec("regression", ("sentiment",))


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@functools.lru_cache(maxsize=1)
def method_cfg():
    return compose_one(["method=dmd"]).method


def tiny_hp(**over) -> dict:
    hp = resolve_hparams(method_cfg(), "synthetic")
    hp.update({"d": 8, "heads": 2, "layers": 1, **over})
    return hp


def make_inputs(dims: dict, lens: dict, batch: int = 6, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(batch, lens[m], d, generator=g) for m, d in dims.items()}


# ---------------------------------------------------------------------------------------------------
# Shapes and sizes
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("lens", [{"text": 10, "audio": 10, "vision": 10},   # aligned
                                  {"text": 10, "audio": 15, "vision": 20}])  # unaligned
def test_shapes_through_every_block(lens):
    dims = {"text": 12, "audio": 5, "vision": 6}
    hp = tiny_hp(kernel_by_modality={"text": 5, "audio": 1, "vision": 3})
    net, homo, het, _ = build_dmd(dims, lens, REG1, hp, tuple(dims))
    steps = {"text": lens["text"] - 4, "audio": lens["audio"], "vision": lens["vision"] - 2}
    assert net.steps == steps
    B, d = 6, 8
    o = net(make_inputs(dims, lens, B), full=True)
    for m in dims:
        for t in (o.proj, o.recon, o.private, o.shared, o.private_cycle):
            assert t[m].shape == (B, d, steps[m])
        assert net.homo_head[m].p1.in_features == d * steps[m]
        assert net.align[m].in_features == d * steps[m]
    assert o.out.shape == o.out_c.shape == (B, 1)
    assert o.homo_logits.shape == o.het_logits.shape == (3, B, 1)
    assert o.homo_reprs.shape == (3, B, d) and o.het_reprs.shape == (3, B, 2 * d)
    assert o.align.shape == (B, 3, d)
    assert (o.homo_reprs >= 0).all()  # post-ReLU bottleneck, as the official repr
    assert net.fusion.p1.in_features == 9 * d
    # every encoder block on its own: cross (query text, source vision), self and memory
    S = {m: o.private[m].transpose(1, 2) for m in dims}
    g, e = net.cross_slots[("text", 1)]
    assert net.sources["text"][1] == "vision"
    assert net.cross[g](S["text"][None], S["vision"][None], members=[e]).shape == (1, B, steps["text"], d)
    g, e = net.self_slots["audio"]
    assert net.self_attn[g](S["audio"][None], members=[e]).shape == (1, B, steps["audio"], d)
    assert net.self_attn[g](S["audio"][None], last_only=True, members=[e]).shape == (1, B, d)
    g, e = net.memory_slots["vision"]
    assert net.memory[g](torch.randn(1, B, steps["vision"], 2 * d), last_only=True, members=[e]).shape == (1, B, 2 * d)
    # encoders of one shape run stacked: here every modality has its own T', so no two share a group
    assert (len(net.cross), len(net.self_attn), len(net.memory)) == (6, 3, 3)
    E = homo(o.homo_logits, o.homo_reprs)
    assert E.shape == (6, B)
    assert het(o.het_logits, o.het_reprs).shape == (6, B)


def test_classification_heads_and_two_node_graph():
    dims, lens = {"visual": 7, "physio": 3}, {"visual": 6, "physio": 6}
    target = TargetSpec("classification", ("neutral", "happy", "sad", "angry"), n_classes=2)
    net, homo, het, graph = build_dmd(dims, lens, target, tiny_hp(), tuple(dims))
    o = net(make_inputs(dims, lens, 5), full=True)
    assert o.out.shape == (5, 8) and o.homo_logits.shape == (2, 5, 8)  # 4 heads x 2 classes, as IEMOCAP
    assert o.het_reprs.shape == (2, 5, 8)  # (M-1)·d with M = 2
    assert graph["edges"] == ["physio->visual", "visual->physio"] and graph["roles"] is None
    assert torch.allclose(homo.prior, torch.tensor([0.5, 0.5]))  # uniform outside the 3-node case
    y = torch.randint(0, 2, (5, 4))
    _, parts, _, _ = DMDLoss(net, homo, het, tiny_hp()["loss"])(make_inputs(dims, lens, 5), y)
    assert all(math.isfinite(v) for v in parts.values())


def test_mosi_and_mosei_sizes_match_the_spec():
    """docs/fidelity.md#dmd-sizes: group sizes of the MOSI aligned model and MOSEI's T', homo heads and fusion width."""
    cfg = method_cfg()
    dims = {"text": 768, "audio": 5, "vision": 20}
    net, homo, het, _ = build_dmd(dims, {m: 50 for m in dims}, REG1, resolve_hparams(cfg, "mosi"), tuple(dims))
    def count(mods):
        return sum(p.numel() for m in mods for p in m.parameters())

    assert round(count(net.cross.values()) / 1e6, 2) == 0.74
    assert round(count(net.memory.values()) / 1e6, 2) == 1.46
    assert round(count(net.self_attn.values()) / 1e6, 2) == 0.37
    assert round(count([net.fusion]) / 1e6, 2) == 0.41  # the fusion MLP on 9d = 450
    assert round(count(net.homo_head.values()) / 1e6, 2) == 0.70
    dead = sum(50 * net.steps[m] * 50 + 50 for m in dims)  # the official unused proj_cosine_* layers
    assert round((count([net]) + dead) / 1e6, 2) == 4.74
    assert round(count([homo]) / 1e3, 1) == 3.6 and round(count([het]) / 1e3, 1) == 3.4
    dims = {"text": 768, "audio": 74, "vision": 35}
    net, *_ = build_dmd(dims, {m: 50 for m in dims}, REG1, resolve_hparams(cfg, "mosei"), tuple(dims))
    assert (net.steps["text"], net.steps["audio"], net.steps["vision"]) == (46, 50, 48)
    assert [net.homo_head[m].p1.in_features for m in ("text", "audio", "vision")] == [1380, 1500, 1440]
    assert net.homo_head["text"].p1.out_features == 30 and net.fusion.p1.in_features == 270


def test_kernel_is_cut_to_short_sequences_and_lengths_are_matched():
    dims, lens = {"visual": 4, "physio": 3}, {"visual": 3, "physio": 1}
    net, *_ = build_dmd(dims, lens, REG1, tiny_hp(), ("visual",))
    assert net.kernels == {"visual": 3, "physio": 1} and net.steps == {"visual": 1, "physio": 1}
    net.eval()
    x = torch.randn(2, 3, 4)
    longer = torch.cat([x, torch.randn(2, 4, 4)], dim=1)  # cut at the end
    with torch.no_grad():
        assert torch.equal(net({"visual": x}, full=False).out, net({"visual": longer}, full=False).out)


@pytest.mark.parametrize("lens", [{"text": 10, "audio": 10, "vision": 10}, {"text": 10, "audio": 12, "vision": 9}])
def test_fast_and_reference_kernels_compute_the_same_function(lens):
    """Stacked groups, last-step pruning and baddbmm masks are exact: same weights, eval mode, same outputs
    as the reference (members one by one, official kernels, every step computed)."""
    dims = {"text": 12, "audio": 5, "vision": 6}
    fast, *_ = build_dmd(dims, lens, REG1, tiny_hp(layers=2), tuple(dims))
    ref, *_ = build_dmd(dims, lens, REG1, tiny_hp(layers=2, fast_kernels=False), tuple(dims))
    stacked = len(set(lens.values())) == 1
    assert (len(fast.cross), len(fast.memory)) == ((1, 1) if stacked else (6, 3))  # one group of 6 / of 3
    ref.load_state_dict(fast.state_dict())
    fast.eval(), ref.eval()
    x = make_inputs(dims, lens)
    with torch.no_grad():
        a, b = fast(x, full=True), ref(x, full=True)
    for f in ("out", "out_c", "homo_logits", "het_logits", "het_reprs"):
        assert torch.allclose(getattr(a, f), getattr(b, f), atol=1e-5), f


def test_attention_products_and_their_gradients_equal_bmm():
    """The two products with hand-written backward passes: values and gradients against torch.bmm's autograd
    (and gradcheck in float64), with non-contiguous inputs as the attention blocks hand them."""
    g = torch.Generator().manual_seed(3)
    q = torch.randn(4, 7, 3, dtype=torch.float64, generator=g, requires_grad=True)
    k = torch.randn(4, 9, 3, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.rand(4, 7, 9, dtype=torch.float64, generator=g, requires_grad=True)
    v = torch.randn(4, 9, 3, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(attention_scores, (q, k))
    assert torch.autograd.gradcheck(weighted_values, (w, v))
    assert torch.autograd.gradcheck(attention_scores, (q[:, 2:5], k[:, :6]))  # the row blocks' slices
    for ours, ref, args in ((attention_scores, lambda a, b: torch.bmm(a, b.transpose(1, 2)), (q, k)),
                            (weighted_values, torch.bmm, (w, v))):
        out = ours(*args)
        up = torch.randn(out.shape, dtype=out.dtype, generator=g)
        grads = torch.autograd.grad(out, args, up)
        ref_out = ref(*args)
        ref_grads = torch.autograd.grad(ref_out, args, up)
        assert torch.allclose(out, ref_out, atol=1e-12)
        assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(grads, ref_grads))


@pytest.mark.parametrize("lens", [{"text": 40, "audio": 40, "vision": 40}, {"text": 20, "audio": 37, "vision": 18}])
def test_row_blocked_attention_trains_as_the_reference(lens):
    """Sequences longer than one block of 16 query steps (aligned, and unaligned with causal offsets): in
    training mode without dropout the fast model's loss and EVERY parameter gradient equal the reference's
    (official kernels, every key computed, members one by one), so the blocks skip only masked keys."""
    dims = {"text": 12, "audio": 5, "vision": 6}
    hp = tiny_hp(layers=2, attn_dropout=0.0, attn_dropout_by_modality={}, embed_dropout=0.0, output_dropout=0.0,
                 input_dropout_by_modality={})
    nets = []
    for fast in (True, False):
        torch.manual_seed(0)
        net, homo, het, _ = build_dmd(dims, lens, REG1, {**hp, "fast_kernels": fast}, tuple(dims))
        nets.append((net, DMDLoss(net, homo, het, hp["loss"])))
    nets[1][0].load_state_dict(nets[0][0].state_dict())
    x, y = make_inputs(dims, lens), torch.linspace(-2, 2, 6)[:, None]
    results = []
    for net, loss_fn in nets:
        net.train()
        loss, *_ = loss_fn(x, y)
        loss.backward()
        results.append((loss.item(), {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}))
    (fast_loss, fast_grads), (ref_loss, ref_grads) = results
    assert fast_loss == pytest.approx(ref_loss, rel=1e-5)
    assert fast_grads.keys() == ref_grads.keys() and len(fast_grads) > 50
    for name, grad in fast_grads.items():
        assert torch.allclose(grad, ref_grads[name], atol=1e-5, rtol=1e-4), name


def test_optimizer_is_adam_with_the_official_settings():
    params = [torch.nn.Parameter(torch.ones(3))]
    opt = make_optimizer(params, {"lr": 1e-4, "weight_decay": 0.0})
    group = opt.param_groups[0]
    assert isinstance(opt, torch.optim.Adam) and group["lr"] == 1e-4 and group["weight_decay"] == 0.0
    assert group["betas"] == (0.9, 0.999) and group["eps"] == 1e-8 and group["fused"]
    params[0].grad = torch.tensor([1.0, -2.0, 0.5])
    opt.step()  # Adam's first step moves every coordinate by lr against the sign of its gradient
    assert torch.allclose(params[0].detach(), torch.tensor([1 - 1e-4, 1 + 1e-4, 1 - 1e-4]), atol=1e-9)


def test_keep_mask_rates_seed_and_position_rule():
    torch.manual_seed(5)
    mask = keep_mask((3, 200, 500), [0.3, 0.0, 0.5], torch.device("cpu"))  # one probability per member
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    rates = mask.mean(dim=(1, 2))
    assert abs(rates[0].item() - 0.7) < 0.005 and rates[1].item() == 1.0 and abs(rates[2].item() - 0.5) < 0.005
    torch.manual_seed(5)  # reproducible under torch's seed
    assert torch.equal(mask, keep_mask((3, 200, 500), [0.3, 0.0, 0.5], torch.device("cpu")))
    net, *_ = build_dmd({"a": 3, "b": 3}, {"a": 6, "b": 6}, REG1, tiny_hp(), ("a", "b"))
    enc = net.self_attn["g0"]
    x = torch.randn(1, 4, 8)
    x[0, 2, 0] = 0.0  # first channel exactly 0: this step gets no position
    pe = enc.embed(x) - math.sqrt(8) * x
    assert torch.all(pe[0, 2] == 0) and torch.all(pe[0, 1] != 0)
    half = torch.exp(torch.arange(4) * -(math.log(10000.0) / 3))  # position 1 of a width-8 table
    assert torch.allclose(pe[0, 0], torch.cat([torch.sin(half), torch.cos(half)]), atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# Losses against hand and naive computations
# ---------------------------------------------------------------------------------------------------

def test_orthogonality_loss_by_hand():
    # S, C as [B=2, d=2, T'=1]: batch_axis takes one cosine per channel ACROSS the batch.
    S = torch.tensor([[[1.0], [0.0]], [[1.0], [1.0]]])
    C = torch.tensor([[[1.0], [-2.0]], [[0.0], [-1.0]]])
    # channel 0: s=(1,1), c=(1,0) -> 1/sqrt2; channel 1: s=(0,1), c=(-2,-1) -> negative -> 0
    assert orthogonality_loss(S, C, "batch_axis").item() == pytest.approx(1 / (2 * math.sqrt(2)), abs=1e-6)
    # sample 0: s=(1,0), c=(1,-2) -> 1/sqrt5; sample 1: s=(1,1), c=(0,-1) -> negative -> 0
    assert orthogonality_loss(S, C, "per_sample").item() == pytest.approx(1 / (2 * math.sqrt(5)), abs=1e-6)
    g = torch.Generator().manual_seed(1)
    S, C = torch.randn(5, 4, 3, generator=g), torch.randn(5, 4, 3, generator=g)
    cos_b = torch.einsum("bct,bct->ct", S, C) / (S.norm(dim=0) * C.norm(dim=0))
    assert orthogonality_loss(S, C, "batch_axis").item() == pytest.approx(cos_b.clamp(min=0).mean().item(), abs=1e-6)
    cos_s = F.cosine_similarity(S.flatten(1), C.flatten(1), dim=1)
    assert orthogonality_loss(S, C, "per_sample").item() == pytest.approx(cos_s.clamp(min=0).mean().item(), abs=1e-6)


def naive_margin_loss(feats, labels, scale=0.15, classification=False):
    """docs/fidelity.md#dmd-losses: the reading of the official HingeLoss, one anchor at a time."""
    n = len(feats)
    norm = [math.sqrt(sum(v * v for v in f) + 1e-8) for f in feats]
    cos = [[sum(a * b for a, b in zip(feats[i], feats[j])) / (norm[i] * norm[j]) for j in range(n)] for i in range(n)]
    total, count = 0.0, 0
    for i in range(n):
        pos = [j for j in range(n) if j != i and labels[j] == labels[i]]
        neg = [j for j in range(n) if labels[j] != labels[i]]
        if not pos or not neg:
            continue
        terms = []
        for p in pos:
            for q in neg:
                if classification:
                    dist = sum(a != b for a, b in zip(labels[i], labels[q])) / len(labels[i])
                else:
                    dist = sum(abs(a - b) for a, b in zip(labels[i], labels[q])) / len(labels[i])
                terms.append(max(0.0, scale * dist - cos[i][p] + cos[i][q]))
        total += sum(terms) / len(terms)
        count += 1
    return total / count if count else 0.0


def test_margin_loss_matches_a_naive_loop():
    g = torch.Generator().manual_seed(2)
    feats = torch.randn(12, 5, generator=g)  # 4 samples x 3 modalities, interleaved by sample
    per_sample = torch.tensor([[0.5], [0.5], [-1.25], [2.0]])  # samples 0 and 1 share a label: positives
    labels = per_sample.repeat_interleave(3, dim=0)
    want = naive_margin_loss(feats.tolist(), [tuple(r) for r in labels.tolist()])
    assert margin_loss(feats, labels).item() == pytest.approx(want, rel=1e-5)
    # tiny chunks exercise the chunked path
    assert margin_loss(feats, labels, max_chunk=200).item() == pytest.approx(want, rel=1e-5)
    # classes: equality of the whole label vector, margin = share of differing heads
    cls = torch.tensor([[0, 1, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0], [1, 0, 1, 1]]).repeat_interleave(3, dim=0)
    want = naive_margin_loss(feats.tolist(), [tuple(r) for r in cls.tolist()], classification=True)
    assert margin_loss(feats, cls, classification=True).item() == pytest.approx(want, rel=1e-5)
    # every label equal: no negatives, loss 0
    assert margin_loss(feats, torch.zeros(12, 1)).item() == 0.0


ALL_WEIGHTS = ("task", "homo_gd", "het_gd", "gd_logit", "gd_repr", "gd_reg", "homo_repr", "het_repr_decorrelation",
               "recon", "cycle", "margin", "ort")
TERM_WEIGHTS = {"task": ("task",), "homo_logit": ("homo_gd", "gd_logit"), "homo_reg": ("homo_gd", "gd_reg"),
                "homo_repr_unused": ("homo_gd", "homo_repr", "gd_repr"), "het_logit": ("het_gd", "gd_logit"),
                "het_reg": ("het_gd", "gd_reg"), "het_repr_decorrelation": ("het_gd", "het_repr_decorrelation", "gd_repr"),
                "recon": ("recon",), "cycle": ("cycle",), "margin": ("margin",), "ort": ("ort",)}


@pytest.mark.parametrize("name", list(TERM_WEIGHTS))
def test_every_loss_term_is_finite_and_moves_under_one_step(name):
    """Switch on one term alone (the others weigh 0): the total is that term, it is finite, and one SGD step
    on it lowers it (eval mode: no dropout, the same batch before and after)."""
    dims, lens = {"text": 12, "audio": 5, "vision": 6}, {"text": 9, "audio": 9, "vision": 9}
    hp = tiny_hp()
    torch.manual_seed(0)
    net, homo, het, _ = build_dmd(dims, lens, REG1, hp, tuple(dims))
    model = torch.nn.ModuleList([net, homo, het]).eval()
    x = make_inputs(dims, lens, 8)
    y = torch.tensor([[0.4], [0.4], [-1.0], [2.2], [0.0], [-2.6], [1.2], [-0.2]])
    weights = {**hp["loss"], **{k: 0.0 for k in ALL_WEIGHTS}, **{k: 1.0 for k in TERM_WEIGHTS[name]}}
    loss_fn = DMDLoss(net, homo, het, weights)
    total, parts, _, _ = loss_fn(x, y)
    assert math.isfinite(parts[name]) and parts[name] > 0
    assert total.item() == pytest.approx(parts[name], rel=1e-5)  # only this term is switched on
    total.backward()
    torch.optim.SGD(model.parameters(), lr=1e-3).step()
    with torch.no_grad():
        after = loss_fn(x, y)[1][name]
    assert math.isfinite(after) and after < parts[name], (parts[name], after)


# ---------------------------------------------------------------------------------------------------
# Graph distillation units
# ---------------------------------------------------------------------------------------------------

def test_priors_edges_and_softmax_columns():
    nodes = ("text", "vision", "audio")  # the spec's L, V, A order
    edges = graph_edges(nodes, nodes)
    assert edges == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]  # (student, teacher)
    assert edges[2] == (1, 0) and edges[5] == (2, 1)  # k=2: student V, teacher L; k=5: student A, teacher V
    roles = node_roles(nodes)
    homo = edge_priors(nodes, edges, "homo", "paper", roles, 0.25)
    het = edge_priors(nodes, edges, "hetero", "paper", roles, 0.25)
    e1, e0 = math.exp(4.0), 1.0  # softmax(v / 0.25)
    want_homo = [e0, e0, e1, e0, e1, e0] / np.float64(4 * e0 + 2 * e1)
    want_het = [e0, e0, e1, e0, e1, e1] / np.float64(3 * e0 + 3 * e1)
    assert np.round(homo.double().numpy(), 5).tolist() == np.round(want_homo, 5).tolist() == [
        0.00883, 0.00883, 0.48233, 0.00883, 0.48233, 0.00883]
    assert np.round(het.double().numpy(), 5).tolist() == np.round(want_het, 5).tolist() == [
        0.006, 0.006, 0.32734, 0.006, 0.32734, 0.32734]
    # another task order: priors follow the modality names, not the positions
    order = ("text", "audio", "vision")
    ed = graph_edges(order, order)
    pri = edge_priors(order, ed, "homo", "paper", node_roles(order), 0.25)
    named = {f"{order[t]}->{order[s]}": round(float(v), 5) for (s, t), v in zip(ed, pri)}
    assert named["text->vision"] == named["text->audio"] == 0.48233 and named["vision->audio"] == 0.00883
    unit = GraphDistillationUnit(1, 4, 16, edges, homo)
    E = unit(torch.randn(3, 7, 1), torch.randn(3, 7, 4))
    assert E.shape == (6, 7) and torch.allclose(E.sum(0), torch.ones(7))


def test_logit_distillation_detaches_the_teacher_side():
    """docs/fidelity.md#dmd-graph-distillation: with the edge inputs frozen, L_logit sends no gradient to a teacher's logit; with the edge
    path open (the faithful default) it does, through E."""
    nodes = ("s", "t1", "t2")
    edges = graph_edges(nodes, ("s",))  # s <- t1, s <- t2: t1, t2 are teachers only
    prior = torch.full((2,), 0.5)
    g = torch.Generator().manual_seed(3)
    logits0, reprs = torch.randn(3, 5, 1, generator=g), torch.randn(3, 5, 4, generator=g)
    for detach, teacher_grad in ((True, False), (False, True)):
        unit = GraphDistillationUnit(1, 4, 8, edges, prior, detach_inputs=detach)
        logits = logits0.clone().requires_grad_(True)
        unit.l1_loss(logits, unit(logits, reprs)).backward()
        assert logits.grad[0].abs().sum() > 0  # the student always gets a gradient
        assert (logits.grad[1:].abs().sum() > 0) == teacher_grad
    # the distance itself: w·|y_s - sg(y_t)| summed over edges, batch-mean
    unit = GraphDistillationUnit(1, 4, 8, edges, prior, detach_inputs=True)
    E = unit(logits0, reprs)
    want = sum(((E[k] + 0.5) * (logits0[0, :, 0] - logits0[t, :, 0]).abs()).mean() for k, t in enumerate((1, 2)))
    assert unit.l1_loss(logits0, E).item() == pytest.approx(want.item(), rel=1e-6)


def test_pool_step_targets():
    mask = np.array([[True, True, False], [True, False, False]])
    y = np.array([[[1.0], [3.0], [100.0]], [[-2.0], [5.0], [5.0]]], np.float32)
    split = Split(ids=np.array(["a", "b"]), groups=np.array(["g", "g"]), inputs={"v": np.zeros((2, 3, 1), np.float32)},
                  targets=y, target_mask=mask)
    assert pool_step_targets(split, TargetSpec("regression", ("v",), per_step=True)).targets.tolist() == [[2.0], [-2.0]]
    ycls = np.array([[[1], [1], [0]], [[2], [0], [0]]])
    split.targets = ycls
    pooled = pool_step_targets(split, TargetSpec("classification", ("c",), n_classes=3, per_step=True))
    assert pooled.targets.tolist() == [[1], [2]]


# ---------------------------------------------------------------------------------------------------
# Runs: firewall, both protocols, records re-scored independently
# ---------------------------------------------------------------------------------------------------

TINY = ["method.d=8", "method.heads=2", "method.layers=1", "method.training.max_epochs=2",
        "method.training.accumulate=2", "method.training.eval_batch_size=64",
        "task.n_subjects=10", "task.samples_per_subject=8", "task.seq_len=8", "progress=false"]


@functools.lru_cache(maxsize=1)
def _base_run_cfg():
    return compose_one(["method=dmd", "task=synthetic", *TINY])


def run_cfg(tmp_path, **overrides):
    """The tiny run config (composed once) with results/cache under tmp_path and dotted overrides."""
    cfg = copy.deepcopy(_base_run_cfg())
    for key, value in {"results_dir": f"{tmp_path}/r", "cache_dir": f"{tmp_path}/c", **overrides}.items():
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


class FullSynthetic(Synthetic):
    """The synthetic task with every modality kept at test: DMD's `full` protocol (the paper's model)."""
    name = "dmd_full_synthetic_test"

    @property
    def spec(self):
        s = super().spec
        return type(s)(modalities=s.modalities, student_modalities=tuple(s.modalities), target=s.target,
                       metrics=s.metrics, higher_is_better=s.higher_is_better)


def ccc_by_hand(t, p):
    t, p = np.asarray(t, float), np.asarray(p, float)
    return 2 * np.mean((t - t.mean()) * (p - p.mean())) / (t.var() + p.var() + (t.mean() - p.mean()) ** 2)


def rescore(rec: dict, folder) -> None:
    """predictions.csv keeps 7 significant digits: re-scores agree to 1e-6."""
    df = pd.read_csv(folder / "predictions.csv")
    for dim in ("valence", "arousal"):
        t, p = df[f"y_true_{dim}"], df[f"y_pred_{dim}"]
        assert rec["metrics"][f"ccc_{dim}"] == pytest.approx(ccc_by_hand(t, p), abs=1e-6)
    assert rec["metrics"]["ccc_mean"] == pytest.approx(np.mean([ccc_by_hand(df[f"y_true_{d}"], df[f"y_pred_{d}"])
                                                                for d in ("valence", "arousal")]), abs=1e-6)
    assert rec["metrics"]["pearson_mean"] == pytest.approx(np.mean([pearsonr(df[f"y_true_{d}"], df[f"y_pred_{d}"])[0]
                                                                    for d in ("valence", "arousal")]), abs=1e-6)
    assert rec["metrics"]["mae_mean"] == pytest.approx(np.mean([mean_absolute_error(df[f"y_true_{d}"], df[f"y_pred_{d}"])
                                                                for d in ("valence", "arousal")]), abs=1e-6)


def test_privileged_run_firewall_record_and_edge_plot(tmp_path, monkeypatch):
    seen, fitted = [], []
    real_predict = DMD.predict

    def spy(self, split):
        seen.append(tuple(split.inputs))
        fitted.append(self)
        return real_predict(self, split)

    monkeypatch.setattr(DMD, "predict", spy)
    cfg = run_cfg(tmp_path, **{"task.privileged": ["physio", "audio"]})
    rec = execute(cfg, raise_errors=True)
    assert rec["status"] == "ok" and seen == [("visual",)]  # the runner strips physio and audio
    folder = tmp_path / "r" / "synthetic" / "dmd" / rec["run_key"]
    rescore(rec, folder)
    edges = rec["extra"]["dmd_edges"]
    assert edges["protocol"] == "privileged" and edges["predictors"] == ["visual"]
    assert edges["edges"] == ["physio->visual", "audio->visual"]  # edges into the student node only
    for unit in ("homo", "hetero"):
        assert len(edges[unit]["per_epoch"]) == len(rec["logs"]["student"]) == 2
        assert sum(edges[unit]["final"]) == pytest.approx(1.0, abs=1e-5)
    assert rec["extra"]["dmd"]["hetero_sources"]["visual"] == ["visual", "visual"]  # student sees itself only
    assert (folder / "dmd_edges.png").stat().st_size > 10_000
    assert json.loads((folder / "record.json").read_text())["extra"]["dmd_edges"]["edges"] == edges["edges"]

    # Changing (or removing) the privileged test inputs cannot change the predictions.
    method = fitted[0]
    test = TASKS.get("synthetic")(cfg.task).load_fold(0).test
    base = real_predict(method, test)
    written = pd.read_csv(folder / "predictions.csv")[["y_pred_valence", "y_pred_arousal"]].to_numpy()
    assert np.allclose(written, base, rtol=1e-6, atol=1e-7)  # the record's predictions are these
    noisy = copy.copy(test)
    noisy.inputs = {**test.inputs, **{m: np.random.default_rng(0).normal(size=test.inputs[m].shape)
                                      .astype(np.float32) * 100 for m in ("physio", "audio")}}
    assert np.array_equal(base, real_predict(method, noisy))
    assert np.array_equal(base, real_predict(method, test.restrict(("visual",))))
    with pytest.raises(KeyError, match="visual"):
        real_predict(method, test.restrict(("physio", "audio")))


def test_full_protocol_run_is_the_paper_model(tmp_path, monkeypatch):
    monkeypatch.setitem(TASKS._items, FullSynthetic.name, FullSynthetic)
    cfg = run_cfg(tmp_path, **{"task.privileged": ["physio", "audio"], "task.name": FullSynthetic.name})
    rec = execute(cfg, raise_errors=True)
    assert rec["status"] == "ok" and rec["privileged_modalities"] == []
    folder = tmp_path / "r" / FullSynthetic.name / "dmd" / rec["run_key"]
    rescore(rec, folder)
    edges = rec["extra"]["dmd_edges"]
    assert edges["protocol"] == "full" and len(edges["edges"]) == 6  # all ordered pairs
    assert rec["extra"]["dmd"]["hetero_sources"]["visual"] == ["physio", "audio"]
    # roles by position (visual, physio, audio = L, V, A): the paper's priors
    assert np.round(edges["homo"]["prior"], 5).tolist() == [0.00883, 0.00883, 0.48233, 0.00883, 0.48233, 0.00883]
    log = rec["logs"]["student"]
    assert [e["selected"] for e in log].count(True) == 1
    best = max(log, key=lambda e: e["val_ccc_mean"])  # the harness rule: the task's primary metric on validation
    assert best["selected"] and rec["extra"]["training"]["student"]["stop_reason"] == "max_epochs"


def test_accumulation_clipping_and_schedule(tmp_path):
    """accumulate=2 over 4 batches: 2 optimiser steps an epoch; a trailing odd batch is dropped."""
    task = TASKS.get("synthetic")(_base_run_cfg().task)
    fold = task.load_fold(0)
    method = fit_hand(task.spec, fold.train, fold.val, tmp_path, {"method.training.max_epochs": 1,
                                                                  "method.training.batch_size": 12}, task=task)
    n_batches = math.ceil(len(fold.train) / 12)
    entry = method.ctx.logs["student"][0]
    assert entry["optimizer_steps"] == n_batches // 2 and entry["lr"] == pytest.approx(1e-4)
    assert method.ctx.extra["dmd"]["accumulate_batches"] == 2


def test_stops_once_the_learning_rate_is_below_min_lr(tmp_path):
    """The plateau schedule's floor: a run whose lr is under training.min_lr stops after that epoch."""
    task = TASKS.get("synthetic")(_base_run_cfg().task)
    fold = task.load_fold(0)
    method = fit_hand(task.spec, fold.train, fold.val, tmp_path, {
        "method.training.max_epochs": 6, "method.training.min_lr": 2e-4}, task=task)  # lr 1e-4 < 2e-4
    assert method.ctx.extra["training"]["student"]["stop_reason"] == "min_lr" and len(method.ctx.logs["student"]) == 1


def test_config_and_presets():
    cfg = method_cfg()
    hp = resolve_hparams(cfg, "mosi")
    assert (hp["d"], hp["heads"], hp["layers"], hp["kernel"]) == (50, 10, 4, 5)
    assert hp["loss"]["homo_gd"] == hp["loss"]["het_gd"] == 0.05 and hp["loss"]["ort_mode"] == "per_sample"
    assert hp["training"]["lr"] == 1e-4 and hp["training"]["accumulate"] == 10 and hp["training"]["grad_clip"] == 0.6
    assert hp["training"]["grad_clip_by"] == "value" and hp["training"]["optimizer"] == "adam"
    assert hp["training"]["select_on"] == "loss"  # the official KeyEval on the official datasets
    assert resolve_hparams(cfg, "synthetic")["training"]["select_on"] == "primary"
    mosei = resolve_hparams(cfg, "mosei")
    assert (mosei["d"], mosei["heads"], mosei["kernel_by_modality"]) == (30, 6, {"text": 5, "audio": 1, "vision": 3})
    assert resolve_hparams(OmegaConf.merge(cfg, {"preset": "none"}), "mosei")["d"] == 50


# ---------------------------------------------------------------------------------------------------
# Other task shapes: MOSI-style names with several student modalities and IEMOCAP-style classes;
# per-step (frame) targets; checkpoint resume
# ---------------------------------------------------------------------------------------------------

class HandTask:
    """A minimal Task-like object for direct fit/predict: spec, score, metric direction."""

    data_source = "synthetic"

    def __init__(self, spec):
        self.spec = spec

    def score(self, predictions):
        from harness.metrics import score_columns
        from harness.predictions import columns_by_dim
        yt, yp = columns_by_dim(predictions, self.spec.target)
        return score_columns(yt, yp, self.spec.metrics, self.spec.target.kind)

    def metric_higher_is_better(self, metric):
        from harness.metrics import higher_is_better
        return higher_is_better(metric)


def hand_split(n, dims, lens, targets, seed, **extra):
    rng = np.random.default_rng(seed)
    return Split(ids=np.array([f"s{seed}-{i}" for i in range(n)]), groups=np.array(["g"] * n),
                 inputs={m: rng.normal(size=(n, lens[m], d)).astype(np.float32) for m, d in dims.items()},
                 targets=targets, **extra)


def fit_hand(spec, train, val, tmp_path, overrides=None, task=None):
    """fit() called directly with a RunContext (no runner): the tiny config plus dotted overrides."""
    from harness.method import RunContext
    from harness.teachers import TeacherStore
    cfg = run_cfg(tmp_path, **{"task.name": "hand", **(overrides or {})})
    ctx = RunContext(cfg=cfg, task=task or HandTask(spec), fold=0, seed=0, device=torch.device("cpu"),
                     teachers=TeacherStore(tmp_path / "c"), run_dir=tmp_path, progress=False)
    torch.manual_seed(0)
    method = METHODS.get("dmd")(cfg.method, ctx)
    method.fit(train, val)
    return method


def test_mosi_names_two_students_and_iemocap_style_classes(tmp_path):
    """Student audio+vision, text privileged; 4 binary heads. Paper priors by name on the edges into the
    students; predictions are per-head class probabilities from the students' inputs only."""
    from harness.data import TaskSpec
    dims, lens = {"text": 16, "audio": 5, "vision": 6}, {"text": 8, "audio": 12, "vision": 10}
    target = TargetSpec("classification", ("neutral", "happy", "sad", "angry"), n_classes=2)
    spec = TaskSpec(modalities=dims, student_modalities=("audio", "vision"), target=target,
                    metrics=("accuracy_mean", "f1_weighted_mean"))
    rng = np.random.default_rng(0)
    train = hand_split(48, dims, lens, rng.integers(0, 2, (48, 4)), 1)
    val = hand_split(16, dims, lens, rng.integers(0, 2, (16, 4)), 2)
    test = hand_split(20, dims, lens, rng.integers(0, 2, (20, 4)), 3)
    method = fit_hand(spec, train, val, tmp_path)
    edges = method.ctx.extra["dmd_edges"]
    assert edges["edges"] == ["text->audio", "vision->audio", "text->vision", "audio->vision"]
    homo = dict(zip(edges["edges"], np.round(edges["homo"]["prior"], 5)))
    assert homo["text->audio"] == homo["text->vision"] > 0.49  # the paper's L->A, L->V, renormalised over 4 edges
    assert method.ctx.extra["dmd"]["hetero_sources"]["audio"] == ["vision", "audio"]
    probs = method.predict(test.restrict(("audio", "vision")))
    assert probs.shape == (20, 4, 2) and np.allclose(probs.sum(-1), 1.0, atol=1e-5)
    assert np.array_equal(probs, method.predict(test))  # text present or not: same predictions
    log = method.ctx.logs["student"]
    assert "val_accuracy_mean" in log[0] and math.isfinite(log[0]["val_loss"])


def test_per_step_targets_are_pooled_and_broadcast(tmp_path):
    from harness.data import TaskSpec
    from harness.predictions import make_predictions
    dims, lens = {"visual": 6, "audio": 4}, {"visual": 8, "audio": 8}
    target = TargetSpec("regression", ("valence", "arousal"), per_step=True)
    spec = TaskSpec(modalities=dims, student_modalities=("visual",), target=target, metrics=("ccc_mean",))
    rng = np.random.default_rng(0)

    def split(n, seed):
        mask = rng.random((n, 8)) > 0.2
        mask[:, 0] = True
        return hand_split(n, dims, lens, rng.normal(size=(n, 8, 2)).astype(np.float32), seed, target_mask=mask,
                          step_index=np.tile(np.arange(8), (n, 1)))

    train, val, test = split(40, 1), split(16, 2), split(12, 3)
    method = fit_hand(spec, train, val, tmp_path)
    out = method.predict(test.restrict(("visual",)))
    assert out.shape == (12, 8, 2) and np.all(out == out[:, :1])  # one prediction per window, on every step
    preds = make_predictions(test, out, target)
    assert len(preds) == test.target_mask.sum()


def test_checkpoint_resume(tmp_path):
    spec = Synthetic(_base_run_cfg().task).spec
    from harness.data import TaskSpec
    dims = dict(spec.modalities)
    spec = TaskSpec(modalities=dims, student_modalities=("visual",), target=spec.target, metrics=spec.metrics)
    lens = {m: 6 for m in dims}
    rng = np.random.default_rng(0)
    train = hand_split(32, dims, lens, rng.normal(size=(32, 2)).astype(np.float32), 1)
    val = hand_split(16, dims, lens, rng.normal(size=(16, 2)).astype(np.float32), 2)
    first = fit_hand(spec, train, val, tmp_path, {"train.checkpoint": True, "method.training.max_epochs": 1})
    assert (tmp_path / "checkpoint_dmd.pt").exists() and len(first.ctx.logs["student"]) == 1
    second = fit_hand(spec, train, val, tmp_path, {"train.checkpoint": True, "method.training.max_epochs": 2})
    assert second.ctx.extra["resumed_from_epoch"]["student"] == 1
    log = second.ctx.logs["student"]
    assert [e["epoch"] for e in log] == [0, 1] and log[0]["train_loss"] == first.ctx.logs["student"][0]["train_loss"]

    # A resumed run equals an uninterrupted one, dropout included (torch's global stream is checkpointed).
    straight_dir, resumed_dir = tmp_path / "straight", tmp_path / "resumed"
    straight_dir.mkdir(), resumed_dir.mkdir()
    straight = fit_hand(spec, train, val, straight_dir, {"train.checkpoint": True, "method.training.max_epochs": 3})
    fit_hand(spec, train, val, resumed_dir, {"train.checkpoint": True, "method.training.max_epochs": 2})
    resumed = fit_hand(spec, train, val, resumed_dir, {"train.checkpoint": True, "method.training.max_epochs": 3})
    assert resumed.ctx.extra["resumed_from_epoch"]["student"] == 2
    for a, b in zip(straight.ctx.logs["student"], resumed.ctx.logs["student"], strict=True):
        assert (a["train_loss"], a["val_loss"], a["edges_homo"]) == (b["train_loss"], b["val_loss"], b["edges_homo"])
    assert all(torch.equal(x, y) for x, y in zip(straight.model.state_dict().values(),
                                                   resumed.model.state_dict().values()))

    # A checkpoint of the epoch that stopped training (here: lr below min_lr) resumes into no further epoch.
    stop_dir = tmp_path / "stopped"
    stop_dir.mkdir()
    knobs = {"train.checkpoint": True, "method.training.max_epochs": 5, "method.training.min_lr": 2e-4}
    stopped = fit_hand(spec, train, val, stop_dir, knobs)
    again = fit_hand(spec, train, val, stop_dir, knobs)
    assert len(stopped.ctx.logs["student"]) == len(again.ctx.logs["student"]) == 1
    assert again.ctx.extra["training"]["student"]["stop_reason"] == "min_lr"


def test_preset_auto_selects_on_validation_loss_for_classes_and_mosi_only():
    """preset auto: loss (the official KeyEval) on classification targets and on mosi/mosei; the task's primary
    metric for other regression tasks; preset none keeps the yaml's value everywhere."""
    cfg = method_cfg()
    assert resolve_hparams(cfg, "synthetic", "regression")["training"]["select_on"] == "primary"
    hp = resolve_hparams(cfg, "synthetic", "classification")
    assert hp["training"]["select_on"] == "loss" and hp["preset_applied"] == "classification: select_on=loss"
    assert hp["training"]["lr"] == cfg.training.lr  # the rest of the training block is untouched
    assert resolve_hparams(cfg, "mosi", "regression")["training"]["select_on"] == "loss"
    none = OmegaConf.merge(cfg, {"preset": "none"})
    assert resolve_hparams(none, "iemocap", "classification")["training"]["select_on"] == "primary"
    assert resolve_hparams(none, "mosi", "regression")["training"]["select_on"] == "primary"
