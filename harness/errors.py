"""Exceptions the CLI turns into one line and exit status 2, in a module that imports nothing, so that the CLI can
catch them without importing the modules that raise them (harness/schema.py re-exports ConfigError,
harness/task.py TaskError).
"""


class ConfigError(ValueError):
    """A bad command line or config: the message says what to change, one line per problem (`lines`)."""

    def __init__(self, message: str, lines: list[str] | None = None):
        super().__init__(message)
        self.lines = lines or [message]


class TaskError(ValueError):
    """Bad task input (missing files, wrong format...). The message names the file, the field and the fix."""
