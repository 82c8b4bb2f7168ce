"""Privileged-information controls (Provodin et al., arXiv 2408.14319): does a method's gain come from the
privileged data, or from its extra loss and architecture?

`method.privileged_control` on a distillation method (kd, pkdot, mtpkdot, dmd):
- `none`: the method as published;
- `zeros`: every privileged modality is replaced by zeros in the training and validation splits, before the
  method sees anything, so wherever it would read them (teacher training, soft targets, the T-Net, DMD's
  graph nodes) it reads zeros. Whatever the method still gains over the student does not come from the
  privileged information;
- `shuffle`: the privileged inputs (with their lengths) are permuted across the samples of each split by a
  fixed permutation from the run's seed: their marginal statistics stay, their pairing with each sample goes.

The control is applied by the runner (harness/runner.py), so no method can forget it; it is part of the run
key and of the teacher store's key (a control's teacher is trained on the controlled data).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from harness.data import FrameWindows, Split
from harness.schema import PRIVILEGED_CONTROLS as CONTROLS
from harness.task import TaskError


def check_privileged_control(control: str, privileged: tuple[str, ...]) -> None:
    """A control must be one of CONTROLS and needs a privileged modality to act on (one-line TaskError)."""
    if control not in CONTROLS:
        raise TaskError(f"method.privileged_control={control!r}: choose one of {', '.join(CONTROLS)}")
    if control != "none" and not privileged:
        raise TaskError(f"method.privileged_control={control}: this task variant has no privileged modality "
                        f"(every modality is used at test), so there is nothing to control")


def apply_privileged_control(split: Split, privileged: tuple[str, ...], control: str, seed: int) -> Split:
    """The split with its privileged modalities zeroed or shuffled (`control`), every other field untouched."""
    check_privileged_control(control, privileged)
    if control == "none":
        return split
    inputs, lengths = dict(split.inputs), dict(split.lengths)
    if control == "zeros":
        for m in privileged:
            x = split.inputs[m]  # windows gathered from stored frames: zeros without a full-size array
            inputs[m] = x.zeros() if isinstance(x, FrameWindows) else np.zeros_like(x)
    else:
        perm = np.random.default_rng(seed).permutation(len(split))
        for m in privileged:
            inputs[m] = split.inputs[m][perm]
            if m in lengths:
                lengths[m] = np.asarray(split.lengths[m])[perm]
    return replace(split, inputs=inputs, lengths=lengths)
