"""Predictions as a table anyone can re-score: `predictions.csv` of a run.

Columns: `id`, then per target dimension `y_true[_<dim>]` / `y_pred[_<dim>]` (the suffix is left
out for a single classification head), and for classes `prob[_<dim>]_<k>` per class k.
Per-step targets (Aff-Wild2 frames) give one row per valid step, id `<sample id>:<frame>`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from harness.data import Split, TargetSpec


def column_suffixes(target: TargetSpec) -> list[str]:
    if target.kind == "classification" and len(target.dims) == 1:
        return [""]
    return [f"_{d}" for d in target.dims]


def valid_steps(split: Split) -> tuple[np.ndarray, np.ndarray]:
    """(split row, step) of every valid step of a per-step target, in the order of the predictions table."""
    mask = split.target_mask if split.target_mask is not None else np.ones(split.targets.shape[:2], bool)
    return np.nonzero(mask)


def prediction_rows(split: Split, target: TargetSpec) -> np.ndarray:
    """The split row each row of make_predictions' table comes from (several per sample for per-step targets)."""
    return valid_steps(split)[0] if target.per_step else np.arange(len(split))


def make_predictions(split: Split, outputs: np.ndarray, target: TargetSpec) -> pd.DataFrame:
    """Build the predictions table from a method's raw outputs.

    outputs: regression [N, K] (or [N, T, K]); classification probabilities [N, K, C] (or [N, T, K, C]).
    """
    outputs = np.asarray(outputs)
    y = split.targets
    ids = np.asarray(split.ids).astype(str)
    expect_lead = y.shape[:2] if target.per_step else y.shape[:1]
    if outputs.shape[: len(expect_lead)] != expect_lead:
        raise ValueError(f"method outputs have shape {outputs.shape}, targets {y.shape}: they must agree")
    if target.per_step:
        steps = split.step_index if split.step_index is not None else \
            np.broadcast_to(np.arange(y.shape[1]), y.shape[:2])
        n_idx, t_idx = valid_steps(split)
        row_ids = np.char.add(np.char.add(ids[n_idx], ":"), steps[n_idx, t_idx].astype(str))
        y, outputs = y[n_idx, t_idx], outputs[n_idx, t_idx]
    else:
        row_ids = ids
    cols: dict[str, np.ndarray] = {"id": row_ids}
    for k, suffix in enumerate(column_suffixes(target)):
        if target.kind == "regression":
            cols[f"y_true{suffix}"] = y[:, k].astype(np.float64)
            cols[f"y_pred{suffix}"] = outputs[:, k].astype(np.float64)
        else:
            probs = outputs[:, k, :]
            cols[f"y_true{suffix}"] = y[:, k].astype(np.int64)
            cols[f"y_pred{suffix}"] = probs.argmax(axis=1).astype(np.int64)
            for c in range(probs.shape[1]):
                cols[f"prob{suffix}_{c}"] = probs[:, c].astype(np.float64)
    return pd.DataFrame(cols)


def columns_by_dim(df: pd.DataFrame, target: TargetSpec) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(y_true, y_pred) per target dimension, read back from a predictions table."""
    yt, yp = {}, {}
    for dim, suffix in zip(target.dims, column_suffixes(target)):
        yt[dim] = df[f"y_true{suffix}"].to_numpy()
        yp[dim] = df[f"y_pred{suffix}"].to_numpy()
    return yt, yp
