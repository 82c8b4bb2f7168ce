"""PKDOT (Aslam et al., FG 2024, arXiv 2401.15489): structural privileged distillation with optimal transport.

Fidelity: docs/fidelity.md#pkdot (#pkdot-loss the loss, #pkdot-tnet the T-Net, #pkdot-bugs the official
code's bugs, with the ids A1-A4 and B1-B20 used below).

Student = MultimodalNet on the student modalities whose fusion also has a slot for every privileged
modality, filled by a T-Net that hallucinates the privileged pooled features. Loss per batch:

    task_weight · task(student, y) + ot_weight · S_ε(X_T, X_S) [+ centroid_weight · L_cent]

with X_T, X_S the B × k "relational profiles" of the batch (structural_ot_loss below) and S_ε the
debiased Sinkhorn divergence of methods/ot.py (geomloss convention: cost ½‖x − y‖², ε = blur²).

Defaults and which official behaviour they follow (docs/fidelity.md#pkdot-defaults, #pkdot-bugs):
- k = 30 anchors, anchors = `lowest` (the k least similar batch samples to the teacher, as coded; the
  paper says "top-k", available as `highest`): A1 follows the code.
- anchor_set = `per_row` (each row its own anchors, as coded) but SORTED by teacher similarity
  (torch.topk(sorted=True)) instead of np.argpartition's arbitrary order, so coordinate m means "the
  m-th least similar anchor" in every row (A2); `shared` = one anchor set per batch (a clean
  variant). The self-similarity (the diagonal) is never an anchor.
- shift = `min` (global min subtracted per matrix, B4 as coded); `affine` = (A + 1)/2.
- ε = 0.01 with ε-scaling 0.5 from the bounding-box diameter, debiased: geomloss's
  SamplesLoss("sinkhorn", p=2, blur=0.1) as in the official code.
- ot_weight 0.6, task_weight 1 (PKDOT_kfold.py); batch_size 128 (the code's B; k/B sets locality).
- Centroid term (docs/fidelity.md#mtpkdot-centroid, off here as in PKDOT):
  ‖mean_rows cos(Z_T) − mean_rows cos(Z_S)‖₂.

Bugs of the official code fixed here:
- B1 (self-attention mixing the samples of a batch): fixed, methods/blocks.py's fusions act on each sample
  alone by default, so predictions never depend on batch composition; the official fusion transformer
  (model.fusion=transformer) keeps it with model.batch_mixing=true (then teacher.cache_outputs=false, so the
  teacher's z is computed on each training batch, as coded).
- B3: cosine matrices via F.normalize(eps=1e-8), no in-place division.
- B5 (T-Net never loaded, random and frozen): the T-Net is trained first (MMD of docs/fidelity.md#pkdot-tnet or MSE,
  train split, epoch selected on the validation split), stored, frozen while the student trains,
  and used identically at test.
- B6: no random frozen fc layers; the features are the teacher's trained encoder outputs.
- B8, B9, B15, B17: the harness loop evaluates every sample, selects on the validation split (never
  the test fold), does not augment at evaluation and seeds everything.
- The anchor indices are computed under no_grad from the (frozen) teacher; no gradient reaches the
  teacher or the T-Net.

T-Net input. The official T-Net maps the frozen visual backbone feature f_v to the physio feature f_p.
Here the "frozen backbone" is the stored teacher's encoder of each student modality: its pooled
features (which only need the student's own modalities, so the privileged firewall holds at test)
go through the T-Net to the teacher's privileged pooled encoder features. Reading the student's own
encoders instead would feed the frozen T-Net a distribution that keeps moving while the student
trains end to end. The official sigmoid auto-encoder output does not fit LayerNorm-ed features that
can be negative, so the default T-Net is an MLP (`mlp`); `autoencoder` and `linear8` are the PKDOT and MT-PKDOT
repos' own T-Nets (parity-tested with their weights), `linear` a two-layer linear stack.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from harness.data import Split, TaskSpec
from harness.method import Method, RunContext
from harness.registry import TASKS, register_method
from harness.runner import derive_seed
from harness.schema import ConfigError
from harness.training import Batch, SplitTensors, TensorRows, adopt_stored_log, fit, predict_in_batches
from methods.blocks import MultimodalNet, NetOutput, task_loss
from methods.ot import sinkhorn_divergence
from methods.teacher import build_net, frozen_outputs, get_teacher, stored_training_summary, teacher_key

__all__ = ["sinkhorn_divergence", "cosine_matrix", "shift_nonnegative", "anchor_indices", "structural_clouds",
           "structural_ot_loss", "centroid_loss", "mmd_multi_kernel", "mmd_multi_kernel_value", "TNET_ARCHS", "TNet", "get_tnet", "PKDOT", "note_k_cap",
           "frozen_path", "validation_predictor"]


# --------------------------------------------------------------------------------------------------
# The structural loss (docs/fidelity.md#pkdot-loss), shared with MT-PKDOT.

def cosine_matrix(z: torch.Tensor) -> torch.Tensor:
    """[..., B, d] -> [..., B, B] cosine similarities between the rows (B3: normalised with eps)."""
    zn = F.normalize(z, dim=-1, eps=1e-8)
    return zn @ zn.transpose(-1, -2)


def shift_nonnegative(a: torch.Tensor, mode: str = "min") -> torch.Tensor:
    """`min`: subtract each matrix's global minimum (as coded, B4); `affine`: (A + 1) / 2."""
    if mode == "min":
        return a - a.amin(dim=(-2, -1), keepdim=True)
    if mode == "affine":
        return (a + 1) / 2
    raise ValueError(f"shift must be min or affine, got {mode!r}")


def anchor_indices(a_t: torch.Tensor, k: int, anchors: str = "lowest", anchor_set: str = "per_row") -> torch.Tensor:
    """Columns [..., B, k] of the teacher cosine matrix a_t [..., B, B] each row is profiled on.

    per_row: row i's k least (`lowest`) or most (`highest`) similar other samples, sorted by teacher
    similarity (least similar first for `lowest`, most similar first for `highest`).
    shared: the same k columns for every row, those of least / most mean similarity to the others,
    sorted the same way. The diagonal (self-similarity) is never an anchor.
    """
    if anchors not in ("lowest", "highest"):
        raise ValueError(f"anchors must be lowest or highest, got {anchors!r}")
    B = a_t.shape[-1]
    largest = anchors == "highest"
    eye = torch.eye(B, dtype=torch.bool, device=a_t.device)
    if anchor_set == "per_row":
        masked = a_t.masked_fill(eye, -math.inf if largest else math.inf)
        return torch.topk(masked, k, dim=-1, largest=largest, sorted=True).indices
    if anchor_set == "shared":
        mean_sim = (a_t.sum(-2) - a_t.diagonal(dim1=-2, dim2=-1)) / max(B - 1, 1)
        cols = torch.topk(mean_sim, k, dim=-1, largest=largest, sorted=True).indices  # [..., k]
        return cols.unsqueeze(-2).expand(*a_t.shape[:-1], k)
    raise ValueError(f"anchor_set must be per_row or shared, got {anchor_set!r}")


def structural_clouds(z_t: torch.Tensor, z_s: torch.Tensor, k: int = 30, anchors: str = "lowest",
                      anchor_set: str = "per_row", shift: str = "min") -> tuple[torch.Tensor, torch.Tensor]:
    """The two B × k point clouds of docs/fidelity.md#pkdot-loss: shifted cosine rows of teacher and student,
    gathered at the teacher's anchors. k is capped at B − 1. The teacher side carries no gradient."""
    B = z_t.shape[-2]
    k = min(int(k), B - 1)
    with torch.no_grad():
        a_t = cosine_matrix(z_t.detach())
        idx = anchor_indices(a_t, k, anchors, anchor_set)
        x_t = shift_nonnegative(a_t, shift).gather(-1, idx)
    x_s = shift_nonnegative(cosine_matrix(z_s), shift).gather(-1, idx)
    return x_t, x_s


def structural_ot_loss(z_t: torch.Tensor, z_s: torch.Tensor, k: int = 30, anchors: str = "lowest",
                       anchor_set: str = "per_row", shift: str = "min", eps: float = 0.01,
                       scaling: float = 0.5) -> torch.Tensor:
    """PKDOT's structural loss between teacher and student joint features [B, d] (or [n, B, d]).

    S_ε between the uniform clouds of rows of X_T and X_S (structural_clouds). Invariance: permuting
    the batch (the same permutation of z_t and z_s rows) permutes the rows of both clouds and leaves
    each row's sorted profile unchanged, so the loss is invariant up to float round-off and ties in
    the teacher similarities. It is NOT invariant to re-pairing teacher and student rows (student
    row i is gathered at the anchors teacher row i chose), nor to reordering the anchors inside a
    row (which is why they are sorted). A batch of one sample gives 0.
    """
    if z_t.shape != z_s.shape:
        raise ValueError(f"teacher and student features differ in shape: {tuple(z_t.shape)} vs {tuple(z_s.shape)}")
    if z_t.shape[-2] < 2:
        return z_s.sum() * 0.0
    x_t, x_s = structural_clouds(z_t, z_s, k, anchors, anchor_set, shift)
    return sinkhorn_divergence(x_t, x_s, eps=eps, scaling=scaling)


def centroid_loss(z_t: torch.Tensor, z_s: torch.Tensor) -> torch.Tensor:
    """MT-PKDOT's centroid term (docs/fidelity.md#mtpkdot-centroid; commented out in the released code):
    ‖(1/B)Σ_i A_T[i, :] − (1/B)Σ_i A_S[i, :]‖₂ on the un-shifted cosine matrices."""
    with torch.no_grad():
        mean_t = cosine_matrix(z_t.detach()).mean(-2)
    return (mean_t - cosine_matrix(z_s).mean(-2)).norm(dim=-1)


def check_structural(cfg: DictConfig, spec: TaskSpec) -> None:
    """PKDOT / MT-PKDOT on this task (Method.check): the T-Net hallucinates the privileged modalities, so with
    it enabled the task must leave one privileged. The option values themselves are checked by the config
    schema (harness/schema.py) before anything runs."""
    if cfg.method.tnet.arch == "autoencoder" and cfg.method.tnet.width < 2:
        raise ConfigError(f"method.tnet.arch=autoencoder halves method.tnet.width for its bottleneck, and "
                          f"method.tnet.width={cfg.method.tnet.width}: set method.tnet.width >= 2 (256 is the official)")
    if cfg.model.get("fusion") == "transformer" and cfg.model.get("batch_mixing") \
            and OmegaConf.select(cfg, "teacher.cache_outputs", default=True):
        raise ConfigError("model.batch_mixing=true makes the teacher's joint feature depend on the samples that share "
                          "its batch: the official code computes it on each training batch, and a table cached over "
                          "evaluation batches (teacher.cache_outputs=true) would not; set teacher.cache_outputs=false")
    if cfg.method.tnet.enabled and not spec.privileged_modalities:
        key = TASKS.get(cfg.task.name).modality_protocol_key
        raise ConfigError(f"method={cfg.method.name} with method.tnet.enabled=true needs a privileged modality for its "
                          f"T-Net to hallucinate, and task.{key}={cfg.task[key]} leaves none "
                          f"({'+'.join(spec.modalities)} all at test): set method.tnet.enabled=false or "
                          f"task.{key}=privileged")


def note_k_cap(ctx: RunContext, cfg: DictConfig, n_train: int, train_cfg: DictConfig) -> None:
    """k is capped at B − 1 in each batch (structural_clouds); where the cap bites, the record says so
    (`adjusted`): B is the batch size, or the training split when it is smaller, or a short last batch."""
    k, bs = int(cfg.k), int(train_cfg.batch_size)
    full = min(bs, n_train)
    if k > full - 1:
        ctx.adjust("method.k", k, full - 1, f"k must be < the batch size ({full}"
                   + (", the whole training split" if full < bs else "") + ")")
    short = n_train % bs if (not train_cfg.get("drop_last", True) and n_train > bs) else 0
    if short and k > short - 1:
        ctx.adjust("method.k", k, short - 1, f"the last batch of each epoch has {short} samples (drop_last=false)")


def ot_terms(cfg: DictConfig, z_t: torch.Tensor, z_s: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """ot_weight · S_ε (+ centroid_weight · L_cent when cfg.centroid), and the named parts to log."""
    l_ot = structural_ot_loss(z_t, z_s, cfg.k, cfg.anchors, cfg.anchor_set, cfg.shift, cfg.epsilon, cfg.scaling)
    loss, parts = cfg.ot_weight * l_ot, {"ot": float(l_ot.detach())}
    if cfg.centroid:
        l_c = centroid_loss(z_t, z_s)
        loss = loss + cfg.centroid_weight * l_c
        parts["centroid"] = float(l_c.detach())
    return loss, parts


# --------------------------------------------------------------------------------------------------
# The T-Net (docs/fidelity.md#pkdot-tnet).

def mmd_multi_kernel(x: torch.Tensor, y: torch.Tensor, n_kernels: int = 5, kernel_mul: float = 2.0) -> torch.Tensor:
    """Multi-kernel Gaussian MMD² of the official mmd_loss.py (docs/fidelity.md#pkdot-tnet), a biased V-statistic.

    U = [x; y], σ² = mean of ‖u_i − u_j‖² over i ≠ j (detached), K = Σ_m exp(−D / (σ² · mul^(m − n//2))),
    MMD² = mean K_xx + mean K_yy − mean K_xy − mean K_yx (diagonals included).
    """
    u = torch.cat([x, y], 0)
    n = u.shape[0]
    sq = (u * u).sum(-1)
    d2 = (sq[:, None] + sq[None, :] - 2 * u @ u.T).clamp_min(0.0)
    sigma2 = (d2.detach().sum() / (n * n - n)).clamp_min(1e-12)
    base = sigma2 / kernel_mul ** (n_kernels // 2)
    kern = sum(torch.exp(-d2 / (base * kernel_mul**i)) for i in range(n_kernels))
    b = x.shape[0]
    return kern[:b, :b].mean() + kern[b:, b:].mean() - kern[:b, b:].mean() - kern[b:, :b].mean()


def mmd_multi_kernel_value(x: torch.Tensor, y: torch.Tensor, n_kernels: int = 5, kernel_mul: float = 2.0,
                           block_elements: int = 1 << 22) -> float:
    """mmd_multi_kernel's value (no gradient) without its [n, n] matrices (n = len(x) + len(y)): the distances in
    row blocks of about `block_elements`, in two passes (σ² needs every distance before any kernel). For the T-Net's
    validation MMD over a whole validation split: at Aff-Wild2's full size (about 21,600 rows) the matrices of
    mmd_multi_kernel took ~7 GB. The same value to float32 round-off: the sums are taken block by block (in
    float64) instead of over the whole matrix."""
    with torch.no_grad():
        u = torch.cat([x, y], 0)
        n, b = u.shape[0], x.shape[0]
        sq = (u * u).sum(-1)
        rows = max(1, block_elements // n)
        blocks = [(i, min(i + rows, end)) for start, end in ((0, b), (b, n)) for i in range(start, end, rows)]

        def d2(i, j):
            return (sq[i:j, None] + sq[None, :] - 2 * u[i:j] @ u.T).clamp_min(0.0)

        total = sum(float(d2(i, j).sum(dtype=torch.float64)) for i, j in blocks)
        sigma2 = torch.tensor(total / (n * n - n), dtype=u.dtype).clamp_min(1e-12)
        base = sigma2 / kernel_mul ** (n_kernels // 2)
        sums = {"xx": 0.0, "xy": 0.0, "yx": 0.0, "yy": 0.0}
        for i, j in blocks:
            dist = d2(i, j)
            kern = sum(torch.exp(-dist / (base * kernel_mul**m)) for m in range(n_kernels))
            row = "x" if i < b else "y"
            sums[row + "x"] += float(kern[:, :b].sum(dtype=torch.float64))
            sums[row + "y"] += float(kern[:, b:].sum(dtype=torch.float64))
        nx, ny = b, n - b
        return sums["xx"] / (nx * nx) + sums["yy"] / (ny * ny) - sums["xy"] / (nx * ny) - sums["yx"] / (ny * nx)


TNET_ARCHS = ("mlp", "linear", "autoencoder", "linear8")


class TNet(nn.Module):
    """Hallucinates privileged pooled features [N, out_dim] from student-modality pooled features [N, in_dim].

    `mlp`: Linear–GELU–Linear–GELU–Linear (widths `width`). `linear`: two linear layers, no activation.
    The official architectures (docs/fidelity.md#pkdot-tnet; parity: tests/test_parity_pkdot.py):
    `autoencoder`: the PKDOT repo's TransformNet, in → w → w/2 → w → out with ReLU after the first three and a
    sigmoid at the end (its outputs lie in (0, 1)); w = `width`, so the default 256 is the official 512-256-128-
    256-512 at in = out = 512.
    `linear8`: the MT-PKDOT repo's TransformNet, eight linear layers without activation,
    in → 8w → 4w → 2w → w → 2w → 4w → 8w → out; width 256 is the official 512-2048-1024-512-256-512-1024-2048-512.
    Widths other than 512: the official forward zero-pads a narrower input to 512 and cuts the output back to
    the input's width, which computes exactly what a first layer with in_dim inputs and a last layer with
    out_dim outputs compute (the padded columns multiply zeros, the cut rows are never read); so the first and
    last layers take in_dim and out_dim here, for any widths (only the initial scale differs: torch's default
    init scales by the layer's own fan-in). The official code cannot take inputs wider than 512; here they work.
    """

    def __init__(self, in_dim: int, out_dim: int, width: int = 256, arch: str = "mlp"):
        super().__init__()
        if arch == "mlp":
            self.net = nn.Sequential(nn.Linear(in_dim, width), nn.GELU(), nn.Linear(width, width), nn.GELU(),
                                     nn.Linear(width, out_dim))
        elif arch == "linear":
            self.net = nn.Sequential(nn.Linear(in_dim, width), nn.Linear(width, out_dim))
        elif arch == "autoencoder":
            if width < 2:
                raise ValueError(f"tnet.arch=autoencoder needs tnet.width >= 2 (its bottleneck is width // 2), got {width}")
            self.net = nn.Sequential(nn.Linear(in_dim, width), nn.ReLU(), nn.Linear(width, width // 2), nn.ReLU(),
                                     nn.Linear(width // 2, width), nn.ReLU(), nn.Linear(width, out_dim), nn.Sigmoid())
        elif arch == "linear8":
            widths = [in_dim, 8 * width, 4 * width, 2 * width, width, 2 * width, 4 * width, 8 * width, out_dim]
            self.net = nn.Sequential(*(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:])))
        else:
            raise ValueError(f"tnet.arch must be one of {', '.join(TNET_ARCHS)}, got {arch!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def linear_layers(self) -> list[nn.Linear]:
        """The affine layers in forward order (to copy another implementation's weights in, e.g. the official)."""
        return [m for m in self.net if isinstance(m, nn.Linear)]


def pooled_features(net: MultimodalNet, inputs: dict[str, torch.Tensor], lengths: dict[str, torch.Tensor] | None,
                    modalities: tuple[str, ...]) -> torch.Tensor:
    """Concatenated pooled encoder features [N, H · len(modalities)] of `net` for `modalities` only."""
    lengths = lengths or {}
    return torch.cat([net.encoders[m](inputs[m], lengths.get(m))[1] for m in modalities], -1)


TNET_LOSSES = ("mmd", "mse", "both")
TNET_SLOTS = ("tnet", "zeros", "oracle")


def tnet_loss(kind: str, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The T-Net's training loss: `mmd` (official), `mse` to each sample's own privileged features, or `both`,
    their unweighted sum (pre-registration 2026-12-07_pkdot_mechanism, arm P2)."""
    if kind == "mmd":
        return mmd_multi_kernel(pred, target)
    if kind == "mse":
        return F.mse_loss(pred, target)
    if kind == "both":
        return mmd_multi_kernel(pred, target) + F.mse_loss(pred, target)
    raise ValueError(f"tnet.loss must be one of {', '.join(TNET_LOSSES)}, got {kind!r}")


def tnet_selection_score(kind: str, scores: dict[str, float]) -> float:
    """The validation quantity the T-Net's epoch is selected on: the validation value of its own training loss
    (for `both`, val_mmd + val_mse, the same sum it trains on)."""
    if kind == "both":
        return scores["val_mmd"] + scores["val_mse"]
    return scores[f"val_{kind}"]


def _teacher_feature_pairs(teacher: MultimodalNet, split: Split, ctx: RunContext, batch_size: int
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    spec = ctx.spec
    data = SplitTensors(split, ctx.device, spec.target.kind == "classification")
    xs, ys = [], []
    with torch.no_grad():
        for b in data.batches(batch_size):
            xs.append(pooled_features(teacher, b.inputs, b.lengths, spec.student_modalities))
            ys.append(pooled_features(teacher, b.inputs, b.lengths, spec.privileged_modalities))
    return torch.cat(xs), torch.cat(ys)


def get_tnet(ctx: RunContext, tcfg: DictConfig, teacher: MultimodalNet, train: Split, val: Split
             ) -> tuple[TNet, dict]:
    """The T-Net of this run's teacher and T-Net config: trained once (stored next to the teacher)
    on the train split by harness.training.fit, the epoch with the lowest validation loss kept (or the untrained
    state, when no epoch beats it: selected_epoch -1), then frozen. Without a validation
    split (lupi's n_val=0, where the run trains on a fixed budget) it trains all `epochs` and keeps the last,
    as the run's own models do; the record says so (`selection`)."""
    spec, hidden = ctx.spec, teacher.hidden
    in_dim, out_dim = hidden * len(spec.student_modalities), hidden * len(spec.privileged_modalities)
    cfg = OmegaConf.to_container(tcfg, resolve=True)
    # `slot` says where the student reads the T-Net, not how it is trained: the oracle arm uses the same stored T-Net
    key = {**teacher_key(ctx), "role": "tnet", "tnet": {k: v for k, v in cfg.items() if k not in ("enabled", "slot")}}

    def build():
        torch.manual_seed(derive_seed(ctx.seed, ctx.cfg.task.name, ctx.fold, "tnet"))
        return TNet(in_dim, out_dim, tcfg.width, tcfg.arch)

    def train_fn(tnet: TNet) -> dict:
        # Trained by the harness's loop on the frozen teacher's features: Adam, a fresh permutation of the training
        # pairs per epoch from its own generator, drop_last; selection on the validation value of its own loss
        # (the untrained state a candidate too), or the last epoch without a validation split.
        x_tr, y_tr = _teacher_feature_pairs(teacher, train, ctx, ctx.cfg.train.eval_batch_size)
        has_val = val is not None and len(val) > 0
        x_va, y_va = _teacher_feature_pairs(teacher, val, ctx, ctx.cfg.train.eval_batch_size) if has_val else (None, None)

        def loss_fn(batch: Batch):
            return tnet_loss(tcfg.loss, tnet(batch.inputs["features"]), batch.targets), {}

        def val_scores() -> dict[str, float]:
            with torch.no_grad():
                pred = tnet(x_va)
                return {"val_mmd": mmd_multi_kernel_value(pred, y_va), "val_mse": float(F.mse_loss(pred, y_va))}

        def evaluate() -> dict:
            scores = val_scores()  # logged as val_mmd, val_mse; val_loss is the selection quantity
            return {"metrics": {k.removeprefix("val_"): v for k, v in scores.items()},
                    "loss": tnet_selection_score(tcfg.loss, scores)}

        # fused=False: torch's default Adam, which every stored T-Net was trained with (the fused kernel rounds
        # differently, so the same key would no longer mean the same weights)
        loop = {"optimizer": "adam", "fused": False, "lr": float(tcfg.lr), "weight_decay": 0.0,
                "batch_size": int(tcfg.batch_size), "drop_last": True, "max_epochs": int(tcfg.epochs),
                # tnet.patience counts the epochs without improvement it tolerates (stop once MORE have passed);
                # the loop's patience stops once that many have passed
                "stop": "patience" if has_val else "budget", "patience": int(tcfg.patience) + 1,
                "select_on": "loss" if has_val else "primary"}
        log = fit("tnet", tnet, loss_fn, None, TensorRows({"features": x_tr}, y_tr), None, ctx, loop,
                  evaluate=evaluate if has_val else None, config_key="method.tnet", select_initial=has_val,
                  batch_seed=derive_seed(ctx.seed, ctx.cfg.task.name, ctx.fold, "tnet-batches"))
        training = ctx.extra["training"]["tnet"]
        before = training.get("val_before")
        return {"log": log, "val_before": None if before is None else {k: before[k] for k in ("val_mmd", "val_mse")},
                "val_selected": val_scores() if has_val else None, "selected_epoch": training["selected_epoch"],
                "selection": "lowest validation loss" if has_val else "last epoch (no validation split)",
                "training": training}

    with torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda" else []):
        tnet, meta = ctx.teachers.get_or_train(key, build, train_fn, ctx.device)
    adopt_stored_log(ctx, "tnet", meta)
    ctx.extra.setdefault("training", {})["tnet"] = {**stored_training_summary(meta), "reused": meta["reused"]}
    ctx.extra["tnet"] = {"store_path": meta["store_path"], "reused": meta["reused"], "loss": tcfg.loss,
                         **({"slot": tcfg.slot} if tcfg.get("slot", "tnet") != "tnet" else {}),
                         "val_before": meta.get("val_before"), "val_selected": meta.get("val_selected"),
                         "selected_epoch": meta.get("selected_epoch"), "selection": meta.get("selection")}
    return tnet, meta


class PrivilegedStudent(nn.Module):
    """The student: its own MultimodalNet, whose privileged fusion slots are fed by the frozen
    (teacher encoders → T-Net) path. Only `net` is trained; only student modalities are read at
    validation and test.

    slot (method.tnet.slot; pre-registration 2026-12-07_pkdot_mechanism, arms P3 and P4):
    `tnet` = the T-Net's output in training, validation and test (PKDOT);
    `zeros` = zeros in the slots everywhere, no T-Net (`tnet` is None; same architecture);
    `oracle` = in training, the true privileged features of each sample, i.e. the T-Net's training target (the
    frozen teacher's pooled privileged encoder features, pooled_features(teacher, ·, privileged)); at validation
    and test the T-Net's output, as `tnet` (predict never reads a privileged input)."""

    def __init__(self, net: MultimodalNet, teacher: MultimodalNet | None, tnet: TNet | None,
                 student_modalities: tuple[str, ...], privileged: tuple[str, ...], slot: str = "tnet"):
        super().__init__()
        if slot not in TNET_SLOTS:
            raise ValueError(f"tnet.slot must be one of {', '.join(TNET_SLOTS)}, got {slot!r}")
        if (slot == "zeros" and tnet is not None) or (slot == "oracle" and tnet is None):
            raise ValueError(f"tnet.slot={slot} {'takes no' if slot == 'zeros' else 'needs a'} T-Net")
        self.net = net
        self.student_modalities, self.privileged = tuple(student_modalities), tuple(privileged)
        self.slot = slot
        # Not registered as submodules: frozen, stored elsewhere, never in the student's optimizer/state.
        self._frozen = (teacher, tnet)

    @property
    def frozen_teacher(self) -> MultimodalNet | None:
        """The teacher whose pooled student-modality features are the T-Net's input."""
        return self._frozen[0]

    @property
    def has_tnet(self) -> bool:
        return self._frozen[1] is not None

    def hallucinate(self, inputs, lengths, teacher_pooled: dict[str, torch.Tensor] | None = None
                    ) -> torch.Tensor | None:
        """The slots' features [B, P·hidden] at validation and test: the T-Net's, from the teacher's pooled
        student-modality features, computed here or taken from `teacher_pooled` (the teacher's own forward already
        made them: see frozen_path); zeros under slot=zeros. None without privileged slots."""
        teacher, tnet = self._frozen
        if self.slot == "zeros":
            rows = inputs[self.student_modalities[0]].shape[0]
            return torch.zeros(rows, self.net.hidden * len(self.privileged), device=next(self.net.parameters()).device)
        if tnet is None:
            return None
        with torch.no_grad():
            if teacher_pooled is None:
                t_in = pooled_features(teacher, inputs, lengths, self.student_modalities)
            else:
                t_in = torch.cat([teacher_pooled[m] for m in self.student_modalities], -1)
            return tnet(t_in)

    def training_features(self, inputs, lengths, teacher_pooled: dict[str, torch.Tensor] | None = None
                          ) -> torch.Tensor | None:
        """The slots' features while the student trains: hallucinate's, except under slot=oracle the true
        privileged features of these rows (the frozen teacher's pooled privileged encoder features, the T-Net's
        training target; from `teacher_pooled` when the caller's teacher forward made them). Training rows only:
        the privileged inputs are read here, never by predict."""
        if self.slot != "oracle":
            return self.hallucinate(inputs, lengths, teacher_pooled)
        with torch.no_grad():
            if teacher_pooled is None:
                return pooled_features(self.frozen_teacher, inputs, lengths, self.privileged)
            return torch.cat([teacher_pooled[m] for m in self.privileged], -1)

    def slots(self, features: torch.Tensor | None) -> dict[str, torch.Tensor] | None:
        """hallucinate's features as the student net's privileged fusion slots."""
        return None if features is None else dict(zip(self.privileged, features.split(self.net.hidden, dim=-1)))

    def forward(self, inputs, lengths=None, features: torch.Tensor | None = None) -> NetOutput:
        """features: the slots' features for these rows when the caller has them (a training step's frozen_path)."""
        if features is None:
            features = self.hallucinate(inputs, lengths)
        return self.net(inputs, lengths, injected=self.slots(features))


def frozen_path(teacher: MultimodalNet, student: PrivilegedStudent):
    """What a PKDOT training step takes from frozen models, for a batch: (teacher joint feature z_t,) plus the
    slots' training features when the student has slots (student.training_features: the T-Net's, zeros, or
    the oracle's). Deterministic (eval mode), so frozen_outputs may compute it once per training sample.

    The frozen teacher (eval mode: no dropout) encodes every modality for z_t; its pooled student-modality
    features are the T-Net's input too, so they are reused rather than computed a second time: the values
    student(inputs, lengths) would compute, one teacher encoder pass fewer."""
    def fn(inputs, lengths) -> tuple[torch.Tensor, ...]:
        seqs, pooled = teacher.encode(inputs, lengths)
        z_t = teacher.fuse_and_predict(seqs, pooled, None, lengths).z
        shared = pooled if teacher is student.frozen_teacher else None  # another teacher's features are not the T-Net's input
        features = student.training_features(inputs, lengths, teacher_pooled=shared)
        return (z_t,) if features is None else (z_t, features)
    return fn


def build_student(ctx: RunContext, cfg: DictConfig, teacher: MultimodalNet, train: Split, val: Split
                  ) -> PrivilegedStudent:
    """T-Net (trained or reused, frozen) + a student net with fusion slots for the privileged modalities.
    tnet.slot=zeros: the same slots, fed zeros, and no T-Net trained (extra.tnet says so)."""
    spec = ctx.spec
    tnet, slot = None, cfg.tnet.get("slot", "tnet")
    if cfg.tnet.enabled:
        if slot == "zeros":
            ctx.extra["tnet"] = {"trained": False, "slot": "zeros",
                                 "why": "method.tnet.slot=zeros: the privileged slots are fed zeros; no T-Net"}
        else:
            tnet, _ = get_tnet(ctx, cfg.tnet, teacher, train, ctx.frozen_val(val, tuple(spec.modalities)))
            tnet.eval()
        net = build_net(ctx, spec.student_modalities, slots=tuple(spec.student_modalities) + spec.privileged_modalities)
    else:
        net = build_net(ctx, spec.student_modalities)
    return PrivilegedStudent(net, teacher, tnet, spec.student_modalities, spec.privileged_modalities,
                             slot if cfg.tnet.enabled else "tnet")


def student_predictor(student: PrivilegedStudent, ctx: RunContext,
                      features: Callable[[Batch], tuple[torch.Tensor, ...]] | None = None):
    """Method.predict's values for a batch. features: the T-Net's features of the batch's rows, read from a
    table of the split (frozen_outputs) instead of computed by the frozen path in every call."""
    classes = ctx.spec.target.kind == "classification"

    def predict_fn(batch: Batch) -> torch.Tensor:
        out = student(batch.inputs, batch.lengths, None if features is None else features(batch)[0]).out
        return out.softmax(-1) if classes else out
    return predict_fn


def validation_predictor(student: PrivilegedStudent, val: Split | None, ctx: RunContext):
    """student_predictor for fit's validation passes: the frozen teacher and T-Net run over the validation split
    once (frozen_outputs), not in every epoch's pass; the same values bit for bit."""
    if not student.has_tnet or val is None or len(val) == 0:  # no T-Net: the student alone, nothing frozen
        return student_predictor(student, ctx)
    features = frozen_outputs(lambda inputs, lengths: (student.hallucinate(inputs, lengths),), val, ctx)
    return student_predictor(student, ctx, features)


def student_train_cfg(ctx: RunContext, cfg: DictConfig) -> DictConfig:
    """The run's train config with this method's batch size (null keeps train.batch_size)."""
    if cfg.get("batch_size"):
        return OmegaConf.merge(ctx.cfg.train, {"batch_size": int(cfg.batch_size)})
    return ctx.cfg.train


def predict_student(student: PrivilegedStudent, split: Split, ctx: RunContext) -> np.ndarray:
    data = SplitTensors(split, ctx.device, ctx.spec.target.kind == "classification")
    return predict_in_batches(student_predictor(student, ctx), data, ctx.cfg.train.eval_batch_size)


@register_method
class PKDOT(Method):
    name = "pkdot"
    description = "PKDOT: T-Net-hallucinated privileged slot + entropic-OT matching of teacher/student batch structure"

    @classmethod
    def check(cls, cfg: DictConfig, spec: TaskSpec) -> None:
        check_structural(cfg, spec)

    def fit(self, train: Split, val: Split) -> None:
        ctx, cfg = self.ctx, self.cfg
        note_k_cap(ctx, cfg, len(train), student_train_cfg(ctx, cfg))
        teacher, _ = get_teacher(ctx, train, val)
        self.student = build_student(ctx, cfg, teacher, train, val)
        target, reg = ctx.spec.target, ctx.cfg.train.regression_loss

        frozen = frozen_outputs(frozen_path(teacher, self.student), train, ctx)

        def loss_fn(batch: Batch):
            z_t, *features = frozen(batch)
            s_out = self.student(batch.inputs, batch.lengths, features[0] if features else None)
            l_task = task_loss(s_out.out, batch.targets, target, batch.mask, reg)
            l_struct, parts = ot_terms(cfg, z_t, s_out.z)
            loss = cfg.task_weight * l_task + l_struct
            return loss, {"task": float(l_task.detach()), **parts}

        fit("student", self.student.net, loss_fn, validation_predictor(self.student, val, ctx), train, val, ctx,
            student_train_cfg(ctx, cfg))

    def predict(self, split: Split) -> np.ndarray:
        return predict_student(self.student, split, self.ctx)
