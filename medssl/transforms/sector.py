"""Crop ultrasound frames to the imaging sector (the scan area), leaving the scanner's text and icons out.

Two sources for the crop box, in order of preference:

1. the DICOM ``SequenceOfUltrasoundRegions`` (the scanner's own statement of where the image data lies):
   :func:`sector_bbox_from_dicom` takes the largest 2-D tissue region;
2. an estimate from the pixels, without learning (:func:`estimate_sector_bbox`): for a cine, pixels whose
   intensity changes over time (text, rulers and icons are static); for a still image, pixels that are
   bright after a wide box blur (speckle is dense, text is sparse). The largest connected component of that
   mask gives the box.

The box is ``(y0, y1, x0, x1)`` with exclusive ends, in pixel indices of the frame. :class:`SectorCrop` and
:class:`SectorCropd` crop arrays whose last two axes are ``(H, W)`` (``[T, H, W]``, ``[C, T, H, W]``...).
:func:`paste_bbox` puts a prediction made on the crop back into the full frame.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "BBox",
    "sector_bbox_from_dicom",
    "estimate_sector_bbox",
    "sector_bbox",
    "crop_to_bbox",
    "paste_bbox",
    "SectorCrop",
    "SectorCropd",
]

BBox = tuple[int, int, int, int]


def _check_bbox(bbox: Sequence[int], shape: Sequence[int]) -> BBox:
    y0, y1, x0, x1 = (int(v) for v in bbox)
    h, w = int(shape[-2]), int(shape[-1])
    y0, x0 = max(y0, 0), max(x0, 0)
    y1, x1 = min(y1, h), min(x1, w)
    if y1 <= y0 or x1 <= x0:
        raise ValueError(f"empty crop box {tuple(bbox)} for a frame of {h}x{w}.")
    return y0, y1, x0, x1


def sector_bbox_from_dicom(ds: Any, shape: Sequence[int] | None = None) -> BBox | None:
    """The largest 2-D region of a DICOM ``SequenceOfUltrasoundRegions`` as ``(y0, y1, x0, x1)``.

    Args:
        ds: a pydicom ``Dataset`` (pixels not needed), or a path to a DICOM file.
        shape: the frame shape ``(..., H, W)`` to clip the box to (default: ``Rows``, ``Columns``).

    Returns:
        The box (exclusive ends), or ``None`` when the file has no usable region.
    """
    if isinstance(ds, str | os.PathLike):
        import pydicom

        ds = pydicom.dcmread(os.fspath(ds), stop_before_pixels=True)
    regions = ds.get("SequenceOfUltrasoundRegions")
    if not regions:
        return None
    if shape is None:
        shape = (int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0))
    best: BBox | None = None
    best_area = 0
    for region in regions:
        try:
            x0, y0 = int(region.RegionLocationMinX0), int(region.RegionLocationMinY0)
            x1, y1 = int(region.RegionLocationMaxX1) + 1, int(region.RegionLocationMaxY1) + 1
        except (AttributeError, TypeError, ValueError):
            continue
        if int(region.get("RegionSpatialFormat", 1) or 0) != 1:  # 1 = 2-D tissue; M-mode, Doppler: skip
            continue
        area = (y1 - y0) * (x1 - x0)
        if area > best_area:
            try:
                best, best_area = _check_bbox((y0, y1, x0, x1), shape), area
            except ValueError:
                continue
    return best


def _box_blur(img: np.ndarray, k: int) -> np.ndarray:
    from scipy.ndimage import uniform_filter

    return uniform_filter(img.astype(np.float32), size=max(int(k), 1), mode="constant")


def estimate_sector_bbox(
    frames: np.ndarray | torch.Tensor,
    rel_threshold: float = 0.05,
    blur: int | None = None,
    margin: float = 0.02,
    min_component: float = 0.1,
) -> BBox:
    """Estimate the scan area of an ultrasound frame or cine from its pixels (no learning, no metadata).

    A cine (``[T, H, W]``, T >= 2 with temporal change) uses the temporal standard deviation: scanner text,
    rulers and icons are static, tissue speckle changes. A still image (or a static cine) uses the intensity.
    The map is box-blurred (``blur``, default 1/30 of the smaller side), thresholded at ``rel_threshold``
    times its 99th percentile, the connected components of at least ``min_component`` times the largest one's
    area are kept (scanner text is made of small components), and their bounding box is grown by ``margin``
    of the frame size.

    Args:
        frames: ``[H, W]`` or ``[T, H, W]`` grey frames (any intensity units); RGB must be converted first.
        rel_threshold: threshold relative to the 99th percentile of the blurred map.
        blur: box-blur width in pixels.
        margin: fraction of the frame size added on every side.
        min_component: components smaller than this fraction of the largest are dropped.

    Returns:
        ``(y0, y1, x0, x1)``; the whole frame when nothing stands out.
    """
    from scipy.ndimage import label

    a = np.asarray(frames, dtype=np.float32)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or min(a.shape[1:]) < 2:
        raise ValueError(f"expected [H, W] or [T, H, W] frames, got shape {tuple(np.shape(frames))}.")
    h, w = a.shape[1:]
    k = blur if blur is not None else max(3, min(h, w) // 30)
    signal = a.std(axis=0) if a.shape[0] >= 2 else a[0]
    if a.shape[0] >= 2 and float(np.percentile(signal, 99)) <= 1e-6:
        signal = a.mean(axis=0)  # a static cine: fall back to intensity
    smooth = _box_blur(signal, k)
    ref = float(np.percentile(smooth, 99))
    if ref <= 0:
        return 0, h, 0, w
    mask = smooth > rel_threshold * ref
    labels, n = label(mask)
    if n == 0:
        return 0, h, 0, w
    sizes = np.bincount(labels.ravel())[1:]
    keep = 1 + np.nonzero(sizes >= min_component * sizes.max())[0]
    ys, xs = np.nonzero(np.isin(labels, keep))
    my, mx = int(round(margin * h)), int(round(margin * w))
    return _check_bbox((ys.min() - my, ys.max() + 1 + my, xs.min() - mx, xs.max() + 1 + mx), (h, w))


def sector_bbox(
    frames: np.ndarray | torch.Tensor, dicom: Any = None, min_fraction: float = 0.1, **kwargs: Any
) -> tuple[BBox, str]:
    """The crop box of ``frames``: from the DICOM regions when present, else estimated.

    Args:
        frames: ``[H, W]`` or ``[T, H, W]`` grey frames.
        dicom: optional pydicom ``Dataset`` or DICOM path of the frames.
        min_fraction: an estimated box smaller than this fraction of the frame is not trusted (whole frame).
        **kwargs: passed to :func:`estimate_sector_bbox`.

    Returns:
        ``(bbox, source)`` with source ``"dicom"``, ``"estimate"`` or ``"full"``.
    """
    shape = np.shape(frames)
    h, w = int(shape[-2]), int(shape[-1])
    if dicom is not None:
        box = sector_bbox_from_dicom(dicom, (h, w))
        if box is not None:
            return box, "dicom"
    box = estimate_sector_bbox(frames, **kwargs)
    if (box[1] - box[0]) * (box[3] - box[2]) < min_fraction * h * w:
        return (0, h, 0, w), "full"
    return box, "estimate"


def crop_to_bbox(x: np.ndarray | torch.Tensor, bbox: Sequence[int]) -> np.ndarray | torch.Tensor:
    """``x[..., y0:y1, x0:x1]`` (the last two axes are H, W)."""
    y0, y1, x0, x1 = _check_bbox(bbox, x.shape)
    return x[..., y0:y1, x0:x1]


def paste_bbox(
    crop: np.ndarray | torch.Tensor, bbox: Sequence[int], shape: Sequence[int], fill: float = 0.0
) -> np.ndarray:
    """Put ``crop`` (``[..., y1 - y0, x1 - x0]``) back into a ``fill``-valued array of frame size ``shape[-2:]``."""
    c = np.asarray(crop)
    y0, y1, x0, x1 = _check_bbox(bbox, shape)
    if c.shape[-2:] != (y1 - y0, x1 - x0):
        raise ValueError(f"crop {c.shape[-2:]} does not match the box {(y1 - y0, x1 - x0)}.")
    out = np.full((*c.shape[:-2], int(shape[-2]), int(shape[-1])), fill, dtype=c.dtype)
    out[..., y0:y1, x0:x1] = c
    return out


class SectorCrop:
    """Array transform: crop ``[..., H, W]`` to a fixed box, or to the box estimated from the input itself.

    Args:
        bbox: ``(y0, y1, x0, x1)``, or ``None`` to estimate per call with :func:`estimate_sector_bbox`
            (over the whole input: every leading axis is treated as time).
        **kwargs: options of :func:`estimate_sector_bbox`.
    """

    def __init__(self, bbox: Sequence[int] | None = None, **kwargs: Any) -> None:
        self.bbox = None if bbox is None else tuple(int(v) for v in bbox)
        self.kwargs = kwargs

    def box(self, x: np.ndarray | torch.Tensor) -> BBox:
        """The box used for ``x``."""
        if self.bbox is not None:
            return _check_bbox(self.bbox, x.shape)
        a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        return estimate_sector_bbox(a.reshape(-1, *a.shape[-2:]), **self.kwargs)

    def __call__(self, x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """The cropped array (same type)."""
        return crop_to_bbox(x, self.box(x))


class SectorCropd:
    """Dictionary transform: crop ``keys`` to the box in ``data[bbox_key]`` or estimated from ``keys[0]``.

    The box used is stored back under ``bbox_key`` (so a prediction can be pasted back with
    :func:`paste_bbox`).

    Args:
        keys: keys of arrays ``[..., H, W]`` to crop with the same box (image, label...).
        bbox_key: key holding a given box, and where the box used is written.
        **kwargs: options of :func:`estimate_sector_bbox`.
    """

    def __init__(self, keys: Sequence[Hashable] | Hashable, bbox_key: str = "sector_bbox", **kwargs: Any) -> None:
        self.keys = [keys] if isinstance(keys, str) else list(keys)  # type: ignore[arg-type]
        self.bbox_key = bbox_key
        self.kwargs = kwargs

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Crop; returns a new dict."""
        d = dict(data)
        box = d.get(self.bbox_key)
        crop = SectorCrop(box, **self.kwargs)
        bbox = crop.box(d[self.keys[0]])
        for key in self.keys:
            d[key] = crop_to_bbox(d[key], bbox)
        d[self.bbox_key] = bbox
        return d
