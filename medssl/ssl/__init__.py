"""Self-supervised training: methods, EMA targets, datasets, and the shared Trainer.

``Trainer`` (and ``warmup_cosine``, ``load_checkpoint``) are imported lazily from ``medssl.ssl.trainer`` /
``schedules`` / ``checkpoint`` so this package imports even while those modules are being built.
"""

from __future__ import annotations

import importlib
from typing import Any

from .ema import EMA, momentum_schedule
from .methods import BYOL, CLA, JEPA, MAE, ContrastiveMasked, PosNoiseSchedule, SSLMethod

_LAZY = {
    "Trainer": "medssl.ssl.trainer",
    "warmup_cosine": "medssl.ssl.schedules",
    "load_checkpoint": "medssl.ssl.checkpoint",
    "VideoClipDataset": "medssl.ssl.data",
    "ImageFolderDataset": "medssl.ssl.data",
}

__all__ = [
    "BYOL",
    "CLA",
    "EMA",
    "JEPA",
    "MAE",
    "ContrastiveMasked",
    "ImageFolderDataset",
    "PosNoiseSchedule",
    "SSLMethod",
    "Trainer",
    "VideoClipDataset",
    "load_checkpoint",
    "momentum_schedule",
    "warmup_cosine",
]


def __getattr__(name: str) -> Any:
    """Import ``Trainer`` & co. on first use; a clear error if their module does not exist yet."""
    if name in _LAZY:
        try:
            module = importlib.import_module(_LAZY[name])
        except ImportError as exc:
            raise AttributeError(f"medssl.ssl.{name} is unavailable: {exc}") from exc
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'medssl.ssl' has no attribute {name!r}")
