"""DICOM reading (single files, multi-frame, enhanced, series folders, DICOMDIR) into Records."""

from __future__ import annotations

import gzip
import hashlib
import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medssl.errors import InputError
from medssl.io._checks import check_gzip, count_nonfinite, reader_errors, short_reason
from medssl.io.record import Record, RecordMeta, SourceInfo

if TYPE_CHECKING:  # pragma: no cover
    from pydicom.dataset import Dataset

__all__ = ["read_dicom", "read_dicom_series", "read_dicomdir", "is_dicom_file", "read_dataset"]

DICOMDIR_SOP = "1.2.840.10008.1.3.10"
ECG_SOP_PREFIX = "1.2.840.10008.5.1.4.1.1.9."  # Waveform storage SOP classes

# Which package to install for which compressed transfer syntax (shown when the decoder is missing).
_DECODER_HINTS: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg + pylibjpeg-libjpeg (or Pillow)",
    "1.2.840.10008.1.2.4.51": "pylibjpeg + pylibjpeg-libjpeg (or Pillow)",
    "1.2.840.10008.1.2.4.57": "pylibjpeg + pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.70": "pylibjpeg + pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.80": "pylibjpeg + pylibjpeg-libjpeg (or pyjpegls)",
    "1.2.840.10008.1.2.4.81": "pylibjpeg + pylibjpeg-libjpeg (or pyjpegls)",
    "1.2.840.10008.1.2.4.90": "pylibjpeg + pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.91": "pylibjpeg + pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.201": "pylibjpeg + pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.202": "pylibjpeg + pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.203": "pylibjpeg + pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.5": "pylibjpeg + pylibjpeg-rle",
}

_VOLUME_MODALITIES = {"CT", "MR", "PT", "NM", "RTDOSE"}


# --------------------------------------------------------------------------------------------- reading


def _open_bytes(path: Path) -> Any:
    """A file path, or an in-memory buffer for gzipped DICOM (``.dcm.gz``)."""
    if path.name.lower().endswith(".gz"):
        check_gzip(path)
        with gzip.open(path, "rb") as gz:
            return io.BytesIO(gz.read())
    return path


def read_dataset(path: Path, stop_before_pixels: bool = False) -> Dataset:
    """Read a DICOM dataset, accepting files without the 128-byte preamble but refusing non-DICOM bytes."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    src = _open_bytes(path)
    try:
        return pydicom.dcmread(src, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        pass
    except Exception as exc:
        raise InputError(path, f"cannot read DICOM: {type(exc).__name__}: {short_reason(exc)}") from None
    # No 'DICM' prefix: read it anyway, then check it looks like a DICOM dataset.
    if isinstance(src, io.BytesIO):
        src.seek(0)
    try:
        ds = pydicom.dcmread(src, stop_before_pixels=stop_before_pixels, force=True)
        ok = (
            len(ds) > 0
            and all(e.tag.group < 0xFFFE for e in ds)
            and ("SOPClassUID" in ds or ("Rows" in ds and "Columns" in ds))
        )
    except Exception:
        ok = False
    if not ok:
        raise InputError(path, "not a DICOM file")
    return ds


def is_dicom_file(path: Path) -> bool:
    """Cheap test for the 'DICM' magic at byte 128 (no parsing)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _ts(ds: Dataset) -> Any:
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    return ts


def _sop_name(ds: Dataset) -> str | None:
    uid = ds.get("SOPClassUID")
    if uid is None:
        meta = getattr(ds, "file_meta", None)
        uid = meta.get("MediaStorageSOPClassUID") if meta is not None else None
    if uid is None:
        return None
    return str(uid.name) if hasattr(uid, "name") else str(uid)


def _source(ds: Dataset, fmt: str = "DICOM", notes: Sequence[str] = ()) -> SourceInfo:
    """Whitelisted description of the file: never patient, study or device-serial attributes."""
    ts = _ts(ds)
    return SourceInfo(
        format=fmt,
        transfer_syntax=str(ts.name) if ts is not None else None,
        photometric=str(ds.get("PhotometricInterpretation")) if "PhotometricInterpretation" in ds else None,
        sop_class=_sop_name(ds),
        manufacturer=str(ds.get("Manufacturer")) if ds.get("Manufacturer") else None,
        model=str(ds.get("ManufacturerModelName")) if ds.get("ManufacturerModelName") else None,
        notes=tuple(notes),
    )


def _check_decodable(path: Path, ds: Dataset) -> None:
    """Refuse missing pixel data, missing decoders and truncated native pixel data before decoding."""
    from pydicom.pixels.decoders.base import get_decoder

    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        kind = _sop_name(ds) or "dataset"
        raise InputError(path, f"no pixel data in this DICOM ({kind})")
    ts = _ts(ds)
    if ts is None:
        return
    if ts.is_compressed:
        try:
            decoder = get_decoder(ts)
        except NotImplementedError:
            raise InputError(path, f"unsupported transfer syntax {ts.name} ({ts})") from None
        if not decoder.is_available:
            hint = _DECODER_HINTS.get(str(ts))
            if hint is None:
                missing = "; ".join(decoder.missing_dependencies) or "a decoder plugin"
                hint = missing
            raise InputError(path, f"cannot decode transfer syntax {ts.name} ({ts}): install {hint}")
        return
    if "PixelData" in ds and all(k in ds for k in ("Rows", "Columns", "BitsAllocated")):
        frames = int(ds.get("NumberOfFrames") or 1)
        spp = int(ds.get("SamplesPerPixel") or 1)
        nbits = int(ds.Rows) * int(ds.Columns) * frames * spp * int(ds.BitsAllocated)
        expected = (nbits + 7) // 8
        have = len(ds.PixelData)
        if have < expected:
            raise InputError(path, f"pixel data truncated: {have} of {expected} bytes present")


def _frame_groups(ds: Dataset, index: int, name: str) -> Any:
    """Functional group item ``name`` for frame ``index`` (per-frame first, then shared)."""
    for seq_name in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        seq = ds.get(seq_name)
        if not seq:
            continue
        item = seq[index] if seq_name.startswith("PerFrame") and index < len(seq) else seq[0]
        sub = item.get(name)
        if sub:
            return sub[0]
    return None


def _rescale_params(ds: Dataset, n_frames: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-frame rescale slope/intercept (enhanced functional groups or classic attributes)."""
    if "RescaleSlope" in ds or "RescaleIntercept" in ds:
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        inter = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        return np.full(n_frames, slope), np.full(n_frames, inter)
    if "SharedFunctionalGroupsSequence" in ds or "PerFrameFunctionalGroupsSequence" in ds:
        slopes = np.ones(n_frames)
        inters = np.zeros(n_frames)
        found = False
        for i in range(n_frames):
            item = _frame_groups(ds, i, "PixelValueTransformationSequence")
            if item is not None:
                found = True
                slopes[i] = float(item.get("RescaleSlope", 1.0) or 1.0)
                inters[i] = float(item.get("RescaleIntercept", 0.0) or 0.0)
        if found:
            return slopes, inters
    return None


def _apply_rescale(arr: np.ndarray, params: tuple[np.ndarray, np.ndarray] | None, multi: bool) -> np.ndarray:
    if params is None:
        return arr
    slopes, inters = params
    if np.all(slopes == 1.0) and np.all(inters == 0.0):
        return arr
    out = arr.astype(np.float32)
    if multi:
        shape = (-1,) + (1,) * (arr.ndim - 1)
        out *= slopes.astype(np.float32).reshape(shape)
        out += inters.astype(np.float32).reshape(shape)
    else:
        out *= np.float32(slopes[0])
        out += np.float32(inters[0])
    return out


def _lps_to_ras(affine: np.ndarray) -> np.ndarray:
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


def _plane(
    ds: Dataset, index: int = 0
) -> tuple[np.ndarray | None, np.ndarray | None, tuple[float, float] | None]:
    """(orientation 6-vector, position 3-vector, (row, col) pixel spacing) for a frame, where known."""
    iop = ds.get("ImageOrientationPatient")
    ipp = ds.get("ImagePositionPatient")
    ps = ds.get("PixelSpacing")
    item = _frame_groups(ds, index, "PlaneOrientationSequence")
    if item is not None and item.get("ImageOrientationPatient"):
        iop = item.ImageOrientationPatient
    item = _frame_groups(ds, index, "PlanePositionSequence")
    if item is not None and item.get("ImagePositionPatient"):
        ipp = item.ImagePositionPatient
    item = _frame_groups(ds, index, "PixelMeasuresSequence")
    if item is not None and item.get("PixelSpacing"):
        ps = item.PixelSpacing
    iop_a = np.asarray([float(v) for v in iop]) if iop and len(iop) == 6 else None
    ipp_a = np.asarray([float(v) for v in ipp]) if ipp and len(ipp) == 3 else None
    ps_t = (float(ps[0]), float(ps[1])) if ps and len(ps) == 2 else None
    return iop_a, ipp_a, ps_t


def _slice_thickness(ds: Dataset) -> float | None:
    item = _frame_groups(ds, 0, "PixelMeasuresSequence")
    for src in (item, ds):
        if src is None:
            continue
        for key in ("SpacingBetweenSlices", "SliceThickness"):
            val = src.get(key)
            if val not in (None, ""):
                try:
                    return abs(float(val))
                except (TypeError, ValueError):
                    continue
    return None


def _volume_affine(
    iop: np.ndarray, positions: np.ndarray, ps: tuple[float, float], thickness: float | None
) -> np.ndarray:
    """4x4 RAS affine for an array indexed (slice, row, column) from DICOM geometry."""
    row_dir, col_dir = iop[:3], iop[3:]  # direction along a row (increasing column), along a column
    normal = np.cross(row_dir, col_dir)
    if len(positions) > 1:
        step = (positions[-1] - positions[0]) / (len(positions) - 1)
    else:
        step = normal * (thickness or 1.0)
    aff = np.eye(4)
    aff[:3, 0] = step
    aff[:3, 1] = col_dir * ps[0]
    aff[:3, 2] = row_dir * ps[1]
    aff[:3, 3] = positions[0]
    return _lps_to_ras(aff)


def _us_spacing(ds: Dataset) -> dict[str, float]:
    """Pixel spacing in mm from the ultrasound region calibration (cm) or PixelSpacing."""
    regions = ds.get("SequenceOfUltrasoundRegions")
    if regions:
        reg = regions[0]
        if reg.get("PhysicalUnitsXDirection") == 3 and reg.get("PhysicalUnitsYDirection") == 3:
            try:
                return {
                    "y": abs(float(reg.PhysicalDeltaY)) * 10.0,
                    "x": abs(float(reg.PhysicalDeltaX)) * 10.0,
                }
            except (AttributeError, TypeError, ValueError):
                pass
    for key in ("PixelSpacing", "ImagerPixelSpacing"):
        ps = ds.get(key)
        if ps and len(ps) == 2:
            return {"y": float(ps[0]), "x": float(ps[1])}
    return {}


def _frame_time(ds: Dataset) -> float | None:
    ft = ds.get("FrameTime")
    if ft not in (None, ""):
        return float(ft)
    ftv = ds.get("FrameTimeVector")
    if ftv and len(ftv) > 1:
        return float(np.mean([float(v) for v in list(ftv)[1:]]))
    for key in ("CineRate", "RecommendedDisplayFrameRate"):
        rate = ds.get(key)
        if rate:
            return 1000.0 / float(rate)
    return None


# JPEG baseline/extended: Pillow (libjpeg-turbo) decodes and converts YCbCr to RGB in C, ~2x faster than the
# numpy colour conversion pydicom applies after other plugins (values within a few grey levels).
_PILLOW_FIRST = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"}


def _decode(path: Path, ds: Dataset, index: int | None = None) -> tuple[np.ndarray, list[str]]:
    """Decode all frames (or frame ``index``): YBR to RGB, PALETTE COLOR through its LUT; array and notes."""
    from pydicom.pixels import apply_color_lut, pixel_array
    from pydicom.pixels.decoders.base import get_decoder

    _check_decodable(path, ds)
    notes: list[str] = []
    pi = str(ds.get("PhotometricInterpretation", ""))
    ts = _ts(ds)
    opts: dict[str, Any] = {}
    eight_bit = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8) <= 8  # Pillow has no 12-bit JPEG
    if ts is not None and str(ts) in _PILLOW_FIRST and eight_bit and "pillow" in get_decoder(ts).available_plugins:
        opts["decoding_plugin"] = "pillow"
    if index is not None:
        opts["index"] = index
    arr = pixel_array(ds, **opts) if opts else ds.pixel_array
    if pi == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        notes.append("PALETTE COLOR expanded to RGB through the colour LUT")
    elif pi.startswith("YBR") and int(ds.get("SamplesPerPixel") or 1) == 3:
        notes.append(f"{pi} converted to RGB")
    elif pi == "MONOCHROME1":  # higher stored values are darker: invert so that every record reads alike
        if int(ds.get("PixelRepresentation") or 0) == 0:
            top = (1 << int(ds.get("BitsStored") or ds.get("BitsAllocated") or 16)) - 1
            arr = (top - arr.astype(np.int64)).astype(arr.dtype)
        else:
            arr = (-arr.astype(np.int64) - 1).astype(arr.dtype)
        notes.append("MONOCHROME1 inverted to MONOCHROME2 (higher values brighter)")
    return arr, notes


# --------------------------------------------------------------------------------------------- single file


def read_dicom(path: Path, ds: Dataset | None = None, probe: bool = False) -> Record:
    """Load one DICOM file (image, multi-frame, enhanced or ECG waveform) into a Record.

    Args:
        path: the file.
        ds: the dataset, if already read.
        probe: for ``medssl info``: decode only the first and last frame of a multi-frame image (which still
            proves the codec works and the data is not truncated); the returned array is then a read-only
            broadcast view of the first frame with the full shape and dtype.
    """
    with reader_errors(path, "cannot read DICOM"):
        if ds is None:
            ds = read_dataset(path)
        sop = str(ds.get("SOPClassUID", ""))
        if (
            sop == DICOMDIR_SOP
            or str(getattr(ds, "file_meta", {}).get("MediaStorageSOPClassUID", "")) == DICOMDIR_SOP
        ):
            return read_dicomdir(path, ds)
        if "WaveformSequence" in ds and "PixelData" not in ds:
            from medssl.io.waveform import read_dicom_waveform

            return read_dicom_waveform(path, ds)
        return _image_record(path, ds, probe)


def _image_record(path: Path, ds: Dataset, probe: bool = False) -> Record:
    modality = str(ds.get("Modality") or "OT").upper()
    n_frames = int(ds.get("NumberOfFrames") or 1)
    multi = n_frames > 1
    probed = probe and n_frames > 2
    params = _rescale_params(ds, n_frames)
    if probed:
        first, notes = _decode(path, ds, index=0)
        last, _ = _decode(path, ds, index=n_frames - 1)
        arr = np.stack([first, last])
        if params is not None:
            params = (params[0][[0, -1]], params[1][[0, -1]])
    else:
        arr, notes = _decode(path, ds)
    spp = arr.shape[-1] if (arr.ndim == (4 if multi else 3)) else 1
    if modality not in ("SEG",):
        arr = _apply_rescale(arr, params, multi)
    if modality == "RTDOSE" and ds.get("DoseGridScaling"):
        arr = arr.astype(np.float32) * np.float32(float(ds.DoseGridScaling))
        notes.append("DoseGridScaling applied (Gy)")
    if "MOSAIC" in [str(v).upper() for v in (ds.get("ImageType") or [])]:
        notes.append("Siemens mosaic kept as one 2-D image (not unpacked)")

    spacing: dict[str, float] = {}
    affine: np.ndarray | None = None
    extra: dict[str, Any] = {}
    iop, ipp, ps = _plane(ds, 0)
    chan = ("channel",) if spp > 1 else ()
    frame_time: float | None = None

    if multi:
        axes: tuple[str, ...] = ("frame", "y", "x") + chan
        volume = modality in _VOLUME_MODALITIES or modality == "SEG"
        if volume and iop is not None and ps is not None and spp == 1:
            positions = _frame_positions(ds, n_frames, ipp, iop)
            if positions is not None:
                axes = ("z", "y", "x")
                spacing = {"y": ps[0], "x": ps[1]}
                affine = _volume_affine(iop, positions, ps, _slice_thickness(ds))
                spacing = {"z": float(np.linalg.norm(affine[:3, 0])), **spacing}
        if axes[0] == "frame":
            spacing = _us_spacing(ds) if ps is None else {"y": ps[0], "x": ps[1]}
            frame_time = _frame_time(ds)
    else:
        axes = ("y", "x") + chan
        if ps is not None:
            spacing = {"y": ps[0], "x": ps[1]}
        else:
            spacing = _us_spacing(ds)
        if iop is not None and ipp is not None and ps is not None:
            full = _volume_affine(iop, ipp[None, :], ps, _slice_thickness(ds))
            # array is (row, col): reorder columns to (row, col, slice)
            affine = full[:, [1, 2, 0, 3]]
    if modality == "SEG":
        extra["segments"] = len(ds.get("SegmentSequence") or [])

    meta = RecordMeta(
        modality=modality,
        axes=axes,
        shape=tuple(arr.shape),
        dtype=str(arr.dtype),
        source=_source(ds, notes=notes),
        spacing=spacing,
        affine=affine,
        frame_time_ms=frame_time,
        nonfinite_count=count_nonfinite(arr),
        extra=extra,
    )
    if probed:
        arr = np.broadcast_to(arr[:1], (n_frames,) + arr.shape[1:])
        meta.shape = tuple(arr.shape)
        extra["pixels"] = f"probe: decoded frames 0 and {n_frames - 1} only"
    return Record(arr, meta)


def _frame_positions(
    ds: Dataset, n_frames: int, ipp: np.ndarray | None, iop: np.ndarray
) -> np.ndarray | None:
    """Frame positions of a multi-frame volume if they form one evenly spaced stack, else None."""
    normal = np.cross(iop[:3], iop[3:])
    offsets = ds.get("GridFrameOffsetVector")
    if offsets and len(offsets) == n_frames and ipp is not None:
        pos = ipp[None, :] + np.asarray([float(v) for v in offsets])[:, None] * normal[None, :]
    else:
        pts = []
        for i in range(n_frames):
            _, p, _ = _plane(ds, i)
            if p is None:
                return None
            pts.append(p)
        pos = np.asarray(pts)
    if n_frames > 1:
        d = pos @ normal
        steps = np.diff(d)
        if np.any(np.abs(steps) < 1e-6) or not np.allclose(steps, steps[0], rtol=1e-3, atol=1e-3):
            return None
    return pos


# --------------------------------------------------------------------------------------------- series


def _uid_hash(uid: str) -> str:
    return hashlib.sha256(uid.encode()).hexdigest()[:10]


def read_dicom_series(folder: Path, files: Sequence[Path] | None = None, origin: str = "folder") -> Record:
    """Load the largest DICOM series found in a folder (or a given file list) as one volume."""
    with reader_errors(folder, "cannot read DICOM series"):
        if files is None:
            files = sorted(
                p for p in folder.rglob("*") if p.is_file() and not p.name.upper().startswith("DICOMDIR")
            )
        headers: dict[str, list[tuple[Path, Dataset]]] = {}
        skipped = 0
        for f in files:
            try:
                ds = read_dataset(f, stop_before_pixels=True)
            except InputError:
                skipped += 1
                continue
            if str(ds.get("SOPClassUID", "")) == DICOMDIR_SOP:
                continue
            # One volume = one series UID and one image size (some series mix sizes, e.g. mosaics + DWI).
            uid = f"{ds.get('SeriesInstanceUID') or ''}|{ds.get('Rows')}x{ds.get('Columns')}"
            headers.setdefault(uid, []).append((f, ds))
        if not headers:
            raise InputError(folder, f"no DICOM files found in this {origin}")
        ranked = sorted(headers.items(), key=lambda kv: -len(kv[1]))
        uid, members = ranked[0]
        series_list = [
            {
                "uid_sha256_10": _uid_hash(u.split("|")[0]),
                "files": len(m),
                "modality": str(m[0][1].get("Modality") or ""),
                "rows_cols": u.split("|")[1],
            }
            for u, m in ranked
        ]
        if len(members) == 1:
            rec = read_dicom(members[0][0])
        else:
            rec = _stack_series(folder, members)
        rec.meta.extra["series_count"] = len(ranked)
        rec.meta.extra["series"] = series_list
        if len(ranked) > 1:
            rec.meta.extra["note"] = (
                f"{len(ranked)} series in this {origin}; loaded the largest ({len(members)} files)"
            )
        if skipped:
            rec.meta.extra["non_dicom_files_skipped"] = skipped
        rec.meta.source = SourceInfo(
            format="DICOM series" if origin == "folder" else "DICOMDIR",
            transfer_syntax=rec.meta.source.transfer_syntax,
            photometric=rec.meta.source.photometric,
            sop_class=rec.meta.source.sop_class,
            manufacturer=rec.meta.source.manufacturer,
            model=rec.meta.source.model,
            notes=rec.meta.source.notes,
        )
        return rec


def _stack_series(folder: Path, members: list[tuple[Path, Dataset]]) -> Record:
    first = members[0][1]
    iop, _, ps = _plane(first)
    order_note = "sorted by InstanceNumber"
    positions = None
    iops = [m[1].get("ImageOrientationPatient") for m in members]
    parallel = iop is not None and all(
        o is not None and len(o) == 6 and np.allclose([float(v) for v in o], iop, atol=1e-3) for o in iops
    )
    if parallel and all(m[1].get("ImagePositionPatient") for m in members):
        normal = np.cross(iop[:3], iop[3:])
        pos = np.asarray([[float(v) for v in m[1].ImagePositionPatient] for m in members])
        d = pos @ normal
        if len(np.unique(np.round(d, 4))) == len(members):
            idx = np.argsort(d, kind="stable")
            members = [members[i] for i in idx]
            positions = pos[idx]
            order_note = "sorted by ImagePositionPatient along the slice normal"
    if positions is None:
        members = sorted(members, key=lambda m: int(m[1].get("InstanceNumber") or 0))
    slices = []
    params = []
    shape0 = None
    for f, _ in members:
        ds = read_dataset(f)
        arr, _notes = _decode(f, ds)
        if shape0 is None:
            shape0 = arr.shape
        elif arr.shape != shape0:
            raise InputError(folder, f"slices of different sizes in one series: {shape0} and {arr.shape}")
        slices.append(arr)
        params.append(_rescale_params(ds, 1))
        last = ds
    vol = np.stack(slices)
    if any(p is not None for p in params):
        slopes = np.asarray([p[0][0] if p else 1.0 for p in params])
        inters = np.asarray([p[1][0] if p else 0.0 for p in params])
        vol = _apply_rescale(vol, (slopes, inters), multi=True)
    modality = str(first.get("Modality") or "OT").upper()
    spp = vol.shape[-1] if vol.ndim == 4 else 1
    stack_axis = "z" if positions is not None else "frame"  # non-parallel slices are not a volume
    axes: tuple[str, ...] = (stack_axis, "y", "x") + (("channel",) if spp > 1 else ())
    spacing: dict[str, float] = {}
    affine = None
    if positions is not None and ps is not None:
        affine = _volume_affine(iop, positions, ps, _slice_thickness(first))
        spacing = {"z": float(np.linalg.norm(affine[:3, 0])), "y": ps[0], "x": ps[1]}
    elif ps is not None:
        spacing = {"y": ps[0], "x": ps[1]}
    meta = RecordMeta(
        modality=modality,
        axes=axes,
        shape=tuple(vol.shape),
        dtype=str(vol.dtype),
        source=_source(last, notes=[order_note]),
        spacing=spacing,
        affine=affine,
        nonfinite_count=count_nonfinite(vol),
        extra={"slices": len(members), "parallel_slices": bool(parallel)},
    )
    return Record(vol, meta)


# --------------------------------------------------------------------------------------------- DICOMDIR


def read_dicomdir(path: Path, ds: Dataset | None = None) -> Record:
    """Resolve a DICOMDIR (pydicom FileSet) to its largest referenced image series and load it."""
    from pydicom.fileset import FileSet

    with reader_errors(path, "cannot read DICOMDIR"):
        if ds is None:
            ds = read_dataset(path)
        fs = FileSet(ds)
        files = []
        for inst in fs:
            if str(getattr(inst, "DirectoryRecordType", "IMAGE")).upper() in ("IMAGE", "WAVEFORM", ""):
                files.append(Path(inst.path))
        if not files:
            raise InputError(path, "DICOMDIR references no image files")
        missing = [f for f in files if not f.exists()]
        if len(missing) == len(files):
            raise InputError(path, "files referenced by the DICOMDIR are missing")
        files = [f for f in files if f.exists()]
        return read_dicom_series(path, files=files, origin="DICOMDIR")
