"""PROPELLER data: blade geometry, simulation from magnitude images, Cartesian raw data, blade datasets."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from medssl.mri.cartesian import cartesian_coil_images, cartesian_recon
from medssl.mri.operators import PropellerOperator
from medssl.transforms.kspace import (
    add_complex_noise,
    blade_subset,
    body_mask,
    noise_sigma_for_snr,
    propeller_coordinates,
    smooth_phase,
)

__all__ = [
    "PropellerGeometry",
    "simulate_acquisition",
    "BladeDataset",
    "cartesian_coil_images",
    "cartesian_recon",
    "cartesian_to_blades",
]


@dataclass(frozen=True)
class PropellerGeometry:
    """A PROPELLER acquisition: ``n_blades`` blades of ``n_lines`` x ``n_readout`` on an ``im_size``² image."""

    n_blades: int = 16
    n_lines: int = 12
    n_readout: int = 128
    im_size: int = 128

    def blades(self, fraction: float = 1.0) -> torch.Tensor:
        """Indices of the blades used at ``fraction`` (every other blade at 0.5)."""
        return blade_subset(self.n_blades, fraction)

    def coordinates(self, blades: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        """``[n_used, n_lines, n_readout, 2]`` coordinates of the chosen blades."""
        c = propeller_coordinates(self.n_blades, self.n_lines, self.n_readout, self.im_size)
        return c if blades is None else c[torch.as_tensor(blades, dtype=torch.long)]

    def trajectory(self, blades: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        """``[2, K]`` trajectory of the chosen blades (blade-major, then line, then readout)."""
        return self.coordinates(blades).reshape(-1, 2).T.contiguous()

    def sample_shape(self, n_used: int | None = None) -> tuple[int, int, int]:
        """``(n_blades used, n_lines, n_readout)``."""
        return (self.n_blades if n_used is None else int(n_used), self.n_lines, self.n_readout)

    def angles(self) -> torch.Tensor:
        """Blade angles in radians."""
        return torch.arange(self.n_blades, dtype=torch.float32) * (math.pi / self.n_blades)


def simulate_acquisition(
    magnitude: torch.Tensor,
    geometry: PropellerGeometry,
    sens: torch.Tensor,
    snr: float | None,
    generator: torch.Generator | None = None,
    op: PropellerOperator | None = None,
    phase: bool = True,
) -> dict[str, Any]:
    """Simulate a multi-coil PROPELLER acquisition of a real magnitude image.

    The image gets a smooth random phase (:func:`medssl.transforms.kspace.smooth_phase`), is sampled on all
    blades through ``A = P F S`` and receives complex Gaussian noise at ``snr`` (image-domain definition, see
    :mod:`medssl.transforms.kspace`; ``None`` = noiseless).

    With readout oversampling (``n_readout > im_size``) the per-sample noise is ``sigma * sqrt(n_readout /
    im_size)``, so the reconstructed image has the same SNR as a Nyquist acquisition.

    Returns:
        ``{"image": clean complex [N, N], "magnitude", "mask": body mask, "kspace": [C, n_blades, n_lines,
        n_readout] complex64, "clean_kspace", "sigma" (image domain), "sigma_sample", "sens"}``.
    """
    n = geometry.im_size
    mag = magnitude.float()
    if tuple(mag.shape) != (n, n):
        raise ValueError(f"magnitude must be {n}x{n}, got {tuple(mag.shape)}")
    ph = smooth_phase(n, generator=generator) if phase else torch.zeros(n, n)
    image = torch.polar(mag, ph).to(torch.complex64)
    if op is None:
        op = PropellerOperator(geometry.trajectory(), n, sens, normalise_dcf=False, toeplitz=False)
    else:
        op = op.with_sens(sens)
    with torch.no_grad():
        clean = op.forward(image[None])[0]
    mask = body_mask(mag)
    sigma = 0.0 if snr is None else noise_sigma_for_snr(image, mask, snr)
    # readout oversampling (n_readout > im_size) spreads the same noise power over more samples: the
    # per-sample sigma grows by sqrt(oversampling) so that the image-domain SNR stays ``snr``
    sigma_sample = sigma * math.sqrt(geometry.n_readout / geometry.im_size)
    noisy = add_complex_noise(clean, sigma_sample, generator) if sigma > 0 else clean.clone()
    shape = (clean.shape[0], geometry.n_blades, geometry.n_lines, geometry.n_readout)
    return {"image": image, "magnitude": mag, "mask": mask, "kspace": noisy.reshape(shape),
            "clean_kspace": clean.reshape(shape), "sigma": sigma, "sigma_sample": sigma_sample, "sens": sens}


class BladeDataset(Dataset):
    """Training items from simulated (or measured) acquisitions, restricted to a subset of blades.

    Args:
        acquisitions: dicts with ``kspace`` ``[C, n_blades, n_lines, n_readout]``, ``sens`` ``[C, N, N]`` and
            optionally ``image`` (clean complex, for supervision).
        blades: indices of the blades in use.

    Items: ``{"kspace": [C, K], "sens": [C, N, N], "target": [N, N]}`` (``target`` zeros when unknown).
    """

    def __init__(self, acquisitions: Sequence[dict[str, Any]], blades: Sequence[int] | torch.Tensor) -> None:
        if not acquisitions:
            raise ValueError("no acquisitions")
        self.acq = list(acquisitions)
        self.blades = torch.as_tensor(blades, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.acq)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        a = self.acq[index]
        k = a["kspace"].index_select(1, self.blades)
        sens = a["sens"]
        target = a.get("image")
        if target is None:
            target = torch.zeros(sens.shape[-2:], dtype=torch.complex64)
        return {"kspace": k.reshape(k.shape[0], -1), "sens": sens, "target": target}


def cartesian_to_blades(
    coil_images: np.ndarray | torch.Tensor, geometry: PropellerGeometry
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample Cartesian coil images onto PROPELLER blades (each coil's exact NUFFT at the blade samples).

    Non-square images are zero-padded to ``geometry.im_size`` (which must hold them).

    Returns:
        ``(kspace [C, n_blades, n_lines, n_readout], square coil images [C, N, N])``.
    """
    img = torch.as_tensor(np.asarray(coil_images), dtype=torch.complex64)
    c, h, w = img.shape
    n = geometry.im_size
    if h > n or w > n:
        raise ValueError(f"coil images {h}x{w} do not fit an {n}x{n} grid")
    sq = torch.zeros(c, n, n, dtype=torch.complex64)
    sq[:, (n - h) // 2 : (n - h) // 2 + h, (n - w) // 2 : (n - w) // 2 + w] = img
    op = PropellerOperator(geometry.trajectory(), n, None, normalise_dcf=False, toeplitz=False)
    with torch.no_grad():
        k = op.forward(sq)[:, 0]  # coils as the batch
    return k.reshape(c, geometry.n_blades, geometry.n_lines, geometry.n_readout), sq
