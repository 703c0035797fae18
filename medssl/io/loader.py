"""Format dispatch for :func:`medssl.io.load`: picks a reader from the name and magic bytes."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from medssl.errors import InputError
from medssl.io._checks import check_path, short_reason
from medssl.io.record import Record

__all__ = ["load", "info", "iter_load", "NON_DATA_SUFFIXES"]

# Companion or documentation files that are never data on their own.
NON_DATA_SUFFIXES = (".md", ".txt", ".csv", ".json", ".yaml", ".yml", ".html", ".pdf", ".py", ".xyz")
_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima", ".dcm.gz")


def _has_hea(path: Path) -> bool:
    return path.with_suffix(".hea").is_file()


def _dispatch(path: Path, probe: bool = False) -> Record:
    from medssl.io import dicom

    if path.is_dir():
        for name in ("DICOMDIR", "dicomdir"):
            if (path / name).is_file():
                return dicom.read_dicomdir(path / name)
        return dicom.read_dicom_series(path)
    name = path.name.lower()
    suffix = path.suffix.lower()
    if name.endswith((".nii", ".nii.gz")):
        from medssl.io.nifti import read_nifti

        return read_nifti(path)
    if suffix == ".hea":
        from medssl.io.waveform import read_wfdb

        return read_wfdb(path)
    if suffix in (".dat", ".mat") and _has_hea(path):
        from medssl.io.waveform import read_wfdb

        return read_wfdb(path.with_suffix(".hea"))
    if suffix == ".dat":
        from medssl.io.kspace import read_twix

        return read_twix(path)
    if suffix in (".h5", ".mrd", ".ismrmrd"):
        from medssl.io.kspace import read_ismrmrd

        return read_ismrmrd(path)
    if suffix == ".npz":
        from medssl.io.kspace import read_kspace_npz

        return read_kspace_npz(path)
    from medssl.io.video import VIDEO_SUFFIXES

    if suffix in VIDEO_SUFFIXES:
        from medssl.io.video import read_video

        return read_video(path, probe=probe)
    from medssl.io.image import ITK_SUFFIXES, PIL_SUFFIXES

    if suffix in PIL_SUFFIXES:
        from medssl.io.image import read_image

        return read_image(path)
    if suffix in ITK_SUFFIXES:
        from medssl.io.image import read_itk

        return read_itk(path)
    if name.startswith("dicomdir") and not name.endswith(_DICOM_SUFFIXES[1:]):
        return dicom.read_dicomdir(path)
    if suffix and _has_hea(path) and not name.endswith(_DICOM_SUFFIXES):
        raise InputError(path, "WFDB companion (annotation) file: load the record's .hea instead")
    if suffix in NON_DATA_SUFFIXES:
        raise InputError(path, f"unsupported file type '{suffix}'")
    if (
        name.endswith(_DICOM_SUFFIXES)
        or not suffix
        or dicom.is_dicom_file(path)
        or suffix.lstrip(".").isdigit()
    ):
        return dicom.read_dicom(path, probe=probe)
    raise InputError(path, f"unsupported file type '{suffix}'")


def load(path: str | os.PathLike[str]) -> Record:
    """Load any supported medical file or DICOM folder into a :class:`Record`, so callers need no format code.

    Supported: DICOM (single/multi-frame, enhanced, series folders, DICOMDIR, ECG waveform, ``.dcm.gz``),
    NIfTI-1/2, WFDB (``.hea``), PNG/JPEG/TIFF, ITK formats (.mha/.nrrd), Siemens twix ``.dat``,
    ISMRMRD raw data (``.h5``, ``.mrd``), k-space ``.npz``, video (``.avi``, ``.mp4``, ``.mov``, ``.m4v``,
    ``.mkv``, ``.webm`` through PyAV).

    Args:
        path: file or folder.

    Returns:
        The record: ``array`` (numpy) and whitelisted ``meta``.

    Raises:
        InputError: the path is missing, empty, malformed or unsupported (message: ``"<path>: <reason>"``).
    """
    return _load(Path(path), probe=False)


def info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The one-line summary dict of a file for ``medssl info``, without decoding every frame of a cine.

    Same result as ``load(path).summary()``, except that a multi-frame DICOM has only its first and last
    frame decoded (enough to prove the codec works and catch truncation) and a video has every frame decoded
    but only the first kept; other formats are loaded fully.

    Args:
        path: file or folder.

    Returns:
        The JSON-safe summary dict (see :meth:`Record.summary`).

    Raises:
        InputError: as :func:`load`.
    """
    return _load(Path(path), probe=True).summary()


def _load(p: Path, probe: bool) -> Record:
    check_path(p)
    try:
        with warnings.catch_warnings():
            # Library warnings (pydicom VR fixes, wfdb, nibabel) would break `medssl info` one-line output.
            warnings.simplefilter("ignore")
            return _dispatch(p, probe)
    except InputError:
        raise
    except MemoryError:
        raise InputError(p, "not enough memory to load it") from None
    except Exception as exc:  # noqa: BLE001 - never leak a traceback to the user
        raise InputError(p, f"cannot read: {type(exc).__name__}: {short_reason(exc)}") from exc


def iter_load(paths: Iterable[str | os.PathLike[str]]) -> Iterator[Record | InputError]:
    """Load many files yielding each InputError instead of raising, so one bad file does not stop a scan."""
    for p in paths:
        try:
            yield load(p)
        except InputError as err:
            yield err
