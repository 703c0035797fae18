"""Raw MR k-space reading: Siemens twix ``.dat`` (twixtools) and ``.npz`` arrays."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from medssl.errors import InputError
from medssl.io._checks import count_nonfinite, reader_errors
from medssl.io.record import Record, RecordMeta, SourceInfo

__all__ = ["read_twix", "read_kspace_npz", "TWIX_AXIS_NAMES"]

# twixtools dimension labels -> medssl axis names.
TWIX_AXIS_NAMES = {
    "Ide": "ide", "Idd": "idd", "Idc": "idc", "Idb": "idb", "Ida": "ida",
    "Seg": "segment", "Set": "set", "Rep": "repetition", "Phs": "cardiac_phase", "Eco": "echo",
    "Par": "partition", "Sli": "slice", "Ave": "average", "Lin": "line", "Cha": "coil", "Col": "readout",
}  # fmt: skip
_ALWAYS_KEEP = ("Lin", "Cha", "Col")


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) and not hasattr(d, "get"):
            return None
        d = d.get(k)
        if d is None:
            return None
    return d


def read_twix(path: Path) -> Record:
    """Load the image scan of a Siemens twix file as complex64 k-space; readout oversampling is kept."""
    import twixtools

    with reader_errors(path, "not a readable Siemens twix file"):
        scans = twixtools.map_twix(os.fspath(path), verbose=False)
        if isinstance(scans, dict):
            scans = [scans]
        image_scans = [s for s in scans if isinstance(s, dict) and "image" in s]
        if not image_scans:
            raise InputError(path, "twix file has no image data")
        scan = image_scans[-1]
        im = scan["image"]
        im.flags["remove_os"] = False
        dims = list(im.dims)
        data = np.asarray(im[:])
        keep = [
            i for i, (d, s) in enumerate(zip(dims, data.shape, strict=True)) if s > 1 or d in _ALWAYS_KEEP
        ]
        arr = np.ascontiguousarray(
            data.reshape([data.shape[i] for i in keep]).astype(np.complex64, copy=False)
        )
        labels = tuple(dims[i] for i in keep)
        hdr = scan.get("hdr", {})
        os_factor = _get(hdr, "Meas", "flReadoutOSFactor")
        slc = _get(hdr, "MeasYaps", "sSliceArray", "asSlice")
        fov = None
        if isinstance(slc, list) and slc:
            ro, ph = slc[0].get("dReadoutFOV"), slc[0].get("dPhaseFOV")
            if ro and ph:
                fov = [float(ro), float(ph)]
        manufacturer = _get(hdr, "Dicom", "Manufacturer")
        model = _get(hdr, "Dicom", "ManufacturersModelName")
    extra: dict[str, Any] = {
        "readout_oversampling": float(os_factor) if os_factor else None,
        "readout_oversampling_removed": False,
        "measurements_in_file": len(scans),
    }
    if fov:
        extra["fov_mm"] = fov
    meta = RecordMeta(
        modality="KSPACE",
        axes=tuple(TWIX_AXIS_NAMES.get(d, d.lower()) for d in labels),
        shape=tuple(arr.shape),
        dtype=str(arr.dtype),
        source=SourceInfo(
            format="twix",
            manufacturer=str(manufacturer) if manufacturer else None,
            model=str(model) if model else None,
        ),
        kspace_dims=labels,
        nonfinite_count=count_nonfinite(arr),
        extra=extra,
    )
    return Record(arr, meta)


def _generic_axes(ndim: int, radial: bool) -> tuple[str, ...]:
    base = ("coil", "spoke" if radial else "line", "readout")
    if ndim <= 3:
        return base[3 - ndim :]
    return tuple(f"dim{i}" for i in range(ndim - 3)) + base


def read_kspace_npz(path: Path) -> Record:
    """Load k-space from .npz: ``<name>`` + ``<name>_dims`` (+ fov_mm), or ``kspace`` (+ angles, sens)."""
    try:
        npz = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise InputError(path, f"not a readable .npz file: {type(exc).__name__}") from None
    with reader_errors(path, "cannot read .npz k-space"), npz:
        files = list(npz.files)
        aux: dict[str, np.ndarray] = {}
        labels: tuple[str, ...] = ()
        if "kspace" in files:
            key = "kspace"
        else:
            cands = [f for f in files if f"{f}_dims" in files]
            if not cands:
                cands = [f for f in files if npz[f].dtype.kind == "c"]
            if not cands:
                raise InputError(path, f"no k-space array in .npz (keys: {', '.join(files[:8])})")
            key = cands[0]
        arr = np.asarray(npz[key])
        if f"{key}_dims" in files:
            labels = tuple(str(d) for d in np.asarray(npz[f"{key}_dims"]).tolist())
            if len(labels) != arr.ndim:
                raise InputError(path, f"{key}_dims has {len(labels)} labels for a {arr.ndim}-D array")
        for name in ("angles", "sens", "fov_mm", "mask", "trajectory"):
            if name in files and name != key:
                aux[name] = np.asarray(npz[name])
    if labels:
        axes = tuple(TWIX_AXIS_NAMES.get(d, d.lower()) for d in labels)
    else:
        axes = _generic_axes(arr.ndim, "angles" in aux)
    extra: dict[str, Any] = {"npz_key": key, "aux_arrays": {k: list(v.shape) for k, v in aux.items()}}
    if "fov_mm" in aux:
        extra["fov_mm"] = [float(v) for v in aux["fov_mm"].ravel()]
    meta = RecordMeta(
        modality="KSPACE",
        axes=axes,
        shape=tuple(arr.shape),
        dtype=str(arr.dtype),
        source=SourceInfo(format="npz"),
        kspace_dims=labels,
        nonfinite_count=count_nonfinite(arr),
        extra=extra,
    )
    return Record(arr, meta, aux=aux)
