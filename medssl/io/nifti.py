"""NIfTI-1/NIfTI-2 reading through nibabel, with a size check before any voxel is allocated."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from medssl.errors import InputError
from medssl.io._checks import check_gzip, count_nonfinite, gzip_has_at_least, reader_errors
from medssl.io.record import Record, RecordMeta, SourceInfo

__all__ = ["read_nifti", "NIFTI_SUFFIXES"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
_TIME_SCALE_MS = {"sec": 1000.0, "msec": 1.0, "usec": 0.001}


def read_nifti(path: Path) -> Record:
    """Load a ``.nii``/``.nii.gz`` volume with nibabel's affine, refusing headers that overstate the data."""
    import nibabel as nib

    gz = path.name.lower().endswith(".gz")
    if gz:
        check_gzip(path)
    with reader_errors(path, "cannot read NIfTI header"):
        img = nib.load(os.fspath(path))
        if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
            raise InputError(path, f"not a NIfTI image ({type(img).__name__})")
        hdr = img.header
        shape = tuple(int(s) for s in img.shape)
        dtype = hdr.get_data_dtype()
        offset = int(hdr.get_data_offset())
    if any(s <= 0 for s in shape):
        raise InputError(path, f"NIfTI header has an empty dimension: shape {shape}")
    needed = offset + int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    if gz:
        if not gzip_has_at_least(path, needed):
            raise InputError(
                path, f"NIfTI header claims {shape} {dtype} ({needed} bytes) but the file holds less"
            )
    else:
        have = path.stat().st_size
        if have < needed:
            raise InputError(
                path, f"NIfTI header claims {shape} {dtype} ({needed} bytes) but the file has {have} bytes"
            )
    with reader_errors(path, "cannot read NIfTI data"):
        arr = np.asanyarray(img.dataobj)
        if not arr.dtype.isnative:
            arr = arr.astype(arr.dtype.newbyteorder("="))
        affine = np.asarray(img.affine, dtype=np.float64)
        zooms = tuple(float(z) for z in hdr.get_zooms())
        space_unit, time_unit = hdr.get_xyzt_units()
    names = ("x", "y", "z", "time", "component", "c5", "c6")
    axes = names[: arr.ndim]
    spacing = {ax: zooms[i] for i, ax in enumerate(axes[:3]) if i < len(zooms)}
    frame_time = None
    if arr.ndim >= 4 and len(zooms) >= 4 and zooms[3] > 0:
        frame_time = zooms[3] * _TIME_SCALE_MS.get(str(time_unit), 1000.0)
    fmt = "NIfTI-2" if isinstance(img, nib.Nifti2Image) else "NIfTI-1"
    notes = []
    if space_unit not in ("mm", "unknown"):
        notes.append(f"spatial unit in header: {space_unit}")
    extra: dict[str, Any] = {"qform_code": int(hdr["qform_code"]), "sform_code": int(hdr["sform_code"])}
    meta = RecordMeta(
        modality="VOLUME",  # NIfTI does not record the modality
        axes=axes,
        shape=tuple(arr.shape),
        dtype=str(arr.dtype),
        source=SourceInfo(format=fmt, notes=tuple(notes)),
        spacing=spacing,
        affine=affine,
        frame_time_ms=frame_time,
        nonfinite_count=count_nonfinite(arr),
        extra=extra,
    )
    return Record(arr, meta)
