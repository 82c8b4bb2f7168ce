"""What every parity reference builder shares: import modules from a local checkout of an official repository
with its unused top-level imports stubbed, read that checkout's commit, and save a reference file.

Nothing from the official code is copied here or into tests/parity/: the builders run it and save the numbers.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import types
from contextlib import contextmanager
from pathlib import Path

import numpy as np


def official_commit(repo: Path) -> str:
    """The checkout's commit id (40 hex digits); a dirty tree gets a -dirty suffix, as the harness's records do."""
    sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                         check=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, check=True).stdout.strip()
    return sha + ("-dirty" if dirty else "")


class _Stub(types.ModuleType):
    """A module whose every attribute is another stub (so `from comet_ml import Experiment` works) and which can
    be called or subclassed without doing anything. Only for imports the components under test never use."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Stub(f"{self.__name__}.{name}")

    def __call__(self, *args, **kwargs):
        return _Stub(self.__name__ + "()")

    def __mro_entries__(self, bases):
        return (object,)


@contextmanager
def official_imports(repo: Path, stubs: list[str] = ()):
    """Import from `repo` (its folder first on sys.path) with the named modules stubbed. On exit, sys.path is
    restored and the repository's own modules and the stubs leave sys.modules, so two official repositories with
    modules of the same name (models, sinkhorn, validate) never see each other's. Third-party modules the block
    imported stay: a C extension (numpy.fft's) cannot be loaded twice in one process."""
    saved_path = list(sys.path)
    saved_modules = dict(sys.modules)
    sys.path.insert(0, str(repo))
    for name in stubs:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            sys.modules.setdefault(".".join(parts[:i]), _Stub(".".join(parts[:i])))
    try:
        yield importlib.import_module
    finally:
        sys.path[:] = saved_path
        root = Path(repo).resolve()
        for name, module in list(sys.modules.items()):
            if name in saved_modules and saved_modules[name] is module:
                continue
            file = getattr(module, "__file__", None)
            if isinstance(module, _Stub) or (file and root in Path(file).resolve().parents):
                del sys.modules[name]
        sys.modules.update(saved_modules)


def save_reference(out_dir: Path, component: str, *, repo: Path, source: str, arrays: dict[str, np.ndarray],
                   meta: dict | None = None) -> Path:
    """Write tests/parity/<component>.npz: the arrays (float64 where they are floats) plus a JSON `meta` entry
    naming the official repository's commit and the file/function the numbers came from."""
    out_dir.mkdir(parents=True, exist_ok=True)
    info = {"component": component, "official_commit": official_commit(repo), "official_repo": repo.name,
            "source": source, **(meta or {})}
    payload = {k: np.asarray(v) for k, v in arrays.items()}
    payload["meta"] = np.array(json.dumps(info, sort_keys=True))
    path = out_dir / f"{component}.npz"
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **payload)
    tmp.replace(path)
    return path


def load_reference(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays and the meta dict of a reference file (the tests' reader)."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "meta"}
        meta = json.loads(str(z["meta"]))
    return arrays, meta
