"""PROPELLER MRI: multi-coil NUFFT operators, coil maps, baselines, the unrolled network and its training methods.

Physics lives in :mod:`medssl.transforms.kspace` (trajectory, sample splits, phase, noise at a set SNR); this
package builds on it:

- :class:`PropellerOperator` (torchkbnufft NUFFT x coil maps, density compensation, Toeplitz ``AᴴWA``)
- :func:`birdcage_maps`, :func:`estimate_sens_from_blades`
- baselines :func:`gridding_recon`, :func:`cg_sense`, :func:`denoise_magnitude`
- :class:`UnrolledRecon` (MONAI U-Net regulariser + CG data consistency)
- training objectives :class:`ReadoutSplitSSL`, :class:`SSDU`, :class:`SupervisedRecon`; :func:`reconstruct`
- :func:`estimate_sample_sigma`, :func:`estimate_snr` (noise level of an acquisition, from its own samples)
- :func:`image_metrics` (PSNR / SSIM / NMSE after a least-squares scale fit, full image and body mask)
- data helpers :class:`PropellerGeometry`, :func:`simulate_acquisition`, :class:`BladeDataset`,
  :func:`cartesian_recon`, :func:`cartesian_coil_images`, :func:`cartesian_to_blades`

Names are loaded lazily (``medssl.mri.cartesian`` is numpy only, so ``medssl.demo`` can import it cheaply);
MONAI is imported when the network is built.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "PropellerOperator": "operators", "density_compensation": "operators", "dot": "operators",
    "birdcage_maps": "coils", "estimate_sens_from_blades": "coils", "normalise_sens": "coils",
    "SENS_CENTRE_FRACTION": "coils",
    "conjugate_gradient": "baselines", "gridding_recon": "baselines", "cg_sense": "baselines",
    "denoise_magnitude": "baselines", "estimate_noise_sigma": "baselines",
    "estimate_sample_sigma": "noise", "estimate_snr": "noise",
    "UnrolledRecon": "network", "kspace_support_mask": "network", "to_channels": "network", "to_complex": "network",
    "ReadoutSplitSSL": "methods", "SSDU": "methods", "SupervisedRecon": "methods", "reconstruct": "methods",
    "intensity_scale": "methods", "image_metrics": "metrics", "scale_fit": "metrics",
    "PropellerGeometry": "data", "simulate_acquisition": "data", "BladeDataset": "data",
    "cartesian_to_blades": "data", "cartesian_recon": "cartesian", "cartesian_coil_images": "cartesian",
}  # fmt: skip

__all__ = [
    "PropellerOperator",
    "density_compensation",
    "dot",
    "birdcage_maps",
    "SENS_CENTRE_FRACTION",
    "estimate_sens_from_blades",
    "normalise_sens",
    "conjugate_gradient",
    "gridding_recon",
    "cg_sense",
    "denoise_magnitude",
    "UnrolledRecon",
    "kspace_support_mask",
    "to_channels",
    "to_complex",
    "ReadoutSplitSSL",
    "SSDU",
    "SupervisedRecon",
    "reconstruct",
    "intensity_scale",
    "image_metrics",
    "scale_fit",
    "PropellerGeometry",
    "simulate_acquisition",
    "BladeDataset",
    "cartesian_recon",
    "cartesian_coil_images",
    "cartesian_to_blades",
    "estimate_noise_sigma",
    "estimate_sample_sigma",
    "estimate_snr",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f"medssl.mri.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'medssl.mri' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
