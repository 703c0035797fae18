"""Coil sensitivities: smooth synthetic birdcage maps (simulation) and maps estimated from the blades' centre."""

from __future__ import annotations

import math

import torch

from medssl.mri.operators import PropellerOperator

__all__ = ["SENS_CENTRE_FRACTION", "birdcage_maps", "estimate_sens_from_blades", "normalise_sens"]

SENS_CENTRE_FRACTION = 0.12  # k-space radius (x pi) the maps are estimated from, by default and at inference


def normalise_sens(sens: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale maps ``[C, N, N]`` (or ``[B, C, N, N]``) so that ``sum_c |S_c|^2 = 1`` at every pixel."""
    rss = (sens.abs() ** 2).sum(dim=-3, keepdim=True).sqrt()
    return (sens / rss.clamp_min(eps)).to(torch.complex64)


def birdcage_maps(n_coils: int, size: int, radius: float = 1.5, rotation: float = 0.0) -> torch.Tensor:
    """Smooth synthetic receive maps of ``n_coils`` loops evenly spaced on a circle around the field of view.

    Each coil's map falls off as ``1 / distance`` from its centre (at ``radius`` half-FOVs from the image
    centre) and carries the phase of the azimuth around it, as in the usual birdcage simulation; the maps are
    normalised so that ``sum_c |S_c|^2 = 1``.

    Returns:
        complex64 ``[n_coils, size, size]``.
    """
    if n_coils < 1:
        raise ValueError(f"n_coils must be >= 1, got {n_coils}")
    y, x = torch.meshgrid(torch.linspace(-1, 1, size, dtype=torch.float64),
                          torch.linspace(-1, 1, size, dtype=torch.float64), indexing="ij")
    maps = []
    for c in range(n_coils):
        a = 2 * math.pi * c / n_coils + rotation
        cx, cy = radius * math.cos(a), radius * math.sin(a)
        dx, dy = x - cx, y - cy
        r = torch.sqrt(dx**2 + dy**2)
        phi = torch.atan2(dx, -dy) - a
        maps.append(torch.polar(1.0 / r, phi))
    return normalise_sens(torch.stack(maps).to(torch.complex64))


def estimate_sens_from_blades(
    op: PropellerOperator, kspace: torch.Tensor, centre_fraction: float = SENS_CENTRE_FRACTION, threshold: float = 0.04
) -> torch.Tensor:
    """Coil maps from the low-resolution centre of the blades (each coil's gridded centre / their RSS).

    Args:
        op: an operator over the acquired samples (its own ``sens`` are ignored).
        kspace: ``[C, K]`` (or ``[1, C, K]``) measured blade k-space.
        centre_fraction: radius of the k-space centre used, as a fraction of ``pi`` (a Hann taper).
        threshold: pixels whose RSS is below ``threshold`` x its maximum get zero sensitivity.

    Returns:
        complex64 ``[C, N, N]``, ``sum_c |S_c|^2 = 1`` inside the object.
    """
    y = kspace.reshape(-1, kspace.shape[-1]).to(torch.complex64)
    r = op.traj.norm(dim=0) / (centre_fraction * math.pi)
    taper = torch.where(r < 1, 0.5 * (1 + torch.cos(math.pi * r)), torch.zeros_like(r))
    single = op.with_sens(None)
    low = single.weighted_adjoint((y * taper)[:, None, :])  # [C, N, N]: coils as the batch
    rss = (low.abs() ** 2).sum(dim=0).sqrt()
    sens = low / rss.clamp_min(1e-12)
    sens = sens * (rss > threshold * rss.max())
    return sens.to(torch.complex64)
