#!/usr/bin/env bash
# The test command (README; CI runs exactly this): the default suite, then the SLURM suite on the local
# single-node cluster when it can be started (scripts/slurm_up.sh needs root; see scripts/SLURM.md).
# Both parts always run; the exit status is non-zero if either failed.
#   REQUIRE_SLURM=1   fail instead of skipping the SLURM suite when the cluster cannot be started (CI)
#   PYTHON            interpreter (default: .venv/bin/python, else python3)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
status=0
"$PY" -m pytest "$@" || status=1
if "$PY" scripts/slurm_env.py; then
    "$PY" -m pytest -m slurm "$@" || status=1
elif [ "${REQUIRE_SLURM:-0}" = 1 ]; then
    echo "test.sh: the SLURM cluster could not be started (REQUIRE_SLURM=1)" >&2
    status=1
else
    echo "test.sh: SLURM cluster not available here: the slurm tests were not run (see scripts/SLURM.md)" >&2
fi
exit $status
