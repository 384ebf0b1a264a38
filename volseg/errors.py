"""Exceptions that carry a one-line, user-facing message.

Every error that a person can fix (a bad file, a bad plan, a bad option) is a
:class:`VolsegError`.  Its message names the file and the problem on one line; the
CLI prints it and exits with a non-zero status.
"""

from __future__ import annotations

import os


class VolsegError(ValueError):
    """A problem with user input that the user can fix.

    Args:
        path: The file or folder at fault, or ``None`` when no file is involved.
        message: What is wrong, and what was expected where it helps.
    """

    def __init__(self, path: str | os.PathLike | None, message: str) -> None:
        self.path = None if path is None else str(path)
        self.message = " ".join(str(message).split())
        super().__init__(f"{self.path}: {self.message}" if self.path else self.message)

    def __reduce__(self):  # survive the trip back from worker processes
        return (type(self), (self.path, self.message))


class DatasetError(VolsegError):
    """The dataset folder or one of its files is invalid."""


class PlanError(VolsegError):
    """A plan or fingerprint file is invalid or does not match the data."""


class ModelError(VolsegError):
    """A model folder or checkpoint is invalid or does not match the plan."""
