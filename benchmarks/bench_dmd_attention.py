"""DMD's attention kernels against torch's fused scaled_dot_product_attention, forward + backward of one
stacked attention block (why methods/dmd keeps its own kernels).

    PYTHONPATH=. python benchmarks/bench_dmd_attention.py [--threads 1] [--repeats 20]

One StackedEncoderLayer.attention call at MOSI aligned sizes (6 cross-modal encoders stacked, batch 16, 46
steps after the kernel-5 projection, width 50, 10 heads of 5, causal mask, attention dropout 0.1), its
packed in-projection and out-projection included, the summed output back-propagated:
- `dmd`: methods/dmd as configured (blocks of 16 query steps that skip the masked keys, products in the fast
  orientation, PCG64 dropout masks);
- `sdpa mask`: the same projections around F.scaled_dot_product_attention with DMD's additive causal mask;
- `sdpa causal`: the same with is_causal=True (the diagonal offset is 0 here, so the same mask).
Both sdpa variants draw their dropout from torch's generator (the same distribution, another stream). Reported:
median wall ms of interleaved steps and each variant's ratio to `dmd`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F
from tabulate import tabulate

from benchmarks._interleave import interleaved
from methods.dmd.kernels import causal_mask
from methods.dmd.network import StackedEncoderLayer

MEMBERS, BATCH, STEPS, WIDTH, HEADS, P_ATTN = 6, 16, 46, 50, 10, 0.1


def make_steps() -> dict:
    layer = StackedEncoderLayer(MEMBERS, WIDTH, HEADS).train()
    x = torch.randn(MEMBERS, BATCH, STEPS, WIDTH, requires_grad=True)
    mask = causal_mask(STEPS, STEPS, x.device)

    def dmd():
        layer.attention(x, x, x, mask, None, [P_ATTN] * MEMBERS, False).sum().backward()

    def sdpa(causal: bool):
        def step():
            qkv = torch.baddbmm(layer.in_b.unsqueeze(1), x.reshape(MEMBERS, BATCH * STEPS, WIDTH),
                                layer.in_w.transpose(1, 2))
            heads = [t.reshape(MEMBERS * BATCH, STEPS, HEADS, WIDTH // HEADS).transpose(1, 2)
                     for t in qkv.view(MEMBERS, BATCH, STEPS, 3 * WIDTH).chunk(3, dim=-1)]
            out = F.scaled_dot_product_attention(*heads, attn_mask=None if causal else mask, dropout_p=P_ATTN,
                                                 is_causal=causal)
            out = out.transpose(1, 2).reshape(MEMBERS, BATCH * STEPS, WIDTH)
            torch.baddbmm(layer.out_b.unsqueeze(1), out, layer.out_w.transpose(1, 2)).sum().backward()
        return step

    return {"dmd": dmd, "sdpa mask": sdpa(False), "sdpa causal": sdpa(True)}


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    times = interleaved(make_steps(), warmup=3, repeats=args.repeats, timed=timed)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    rows = [[name, f"{ms:.1f}", f"{ms / med['dmd']:.2f}"] for name, ms in med.items()]
    print(f"DMD attention block, forward + backward, MOSI aligned sizes ({MEMBERS} encoders x batch {BATCH}, "
          f"{STEPS} steps, {HEADS} heads of {WIDTH // HEADS}), torch {torch.__version__}, {args.threads} thread(s), "
          f"medians of {args.repeats} interleaved steps")
    print(tabulate(rows, headers=["variant", "wall ms", "/ dmd"], tablefmt="github", disable_numparse=True))


if __name__ == "__main__":
    main()
