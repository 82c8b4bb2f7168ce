"""DMD's losses: task, decoupling (reconstruction, cycle, orthogonality, margin) and the total of a batch.

Task L1 (regression, as the paper) or cross-entropy (classes) on every head; reconstruction and cycle
MSE; orthogonality between X^prt and X^com written out explicitly (`ort_mode`: `per_sample` = one
cosine per sample, the paper's intent and the default; `batch_axis` = the torch-1.9 behaviour of the
official CosineEmbeddingLoss on 3-D input, for a faithful reproduction), never through
CosineEmbeddingLoss on 3-D tensors (it raises on current torch); the margin (hinge) loss vectorised
over anchors, positives by exact equality of the label vector, margin margin_scale·mean_k|y_i - y_j|
(regression; = 0.15·|dy| for one dim) or margin_scale·(share of heads whose class differs) (classes,
order-free). See docs/fidelity.md#dmd-losses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from harness.data import TargetSpec
from methods.dmd.graph import GraphDistillationUnit
from methods.dmd.network import DMDNet


# ----------------------------------------------------------------------------------------------
# Decoupling losses (docs/fidelity.md#dmd-losses)
# ----------------------------------------------------------------------------------------------

def orthogonality_loss(private: torch.Tensor, shared: torch.Tensor, mode: str = "per_sample") -> torch.Tensor:
    """mean max(0, cos(X^prt, X^com)) on [B, d, T'] tensors.

    batch_axis: one cosine per (channel, step) taken ACROSS the batch (what CosineEmbeddingLoss did on
    the official (T', B, d) tensors under torch 1.9); per_sample: one cosine per sample over its
    flattened (d·T') features. Squared norms get +1e-12 as in torch's CosineEmbeddingLoss."""
    if mode == "batch_axis":
        dims = (0,)
    elif mode == "per_sample":
        dims = (1, 2)
    else:
        raise ValueError(f"method.loss.ort_mode={mode!r}: choose batch_axis or per_sample")
    dot = (private * shared).sum(dims)
    norm2 = ((private * private).sum(dims) + 1e-12) * ((shared * shared).sum(dims) + 1e-12)
    return F.relu(dot / torch.sqrt(norm2)).mean()


def margin_loss(feats: torch.Tensor, labels: torch.Tensor, margin_scale: float = 0.15,
                classification: bool = False, max_chunk: int = 2_000_000) -> torch.Tensor:
    """The official HingeLoss, vectorised. feats [N, F], labels [N, K].

    For anchor i: positives {j != i: label_j == label_i (exact, whole vector)}, negatives {j: label_j !=
    label_i}; l_i = mean over (p, n) of max(0, m_in - cos_ip + cos_in), m_in = margin_scale·dist(y_i, y_n)
    (regression: mean_k |dy_k|; classes: share of heads that differ). Mean of l_i over anchors with at
    least one positive and one negative (0 if none). Cosines use norms sqrt(|x|^2 + 1e-8) >= 1e-8.
    """
    n = feats.shape[0]
    norm = torch.sqrt((feats * feats).sum(1) + 1e-8).clamp_min(1e-8)
    cos = (feats @ feats.T) / (norm[:, None] * norm[None, :])
    lab = labels.reshape(n, -1)
    diff = lab[:, None, :] != lab[None, :, :]
    same = ~diff.any(-1)
    pos = same & ~torch.eye(n, dtype=torch.bool, device=feats.device)
    neg = ~same
    lab_f = lab.to(feats.dtype)  # the features' precision (float64 in the parity test: no float32 margin)
    dist = diff.to(feats.dtype).mean(-1) if classification else (lab_f[:, None, :] - lab_f[None, :, :]).abs().mean(-1)
    margin = margin_scale * dist
    n_pairs = pos.sum(1) * neg.sum(1)
    valid = n_pairs > 0
    if not bool(valid.any()):
        return feats.sum() * 0.0
    per_anchor = []
    step = max(1, max_chunk // (n * n))  # anchors per chunk: bounds the [chunk, N, N] hinge tensor
    for a in range(0, n, step):
        sl = slice(a, a + step)
        hinge = F.relu(margin[sl, None, :] - cos[sl, :, None] + cos[sl, None, :])  # [a, p, n]
        pair = pos[sl, :, None] & neg[sl, None, :]
        per_anchor.append((hinge * pair).sum((1, 2)))
    per_anchor = torch.cat(per_anchor) / n_pairs.clamp_min(1)
    return per_anchor[valid].mean()


# ----------------------------------------------------------------------------------------------
# Losses of one training batch (docs/fidelity.md#dmd-losses)
# ----------------------------------------------------------------------------------------------

def task_loss_dmd(out: torch.Tensor, y: torch.Tensor, target: TargetSpec) -> torch.Tensor:
    """L1 for regression (the paper's loss), cross-entropy over each head's classes for classification."""
    if target.kind == "classification":
        return F.cross_entropy(out.reshape(-1, target.n_classes), y.reshape(-1).long())
    return F.l1_loss(out, y.reshape(out.shape))


class DMDLoss:
    """Every term of the total loss (docs/fidelity.md#dmd-losses), each with its config weight.

    Returns (total, parts, E_homo, E_het)."""

    def __init__(self, net: DMDNet, homo_gd: GraphDistillationUnit, het_gd: GraphDistillationUnit,
                 weights: DictConfig | dict):
        self.net, self.homo_gd, self.het_gd = net, homo_gd, het_gd
        self.w = dict(weights)
        self.target = net.target

    def __call__(self, inputs: dict[str, torch.Tensor], y: torch.Tensor):
        net, w, target = self.net, self.w, self.target
        o = net(inputs, full=True)
        M = len(net.nodes)
        heads = [o.out, o.out_c] + [o.homo_logits[i] for i in range(M)] + [o.het_logits[i] for i in range(M)]
        if target.kind == "classification":
            shape = (-1, len(target.dims), target.n_classes)
            task_terms = [task_loss_dmd(h.view(shape), y, target) for h in heads]
        else:
            task_terms = [task_loss_dmd(h, y, target) for h in heads]
        l_task = torch.stack(task_terms).sum()

        e_homo = self.homo_gd(o.homo_logits, o.homo_reprs)
        e_het = self.het_gd(o.het_logits, o.het_reprs)
        homo_logit = self.homo_gd.l1_loss(o.homo_logits, e_homo)
        homo_reg = self.homo_gd.reg_loss(e_homo)
        homo_repr = self.homo_gd.l1_loss(o.homo_reprs, e_homo)
        het_logit = self.het_gd.l1_loss(o.het_logits, e_het)
        het_reg = self.het_gd.reg_loss(e_het)
        het_repr = self.het_gd.cosine_push_loss(o.het_reprs, e_het)

        recon = sum(F.mse_loss(o.recon[m], o.proj[m]) for m in net.nodes)
        cycle = sum(F.mse_loss(o.private[m], o.private_cycle[m]) for m in net.nodes)
        ort = sum(orthogonality_loss(o.private[m], o.shared[m], w["ort_mode"]) for m in net.nodes)
        labels = y.reshape(y.shape[0], -1).repeat_interleave(M, dim=0)  # interleaved by sample, as the official
        mar = margin_loss(o.align.reshape(-1, o.align.shape[-1]), labels, w["margin_scale"],
                          target.kind == "classification")

        gd_logit, gd_repr, gd_reg = w["gd_logit"], w["gd_repr"], w["gd_reg"]
        total = (w["task"] * l_task
                 + w["homo_gd"] * (gd_logit * homo_logit + gd_reg * homo_reg + w["homo_repr"] * gd_repr * homo_repr)
                 + w["het_gd"] * (gd_logit * het_logit + gd_reg * het_reg
                                  + w["het_repr_decorrelation"] * gd_repr * het_repr)
                 + w["recon"] * recon + w["cycle"] * cycle + w["margin"] * mar + w["ort"] * ort)
        parts = {"task": l_task, "task_fusion": task_terms[0], "homo_logit": homo_logit, "homo_reg": homo_reg,
                 "homo_repr_unused": homo_repr, "het_logit": het_logit, "het_reg": het_reg,
                 "het_repr_decorrelation": het_repr, "recon": recon, "cycle": cycle, "margin": mar, "ort": ort}
        return total, {k: float(v.detach()) for k, v in parts.items()}, e_homo, e_het
