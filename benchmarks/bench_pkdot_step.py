"""Cost of one PKDOT training step, against a kd step and (with --official) the official PKDOT step.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_pkdot_step.py [--official DIR] [--threads 1 2]
        [--hidden 512 976] [--sizes 128] [--repeats 20]

Our steps run on cached features (the official PKDOT student trains only its fusion on frozen 512-d backbone
features, docs/fidelity.md#pkdot-model): one time step per modality (visual, physio), binary classes, the
harness's optimizer (train.optimizer=adamw, lr 0.002, torch's default implementation, as `fit` builds it).
- `pkdot`: the method's own training loss as it runs by default (teacher.cache_outputs=true: the frozen
  teacher's joint feature and the T-Net's physio features of every training sample are computed once per run,
  methods/teacher.py frozen_outputs, and a step reads its batch's rows), the student's forward, the task loss
  and the structural OT loss at the method's defaults (k = 30, ε = 0.01), backward, optimizer step;
- `per-batch`: the same step with teacher.cache_outputs=false: the frozen teacher's forward and the
  teacher-encoder -> T-Net path run on every batch, as the official step does (the same values to float32 round-off:
  tests/test_frozen_outputs.py). `frozen pass` is that frozen part alone: what the cached run pays once per
  training sample per run (one frozen pass over the training split) instead of once per sample per epoch;
- `kd`: Hinton KD + FitNets on the same nets (methods/kd.py, its teacher's outputs read from their table too),
  for scale;
- `OT`: the structural OT loss alone, forward and backward (its share of the pkdot step).
Sizes: `--hidden 512` is our default student (1.59 M parameters); `--hidden 976` matches the official fusion
transformer's parameter count (5.29 M against 5.26 M). The teacher has the same hidden size.

`--official DIR`: the official haseebaslam95/PKDOT training step, timed in the same process, interleaved step
by step with ours so that background load hits both alike. DIR must hold a module `official_step.py` exposing
make_official_step(batch) -> (step_fn, n_params). It is not part of this repository (the official code stays
out of it); build it from a checkout of https://github.com/haseebaslam95/PKDOT (`git clone` it into DIR):
take MultimodalTransformer and TransformerEncoderBlock (models/models.py, whose imports need comet_ml and
torchvision: load the two classes alone), TransformNet with its Encoder and Decoder
(models/transformation_network.py), cosine_similarity_matrix_transpose_torch (pkdot_utils.py), and the body of
the batch loop of PKDOT_kfold.py's train_student, with only these changes: the frozen backbones' outputs
(vis_model_student.model_out, vis_phy_model_teacher.model_out_feats) are cached random 512-d features made
once, no .cuda(), no vis_optimizer (no backbone is trained on cached features), random initial weights for
teacher and T-Net (nothing is loaded), `total_loss.item()` as the loop's running loss. Everything else as
released: MultimodalTransformer(512, 512, num_heads=2, hidden_dim=512, num_layers=2, num_classes=2) for student
and teacher (5.26 M parameters), the teacher under no_grad, the frozen T-Net, np.argpartition on the teacher's
cosine matrix (k = 30), geomloss SamplesLoss("sinkhorn", p=2, blur=0.1), cross-entropy, λ = 0.6, Adam lr 1e-4.

`--fused` adds the pkdot step with train.fused=true (torch's fused AdamW). It is not the default: `fused: auto`
keeps AdamW on torch's per-tensor implementation, which every committed record was trained with (the two differ
by float round-off, e.g. 2e-7 after 20 steps).

Reported per thread count: median wall ms per step of each, pkdot / kd, the OT share, and pkdot / official and
per-batch / official at each student size (the figures that do not depend on the machine's load). Target:
pkdot / official <= 0.5 at the matched size.
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
import torch.nn.functional as F
from omegaconf import OmegaConf
from tabulate import tabulate
from torch import nn

from benchmarks._interleave import interleaved
from harness.allocator import tune_allocator
from harness.data import TargetSpec
from harness.training import loop_options, make_optimizer
from methods.blocks import MultimodalNet, task_loss
from methods.kd import response_loss
from methods.pkdot import PrivilegedStudent, TNet, frozen_path, ot_terms, structural_ot_loss

CONF = Path(__file__).resolve().parents[1] / "harness" / "conf"
TARGET = TargetSpec(kind="classification", dims=("pain",), n_classes=2)


def build(hidden: int, layers: int, fused: bool = False):
    """Frozen teacher and T-Net; a kd student (+ FitNets projection) and a PKDOT student, each with its optimizer
    (fused: train.fused=true, torch's one-kernel AdamW; the harness default keeps AdamW's per-tensor loop)."""
    train_opts = loop_options({**OmegaConf.load(CONF / "config.yaml").train, **({"fused": True} if fused else {})})
    mods = {"visual": 512, "physio": 512}
    teacher = MultimodalNet(mods, TARGET, hidden=hidden, layers=layers).eval()
    tnet = TNet(hidden, hidden, width=256).eval()
    for p in [*teacher.parameters(), *tnet.parameters()]:
        p.requires_grad_(False)
    kd_net = MultimodalNet({"visual": 512}, TARGET, hidden=hidden, layers=layers)
    kd_proj = nn.Linear(hidden, hidden)
    kd_opt = make_optimizer([*kd_net.parameters(), *kd_proj.parameters()], train_opts)
    pk_net = MultimodalNet({"visual": 512}, TARGET, hidden=hidden, layers=layers, slots=("visual", "physio"))
    student = PrivilegedStudent(pk_net, teacher, tnet, ("visual",), ("physio",))
    pk_opt = make_optimizer(list(pk_net.parameters()), train_opts)
    return teacher, (kd_net, kd_proj, kd_opt), (student, pk_opt)


def batch_rows(table, n: int):
    """The batch's rows of a frozen-output table, read as methods/teacher.py frozen_outputs reads them."""
    rows = torch.arange(n)
    return tuple(column[rows] for column in table)


def kd_step(batch, kd, table):
    """As KD.fit's loss_fn with the teacher's outputs read from its table (teacher.cache_outputs=true)."""
    net, proj, opt = kd
    x, y = batch
    t_out, t_z = batch_rows(table, len(y))
    s = net(x)
    loss = (task_loss(s.out, y, TARGET) + response_loss(s.out, t_out, TARGET.kind, 4.0)
            + 0.5 * F.mse_loss(proj(s.z), t_z))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def frozen_part(batch, teacher, pk):
    with torch.no_grad():
        return frozen_path(teacher, pk[0])(batch[0], None)


def pkdot_step(batch, teacher, pk, cfg, table=None):
    """As PKDOT.fit's loss_fn, then the loop's zero_grad / backward / step. table: the frozen part's outputs for
    every row of the batch, computed ahead (teacher.cache_outputs=true); None runs it here (false)."""
    student, opt = pk
    x, y = batch
    if table is None:
        z_t, features = frozen_part(batch, teacher, pk)
    else:
        z_t, features = batch_rows(table, len(y))
    s_out = student(x, None, features)
    l_struct, _ = ot_terms(cfg, z_t, s_out.z)
    loss = cfg.task_weight * task_loss(s_out.out, y, TARGET) + l_struct
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def ot_only(z_t, z_s, cfg):
    z_s = z_s.detach().requires_grad_(True)
    structural_ot_loss(z_t, z_s, cfg.k, cfg.anchors, cfg.anchor_set, cfg.shift, cfg.epsilon, cfg.scaling).backward()


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1e3


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, nargs="+", default=[1])
    ap.add_argument("--hidden", type=int, nargs="+", default=[512, 976],
                    help="student (and teacher) hidden sizes: 512 = our default, 976 = the official parameter count")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--sizes", type=int, nargs="+", default=[128], help="batch sizes (the official B is 128)")
    ap.add_argument("--official", default=None, help="directory holding official_step.py (see the docstring)")
    ap.add_argument("--no-kd", action="store_true", help="skip the kd step")
    ap.add_argument("--fused", action="store_true",
                    help="also time the pkdot step with train.fused=true (fused AdamW: not the default, see the docstring)")
    args = ap.parse_args()
    malloc = tune_allocator()  # as harness.runner.execute: every variant, the official included, runs with it
    make_official = None
    if args.official:
        sys.path.insert(0, args.official)
        from official_step import make_official_step as make_official
    cfg = OmegaConf.load(CONF / "method" / "pkdot.yaml")
    load_before = os.getloadavg()
    for threads in args.threads:
        torch.set_num_threads(threads)
        rows = []
        for B in args.sizes:
            official = make_official(B) if make_official else None
            for hidden in args.hidden:
                torch.manual_seed(0)
                teacher, kd, pk = build(hidden, args.layers)
                pk_fused = build(hidden, args.layers, fused=True)[2] if args.fused else None
                x = {"visual": torch.randn(B, 1, 512), "physio": torch.randn(B, 1, 512)}
                y = torch.randint(0, 2, (B, 1))
                with torch.no_grad():
                    z_t, z_s = teacher(x).z, pk[0](x).z
                table = frozen_part((x, y), teacher, pk)
                steps = {"pkdot": lambda: pkdot_step((x, y), teacher, pk, cfg, table),
                         "per-batch": lambda: pkdot_step((x, y), teacher, pk, cfg),
                         "frozen pass": lambda: frozen_part((x, y), teacher, pk),
                         "OT": lambda: ot_only(z_t, z_s, cfg)}
                if not args.no_kd:
                    with torch.no_grad():
                        t_out = teacher(x)
                    kd_table = (t_out.out, t_out.z)
                    steps["kd"] = lambda: kd_step((x, y), kd, kd_table)
                if pk_fused is not None:
                    steps["fused"] = lambda: pkdot_step((x, y), teacher, pk_fused, cfg, table)
                if official is not None:
                    steps["official"] = official[0]
                times = interleaved(steps, args.warmup, args.repeats, timed)
                med = {name: statistics.median(t) for name, t in times.items()}
                kd_ms, off_ms = med.get("kd"), med.get("official")
                rows.append([B, hidden, f"{n_params(pk[0].net) / 1e6:.2f} M", f"{med['pkdot']:.1f}",
                             f"{med['per-batch']:.1f}", f"{med['frozen pass']:.1f}",
                             "-" if kd_ms is None else f"{kd_ms:.1f}",
                             "-" if kd_ms is None else f"{med['pkdot'] / kd_ms:.2f}",
                             f"{med['OT'] / med['pkdot']:.2f}",
                             "-" if off_ms is None else f"{off_ms:.1f} ({official[1] / 1e6:.2f} M)",
                             "-" if off_ms is None else f"{med['pkdot'] / off_ms:.2f}",
                             "-" if off_ms is None else f"{med['per-batch'] / off_ms:.2f}"]
                            + ([] if pk_fused is None else
                               [f"{med['fused']:.1f}", "-" if off_ms is None else f"{med['fused'] / off_ms:.2f}"]))
                print(f"done B={B} hidden={hidden} threads={threads}", file=sys.stderr, flush=True)
        print(f"\nPKDOT training step, torch {torch.__version__}, {threads} thread(s), {args.repeats} interleaved "
              f"repeats (medians); load average before {load_before[0]:.1f}, now {os.getloadavg()[0]:.1f} on "
              f"{os.cpu_count()} CPUs; malloc: {malloc} (harness/allocator.py, every variant)")
        print(tabulate(rows, headers=["B", "hidden", "student params", "pkdot ms", "per-batch ms", "frozen pass ms",
                                      "kd ms", "pkdot/kd", "OT share of pkdot", "official ms (params)",
                                      "pkdot/official", "per-batch/official"]
                       + (["pkdot fused-AdamW ms", "fused/official"] if args.fused else []),
                       tablefmt="github", disable_numparse=True))


if __name__ == "__main__":
    main()
