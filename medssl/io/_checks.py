"""Input checks shared by the readers, so every bad file fails the same way: one InputError line."""

from __future__ import annotations

import contextlib
import gzip
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from medssl.errors import InputError

__all__ = [
    "check_path",
    "check_gzip",
    "gzip_has_at_least",
    "count_nonfinite",
    "reader_errors",
    "short_reason",
]

GZIP_MAGIC = b"\x1f\x8b"


def check_path(path: Path) -> Path:
    """Refuse missing paths and zero-byte files before any reader touches them."""
    if not path.exists():
        raise InputError(path, "no such file or folder")
    if path.is_file():
        try:
            size = path.stat().st_size
        except OSError as exc:  # pragma: no cover - permissions, races
            raise InputError(path, f"cannot read: {exc.strerror or exc}") from None
        if size == 0:
            raise InputError(path, "empty file (0 bytes)")
        if not os.access(path, os.R_OK):
            raise InputError(path, "file is not readable (permission denied)")
    return path


def check_gzip(path: Path) -> None:
    """Refuse a ``.gz`` file that does not start with the gzip magic bytes."""
    with open(path, "rb") as fh:
        head = fh.read(2)
    if head != GZIP_MAGIC:
        raise InputError(path, "not a gzip file although the name ends in .gz")


def gzip_has_at_least(path: Path, nbytes: int, chunk: int = 1 << 20) -> bool:
    """Whether a gzip file decompresses to at least ``nbytes``, without holding more than one chunk.

    The gzip trailer (ISIZE, size modulo 2**32) answers cheaply when it is large enough; otherwise the
    stream is decompressed chunk by chunk and counted, stopping as soon as ``nbytes`` is reached.
    """
    try:
        with open(path, "rb") as fh:
            fh.seek(-4, os.SEEK_END)
            isize = struct.unpack("<I", fh.read(4))[0]
    except OSError:
        isize = 0
    if isize >= nbytes:
        return True
    total = 0
    try:
        with gzip.open(path, "rb") as gz:
            while total < nbytes:
                block = gz.read(min(chunk, nbytes - total))
                if not block:
                    break
                total += len(block)
    except (OSError, EOFError, gzip.BadGzipFile):
        return False
    return total >= nbytes


def count_nonfinite(array: np.ndarray) -> int:
    """Number of NaN/Inf values (zero for integer arrays, without a pass over them)."""
    if array.dtype.kind in "fc":
        return int(array.size - np.count_nonzero(np.isfinite(array)))
    return 0


def short_reason(exc: BaseException, limit: int = 240) -> str:
    """An exception message folded onto one line and shortened, for a one-line error."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


@contextlib.contextmanager
def reader_errors(path: Path | str, what: str) -> Iterator[None]:
    """Turn any unexpected exception inside a reader into ``InputError(path, what: reason)``."""
    try:
        yield
    except InputError:
        raise
    except MemoryError:
        raise InputError(path, f"{what}: not enough memory to load it") from None
    except Exception as exc:  # noqa: BLE001 - the point is to never leak a traceback
        raise InputError(path, f"{what}: {type(exc).__name__}: {short_reason(exc)}") from exc
