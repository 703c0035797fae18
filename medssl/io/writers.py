"""Atomic writers (NIfTI, DICOM-SEG, PNG, CSV), so a crash never leaves a half-written output file."""

from __future__ import annotations

import contextlib
import csv
import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medssl.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from pydicom.dataset import Dataset

__all__ = ["write_nifti", "write_dicom_seg", "write_png", "write_csv", "atomic_path"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the target folder; on success it atomically replaces ``path``."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = (
        final.parent / f".tmp-{uuid.uuid4().hex[:12]}-{final.name}"
    )  # same suffixes, so writers pick the format
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_with(path: str | os.PathLike[str], fn: Callable[[Path], None]) -> Path:
    with atomic_path(path) as tmp:
        fn(tmp)
    return Path(path)


def write_nifti(
    path: str | os.PathLike[str], array: np.ndarray, affine: np.ndarray | None = None, *, nifti2: bool = False
) -> Path:
    """Write an array as NIfTI (.nii or .nii.gz) with the given 4x4 RAS affine and empty free-text fields.

    Args:
        path: output file; ``.gz`` suffix means compressed.
        array: voxel data (bool is stored as uint8; float64 kept).
        affine: 4x4 index-to-RAS matrix (identity when ``None``).
        nifti2: write NIfTI-2 instead of NIfTI-1.

    Returns:
        The written path.
    """
    import nibabel as nib

    arr = np.asarray(array)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    aff = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got {aff.shape}")
    cls = nib.Nifti2Image if nifti2 else nib.Nifti1Image
    img = cls(arr, aff)
    hdr = img.header
    # Free-text fields could carry identifiers copied from elsewhere: keep them empty.
    hdr["descrip"] = b""
    hdr["aux_file"] = b""
    if "db_name" in hdr:
        hdr["db_name"] = b""
    hdr["intent_name"] = b""
    hdr.set_xyzt_units("mm", "sec")
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=1)
    return _write_with(path, lambda tmp: nib.save(img, os.fspath(tmp)))


def _to_uint8_image(array: np.ndarray) -> np.ndarray:
    arr = np.asarray(array)
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if arr.dtype in (np.uint8, np.uint16):
        return arr
    if arr.dtype.kind in "iu":
        if arr.min(initial=0) >= 0 and arr.max(initial=0) <= 255:
            return arr.astype(np.uint8)
        if arr.min(initial=0) >= 0 and arr.max(initial=0) <= 65535 and arr.ndim == 2:
            return arr.astype(np.uint16)
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"cannot write dtype {arr.dtype} as PNG")
    a = arr.astype(np.float64)
    finite = np.isfinite(a)
    if not finite.any():
        return np.zeros(a.shape, np.uint8)
    lo, hi = float(a[finite].min()), float(a[finite].max())
    scaled = (
        np.zeros_like(a) if hi <= lo else (np.clip(np.where(finite, a, lo), lo, hi) - lo) / (hi - lo) * 255.0
    )
    return np.round(scaled).astype(np.uint8)


def write_png(path: str | os.PathLike[str], array: np.ndarray) -> Path:
    """Write a 2-D grey or (y, x, 3|4) colour PNG; bool masks become 0/255, floats are min-max scaled.

    Args:
        path: output ``.png`` file.
        array: (y, x), (y, x, 3) or (y, x, 4) array.

    Returns:
        The written path.
    """
    from PIL import Image

    arr = _to_uint8_image(array)
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise ValueError(f"PNG needs (y, x) or (y, x, 3|4), got shape {arr.shape}")
    if arr.ndim == 3 and arr.dtype != np.uint8:
        arr = _to_uint8_image(arr.astype(np.float64))
    img = Image.fromarray(np.ascontiguousarray(arr))
    return _write_with(path, lambda tmp: img.save(tmp, format="PNG"))


def write_csv(
    path: str | os.PathLike[str],
    rows: Iterable[Mapping[str, Any]] | Iterable[Sequence[Any]],
    header: Sequence[str] | None = None,
) -> Path:
    """Write rows (dicts, or sequences with an optional header) as CSV.

    Args:
        path: output ``.csv`` file.
        rows: dicts (columns = union of keys, first-seen order) or sequences.
        header: column names for sequence rows (ignored for dict rows unless given to fix the order).

    Returns:
        The written path.
    """
    rows = list(rows)
    dict_rows = bool(rows) and isinstance(rows[0], Mapping)

    def _write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            if dict_rows:
                cols = list(header) if header else []
                for r in rows:
                    for k in r:  # type: ignore[union-attr]
                        if k not in cols:
                            cols.append(k)
                w = csv.DictWriter(fh, fieldnames=cols)
                w.writeheader()
                w.writerows(rows)  # type: ignore[arg-type]
            else:
                w2 = csv.writer(fh)
                if header:
                    w2.writerow(list(header))
                w2.writerows(rows)  # type: ignore[arg-type]

    return _write_with(path, _write)


def _as_datasets(sources: Any) -> list[Dataset]:
    import pydicom
    from pydicom.dataset import Dataset

    if isinstance(sources, Dataset | str | os.PathLike):
        sources = [sources]
    out = []
    for s in sources:
        if isinstance(s, Dataset):
            out.append(s)
        else:
            p = Path(s)
            if not p.is_file():
                raise InputError(p, "source DICOM for the segmentation not found")
            try:
                out.append(pydicom.dcmread(p))
            except Exception as exc:  # noqa: BLE001
                raise InputError(p, f"cannot read source DICOM: {type(exc).__name__}") from None
    if not out:
        raise ValueError("write_dicom_seg needs at least one source DICOM")
    return out


def write_dicom_seg(
    path: str | os.PathLike[str],
    mask: np.ndarray,
    sources: Any,
    *,
    segment_label: str = "mask",
    algorithm_name: str = "medssl",
    algorithm_version: str | None = None,
    series_description: str = "medssl segmentation",
) -> Path:
    """Write a binary mask as DICOM-SEG through highdicom, referencing the source images.

    Args:
        path: output ``.dcm`` file.
        mask: bool/int mask, (frames, rows, cols) in the order of ``sources`` (one frame per source slice,
            or per frame of a multi-frame source), or (rows, cols) for one single-frame source.
        sources: source datasets or paths (one multi-frame image, or a single-frame series in mask order).
        segment_label: label of the (single) segment.
        algorithm_name: name recorded as the segmentation algorithm.
        algorithm_version: its version (defaults to the medssl version).
        series_description: description of the new series.

    Returns:
        The written path.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    import medssl

    dsets = _as_datasets(sources)
    m = np.asarray(mask)
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3:
        raise ValueError(f"mask must be (rows, cols) or (frames, rows, cols), got shape {m.shape}")
    n_src_frames = sum(int(d.get("NumberOfFrames") or 1) for d in dsets)
    if m.shape[0] != n_src_frames:
        raise ValueError(f"mask has {m.shape[0]} frames but the sources have {n_src_frames}")
    m = m > 0
    version = algorithm_version or medssl.__version__
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=segment_label,
        segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Tissue,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=algorithm_name, version=version, family=codes.DCM.ArtificialIntelligence
        ),
    )
    no_frame_of_reference = any("FrameOfReferenceUID" not in d for d in dsets)
    if no_frame_of_reference and m.shape[0] > 1:
        # highdicom can reference several frames only through patient geometry (Frame of Reference).
        raise ValueError(
            "sources without a Frame of Reference (e.g. ultrasound cine) allow a one-frame segmentation only"
        )
    seg = hd.seg.Segmentation(
        source_images=dsets,
        pixel_array=m.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=hd.UID(),
        series_number=900,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="medssl",
        manufacturer_model_name="medssl",
        software_versions=version,
        device_serial_number="0",
        series_description=series_description,
        omit_empty_frames=False,
    )
    return _write_with(path, lambda tmp: seg.save_as(tmp))
