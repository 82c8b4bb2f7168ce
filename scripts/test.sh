#!/usr/bin/env bash
# The test command (README; CI runs exactly this): the default suite, then the SLURM suite on the local
# single-node cluster when it can be started (scripts/slurm_up.sh needs root; see scripts/SLURM.md).
# Both parts always run; the exit status is non-zero if either failed.
#   REQUIRE_SLURM=1   fail instead of skipping the SLURM suite when the cluster cannot be started (CI)
#   PYTHON            interpreter (default: .venv/bin/python, else python3)
#   PYTEST_WORKERS    pytest-xdist workers for the default suite (default: auto, one per core; 0 runs it in this
#                     process). Each test file runs whole on one worker (--dist loadfile: module fixtures are built
#                     once), and each worker's torch gets one thread (OMP_NUM_THREADS, unless set) so the workers
#                     do not oversubscribe the cores. The SLURM suite runs in one process: its tests share one
#                     cluster, and the chaos test times its faults.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
status=0
WORKERS=${PYTEST_WORKERS:-auto}
if [ "$WORKERS" != 0 ] && ! "$PY" -c "import xdist" 2>/dev/null; then
    echo "test.sh: pytest-xdist is not installed (pip install -e '.[dev]'): the default suite runs in one process" >&2
    WORKERS=0
fi
if [ "$WORKERS" = 0 ]; then
    "$PY" -m pytest "$@" || status=1
else
    OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} "$PY" -m pytest -n "$WORKERS" --dist loadfile "$@" || status=1
fi
if "$PY" scripts/slurm_env.py; then
    "$PY" -m pytest -m slurm "$@" || status=1
elif [ "${REQUIRE_SLURM:-0}" = 1 ]; then
    echo "test.sh: the SLURM cluster could not be started (REQUIRE_SLURM=1)" >&2
    status=1
else
    echo "test.sh: SLURM cluster not available here: the slurm tests were not run (see scripts/SLURM.md)" >&2
fi
exit $status
