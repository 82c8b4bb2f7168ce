"""Teacher store: a teacher is trained once per (task, fold, seed, teacher config) and reused.

Every distillation run of a sweep asks the store; the first one trains and saves, the others load.
A file lock makes concurrent runs (several processes, or SLURM array tasks on several nodes sharing
the store folder) wait for the one that trains instead of training again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from filelock import FileLock

from harness.storage import atomic_torch_save, atomic_write_text, make_dirs

if TYPE_CHECKING:  # torch is imported where a teacher is loaded or trained: `harness status` stays light
    import torch


def stable_hash(obj: Any, n: int = 12) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


class TeacherStore:
    def __init__(self, root: Path | str):
        self.root = Path(root)

    def path(self, key: dict) -> Path:
        return self.root / str(key.get("task", "task")) / stable_hash(key)

    def checkpoint_path(self, key: dict) -> Path:
        """Where a teacher's per-epoch checkpoint goes while it trains (train.checkpoint=true): in the store,
        not in the run that happens to train it, so whichever run takes the lock next resumes it."""
        return self.path(key) / "checkpoint.pt"

    def get_or_train(self, key: dict, build: Callable[[], torch.nn.Module],
                     train: Callable[[torch.nn.Module], dict], device: torch.device
                     ) -> tuple[torch.nn.Module, dict]:
        """Return (module, meta). `train(module)` trains it in place and returns metadata (its epoch log...)."""
        import torch

        folder = make_dirs(self.path(key))
        weights, meta_file = folder / "teacher.pt", folder / "meta.json"
        with FileLock(str(folder / ".lock")):
            module = build().to(device)
            if weights.exists() and meta_file.exists():
                module.load_state_dict(torch.load(weights, map_location=device, weights_only=True))
                meta = json.loads(meta_file.read_text())
                meta["reused"] = True
            else:
                meta = {"key": key, **train(module)}
                # whole or not at all (a full disk: DiskFullError naming the store's folder); the weights first,
                # the meta file last: a teacher is stored once both exist
                atomic_torch_save(module.state_dict(), weights)
                atomic_write_text(meta_file, json.dumps(meta, indent=1, default=str))
                for stale in folder.glob("checkpoint.pt*"):  # the teacher is stored: its checkpoint is done
                    stale.unlink(missing_ok=True)
                meta["reused"] = False
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
        meta["store_path"] = str(folder)
        return module, meta
