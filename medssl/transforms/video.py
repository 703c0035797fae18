"""Video (cine) transforms on channel-first clips ``[C, T, H, W]``.

MONAI-style: each array transform ``Foo`` has a dictionary twin ``Food``; random transforms follow the
torchio split: ``RandFoo`` samples the parameters and calls the deterministic ``Foo`` that applies them.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import (
    MapTransform,
    NormalizeIntensity,
    RandomizableTransform,
    Resize,
    ScaleIntensity,
    Transform,
)

from ._utils import ApplyToKeys, as_float_tensor, like_input

__all__ = [
    "LUMA_WEIGHTS",
    "ToGreyscale",
    "ToGreyscaled",
    "clip_indices",
    "SampleClip",
    "SampleClipd",
    "RandSampleClip",
    "RandSampleClipd",
    "ResizeClip",
    "ResizeClipd",
    "NormalizeClip",
    "NormalizeClipd",
]

#: ITU-R BT.601 luma weights (R, G, B), the ones DICOM YBR_FULL uses.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


class ToGreyscale(Transform):
    """RGB -> luminance ``Y = 0.299 R + 0.587 G + 0.114 B`` (ITU-R BT.601) on a channel-first array.

    Why: echo/angiography cines are grey data stored as RGB; one channel cuts the model input by 3x.
    A 1-channel input passes through unchanged.

    Args:
        channel_dim: the channel axis.
    """

    def __init__(self, channel_dim: int = 0) -> None:
        self.channel_dim = channel_dim

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """``[3, ...] -> [1, ...]``."""
        x = as_float_tensor(img)
        c = x.shape[self.channel_dim]
        if c == 1:
            return like_input(x, img)
        if c not in (3, 4):
            raise ValueError(f"ToGreyscale expects 1, 3 (RGB) or 4 (RGBA) channels, got {tuple(x.shape)}.")
        rgb = x.narrow(self.channel_dim, 0, 3).movedim(self.channel_dim, -1)
        w = torch.tensor(LUMA_WEIGHTS, dtype=x.dtype, device=x.device)
        y = (rgb @ w).unsqueeze(-1).movedim(-1, self.channel_dim)
        return like_input(y, img)


class ToGreyscaled(ApplyToKeys):
    """Dictionary version of :class:`ToGreyscale`."""

    def __init__(self, keys: KeysCollection, channel_dim: int = 0, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.t = ToGreyscale(channel_dim)



def clip_indices(num_total: int, num_frames: int, stride: int, start: int = 0) -> torch.Tensor:
    """Frame indices ``start + stride * k`` (k < num_frames), clamped to the last frame.

    Why clamp: a cine shorter than the clip span still yields a clip of fixed length (its last frame held),
    so a batch always stacks.

    Args:
        num_total: frames available (>= 1).
        num_frames: frames in the clip (>= 1).
        stride: temporal step (>= 1).
        start: first frame.

    Returns:
        LongTensor ``[num_frames]``.
    """
    if num_total < 1 or num_frames < 1 or stride < 1:
        raise ValueError(f"need num_total, num_frames, stride >= 1, got {num_total}, {num_frames}, {stride}.")
    if not 0 <= start < num_total:
        raise ValueError(f"start {start} outside [0, {num_total}).")
    idx = start + stride * torch.arange(num_frames)
    return idx.clamp_max(num_total - 1)


class SampleClip(Transform):
    """Take ``num_frames`` frames every ``stride`` frames from ``start`` along the time axis.

    Args:
        num_frames: clip length.
        stride: temporal step.
        start: first frame.
        time_dim: time axis of the channel-first array (1 for ``[C, T, H, W]``).
    """

    def __init__(self, num_frames: int = 16, stride: int = 2, start: int = 0, time_dim: int = 1) -> None:
        self.num_frames, self.stride, self.start, self.time_dim = num_frames, stride, start, time_dim

    def __call__(self, img: NdarrayOrTensor, start: int | None = None) -> NdarrayOrTensor:
        """Return the clip ``[C, num_frames, H, W]``."""
        x = as_float_tensor(img)
        if x.ndim < 2:
            raise ValueError(f"SampleClip expects a channel-first clip [C, T, ...], got {tuple(x.shape)}.")
        idx = clip_indices(
            x.shape[self.time_dim], self.num_frames, self.stride, self.start if start is None else start
        )
        return like_input(x.index_select(self.time_dim, idx.to(x.device)), img)


class SampleClipd(ApplyToKeys):
    """Dictionary version of :class:`SampleClip` (same frames for every key)."""

    def __init__(
        self,
        keys: KeysCollection,
        num_frames: int = 16,
        stride: int = 2,
        start: int = 0,
        time_dim: int = 1,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.t = SampleClip(num_frames, stride, start, time_dim)



def _max_start(num_total: int, num_frames: int, stride: int) -> int:
    span = (num_frames - 1) * stride + 1
    return max(num_total - span, 0)


class RandSampleClip(RandomizableTransform):
    """Sample a clip start uniformly in ``[0, T - span]`` (span ``(num_frames-1)*stride+1``) and cut it.

    Args:
        num_frames: clip length.
        stride: temporal step.
        time_dim: time axis.
    """

    def __init__(self, num_frames: int = 16, stride: int = 2, time_dim: int = 1) -> None:
        RandomizableTransform.__init__(self, prob=1.0)
        self.clip = SampleClip(num_frames, stride, 0, time_dim)
        self.start = 0

    def randomize(self, num_total: int) -> None:  # type: ignore[override]
        """Draw the start frame."""
        self.start = int(self.R.randint(0, _max_start(num_total, self.clip.num_frames, self.clip.stride) + 1))

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        """Return a random clip."""
        if randomize:
            self.randomize(int(img.shape[self.clip.time_dim]))
        return self.clip(img, start=self.start)


class RandSampleClipd(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`RandSampleClip`: one start for all keys (from the first key's length)."""

    def __init__(
        self,
        keys: KeysCollection,
        num_frames: int = 16,
        stride: int = 2,
        time_dim: int = 1,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob=1.0)
        self.t = RandSampleClip(num_frames, stride, time_dim)

    def set_random_state(self, seed: int | None = None, state: Any = None) -> RandSampleClipd:
        """Seed this transform and its array transform."""
        super().set_random_state(seed, state)
        self.t.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Apply to every key with the same start."""
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        self.t.randomize(int(d[keys[0]].shape[self.t.clip.time_dim]))
        for key in keys:
            d[key] = self.t(d[key], randomize=False)
        return d


class ResizeClip(Transform):
    """Resize every frame of ``[C, T, H, W]`` to ``size`` (T unchanged) with MONAI ``Resize``.

    Why ``"area"`` by default: averaging avoids the aliasing of bilinear sampling when shrinking a 480x640
    echo to e.g. 64x64. Time keeps its length (scale 1), so frames are never mixed.

    Args:
        size: ``(H, W)`` or an int for square frames.
        mode: MONAI/PyTorch interpolation mode (``"area"``, ``"trilinear"``, ``"nearest"``, ...).
    """

    def __init__(self, size: int | Sequence[int], mode: str = "area") -> None:
        hw = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
        if len(hw) != 2:
            raise ValueError(f"size must be an int or (H, W), got {size}.")
        self.size = hw
        self.resize = Resize(spatial_size=(-1, *hw), mode=mode)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """``[C, T, H, W] -> [C, T, *size]``."""
        x = as_float_tensor(img)
        if x.ndim != 4:
            raise ValueError(f"ResizeClip expects [C, T, H, W], got {tuple(x.shape)}.")
        return like_input(as_float_tensor(self.resize(x)), img)


class ResizeClipd(MapTransform):
    """Dictionary version of :class:`ResizeClip`."""

    def __init__(
        self,
        keys: KeysCollection,
        size: int | Sequence[int],
        mode: str | Sequence[str] = "area",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        modes = [mode] * len(self.keys) if isinstance(mode, str) else list(mode)
        self.ts = {k: ResizeClip(size, m) for k, m in zip(self.keys, modes, strict=True)}

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Apply to every key."""
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.ts[key](d[key])
        return d


class NormalizeClip(Transform):
    """Intensity normalisation over the whole clip, so frames keep their relative brightness.

    ``"minmax"`` maps to [0, 1] (MONAI ``ScaleIntensity``), ``"zscore"`` uses MONAI ``NormalizeIntensity``.

    Args:
        mode: ``"minmax"``, ``"zscore"``, or ``"fixed"`` (divide by ``scale``, e.g. 255 for uint8 data).
        scale: divisor for ``"fixed"``.
    """

    def __init__(self, mode: str = "minmax", scale: float = 255.0) -> None:
        if mode == "minmax":
            self.t: Transform = ScaleIntensity(minv=0.0, maxv=1.0)
        elif mode == "zscore":
            self.t = NormalizeIntensity()
        elif mode == "fixed":
            self.t = NormalizeIntensity(subtrahend=0.0, divisor=float(scale))
        else:
            raise ValueError(f"mode must be 'minmax', 'zscore' or 'fixed', got {mode!r}.")
        self.mode = mode

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Normalise."""
        return like_input(as_float_tensor(self.t(as_float_tensor(img))), img)


class NormalizeClipd(ApplyToKeys):
    """Dictionary version of :class:`NormalizeClip`."""

    def __init__(
        self,
        keys: KeysCollection,
        mode: str = "minmax",
        scale: float = 255.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.t = NormalizeClip(mode, scale)

