"""12-lead ECG preparation: standard lead order, usability checks, and one preprocessing pipeline.

Readers name leads differently (WFDB LUDB ``i, ii, avr``; CinC ``I, II, aVR``; DICOM ``Lead I (Einthoven)``,
already shortened to ``I`` by :mod:`medssl.io`; PTB adds Frank leads ``vx, vy, vz``). Models need one order,
so every record goes through :func:`standard_lead_order` and :class:`ReorderLeads` first. CPU only (runs in
DataLoader workers).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

from .signal import BandPass, Resample, StandardizeLeads

__all__ = [
    "STANDARD_LEADS",
    "ECGPrepConfig",
    "ReorderLeads",
    "ReorderLeadsd",
    "UnusableRecordError",
    "canonical_lead_name",
    "check_usable",
    "prepare_ecg",
    "standard_lead_order",
    "warn_skipped",
]

STANDARD_LEADS: tuple[str, ...] = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")

_CANON = {name.upper(): name for name in STANDARD_LEADS}


class UnusableRecordError(ValueError):
    """A record that cannot feed a 12-lead model (missing, flat or non-finite leads)."""


def canonical_lead_name(name: str) -> str:
    """Map a reader's lead name to the standard spelling (``"avr"`` -> ``"aVR"``, ``"Lead V1"`` -> ``"V1"``).

    Names that are not one of the 12 standard leads are returned stripped but otherwise unchanged.
    """
    s = re.sub(r"^\s*lead\s+", "", str(name), flags=re.IGNORECASE).strip()
    s = s.split("(")[0].strip().replace(" ", "")
    return _CANON.get(s.upper(), s)


def standard_lead_order(lead_names: Sequence[str], leads: Sequence[str] = STANDARD_LEADS) -> list[int]:
    """Row index of each lead of ``leads`` in a record whose rows are named ``lead_names``.

    Raises:
        UnusableRecordError: a wanted lead is missing (the message names them) or occurs twice.
    """
    canon = [canonical_lead_name(n) for n in lead_names]
    missing = [lead for lead in leads if lead not in canon]
    if missing:
        raise UnusableRecordError(f"missing lead(s) {', '.join(missing)} (has {', '.join(map(str, lead_names))})")
    dup = sorted({c for c in canon if c in leads and canon.count(c) > 1})
    if dup:
        raise UnusableRecordError(f"lead(s) {', '.join(dup)} occur more than once")
    return [canon.index(lead) for lead in leads]


class ReorderLeads(Transform):
    """Select and reorder rows of a ``[C, L]`` signal into ``leads`` order (default the standard 12).

    Args:
        lead_names: names of the input rows, as the reader gave them.
        leads: the wanted order.
    """

    def __init__(self, lead_names: Sequence[str], leads: Sequence[str] = STANDARD_LEADS) -> None:
        self.index = standard_lead_order(lead_names, leads)
        self.leads = tuple(leads)

    def __call__(self, sig: Any) -> Any:
        """Return ``sig[index]`` (numpy or torch)."""
        if sig.ndim != 2:
            raise ValueError(f"ReorderLeads expects [C, L], got shape {tuple(sig.shape)}.")
        return sig[list(self.index)]


class ReorderLeadsd(MapTransform):
    """Dictionary version of :class:`ReorderLeads`; lead names from ``data[names_key]``."""

    def __init__(
        self,
        keys: KeysCollection,
        names_key: str = "lead_names",
        leads: Sequence[str] = STANDARD_LEADS,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.names_key = names_key
        self.leads = tuple(leads)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Reorder every key and replace ``names_key`` by the new order."""
        d = dict(data)
        t = ReorderLeads(d[self.names_key], self.leads)
        for key in self.key_iterator(d):
            d[key] = t(d[key])
        d[self.names_key] = list(self.leads)
        return d


def check_usable(sig: np.ndarray, lead_names: Sequence[str], flat_std: float = 1e-6) -> None:
    """Raise :class:`UnusableRecordError` if any lead holds NaN/Inf or is flat (std <= ``flat_std``).

    An all-zero lead (a disconnected electrode) is flat. The message names the leads.
    """
    if sig.ndim != 2 or sig.shape[0] != len(lead_names):
        raise ValueError(f"signal {tuple(sig.shape)} does not match {len(lead_names)} lead names.")
    bad = [str(n) for n, row in zip(lead_names, sig, strict=True) if not np.isfinite(row).all()]
    if bad:
        raise UnusableRecordError(f"non-finite values (NaN/Inf) in lead(s) {', '.join(bad)}")
    flat = [str(n) for n, row in zip(lead_names, sig, strict=True) if float(np.std(row)) <= flat_std]
    if flat:
        raise UnusableRecordError(f"flat or all-zero lead(s) {', '.join(flat)}")


@dataclass(frozen=True)
class ECGPrepConfig:
    """The preprocessing recipe (defaults follow ST-MEM, ICLR 2024, and Xu et al., arXiv 2506.22495).

    Attributes:
        fs: target sampling rate (Hz).
        low: band-pass lower cut-off (Hz), removes baseline wander.
        high: band-pass upper cut-off (Hz), removes mains and EMG noise.
        leads: lead order of the output.
    """

    fs: float = 250.0
    low: float = 0.67
    high: float = 40.0
    leads: tuple[str, ...] = STANDARD_LEADS


_UNIT_TO_MV = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "v": 1e3}


def prepare_ecg(
    sig: np.ndarray,
    lead_names: Sequence[str],
    fs: float,
    config: ECGPrepConfig | None = None,
    units: Sequence[str] | None = None,
    name: str = "record",
) -> np.ndarray:
    """Reorder to the standard leads, check usability, convert to mV, resample, band-pass, standardise.

    Args:
        sig: ``[C, L]`` signal in physical units.
        lead_names: one name per row.
        fs: the record's sampling rate (Hz).
        config: the recipe (default :class:`ECGPrepConfig`).
        units: per-row units (``mV``, ``uV``); used to convert to mV before the usability check.
        name: the record's name, for messages.

    Returns:
        float32 ``[len(config.leads), round(L * config.fs / fs)]``, every lead zero-mean, unit-variance.

    Raises:
        UnusableRecordError: missing, flat or non-finite leads, or too short to filter (message names ``name``).
    """
    cfg = config or ECGPrepConfig()
    if fs <= 0:
        raise UnusableRecordError(f"{name}: sampling rate must be > 0, got {fs}")
    try:
        idx = standard_lead_order(lead_names, cfg.leads)
        x = np.asarray(sig, dtype=np.float64)[idx]
        if units is not None and len(units) == len(lead_names):
            scale = np.array([_UNIT_TO_MV.get(str(units[i]).strip().lower(), 1.0) for i in idx])
            x = x * scale[:, None]
        check_usable(x, cfg.leads)
        x = np.asarray(Resample(fs, cfg.fs)(x), dtype=np.float64)
        x = np.asarray(BandPass(cfg.low, cfg.high, cfg.fs)(x), dtype=np.float64)
    except UnusableRecordError as exc:
        raise UnusableRecordError(f"{name}: {exc}") from None
    except ValueError as exc:  # too short to filter
        raise UnusableRecordError(f"{name}: {exc}") from None
    return np.asarray(StandardizeLeads()(x.astype(np.float32)), dtype=np.float32)


def warn_skipped(reason: str | BaseException) -> None:
    """Emit the one warning used for every skipped record; ``reason`` starts with the record's name."""
    warnings.warn(f"skipping unusable ECG {reason}", stacklevel=2)
