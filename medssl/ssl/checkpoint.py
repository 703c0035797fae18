"""Atomic writes and safe loading of training checkpoints.

A checkpoint is a plain dict of tensors and Python primitives, written with ``torch.save`` to a temporary
file in the destination folder, flushed to disk (``fsync``), and moved into place with ``os.replace``, so a
crash leaves either the old file or the new one, never half of one. Loading always uses
``torch.load(..., weights_only=True)``; anything that cannot be read raises
:class:`medssl.errors.CheckpointError`.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from medssl.errors import CheckpointError

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "REQUIRED_KEYS",
    "atomic_write",
    "atomic_write_text",
    "atomic_write_json",
    "remove_stale_temp_files",
    "save_checkpoint",
    "load_checkpoint",
    "get_rng_state",
    "set_rng_state",
]

CHECKPOINT_FORMAT = "medssl-checkpoint"
CHECKPOINT_VERSION = 1
REQUIRED_KEYS = frozenset({"format", "version", "step", "method"})


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """Write a file atomically: ``write(fh)`` fills a temporary file that then replaces ``path``.

    Args:
        path: the destination; its folder is created if needed.
        write: called with a binary file handle open for writing.

    Returns:
        The destination path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def remove_stale_temp_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete temporary files that :func:`atomic_write` left behind when its process was killed.

    Only call it where no other process is writing into ``folder``.

    Returns:
        The files removed.
    """
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.glob(".*.tmp"):
        try:
            p.unlink()
            removed.append(p)
        except OSError:  # pragma: no cover - raced or read-only
            pass
    return removed


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 text atomically (see :func:`atomic_write`)."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON atomically (see :func:`atomic_write`); NaN and infinity are refused."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, allow_nan=False) + "\n")


def save_checkpoint(path: str | os.PathLike[str], state: Mapping[str, Any]) -> Path:
    """Save a checkpoint dict atomically, adding the ``format`` and ``version`` tags.

    Args:
        path: destination file (``.pt``).
        state: tensors, state dicts and Python primitives only, so that it loads with ``weights_only=True``.
    """
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
    return atomic_write(path, lambda fh: torch.save(payload, fh))


def load_checkpoint(
    path: str | os.PathLike[str],
    map_location: str | torch.device | None = "cpu",
    required_keys: Iterable[str] = REQUIRED_KEYS,
) -> dict[str, Any]:
    """Load a medssl checkpoint with ``torch.load(..., weights_only=True)``.

    Args:
        path: the checkpoint file.
        map_location: where to put the tensors (default CPU).
        required_keys: keys the checkpoint must have.

    Returns:
        The checkpoint dict.

    Raises:
        CheckpointError: the file is missing, unreadable, truncated, not a torch file, or not a medssl
            checkpoint (wrong or missing keys).
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(p, "checkpoint not found")
    if not p.is_file():
        raise CheckpointError(p, "not a file")
    try:
        obj = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(p, f"cannot be loaded ({type(exc).__name__}: {reason[:200]})") from exc
    if not isinstance(obj, dict):
        raise CheckpointError(p, f"not a medssl checkpoint (holds a {type(obj).__name__}, not a dict)")
    missing = sorted(set(required_keys) - set(obj))
    if missing:
        raise CheckpointError(p, f"not a medssl checkpoint (missing keys: {', '.join(missing)})")
    if obj.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(p, f"not a medssl checkpoint (format {obj.get('format')!r})")
    if not isinstance(obj.get("version"), int) or obj["version"] > CHECKPOINT_VERSION:
        raise CheckpointError(p, f"unsupported checkpoint version {obj.get('version')!r}")
    return obj


def get_rng_state() -> dict[str, Any]:
    """The Python, NumPy, torch (and CUDA) random states, as ``weights_only``-loadable objects."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "name": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = list(state["cuda"])
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])
