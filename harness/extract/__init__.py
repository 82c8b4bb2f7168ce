"""`harness extract`: from the files a dataset download ships to the feature files the tasks read.

    harness extract task=biovid backbone=r3d_18 task.data_root=/data/BioVid/PartA
    harness extract task=affwild2 backbone=resnet18 task.data_root=/data/Aff-Wild2

One file per concern: sources.py (what is read and written; each task declares it, Task.extract_plan), decode.py
(PyAV / Pillow), loader.py (decoding in DataLoader workers), backbones.py (torchvision models and weights), run.py
(the loop, atomic writes, resume), sidecar.py (EXTRACTED.json, which the tasks copy into every record). Needs the
`extract` extra (torchvision, av): `pip install -e '.[extract]'` (scripts/setup.sh installs it).
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

GROUPS = ("task", "backbone")


def compose(overrides: list[str]) -> DictConfig:
    from harness.config import Composer

    with Composer() as c:
        return c.compose(overrides, config_name="extract", groups=GROUPS)


def problems(cfg: DictConfig) -> list[str]:
    """Every problem of an extract config, one line each: the extract keys, the backbone's and the task's."""
    from harness.schema import BACKBONES, EXTRACT_ROOT, TASKS
    from harness.validate import check_against

    d = OmegaConf.to_container(cfg, resolve=True)
    fields = dict(EXTRACT_ROOT)
    fields.update({f"backbone.{k}": f for k, f in BACKBONES[d["backbone"]["name"]].items()})
    fields.update({f"task.{k}": f for k, f in TASKS[d["task"]["name"]].items()})
    return check_against(d, fields)


def main(overrides: list[str], print_cfg: bool = False) -> int:
    from harness.errors import ConfigError

    cfg = compose(overrides)
    found = problems(cfg)
    if print_cfg:
        print(OmegaConf.to_yaml(cfg))
    if found:
        raise ConfigError("; ".join(found), lines=found)
    if print_cfg:
        return 0
    from harness.extract.run import extract  # torch, torchvision, PyAV: only now

    extract(cfg)
    return 0
