"""harness/allocator.py: the runner's malloc settings keep freed training memory in the process (measured as the
resident memory a freed tensor leaves, in fresh processes), and PKD_HARNESS_MALLOC / the MALLOC_* variables
decide."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from harness.allocator import ENV

PROBE = textwrap.dedent("""
    import json, os, torch
    from harness.allocator import tune_allocator
    state = tune_allocator()
    def resident_mib():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    warm_up = torch.ones(1 << 16)  # loads the fill kernel and starts its threads, so they are not counted below
    del warm_up
    before = resident_mib()
    temporary = torch.ones(4 << 20)  # a 16 MiB activation, written
    held = resident_mib()
    del temporary
    print(json.dumps({"state": state, "held": held - before, "kept": resident_mib() - before}))
""")


def probe(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k != ENV and not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True,
                         check=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tuned_malloc_keeps_a_freed_temporary_where_glibc_defaults_return_it():
    """What makes a step page-fault under glibc's defaults: a freed 16 MiB tensor goes back to the kernel
    (mmap'ed, then unmapped), to be faulted in again by the next step's. Tuned, the process keeps it. The time
    this saves is measured in benchmarks/bench_allocator.py."""
    tuned, default = probe(), probe(**{ENV: "default"})
    assert tuned["state"] == "tuned" and default["state"] == "default"
    # What freeing gives back to the kernel is measured as held - kept, so resident memory the first 16 MiB fill
    # brings besides the tensor (code pages, thread stacks: 1.4 MiB here, 5.4 MiB on a CI machine) cancels out.
    for run in (tuned, default):
        assert run["held"] >= 16 - 1  # the tensor was resident (less the warm-up chunk a tuned heap reuses)
    assert default["held"] - default["kept"] == pytest.approx(16, abs=1)
    assert tuned["held"] - tuned["kept"] == pytest.approx(0, abs=1)


def test_user_variables_win_and_a_bad_choice_names_the_variable():
    assert probe(MALLOC_TOP_PAD_="0")["state"] == "user"
    bad = subprocess.run([sys.executable, "-c", "from harness.allocator import tune_allocator; tune_allocator()"],
                         env={**os.environ, ENV: "jemalloc"}, capture_output=True, text=True)
    assert bad.returncode != 0
    assert "PKD_HARNESS_MALLOC='jemalloc': use tuned (the default) or default" in bad.stderr


def test_the_record_says_which_malloc_the_run_had(tiny_cfg):
    from harness.allocator import tune_allocator
    from harness.runner import execute

    rec = execute(tiny_cfg("method=student"))
    assert rec["status"] == "ok" and rec["malloc"] == tune_allocator()
