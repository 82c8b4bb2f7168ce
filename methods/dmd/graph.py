"""DMD's graph distillation units: the graph's edges, their priors and the learned edge weights.

Edge network on [W_y y ; W_r r] of the receiver and the teacher, softmax over ALL edges of
score/temperature (8), fixed priors pi (softmax(v/0.25)), w = E + pi,
L_reg = gd_reg·sum_k (mean_b E_k - pi_k)^2, L_logit = sum_k mean_b w·|y_s - sg(y_t)|_1.
HomoGD's L1 repr term is computed and logged but, as in the official code, not added (weight 0).
HeteroGD's repr term is the official CosineEmbeddingLoss(target=-1): it PUSHES the receiver's repr
away from the teacher's (`het_repr_decorrelation`), weighted by mean_b w. Edge inputs are not
detached (faithful); `gd.detach_edge_inputs=true` is the clean variant.

Priors: the paper's priors (HomoGD favours L->V, L->A; HeteroGD L->V, L->A, V->A) exist for the
3-node case. Roles L/V/A are read from the names when the nodes are text/vision/audio, from
`gd.roles` when given, else from the task's order (node 0 = L, 1 = V, 2 = A). For any other node
count the priors are uniform (`gd.prior=uniform` forces that everywhere). See docs/fidelity.md#dmd-graph-distillation.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


# Paper priors (run.py): edges (teacher role, student role) with prior logit 1, all others 0.
PAPER_PRIOR_EDGES = {"homo": {("L", "V"), ("L", "A")}, "hetero": {("L", "V"), ("L", "A"), ("V", "A")}}
ROLE_NAMES = {"text": "L", "vision": "V", "audio": "A"}


# ----------------------------------------------------------------------------------------------
# Graph distillation units (docs/fidelity.md#dmd-graph-distillation)
# ----------------------------------------------------------------------------------------------

def graph_edges(nodes: tuple[str, ...], receivers: tuple[str, ...]) -> list[tuple[int, int]]:
    """(student, teacher) node index pairs, student-major in node order: the spec's order for L, V, A."""
    return [(s, t) for s in range(len(nodes)) if nodes[s] in receivers for t in range(len(nodes)) if t != s]


def node_roles(nodes: tuple[str, ...], roles: list[str] | None = None) -> dict[str, str] | None:
    """Modality -> paper role L/V/A for the 3-node case, else None (priors are uniform)."""
    if len(nodes) != 3:
        return None
    if roles:
        if sorted(roles) != sorted(nodes):
            raise ValueError(f"method.gd.roles={list(roles)} must list the task's modalities {list(nodes)} as [L, V, A]")
        return dict(zip(roles, "LVA"))
    if set(nodes) == set(ROLE_NAMES):
        return dict(ROLE_NAMES)
    return dict(zip(nodes, "LVA"))


def edge_priors(nodes: tuple[str, ...], edges: list[tuple[int, int]], unit: str, mode: str,
                roles: dict[str, str] | None, temperature: float) -> torch.Tensor:
    """pi = softmax(v / temperature) with v_k = 1 on the paper's favoured edges (mode paper), else uniform."""
    if mode not in ("paper", "uniform"):
        raise ValueError(f"method.gd.prior={mode!r}: choose paper or uniform")
    v = torch.zeros(len(edges), dtype=torch.float64)
    if mode == "paper" and roles is not None:
        for k, (s, t) in enumerate(edges):
            v[k] = float((roles[nodes[t]], roles[nodes[s]]) in PAPER_PRIOR_EDGES[unit])
    return torch.softmax(v / temperature, dim=0).float()


class GraphDistillationUnit(nn.Module):
    """Edge weights E [K, B] from the nodes' logits and reprs, and the unit's losses."""

    def __init__(self, n_logits: int, repr_dim: int, hidden: int, edges: list[tuple[int, int]],
                 prior: torch.Tensor, temperature: float = 8.0, detach_inputs: bool = False):
        super().__init__()
        self.logit_proj = nn.Linear(n_logits, hidden)
        self.repr_proj = nn.Linear(repr_dim, hidden)
        self.edge_score = nn.Linear(4 * hidden, 1)
        self.register_buffer("student_idx", torch.tensor([s for s, _ in edges], dtype=torch.long))
        self.register_buffer("teacher_idx", torch.tensor([t for _, t in edges], dtype=torch.long))
        self.register_buffer("prior", prior.clone().float())
        self.temperature, self.detach_inputs = float(temperature), detach_inputs

    def forward(self, logits: torch.Tensor, reprs: torch.Tensor) -> torch.Tensor:
        """logits [M, B, n], reprs [M, B, h] -> E [K, B], softmax over all K edges per sample."""
        if self.detach_inputs:
            logits, reprs = logits.detach(), reprs.detach()
        z = torch.cat([self.logit_proj(logits), self.repr_proj(reprs)], dim=-1)
        scores = self.edge_score(torch.cat([z[self.student_idx], z[self.teacher_idx]], dim=-1)).squeeze(-1)
        return torch.softmax(scores / self.temperature, dim=0)

    def weights(self, E: torch.Tensor) -> torch.Tensor:
        return E + self.prior[:, None]

    def reg_loss(self, E: torch.Tensor) -> torch.Tensor:
        return ((E.mean(dim=1) - self.prior) ** 2).sum()

    def l1_loss(self, values: torch.Tensor, E: torch.Tensor) -> torch.Tensor:
        """sum_k mean_b w_kb · |v_s - sg(v_t)|_1: logit distillation (and HomoGD's repr term)."""
        flat = values.flatten(2)
        dist = (flat[self.student_idx] - flat[self.teacher_idx].detach()).abs().sum(-1)  # [K, B]
        return (self.weights(E) * dist).mean(dim=1).sum()

    def cosine_push_loss(self, reprs: torch.Tensor, E: torch.Tensor) -> torch.Tensor:
        """sum_k mean_b(w_k) · mean_b max(0, cos(q_s, sg(q_t))): CosineEmbeddingLoss(target=-1) as the
        official HeteroGD uses it. It pushes the receiver's repr AWAY from the teacher's."""
        s, t = reprs[self.student_idx], reprs[self.teacher_idx].detach()
        cos = (s * t).sum(-1) / torch.sqrt(((s * s).sum(-1) + 1e-12) * ((t * t).sum(-1) + 1e-12))
        return (self.weights(E).mean(dim=1) * F.relu(cos).mean(dim=1)).sum()
