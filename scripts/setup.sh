#!/usr/bin/env bash
# One command from a fresh clone: a virtualenv in .venv, PyTorch, the harness with its dev extras,
# then the main job (kd on the synthetic task) so you see it train, score and write a record.
#   TORCH_SPEC        which torch to install first (default: torch==2.13.0, whose CPU build lies on this
#                     machine's disk; on a GPU cluster use TORCH_SPEC=torch or a CUDA-specific pin)
#   TORCHVISION_SPEC  the torchvision that goes with it, installed in the same pip command so the resolver pairs
#                     them (default: torchvision==0.28.0, torch 2.13's; with TORCH_SPEC=torch use
#                     TORCHVISION_SPEC=torchvision). `harness extract` needs it (the `extract` extra); beside the
#                     CPU build of torch only its Python model code is used (harness/extract/backbones.py).
#   SKIP_DEMO=1  set up only
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch (and torchvision) first, so the project's `torch>=2.2` is already satisfied and no other build is pulled in.
python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}" "${TORCHVISION_SPEC:-torchvision==0.28.0}"
python -m pip install -q -e '.[dev]'
echo "setup done: $(python -c 'import torch; print("torch", torch.__version__, "cuda" if torch.cuda.is_available() else "cpu")')"
if [ "${SKIP_DEMO:-0}" != 1 ]; then
    # results/local/ is git-ignored: your own runs, apart from the committed benchmark records in results/.
    harness run method=kd task=synthetic results_dir=results/local
fi
