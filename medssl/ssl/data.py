"""Streaming datasets for self-supervised pretraining: cine clips and image folders.

Files are read lazily through :func:`medssl.io.load` when an item is requested; only the current file is
cached (per DataLoader worker), so a dataset of any size never sits in memory.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import Resize
from torch.utils.data import Dataset

from ..transforms.video import ResizeClip, ToGreyscale, clip_indices

__all__ = ["load_channel_first", "VideoClipDataset", "ImageFolderDataset", "IMAGE_SUFFIXES"]

PathLike = str | os.PathLike[str]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def _read(path: PathLike) -> tuple[np.ndarray, tuple[str, ...]]:
    """Array and axis names of a file, via ``medssl.io.load`` (pydicom fallback for DICOM if io is absent)."""
    try:
        from medssl.io import load
    except ImportError:  # pragma: no cover - medssl.io ships with the package; kept for partial installs
        import pydicom

        arr = np.asarray(pydicom.dcmread(os.fspath(path)).pixel_array)
        names = ("frame", "y", "x", "channel")[: arr.ndim] if arr.ndim >= 3 else ("y", "x")
        if arr.ndim == 3 and arr.shape[-1] in (3, 4):
            names = ("y", "x", "channel")
        return arr, names
    rec = load(path)
    return rec.array, tuple(rec.axes)


def load_channel_first(path: PathLike) -> np.ndarray:
    """Load an image or cine as a channel-first ``[C, T, H, W]`` array (T = 1 for still images).

    Args:
        path: any file :func:`medssl.io.load` reads with axes among ``frame``/``y``/``x``/``channel``.

    Returns:
        numpy array in the stored dtype.

    Raises:
        ValueError: for records that are not images/cines (e.g. signals, volumes).
    """
    arr, axes = _read(path)
    if not set(axes) <= {"frame", "y", "x", "channel"} or "y" not in axes or "x" not in axes:
        raise ValueError(
            f"{os.fspath(path)}: expected an image or cine (frame, y, x[, channel]), got axes {axes}."
        )
    order = [axes.index(a) for a in ("channel", "frame", "y", "x") if a in axes]
    out = np.transpose(arr, order)
    if "channel" not in axes:
        out = out[None]
    if "frame" not in axes:
        out = out[:, None]
    return out


def _to_unit_float(x: np.ndarray) -> torch.Tensor:
    """uint8/uint16 scaled by their max code, other dtypes min-max scaled, to float32 in [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(x))
    if x.dtype == np.uint8:
        return t.float() / 255.0
    if x.dtype == np.uint16:
        return t.float() / 65535.0
    t = t.float()
    lo, hi = t.min(), t.max()
    return (t - lo) / (hi - lo).clamp_min(1e-8)


def _entries(data: PathLike | Sequence[PathLike | Mapping[str, Any]], key: str) -> list[dict[str, Any]]:
    if isinstance(data, str | os.PathLike):
        data = [data]
    out = []
    for item in data:
        if isinstance(item, Mapping):
            if key not in item:
                raise ValueError(f"datalist entry lacks {key!r}: keys {sorted(item)}.")
            out.append(dict(item))
        else:
            out.append({key: item})
    if not out:
        raise ValueError("the dataset is empty.")
    return out


class VideoClipDataset(Dataset):
    """Fixed-length clips ``{"image": float32 [C, T, H, W]}`` from cine files, loaded lazily.

    Each file yields ``clips_per_file`` items. With ``random_clip`` the start frame is drawn uniformly from
    the global torch RNG (so DataLoader worker seeding and :func:`medssl.ssl.sampler.make_loader` control it);
    otherwise the clips are evenly spaced. The current file is decoded once, converted to grey (BT.601) and
    resized (MONAI ``Resize``, area) and only that smaller result is cached, so clips of the same file are
    cheap. Intensities: uint8 / 255 (uint16 / 65535), other dtypes min-max over the cine, to [0, 1].

    Args:
        data: paths, or a MONAI-style datalist of dicts with ``image_key`` (other entries are passed
            through, e.g. labels).
        num_frames: frames per clip.
        stride: temporal step between frames.
        size: frame size ``(H, W)`` / int, or ``None`` to keep the stored size.
        transform: optional dictionary transform applied last (e.g. MONAI ``Compose`` of ``...d`` transforms).
        greyscale: convert RGB to one luminance channel.
        clips_per_file: items per file.
        random_clip: random start frame (training) or evenly spaced clips (evaluation).
        image_key: key of the path in datalist entries and of the clip in the output.
    """

    def __init__(
        self,
        data: PathLike | Sequence[PathLike | Mapping[str, Any]],
        num_frames: int = 16,
        stride: int = 2,
        size: int | Sequence[int] | None = 224,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        greyscale: bool = True,
        clips_per_file: int = 1,
        random_clip: bool = True,
        image_key: str = "image",
    ) -> None:
        if num_frames < 1 or stride < 1 or clips_per_file < 1:
            raise ValueError(
                "num_frames, stride, clips_per_file must be >= 1, "
                f"got {num_frames}, {stride}, {clips_per_file}."
            )
        self.entries = _entries(data, image_key)
        self.num_frames, self.stride = num_frames, stride
        self.resize = ResizeClip(size) if size is not None else None
        self.grey = ToGreyscale() if greyscale else None
        self.transform = transform
        self.clips_per_file = clips_per_file
        self.random_clip = random_clip
        self.image_key = image_key
        self._cache: tuple[str, torch.Tensor] | None = None
        self._chunk = 16

    def __len__(self) -> int:
        return len(self.entries) * self.clips_per_file

    def _prepare(self, arr: np.ndarray) -> torch.Tensor:
        """Whole cine -> float [C', T, H', W'] (unit range, grey, resized), in chunks of frames.

        Grey conversion and area resizing act frame by frame, so doing them once per file and cutting clips
        afterwards gives the same clips as cutting first; chunking bounds the float copy of the raw frames.
        """
        scale_fixed = arr.dtype in (np.uint8, np.uint16)
        parts = []
        for t0 in range(0, arr.shape[1], self._chunk):
            x = torch.from_numpy(np.ascontiguousarray(arr[:, t0 : t0 + self._chunk])).float()
            if scale_fixed:
                x = x / (255.0 if arr.dtype == np.uint8 else 65535.0)
            if self.grey is not None:
                x = self.grey(x)
            if self.resize is not None:
                x = self.resize(x)
            parts.append(x)
        out = torch.cat(parts, dim=1)
        if not scale_fixed:  # min-max over the whole cine keeps frames comparable
            lo, hi = out.min(), out.max()
            out = (out - lo) / (hi - lo).clamp_min(1e-8)
        return out

    def _clip_source(self, path: PathLike) -> torch.Tensor:
        key = os.fspath(path)
        if self._cache is None or self._cache[0] != key:
            self._cache = None  # drop the previous file before decoding the next one
            self._cache = (key, self._prepare(load_channel_first(path)))
        return self._cache[1]

    def _start(self, num_total: int, clip: int) -> int:
        span = (self.num_frames - 1) * self.stride + 1
        max_start = max(num_total - span, 0)
        if self.random_clip:
            return int(torch.randint(0, max_start + 1, (1,)).item())
        if self.clips_per_file == 1:
            return max_start // 2
        return int(round(clip * max_start / (self.clips_per_file - 1)))

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} clips.")
        entry = self.entries[index // self.clips_per_file]
        src = self._clip_source(entry[self.image_key])
        start = self._start(src.shape[1], index % self.clips_per_file)
        idx = clip_indices(src.shape[1], self.num_frames, self.stride, start)
        x = src.index_select(1, idx)
        out = dict(entry)
        out[self.image_key] = x.contiguous()
        if self.transform is not None:
            out = self.transform(out)
        return out


def _list_images(src: PathLike | Sequence[PathLike]) -> list[Path]:
    if isinstance(src, str | os.PathLike):
        p = Path(src)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
            if not files:
                raise ValueError(f"{p}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder.")
            return files
        return [p]
    return [Path(f) for f in src]


def _match_masks(images: list[Path], masks: PathLike | Sequence[PathLike]) -> list[Path]:
    """Masks by list order, or from a folder by stem (``x.png`` <- ``x.png`` / ``x_mask.png``)."""
    if isinstance(masks, str | os.PathLike) and Path(masks).is_dir():
        by_stem: dict[str, Path] = {}
        for f in _list_images(masks):
            by_stem.setdefault(f.stem, f)
            if f.stem.endswith("_mask"):
                by_stem.setdefault(f.stem[: -len("_mask")], f)
        missing = [i.name for i in images if i.stem not in by_stem]
        if missing:
            raise ValueError(f"no mask in {masks} for {len(missing)} image(s), e.g. {missing[0]}.")
        return [by_stem[i.stem] for i in images]
    mlist = _list_images(masks)
    if len(mlist) != len(images):
        raise ValueError(f"{len(images)} images but {len(mlist)} masks.")
    return mlist


class ImageFolderDataset(Dataset):
    """PNG/JPEG images (and optional masks) as 2-D images ``[C, H, W]`` or 1-frame clips ``[C, 1, H, W]``.

    Images are read lazily via :func:`medssl.io.load`; intensities scaled to [0, 1] as in
    :class:`VideoClipDataset`. Masks are resized with nearest neighbour and returned as int64 labels
    ``[1, H, W]`` (or ``[1, 1, H, W]``); a 0/255 mask becomes 0/1.

    Args:
        images: a folder, one file, or a list of files.
        masks: a folder (matched by stem, ``x_mask.png`` also accepted), or a list in the images' order.
        size: ``(H, W)`` / int, or ``None`` to keep each image's size (then batches need equal sizes).
        as_clip: add a time axis of length 1 (for video encoders).
        greyscale: convert RGB images to one luminance channel.
        transform: optional dictionary transform applied last.
    """

    def __init__(
        self,
        images: PathLike | Sequence[PathLike],
        masks: PathLike | Sequence[PathLike] | None = None,
        size: int | Sequence[int] | None = None,
        as_clip: bool = False,
        greyscale: bool = True,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self.images = _list_images(images)
        if not self.images:
            raise ValueError("the dataset is empty.")
        self.masks = _match_masks(self.images, masks) if masks is not None else None
        hw = (
            None
            if size is None
            else ((int(size),) * 2 if isinstance(size, int) else tuple(int(s) for s in size))
        )
        self.resize = Resize(spatial_size=hw, mode="area") if hw else None
        self.resize_mask = Resize(spatial_size=hw, mode="nearest") if hw else None
        self.as_clip = as_clip
        self.grey = ToGreyscale() if greyscale else None
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        x = _to_unit_float(load_channel_first(self.images[index])[:, 0])  # [C, H, W]
        if self.grey is not None:
            x = self.grey(x)
        if self.resize is not None:
            x = torch.as_tensor(self.resize(x)).as_subclass(torch.Tensor).float()
        out: dict[str, Any] = {"image": x.unsqueeze(1) if self.as_clip else x}
        if self.masks is not None:
            m = torch.from_numpy(np.ascontiguousarray(load_channel_first(self.masks[index])[:1, 0]))
            if m.max() > 1 and bool(torch.isin(m.unique(), torch.tensor([0, 255], dtype=m.dtype)).all()):
                m = m // 255
            m = m.long()
            if self.resize_mask is not None:
                m = torch.as_tensor(self.resize_mask(m.float())).as_subclass(torch.Tensor).round().long()
            out["mask"] = m.unsqueeze(1) if self.as_clip else m
        if self.transform is not None:
            out = self.transform(out)
        return out
