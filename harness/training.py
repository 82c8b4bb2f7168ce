"""The one training loop every method uses.

AdamW, mini-batches, model selection and early stopping on the validation split's primary metric
(never the test split), the best state restored at the end, one log entry per epoch, an optional
per-epoch checkpoint so a requeued job resumes where it stopped.
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from omegaconf import DictConfig

from harness.data import Split
from harness.method import RunContext
from harness.predictions import make_predictions


@dataclass
class Batch:
    inputs: dict[str, torch.Tensor]
    lengths: dict[str, torch.Tensor]
    targets: torch.Tensor
    mask: torch.Tensor | None
    index: torch.Tensor  # row numbers in the split (lets a method look up cached per-sample values)


class SplitTensors:
    """A Split converted to torch tensors once, served as mini-batches on the run's device."""

    def __init__(self, split: Split, device: torch.device, classification: bool):
        self.n = len(split)
        self.device = device
        self.inputs = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in split.inputs.items()}
        self.lengths = {k: torch.from_numpy(np.asarray(v, dtype=np.int64)) for k, v in split.lengths.items()}
        t = np.asarray(split.targets)
        self.targets = torch.from_numpy(t.astype(np.int64) if classification else t.astype(np.float32))
        self.mask = None if split.target_mask is None else torch.from_numpy(np.asarray(split.target_mask, bool))

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
                drop_last: bool = False) -> Iterator[Batch]:
        order = torch.randperm(self.n, generator=generator) if shuffle else torch.arange(self.n)
        stop = self.n - (self.n % batch_size if drop_last and self.n > batch_size else 0)
        for start in range(0, stop, batch_size):
            idx = order[start:start + batch_size]
            dev = self.device
            yield Batch(inputs={k: v[idx].to(dev, non_blocking=True) for k, v in self.inputs.items()},
                        lengths={k: v[idx].to(dev) for k, v in self.lengths.items()},
                        targets=self.targets[idx].to(dev),
                        mask=None if self.mask is None else self.mask[idx].to(dev),
                        index=idx)


def predict_in_batches(fn: Callable[[Batch], torch.Tensor], data: SplitTensors, batch_size: int) -> np.ndarray:
    """Concatenate fn(batch) over a split in order, without gradients."""
    outs = []
    with torch.no_grad():
        for batch in data.batches(batch_size):
            outs.append(fn(batch).detach().float().cpu().numpy())
    return np.concatenate(outs, axis=0)


def rng_state(device: torch.device) -> dict:
    """torch's global random streams, for a checkpoint: dropout draws from them."""
    return {"torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else None}


def restore_rng_state(ck: dict, device: torch.device) -> None:
    """Put back what rng_state saved, so a resumed run equals an uninterrupted one (older checkpoints lack it)."""
    if "torch_rng" in ck:
        torch.set_rng_state(ck["torch_rng"])
    if ck.get("cuda_rng") is not None and device.type == "cuda":
        torch.cuda.set_rng_state_all(ck["cuda_rng"])


def atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def fit(name: str, module: torch.nn.Module, loss_fn: Callable[[Batch], tuple[torch.Tensor, dict[str, float]]],
        predict_fn: Callable[[Batch], torch.Tensor], train: Split, val: Split, ctx: RunContext,
        train_cfg: DictConfig, params: list | None = None, checkpoint_path: Path | None = None) -> list[dict]:
    """Train `module` (its parameters, or `params`: tensors or param groups) with loss_fn; select on val.

    The best validation state is restored at the end.

    loss_fn(batch) returns the loss and a dict of its named parts (logged per epoch, averaged).
    predict_fn(batch) returns what Method.predict would for those rows (probabilities or values).
    Returns the per-epoch log, also stored in ctx.logs[name].
    With train_cfg.checkpoint, the state after every epoch (weights, optimizer, best state, log,
    batch-order and global RNG states) goes to `checkpoint_path` (default: <run_dir>/checkpoint_<name>.pt)
    and a later call resumes from it: the result is the same as an uninterrupted training.
    """
    task, device = ctx.task, ctx.device
    classification = task.spec.target.kind == "classification"
    train_t = SplitTensors(train, device, classification)
    val_t = SplitTensors(val, device, classification)
    metric = task.spec.primary_metric
    sign = 1.0 if task.metric_higher_is_better(metric) else -1.0
    params = list(module.parameters()) if params is None else list(params)
    # `params` may also be optimizer param groups ({"params": [...], "lr": ...}), for stages whose
    # parts need different learning rates (MT-PKDOT's adapters vs. its joint teacher).
    groups = params if params and isinstance(params[0], dict) else [{"params": params}]
    groups = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in groups]
    params = [p for g in groups for p in g["params"]]
    opt = torch.optim.AdamW(groups, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    # Batch order: its own generator, seeded from the run's (seeded) global stream.
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,))))
    log: list[dict] = []
    best = {"score": -math.inf, "epoch": -1, "state": copy.deepcopy(module.state_dict())}
    start_epoch = 0

    ckpt_path = None
    if train_cfg.get("checkpoint", False):
        ckpt_path = Path(checkpoint_path) if checkpoint_path is not None else ctx.run_dir / f"checkpoint_{name}.pt"
    stopped = False
    if ckpt_path is not None and ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location=device, weights_only=False)
        module.load_state_dict(ck["module"])
        opt.load_state_dict(ck["optimizer"])
        gen.set_state(ck["generator"])
        restore_rng_state(ck, device)
        best, log, start_epoch = ck["best"], ck["log"], ck["epoch"] + 1
        # A checkpoint written at the early-stopping epoch must not train further.
        stopped = ck.get("stopped", ck["epoch"] - best["epoch"] >= train_cfg.patience)
        ctx.extra.setdefault("resumed_from_epoch", {})[name] = start_epoch

    bar = None
    if ctx.progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=train_cfg.max_epochs, initial=start_epoch, desc=f"{name}", unit="ep", leave=False,
                   dynamic_ncols=True)
    for epoch in range(start_epoch, start_epoch if stopped else train_cfg.max_epochs):
        t0 = time.perf_counter()
        module.train()
        sums: dict[str, float] = {}
        n_batches = 0
        for batch in train_t.batches(train_cfg.batch_size, shuffle=True, generator=gen, drop_last=True):
            loss, parts = loss_fn(batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{name}: non-finite training loss at epoch {epoch} ({parts})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if train_cfg.get("grad_clip"):
                torch.nn.utils.clip_grad_norm_(params, train_cfg.grad_clip)
            opt.step()
            n_batches += 1
            for k, v in {"loss": float(loss.detach()), **parts}.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        module.eval()
        val_out = predict_in_batches(predict_fn, val_t, train_cfg.eval_batch_size)
        val_metrics = task.score(make_predictions(val, val_out, task.spec.target))
        score = sign * val_metrics[metric]
        if math.isnan(score):  # e.g. CCC of a constant prediction: never "better"
            score = -math.inf
        if best["epoch"] < 0 or score > best["score"] + train_cfg.min_delta:
            best = {"score": score, "epoch": epoch, "state": copy.deepcopy(module.state_dict())}
        entry = {"epoch": epoch, **{f"train_{k}": v / max(n_batches, 1) for k, v in sums.items()},
                 **{f"val_{k}": v for k, v in val_metrics.items()}, "seconds": time.perf_counter() - t0}
        log.append(entry)
        if bar is not None:
            bar.set_postfix({"loss": f"{entry.get('train_loss', float('nan')):.3f}",
                             f"val_{metric}": f"{val_metrics[metric]:.3f}", "best_ep": best["epoch"]})
            bar.update(1)
        stop = epoch - best["epoch"] >= train_cfg.patience
        if ckpt_path is not None:
            atomic_torch_save({"module": module.state_dict(), "optimizer": opt.state_dict(), "best": best,
                               "log": log, "epoch": epoch, "stopped": stop, "generator": gen.get_state(),
                               **rng_state(device)}, ckpt_path)
        if stop:
            break
    if bar is not None:
        bar.close()
    module.load_state_dict(best["state"])
    module.eval()
    for entry in log:
        entry["selected"] = entry["epoch"] == best["epoch"]
    ctx.logs[name] = log
    return log
