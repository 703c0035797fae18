"""Errors that medssl reports to users as one line, without a traceback."""

from __future__ import annotations

import os

__all__ = ["InputError", "CheckpointError", "MedsslError"]


class MedsslError(Exception):
    """Base class for errors the ``medssl`` command reports as one line with exit code 2."""


class InputError(MedsslError, ValueError):
    """An input file that cannot be used: names the file and the reason.

    Args:
        path: the offending file or folder.
        reason: a short, human-readable reason (no patient data).

    Examples::

        >>> str(InputError("scan.dcm", "not a DICOM file"))
        'scan.dcm: not a DICOM file'
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class CheckpointError(InputError):
    """A checkpoint that cannot be loaded (missing, truncated, or not a medssl checkpoint)."""
