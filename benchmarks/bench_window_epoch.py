"""Epoch time on gathered windows vs on copies, in one process, interleaved: only the data path differs.

    python benchmarks/bench_window_epoch.py TREE STRIDE [REPEATS [CACHE_DIR]]   # TREE: an Aff-Wild2 (mimic) data root
    python benchmarks/bench_window_epoch.py TREE - [REPEATS [CACHE_DIR]] --task biovid   # a BioVid (mimic) data root

The same net on every modality of the task (model defaults: hidden 64, 2 layers) trains one epoch (batches of
64, shuffled) and
predicts the validation split (batches of 512) on the fold's splits as loaded (FrameWindows: rows gathered from
the frames stored once) and on the same splits materialised (np.asarray: the copies the loader made before).
Old and new run in turn, REPEATS times after one warm-up round of each; the medians and their ratio are printed
(gather / copies: the goal is <= 1.0), in CPU seconds of the process (torch on one thread), which other
processes on a shared machine move less than wall time. The losses and the validation outputs are asserted equal, bit for bit.
bench_scale.py measures whole runs in fresh processes, where a shared machine's load moves single runs by more
than the difference measured here.
"""
import argparse, statistics, time, warnings
import numpy as np, torch
torch.set_num_threads(1)
warnings.simplefilter("ignore")
from dataclasses import replace
from harness.config import compose_one
from harness.registry import TASKS
from harness.training import SplitTensors, predict_in_batches
from methods.blocks import MultimodalNet, task_loss
ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("tree")
ap.add_argument("stride", help="Aff-Wild2's task.train_stride; - for BioVid")
ap.add_argument("repeats", nargs="?", type=int, default=5)
ap.add_argument("cache", nargs="?", default=".cache")
ap.add_argument("--task", choices=["affwild2", "biovid"], default="affwild2")
args = ap.parse_args()
tree, stride, repeats, cache = args.tree, args.stride, args.repeats, args.cache
overrides = [f"task={args.task}", f"task.data_root={tree}", f"task.cache_dir={cache}"]
if args.task == "affwild2":
    overrides.append(f"task.train_stride={stride}")
cfg = compose_one(overrides)
task = TASKS.get(args.task)(cfg.task)
fd = task.load_fold(0)
copy = lambda s: replace(s, inputs={k: np.asarray(v) for k, v in s.inputs.items()})
variants = {"gather": (fd.train, fd.val), "copies": (copy(fd.train), copy(fd.val))}
spec = task.spec
dev = torch.device("cpu")
def epoch(train, val):
    torch.manual_seed(0)
    net = MultimodalNet(dict(spec.modalities), spec.target, hidden=64, layers=2, kernel=5, dropout=0.1)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    tt, vt = SplitTensors(train, dev, False), SplitTensors(val, dev, False)
    t = time.process_time()  # CPU seconds of this (one-thread) process: steadier than wall time on a shared machine
    net.train()
    for b in tt.batches(64, shuffle=True, generator=torch.Generator().manual_seed(0), drop_last=True):
        loss = task_loss(net(b.inputs, b.lengths).out, b.targets, spec.target, b.mask, "mse")
        opt.zero_grad(); loss.backward(); opt.step()
    net.eval()
    out = predict_in_batches(lambda b: net(b.inputs, b.lengths).out, vt, 512)
    return time.process_time() - t, float(loss), out
times = {k: [] for k in variants}
for r in range(repeats + 1):
    res = {}
    for k, (tr, va) in variants.items():
        s, l, out = epoch(tr, va)
        times[k].append(s); res[k] = (l, out)
    assert res["gather"][0] == res["copies"][0] and np.array_equal(res["gather"][1], res["copies"][1])
med = {k: statistics.median(v[1:]) for k, v in times.items()}
print(f"{args.task} stride {stride}: {len(fd.train)} training rows; epoch CPU seconds, median of {repeats} after a warm-up: "
      f"gather {med['gather']:.2f}, copies {med['copies']:.2f}, ratio {med['gather'] / med['copies']:.3f} "
      f"(each: {[round(t, 2) for t in times['gather'][1:]]} vs {[round(t, 2) for t in times['copies'][1:]]})")
