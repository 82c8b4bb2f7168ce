"""Exceptions the CLI turns into one line (per problem) and exit status 2, in a module that imports nothing, so
that the CLI can catch them without importing the modules that raise them (harness/schema.py re-exports
ConfigError, harness/task.py TaskError).
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad command line or config: the message says what to change, one line per problem (`lines`)."""

    def __init__(self, message: str, lines: list[str] | None = None):
        super().__init__(message)
        self.lines = lines or [message]


class TaskError(ValueError):
    """Bad task input (missing files, wrong format...). The message names the file, the field and the fix."""


class RecordError(ValueError):
    """A run record (record.json) that cannot be read or lacks what its readers need: the message names the file,
    the field and the fix. Every command that reads records answers it with one line and exit status 2."""


def _size(n: int | None) -> str:
    if n is None:
        return "an unknown amount"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class DiskFullError(RuntimeError):
    """A write found the disk full (or the quota used up): what was being written, where, the space it needed and
    the space the file system has. Raised by harness/storage.py after removing its temporary file."""

    ADVICE = ("nothing half-written was left behind; free some space (or write elsewhere: results_dir=, cache_dir=) "
              "and re-send the same command: what is finished is kept and skipped")

    def __init__(self, folder, what: str, needed: int | None, free: int | None, total: int | None,
                 context: str = "", advice: str | None = None):
        self.folder, self.what, self.needed, self.free, self.total, self.context = \
            folder, what, needed, free, total, context
        self.advice = self.ADVICE if advice is None else advice
        had = f"{_size(free)} free of {_size(total)}" if total is not None else "an unknown amount free"
        need = f"needs at least {_size(needed)}" if needed else "found it full"  # None: a library's write, size unknown
        super().__init__(f"no space left on the disk of {folder}: {what} {need}, the file system has {had}; "
                         + (f"{context}; " if context else "") + self.advice)

    def with_context(self, context: str, advice: str | None = None) -> DiskFullError:
        """The same error, saying also what the command had done (a sweep: how many runs have their records)."""
        return DiskFullError(self.folder, self.what, self.needed, self.free, self.total, context, advice)

    def __reduce__(self):  # picklable (submitit pickles a job's exception)
        return (DiskFullError, (self.folder, self.what, self.needed, self.free, self.total, self.context,
                                self.advice))
