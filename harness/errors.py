"""Exceptions the CLI turns into one line and exit status 2, in a module that imports nothing, so that the CLI can
catch them without importing the libraries of the modules that raise them (harness/task.py re-exports TaskError).
"""


class TaskError(ValueError):
    """Bad task input (missing files, wrong format...). The message names the file, the field and the fix."""
