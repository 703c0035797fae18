"""2-D image reading (PNG/JPEG/TIFF/BMP through Pillow, other ITK formats through SimpleITK)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medssl.errors import InputError
from medssl.io._checks import count_nonfinite, reader_errors
from medssl.io.record import Record, RecordMeta, SourceInfo

__all__ = ["read_image", "read_itk", "PIL_SUFFIXES", "ITK_SUFFIXES"]

PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif")
ITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr", ".vtk", ".hdr", ".img", ".gipl")


def _is_mask(arr: np.ndarray) -> bool:
    """A binary mask: at most two distinct values, one of them zero (cheap check on 8-bit data)."""
    if arr.dtype == np.bool_:
        return True
    if arr.dtype != np.uint8 or arr.ndim != 2:
        return False
    counts = np.bincount(arr.ravel(), minlength=256)
    nz = np.flatnonzero(counts)
    return len(nz) <= 2 and nz[0] == 0


def _named_like_mask(path: Path) -> bool:
    """Whether the file name or its folder says it is a mask/label (e.g. ``x_mask.png``, ``masks/x.png``)."""
    words = ("mask", "label", "seg")
    return any(w in path.stem.lower() for w in words) or any(w in path.parent.name.lower() for w in words)


def read_image(path: Path) -> Record:
    """Load a PNG/JPEG/TIFF image or mask with Pillow: (y, x) grey or (y, x, channel) colour."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(path)
    except UnidentifiedImageError:
        raise InputError(path, "not an image Pillow can read") from None
    except Exception as exc:  # noqa: BLE001
        raise InputError(path, f"cannot open image: {type(exc).__name__}") from None
    with reader_errors(path, "cannot decode image"), img:
        fmt = str(img.format or path.suffix.lstrip(".").upper())
        mode = img.mode
        n_frames = int(getattr(img, "n_frames", 1) or 1)
        notes: list[str] = []
        if mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
            notes.append("palette expanded to RGB")
        elif mode in ("1",):
            img = img.convert("L")
            notes.append("1-bit image converted to 8-bit (0/255)")
        if n_frames > 1:
            frames = []
            for i in range(n_frames):
                img.seek(i)
                frames.append(np.asarray(img))
            arr = np.stack(frames)
        else:
            arr = np.asarray(img)
        dpi = img.info.get("dpi")
    if n_frames > 1:
        axes: tuple[str, ...] = ("frame", "y", "x")
    else:
        axes = ("y", "x")
    if arr.ndim == len(axes) + 1:
        axes = axes + ("channel",)
    arr = np.ascontiguousarray(arr)
    if not arr.flags.writeable:
        arr = arr.copy()
    spacing: dict[str, float] = {}
    if dpi and fmt == "TIFF":
        try:
            spacing = {"y": 25.4 / float(dpi[1]), "x": 25.4 / float(dpi[0])}
        except (TypeError, ValueError, ZeroDivisionError, IndexError):
            spacing = {}
    meta = RecordMeta(
        modality="SEG" if _is_mask(arr) and _named_like_mask(path) else "IMAGE",
        axes=axes,
        shape=tuple(arr.shape),
        dtype=str(arr.dtype),
        source=SourceInfo(format=fmt, photometric=mode, notes=tuple(notes)),
        spacing=spacing,
        nonfinite_count=count_nonfinite(arr),
        extra={"binary": bool(_is_mask(arr))},
    )
    return Record(arr, meta)


def read_itk(path: Path) -> Record:
    """Load another ITK-readable image (.mha, .nrrd, ...) with SimpleITK; array in (z, y, x) order."""
    import SimpleITK as sitk

    with reader_errors(path, "cannot read image with SimpleITK"):
        img = sitk.ReadImage(os.fspath(path))
        arr = sitk.GetArrayFromImage(img)
        dim = img.GetDimension()
        ncomp = img.GetNumberOfComponentsPerPixel()
        spacing_xyz = tuple(float(s) for s in img.GetSpacing())
        origin = np.asarray(img.GetOrigin(), dtype=np.float64)
        direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(dim, dim)
    names = ("x", "y", "z", "t")[:dim]
    axes: tuple[str, ...] = tuple(reversed(names)) + (("channel",) if ncomp > 1 else ())
    spacing = {names[i]: spacing_xyz[i] for i in range(min(dim, 3))}
    affine = None
    if dim == 3:
        # ITK index (i, j, k) -> LPS point; our array is indexed (k, j, i).
        lps = np.eye(4)
        lps[:3, :3] = direction @ np.diag(spacing_xyz)
        lps[:3, 3] = origin
        lps = lps[:, [2, 1, 0, 3]]
        affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    meta = RecordMeta(
        modality="VOLUME" if dim >= 3 else "IMAGE",
        axes=axes,
        shape=tuple(arr.shape),
        dtype=str(arr.dtype),
        source=SourceInfo(format=path.suffix.lstrip(".").upper() or "ITK"),
        spacing=spacing,
        affine=affine,
        nonfinite_count=count_nonfinite(arr),
    )
    return Record(arr, meta)
