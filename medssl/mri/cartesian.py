"""Cartesian multi-coil raw data (e.g. Siemens twix): coil images and root-sum-of-squares, numpy only."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["cartesian_coil_images", "cartesian_recon"]


def _move_kspace_axes(kspace: np.ndarray, axes: Sequence[str]) -> np.ndarray:
    axes = tuple(axes)
    for name in ("coil", "line", "readout"):
        if name not in axes:
            raise ValueError(f"k-space axes {axes} lack {name!r}")
    k = kspace
    extra = tuple(i for i, a in enumerate(axes) if a not in ("coil", "line", "readout"))
    if extra:  # average repetitions / averages etc.
        k = k.mean(axis=extra)
        axes = tuple(a for a in axes if a in ("coil", "line", "readout"))
    return np.moveaxis(k, [axes.index("coil"), axes.index("line"), axes.index("readout")], [0, 1, 2])


def cartesian_coil_images(
    kspace: np.ndarray, axes: Sequence[str], oversampling: float = 2.0, norm: str = "backward"
) -> np.ndarray:
    """Complex coil images ``[coil, line, readout / oversampling]`` from Cartesian k-space (inverse FFT).

    Other axes (repetitions, averages...) are averaged; the readout oversampling is cropped away in image space.
    ``norm`` is numpy's FFT normalisation (``"backward"``: the inverse of an unnormalised forward FFT).
    """
    k = _move_kspace_axes(kspace, axes)
    img = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(1, 2)), axes=(1, 2), norm=norm), axes=(1, 2))
    n_ro = img.shape[2]
    keep = int(round(n_ro / (oversampling or 1.0)))
    start = (n_ro - keep) // 2
    return np.ascontiguousarray(img[:, :, start : start + keep]).astype(np.complex64)


def cartesian_recon(kspace: np.ndarray, axes: tuple[str, ...], oversampling: float = 2.0) -> np.ndarray:
    """Root-sum-of-squares image from Cartesian multi-coil k-space, readout oversampling removed.

    Args:
        kspace: complex k-space with a coil axis, a phase-encoding ("line") axis and a readout axis.
        axes: axis names of ``kspace``; must include ``"coil"``, ``"line"`` and ``"readout"``.
        oversampling: readout oversampling factor to crop away in image space.

    Returns:
        Magnitude image ``[line, readout / oversampling]``.
    """
    img = cartesian_coil_images(kspace, axes, oversampling)
    return np.sqrt((np.abs(img) ** 2).sum(axis=0))
