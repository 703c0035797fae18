"""MR artefact transforms MONAI lacks (k-space motion and ghosting), as thin wrappers of torchio.

For a bias field, Gibbs ringing or k-space spikes use MONAI's own ``RandBiasField``/``RandGibbsNoise``/
``RandKSpaceSpikeNoise``. Inputs are channel-first ``[C, H, W]`` or ``[C, H, W, D]``; torchio needs 3-D, so
2-D images get a singleton depth axis for the call. Random transforms draw their parameters from the MONAI
random state (``set_random_state`` seeds them) and call the deterministic transform.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torchio as tio
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, RandomizableTransform, Transform

from ._utils import as_float_tensor, like_input

__all__ = ["Motion", "RandMotion", "RandMotiond", "Ghosting", "RandGhosting", "RandGhostingd"]


def _apply_tio(t: tio.Transform, img: NdarrayOrTensor) -> NdarrayOrTensor:
    x = as_float_tensor(img)
    if x.ndim not in (3, 4):
        raise ValueError(f"expected a channel-first image [C, H, W] or [C, H, W, D], got {tuple(x.shape)}.")
    x3 = x.unsqueeze(-1) if x.ndim == 3 else x
    out = t(tio.ScalarImage(tensor=x3)).data.float()
    if x.ndim == 3:
        out = out[..., 0]
    return like_input(out, img)


class Motion(Transform):
    """Rigid-motion k-space artefact (Shaw et al. 2019, MIDL) with given parameters (``torchio.Motion``).

    Args:
        degrees: ``[n, 3]`` rotations (deg) of the ``n`` movements.
        translation: ``[n, 3]`` translations (voxels/mm).
        times: ``[n]`` times in (0, 1) of the k-space acquisition at which each movement happens.
        interpolation: image interpolation.
    """

    def __init__(
        self, degrees: np.ndarray, translation: np.ndarray, times: np.ndarray, interpolation: str = "linear"
    ) -> None:
        degrees, translation, times = np.asarray(degrees), np.asarray(translation), np.asarray(times)
        if degrees.shape != translation.shape or degrees.ndim != 2 or degrees.shape[1] != 3:
            raise ValueError(f"degrees/translation must be [n, 3], got {degrees.shape}, {translation.shape}.")
        if times.shape != (degrees.shape[0],):
            raise ValueError(f"times must be [n] = [{degrees.shape[0]}], got {times.shape}.")
        self.t = tio.Motion(degrees, translation, times, interpolation)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Apply the motion artefact."""
        return _apply_tio(self.t, img)


class RandMotion(RandomizableTransform):
    """Random rigid-motion artefact with probability ``prob``.

    Args:
        prob: probability of applying it.
        degrees: max absolute rotation (deg).
        translation: max absolute translation.
        num_transforms: number of movements.
    """

    def __init__(
        self, prob: float = 0.1, degrees: float = 10.0, translation: float = 10.0, num_transforms: int = 2
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        self.degrees, self.translation, self.num_transforms = degrees, translation, num_transforms
        self.params: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def randomize(self, data: Any = None) -> None:
        """Draw whether to apply it and the movements."""
        super().randomize(None)
        if not self._do_transform:
            return
        n = self.num_transforms
        deg = self.R.uniform(-self.degrees, self.degrees, size=(n, 3))
        tr = self.R.uniform(-self.translation, self.translation, size=(n, 3))
        times = np.sort(self.R.uniform(0.0, 1.0, size=n))
        self.params = (deg, tr, times)

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        """Maybe apply a random motion artefact."""
        if randomize:
            self.randomize()
        if not self._do_transform or self.params is None:
            return img
        return Motion(*self.params)(img)


class Ghosting(Transform):
    """MR ghosting artefact with given parameters (``torchio.Ghosting``).

    Args:
        num_ghosts: number of ghosts.
        axis: spatial axis (0-2 of ``[H, W, D]``) along which the ghosts appear.
        intensity: ghost strength in [0, 1].
        restore: fraction of the k-space centre restored, or ``None``.
    """

    def __init__(self, num_ghosts: int, axis: int, intensity: float, restore: float | None = None) -> None:
        self.t = tio.Ghosting(num_ghosts, axis, intensity, restore)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Apply the ghosting artefact."""
        return _apply_tio(self.t, img)


class RandGhosting(RandomizableTransform):
    """Random ghosting with probability ``prob``; axis drawn among the in-plane axes ``(0, 1)``.

    Args:
        prob: probability of applying it.
        num_ghosts: ``(min, max)`` ghosts.
        intensity: ``(min, max)`` strength.
    """

    def __init__(
        self,
        prob: float = 0.1,
        num_ghosts: tuple[int, int] = (4, 10),
        intensity: tuple[float, float] = (0.5, 1.0),
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        self.num_ghosts_range, self.intensity_range = num_ghosts, intensity
        self.params: tuple[int, int, float] | None = None

    def randomize(self, data: Any = None) -> None:
        """Draw whether to apply it and the ghosting parameters."""
        super().randomize(None)
        if not self._do_transform:
            return
        n = int(self.R.randint(self.num_ghosts_range[0], self.num_ghosts_range[1] + 1))
        axis = int(self.R.randint(0, 2))
        inten = float(self.R.uniform(*self.intensity_range))
        self.params = (n, axis, inten)

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        """Maybe apply random ghosting."""
        if randomize:
            self.randomize()
        if not self._do_transform or self.params is None:
            return img
        return Ghosting(*self.params)(img)


class _RandDict(RandomizableTransform, MapTransform):
    t: Any

    def set_random_state(self, seed: int | None = None, state: Any = None) -> _RandDict:
        super().set_random_state(seed, state)
        self.t.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.t.randomize()
        for key in self.key_iterator(d):
            d[key] = self.t(d[key], randomize=False)
        return d


class RandMotiond(_RandDict):
    """Dictionary version of :class:`RandMotion` (same motion for every key)."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False, **kwargs: Any) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, 1.0)
        self.t = RandMotion(**kwargs)


class RandGhostingd(_RandDict):
    """Dictionary version of :class:`RandGhosting` (same ghosting for every key)."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False, **kwargs: Any) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, 1.0)
        self.t = RandGhosting(**kwargs)
