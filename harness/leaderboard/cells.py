"""Text cells shared by leaderboard.md and the report: mean ± std, p values, a paired difference."""

from __future__ import annotations

import math

import pandas as pd


def _fmt(mean: float, std: float, n: int) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    return f"{mean:.3f}" if n < 2 or math.isnan(std) else f"{mean:.3f} ± {std:.3f}"


def _p(p: float, prefix: str = "") -> str:
    """`p=0.0625`, `p=0.004`, `p<0.001`: three significant digits from 0.01 up (a floor such as 0.0625 reads as
    in the header), three decimals below."""
    if p is None or math.isnan(p):
        return f"{prefix}=n/a" if prefix else "n/a"
    if p < 0.001:
        return f"{prefix}<0.001" if prefix else "<0.001"
    text = f"{p:.3f}" if p < 0.01 else f"{p:.3g}"
    return f"{prefix}={text}" if prefix else text


def _delta_cell(c: pd.Series | None, with_n: bool = False) -> str:
    if c is None or c.n == 0:
        return "no pairs" if c is not None else ""
    if c.n == 1:
        return f"{c['mean']:+.3f} (1 pair: no test)"
    mark = " *" if c.significant else ""
    p = "p=n/a (no spread)" if math.isnan(c.p_t) else _p(c.p_t, "p")
    text = f"{c['mean']:+.3f} [{c.ci_low:+.3f}, {c.ci_high:+.3f}] {p}{mark}"
    return text + (f" (n={int(c.n)})" if with_n else "")
