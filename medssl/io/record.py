"""The typed result of :func:`medssl.io.load`: an array plus whitelisted, non-identifying metadata."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Annotation", "SourceInfo", "RecordMeta", "Record"]


@dataclass(frozen=True)
class Annotation:
    """Point annotations of a signal (e.g. a WFDB ``.atr`` file), so labels travel with the samples.

    Attributes:
        sample: sample indices (int64, 1-D), in the record's time axis.
        symbol: one symbol per sample index (e.g. ``"N"``, ``"A"``, ``"("``).
    """

    sample: np.ndarray
    symbol: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.symbol)

    def counts(self) -> dict[str, int]:
        """Number of marks per symbol, so a summary can be checked without the samples."""
        out: dict[str, int] = {}
        for s in self.symbol:
            out[s] = out.get(s, 0) + 1
        return out


@dataclass(frozen=True)
class SourceInfo:
    """How the data was stored, so decode problems can be reported without patient data.

    Attributes:
        format: container format, e.g. ``"DICOM"``, ``"DICOM series"``, ``"NIfTI-1"``, ``"WFDB"``, ``"PNG"``,
            ``"twix"``, ``"npz"``.
        transfer_syntax: DICOM transfer syntax name, if any.
        photometric: photometric interpretation as stored (before any conversion to RGB).
        sop_class: DICOM SOP class name, if any.
        manufacturer: device manufacturer (never a serial number).
        model: device model name.
        notes: short remarks about conversions done while loading (e.g. ``"YBR_FULL_422 converted to RGB"``).
    """

    format: str
    transfer_syntax: str | None = None
    photometric: str | None = None
    sop_class: str | None = None
    manufacturer: str | None = None
    model: str | None = None
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain dict without empty fields, for JSON."""
        d: dict[str, Any] = {"format": self.format}
        for key in ("transfer_syntax", "photometric", "sop_class", "manufacturer", "model"):
            val = getattr(self, key)
            if val:
                d[key] = val
        if self.notes:
            d["notes"] = list(self.notes)
        return d


@dataclass
class RecordMeta:
    """Metadata of a loaded record, built from a whitelist so it never holds patient identifiers.

    Attributes:
        modality: ``"US"``, ``"XA"``, ``"MR"``, ``"CT"``, ``"ECG"``, ``"KSPACE"``, ``"IMAGE"``, ``"SEG"``, ...
        axes: one name per array axis, e.g. ``("frame", "y", "x", "channel")``, ``("lead", "time")``.
        shape: array shape.
        dtype: array dtype as a string.
        source: how the data was stored.
        spacing: physical spacing per named axis, in mm (spatial axes only; only those known).
        affine: 4x4 matrix mapping array indices (in array axis order, spatial axes only) to RAS+ mm, as
            nibabel uses; ``None`` when the geometry is unknown.
        frame_time_ms: time between frames of a cine.
        sampling_rate: samples per second of a signal (Hz).
        lead_names: signal/lead names, in array order.
        units: physical unit per lead (e.g. ``"mV"``).
        kspace_dims: k-space dimension labels as stored by the source (e.g. twix ``("Lin", "Cha", "Col")``).
        annotations: point annotations keyed by their source (e.g. ``"atr"`` or LUDB lead ``"ii"``).
        nonfinite_count: number of NaN/Inf values in the array.
        extra: further non-identifying facts specific to the format (JSON-safe values only).
    """

    modality: str
    axes: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: str
    source: SourceInfo
    spacing: dict[str, float] = field(default_factory=dict)
    affine: np.ndarray | None = None
    frame_time_ms: float | None = None
    sampling_rate: float | None = None
    lead_names: tuple[str, ...] = ()
    units: tuple[str, ...] = ()
    kspace_dims: tuple[str, ...] = ()
    annotations: dict[str, Annotation] = field(default_factory=dict)
    nonfinite_count: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def has_nonfinite(self) -> bool:
        """Whether the array holds NaN or Inf values."""
        return self.nonfinite_count > 0


def _jsonable(value: Any) -> Any:
    """Convert numpy scalars/arrays and tuples into plain JSON types."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, complex):
        return [value.real, value.imag]
    return value


@dataclass
class Record:
    """A loaded file: a numpy array plus metadata, the one thing every medssl reader returns.

    Attributes:
        array: the data (numpy, never a tensor).
        meta: whitelisted metadata.
        aux: companion arrays that belong to the data (e.g. radial ``angles`` or coil ``sens`` of k-space).
    """

    array: np.ndarray
    meta: RecordMeta
    aux: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        """Array shape."""
        return tuple(self.array.shape)

    @property
    def dtype(self) -> np.dtype:
        """Array dtype."""
        return self.array.dtype

    @property
    def modality(self) -> str:
        """Modality code (see :class:`RecordMeta`)."""
        return self.meta.modality

    @property
    def axes(self) -> tuple[str, ...]:
        """Axis names, one per array axis."""
        return self.meta.axes

    @property
    def has_nonfinite(self) -> bool:
        """Whether the array holds NaN or Inf values."""
        return self.meta.has_nonfinite

    def summary(self) -> dict[str, Any]:
        """One JSON-safe dict describing the record, for ``medssl info`` (no patient data, no pixels)."""
        m = self.meta
        frames = None
        for name in ("frame", "time") if m.modality not in ("ECG",) else ():
            if name in m.axes:
                frames = int(self.array.shape[m.axes.index(name)])
                break
        out: dict[str, Any] = {
            "modality": m.modality,
            "shape": list(self.array.shape),
            "axes": list(m.axes),
            "dtype": str(self.array.dtype),
            "spacing": dict(m.spacing) if m.spacing else None,
            "sampling_rate": m.sampling_rate,
            "frames": frames,
            "frame_time_ms": m.frame_time_ms,
            "leads": len(m.lead_names) if m.lead_names else None,
            "lead_names": list(m.lead_names) if m.lead_names else None,
            "units": sorted(set(m.units)) if m.units else None,
            "annotations": {k: len(v) for k, v in m.annotations.items()} or None,
            "kspace_dims": list(m.kspace_dims) if m.kspace_dims else None,
            "source": m.source.to_dict(),
            "has_nonfinite": m.has_nonfinite,
            "nonfinite_count": int(m.nonfinite_count),
        }
        if m.extra:
            out["extra"] = m.extra
        return _jsonable(out)

    def to_json(self) -> str:
        """The summary as one line of JSON."""
        return json.dumps(self.summary(), ensure_ascii=False)
