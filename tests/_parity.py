"""Reading the committed parity references (tests/parity/*.npz, written by scripts/parity/make_reference.py from the
official code) and comparing the harness with them: one place for the tolerance rule and the max |Δ| report."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

REFERENCES = Path(__file__).resolve().parent / "parity"
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts" / "parity"))
from _common import load_reference  # noqa: E402  (scripts/parity is not a package: it is run as a script)


def reference(component: str) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays and meta of tests/parity/<component>.npz (the meta names the official commit and source)."""
    return load_reference(REFERENCES / f"{component}.npz")


def max_abs_diff(got, want) -> float:
    got = got.detach().cpu().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    return float(np.max(np.abs(got.astype(np.float64) - np.asarray(want, dtype=np.float64)))) if np.size(want) else 0.0


def assert_parity(what: str, got, want, *, rtol: float, atol: float = 0.0) -> float:
    """np.testing.assert_allclose with a message naming the component; returns max |Δ| (for the fidelity table)."""
    got_np = got.detach().cpu().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    assert got_np.shape == np.shape(want), f"{what}: shape {got_np.shape} vs the official {np.shape(want)}"
    np.testing.assert_allclose(got_np, want, rtol=rtol, atol=atol, err_msg=f"{what} differs from the official code")
    return max_abs_diff(got_np, want)
