"""The one training loop every method trains in (DMD included).

Mini-batches from the training split, model selection on the VALIDATION split only (never the test
fold), the selected state restored at the end, one log entry per epoch, an optional per-epoch
checkpoint so a requeued job resumes where it stopped. Its options are the keys of the `train`
config group (harness/conf/config.yaml); a method may override them (DMD's `method.training`).

- optimizer: adamw (default) | adam | rmsprop | sgd, torch's fused implementation where torch offers
  one for it (`fused: auto`); rmsprop_keras is RMSprop as Keras 0.x wrote it (KerasRMSprop), for
  reproducing code written with it;
- schedule: none (default) | plateau (ReduceLROnPlateau on the selection quantity);
- accumulate: gradients SUMMED over k mini-batches per optimizer step (the official DMD loop); the
  trailing partial group of an epoch is dropped; k is cut to the batches of an epoch (recorded);
- grad_clip with grad_clip_by: norm (before each optimizer step) | value (after EVERY backward, as DMD);
- select_on: primary (the task's primary metric) | loss (validation loss of the predictions);
- stop: patience (early stopping after `patience` epochs without a better validation score, plus
  a stop once the learning rate falls below `min_lr` when min_lr > 0) | budget (exactly max_epochs,
  no early stopping, the LAST epoch kept);
- drop_last: whether the last short batch of an epoch is dropped;
- a per-epoch hook through which a method adds its own log fields (DMD's edge weights).
- a batch source other than a split's rows (TensorRows: tensors computed beforehand, PKDOT's T-Net on the
  frozen teacher's features), and the untrained state as a selection candidate (select_initial).

Every model trained leaves a summary in the record (`extra.training.<name>`): why it stopped
(patience, min_lr, max_epochs, budget), the selected epoch and the number of epochs run.
"""

from __future__ import annotations

import copy
import math
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from omegaconf import DictConfig

from harness.data import FrameWindows, Split
from harness.method import RunContext
from harness.predictions import make_predictions
from harness.schema import LOOP_CHOICES
from harness.storage import atomic_torch_save  # whole or not at all; a full disk: DiskFullError

# The loop's options and the values that give the loop the harness has always had. A train config
# without one of these keys (an older record, a method's partial override) means that value.
LOOP_DEFAULTS: dict[str, Any] = {
    "optimizer": "adamw", "fused": "auto", "momentum": 0.0, "schedule": "none", "plateau_factor": 0.5,
    "plateau_patience": 5, "min_lr": 0.0, "accumulate": 1, "grad_clip": None, "grad_clip_by": "norm",
    "select_on": "primary", "stop": "patience", "patience": 12, "min_delta": 0.0, "drop_last": True,
}
CHOICES = LOOP_CHOICES  # the loop's choices, from the config schema (one place for them)


@dataclass
class Batch:
    inputs: dict[str, torch.Tensor]
    lengths: dict[str, torch.Tensor]
    targets: torch.Tensor
    mask: torch.Tensor | None
    index: torch.Tensor  # row numbers in the split (lets a method look up cached per-sample values)


class WindowTensors:
    """A FrameWindows input as torch tensors sharing its memory: the rows of a batch are gathered from the stored
    frames (one index_select), never a [N, width, D] copy of the split."""

    def __init__(self, windows: FrameWindows):
        self.frames = torch.from_numpy(windows.frames)
        self.starts = torch.from_numpy(windows.starts)
        self.lengths = torch.from_numpy(windows.lengths)
        self.steps = torch.arange(windows.width, dtype=torch.int64)
        self.pad_row = len(windows.frames) - 1

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        starts, lengths = self.starts[idx], self.lengths[idx]
        rows = torch.where(self.steps[None, :] < lengths[:, None], starts[:, None] + self.steps[None, :], self.pad_row)
        return self.frames.index_select(0, rows.reshape(-1)).reshape(len(idx), len(self.steps), -1)


class BatchSource:
    """Rows served as mini-batches (Batch): an epoch's order is one permutation of the rows from the loop's generator,
    cut into batch_size slices, the last short one dropped under drop_last (when there is more than one batch)."""

    n: int

    def rows(self, idx: torch.Tensor) -> Batch:
        raise NotImplementedError

    def n_batches(self, batch_size: int, drop_last: bool = False) -> int:
        return math.ceil(self._stop(batch_size, drop_last) / batch_size)

    def _stop(self, batch_size: int, drop_last: bool) -> int:
        return self.n - (self.n % batch_size if drop_last and self.n > batch_size else 0)

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
                drop_last: bool = False) -> Iterator[Batch]:
        order = torch.randperm(self.n, generator=generator) if shuffle else torch.arange(self.n)
        for start in range(0, self._stop(batch_size, drop_last), batch_size):
            yield self.rows(order[start:start + batch_size])


class SplitTensors(BatchSource):
    """A Split converted to torch tensors once, served as mini-batches on the run's device. Windowed inputs
    (FrameWindows) stay one store of frames; each batch gathers its rows (the same values as the copies)."""

    def __init__(self, split: Split, device: torch.device, classification: bool):
        self.n = len(split)
        self.device = device
        self.inputs = {k: WindowTensors(v) if isinstance(v, FrameWindows) else torch.from_numpy(np.ascontiguousarray(v))
                       for k, v in split.inputs.items()}
        self.lengths = {k: torch.from_numpy(np.asarray(v, dtype=np.int64)) for k, v in split.lengths.items()}
        t = np.asarray(split.targets)
        self.targets = torch.from_numpy(t.astype(np.int64) if classification else t.astype(np.float32))
        self.mask = None if split.target_mask is None else torch.from_numpy(np.asarray(split.target_mask, bool))

    def rows(self, idx: torch.Tensor) -> Batch:
        dev = self.device
        return Batch(inputs={k: v[idx].to(dev, non_blocking=True) for k, v in self.inputs.items()},
                     lengths={k: v[idx].to(dev) for k, v in self.lengths.items()},
                     targets=self.targets[idx].to(dev),
                     mask=None if self.mask is None else self.mask[idx].to(dev),
                     index=idx)


class TensorRows(BatchSource):
    """Aligned tensors (inputs by name, targets; the same first dimension) served as mini-batches, for a model
    trained on values computed beforehand rather than on a split's raw inputs (PKDOT's T-Net: the frozen teacher's
    student-modality features to its privileged ones). The tensors stay where they are (their device)."""

    def __init__(self, inputs: dict[str, torch.Tensor], targets: torch.Tensor):
        sizes = {k: len(v) for k, v in inputs.items()} | {"targets": len(targets)}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"TensorRows: every tensor needs the same number of rows, got {sizes}")
        self.n, self.inputs, self.targets = len(targets), dict(inputs), targets

    def rows(self, idx: torch.Tensor) -> Batch:
        return Batch(inputs={k: v[idx] for k, v in self.inputs.items()}, lengths={}, targets=self.targets[idx],
                     mask=None, index=idx)


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


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint holds something other than tensors and plain containers: it is not loaded."""


def load_checkpoint(path: Path, device: torch.device) -> dict:
    """A training checkpoint, unpickled with torch's weights_only loader: tensors, numbers, strings and plain
    containers only, so a file planted in a results folder others can write cannot run code when a job resumes.
    Everything the loop saves is of those kinds (RNG and generator states are uint8 tensors)."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"{path}: refused to resume from this checkpoint: it holds objects that are not tensors or plain "
            f"containers ({str(e).splitlines()[0]}). The harness never writes such a file; delete it to train from "
            f"the start, or find out who wrote it.") from None


def loop_options(train_cfg: DictConfig | dict) -> dict[str, Any]:
    """The loop's options from a train config, LOOP_DEFAULTS filling what it does not set; bad choices fail."""
    opts = {**LOOP_DEFAULTS, **{k: train_cfg[k] for k in train_cfg}}
    for key, allowed in CHOICES.items():
        if opts[key] not in allowed:
            raise ValueError(f"train.{key}={opts[key]!r}: choose one of {', '.join(map(str, allowed))}")
    return opts


class KerasRMSprop(torch.optim.Optimizer):
    """RMSprop as Keras 0.x's `keras.optimizers.RMSprop` computes it, the optimizer of code written with it (Lopez-Paz
    et al.'s reference code for "Unifying distillation and privileged information"): a <- rho*a + (1-rho)*g^2, then
    p <- p - lr * g / sqrt(a + eps), with rho = 0.9 and eps = 1e-6 INSIDE the square root. torch's RMSprop (alpha
    0.99, p <- p - lr * g / (sqrt(a) + eps), eps 1e-8) differs in both constants and in where eps goes: once the
    gradients fall below about 1e-3, Keras's steps shrink with them while torch's stay near lr * sign(g).
    torch has no option for eps under the root, hence this class. weight_decay adds wd * p to the gradient, as
    torch's RMSprop does (Keras 0.x had none: use 0 to reproduce it)."""

    def __init__(self, params, lr: float = 1e-3, rho: float = 0.9, eps: float = 1e-6, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "rho": rho, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, rho, eps, wd = group["lr"], group["rho"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad if wd == 0 else p.grad.add(p, alpha=wd)
                state = self.state[p]
                if not state:
                    state["square_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                a = state["square_avg"]
                a.mul_(rho).addcmul_(g, g, value=1 - rho)
                p.addcdiv_(g, (a + eps).sqrt_(), value=-lr)
        return loss


def make_optimizer(params: list, opts: dict) -> torch.optim.Optimizer:
    """The configured optimizer over `params` (tensors or param groups), fused where torch offers it.

    Fused Adam/AdamW/SGD run one kernel over every tensor (CPU and CUDA): the same update rule, a fraction of
    the per-tensor loop's time. RMSprop has no fused implementation in torch; it uses torch's default."""
    name, lr, wd = opts.get("optimizer", "adamw"), float(opts["lr"]), float(opts.get("weight_decay", 0.0))
    flat = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
    fused = opts.get("fused", "auto")
    if fused == "auto":
        # auto keeps AdamW (the harness's default) on torch's default implementation, which every committed
        # record was trained with; Adam and SGD take the fused kernel (DMD's official Adam, measured 4x faster).
        fused = name in ("adam", "sgd") and all(p.dtype.is_floating_point and p.device.type in ("cpu", "cuda")
                                                for p in flat)
    kw = {"fused": True} if fused else {}
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd, **kw)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, **kw)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd, momentum=float(opts.get("momentum", 0.0)), **kw)
    if name == "rmsprop":  # torch has no fused RMSprop
        return torch.optim.RMSprop(params, lr=lr, weight_decay=wd, momentum=float(opts.get("momentum", 0.0)))
    if name == "rmsprop_keras":
        if float(opts.get("momentum", 0.0)):
            raise ValueError("train.optimizer=rmsprop_keras has no momentum (Keras 0.x's RMSprop had none): "
                             "set train.momentum=0")
        return KerasRMSprop(params, lr=lr, weight_decay=wd)
    raise ValueError(f"train.optimizer={name!r}: choose one of {', '.join(CHOICES['optimizer'])}")


def prediction_loss(outputs: np.ndarray, split: Split, kind: str, regression_loss: str = "mse") -> float:
    """Validation loss of predictions, for select_on=loss: cross-entropy of the class probabilities, or the
    regression training loss (mse, or 1 - CCC pooled over the valid entries)."""
    y = np.asarray(split.targets)
    valid = None if split.target_mask is None else np.asarray(split.target_mask, bool)
    if kind == "classification":
        p = np.take_along_axis(outputs, y.astype(np.int64)[..., None], axis=-1)[..., 0]
        nll = -np.log(np.clip(p, 1e-12, None))
        return float(nll[valid].mean() if valid is not None else nll.mean())
    pred = outputs.reshape(y.shape)
    if valid is not None:
        pred, y = pred[valid], y[valid]
    if regression_loss == "ccc":
        from harness.metrics import ccc
        return float(np.mean([1.0 - ccc(y[..., k], pred[..., k]) for k in range(y.shape[-1])])) \
            if y.ndim > 1 else 1.0 - ccc(y, pred)
    return float(((pred - y) ** 2).mean())


def _summary(log: list[dict], best_epoch: int, stop_reason: str, opts: dict, accumulate: int,
             n_batches: int, val_before: dict | None = None) -> dict:
    return {**({"val_before": val_before} if val_before is not None else {}),
            "stop_reason": stop_reason, "selected_epoch": best_epoch, "epochs_run": len(log),
            "max_epochs": int(opts["max_epochs"]), "stop_rule": opts["stop"], "select_on": opts["select_on"],
            "optimizer": opts["optimizer"], "accumulate": accumulate, "batches_per_epoch": n_batches,
            "accumulate_reduced": accumulate < int(opts["accumulate"]),
            "optimizer_steps": int(sum(e.get("optimizer_steps", 0) for e in log))}


def adopt_stored_log(ctx: RunContext, name: str, meta: dict) -> None:
    """A stored model's per-epoch log into the run's logs (ctx.logs[name]), unless `fit` trained it in this run
    and put it there. Such a log (a model reused from the store) did not pass through `fit` in this run: its rows
    go to the live logger now, so every log of the record has its curves."""
    if name in ctx.logs:
        return
    ctx.logs[name] = meta.get("log", [])
    for epoch, entry in enumerate(ctx.logs[name]):
        ctx.live.log_epoch(name, {"epoch": epoch, **entry})  # the oldest stored logs may lack `epoch`


def fit(name: str, module: torch.nn.Module, loss_fn: Callable[[Batch], tuple[torch.Tensor, dict[str, float]]],
        predict_fn: Callable[[Batch], torch.Tensor] | None, train: Split | BatchSource, val: Split | None,
        ctx: RunContext, train_cfg: DictConfig | dict, params: list | None = None,
        checkpoint_path: Path | None = None, evaluate: Callable[[], dict] | None = None,
        epoch_hook: Callable[[int, int], dict] | None = None, batch_seed: int | None = None,
        config_key: str = "train", select_initial: bool = False,
        caller_state: tuple[Callable[[], dict], Callable[[dict], None]] | None = None) -> list[dict]:
    """Train `module` (its parameters, or `params`: tensors or param groups) with loss_fn; select on val.

    `train` is a Split (its rows as SplitTensors batches) or any BatchSource (TensorRows: precomputed tensors).
    loss_fn(batch) returns the loss and a dict of its named parts (logged per epoch, averaged).
    predict_fn(batch) returns what Method.predict would for those rows (probabilities or values); the
    default validation scores it on `val` with the task's metrics. `evaluate()` replaces that default: it
    returns {"metrics": {...}, "loss": float | None} for the validation split (DMD: pooled targets, its own
    val loss). `epoch_hook(epoch, n_batches)` returns extra fields for the epoch's log entry.
    `batch_seed` seeds the batch-order generator (default: one draw from the run's seeded global stream).
    `config_key` is where train_cfg's values come from (DMD: method.training), for the record's `adjusted`.
    `select_initial`: the state before training is scored on validation too and competes with the epochs (it is
    kept, selected epoch -1, when no epoch beats it; its validation fields go to the summary as `val_before`).
    `caller_state`: (get, put) for state the caller's loss_fn carries across batches (its own generators, what it
    accumulates): get() is saved with every checkpoint (tensors, numbers and plain containers), put(saved) gives
    it back on resume, so a resumed run draws and counts as an uninterrupted one.
    The selected state (best validation score; the last epoch under stop=budget) is restored at the end.
    Returns the per-epoch log, also stored in ctx.logs[name]; the summary goes to ctx.extra["training"][name].
    Each log entry goes to the run's live logger (ctx.live: logger=tensorboard|mlflow) as soon as it is made.
    With train_cfg.checkpoint, the state after every epoch (weights, optimizer, scheduler, best state, log,
    stop reason, batch-order and global RNG states) goes to `checkpoint_path` (default:
    <run_dir>/checkpoint_<name>.pt) and a later call resumes from it: the result is the same as an
    uninterrupted training, and a checkpoint of the stopping epoch trains no further.
    """
    opts = loop_options(train_cfg)
    if val is not None and len(val) == 0:
        val, evaluate = None, None  # an empty validation split (lupi's n_val=0) is no validation split
    task, device = ctx.task, ctx.device
    classification = task.spec.target.kind == "classification"
    train_t = train if isinstance(train, BatchSource) else SplitTensors(train, device, classification)
    val_t = SplitTensors(val, device, classification) if (val is not None and evaluate is None) else None
    metric = task.spec.primary_metric
    sign = 1.0 if task.metric_higher_is_better(metric) else -1.0
    budget = opts["stop"] == "budget"
    if opts["select_on"] == "loss" and budget:
        raise ValueError("train.stop=budget keeps the last epoch: it selects nothing, so select_on must be primary")
    if val is None and evaluate is None and not budget:
        raise ValueError(f"{name}: no validation split to select on: set {config_key}.stop=budget (a fixed budget "
                         f"of {config_key}.max_epochs, the last epoch kept) or give the task a validation split")
    if val is None and evaluate is None and opts["schedule"] == "plateau":
        raise ValueError(f"{name}: {config_key}.schedule=plateau follows the validation score, and there is no "
                         f"validation split: set {config_key}.schedule=none or give the task a validation split")

    params = list(module.parameters()) if params is None else list(params)
    # `params` may also be optimizer param groups ({"params": [...], "lr": ...}), for stages whose
    # parts need different learning rates (MT-PKDOT's adapters vs. its joint teacher).
    groups = params if params and isinstance(params[0], dict) else [{"params": params}]
    groups = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in groups]
    params = [p for g in groups for p in g["params"]]
    opt = make_optimizer(groups, opts)
    sched = None
    if opts["schedule"] == "plateau":
        # On the selection score (higher is better), with the loop's own rule for "better": above the best by
        # min_delta (absolute). torch's default, mode="min" with a RELATIVE threshold, was fed -score before: for
        # a positive score (accuracy, CCC) -score is negative, where best*(1 - 1e-4) lies ABOVE best, so a tie or
        # a slight drop counted as progress and lr was never cut on a flat validation curve.
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=float(opts["plateau_factor"]),
                                                           patience=int(opts["plateau_patience"]),
                                                           threshold=float(opts["min_delta"]), threshold_mode="abs")
    bs, drop_last = int(opts["batch_size"]), bool(opts["drop_last"])
    n_batches = train_t.n_batches(bs, drop_last)
    if n_batches == 0:
        raise ValueError(f"{name}: the training split has {train_t.n} samples, no full batch of {bs}")
    accumulate = max(1, min(int(opts["accumulate"]), n_batches))
    if accumulate < int(opts["accumulate"]):
        ctx.adjust(f"{config_key}.accumulate", int(opts["accumulate"]), accumulate,
                   f"an epoch of {name} has {n_batches} batches")
    clip, clip_by = opts.get("grad_clip"), opts["grad_clip_by"]
    max_epochs, patience, min_lr = int(opts["max_epochs"]), int(opts["patience"]), float(opts["min_lr"])
    # Batch order: its own generator, seeded from the run's (seeded) global stream unless the method says.
    seed = int(torch.randint(0, 2**62, (1,))) if batch_seed is None else int(batch_seed)
    gen = torch.Generator().manual_seed(seed)
    log: list[dict] = []
    best = {"score": -math.inf, "epoch": -1, "state": copy.deepcopy(module.state_dict())}
    start_epoch, stop_reason, val_before = 0, None, None

    def validation() -> tuple[dict[str, float], float | None]:
        """The validation fields of the module's current state (no `val_` prefix) and its selection score (higher
        is better; None without validation)."""
        val_fields: dict[str, float] = {}
        score = None
        if evaluate is not None or val_t is not None:
            if evaluate is not None:
                ev = evaluate()
            else:
                out = predict_in_batches(predict_fn, val_t, int(opts["eval_batch_size"]))
                ev = {"metrics": task.score(make_predictions(val, out, task.spec.target)),
                      "loss": (prediction_loss(out, val, task.spec.target.kind, opts.get("regression_loss", "mse"))
                               if opts["select_on"] == "loss" else None)}
            if ev.get("loss") is not None:
                val_fields["loss"] = float(ev["loss"])
            val_fields.update(ev["metrics"])
            if opts["select_on"] == "loss":
                score = -val_fields["loss"]
            else:
                score = sign * ev["metrics"][metric]
                if math.isnan(score):  # e.g. CCC of a constant prediction: never "better"
                    score = -math.inf
        return val_fields, score

    ckpt_path = None
    if opts.get("checkpoint", False):
        ckpt_path = Path(checkpoint_path) if checkpoint_path is not None else ctx.run_dir / f"checkpoint_{name}.pt"
    if ckpt_path is not None and ckpt_path.exists():
        ck = load_checkpoint(ckpt_path, device)
        module.load_state_dict(ck["module"])
        opt.load_state_dict(ck["optimizer"])
        if sched is not None and ck.get("scheduler") is not None:
            sched.load_state_dict(ck["scheduler"])
        gen.set_state(ck["generator"])
        restore_rng_state(ck, device)  # dropout: a resumed run equals an uninterrupted one
        if caller_state is not None and "caller_state" in ck:
            caller_state[1](ck["caller_state"])
        best, log, start_epoch = ck["best"], ck["log"], ck["epoch"] + 1
        val_before = ck.get("val_before")
        stop_reason = ck.get("stop_reason")  # a checkpoint of the stopping epoch must not train further
        ctx.extra.setdefault("resumed_from_epoch", {})[name] = start_epoch
    elif select_initial and not budget:  # the untrained state is a candidate: scored before the first epoch
        module.eval()
        fields, best["score"] = validation()
        val_before = {f"val_{k}": v for k, v in fields.items()}

    bar = None
    if ctx.progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=max_epochs, initial=start_epoch, desc=name, unit="ep", leave=False, dynamic_ncols=True)
    for epoch in range(start_epoch, start_epoch if stop_reason else max_epochs):
        t0 = time.perf_counter()
        module.train()
        sums: dict[str, float] = {}
        steps = 0
        lr = opt.param_groups[0]["lr"]
        for i, batch in enumerate(train_t.batches(bs, shuffle=True, generator=gen, drop_last=drop_last)):
            loss, parts = loss_fn(batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{name}: non-finite training loss at epoch {epoch} ({parts})")
            if i % accumulate == 0:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip and clip_by == "value":
                torch.nn.utils.clip_grad_value_(params, float(clip))  # after EVERY backward
            if (i + 1) % accumulate == 0:
                if clip and clip_by == "norm":
                    torch.nn.utils.clip_grad_norm_(params, float(clip))
                opt.step()
                steps += 1
            for k, v in {"loss": float(loss.detach()), **parts}.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        module.eval()
        val_fields, score = validation()
        if sched is not None:
            sched.step(score)  # the plateau schedule follows the selection quantity
        if budget:
            best = {"score": score, "epoch": epoch, "state": None}  # the last epoch is kept: no copy needed
        elif (best["epoch"] < 0 and val_before is None) or score > best["score"] + float(opts["min_delta"]):
            best = {"score": score, "epoch": epoch, "state": copy.deepcopy(module.state_dict())}
        entry = {"epoch": epoch, **{f"train_{k}": v / max(i + 1, 1) for k, v in sums.items()},
                 **{f"val_{k}": v for k, v in val_fields.items()}, "lr": lr, "optimizer_steps": steps}
        if epoch_hook is not None:
            entry.update(epoch_hook(epoch, i + 1))
        entry["seconds"] = time.perf_counter() - t0
        log.append(entry)
        ctx.live.log_epoch(name, entry)  # the row the record keeps, as it is made (logger=none: nothing)
        if bar is not None:
            post = {"loss": f"{entry.get('train_loss', float('nan')):.3f}"}
            if "loss" in val_fields:
                post["val_loss"] = f"{val_fields['loss']:.3f}"
            if metric in val_fields:
                post[f"val_{metric}"] = f"{val_fields[metric]:.3f}"
            bar.set_postfix({**post, "best_ep": best["epoch"]})
            bar.update(1)
        # Only the decisions of the rule itself stop early (and are checkpointed); the end of the epoch range
        # is max_epochs (or the budget) and is not stored, so a resume with a larger max_epochs goes on.
        if not budget and epoch - best["epoch"] >= patience:
            stop_reason = "patience"
        elif not budget and min_lr > 0 and opt.param_groups[0]["lr"] < min_lr:
            stop_reason = "min_lr"  # the schedule has given up: further epochs only creep
        if ckpt_path is not None:
            atomic_torch_save({"module": module.state_dict(), "optimizer": opt.state_dict(),
                               "scheduler": None if sched is None else sched.state_dict(),
                               "generator": gen.get_state(), "best": best, "log": log, "epoch": epoch,
                               "stop_reason": stop_reason, "val_before": val_before, **rng_state(device),
                               **({"caller_state": caller_state[0]()} if caller_state is not None else {})},
                              ckpt_path)
        if stop_reason:
            break
    if bar is not None:
        bar.close()
    if best["state"] is not None:
        module.load_state_dict(best["state"])
    module.eval()
    for entry in log:
        entry["selected"] = entry["epoch"] == best["epoch"]
    ctx.logs[name] = log
    stop_reason = stop_reason or ("budget" if budget else "max_epochs")
    ctx.extra.setdefault("training", {})[name] = _summary(log, best["epoch"], stop_reason, opts, accumulate,
                                                       n_batches, val_before)
    return log
