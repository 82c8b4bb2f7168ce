"""Parity references from the official code, committed as numbers (docs/fidelity.md#parity).

    python scripts/parity/make_reference.py --pkdot DIR --mtpkdot DIR --dmd DIR [--out tests/parity]

Each DIR is a local checkout of the official repository (haseebaslam95/PKDOT, haseebaslam95/MT-PKDOT,
mdswyz/DMD). The builders import its functions and modules on the CPU (unused top-level imports such as comet_ml
stubbed), feed them seeded float64 inputs, and write tests/parity/<component>.npz: the inputs, the weights where a
module has them, the outputs, the gradients with respect to the student-side inputs, and the official commit.
tests/test_parity_*.py compare the harness with those files in CI; no official code enters this repository.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUILDERS = {"pkdot": "ref_pkdot", "mtpkdot": "ref_mtpkdot", "dmd": "ref_dmd"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in BUILDERS:
        ap.add_argument(f"--{name}", type=Path, metavar="DIR", help=f"checkout of the official {name} repository")
    ap.add_argument("--out", type=Path, default=HERE.parents[1] / "tests" / "parity")
    args = ap.parse_args(argv)
    chosen = {name: getattr(args, name) for name in BUILDERS if getattr(args, name) is not None}
    if not chosen:
        ap.error("name at least one checkout: --pkdot DIR, --mtpkdot DIR or --dmd DIR")
    for name, repo in chosen.items():
        if not (repo / ".git").exists():
            ap.error(f"--{name} {repo}: not a git checkout (the reference files record its commit)")
    sys.path.insert(0, str(HERE))
    for name, repo in chosen.items():
        builder = importlib.import_module(BUILDERS[name])
        for line in builder.build(repo.resolve(), args.out):  # each builder yields one line per component written
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
