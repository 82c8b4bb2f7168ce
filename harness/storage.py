"""Every file the harness writes goes through here: records, predictions, manifests, checkpoints, the teacher store,
the feature cache, leaderboards, reports, figures, extracted features and mimic datasets.

Each file is written to a temporary name in its own folder and renamed into place, so a reader sees the old file or
the new one, never half of one. A full disk (ENOSPC, or a quota: EDQUOT) becomes one DiskFullError that names the
folder, the space the write needed (at least the size of what it was writing) and the space the file system has
(shutil.disk_usage); the temporary file is removed first, so nothing half-written is left behind. The CLI prints
the error as one line with exit status 2; re-sending the command once space is freed resumes (finished runs have
their records and are skipped).

Only the standard library is imported here (this module is on the start-up path of every command); torch and
numpy are imported by the functions that save their objects.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from harness.errors import DiskFullError

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# Libraries that wrap the OSError lose its errno (torch's zip writer: "file write failed"; pyarrow: "IOError:
# ... No space left on device"), but keep its text.
DISK_FULL_TEXT = (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT))

Writer = Callable[[BinaryIO], None]


def is_disk_full(error: BaseException | None) -> bool:
    """True if error, or an error it was raised from or during, is a full disk or an exceeded quota."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, DiskFullError):
            return True
        if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
            return True
        if any(text in str(error) for text in DISK_FULL_TEXT):
            return True
        error = error.__cause__ or error.__context__
    return False


def _existing(folder: Path) -> Path:
    """The folder, or its nearest ancestor that exists (a folder the full disk did not let us make)."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def disk_full_error(folder: Path | str, what: str, needed: int) -> DiskFullError:
    """The error for a write of `needed` bytes (`what`) into folder that found the disk full."""
    folder = Path(folder)
    try:
        usage = shutil.disk_usage(_existing(folder))
        free, total = usage.free, usage.total
    except OSError:
        free = total = None
    return DiskFullError(folder, what, needed, free, total)


@contextlib.contextmanager
def disk_full_guard(folder: Path | str, what: str, needed: int = 0, restate: bool = False) -> Iterator[None]:
    """Turn a full disk met inside the block (by this code or a library's) into DiskFullError about `folder`.
    restate: a DiskFullError from inside (about a temporary folder, say) is told about `folder` and `what` too.
    The block cleans up after itself (a try/finally of its own); this only names the failure."""
    try:
        yield
    except DiskFullError as e:
        if not restate:
            raise
        raise disk_full_error(folder, what, max(needed, e.needed or 0)) from e
    except Exception as e:
        if is_disk_full(e):
            raise disk_full_error(folder, what, needed) from e
        raise


def make_dirs(folder: Path | str) -> Path:
    """mkdir -p; a full disk (a new folder needs a block on most file systems) is a DiskFullError."""
    folder = Path(folder)
    with disk_full_guard(folder, "a new folder"):
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def temporary_name(path: Path) -> Path:
    """Beside path (the same file system: the rename is atomic), hidden, and unique to this process."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def _write_temporary(path: Path, data: bytes | Writer, needed: int | None) -> Path:
    """Write data (bytes, or a function writing to a binary file) to path's temporary name, synced to disk.
    On any failure the temporary file is removed; a full disk raises DiskFullError."""
    tmp = temporary_name(path)
    written = 0
    try:
        with open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as e:
        with contextlib.suppress(OSError):
            written = tmp.stat().st_size
        tmp.unlink(missing_ok=True)
        if isinstance(e, Exception) and is_disk_full(e):
            size = len(data) if isinstance(data, (bytes, bytearray)) else needed or 0
            raise disk_full_error(path.parent, f"writing {path.name}", max(size, written + 1)) from e
        raise
    return tmp


def atomic_write(path: Path | str, data: bytes | str | Writer, needed: int | None = None) -> Path:
    """Write a file whole or not at all: to a temporary name in its folder, then renamed over path.

    data: the bytes (a str is UTF-8 encoded), or a function that writes to a binary file (np.save, torch.save,
    savefig...), with `needed` its size or a lower bound of it, for the error message of a full disk."""
    path = Path(path)
    make_dirs(path.parent)
    tmp = _write_temporary(path, data.encode() if isinstance(data, str) else data, needed)
    os.replace(tmp, path)
    return path


def atomic_write_text(path: Path | str, text: str) -> Path:
    return atomic_write(path, text.encode())


def atomic_write_all(files: list[tuple[Path, bytes | str]]) -> None:
    """Several files, all or none: every temporary file is written before the first rename (renames need no
    space), so a full disk leaves the folders as they were. A record and its predictions go together: a
    record.json never describes another attempt's predictions.csv."""
    files = [(Path(path), data.encode() if isinstance(data, str) else data) for path, data in files]
    staged: list[tuple[Path, Path]] = []
    try:
        for path, data in files:
            make_dirs(path.parent)
            staged.append((_write_temporary(path, data, None), path))
    except BaseException as e:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        if isinstance(e, DiskFullError):  # the space all of them need, measured with the temporary files gone
            names = " and ".join(path.name for path, _ in files)
            raise disk_full_error(e.folder, f"writing {names}", sum(len(d) for _, d in files)) from e
        raise
    try:
        for tmp, path in staged:  # in the order given: the last file (record.json) marks the whole as done
            os.replace(tmp, path)
    finally:  # interrupted between two renames: no temporary file stays behind
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)


def tensor_bytes(obj: Any) -> int:
    """The bytes of the tensors and arrays in a (nested) object: a lower bound of its torch.save size."""
    if hasattr(obj, "nbytes") and not isinstance(obj, (str, bytes)):
        try:
            return int(obj.nbytes)
        except (TypeError, RuntimeError):
            return 0
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def atomic_torch_save(obj: Any, path: Path | str) -> Path:
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f), needed=tensor_bytes(obj))


def atomic_np_save(path: Path | str, array) -> Path:
    import numpy as np

    array = np.asanyarray(array)
    return atomic_write(path, lambda f: np.save(f, array), needed=array.nbytes)


def atomic_savefig(fig, path: Path | str, **kwargs) -> Path:
    """matplotlib's savefig, whole or not at all (the format from path's suffix, as savefig would take it)."""
    path = Path(path)
    kwargs.setdefault("format", path.suffix.lstrip(".") or "png")
    return atomic_write(path, lambda f: fig.savefig(f, **kwargs))


@contextlib.contextmanager
def atomic_folder(folder: Path | str, what: str, needed: int = 0) -> Iterator[Path]:
    """A folder made whole or not at all: the block fills a temporary folder beside it, renamed into place when the
    block ends; on any failure the temporary folder is removed (a full disk: DiskFullError about folder)."""
    folder = Path(folder)
    make_dirs(folder.parent)
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with disk_full_guard(folder.parent, what, needed):
            tmp.mkdir()
            yield tmp
            os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
