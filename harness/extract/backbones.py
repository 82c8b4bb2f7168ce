"""The frozen backbones of `harness extract`, from torchvision: ResNet-18 per frame, R3D-18 on clips.

Each is the torchvision model with its classifier replaced by the identity, so its output is the 512-d pooled
feature. Weights (`extract.weights`):
  default  torchvision's standard pretrained weights (ResNet18_Weights.IMAGENET1K_V1, R3D_18_Weights.KINETICS400_V1),
           downloaded by torchvision into $TORCH_HOME/hub/checkpoints on a machine with internet (or found there)
  PATH     a state_dict file of the same architecture (a bare state_dict, or one under 'state_dict' / 'model');
           its classifier (`fc.*`) is ignored, since the feature is taken before it
  none     random weights (torch.manual_seed(extract.seed)), for tests only
The weights' identity goes into EXTRACTED.json: the source, torchvision's name and URL, the sha256 of the file and
of the loaded parameters (the same for every source, so two extractions can be compared).

torchvision and the CPU build of torch: PyPI's torchvision wheels are built against torch's CUDA build, so their
compiled operators (`torchvision/_C.so`: nms, roi_align...) do not load beside the CPU build of torch that
scripts/setup.sh installs on CPU machines, and `import torchvision` then stops at its two unguarded fake-kernel
registrations (`operator torchvision::nms does not exist`). The backbones need none of those operators:
`import_torchvision` declares the two missing operator schemas (declarations only: calling them still fails)
and imports torchvision again. With a matching torch/torchvision pair (a GPU cluster) the import works at once
and nothing is declared. EXTRACTED.json records which case it was (`torchvision_ops`).
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

from harness.errors import ConfigError

BACKBONES = {
    # name: (torchvision module, builder, weights enum, default member, kind)
    "resnet18": ("torchvision.models", "resnet18", "ResNet18_Weights", "IMAGENET1K_V1", "frame"),
    "r3d_18": ("torchvision.models.video", "r3d_18", "R3D_18_Weights", "KINETICS400_V1", "clip"),
}
FEATURE_DIM = 512
_SHIM = None  # the torch.library.Library holding the declared schemas (kept alive for the process)


def import_torchvision():
    """torchvision, imported even beside the CPU build of torch (module doc); (module, compiled ops loaded)."""
    global _SHIM
    try:
        import torchvision
    except RuntimeError as e:
        if "torchvision::" not in str(e) or "does not exist" not in str(e):
            raise
        import torch

        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        _SHIM = torch.library.Library("torchvision", "FRAGMENT")
        for op in ("nms", "qnms"):
            _SHIM.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        import torchvision
    return torchvision, bool(torchvision.extension._has_ops())


@dataclass
class Backbone:
    name: str
    kind: str              # "frame" (2D, one frame per input) or "clip" (3D, clip_len frames per input)
    model: object          # torch.nn.Module in eval mode, classifier replaced by the identity
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights: dict          # identity for EXTRACTED.json
    torchvision_ops: bool


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def parameters_sha256(model) -> str:
    """sha256 over the state_dict's names, shapes and float32 bytes, in name order (identifies loaded weights)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _read_state_dict(path: Path) -> dict:
    import torch

    if not path.is_file():
        raise ConfigError(f"extract.weights={str(path)!r}: no such file; give a state_dict file (.pth) of the "
                          f"backbone, `default` (torchvision's pretrained weights) or `none` (random, tests only)")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- torch.load raises many types for a file that is not a checkpoint
        raise ConfigError(f"extract.weights={str(path)!r}: cannot load it with torch.load(weights_only=True) "
                          f"({type(e).__name__}: {str(e).splitlines()[0]}); save the weights with "
                          f"torch.save(model.state_dict(), path)") from None
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise ConfigError(f"extract.weights={str(path)!r} holds a {type(sd).__name__}, not a state_dict")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def build(name: str, weights: str, seed: int = 0) -> Backbone:
    """The backbone `name` with `weights` (default | none | a path), classifier removed, in eval mode."""
    import importlib

    import torch

    if name not in BACKBONES:
        raise ConfigError(f"backbone={name!r}: expected one of {', '.join(BACKBONES)}")
    _, has_ops = import_torchvision()
    module, builder, enum_name, member, kind = BACKBONES[name]
    mod = importlib.import_module(module)
    enum = getattr(mod, enum_name)
    standard = getattr(enum, member)
    preset = standard.transforms()
    mean, std = tuple(float(v) for v in preset.mean), tuple(float(v) for v in preset.std)
    info: dict = {"torchvision_name": f"{enum_name}.{member}", "url": standard.url}
    if weights == "default":
        try:
            model = getattr(mod, builder)(weights=standard, progress=False)
        except Exception as e:  # noqa: BLE001 -- URLError, HTTPError, OSError... all mean "could not fetch"
            hub = Path(torch.hub.get_dir()) / "checkpoints"
            raise ConfigError(f"extract.weights=default: torchvision could not get {standard.url} "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). On a machine "
                              f"without internet, copy that file into {hub} (TORCH_HOME sets the folder), or give "
                              f"its path: extract.weights=/path/to/{Path(standard.url).name}") from None
        file = Path(torch.hub.get_dir()) / "checkpoints" / Path(standard.url).name
        info.update(source="torchvision", file=str(file), file_sha256=_sha256_file(file) if file.is_file() else None)
    elif weights == "none":
        torch.manual_seed(int(seed))
        model = getattr(mod, builder)(weights=None)
        info = {"source": "none", "seed": int(seed), "warning": "random weights: for tests only",
                "standard_would_be": info["torchvision_name"]}
    else:
        path = Path(weights).expanduser()
        sd = _read_state_dict(path)
        model = getattr(mod, builder)(weights=None)
        model.fc = torch.nn.Identity()
        sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
        fix = "Give a state_dict of that architecture, or another backbone="
        try:
            missing, unexpected = model.load_state_dict(sd, strict=False)
        except RuntimeError as err:  # shapes that differ
            raise ConfigError(f"extract.weights={str(path)!r} does not fit torchvision's {builder}: "
                              f"{str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else err}. "
                              f"{fix}") from None
        if missing or unexpected:
            raise ConfigError(f"extract.weights={str(path)!r} does not fit torchvision's {builder}: "
                              f"{len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected "
                              f"(e.g. {unexpected[:3]}). {fix}")
        info = {"source": "file", "file": str(path.resolve()), "file_sha256": _sha256_file(path),
                "normalisation_of": info["torchvision_name"]}
    model.fc = torch.nn.Identity()
    model.eval().requires_grad_(False)
    info["parameters_sha256"] = parameters_sha256(model)
    return Backbone(name=name, kind=kind, model=model, mean=mean, std=std, weights=info, torchvision_ops=has_ops)
