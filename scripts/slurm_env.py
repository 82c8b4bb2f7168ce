"""Tiny, dependency-free helper to make sure the local single-node SLURM cluster is up.

Usage from tests::

    import sys; sys.path.insert(0, "scripts")
    from slurm_env import cluster_ready, ensure_cluster, PARTITION

    if not cluster_ready():
        ensure_cluster()          # runs scripts/slurm_up.sh (needs root), raises on failure

or as a script: ``python scripts/slurm_env.py`` (exit code 0 when the cluster is usable).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

PARTITION = os.environ.get("SLURM_PARTITION", "debug")
ACCOUNT = os.environ.get("SLURM_ACCOUNT", "pkd")
UP_SCRIPT = Path(__file__).resolve().with_name("slurm_up.sh")
DOWN_SCRIPT = Path(__file__).resolve().with_name("slurm_down.sh")

_USABLE_STATES = {"idle", "mix", "mixed", "alloc", "allocated", "comp", "completing"}


def _run(cmd: list[str], timeout: float = 10) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None


def cluster_ready() -> bool:
    """True if slurmctld answers, a node of PARTITION is usable and sacct (slurmdbd) answers."""
    if not (shutil.which("sinfo") and shutil.which("sacct")):
        return False
    res = _run(["sinfo", "-h", "-p", PARTITION, "-o", "%t"])
    if res is None or res.returncode != 0:
        return False
    states = {s.strip() for s in res.stdout.split()}
    if not states & _USABLE_STATES:
        return False
    res = _run(["sacct", "-n", "-X", "-S", "now-1minute"])
    return res is not None and res.returncode == 0


def ensure_cluster(timeout: float = 120) -> None:
    """Start the cluster with scripts/slurm_up.sh unless it is already usable.

    Raises RuntimeError (with the script's output, which names the log file to read)
    if the script fails or the cluster is still not usable afterwards.
    """
    if cluster_ready():
        return
    cmd = ["bash", str(UP_SCRIPT)]
    if os.geteuid() != 0:
        if not shutil.which("sudo"):
            raise RuntimeError(f"SLURM cluster is down and {UP_SCRIPT} needs root (no sudo found)")
        cmd = ["sudo", "-n", *cmd]
    env = dict(os.environ, SLURM_UP_TIMEOUT=str(max(10, int(timeout) // 2)))
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"{UP_SCRIPT} did not finish within {timeout}s; see /var/log/slurm/*.log") from e
    if res.returncode != 0 or not cluster_ready():
        raise RuntimeError(
            f"{UP_SCRIPT} failed (rc={res.returncode}):\n{res.stdout}\n{res.stderr}\n"
            "See /var/log/slurm/{slurmctld,slurmd,slurmdbd,mariadb}.log"
        )


if __name__ == "__main__":
    import sys

    try:
        ensure_cluster()
    except RuntimeError as err:
        print(err, file=sys.stderr)
        sys.exit(1)
    print(f"SLURM cluster ready (partition {PARTITION!r})")
