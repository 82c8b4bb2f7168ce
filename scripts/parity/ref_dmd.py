"""Parity references for DMD from the official code (mdswyz/DMD), run on the CPU in float64.

    python scripts/parity/make_reference.py --dmd /path/to/DMD

Components (tests/parity/<component>.npz, compared by tests/test_parity_dmd.py):
- dmd_homo_gd, dmd_hetero_gd: the two graph-distillation units (get_distillation_kernel_homo.py,
  get_distillation_kernel.py) with run.py's settings (priors, gd_reg 10, w_losses [1, 10], alpha 1/8): edge
  weights, the three losses, and each loss's gradient with respect to the logits and the representations;
- dmd_margin: HingeLoss.py on interleaved features with tied and distinct labels, value and gradient;
- dmd_model, dmd_model_mosei, dmd_model_bert: the DMD network (model/dmd.py; the MOSI aligned config, the
  MOSEI one (kernels 5/1/3: unequal T'), and DMD*: use_bert=true, the official BertTextEncoder with a tiny BERT
  (TINY_BERT) on text_bert token rows; the first two on the frozen-text path use_bert=false; every dropout 0 so
  that the training-mode forward is the eval-mode one) and `combined_loss`, captured inside the official
  DMD.do_train (trains/singleTask/DMD.py) at its first backward: the value of every loss term, the gradient
  with respect to the inputs, and per-parameter gradient sums. Twice: `official.*` as the code runs, and
  `fp64_softmax.*` with its one float32 cast (the attention softmax, `attn_weights.float()`) made a no-op, so
  that the harness can be held to float64 agreement and the as-is numbers to the float32 softmax's rounding.

The models' weights (1.8 M to 4.7 M values) and their 50x768 text inputs are not stored: they are drawn from
`seeded_array` (numpy PCG64 uniform draws, seeded by the tensor's name), which the test calls again; the file
keeps one SHA-256 over all drawn arrays so a changed generator fails loudly instead of comparing other numbers.

Shims, each for something the compared components never use or for the CPU:
- modules stubbed: unused imports (pynvml; transformers only where it is not installed, and then
  dmd_model_bert is skipped), easydict replaced by a plain attribute dict for the official config reader;
- Tensor.cuda is the identity while the official code runs (its priors and targets call .cuda());
- CosineEmbeddingLoss on the 3-D (T', B, d) tensors of L_ort raises on current torch (issues #5, #6): the
  trainer's `cosine` is replaced by the torch-1.9 kernel's arithmetic, the version the official code declares
  (one cosine per (step, channel) over axis 1, the batch: docs/fidelity.md D1);
- DMD.py's ReduceLROnPlateau(verbose=True) no longer accepts `verbose`; the scheduler is first used after the
  epoch, long after the captured backward, so it is replaced by a stub. tqdm is silenced.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import sys
import tempfile
import types
import zlib
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.append(str(Path(__file__).resolve().parents[2]))  # the harness, for its transformers import (after the rest)
from _common import official_imports, save_reference  # noqa: E402

SEED = 20230322  # the day the official code was uploaded; any fixed number would do
MODEL_BATCH = 4
NODES_LVA = ("text", "vision", "audio")  # the official stacking order of logits and reprs (L, V, A)


# ----------------------------------------------------------------------------------------------
# Seeded arrays: drawn again by the test, so big tensors need not be stored
# ----------------------------------------------------------------------------------------------

def seeded_array(name: str, shape: tuple[int, ...], kind: str = "weight", seed: int = SEED) -> np.ndarray:
    """float64 draws for the tensor `name`: uniform on [-1, 1) from PCG64 seeded by (seed, crc32(name)), scaled:
    weight (>= 2-D): / sqrt(fan_in) like torch's default init; weight (1-D, LayerNorm): 1 + 0.1·u; bias: 0.1·u;
    input: 0.5·u (text features) or u. PCG64's raw stream and Generator.random are stable across numpy versions."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    u = 2.0 * rng.random(shape) - 1.0
    if kind == "weight":
        return u / np.sqrt(np.prod(shape[1:])) if len(shape) >= 2 else 1.0 + 0.1 * u
    if kind == "bias":
        return 0.1 * u
    if kind == "text":
        return 0.5 * u
    if kind == "input":
        return u
    raise ValueError(kind)


def param_kind(name: str, shape) -> str:
    return "bias" if name.endswith("bias") else "weight"


def digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.float64).tobytes()).hexdigest()


MODELS = {  # component: (official dataset name, feature dims text/audio/vision as config.json's feature_dims)
    "dmd_model": ("mosi", {"text": 768, "audio": 5, "vision": 20}),
    "dmd_model_mosei": ("mosei", {"text": 768, "audio": 74, "vision": 35}),
    # DMD* (use_bert=true): the official BertTextEncoder on text_bert tokens [B, 3, 50], here a tiny BERT (hidden
    # 16, TINY_BERT) written to a temporary folder, its weights then drawn like the rest; text dim = BERT's width
    "dmd_model_bert": ("mosi", {"text": 16, "audio": 5, "vision": 20}),
}
TINY_BERT = {"vocab_size": 120, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 32, "max_position_embeddings": 64,
             "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}  # no dropout, as the rest
FULL_INPUT_GRAD = 1000  # input gradients up to this size are stored whole, larger ones as sums over time / channels


def draw_name(component: str, name: str) -> str:
    """The name a model component's tensor is drawn under (its seed)."""
    return f"{component}:{name}"


def digest_all(arrays: dict[str, np.ndarray]) -> str:
    """One SHA-256 over named arrays, in name order."""
    return hashlib.sha256("".join(f"{k}:{digest(arrays[k])};" for k in sorted(arrays)).encode()).hexdigest()


def model_inputs(component: str, batch: int = MODEL_BATCH) -> dict[str, np.ndarray]:
    """Aligned shapes (50 steps): text [B, 50, 768] (frozen BERT features), audio and vision at the dataset's dims,
    labels [B, 1] with one exact tie (the margin loss's positives across samples). Sample 0's last 10 audio and
    vision frames are zero, like padded frames: after the bias-free conv their steps are exactly zero and get no
    position (the PE rule), in both codes."""
    dims = MODELS[component][1]
    x = {m: seeded_array(draw_name(component, f"input.{m}"), (batch, 50, d), "text" if m == "text" else "input")
         for m, d in dims.items()}
    if component == "dmd_model_bert":  # text_bert rows [ids, mask, segments] per token, as the MMSA pickles
        lengths = np.array([50, 31, 12, 44])[:batch]
        u = seeded_array(draw_name(component, "input.token_ids"), (batch, 50), "input")
        ids = 5 + np.floor((u + 1) / 2 * (TINY_BERT["vocab_size"] - 5))
        mask = (np.arange(50)[None, :] < lengths[:, None]).astype(np.float64)
        ids = np.where(mask > 0, ids, 0.0)
        ids[:, 0], ids[np.arange(batch), lengths - 1] = 2.0, 3.0  # [CLS] ... [SEP] in the tiny vocabulary
        segments = (np.arange(50)[None, :] >= lengths[:, None] // 2).astype(np.float64) * mask
        x["text"] = np.stack([ids, mask, segments], axis=1)  # [B, 3, 50] as the official loader gives it
    x["audio"][0, -10:] = 0.0
    x["vision"][0, -10:] = 0.0
    x["labels"] = np.array([[1.2], [-0.6], [1.2], [2.8]])[:batch]
    return x


# ----------------------------------------------------------------------------------------------
# Running the official code on the CPU
# ----------------------------------------------------------------------------------------------

class AttrDict(dict):
    """easydict.EasyDict's behaviour the official config reader and model use: keys as attributes."""

    def __getattr__(self, k):
        try:
            return self[k]
        except KeyError:
            raise AttributeError(k) from None

    def __setattr__(self, k, v):
        self[k] = v


class _Captured(Exception):
    """Raised right after the official combined_loss.backward(): the loop's locals are read from the traceback."""


def cosine_embedding_loss_torch19(input1, input2, target, margin=0.0):
    """torch 1.9's cosine_embedding_loss arithmetic (reduction mean) for any input rank: the cosine is taken over
    dim = target.dim() (1 for the official 1-element target, i.e. the batch axis of (T', B, d)), squared norms
    + 1e-12; target -1 gives max(0, cos - margin)."""
    dim = target.dim()
    prod = (input1 * input2).sum(dim)
    denom = (((input1 * input1).sum(dim) + 1e-12) * ((input2 * input2).sum(dim) + 1e-12)).sqrt()
    cos = prod / denom
    out = torch.where(target == 1, 1 - cos, torch.zeros_like(cos)) + torch.where(
        target == -1, (cos - margin).clamp_min(0), torch.zeros_like(cos))
    return out.mean()


class _CosineEmbeddingLoss19(torch.nn.Module):
    def forward(self, a, b, target):
        return cosine_embedding_loss_torch19(a, b, target)


class _cpu_cuda:
    """Tensor.cuda as the identity while the official code runs (it creates its priors and targets with .cuda())."""

    def __enter__(self):
        self.saved = torch.Tensor.cuda
        torch.Tensor.cuda = lambda self, *a, **k: self
        torch.nn.Module.cuda_saved = torch.nn.Module.cuda
        torch.nn.Module.cuda = lambda self, *a, **k: self

    def __exit__(self, *exc):
        torch.Tensor.cuda = self.saved
        torch.nn.Module.cuda = torch.nn.Module.cuda_saved
        del torch.nn.Module.cuda_saved


STUBS = ["pynvml", "transformers"]


def _official(repo: Path):
    """The context that imports the official packages (easydict replaced, unused imports stubbed)."""
    ctx = official_imports(repo, stubs=STUBS)

    class _Ctx:
        def __enter__(self):
            self.imp = ctx.__enter__()
            easydict = types.ModuleType("easydict")
            easydict.EasyDict = AttrDict
            sys.modules["easydict"] = easydict
            return self.imp

        def __exit__(self, *exc):
            return ctx.__exit__(*exc)

    return _Ctx()


def _fill(module: torch.nn.Module, prefix: str = "") -> None:
    """Overwrite every parameter with its seeded draw (name = prefix + state_dict name)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.from_numpy(seeded_array(prefix + name, tuple(p.shape), param_kind(name, p.shape))))


def _leaf(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float64, requires_grad=True)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float64)


# ----------------------------------------------------------------------------------------------
# Components
# ----------------------------------------------------------------------------------------------

GD_UNITS = {  # component: (official module, hidden size of the reprs, gd_size, prior logits from run.py)
    "dmd_homo_gd": ("get_distillation_kernel_homo", 50, 64, [0, 0, 1, 0, 1, 0]),
    "dmd_hetero_gd": ("get_distillation_kernel", 100, 32, [0, 0, 1, 0, 1, 1]),
}


def build_gd_unit(imp, repo: Path, out_dir: Path, component: str) -> str:
    module_name, hidden, gd_size, prior_logits = GD_UNITS[component]
    kernels = imp(f"trains.singleTask.distillnets.{module_name}")
    softmax = imp("trains.singleTask.misc").softmax  # run.py's prior: softmax(v, 0.25)
    torch.manual_seed(SEED)
    unit = kernels.DistillationKernel(n_classes=1, hidden_size=hidden, gd_size=gd_size, to_idx=[0, 1, 2],
                                      from_idx=[0, 1, 2], gd_prior=softmax(prior_logits, 0.25), gd_reg=10,
                                      w_losses=[1, 10], metric="l1", alpha=1 / 8, hyp_params=None).double()
    _fill(unit, f"{component}.")
    batch = 5
    rng = np.random.default_rng([SEED, zlib.crc32(component.encode())])
    logits = rng.normal(size=(3, batch, 1))
    reprs = rng.normal(size=(3, batch, hidden))
    if component == "dmd_homo_gd":
        reprs = np.maximum(reprs, 0.0)  # the homo reprs are post-ReLU in the model
    arrays = {"logits": logits, "reprs": reprs, "prior": unit.gd_prior.double().numpy()}
    arrays.update({f"param.{n}": _np(p) for n, p in unit.named_parameters()})
    lg, rp = _leaf(logits), _leaf(reprs)
    edges, _ = unit(lg, rp)
    loss_reg, loss_logit, loss_repr = unit.distillation_loss(lg, rp, edges)
    arrays.update(edges=_np(edges), loss_reg=_np(loss_reg), loss_logit=_np(loss_logit), loss_repr=_np(loss_repr))
    for name, loss in (("reg", loss_reg), ("logit", loss_logit), ("repr", loss_repr)):
        g_logits, g_reprs = torch.autograd.grad(loss, (lg, rp), retain_graph=True)
        arrays[f"grad_{name}.logits"], arrays[f"grad_{name}.reprs"] = _np(g_logits), _np(g_reprs)
    source = f"trains/singleTask/distillnets/{module_name}.py (DistillationKernel.forward, .distillation_loss)"
    save_reference(out_dir, component, repo=repo, source=source, arrays=arrays,
                   meta={"batch": batch, "hidden": hidden, "gd_size": gd_size, "prior_logits": prior_logits,
                         "gd_reg": 10, "w_losses": [1, 10], "alpha": 1 / 8, "order": "L, V, A"})
    return (f"{component}: E {edges.shape[0]}x{edges.shape[1]}, loss_reg {loss_reg.item():.12g}, "
            f"loss_logit {loss_logit.item():.12g}, loss_repr {loss_repr.item():.12g}")


def build_margin(imp, repo: Path, out_dir: Path) -> str:
    hinge = imp("trains.singleTask.HingeLoss").HingeLoss()
    rng = np.random.default_rng([SEED, zlib.crc32(b"dmd_margin")])
    cases = {"tied": [0.4, -1.2, 0.4, 2.0, -1.2, 0.0], "distinct": [0.4, -1.2, 0.6, 2.0, -1.8, 0.0]}
    arrays, lines = {}, []
    for case, labels in cases.items():
        feats = rng.normal(size=(3 * len(labels), 16))
        ids = np.repeat(np.asarray(labels, dtype=np.float64), 3)[:, None]  # interleaved by sample, as DMD.py
        f = _leaf(feats)
        loss = hinge(torch.tensor(ids), f)
        (grad,) = torch.autograd.grad(loss, f)
        arrays.update({f"{case}.feats": feats, f"{case}.ids": ids, f"{case}.loss": _np(loss), f"{case}.grad": _np(grad)})
        lines.append(f"{case} {loss.item():.12g}")
    save_reference(out_dir, "dmd_margin", repo=repo, source="trains/singleTask/HingeLoss.py (HingeLoss.forward)",
                   arrays=arrays, meta={"margin_argument": "default (0.1, ignored by the official code)"})
    return "dmd_margin: " + ", ".join(lines)


MODEL_OVERRIDES = {  # on the official MOSI config: frozen text, and no dropout anywhere (train forward = eval)
    "use_bert": False, "text_dropout": 0.0, "attn_dropout": 0.0, "attn_dropout_a": 0.0, "attn_dropout_v": 0.0,
    "embed_dropout": 0.0, "output_dropout": 0.0, "relu_dropout": 0.0, "res_dropout": 0.0,
}
LOSS_LOCALS = ["combined_loss", "loss_task", "loss_task_all", "loss_task_c", "loss_recon", "loss_s_sr", "loss_ort",
               "loss_sim", "loss_reg_homo", "loss_logit_homo", "loss_repr_homo", "loss_reg_hetero",
               "loss_logit_hetero", "loss_repr_hetero", "graph_distill_loss_homo", "graph_distill_loss_hetero"]
OUTPUT_KEYS = ["output_logit", "logits_c", "logits_l_homo", "logits_v_homo", "logits_a_homo", "logits_l_hetero",
               "logits_v_hetero", "logits_a_hetero", "repr_l_homo", "repr_v_homo", "repr_a_homo", "repr_l_hetero",
               "repr_v_hetero", "repr_a_hetero", "c_l_sim", "c_v_sim", "c_a_sim"]


VARIANTS = {  # prefix: what the official code ran with
    "official": "as is: its attention softmax in float32 (`attn_weights.float()`) even on float64 inputs",
    "fp64_softmax": "Tensor.float() a no-op on float64 tensors, so that one cast is skipped (nothing else in the "
                    "forward or the loss calls .float() on a float64 tensor): the same code in float64 throughout",
}


def _modules(net, units):
    return (("dmd.", net), ("dmd_homo_gd.", units["dmd_homo_gd"]), ("dmd_hetero_gd.", units["dmd_hetero_gd"]))


def _grad_names(net, units) -> list[str]:
    """Parameters that combined_loss reaches: not the dead proj_cosine_* layers (D10), nor the BERT pooler the
    official encoder builds and never reads (the harness builds none)."""
    return [prefix + n for prefix, module in _modules(net, units) for n, _ in module.named_parameters()
            if not unused_official(prefix + n)]


def unused_official(name: str) -> bool:
    return ".proj_cosine_" in name or ".text_model.model.pooler." in name


def _capture(trainer_module, args, net, units, x, variant: str) -> dict[str, np.ndarray]:
    """Run the official DMD.do_train on one batch up to its first combined_loss.backward(), then read the loop's
    locals (every loss term, the model's outputs, the edges) and the gradients."""
    for _, module in _modules(net, units):
        module.zero_grad(set_to_none=True)
    tokens = x["text"].shape[1] == 3  # DMD*: text_bert rows, integers: no gradient
    text = torch.tensor(x["text"]) if tokens else _leaf(x["text"])
    audio, vision = _leaf(x["audio"]), _leaf(x["vision"])
    batch = {"text": text, "audio": audio, "vision": vision, "labels": {"M": torch.tensor(x["labels"])}}
    loaders = {"train": [batch], "valid": [batch], "test": [batch]}
    trainer_module.ReduceLROnPlateau = lambda *a, **k: None  # `verbose` is gone from torch; used after the epoch
    trainer_module.tqdm = functools.partial(_tqdm(), disable=True)
    trainer = trainer_module.DMD(args)
    trainer.cosine = _CosineEmbeddingLoss19()  # L_ort on 3-D tensors: torch 1.9's arithmetic (D1)
    real_backward, real_float = torch.Tensor.backward, torch.Tensor.float

    def capture(self, *a, **k):
        real_backward(self, *a, **k)
        raise _Captured

    torch.Tensor.backward = capture
    if variant == "fp64_softmax":
        torch.Tensor.float = lambda self, *a, **k: self if self.dtype == torch.float64 else real_float(self, *a, **k)
    try:
        trainer.do_train([net, units["dmd_homo_gd"], units["dmd_hetero_gd"]], loaders)
        raise RuntimeError("the official do_train finished without a backward")
    except _Captured as e:
        tb = e.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_name != "do_train":
            tb = tb.tb_next
        loop = dict(tb.tb_frame.f_locals)
    finally:
        torch.Tensor.backward, torch.Tensor.float = real_backward, real_float

    out = loop["output"]
    arrays = {f"loss.{k}": _np(loop[k]) for k in LOSS_LOCALS}
    arrays.update({f"out.{k}": _np(out[k]) for k in OUTPUT_KEYS})
    arrays.update({"edges_homo": _np(loop["edges_homo"]), "edges_hetero": _np(loop["edges_hetero"])})
    for m, leaf in (("text", text), ("audio", audio), ("vision", vision)):
        if leaf.grad is None:
            continue
        arrays[f"grad.{m}_sum_time"], arrays[f"grad.{m}_sum_channels"] = _np(leaf.grad.sum(1)), _np(leaf.grad.sum(2))
        if leaf.grad.numel() <= FULL_INPUT_GRAD:
            arrays[f"grad.{m}"] = _np(leaf.grad)
    params = {prefix + n: p for prefix, module in _modules(net, units) for n, p in module.named_parameters()}
    grads = [params[n].grad for n in _grad_names(net, units)]
    assert all(g is not None for g in grads), "a mapped parameter got no gradient from the official loss"
    arrays["param_grad_sum"] = np.array([float(g.sum()) for g in grads])
    arrays["param_grad_sumsq"] = np.array([float((g ** 2).sum()) for g in grads])
    return {f"{variant}.{k}": v for k, v in arrays.items()}


def _tqdm():
    from tqdm import tqdm
    return tqdm


def write_tiny_bert(folder: Path) -> None:
    """A tiny BERT the official BertTextEncoder can load with from_pretrained: config, weights, a vocabulary."""
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    transformers.BertModel(transformers.BertConfig(**TINY_BERT)).save_pretrained(folder)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(TINY_BERT["vocab_size"] - 5)]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")


def build_model(imp, repo: Path, out_dir: Path, component: str) -> str:
    dataset, dims = MODELS[component]
    config = imp("config")
    args = config.get_config_regression("dmd", dataset, str(repo / "config" / "config.json"))
    if component == "dmd_model_bert":
        folder = Path(tempfile.mkdtemp(prefix="dmd-parity-bert-"))
        write_tiny_bert(folder)
        args.update(feature_dims=[TINY_BERT["hidden_size"], *args.feature_dims[1:]], pretrained=str(folder))
    assert list(args.feature_dims) == list(dims.values()), (args.feature_dims, dims)
    args.update(MODEL_OVERRIDES)
    if component == "dmd_model_bert":
        args.update(use_bert=True, use_finetune=True, transformers="bert")
    args.update(device=torch.device("cpu"), train_mode="regression", is_distill=True, cur_seed=1)
    dmd = imp("trains.singleTask.model.dmd")
    kernels = {u: imp(f"trains.singleTask.distillnets.{GD_UNITS[u][0]}") for u in GD_UNITS}
    softmax = imp("trains.singleTask.misc").softmax
    trainer_module = sys.modules["trains.singleTask.DMD"]
    torch.manual_seed(SEED)
    try:
        net = dmd.DMD(args).double()
    finally:
        if component == "dmd_model_bert":
            shutil.rmtree(folder)  # loaded; its weights are overwritten by the seeded draws below
    units = {}
    for u, (_, _, gd_size, prior_logits) in GD_UNITS.items():
        hidden = args.dst_feature_dim_nheads[0] * (1 if u == "dmd_homo_gd" else 2)  # as run.py sizes them
        units[u] = kernels[u].DistillationKernel(
            n_classes=1, hidden_size=hidden, gd_size=gd_size, to_idx=[0, 1, 2], from_idx=[0, 1, 2],
            gd_prior=softmax(prior_logits, 0.25), gd_reg=10, w_losses=[1, 10], metric="l1", alpha=1 / 8,
            hyp_params=args).double()
    _fill(net, draw_name(component, "dmd."))
    for u, unit in units.items():
        _fill(unit, draw_name(component, f"{u}."))
    x = model_inputs(component)
    arrays = {"labels": x["labels"]}
    for variant in VARIANTS:
        arrays.update(_capture(trainer_module, args, net, units, x, variant))
    # what the test must draw again (every parameter and input), under one SHA-256
    drawn = {prefix + n: _np(p) for prefix, module in _modules(net, units) for n, p in module.named_parameters()}
    drawn.update({f"input.{m}": x[m] for m in dims})
    meta = {"batch": MODEL_BATCH, "seed": SEED, "dataset": dataset, "dims": dims,
            "config": f"config/config.json dmd/{dataset} (aligned)",
            "overrides": MODEL_OVERRIDES, "param_names": _grad_names(net, units),
            "variants": VARIANTS, "sha256_drawn": digest_all(drawn),
            "tiny_bert": TINY_BERT if component == "dmd_model_bert" else None,
            "shapes": {prefix + n: list(p.shape) for prefix, module in _modules(net, units)
                       for n, p in module.named_parameters()},
            "args": {k: ("a temporary folder holding TINY_BERT" if k == "pretrained" and component == "dmd_model_bert"
                         else v if isinstance(v, (int, float, str, bool, list)) else str(v)) for k, v in args.items()},
            "shims": ["Tensor.cuda identity", "L_ort CosineEmbeddingLoss with torch-1.9 arithmetic",
                      "ReduceLROnPlateau stubbed (unused before the captured backward)", "tqdm disabled",
                      "variant fp64_softmax only: Tensor.float a no-op on float64 tensors"]}
    json.dumps(meta)  # fail here, not in save_reference, if something is not serialisable
    save_reference(out_dir, component, repo=repo,
                   source="trains/singleTask/model/dmd.py (DMD.forward) and trains/singleTask/DMD.py "
                          "(do_train: combined_loss and its backward)", arrays=arrays, meta=meta)
    n_params = sum(p.numel() for p in net.parameters())
    return (f"{component}: {dataset.upper()} aligned, batch {MODEL_BATCH}, {n_params} official parameters (seeded), "
            "combined_loss " + ", ".join(f"{v} {arrays[f'{v}.loss.combined_loss']:.12g}" for v in VARIANTS))


def build(repo: Path, out_dir: Path):
    """One line per component written (make_reference.py prints them)."""
    torch.set_num_threads(1)
    try:  # the real transformers for DMD*'s text encoder (imported first, the stub then stays unused)
        from methods.dmd.bert import _transformers
        _transformers()
        with_bert = True
    except Exception as e:  # noqa: BLE001 - without it only the BERT component is skipped
        with_bert, why = False, f"{type(e).__name__}: {e}"
    with _cpu_cuda(), _official(repo) as imp:
        imp("trains")  # the package imports its trainer, model and utils, so every stub is exercised once
        for component in GD_UNITS:
            yield build_gd_unit(imp, repo, out_dir, component)
        yield build_margin(imp, repo, out_dir)
        for component in MODELS:
            if component == "dmd_model_bert" and not with_bert:
                yield f"{component}: SKIPPED, transformers unavailable ({why})"
                continue
            yield build_model(imp, repo, out_dir, component)
