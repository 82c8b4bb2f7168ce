"""The DMD network: MulT-style transformer encoders, decoupling into shared and private spaces, fusion, heads.

For a task with M >= 2 modalities; the graph's nodes are the task's modalities in the task's order:
- per modality m: dropout on the input (only `text`: the official text_dropout on the BERT features: the
  frozen ones, or the last hidden states of the fine-tuned BERT, `text_encoder`, run on the text tokens),
  a bias-free temporal Conv1d (kernel k_m, no padding: T'_m = T_m - k_m + 1) to d channels X~_m;
  a private (modality-exclusive) encoder E^prt_m and ONE shared (modality-irrelevant) encoder E^com
  (bias-free 1x1 convs); a decoder D_m(concat[X^prt, X^com]) = X^_m (self-regression) and the cycle
  code E^prt_m(X^_m); Align_m (channel-major flatten of X^com -> d) for the margin loss;
- homogeneous space: per-node flatten heads on X^com (repr = post-ReLU bottleneck, logit), a causal
  self-attention encoder per node whose last step feeds the homogeneous fusion head y_c;
- heterogeneous space (MulT): for each target node, M-1 cross-modal encoders (query = target's
  X^prt, key/value = a source's X^prt), concatenated, a memory self-attention encoder of width
  (M-1)·d (max(layers, 3) layers), last step -> per-node residual head (repr q_m, logit);
- final fusion: sigmoid(G_m h_m) for every predicting node and sigmoid(G_c c), residual MLP -> y^.
- transformers: pre-LN layers, one LN0 shared by query/key/value, sqrt(D)-scaled input plus
  fairseq sinusoidal positions (a step whose first channel is exactly 0 gets no position), causal
  masks j > i + |Tk - Tq|, readout at the last step, no key-padding masks, lengths unused (as the
  official code). Attention dropout follows the SOURCE modality (MulT's `self_type` naming).
In the privileged protocol a student node's heterogeneous branch attends only to student modalities
(the other student modalities, then itself, cycled to M-1 sources), and only the student nodes predict.
What is kept from the official code and what differs: docs/fidelity.md#dmd-model.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.data import TargetSpec
from harness.task import TaskError
from methods.dmd.kernels import (_layer_norm, _linear, _row_blocks, _stacked, _take, attention_scores, causal_mask,
                                 dropout, keep_mask, sinusoidal_table, weighted_values)


TEXT = "text"  # the node a text encoder (method.text_encoder=bert) feeds


class StackedEncoderLayer(nn.Module):
    """E pre-LN MulT layers, parameters stacked: x + Drop(MHA(LN0 x, LN0 k, LN0 v)); x + Drop(W2 Drop(ReLU(W1 LN1 x))).
    One LN0 normalises query, key and value (MulT); packed in-projection, xavier init, zero biases."""

    def __init__(self, n: int, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by method.heads={heads}")
        self.dim, self.heads, self.head_dim = dim, heads, dim // heads
        self.in_w, self.in_b = _stacked(n, 3 * dim, dim, init="xavier"), _stacked(n, 3 * dim)
        self.out_w, self.out_b = _stacked(n, dim, dim, init="xavier"), _stacked(n, dim)
        self.ln0_w, self.ln0_b = _stacked(n, dim, init="ones"), _stacked(n, dim)
        self.ln1_w, self.ln1_b = _stacked(n, dim, init="ones"), _stacked(n, dim)
        self.fc1_w, self.fc1_b = _stacked(n, 4 * dim, dim, init="xavier"), _stacked(n, 4 * dim)
        self.fc2_w, self.fc2_b = _stacked(n, dim, 4 * dim, init="xavier"), _stacked(n, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # [E, B, T, D] -> [E*B*H, T, hd]
        e, b, t, _ = x.shape
        return x.reshape(e, b, t, self.heads, self.head_dim).transpose(2, 3).reshape(-1, t, self.head_dim)

    def attention(self, h, kn, vn, mask, idx, p_attn: list[float], plain: bool):
        D = self.dim
        w, b = _take(self.in_w, idx), _take(self.in_b, idx)
        if kn is h:  # self-attention over the same steps: one packed projection
            q, k, v = _linear(h, w, b).chunk(3, dim=-1)
        else:
            q = _linear(h, w[:, :D], b[:, :D])
            if kn is vn:
                k, v = _linear(kn, w[:, D:], b[:, D:]).chunk(2, dim=-1)
            else:
                k, v = _linear(kn, w[:, D:2 * D], b[:, D:2 * D]), _linear(vn, w[:, 2 * D:], b[:, 2 * D:])
        e, bsz, tq, _ = h.shape
        q, k, v = self._heads(q * self.head_dim ** -0.5), self._heads(k), self._heads(v)
        if plain:  # the official kernels: bmm, mask add, F.dropout
            scores = torch.bmm(q, k.transpose(1, 2))
            weights = torch.softmax(scores if mask is None else scores + mask, dim=-1)
            out = torch.bmm(dropout(weights, p_attn[0], self.training, fast=False), v)
        else:
            scale = None  # dropout: the output's per-member 1 / (1 - p), made once for every block
            if self.training and max(p_attn) > 0:
                scale = torch.tensor([1.0 / (1.0 - p) for p in p_attn], dtype=q.dtype, device=q.device)[:, None]
            out = torch.cat([self._attend_rows(q, k, v, mask, a, b, p_attn, scale) for a, b in _row_blocks(tq)],
                            dim=1)
        out = out.view(e, bsz, self.heads, tq, self.head_dim).transpose(2, 3).reshape(e, bsz, tq, D)
        return _linear(out, _take(self.out_w, idx), _take(self.out_b, idx))

    def _attend_rows(self, q, k, v, mask, a: int, b: int, p_attn: list[float], scale) -> torch.Tensor:
        """Attention of the query steps [a, b) only. Under the causal mask they see the keys [0, b + |Tk - Tq|)
        alone, so the masked rest of their rows is never computed: at T = 46 in blocks of 16, 2/3 of the score
        matrix is computed and the masked third skipped. Its [heads, Tq, Tk] tensors (scores, softmax, dropout)
        were most of the step's non-matmul time; blocks of 16 rows also keep them in cache."""
        tq, tk = q.shape[1], k.shape[1]
        kb = tk if mask is None else min(tk, b + abs(tk - tq))
        scores = attention_scores(q[:, a:b], k[:, :kb])
        weights = torch.softmax(scores if mask is None else scores.add_(mask[a:b, :kb]), dim=-1)
        if scale is None:
            return weighted_values(weights, v[:, :kb])
        # mask the weights; scale the hd/kb times smaller output instead of the weights
        weights = weights * keep_mask(weights.shape, p_attn, weights.device, weights.dtype)
        out = weighted_values(weights, v[:, :kb])
        return out.reshape(len(p_attn), -1).mul(scale).view(out.shape)

    def forward(self, x, k, v, mask, idx, p_attn, relu_p, res_p, plain, last_only=False):
        """last_only: compute the last step's output only (keys and values still span every step)."""
        fast = not plain
        h = _layer_norm(x, _take(self.ln0_w, idx), _take(self.ln0_b, idx))
        if k is None:
            kn = vn = h
        else:
            kn = _layer_norm(k, _take(self.ln0_w, idx), _take(self.ln0_b, idx))
            vn = kn if v is k else _layer_norm(v, _take(self.ln0_w, idx), _take(self.ln0_b, idx))
        if last_only:
            h, x = h[:, :, -1:], x[:, :, -1:]
            mask = None if mask is None else mask[-1:]
        x = x + dropout(self.attention(h, kn, vn, mask, idx, p_attn, plain), res_p, self.training, fast)
        f = F.relu(_linear(_layer_norm(x, _take(self.ln1_w, idx), _take(self.ln1_b, idx)),
                           _take(self.fc1_w, idx), _take(self.fc1_b, idx)))
        f = _linear(dropout(f, relu_p, self.training, fast), _take(self.fc2_w, idx), _take(self.fc2_b, idx))
        return x + dropout(f, res_p, self.training, fast)


class MulTEncoderGroup(nn.Module):
    """E MulT TransformerEncoders of one shape (width, query and key lengths), run as one stacked batch.

    Input [E, B, T, D] (member e's sequence at e), optional source [E, B, Tk, D] (cross-modal: key = value =
    source), output [E, B, T, D] or the last step [E, B, D]. Each member has its own parameters and its own
    attention dropout (MulT: the source modality's). fast=False runs the members one after the other with
    the official kernels and no pruning: the benchmark's reference, the same function."""

    def __init__(self, n: int, dim: int, heads: int, layers: int, attn_dropouts: list[float], relu_dropout: float,
                 res_dropout: float, embed_dropout: float, causal: bool = True, fast: bool = True):
        super().__init__()
        self.n, self.dim, self.causal, self.fast = n, dim, causal, fast
        self.attn_dropouts = [float(p) for p in attn_dropouts]
        self.relu_dropout, self.res_dropout, self.embed_dropout = relu_dropout, res_dropout, embed_dropout
        self.layers = nn.ModuleList(StackedEncoderLayer(n, dim, heads) for _ in range(layers))
        self.norm_w, self.norm_b = _stacked(n, dim, init="ones"), _stacked(n, dim)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """sqrt(D)·x + PE, where a step whose first channel is exactly 0 gets no position (padding)."""
        pe = sinusoidal_table(x.shape[-2] + 1, self.dim)[1:].to(x.device, x.dtype)
        return math.sqrt(self.dim) * x + pe * (x[..., :1] != 0).to(x.dtype)

    def forward(self, x: torch.Tensor, source: torch.Tensor | None = None, last_only: bool = False,
                members: list[int] | None = None) -> torch.Tensor:
        """members: which encoders of the group x holds (default all, in order)."""
        members = list(range(self.n)) if members is None else list(members)
        if self.fast:
            idx = None if members == list(range(self.n)) else (
                slice(members[0], members[0] + 1) if len(members) == 1 else torch.tensor(members, device=x.device))
            return self._run(x, source, last_only, idx, [self.attn_dropouts[m] for m in members], plain=False)
        outs = [self._run(x[i:i + 1], None if source is None else source[i:i + 1], last_only,
                          slice(m, m + 1), [self.attn_dropouts[m]], plain=True)
                for i, m in enumerate(members)]
        return torch.cat(outs)

    def _run(self, x, source, last_only, idx, p_attn, plain):
        drop = functools.partial(dropout, p=self.embed_dropout, training=self.training, fast=not plain)
        q = drop(self.embed(x))
        k = v = None
        if source is not None:
            src = self.embed(source)
            # MulT drops key and value with independent masks; without dropout they are one tensor.
            k = drop(src)
            v = k if (not self.training or self.embed_dropout <= 0) else drop(src)
        tk = x.shape[-2] if source is None else source.shape[-2]
        mask = causal_mask(x.shape[-2], tk, x.device) if self.causal else None
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            q = layer(q, k, v, mask, idx, p_attn, self.relu_dropout, self.res_dropout, plain,
                      last_only=last_only and not plain and i == last)
        out = _layer_norm(q, _take(self.norm_w, idx), _take(self.norm_b, idx))
        return out[:, :, -1] if last_only else out


class ResidualHead(nn.Module):
    """y = Out(P2(Drop(ReLU(P1 x))) + x); returns (post-ReLU bottleneck repr, residual feature, logits)."""

    def __init__(self, in_dim: int, bottleneck: int, n_out: int, output_dropout: float, fast: bool = True):
        super().__init__()
        self.p1, self.p2 = nn.Linear(in_dim, bottleneck), nn.Linear(bottleneck, in_dim)
        self.out = nn.Linear(in_dim, n_out)
        self.output_dropout, self.fast = output_dropout, fast

    def forward(self, x: torch.Tensor):
        r = F.relu(self.p1(x))
        u = self.p2(dropout(r, self.output_dropout, self.training, self.fast)) + x
        return r, u, self.out(u)


# ----------------------------------------------------------------------------------------------
# The DMD network
# ----------------------------------------------------------------------------------------------

@dataclass
class DMDOutput:
    out: torch.Tensor                   # final fusion head [B, n_out]
    out_c: torch.Tensor | None = None   # homogeneous fusion head [B, n_out]
    homo_logits: torch.Tensor | None = None  # [M, B, n_out], node order
    homo_reprs: torch.Tensor | None = None   # [M, B, d] post-ReLU bottleneck r_m
    het_logits: torch.Tensor | None = None   # [M, B, n_out]
    het_reprs: torch.Tensor | None = None    # [M, B, (M-1)·d] q_m
    proj: dict | None = None            # X~_m [B, d, T'_m] (reconstruction target)
    recon: dict | None = None           # X^_m
    private: dict | None = None         # X^prt_m [B, d, T'_m]
    shared: dict | None = None          # X^com_m
    private_cycle: dict | None = None   # E^prt_m(X^_m)
    align: torch.Tensor | None = None   # [B, M, d] margin-loss embeddings


class DMDNet(nn.Module):
    """The model (docs/fidelity.md#dmd-model) for any M >= 2 modalities.

    `predictors` are the nodes that predict at test."""

    def __init__(self, modalities: dict[str, int], seq_lens: dict[str, int], target: TargetSpec, hp: dict,
                 predictors: tuple[str, ...] | None = None, text_encoder: nn.Module | None = None):
        super().__init__()
        self.nodes = tuple(modalities)
        if text_encoder is not None and TEXT not in self.nodes:
            raise TaskError(f"a text encoder needs a '{TEXT}' modality, the task has {list(modalities)}")
        M = len(self.nodes)
        if M < 2:
            raise TaskError(f"DMD needs at least 2 modalities (its graph's nodes), the task has {list(modalities)}")
        self.predictors = tuple(predictors or self.nodes)
        self.target = target
        self.n_out = target.n_outputs
        self.hp = hp
        d, heads, layers = int(hp["d"]), int(hp["heads"]), int(hp["layers"])
        if d % heads:
            raise ValueError(f"method.d={d} must be divisible by method.heads={heads}")
        fast = bool(hp.get("fast_kernels", True))
        self.d, self.fast = d, fast
        self.output_dropout = float(hp["output_dropout"])
        kernels = {m: int(hp["kernel_by_modality"].get(m, hp["kernel"])) for m in self.nodes}
        self.kernels = {m: max(1, min(kernels[m], int(seq_lens[m]))) for m in self.nodes}  # kernel <= T
        self.seq_lens = {m: int(seq_lens[m]) for m in self.nodes}
        self.steps = {m: self.seq_lens[m] - self.kernels[m] + 1 for m in self.nodes}  # T'_m
        self.input_dropout = {m: float(hp["input_dropout_by_modality"].get(m, 0.0)) for m in self.nodes}
        attn_drop = {m: float(hp["attn_dropout_by_modality"].get(m, hp["attn_dropout"])) for m in self.nodes}

        def encoders(specs, dim, n_layers):
            """Encoders grouped by shape (query and key lengths) into stacked groups: {key: (group, member)}."""
            by_shape: dict = {}
            for key, shape, p in specs:
                by_shape.setdefault(shape, []).append((key, p))
            groups, slots = nn.ModuleDict(), {}
            for g, members in enumerate(by_shape.values()):
                groups[f"g{g}"] = MulTEncoderGroup(
                    len(members), dim, heads, n_layers, [p for _, p in members], float(hp["relu_dropout"]),
                    float(hp["res_dropout"]), float(hp["embed_dropout"]), bool(hp["causal_mask"]), fast)
                slots.update({key: (f"g{g}", e) for e, (key, _) in enumerate(members)})
            return groups, slots

        conv = functools.partial(nn.Conv1d, padding=0, bias=False)
        # With a text encoder (BERT, docs/fidelity.md#dmd-bert) the text projection takes its hidden states.
        in_dims = {m: text_encoder.hidden_size if (m == TEXT and text_encoder is not None) else modalities[m]
                   for m in self.nodes}
        self.proj = nn.ModuleDict({m: conv(in_dims[m], d, self.kernels[m]) for m in self.nodes})
        self.private_enc = nn.ModuleDict({m: conv(d, d, 1) for m in self.nodes})
        self.shared_enc = conv(d, d, 1)
        self.decoder = nn.ModuleDict({m: conv(2 * d, d, 1) for m in self.nodes})
        self.align = nn.ModuleDict({m: nn.Linear(d * self.steps[m], d) for m in self.nodes})
        self.homo_head = nn.ModuleDict({m: ResidualHead(d * self.steps[m], d, self.n_out, self.output_dropout, fast)
                                        for m in self.nodes})
        self.self_attn, self.self_slots = encoders([(m, self.steps[m], attn_drop[m]) for m in self.predictors], d, layers)
        P = len(self.predictors)
        self.homo_fusion = ResidualHead(P * d, P * d, self.n_out, self.output_dropout, fast)
        # Heterogeneous branch: sources per target node (see the module docstring for the privileged rule).
        self.sources = {m: self._sources(m) for m in self.nodes}
        # attention dropout follows the SOURCE modality (MulT's self_type naming)
        self.cross, self.cross_slots = encoders([((m, i), (self.steps[m], self.steps[s]), attn_drop[s])
                                                 for m in self.nodes for i, s in enumerate(self.sources[m])], d, layers)
        wide = (M - 1) * d
        self.memory, self.memory_slots = encoders([(m, self.steps[m], float(hp["attn_dropout"])) for m in self.nodes],
                                                  wide, max(layers, 3))
        self.het_head = nn.ModuleDict({m: ResidualHead(wide, wide, self.n_out, self.output_dropout, fast)
                                       for m in self.nodes})
        self.gate = nn.ModuleDict({m: nn.Linear(wide, wide) for m in self.predictors})
        self.gate_c = nn.Linear(P * d, P * d)
        z = P * wide + P * d  # 9d in the paper's 3-node case
        self.fusion = ResidualHead(z, z, self.n_out, self.output_dropout, fast)
        self.text_encoder = text_encoder  # registered last: the other layers' init is that of the frozen-text net

    def _sources(self, m: str) -> list[str]:
        others = [s for s in self.nodes if s != m]
        if m in self.predictors and set(self.predictors) != set(self.nodes):
            # A student node attends to student modalities only: the others, then itself, cycled to M-1.
            pool = [s for s in self.predictors if s != m] + [m]
            return [pool[i % len(pool)] for i in range(len(others))]
        return others

    @staticmethod
    def run_encoders(groups: nn.ModuleDict, slots: dict, keys, query, source=None, last_only: bool = False) -> dict:
        """Run the encoders `keys` (stacked by group, only the members asked for); query(key) / source(key)
        give each encoder's [B, T, D] inputs. Returns {key: output}."""
        by_group: dict = {}
        for key in keys:
            g, e = slots[key]
            by_group.setdefault(g, []).append((e, key))
        out = {}
        for g, members in by_group.items():
            members.sort(key=lambda t: t[0])
            x = torch.stack([query(k) for _, k in members])
            src = None if source is None else torch.stack([source(k) for _, k in members])
            y = groups[g](x, src, last_only=last_only, members=[e for e, _ in members])
            out.update({k: y[i] for i, (_, k) in enumerate(members)})
        return out

    # --- per-modality encodings --------------------------------------------------------------
    def _decouple(self, m: str, x: torch.Tensor):
        if m == TEXT and self.text_encoder is not None:
            x = self.text_encoder(x)  # tokens [B, L, 3] -> last hidden states [B, L, H], the official text input
        if x.dim() == 2:
            x = x[:, None, :]
        if x.shape[1] != self.seq_lens[m]:  # pad with zero frames (no position) or cut at the end
            t = self.seq_lens[m]
            x = F.pad(x, (0, 0, 0, t - x.shape[1])) if x.shape[1] < t else x[:, :t]
        x = dropout(x.transpose(1, 2), self.input_dropout[m], self.training, self.fast)  # [B, D, T]
        proj = self.proj[m](x)
        private = self.private_enc[m](proj)
        shared = self.shared_enc(proj)
        return proj, private, shared

    def _hetero(self, nodes, private_seq: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Last step of each node's memory encoder over its concatenated cross-modal encodings."""
        keys = [(m, i) for m in nodes for i in range(len(self.sources[m]))]
        cross = self.run_encoders(self.cross, self.cross_slots, keys, lambda k: private_seq[k[0]],
                                  lambda k: private_seq[self.sources[k[0]][k[1]]])
        memory_in = {m: torch.cat([cross[(m, i)] for i in range(len(self.sources[m]))], dim=-1) for m in nodes}
        return self.run_encoders(self.memory, self.memory_slots, nodes, memory_in.__getitem__, last_only=True)

    def _fuse(self, c_last: dict[str, torch.Tensor], h_last: dict[str, torch.Tensor]):
        c = torch.cat([c_last[m] for m in self.predictors], dim=-1)
        _, _, out_c = self.homo_fusion(c)
        z = torch.cat([torch.sigmoid(self.gate[m](h_last[m])) for m in self.predictors]
                      + [torch.sigmoid(self.gate_c(c))], dim=-1)
        _, _, out = self.fusion(z)
        return out, out_c

    def forward(self, inputs: dict[str, torch.Tensor], full: bool = True) -> DMDOutput:
        """full=True: every node and every output the losses need (training, all modalities).
        full=False: only the predicting nodes' paths, reading only their inputs (prediction)."""
        nodes = self.nodes if full else self.predictors
        needed = set(nodes) | {s for m in nodes for s in self.sources[m]}
        missing = sorted(needed - set(inputs))
        if missing:
            raise KeyError(f"DMD needs modalities {missing} here; the batch has {list(inputs)}")
        proj, private, shared = {}, {}, {}
        for m in (n for n in self.nodes if n in needed):
            proj[m], private[m], shared[m] = self._decouple(m, inputs[m])
        private_seq = {m: v.transpose(1, 2) for m, v in private.items()}  # [B, T', d]
        c_last = self.run_encoders(self.self_attn, self.self_slots, self.predictors,
                                   lambda m: shared[m].transpose(1, 2), last_only=True)
        h_last = self._hetero(nodes, private_seq)
        out, out_c = self._fuse(c_last, h_last)
        if not full:
            return DMDOutput(out=out)
        B = out.shape[0]
        homo = [self.homo_head[m](shared[m].transpose(1, 2).reshape(B, -1)) for m in self.nodes]  # time-major
        het = [self.het_head[m](h_last[m]) for m in self.nodes]
        recon = {m: self.decoder[m](torch.cat([private[m], shared[m]], dim=1)) for m in self.nodes}
        return DMDOutput(
            out=out, out_c=out_c,
            homo_logits=torch.stack([h[2] for h in homo]), homo_reprs=torch.stack([h[0] for h in homo]),
            het_logits=torch.stack([h[2] for h in het]), het_reprs=torch.stack([h[1] for h in het]),
            proj=proj, recon=recon, private=private, shared=shared,
            private_cycle={m: self.private_enc[m](recon[m]) for m in self.nodes},
            align=torch.stack([self.align[m](shared[m].reshape(B, -1)) for m in self.nodes], dim=1))
