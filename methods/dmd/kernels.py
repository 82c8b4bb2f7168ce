"""DMD's compute kernels: dropout masks, positions, causal masks, stacked-parameter products, attention.

Speed (benchmarks/bench_dmd_step.py): encoders of one shape run as one stacked batch (network.py), the
final layer of an encoder read at its last step computes that step only, attention runs in blocks of 16
query steps that skip the causally masked keys, its two batched products take their gradients in the
fast orientation (_AttentionScores, _WeightedValues), and dropout masks come from 16-bit slices of PCG64
words seeded from torch's generator. `fast_kernels=false` runs every encoder on its own with the plain
kernels (F.dropout, bmm + mask): the same function (tested), the reference.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


_PCG = np.random.PCG64(0)  # its state is set from torch's generator at every call (see _random_words)


def _random_words(n: int, device: torch.device) -> torch.Tensor:
    """n random int64 words. On the CPU from numpy's PCG64 (about 4x faster than torch's mt19937 here), its
    128-bit state drawn from torch's generator at each call: reproducible under torch.manual_seed."""
    if device.type != "cpu":
        return torch.randint(-2**63, 2**63 - 1, (n,), dtype=torch.int64, device=device)
    hi, lo = (w % 2**64 for w in torch.randint(-2**63, 2**63 - 1, (2,), dtype=torch.int64).tolist())
    _PCG.state = {"bit_generator": "PCG64", "state": {"state": (hi << 64) | lo, "inc": 0xDA3E39CB94B95BDB},
                  "has_uint32": 0, "uinteger": 0}
    return torch.from_numpy(_PCG.random_raw(n).view(np.int64))


def keep_mask(shape: torch.Size | tuple, p, device, dtype=torch.float32) -> torch.Tensor:
    """0/1 dropout mask with P(keep) = 1 - p, from 16-bit random draws (four per 64-bit word).

    p: a float, or a list of one probability per row of the leading axis (stacked encoders, each with its
    own attention dropout). p is quantised to 1/65536 (0.3 -> 0.300003). On this CPU the mask costs about a
    fifth of F.dropout's bernoulli, which dominates attention dropout at head dim 5 (the official code
    spends ~30 % of a step there)."""
    ps = [float(p)] if isinstance(p, (int, float)) else [float(v) for v in p]
    if any(not 0.0 <= v < 1.0 for v in ps):
        raise ValueError(f"dropout probabilities must be in [0, 1), got {ps}")
    n = math.prod(shape)
    bits = _random_words((n + 3) // 4, torch.device(device)).view(torch.int16)[:n].view(len(ps), -1)
    thresholds = torch.tensor([[-32768 + round(v * 65536)] for v in ps], dtype=torch.int16, device=device)
    return torch.ge(bits, thresholds, out=torch.empty(bits.shape, dtype=dtype, device=device)).view(shape)


def dropout(x: torch.Tensor, p: float, training: bool, fast: bool = True) -> torch.Tensor:
    """Inverted dropout; the fast path draws its mask with keep_mask (same distribution, other stream)."""
    if not training or p <= 0.0:
        return x
    if not fast:
        return F.dropout(x, p, True)
    return x * keep_mask(x.shape, p, x.device, x.dtype).mul_(1.0 / (1.0 - p))


@functools.lru_cache(maxsize=64)
def sinusoidal_table(n_positions: int, dim: int) -> torch.Tensor:
    """fairseq/MulT sinusoidal table: row p = [sin(p·f), cos(p·f)] (halves concatenated), row 0 = 0."""
    half = dim // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / max(half - 1, 1)))
    angles = torch.arange(n_positions, dtype=torch.float32)[:, None] * freq[None, :]
    table = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if dim % 2:
        table = torch.cat([table, torch.zeros(n_positions, 1)], dim=1)
    table[0] = 0.0
    return table


@functools.lru_cache(maxsize=64)
def _causal_mask_cpu(tq: int, tk: int) -> torch.Tensor:
    return torch.full((tq, tk), float("-inf")).triu(1 + abs(tk - tq))


def causal_mask(tq: int, tk: int, device: torch.device) -> torch.Tensor:
    """Additive mask, -inf where key j > query i + |Tk - Tq| (MulT's buffered_future_mask)."""
    return _causal_mask_cpu(tq, tk).to(device)


def _stacked(n: int, *shape: int, init: str = "zeros") -> nn.Parameter:
    """One parameter per member on a leading axis; xavier_uniform per member, as each official layer."""
    p = torch.zeros(n, *shape) if init == "zeros" else torch.ones(n, *shape)
    if init == "xavier":
        for member in p:
            nn.init.xavier_uniform_(member)
    return nn.Parameter(p)


def _take(param: torch.Tensor, idx: torch.Tensor | slice | None) -> torch.Tensor:
    """The members `idx` of a stacked parameter: all (None), a view (slice) or a gathered copy (index)."""
    if idx is None:
        return param
    return param[idx] if isinstance(idx, slice) else param.index_select(0, idx)


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-member linear: x [E, B, T, Din], w [E, Dout, Din], b [E, Dout] -> [E, B, T, Dout]."""
    e, bsz, t, din = x.shape
    if e == 1:  # a lone encoder: the plain kernel
        return F.linear(x[0], w[0], b[0]).unsqueeze(0)
    return torch.baddbmm(b.unsqueeze(1), x.reshape(e, bsz * t, din), w.transpose(1, 2)).view(e, bsz, t, -1)


def _layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    e = x.shape[0]
    if e == 1:  # a lone encoder: the fused kernel with its affine
        return F.layer_norm(x, x.shape[-1:], w[0], b[0])
    shape = (e,) + (1,) * (x.dim() - 2) + (x.shape[-1],)
    return torch.addcmul(b.view(shape), F.layer_norm(x, x.shape[-1:]), w.view(shape))


class _AttentionScores(torch.autograd.Function):
    """q @ k^T per head, [N, Tq, hd] x [N, Tk, hd] -> [N, Tq, Tk], with gradients taken in the fast orientation.

    At DMD's head widths (hd = 5 or 10) a [T, T] @ [T, hd] batched product is 3-4x slower on the CPU than the
    same product transposed, [hd, T] @ [T, T] (measured with MKL: 2.0 vs 0.55 ms for 960 heads of 46 steps).
    Autograd's bmm backward takes the slow orientation for both gradients; this one computes their transposes."""

    @staticmethod
    def forward(ctx, q, k):
        ctx.save_for_backward(q, k)
        return torch.bmm(q, k.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad):
        q, k = ctx.saved_tensors
        gq = torch.bmm(k.transpose(1, 2), grad.transpose(1, 2)).transpose(1, 2) if ctx.needs_input_grad[0] else None
        gk = torch.bmm(q.transpose(1, 2), grad).transpose(1, 2) if ctx.needs_input_grad[1] else None
        return gq, gk


class _WeightedValues(torch.autograd.Function):
    """weights @ v, [N, Tq, Tk] x [N, Tk, hd] -> [N, Tq, hd], computed as (v^T weights^T)^T (see _AttentionScores)."""

    @staticmethod
    def forward(ctx, weights, v):
        ctx.save_for_backward(weights, v)
        return torch.bmm(v.transpose(1, 2), weights.transpose(1, 2)).transpose(1, 2)

    @staticmethod
    def backward(ctx, grad):
        weights, v = ctx.saved_tensors
        gw = torch.bmm(grad, v.transpose(1, 2)) if ctx.needs_input_grad[0] else None
        gv = torch.bmm(grad.transpose(1, 2), weights).transpose(1, 2) if ctx.needs_input_grad[1] else None
        return gw, gv


ATTENTION_ROW_BLOCK = 16  # query steps per attention block (see StackedEncoderLayer._attend_rows)


def _row_blocks(t: int, size: int = ATTENTION_ROW_BLOCK) -> list[tuple[int, int]]:
    return [(a, min(a + size, t)) for a in range(0, t, size)]


def attention_scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return _AttentionScores.apply(q, k)


def weighted_values(weights: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return _WeightedValues.apply(weights, v)
