"""1-D signal (ECG) transforms on channel-first arrays ``[C, L]`` (C = leads).

MONAI-style array/dictionary pairs; random ones sample parameters and call the deterministic transform.
They run in DataLoader workers: CPU (numpy/scipy) only.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from fractions import Fraction
from typing import Any

import numpy as np
import torch.nn.functional as F
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, NormalizeIntensity, RandomizableTransform, Transform
from monai.utils import convert_to_numpy
from scipy import signal as sps

from ._utils import ApplyToKeys, as_float_tensor, like_input

__all__ = [
    "BandPass",
    "BandPassd",
    "Resample",
    "Resampled",
    "Window",
    "Windowd",
    "RandWindow",
    "RandWindowd",
    "StandardizeLeads",
    "StandardizeLeadsd",
]


def _as_numpy(x: NdarrayOrTensor) -> np.ndarray:
    return np.asarray(convert_to_numpy(x), dtype=np.float64)


def _back(out: np.ndarray, x: NdarrayOrTensor) -> NdarrayOrTensor:
    return like_input(as_float_tensor(np.ascontiguousarray(out, dtype=np.float32)), x)


def _check_signal(x: NdarrayOrTensor, name: str) -> None:
    if x.ndim != 2:
        raise ValueError(f"{name} expects a channel-first signal [C, L], got shape {tuple(x.shape)}.")


class BandPass(Transform):
    """Zero-phase Butterworth band-pass (``scipy.signal.butter`` + ``sosfiltfilt``) along the last axis.

    Why: 0.67 Hz removes baseline wander and 40 Hz mains/EMG noise while keeping the QRS band (AHA ECG
    recommendations); forward-backward filtering keeps wave timing (no phase shift).
    ``high >= fs / 2`` falls back to a high-pass at ``low``.

    Args:
        low: lower cut-off (Hz).
        high: upper cut-off (Hz).
        fs: sampling rate (Hz).
        order: filter order (doubled by the forward-backward pass).
    """

    def __init__(self, low: float = 0.67, high: float = 40.0, fs: float = 500.0, order: int = 4) -> None:
        if not 0 < low < high:
            raise ValueError(f"need 0 < low < high, got low={low}, high={high}.")
        if low >= fs / 2:
            raise ValueError(f"low cut-off {low} Hz must be below Nyquist {fs / 2} Hz.")
        self.low, self.high, self.fs, self.order = low, high, fs, order
        if high < fs / 2:
            self.sos = sps.butter(order, [low, high], btype="bandpass", fs=fs, output="sos")
        else:
            self.sos = sps.butter(order, low, btype="highpass", fs=fs, output="sos")

    def __call__(self, sig: NdarrayOrTensor) -> NdarrayOrTensor:
        """Filter every lead."""
        _check_signal(sig, "BandPass")
        x = _as_numpy(sig)
        padlen = 3 * (2 * len(self.sos) + 1)
        if x.shape[-1] <= padlen:
            raise ValueError(f"BandPass needs more than {padlen} samples, got {x.shape[-1]}.")
        return _back(sps.sosfiltfilt(self.sos, x, axis=-1), sig)


class Resample(Transform):
    """Resample from ``fs_in`` to ``fs_out`` with polyphase filtering (``scipy.signal.resample_poly``).

    Why polyphase: anti-aliased and exact for rational ratios (e.g. 500 -> 250 Hz, 360 -> 500 Hz).
    Output length is ``ceil(L * up / down)`` with ``up / down = fs_out / fs_in`` reduced.

    Args:
        fs_in: input rate (Hz).
        fs_out: output rate (Hz).
    """

    def __init__(self, fs_in: float, fs_out: float) -> None:
        if fs_in <= 0 or fs_out <= 0:
            raise ValueError(f"sampling rates must be > 0, got {fs_in}, {fs_out}.")
        ratio = Fraction(fs_out / fs_in).limit_denominator(1000)
        self.fs_in, self.fs_out = fs_in, fs_out
        self.up, self.down = ratio.numerator, ratio.denominator

    def __call__(self, sig: NdarrayOrTensor) -> NdarrayOrTensor:
        """Resample every lead."""
        _check_signal(sig, "Resample")
        if self.up == self.down:
            return _back(_as_numpy(sig), sig)
        return _back(sps.resample_poly(_as_numpy(sig), self.up, self.down, axis=-1), sig)


class Window(Transform):
    """Cut ``seconds * fs`` samples from ``start``; shorter signals are zero-padded at the end.

    Args:
        seconds: window length in seconds.
        fs: sampling rate (Hz).
        start: first sample.
    """

    def __init__(self, seconds: float, fs: float, start: int = 0) -> None:
        self.length = int(round(seconds * fs))
        if self.length < 1:
            raise ValueError(f"window of {seconds} s at {fs} Hz is empty.")
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}.")
        self.start = start

    def __call__(self, sig: NdarrayOrTensor, start: int | None = None) -> NdarrayOrTensor:
        """Return ``[C, length]``."""
        _check_signal(sig, "Window")
        s = self.start if start is None else start
        x = as_float_tensor(sig)[:, s : s + self.length]
        if x.shape[-1] < self.length:
            x = F.pad(x, (0, self.length - x.shape[-1]))
        return like_input(x, sig)


class RandWindow(RandomizableTransform):
    """Window at a uniformly random start in ``[0, L - length]``.

    Args:
        seconds: window length in seconds.
        fs: sampling rate (Hz).
    """

    def __init__(self, seconds: float, fs: float) -> None:
        RandomizableTransform.__init__(self, prob=1.0)
        self.window = Window(seconds, fs)
        self.start = 0

    def randomize(self, num_samples: int) -> None:  # type: ignore[override]
        """Draw the start sample."""
        self.start = int(self.R.randint(0, max(num_samples - self.window.length, 0) + 1))

    def __call__(self, sig: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        """Return a random window."""
        if randomize:
            self.randomize(int(sig.shape[-1]))
        return self.window(sig, start=self.start)


class StandardizeLeads(Transform):
    """Per-lead standardisation ``(x - mean) / std`` (MONAI ``NormalizeIntensity(channel_wise=True)``).

    Why: leads differ in gain and offset; a flat lead (std 0) is only centred. Population std (ddof 0).
    """

    def __init__(self) -> None:
        self.t = NormalizeIntensity(channel_wise=True)

    def __call__(self, sig: NdarrayOrTensor) -> NdarrayOrTensor:
        """Standardise every lead."""
        _check_signal(sig, "StandardizeLeads")
        return like_input(as_float_tensor(self.t(as_float_tensor(sig))), sig)


class BandPassd(ApplyToKeys):
    """Dictionary version of :class:`BandPass`."""

    def __init__(
        self,
        keys: KeysCollection,
        low: float = 0.67,
        high: float = 40.0,
        fs: float = 500.0,
        order: int = 4,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.t = BandPass(low, high, fs, order)


class Resampled(ApplyToKeys):
    """Dictionary version of :class:`Resample`."""

    def __init__(
        self, keys: KeysCollection, fs_in: float, fs_out: float, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.t = Resample(fs_in, fs_out)


class Windowd(ApplyToKeys):
    """Dictionary version of :class:`Window`."""

    def __init__(
        self,
        keys: KeysCollection,
        seconds: float,
        fs: float,
        start: int = 0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.t = Window(seconds, fs, start)


class RandWindowd(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`RandWindow`: one start for all keys."""

    def __init__(
        self, keys: KeysCollection, seconds: float, fs: float, allow_missing_keys: bool = False
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob=1.0)
        self.t = RandWindow(seconds, fs)

    def set_random_state(self, seed: int | None = None, state: Any = None) -> RandWindowd:
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
        self.t.randomize(int(d[keys[0]].shape[-1]))
        for key in keys:
            d[key] = self.t(d[key], randomize=False)
        return d


class StandardizeLeadsd(ApplyToKeys):
    """Dictionary version of :class:`StandardizeLeads`."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.t = StandardizeLeads()
