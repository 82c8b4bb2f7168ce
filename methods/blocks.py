"""Network blocks every method builds on, so that methods differ only in what they distil.

MultimodalNet = one encoder per modality -> GatedFusion of the modality features -> Head.
`encoder` (config `model.encoder`) chooses the encoders: temporal (TemporalEncoder, sequences [N, T, D] or
vectors [N, D]), mlp (one hidden layer, vectors only) or linear (vectors only: the net's logits are the sum of
one affine map per modality, no fusion and no head, so a one-modality net is exactly logistic regression).
Its pieces are exposed (`encode`, `fuse`, `head`) so a method can, e.g., put hallucinated privileged
features into the fusion slot of a missing modality (PKDOT's T-Net).
`fusion` (config `model.fusion`) chooses the fusion: gated (GatedFusion, any number of modalities) or transformer
(PKDOT's official fusion transformer over two modalities, TransformerFusion; `model.batch_mixing` its B1 reading).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.data import TargetSpec


def masked_mean(seq: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Mean over time of [N, T, H], counting only the first lengths[n] steps."""
    if lengths is None:
        return seq.mean(dim=1)
    steps = torch.arange(seq.shape[1], device=seq.device)
    mask = (steps[None, :] < lengths[:, None]).to(seq.dtype)
    return (seq * mask[..., None]).sum(1) / mask.sum(1).clamp(min=1)[:, None]


class TemporalEncoder(nn.Module):
    """[N, T, D] (or [N, D]) -> per-step features [N, T, H] and a pooled summary [N, H].

    A linear projection, then residual depthwise-separable temporal convolutions (cheap on a CPU,
    enough receptive field for short windows); mean pooling over the valid steps.
    """

    def __init__(self, in_dim: int, hidden: int, layers: int = 2, kernel: int = 5, dropout: float = 0.1):
        super().__init__()
        self.norm_in = nn.LayerNorm(in_dim)
        self.proj = nn.Linear(in_dim, hidden)
        self.convs = nn.ModuleList(
            nn.Sequential(nn.Conv1d(hidden, hidden, kernel, padding=kernel // 2, groups=hidden),
                          nn.Conv1d(hidden, hidden, 1), nn.GELU())
            for _ in range(layers))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(layers))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() == 2:
            x = x[:, None, :]
        h = self.drop(self.proj(self.norm_in(x)))
        for conv, norm in zip(self.convs, self.norms):
            h = norm(h + self.drop(separable_conv_steps(h, conv)))
        return h, masked_mean(h, lengths)


def separable_conv_steps(h: torch.Tensor, block: nn.Sequential) -> torch.Tensor:
    """TemporalEncoder's conv block (depthwise Conv1d, pointwise Conv1d, GELU) on [N, T, H], time-major.

    The same function as `block(h.transpose(1, 2)).transpose(1, 2)`, computed without Conv1d: on a CPU the
    (mkldnn) depthwise and 1×1 convolutions and their backward cost several times a matmul of the same size
    (e.g. 3.4× at N = 128, T = 1, H = 976; tests/test_pkdot.py checks the two agree). The depthwise
    convolution is a sum of k shifted copies of h, each scaled per channel (zero padding: with T = 1 only the
    centre tap sees data); the pointwise one is a Linear.
    """
    depthwise, pointwise, act = block
    weight = depthwise.weight[:, 0, :]  # [H, k]
    k, T = weight.shape[1], h.shape[1]
    pad = depthwise.padding[0]
    taps = [j for j in range(k) if pad - T < j < pad + T]  # the others see only padding: their terms are 0
    padded = F.pad(h, (0, 0, pad, pad)) if taps != [pad] else None
    out = depthwise.bias
    for j in taps:
        out = torch.addcmul(out, h if j == pad else padded[:, j:j + T], weight[:, j])
    return act(F.linear(out, pointwise.weight[:, :, 0], pointwise.bias))


class MLPEncoder(nn.Module):
    """A vector [N, D] -> one hidden layer [N, H] (Linear, ReLU, dropout); per-step features are [N, 1, H]."""

    def __init__(self, in_dim: int, hidden: int, dropout: float = 0.1):
        super().__init__()
        self.proj = nn.Linear(in_dim, hidden)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 2:
            raise ValueError(f"model.encoder=mlp takes vector inputs [N, D], got shape {tuple(x.shape)}")
        h = self.drop(torch.relu(self.proj(x)))
        return h[:, None, :], h


class LinearEncoder(nn.Module):
    """A vector [N, D] -> its affine contribution to the outputs, W x + b [N, n_outputs] (no hidden layer)."""

    def __init__(self, in_dim: int, n_outputs: int):
        super().__init__()
        self.linear = nn.Linear(in_dim, n_outputs)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 2:
            raise ValueError(f"model.encoder=linear takes vector inputs [N, D], got shape {tuple(x.shape)}")
        h = self.linear(x)
        return h[:, None, :], h


ENCODERS = ("temporal", "linear", "mlp")


class GatedFusion(nn.Module):
    """Fuse M modality features [..., H] into one joint feature z [..., H].

    Each modality gets a sigmoid gate from the concatenation (so the net can down-weight an
    uninformative or hallucinated modality), then a projection of the gated concatenation.
    Works on pooled [N, H] and per-step [N, T, H] features alike.
    """

    def __init__(self, slots: tuple[str, ...], hidden: int, dropout: float = 0.1):
        super().__init__()
        self.slots = tuple(slots)
        width = hidden * len(self.slots)
        self.gate = nn.Linear(width, len(self.slots))
        self.out = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, hidden))

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        missing = [s for s in self.slots if s not in feats]
        if missing:
            raise KeyError(f"fusion needs features for {missing}; got {list(feats)}")
        cat = torch.cat([feats[s] for s in self.slots], dim=-1)
        g = torch.sigmoid(self.gate(cat))
        gated = torch.cat([feats[s] * g[..., i:i + 1] for i, s in enumerate(self.slots)], dim=-1)
        return self.out(gated)


class AttentionBlock(nn.Module):
    """One token per sample: x <- LN(x + MHA(x, x, x)); x <- LN(x + FFN(x)), FFN = Linear-ReLU-Linear (the
    official PKDOT fusion's per-modality encoder, methods/blocks.py TransformerFusion)."""

    def __init__(self, dim: int, heads: int, ffn_width: int):
        super().__init__()
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_width), nn.ReLU(), nn.Linear(ffn_width, dim))
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, batch_mixing: bool) -> torch.Tensor:
        """x [N, H]. batch_mixing: the N samples are the one sequence the attention runs over (the official
        reading, B1); otherwise each sample is a sequence of one token (attention = its value projection)."""
        tokens = x[None] if batch_mixing else x[:, None]
        attended = self.attention(tokens, tokens, tokens, need_weights=False)[0]
        x = self.norm1(x + (attended[0] if batch_mixing else attended[:, 0]))
        return self.norm2(x + self.ffn(x))


class TransformerFusion(nn.Module):
    """PKDOT's official fusion (docs/fidelity.md#pkdot-model), for exactly two slots a (the official visual
    slot) and b (the physiological one), each one pooled feature [N, H] per sample:
    self-attention block per slot; cross-attention c_a = MHA(query=b, key=a, value=a), c_b = MHA(query=a, key=b,
    value=b), one token per sample; a sigmoid gate g = σ(W [c_a; c_b] + w0) per sample; z = g·c_a + (1 − g)·c_b.
    `batch_mixing`: the official self-attention over the samples of a batch (B1: predictions then depend on
    which samples share the batch); false (default) = the fixed per-sample reading. The cross-attention is per
    sample in both readings, as in the official code. Parity with the official module: tests/test_parity_pkdot.py.
    """

    def __init__(self, slots: tuple[str, ...], hidden: int, heads: int = 2, batch_mixing: bool = False):
        super().__init__()
        if len(slots) != 2:
            raise ValueError(f"model.fusion=transformer fuses exactly two modalities (the official visual and "
                             f"physiological slots), got {len(slots)}: {', '.join(slots)}; use model.fusion=gated")
        if hidden % heads:
            raise ValueError(f"model.fusion=transformer: model.hidden={hidden} must be divisible by its {heads} heads")
        self.slots = tuple(slots)
        self.batch_mixing = bool(batch_mixing)
        self.blocks = nn.ModuleDict({s: AttentionBlock(hidden, heads, hidden) for s in self.slots})
        self.cross = nn.ModuleDict({s: nn.MultiheadAttention(hidden, heads, batch_first=True) for s in self.slots})
        self.gate = nn.Linear(2 * hidden, 1)

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        missing = [s for s in self.slots if s not in feats]
        if missing:
            raise KeyError(f"fusion needs features for {missing}; got {list(feats)}")
        a_name, b_name = self.slots
        a = self.blocks[a_name](feats[a_name], self.batch_mixing)[:, None]  # [N, 1, H]: one token per sample
        b = self.blocks[b_name](feats[b_name], self.batch_mixing)[:, None]
        c_a = self.cross[a_name](b, a, a, need_weights=False)[0][:, 0]
        c_b = self.cross[b_name](a, b, b, need_weights=False)[0][:, 0]
        g = torch.sigmoid(self.gate(torch.cat([c_a, c_b], -1)))
        return g * c_a + (1 - g) * c_b


FUSIONS = ("gated", "transformer")


class Head(nn.Module):
    """Joint feature -> outputs: regression values [..., K] or class logits [..., K, C]."""

    def __init__(self, hidden: int, target: TargetSpec):
        super().__init__()
        self.target = target
        self.linear = nn.Linear(hidden, target.n_outputs)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.linear(z)
        if self.target.kind == "classification":
            out = out.unflatten(-1, (len(self.target.dims), self.target.n_classes))
        return out


@dataclass
class NetOutput:
    out: torch.Tensor  # regression [N, K] / [N, T, K]; logits [N, K, C] / [N, T, K, C]
    z: torch.Tensor  # pooled joint feature [N, H], what structural distillation compares
    z_seq: torch.Tensor | None  # per-step joint feature [N, T, H] (per-step targets only)
    feats: dict[str, torch.Tensor]  # pooled per-modality features [N, H]


class MultimodalNet(nn.Module):
    """Encoders for `modalities`, a fusion over `slots` (defaults to the same modalities), a head.

    Slots without an encoder must be fed by the caller (e.g. hallucinated privileged features).
    encoder="linear": outputs = sum over modalities of W_m x_m + b_m (fusion and head bypassed; z = the logits
    flattened, so `hidden` is the number of outputs). encoder="mlp" with one modality: its hidden layer goes
    straight to the head (no fusion), i.e. a one-hidden-layer MLP; several modalities are fused as usual.
    """

    def __init__(self, modalities: dict[str, int], target: TargetSpec, hidden: int = 64, layers: int = 2,
                 kernel: int = 5, dropout: float = 0.1, slots: tuple[str, ...] | None = None,
                 encoder: str = "temporal", fusion: str = "gated", batch_mixing: bool = False):
        super().__init__()
        if encoder not in ENCODERS:
            raise ValueError(f"model.encoder={encoder!r}: choose one of {', '.join(ENCODERS)}")
        if fusion not in FUSIONS:
            raise ValueError(f"model.fusion={fusion!r}: choose one of {', '.join(FUSIONS)}")
        self.modalities = dict(modalities)
        self.target = target
        self.encoder = encoder
        slots = tuple(slots or self.modalities)
        if encoder == "linear":
            if target.per_step or set(slots) != set(self.modalities):
                raise ValueError("model.encoder=linear supports neither per-step targets nor injected (hallucinated) "
                                 "modality slots: use model.encoder=mlp or temporal")
            self.hidden = target.n_outputs
            self.encoders = nn.ModuleDict({m: LinearEncoder(d, target.n_outputs) for m, d in self.modalities.items()})
            return
        self.hidden = hidden
        if encoder == "mlp":
            self.encoders = nn.ModuleDict({m: MLPEncoder(d, hidden, dropout) for m, d in self.modalities.items()})
        else:
            self.encoders = nn.ModuleDict({m: TemporalEncoder(d, hidden, layers, kernel, dropout)
                                           for m, d in self.modalities.items()})
        if fusion == "transformer":
            if target.per_step:
                raise ValueError("model.fusion=transformer fuses one pooled feature per modality and sample; this "
                                 "task has per-step targets: use model.fusion=gated")
            # One slot (the official visual-only baseline: backbone feature -> linear classifier): no fusion.
            self.fusion = TransformerFusion(slots, hidden, batch_mixing=batch_mixing) if len(slots) > 1 else None
            self.head = Head(hidden, target)
            return
        # one-modality mlp: no fusion between the hidden layer and the head
        self.fusion = None if encoder == "mlp" and len(slots) == 1 and slots == tuple(self.modalities) \
            else GatedFusion(slots, hidden, dropout)
        self.head = Head(hidden, target)

    def encode(self, inputs: dict[str, torch.Tensor], lengths: dict[str, torch.Tensor] | None = None
               ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Per-step and pooled features of every modality this net has an encoder for."""
        lengths = lengths or {}
        seqs, pooled = {}, {}
        for m, enc in self.encoders.items():
            if m not in inputs:
                raise KeyError(f"network expects modality '{m}', batch has {list(inputs)}")
            seqs[m], pooled[m] = enc(inputs[m], lengths.get(m))
        return seqs, pooled

    def forward(self, inputs: dict[str, torch.Tensor], lengths: dict[str, torch.Tensor] | None = None,
                injected: dict[str, torch.Tensor] | None = None) -> NetOutput:
        seqs, pooled = self.encode(inputs, lengths)
        return self.fuse_and_predict(seqs, pooled, injected, lengths)

    def fuse_and_predict(self, seqs, pooled, injected=None, lengths=None) -> NetOutput:
        """Fuse pooled features (plus `injected` ones for empty slots) and predict.

        Per-step targets fuse per step (injected features are broadcast over time) and pool z.
        """
        injected = injected or {}
        if self.encoder == "linear":
            z = torch.stack([pooled[m] for m in self.modalities]).sum(0)
            out = z.unflatten(-1, (len(self.target.dims), self.target.n_classes)) \
                if self.target.kind == "classification" else z
            return NetOutput(out, z, None, pooled)
        if self.fusion is None:
            z = pooled[next(iter(self.modalities))]
            return NetOutput(self.head(z), z, None, pooled)
        if self.target.per_step:
            T = next(iter(seqs.values())).shape[1]
            step_feats = dict(seqs)
            for k, v in injected.items():
                step_feats[k] = v if v.dim() == 3 else v[:, None, :].expand(-1, T, -1)
            z_seq = self.fusion(step_feats)
            first_len = (lengths or {}).get(next(iter(seqs)))
            return NetOutput(self.head(z_seq), masked_mean(z_seq, first_len), z_seq, pooled)
        z = self.fusion({**pooled, **injected})
        return NetOutput(self.head(z), z, None, pooled)


def task_loss(out: torch.Tensor, targets: torch.Tensor, target: TargetSpec, mask: torch.Tensor | None = None,
              regression_loss: str = "mse") -> torch.Tensor:
    """Supervised loss: cross-entropy for classes, MSE (or 1 − CCC) for regression; masked steps ignored."""
    if target.kind == "classification":
        logits = out.reshape(-1, target.n_classes)
        y = targets.reshape(-1).long()
        if mask is not None:
            keep = mask.unsqueeze(-1).expand_as(targets).reshape(-1)
            logits, y = logits[keep], y[keep]
        return F.cross_entropy(logits, y)
    pred, y = out, targets
    if mask is not None:
        pred, y = pred[mask], y[mask]
    if regression_loss == "ccc":
        return 1 - ccc_torch(pred, y).mean()
    if regression_loss != "mse":
        raise ValueError(f"regression_loss must be mse or ccc, got {regression_loss!r}")
    return F.mse_loss(pred, y)


def ccc_torch(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CCC per output column of [M, K] tensors (population moments), differentiable."""
    pm, ym = pred.mean(0), y.mean(0)
    cov = ((pred - pm) * (y - ym)).mean(0)
    return 2 * cov / (pred.var(0, unbiased=False) + y.var(0, unbiased=False) + (pm - ym) ** 2 + 1e-8)
