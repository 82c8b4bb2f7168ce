"""ms per DMD training step (forward + backward + value clipping + Adam step) on MOSI/MOSEI shapes.

    python benchmarks/bench_dmd_step.py [--threads 1] [--reps 6] [--shapes mosi,mosei,mosi_unaligned]
                                        [--official DIR] [--no-reference]
    python benchmarks/bench_dmd_step.py --text-encoder bert [--bert-config base|tiny] [--shapes mosi] [--reps 3]

Every shape is timed for two variants of the same model, interleaved step by step so both see the same
machine load (this CPU is shared by several agents):
- `fast`      : methods/dmd/ as configured (fast_kernels=true): encoders of one shape run as one stacked
                group, the last layer of a last-step readout computes that step only, attention in blocks
                of 16 query steps that skip the causally masked keys, the attention products with their
                gradients in the fast orientation, dropout masks from 16-bit slices of PCG64 words;
                both variants step the method's own optimizer (fused Adam);
- `reference` : the same network with plain kernels (fast_kernels=false): F.dropout everywhere and bmm +
                mask add, i.e. the op structure of the official MulT/DMD code, our unoptimised variant.
- `official`  (optional, `--official DIR`): the official mdswyz/DMD model and training step, adapted to run
                here, as a module `official_step.py` in DIR exposing make_official_step(dims, lens, batch,
                preset) -> (step_fn, n_params). It is not part of this repository (the official code stays
                out of it): build it from the official model, transformer, GD-unit, HingeLoss and DMD.py files
                with only these changes: no BERT (the 768-d features take the official use_bert=false path),
                no .cuda(), the hard-coded sequence lengths taken from `lens`, the 3-D CosineEmbeddingLoss of
                L_ort (it raises on current torch) replaced by an op-for-op copy of torch 1.9's version, and
                Adam stepped every batch; F.dropout, its MultiheadAttention, the HingeLoss loop and the dead
                proj_cosine layers stay as they are (4.74 M parameters at MOSI aligned sizes). Get the
                official code with `git clone https://github.com/mdswyz/DMD DIR` (516d4e1, docs/fidelity.md);
                official_step.py can import the model, GD units, HingeLoss and MSE from DIR's `trains` package
                as they are, if it stubs the two modules that path imports but never calls (pynvml, from
                trains/utils/functions.py, and trains/subNets/BertTextEncoder, which needs transformers) and
                makes Tensor.cuda / Module.cuda the identity; the step's body is do_train's batch loop.
The ratios fast/reference and fast/official are the figures that do not depend on the load. Reported per variant: median
wall ms and median CPU ms (process time, all threads) per step, parameter counts (the DMD network without
and with the official code's dead `proj_cosine_*` layers, which we omit, and the two GD units). The issue's
reference point: the official model at MOSI aligned sizes, 4.74 M parameters, ~470 ms a step on this CPU.
Batch 16, text = precomputed 768-d BERT features (no BERT), MOSI defaults (d 50, heads 10, 4 layers,
kernels 5) and the MOSEI preset (d 30, heads 6, kernels 5/1/3).

`--text-encoder bert` times DMD with fine-tuned text (method.text_encoder=bert, the paper's DMD*) against
today's frozen-text step instead, both with the fast kernels, interleaved the same way: the text input is
50 token rows (ids, mask, segments; random ids, random lengths) through a randomly initialised BERT
(nothing is downloaded) whose parameters sit in their own Adam group at method.bert_lr. `--bert-config base`
is bert-base-uncased's shape (BertConfig() defaults: 12 layers, 768 wide, 109 M parameters), `tiny` the
tests' 1-layer, 16-wide BERT. Reported: median wall and CPU ms per step of each and the ratio bert/frozen.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from omegaconf import OmegaConf
from tabulate import tabulate

from benchmarks._interleave import interleaved
from harness.allocator import tune_allocator
from harness.data import TargetSpec
from methods.dmd import DMDLoss, build_dmd, count_parameters, make_optimizer, resolve_hparams
from methods.dmd.bert import TOKEN_DIM, BertTextEncoder

CONF = Path(__file__).resolve().parents[1] / "harness" / "conf" / "method" / "dmd.yaml"
SHAPES = {  # name: (preset task, dims, lengths)
    "mosi": ("mosi", {"text": 768, "audio": 5, "vision": 20}, {"text": 50, "audio": 50, "vision": 50}),
    "mosi_unaligned": ("mosi", {"text": 768, "audio": 5, "vision": 20}, {"text": 50, "audio": 375, "vision": 500}),
    "mosei": ("mosei", {"text": 768, "audio": 74, "vision": 35}, {"text": 50, "audio": 50, "vision": 50}),
    "mosei_unaligned": ("mosei", {"text": 768, "audio": 74, "vision": 35}, {"text": 50, "audio": 500, "vision": 500}),
}


def dead_proj_cosine(net) -> int:
    """Parameters of the official code's unused proj_cosine_* layers (Linear(d·T' -> d) per modality)."""
    return sum(net.d * net.steps[m] * net.d + net.d for m in net.nodes)


def bert_config(size: str):
    from transformers import BertConfig

    if size == "base":
        return BertConfig()  # bert-base-uncased's shape, random weights
    return BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=64)  # tests/test_dmd_bert.py's


def token_rows(batch: int, length: int, gen: torch.Generator) -> torch.Tensor:
    """[B, L, 3] as mosi/mosei deliver text_bert with task.text_input=bert: [CLS] ids [SEP] then padding."""
    lengths = torch.randint(10, length + 1, (batch,), generator=gen)
    valid = torch.arange(length)[None] < lengths[:, None]
    ids = torch.where(valid, torch.randint(1000, 30000, (batch, length), generator=gen), 0)
    ids[:, 0] = 101
    ids[torch.arange(batch), lengths - 1] = 102
    return torch.stack([ids, valid.long(), torch.zeros_like(ids)], dim=-1).float()


def make_step(task: str, dims: dict, lens: dict, fast: bool, batch: int = 16, bert: str | None = None):
    """bert: None (the task's text features) or the BERT config's name (text tokens through a fine-tuned BERT)."""
    hp = resolve_hparams(OmegaConf.load(CONF), task)
    hp["fast_kernels"] = fast
    encoder = None
    if bert is not None:
        with torch.random.fork_rng(devices=[]):  # as the method: the DMD layers start as with frozen text
            encoder = BertTextEncoder.from_config(bert_config(bert))
        dims = {**dims, "text": TOKEN_DIM}
    net, homo, het, _ = build_dmd(dims, lens, TargetSpec("regression", ("sentiment",)), hp, tuple(dims),
                                  text_encoder=encoder)
    loss_fn = DMDLoss(net, homo, het, hp["loss"])
    params = list(net.parameters()) + list(homo.parameters()) + list(het.parameters())
    groups = params
    if encoder is not None:  # the method's groups (methods/dmd/method.py parameter_groups)
        own = {id(p) for p in encoder.parameters()}
        groups = [{"params": [p for p in params if id(p) not in own]},
                  {"params": list(encoder.parameters()), "lr": float(hp["bert_lr"]),
                   "weight_decay": float(hp["bert_weight_decay"])}]
    opt = make_optimizer(groups, hp["training"])  # the method's own optimizer (fused Adam, lr 1e-4)
    gen = torch.Generator().manual_seed(0)
    x = {m: torch.randn(batch, lens[m], d, generator=gen) for m, d in dims.items()}
    if encoder is not None:
        x["text"] = token_rows(batch, lens["text"], gen)
    y = torch.randn(batch, 1, generator=gen).clamp(-3, 3)
    for mod in (net, homo, het):
        mod.train()

    def step():
        opt.zero_grad(set_to_none=True)
        loss, _, _, _ = loss_fn(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_value_(params, 0.6)
        opt.step()  # Adam every batch, as the reference measurement

    sizes = {"net": count_parameters(net), "dead": dead_proj_cosine(net), "gd": count_parameters(homo) + count_parameters(het),
             "bert": 0 if encoder is None else count_parameters(encoder)}
    return step, sizes


def timed(fn) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return (time.perf_counter() - w) * 1e3, (time.process_time() - c) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--shapes", default="mosi,mosei,mosi_unaligned")
    ap.add_argument("--official", default=None, help="directory holding official_step.py (see the docstring)")
    ap.add_argument("--no-reference", action="store_true",
                    help="skip our plain-kernel variant (unaligned shapes: it and the official step together "
                         "need about 20 GB)")
    ap.add_argument("--text-encoder", choices=("frozen", "bert"), default="frozen",
                    help="bert: time DMD with fine-tuned text against the frozen-text step (see the docstring)")
    ap.add_argument("--bert-config", choices=("base", "tiny"), default="base")
    args = ap.parse_args()
    malloc = tune_allocator()  # as harness.runner.execute: every variant, the official included, runs with it
    if args.text_encoder == "bert":
        return compare_text_encoders(args)
    make_official = None
    if args.official:
        sys.path.insert(0, args.official)
        from official_step import make_official_step as make_official
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_before = os.getloadavg()
    rows, base = [], None
    for name in args.shapes.split(","):
        task, dims, lens = SHAPES[name]
        steps = {}
        for variant, fast in (("fast", True), ("reference", False))[:1 if args.no_reference else 2]:
            steps[variant], sizes = make_step(task, dims, lens, fast)
        if make_official is not None:
            steps["official"], sizes["official"] = make_official(dims, lens, 16, task)
        times = interleaved(steps, args.warmup, args.reps, timed)
        med = {v: (statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts)) for v, ts in times.items()}
        if name == "mosi":
            base = med["fast"][1]
        off, ref = med.get("official"), med.get("reference")
        params = (f"{sizes['net'] / 1e6:.3f} M (+{sizes['dead'] / 1e6:.2f} M dead = "
                  f"{(sizes['net'] + sizes['dead']) / 1e6:.2f} M)")
        rows.append([name, params, f"{sizes['gd'] / 1e3:.1f} k",
                     f"{med['fast'][0]:.0f}", f"{med['fast'][1]:.0f}", "-" if ref is None else f"{ref[0]:.0f}",
                     "-" if ref is None else f"{ref[1]:.0f}", "-" if ref is None else f"{med['fast'][1] / ref[1]:.2f}",
                     "-" if off is None else f"{off[0]:.0f} ({sizes['official'] / 1e6:.2f} M)",
                     "-" if off is None else f"{med['fast'][0] / off[0]:.2f}",
                     f"{med['fast'][1] / base:.2f}" if base else "-"])
        print(f"done {name}", file=sys.stderr, flush=True)
    print(f"DMD training step, batch 16, torch {torch.__version__}, {args.threads} thread(s), {args.reps} reps "
          f"(medians); load average before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; "
          f"malloc: {malloc} (harness/allocator.py, every variant)")
    print(tabulate(rows, headers=["shape", "DMD params (ours + official dead layers)", "GD units", "fast wall ms",
                                  "fast CPU ms", "ref wall ms", "ref CPU ms", "fast/ref (CPU)", "official wall ms (params)",
                                  "fast/official (wall)", "vs MOSI fast (CPU)"],
                   tablefmt="github"))
    print("Issue's figure: official DMD at MOSI aligned sizes (4.74 M parameters, Adam every batch) ~470 ms/step on "
          "this CPU, target < half. CPU ms = process time summed over threads; medians of interleaved steps.")


def compare_text_encoders(args) -> None:
    """Frozen text vs BERT fine-tuned on the tokens, fast kernels, interleaved steps."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_before = os.getloadavg()
    rows = []
    for name in args.shapes.split(","):
        task, dims, lens = SHAPES[name]
        steps, sizes = {}, {}
        steps["frozen"], sizes["frozen"] = make_step(task, dims, lens, True)
        steps["bert"], sizes["bert"] = make_step(task, dims, lens, True, bert=args.bert_config)
        for _ in range(args.warmup):
            for s in steps.values():
                s()
        times = {v: [] for v in steps}
        for _ in range(args.reps):
            for v, s in steps.items():
                times[v].append(timed(s))
        med = {v: (statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts)) for v, ts in times.items()}
        rows.append([name, f"{sizes['frozen']['net'] / 1e6:.2f} M",
                     f"{(sizes['bert']['net'] - sizes['bert']['bert']) / 1e6:.2f} M + BERT {sizes['bert']['bert'] / 1e6:.2f} M",
                     f"{med['frozen'][0]:.0f}", f"{med['frozen'][1]:.0f}", f"{med['bert'][0]:.0f}",
                     f"{med['bert'][1]:.0f}", f"{med['bert'][0] / med['frozen'][0]:.1f}",
                     f"{med['bert'][1] / med['frozen'][1]:.1f}"])
        print(f"done {name}", file=sys.stderr, flush=True)
    print(f"DMD training step, frozen text vs BERT ({args.bert_config} config, random init) fine-tuned, batch 16, "
          f"fast kernels, torch {torch.__version__}, {args.threads} thread(s), {args.reps} reps (medians); load "
          f"average before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(tabulate(rows, headers=["shape", "frozen params", "bert params", "frozen wall ms", "frozen CPU ms",
                                  "bert wall ms", "bert CPU ms", "bert/frozen (wall)", "bert/frozen (CPU)"],
                   tablefmt="github", disable_numparse=True))


if __name__ == "__main__":
    main()
