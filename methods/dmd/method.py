"""The `dmd` method: hyper-parameter presets, the network built for a task's graph, training in the
harness's one loop (harness/training.py), the record's edge facts, prediction from student nodes only.

Protocols. `full` (every modality kept at test): the paper's model; y^ of the fusion head is the
prediction. `privileged` (some modalities are privileged): DMD becomes a privileged distiller (our
adaptation, not in the paper): the graph's nodes are still ALL modalities during training; by
default (`gd.edges=auto`) only the edges INTO the student node(s) exist (teacher = any other node,
privileged ones included), so the learned edge weights say how much each privileged node teaches each
student node; the homogeneous and final fusion heads use the student node(s) only, and `predict` runs
only the student nodes' paths on only the student inputs (it restricts the split to them first), so
privileged test inputs are never touched (the runner also strips them: the firewall).

Training: the official loop's settings as the options of the shared loop (`method.training`, merged
over the run's `train` group): Adam (lr 1e-4, fused), gradients summed over 10 mini-batches
(`accumulate`; the trailing partial group of an epoch is dropped as in the official code; an epoch with
fewer batches uses them all, recorded), clipping by value 0.6 after every backward, ReduceLROnPlateau
(factor .5, patience 5) on the selection quantity, early stopping after 10 epochs without a better
validation score, best state restored. Two harness additions to the official loop, which has neither:
a cap of `max_epochs`, and a stop once the schedule has taken the learning rate below `min_lr` (ten
halvings). Selection is on VALIDATION only (the official code logs test every epoch): the task's primary
metric, except where `preset: auto` keeps the official KeyEval (the validation loss: MAE of the fusion
head on mosi/mosei, cross-entropy on classification targets). Per-step targets (Aff-Wild2 frames) are
POOLED: the model learns the window's mean target (or most frequent class) and its window prediction
is broadcast to every step. Every deviation and its reason: docs/fidelity.md#dmd.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from harness.data import Split, TargetSpec, TaskSpec
from harness.method import Method, RunContext
from harness.predictions import make_predictions
from harness.registry import register_method
from harness.schema import ConfigError
from harness.task import TaskError
from harness.training import Batch, SplitTensors, fit, predict_in_batches
from harness.training import make_optimizer as _loop_optimizer
from methods.dmd.bert import TOKEN_DIM, BertTextEncoder, bert_config
from methods.dmd.graph import GraphDistillationUnit, edge_priors, graph_edges, node_roles
from methods.dmd.losses import DMDLoss
from methods.dmd.network import TEXT, DMDNet
from methods.dmd.plot import plot_edges


# The official config's per-dataset settings (docs/fidelity.md#dmd-presets), applied by `preset: auto` on those
# tasks: the MOSEI column, and on both the official selection (KeyEval 'Loss': the validation MAE of the fusion head).
PRESETS = {
    "mosi": {"training": {"select_on": "loss"}},
    "mosei": {"d": 30, "heads": 6, "kernel_by_modality": {"text": 5, "audio": 1, "vision": 3},
              "attn_dropout": 0.4, "attn_dropout_by_modality": {"audio": 0.0, "vision": 0.0},
              "embed_dropout": 0.0, "input_dropout_by_modality": {"text": 0.3}, "training": {"select_on": "loss"}},
}


# ----------------------------------------------------------------------------------------------
# Per-step targets: pooled to one target per sequence
# ----------------------------------------------------------------------------------------------

def pool_step_targets(split: Split, target: TargetSpec) -> Split:
    """[N, T, K] per-step targets -> [N, K]: mean over valid steps (regression), most frequent class (classes)."""
    y = np.asarray(split.targets)
    mask = np.ones(y.shape[:2], bool) if split.target_mask is None else np.asarray(split.target_mask, bool)
    if target.kind == "regression":
        m = mask[..., None].astype(np.float64)
        pooled = ((y * m).sum(1) / np.maximum(m.sum(1), 1)).astype(np.float32)
    else:
        onehot = (y[..., None] == np.arange(target.n_classes)) & mask[..., None, None]  # [N, T, K, C]
        pooled = onehot.sum(1).argmax(-1).astype(np.int64)
    return Split(ids=split.ids, groups=split.groups, inputs=split.inputs, targets=pooled, lengths=split.lengths)



# ----------------------------------------------------------------------------------------------
# The method
# ----------------------------------------------------------------------------------------------

def resolve_hparams(cfg: DictConfig, task_name: str, target_kind: str | None = None) -> dict:
    """The method config as a plain dict, with the per-dataset preset applied (`preset: auto`).

    `preset: auto` on a classification target also selects on the validation loss (the official KeyEval):
    accuracy on a small validation split is a step function that sits at chance through DMD's slow first
    epochs (lr 1e-4, a few accumulated updates per epoch), so early stopping on it ends training before
    DMD learns (seen on synthetic 5-class: stopped at epoch 11 with validation cross-entropy still falling)."""
    hp = OmegaConf.to_container(cfg, resolve=True)
    preset = hp.get("preset", "auto")
    if preset == "auto" and target_kind == "classification":
        hp["training"] = {**hp["training"], "select_on": "loss"}
        hp["preset_applied"] = "classification: select_on=loss"
    key = task_name if preset == "auto" else preset
    if preset not in ("auto", "none", None) and preset not in PRESETS:
        raise ValueError(f"method.preset={preset!r}: choose auto, none or one of {sorted(PRESETS)}")
    if preset not in ("none", None) and key in PRESETS:
        for k, v in copy.deepcopy(PRESETS[key]).items():
            hp[k] = {**hp[k], **v} if k == "training" else v
        hp["preset_applied"] = f"{hp['preset_applied']}; {key}" if hp.get("preset_applied") else key
    for k in ("kernel_by_modality", "attn_dropout_by_modality", "input_dropout_by_modality"):
        hp[k] = dict(hp.get(k) or {})
    return hp


def preset_changes(cfg: DictConfig, hp: dict) -> dict[str, tuple[Any, Any]]:
    """The configured values the preset replaced, as {dotted key: (configured, used)}."""
    asked = OmegaConf.to_container(cfg, resolve=True)
    out = {}
    for key, used in hp.items():
        if key == "training":
            out.update({f"method.training.{k}": (asked["training"].get(k), v) for k, v in used.items()
                        if asked["training"].get(k) != v})
        elif key != "preset_applied" and asked.get(key) != used and (asked.get(key) or used):
            out[f"method.{key}"] = (asked.get(key), used)
    return out


def make_optimizer(params: list[torch.Tensor], training: dict) -> torch.optim.Optimizer:
    """DMD's optimizer through the loop's: the official Adam (default betas and eps, the config's lr and weight
    decay, 0: the official code ignores its config value), fused (one kernel over every tensor) where torch
    offers it: the same update, about a quarter of the time of torch's per-tensor loop on the CPU."""
    return _loop_optimizer(params, {"optimizer": "adam", "fused": "auto", **training})



def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def fine_tunes_bert(hp: dict) -> bool:
    """method.text_encoder: frozen (the task's precomputed text features, the default) | bert (DMD*)."""
    encoder = hp.get("text_encoder", "frozen")
    if encoder not in ("frozen", "bert"):
        raise ValueError(f"method.text_encoder={encoder!r}: choose frozen or bert")
    return encoder == "bert"


def bert_init(hp: dict) -> str:
    """method.bert_init: pretrained (method.bert_path's weights, the default) | random_tiny (a tiny random BERT built
    in code: the recipes' offline smoke runs only)."""
    init = hp.get("bert_init", "pretrained")
    if init not in ("pretrained", "random_tiny"):
        raise ValueError(f"method.bert_init={init!r}: choose pretrained or random_tiny")
    return init


def parameter_groups(model: nn.Module, net: DMDNet, hp: dict) -> list[dict] | None:
    """The optimizer's groups: BERT's parameters with method.bert_lr / bert_weight_decay (the official values,
    1e-4 and 0, are those of the rest: docs/fidelity.md#dmd-bert), everything else with method.training's;
    None (the module's parameters, one group) with frozen text."""
    if net.text_encoder is None:
        return None
    bert = {id(p) for p in net.text_encoder.parameters()}
    return [{"params": [p for p in model.parameters() if id(p) not in bert]},
            {"params": list(net.text_encoder.parameters()), "lr": float(hp["bert_lr"]),
             "weight_decay": float(hp["bert_weight_decay"]), "name": "bert"}]


def build_dmd(modalities: dict[str, int], seq_lens: dict[str, int], target: TargetSpec, hp: dict,
              student: tuple[str, ...], text_encoder: nn.Module | None = None
              ) -> tuple[DMDNet, GraphDistillationUnit, GraphDistillationUnit, dict]:
    """The network, both GD units and the graph description (nodes, edges, priors, roles).
    text_encoder: BERT on the text tokens (method.text_encoder=bert), or None for the task's text features."""
    nodes = tuple(modalities)
    privileged = set(student) != set(nodes)
    net = DMDNet(modalities, seq_lens, target, hp, predictors=tuple(student) if privileged else nodes,
                 text_encoder=text_encoder)
    gd = hp["gd"]
    mode = gd.get("edges", "auto")
    if mode not in ("auto", "all", "into_student"):
        raise ValueError(f"method.gd.edges={mode!r}: choose auto, all or into_student")
    receivers = tuple(student) if (mode == "into_student" or (mode == "auto" and privileged)) else nodes
    edges = graph_edges(nodes, receivers)
    roles = node_roles(nodes, gd.get("roles"))
    pri = {u: edge_priors(nodes, edges, u, gd["prior"], roles, float(gd["prior_temperature"]))
           for u in ("homo", "hetero")}
    detach = bool(gd.get("detach_edge_inputs", False))
    homo = GraphDistillationUnit(net.n_out, net.d, int(gd["homo_hidden"]), edges, pri["homo"],
                                 float(gd["temperature"]), detach)
    het = GraphDistillationUnit(net.n_out, (len(nodes) - 1) * net.d, int(gd["het_hidden"]), edges, pri["hetero"],
                                float(gd["temperature"]), detach)
    graph = {"nodes": list(nodes), "predictors": list(net.predictors),
             "protocol": "privileged" if privileged else "full",
             "edges": [f"{nodes[t]}->{nodes[s]}" for s, t in edges],  # teacher -> student
             "roles": roles, "prior_mode": gd["prior"] if roles is not None else "uniform"}
    return net, homo, het, graph


@register_method
class DMD(Method):
    name = "dmd"
    description = ("DMD (CVPR 2023): decoupled homo/hetero spaces + graph distillation units; privileged protocol: "
                   "learned edges distil privileged nodes into the student's (text = precomputed features, or "
                   "BERT fine-tuned on the tokens with method.text_encoder=bert)")

    @classmethod
    def check(cls, cfg: DictConfig, spec: TaskSpec) -> None:
        """The graph against the task's modalities, and the preset's values (they depend on the task)."""
        nodes = tuple(spec.modalities)
        if len(nodes) < 2:
            raise ConfigError(f"DMD needs at least 2 modalities (its graph's nodes), the task has {list(nodes)}")
        hp = resolve_hparams(cfg.method, str(cfg.task.name), spec.target.kind)
        if hp["d"] % hp["heads"]:
            raise ConfigError(f"method.d={hp['d']} must be divisible by method.heads={hp['heads']}"
                              + (f" (preset: {hp['preset_applied']})" if hp.get("preset_applied") else ""))
        roles = hp["gd"].get("roles")
        if roles and (len(nodes) != 3 or sorted(roles) != sorted(nodes)):
            three = "" if len(nodes) == 3 else " and needs 3 of them: set method.gd.roles=null"
            raise ConfigError(f"method.gd.roles={list(roles)} must list the task's modalities {list(nodes)} as "
                              f"[L, V, A]{three}")
        if fine_tunes_bert(hp):
            dim = spec.modalities.get(TEXT)
            if dim != TOKEN_DIM:
                raise ConfigError(f"method.text_encoder=bert runs BERT on the MMSA pickles' text_bert tokens: the task "
                                  f"must deliver them as its '{TEXT}' modality (task mosi or mosei, whose "
                                  f"task.text_input follows method.text_encoder); this task's '{TEXT}' is "
                                  f"{'absent' if dim is None else f'{dim}-d features'}")
            if bert_init(hp) == "pretrained":
                bert_config(str(hp["bert_path"]))  # the model is on disk (folder or HF cache), else one line saying how
        loop = {**OmegaConf.to_container(cfg.train, resolve=True), **hp["training"]}
        if loop.get("stop") == "budget" and loop.get("select_on") == "loss":
            raise ConfigError("method.training.stop=budget keeps the last epoch, but DMD selects on the validation "
                              f"loss here ({hp.get('preset_applied') or 'method.training.select_on=loss'}): set "
                              "method.training.stop=patience, or method.preset=none with select_on=primary")

    def __init__(self, cfg: DictConfig, ctx: RunContext):
        super().__init__(cfg, ctx)
        self.hp = resolve_hparams(cfg, str(ctx.cfg.task.name), ctx.spec.target.kind)
        for key, (asked, used) in preset_changes(cfg, self.hp).items():
            ctx.adjust(key, asked, used, f"method.preset={cfg.preset} applied {self.hp['preset_applied']} "
                                         "(method.preset=none keeps the configured values)")

    # --- data helpers ------------------------------------------------------------------------
    def _targets_split(self, split: Split) -> Split:
        return pool_step_targets(split, self.ctx.spec.target) if self.ctx.spec.target.per_step else split

    def _to_outputs(self, out: torch.Tensor) -> torch.Tensor:
        t = self.ctx.spec.target
        if t.kind == "classification":
            return out.view(-1, len(t.dims), t.n_classes).softmax(-1)
        return out

    def _broadcast_steps(self, outputs: np.ndarray, split: Split) -> np.ndarray:
        if not self.ctx.spec.target.per_step:
            return outputs
        steps = np.asarray(split.targets).shape[1]
        return np.repeat(outputs[:, None], steps, axis=1)

    def _predict_fn(self, batch: Batch) -> torch.Tensor:
        return self._to_outputs(self.net(batch.inputs, full=False).out)

    def _val_loss(self, outputs: np.ndarray, targets: np.ndarray) -> float:
        """Sample-weighted validation loss of the fusion head: MAE (regression) or cross-entropy (classes)."""
        if self.ctx.spec.target.kind == "classification":
            p = np.take_along_axis(outputs, targets.astype(np.int64)[..., None], axis=-1)
            return float(-np.log(np.clip(p, 1e-12, None)).mean())
        return float(np.abs(outputs - targets.reshape(outputs.shape)).mean())

    # --- training ------------------------------------------------------------------------------
    def fit(self, train: Split, val: Split) -> None:
        ctx, hp, spec = self.ctx, self.hp, self.ctx.spec
        for m, dim in spec.modalities.items():
            got = train.inputs[m].shape[-1] if m in train.inputs else None
            if got != dim:
                raise TaskError(f"training split modality '{m}': feature dim {got}, the task spec says {dim} "
                                f"(fix the task's loader or its *_dim config)")
        seq_lens = {m: (train.inputs[m].shape[1] if train.inputs[m].ndim == 3 else 1) for m in spec.modalities}
        text_encoder = self._text_encoder(train) if fine_tunes_bert(hp) else None
        net, homo, het, graph = build_dmd(dict(spec.modalities), seq_lens, spec.target, hp, spec.student_modalities,
                                          text_encoder=text_encoder)
        for m in net.nodes:  # kernels longer than a modality's sequence are cut to it
            own = m in hp["kernel_by_modality"]
            asked = int(hp["kernel_by_modality"][m] if own else hp["kernel"])
            if net.kernels[m] != asked:
                ctx.adjust(f"method.kernel_by_modality.{m}" if own else "method.kernel", asked, net.kernels[m],
                           f"cut to {m}'s sequence length, {net.seq_lens[m]}")
        self.net, self.graph = net.to(ctx.device), graph
        self.model = nn.ModuleDict({"net": self.net, "homo_gd": homo, "het_gd": het}).to(ctx.device)
        dmd_loss = DMDLoss(self.net, self.model["homo_gd"], self.model["het_gd"], hp["loss"])
        train_cfg = self.train_options()
        classification = spec.target.kind == "classification"
        val_targets = self._targets_split(val).targets
        val_t = SplitTensors(val.restrict(self.net.predictors), ctx.device, classification)
        edge_sums = {"homo": 0.0, "hetero": 0.0}

        def loss_fn(batch: Batch):
            loss, parts, e_homo, e_het = dmd_loss(batch.inputs, batch.targets)
            edge_sums["homo"] = edge_sums["homo"] + e_homo.detach().mean(1)
            edge_sums["hetero"] = edge_sums["hetero"] + e_het.detach().mean(1)
            return loss, parts

        def edges_of_epoch(epoch: int, n_batches: int) -> dict:
            """The epoch's batch-mean edge weights E (training mode), in the log entry."""
            fields = {f"edges_{u}": (edge_sums[u] / n_batches).cpu().tolist() for u in ("homo", "hetero")}
            edge_sums.update(homo=0.0, hetero=0.0)
            return fields

        def evaluate() -> dict:
            """The predicting nodes on only their inputs; val loss on the pooled targets (the official KeyEval)."""
            out = predict_in_batches(self._predict_fn, val_t, int(train_cfg["eval_batch_size"]))
            return {"loss": self._val_loss(out, val_targets),
                    "metrics": ctx.task.score(make_predictions(val, self._broadcast_steps(out, val), spec.target))}

        # The batch order of DMD's original loop, seeded from the run's seed itself (no draw from the stream).
        log = fit("student", self.model, loss_fn, None, self._targets_split(train), val, ctx, train_cfg,
                  params=parameter_groups(self.model, self.net, hp),
                  checkpoint_path=ctx.run_dir / "checkpoint_dmd.pt", evaluate=evaluate, epoch_hook=edges_of_epoch,
                  batch_seed=int(torch.initial_seed()) % (2**63), config_key="method.training")
        hist = {u: [e[f"edges_{u}"] for e in log] for u in ("homo", "hetero")}
        summary = ctx.extra["training"]["student"]
        self._record(train, val, hist, summary["selected_epoch"], summary["accumulate"], summary["batches_per_epoch"])

    def _text_encoder(self, train: Split) -> BertTextEncoder:
        """BERT from method.bert_path (or the tiny random one of bert_init=random_tiny), loaded without touching the
        run's random stream (so the DMD layers start as with frozen text); its token ids checked against its
        vocabulary."""
        with torch.random.fork_rng(devices=[]):
            encoder = (BertTextEncoder.from_path(str(self.hp["bert_path"])) if bert_init(self.hp) == "pretrained"
                       else BertTextEncoder.tiny_random())
        ids = train.inputs[TEXT][..., 0]
        if ids.size and (ids.min() < 0 or ids.max() >= encoder.vocab_size or not np.all(ids == np.round(ids))):
            raise TaskError(f"the text tokens' ids span [{ids.min():g}, {ids.max():g}], not integers in BERT's "
                            f"vocabulary [0, {encoder.vocab_size}) (method.bert_path={self.hp['bert_path']}): "
                            f"the pickle's text_bert and the model do not match")
        return encoder

    def train_options(self) -> dict:
        """The run's `train` group with DMD's `method.training` (presets applied) over it."""
        return {**OmegaConf.to_container(self.ctx.cfg.train, resolve=True), **self.hp["training"]}

    def _final_edges(self, split: Split) -> dict[str, list[float]]:
        """Batch-mean E of the selected model in eval mode over a split (all modalities: training data)."""
        data = SplitTensors(self._targets_split(split), self.ctx.device, self.ctx.spec.target.kind == "classification")
        sums, n = {"homo": 0.0, "hetero": 0.0}, 0
        with torch.no_grad():
            for batch in data.batches(int(self.hp["training"]["eval_batch_size"])):
                o = self.net(batch.inputs, full=True)
                sums["homo"] = sums["homo"] + self.model["homo_gd"](o.homo_logits, o.homo_reprs).sum(1)
                sums["hetero"] = sums["hetero"] + self.model["het_gd"](o.het_logits, o.het_reprs).sum(1)
                n += len(batch.index)
        return {u: (v / max(n, 1)).cpu().tolist() for u, v in sums.items()}

    def _record(self, train: Split, val: Split, hist: dict, selected: int, accumulate: int, n_batches: int):
        ctx, net = self.ctx, self.net
        # The final edges are measured on the validation split; without one (lupi's n_val=0) on the training split.
        # They need every modality: under selection_split=test, the validation split (RunContext.frozen_val).
        val = ctx.frozen_val(val, tuple(ctx.spec.modalities))
        edges_split = val if len(val) else train
        final = self._final_edges(edges_split)
        edges = {**self.graph, "selected_epoch": selected,
                 "homo": {"prior": self.model["homo_gd"].prior.tolist(), "per_epoch": hist["homo"],
                          "selected_epoch_train_mean": hist["homo"][selected] if hist["homo"] else None,
                          "final": final["homo"]},
                 "hetero": {"prior": self.model["het_gd"].prior.tolist(), "per_epoch": hist["hetero"],
                            "selected_epoch_train_mean": hist["hetero"][selected] if hist["hetero"] else None,
                            "final": final["hetero"]},
                 "final_is": "batch-mean E of the selected model (eval mode) over the "
                             + ("validation" if len(val) else "training (no validation split)") + " split",
                 "title": f"{ctx.cfg.task.name} ({self.graph['protocol']} protocol), {ctx.task.data_source} data, "
                          f"fold {ctx.fold}, seed {ctx.seed}"}
        ctx.extra["dmd_edges"] = edges
        bert_source = (self.hp["bert_path"] if bert_init(self.hp) == "pretrained"
                       else "a tiny RANDOM BERT, bert_init=random_tiny: smoke only")
        ctx.extra["dmd"] = {
            "protocol": self.graph["protocol"], "nodes": list(net.nodes), "predictors": list(net.predictors),
            "hetero_sources": {m: list(s) for m, s in net.sources.items()},
            "kernels": net.kernels, "steps_after_conv": net.steps, "seq_lens": net.seq_lens,
            "n_params_net": count_parameters(net), "n_params_homo_gd": count_parameters(self.model["homo_gd"]),
            "n_params_het_gd": count_parameters(self.model["het_gd"]),
            "accumulate_batches": accumulate, "batches_per_epoch": n_batches,
            "accumulation_reduced": accumulate < int(self.hp["training"]["accumulate"]),
            "per_step_targets": "pooled per sequence, prediction broadcast to steps" if ctx.spec.target.per_step else None,
            "text_features": (f"BERT fine-tuned on the text_bert tokens ({bert_source}, lr "
                              f"{self.hp['bert_lr']:g}, weight decay {self.hp['bert_weight_decay']:g})"
                              if net.text_encoder is not None else
                              "precomputed (frozen) features of the task, no BERT fine-tuning"),
            "n_params_text_encoder": count_parameters(net.text_encoder) if net.text_encoder is not None else 0,
            "preset_applied": self.hp.get("preset_applied"),
        }
        try:
            plot_edges(edges, ctx.run_dir / "dmd_edges.png")
            ctx.extra["dmd"]["edge_plot"] = "dmd_edges.png"
        except Exception as e:  # noqa: BLE001 - a plot must not fail the run
            ctx.extra["dmd"]["edge_plot_error"] = f"{type(e).__name__}: {e}"

    def predict(self, split: Split) -> np.ndarray:
        """Outputs of the predicting nodes only, from only their inputs (the student's in the privileged protocol)."""
        missing = [m for m in self.net.predictors if m not in split.inputs]
        if missing:
            raise KeyError(f"dmd predicts from {list(self.net.predictors)}; the split lacks {missing}")
        data = SplitTensors(split.restrict(self.net.predictors), self.ctx.device,
                            self.ctx.spec.target.kind == "classification")
        self.model.eval()
        out = predict_in_batches(self._predict_fn, data, int(self.hp["training"]["eval_batch_size"]))
        return self._broadcast_steps(out, split)
