"""Signal reading (WFDB records and DICOM ECG Waveform Storage) into (lead, time) Records."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medssl.errors import InputError
from medssl.io._checks import count_nonfinite, reader_errors
from medssl.io.record import Annotation, Record, RecordMeta, SourceInfo

if TYPE_CHECKING:  # pragma: no cover
    from pydicom.dataset import Dataset

__all__ = ["read_wfdb", "read_dicom_waveform", "WFDB_ANNOTATION_EXTS", "wfdb_record_base"]

# Annotation extensions looked for next to a record, besides one file per lead (LUDB: 1.i, 1.ii, ..., 1.v6).
WFDB_ANNOTATION_EXTS = ("atr", "ann", "qrs", "ecg", "pu", "pu0", "pu1", "ari")


def wfdb_record_base(path: Path) -> Path:
    """Record base path (no extension) for a ``.hea`` path."""
    return path.with_suffix("")


def _read_annotations(base: Path, lead_names: list[str], signal_files: set[str]) -> dict[str, Annotation]:
    import wfdb

    exts: list[str] = list(WFDB_ANNOTATION_EXTS)
    for name in lead_names:
        low = name.lower()
        if low and low not in exts:
            exts.append(low)
    out: dict[str, Annotation] = {}
    for ext in exts:
        f = base.parent / f"{base.name}.{ext}"
        if f.name in signal_files or ext in ("dat", "hea", "mat") or not f.is_file():
            continue
        try:
            ann = wfdb.rdann(str(base), ext)
        except Exception:  # noqa: BLE001 - a companion that is not an annotation file is ignored
            continue
        out[ext] = Annotation(
            sample=np.asarray(ann.sample, dtype=np.int64), symbol=tuple(str(s) for s in ann.symbol)
        )
    return out


def read_wfdb(path: Path) -> Record:
    """Load a WFDB record from its ``.hea`` (signals in .dat or .mat) as (lead, time) in physical units."""
    import wfdb

    base = wfdb_record_base(path)
    hea = base.with_suffix(".hea") if path.suffix.lower() != ".hea" else path
    if not hea.is_file():
        raise InputError(path, "WFDB header (.hea) not found next to the signal file")
    with reader_errors(hea, "cannot read WFDB header"):
        header = wfdb.rdheader(str(base))
    signal_files = sorted({str(f) for f in (header.file_name or [])})
    missing = [f for f in signal_files if not (base.parent / f).is_file()]
    if missing:
        raise InputError(hea, f"WFDB signal file missing: {', '.join(missing)}")
    with reader_errors(hea, "cannot read WFDB signals"):
        rec = wfdb.rdrecord(str(base), physical=True)
        if rec.p_signal is None:
            raise InputError(hea, "WFDB record holds no signals")
        arr = np.ascontiguousarray(rec.p_signal.T)
        lead_names = [str(n) for n in (rec.sig_name or [])]
        units = tuple(str(u) for u in (rec.units or []))
        anns = _read_annotations(base, lead_names, set(signal_files))
    fmts = sorted({str(f) for f in (rec.fmt or [])})
    extra: dict[str, Any] = {"wfdb_format": fmts, "signal_files": signal_files}
    meta = RecordMeta(
        modality="ECG",
        axes=("lead", "time"),
        shape=tuple(arr.shape),
        dtype=str(arr.dtype),
        source=SourceInfo(format="WFDB"),
        sampling_rate=float(rec.fs),
        lead_names=tuple(lead_names),
        units=units,
        annotations=anns,
        nonfinite_count=count_nonfinite(arr),
        extra=extra,
    )
    return Record(arr, meta)


_LEAD_RE = re.compile(r"^\s*lead\s+", re.IGNORECASE)


def _lead_name(channel: Any, index: int) -> str:
    src = channel.get("ChannelSourceSequence")
    if src:
        meaning = str(src[0].get("CodeMeaning") or src[0].get("CodeValue") or "")
        meaning = _LEAD_RE.sub("", meaning.split("(")[0]).strip()
        if meaning:
            return meaning
    label = channel.get("ChannelLabel")
    return str(label) if label else f"ch{index}"


def read_dicom_waveform(path: Path, ds: Dataset, group: int = 0) -> Record:
    """Load multiplex group ``group`` of a DICOM waveform (12-lead ECG) as (lead, time) in physical units."""
    with reader_errors(path, "cannot read DICOM waveform"):
        seq = ds.get("WaveformSequence")
        if not seq:
            raise InputError(path, "no waveform data in this DICOM")
        w = seq[group]
        arr = np.ascontiguousarray(np.asarray(ds.waveform_array(group)).T)
        channels = list(w.get("ChannelDefinitionSequence") or [])
        leads = tuple(_lead_name(c, i) for i, c in enumerate(channels))
        units = []
        for c in channels:
            u = c.get("ChannelSensitivityUnitsSequence")
            units.append(str(u[0].get("CodeValue") or "") if u else "")
        modality = str(ds.get("Modality") or "ECG").upper()
        from medssl.io.dicom import _source

        extra: dict[str, Any] = {
            "waveform_groups": len(seq),
            "group": group,
            "group_label": str(w.get("MultiplexGroupLabel") or ""),
        }
        meta = RecordMeta(
            modality=modality,
            axes=("lead", "time"),
            shape=tuple(arr.shape),
            dtype=str(arr.dtype),
            source=_source(ds),
            sampling_rate=float(w.SamplingFrequency),
            lead_names=leads,
            units=tuple(units),
            nonfinite_count=count_nonfinite(arr),
            extra=extra,
        )
        return Record(arr, meta)
