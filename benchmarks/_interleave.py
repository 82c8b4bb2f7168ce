"""Timing shared by the step benchmarks: every step warmed up, then timed in turn, repeat after repeat, so
background load on a shared machine hits every variant alike and the medians stay comparable."""

from __future__ import annotations

from typing import Callable


def interleaved(steps: dict[str, Callable], warmup: int, repeats: int, timed: Callable) -> dict[str, list]:
    """{name: [timed(step) for each repeat]}, the steps run round-robin after `warmup` untimed rounds."""
    for _ in range(warmup):
        for fn in steps.values():
            fn()
    times: dict[str, list] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, fn in steps.items():
            times[name].append(timed(fn))
    return times
