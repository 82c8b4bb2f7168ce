"""glibc malloc options for the processes that train (Linux): keep freed memory for the next step.

On the CPU, torch takes every tensor from malloc. With glibc's defaults a training step's large temporaries
(activations and their gradients, 1-4 MB each) are returned to the kernel when freed (heap trimmed, or
mmap'ed chunks unmapped) and asked for again on the next step, so each step page-faults on fresh zeroed pages:
about 11,000-12,000 faults a step of DMD at MOSI sizes, 75 ms of system time in an 800 ms step on this machine
(benchmarks/bench_allocator.py). With the mmap threshold at 32 MiB (glibc's maximum), the trim threshold at
1 GiB and 64 MiB of top padding, the heap keeps those pages: ~100 faults a step. The values computed are the
same; only where the memory comes from changes. The cost is that a process keeps up to 1 GiB of freed heap
instead of returning it, which a training process about to allocate it again does not miss.

This is what PyTorch's CPU performance guide does with jemalloc or TCMalloc, but from inside the process with
glibc's own mallopt, so nothing has to be installed or preloaded. Applied once per process by the runner
(harness/runner.py execute). `PKD_HARNESS_MALLOC=default` leaves glibc as it is; the MALLOC_*_ environment
variables, when set, win (their settings are the user's)."""

from __future__ import annotations

import ctypes
import os
import sys

ENV = "PKD_HARNESS_MALLOC"
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc's malloc.h
SETTINGS = {M_MMAP_THRESHOLD: 32 * 2**20, M_TRIM_THRESHOLD: 2**30, M_TOP_PAD: 64 * 2**20}
USER_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")

_state: str | None = None


def tune_allocator() -> str:
    """Apply SETTINGS once per process; return what the process runs with: tuned, default (PKD_HARNESS_MALLOC),
    user (MALLOC_* variables set) or unavailable (not glibc)."""
    global _state
    if _state is not None:
        return _state
    choice = os.environ.get(ENV, "tuned")
    if choice not in ("tuned", "default"):
        raise ValueError(f"{ENV}={choice!r}: use tuned (the default) or default (glibc's own malloc settings)")
    if choice == "default":
        _state = "default"
    elif any(v in os.environ for v in USER_VARIABLES):
        _state = "user"
    elif not sys.platform.startswith("linux"):
        _state = "unavailable"
    else:
        try:
            libc = ctypes.CDLL("libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):  # not glibc (musl has no mallopt)
            _state = "unavailable"
        else:
            _state = "tuned" if all(mallopt(p, v) == 1 for p, v in SETTINGS.items()) else "unavailable"
    return _state
