"""Conventional PROPELLER reconstructions: density-compensated gridding, CG-SENSE and a classic denoiser."""

from __future__ import annotations

import numpy as np
import torch

from medssl.mri.operators import PropellerOperator, dot

__all__ = ["conjugate_gradient", "gridding_recon", "cg_sense", "denoise_magnitude", "estimate_noise_sigma"]


def conjugate_gradient(
    normal: callable, rhs: torch.Tensor, x0: torch.Tensor | None = None, n_iter: int = 10, lam: float = 0.0,
    tol: float = 0.0,
) -> torch.Tensor:
    """Batched CG for ``(N + lam I) x = rhs`` with a Hermitian positive semi-definite ``N`` (images ``[B, ...]``).

    Differentiable (the iterations are unrolled in autograd).
    """
    x = torch.zeros_like(rhs) if x0 is None else x0
    r = rhs - (normal(x) + lam * x) if x0 is not None else rhs.clone()
    p = r
    rs = dot(r, r).real
    shape = (-1,) + (1,) * (rhs.ndim - 1)
    for _ in range(n_iter):
        ap = normal(p) + lam * p
        alpha = rs / dot(p, ap).real.clamp_min(1e-20)
        x = x + alpha.reshape(shape) * p
        r = r - alpha.reshape(shape) * ap
        rs_new = dot(r, r).real
        if tol > 0 and bool((rs_new.sqrt() < tol * dot(rhs, rhs).real.sqrt()).all()):
            break
        p = r + (rs_new / rs.clamp_min(1e-20)).reshape(shape) * p
        rs = rs_new
    return x


def gridding_recon(op: PropellerOperator, kspace: torch.Tensor) -> torch.Tensor:
    """Density-compensated gridding with SENSE-weighted coil combination; ``[B, C, K]`` -> ``[B, N, N]``."""
    with torch.no_grad():
        return op.gridding(kspace)


def cg_sense(op: PropellerOperator, kspace: torch.Tensor, lam: float = 0.05, n_iter: int = 10) -> torch.Tensor:
    """CG-SENSE: ``argmin ||W^(1/2)(A x - y)||^2 + lam ||x||^2`` by ``n_iter`` CG steps from zero.

    ``W`` is the operator's normalised density compensation (the usual preconditioner for non-Cartesian
    SENSE); the normal operator is applied by Toeplitz embedding. Without ``lam`` the iterations
    eventually amplify noise (semi-convergence), so ``lam`` and ``n_iter`` are tuned on training images.
    """
    with torch.no_grad():
        rhs = op.weighted_adjoint(kspace)
        return conjugate_gradient(op.normal, rhs, n_iter=n_iter, lam=lam)


def estimate_noise_sigma(image: np.ndarray) -> float:
    """Noise sigma of an image from the median absolute finest-scale Haar diagonal coefficient (Donoho's MAD).

    2x2 blocks that are exactly zero (e.g. outside the support of estimated coil maps) hold no noise and are left
    out; an image with no other block has sigma 0.
    """
    u = np.asarray(image, np.float64)
    h, w = (u.shape[0] // 2) * 2, (u.shape[1] // 2) * 2
    u = u[:h, :w]
    d = (u[0::2, 0::2] - u[1::2, 0::2] - u[0::2, 1::2] + u[1::2, 1::2]) / 2.0
    blocks = np.abs(u[0::2, 0::2]) + np.abs(u[1::2, 0::2]) + np.abs(u[0::2, 1::2]) + np.abs(u[1::2, 1::2])
    d = d[blocks > 0]
    return float(np.median(np.abs(d)) / 0.6745) if d.size else 0.0


def denoise_magnitude(image: np.ndarray | torch.Tensor, method: str = "nlm", strength: float = 0.8) -> np.ndarray:
    """Denoise a magnitude image with scikit-image: non-local means, total variation or wavelet shrinkage.

    The noise sigma is estimated from the image (:func:`estimate_noise_sigma`, the MAD of the finest Haar
    diagonal band); ``strength`` scales NLM's filter ``h = strength * sigma``, the TV weight
    ``strength * sigma``, or the noise sigma given to the wavelet denoiser (``"wavelet"``: BayesShrink soft
    thresholding of a 4-level ``db2`` decomposition, PyWavelets through ``skimage.restoration.denoise_wavelet``).
    """
    from skimage.restoration import denoise_nl_means, denoise_tv_chambolle, denoise_wavelet

    arr = np.abs(image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image))
    arr = arr.astype(np.float64)
    peak = float(arr.max()) or 1.0
    u = arr / peak
    sigma = estimate_noise_sigma(u)
    if method not in ("nlm", "tv", "wavelet"):
        raise ValueError(f"method must be 'nlm', 'tv' or 'wavelet', got {method!r}")
    if sigma <= 0:  # no noise to remove (a noiseless or constant image)
        return arr.astype(np.float32)
    if method == "nlm":
        out = denoise_nl_means(u, h=strength * sigma, sigma=sigma, patch_size=5, patch_distance=6, fast_mode=True)
    elif method == "tv":
        out = denoise_tv_chambolle(u, weight=strength * sigma)
    elif method == "wavelet":
        out = denoise_wavelet(u, sigma=strength * sigma, wavelet="db2", mode="soft", wavelet_levels=4,
                              method="BayesShrink", rescale_sigma=True)
    return (out * peak).astype(np.float32)
