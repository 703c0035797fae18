"""Image-quality metrics after a least-squares intensity scale fit, on the full image and inside a body mask."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["scale_fit", "image_metrics"]


def _np(a: np.ndarray | torch.Tensor) -> np.ndarray:
    return np.abs(a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)).astype(np.float64)


def scale_fit(recon: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None) -> float:
    """The least-squares scale ``a = <r, ref> / <r, r>`` (over ``mask`` when given) of magnitude images."""
    r, ref = _np(recon), _np(reference)
    if mask is not None:
        r, ref = r[mask], ref[mask]
    den = float((r * r).sum())
    return float((r * ref).sum() / den) if den > 0 else 1.0


def image_metrics(
    recon: np.ndarray | torch.Tensor, reference: np.ndarray | torch.Tensor, mask: np.ndarray | torch.Tensor
) -> dict[str, float]:
    """PSNR, SSIM and NMSE of ``|recon|`` against ``|reference|``, each after the same least-squares scale fit.

    Full-image figures (``psnr``, ``ssim``, ``nmse``) fit the scale over the image; ``psnr_mask`` and
    ``ssim_mask`` fit it inside ``mask`` and average inside it. PSNR's peak and SSIM's data range are the
    reference's maximum.
    """
    from skimage.metrics import structural_similarity

    r, ref = _np(recon), _np(reference)
    m = np.asarray(mask.cpu().numpy() if isinstance(mask, torch.Tensor) else mask, dtype=bool)
    peak = float(ref.max()) or 1.0
    out: dict[str, float] = {}
    a = scale_fit(r, ref)
    x = a * r
    mse = float(((x - ref) ** 2).mean())
    out["psnr"] = 10 * np.log10(peak**2 / max(mse, 1e-20))
    out["ssim"] = float(structural_similarity(x, ref, data_range=peak))
    out["nmse"] = float(((x - ref) ** 2).sum() / max(float((ref**2).sum()), 1e-20))
    am = scale_fit(r, ref, m)
    xm = am * r
    mse_m = float(((xm - ref)[m] ** 2).mean()) if m.any() else mse
    out["psnr_mask"] = 10 * np.log10(peak**2 / max(mse_m, 1e-20))
    _, smap = structural_similarity(xm, ref, data_range=peak, full=True)
    out["ssim_mask"] = float(smap[m].mean()) if m.any() else out["ssim"]
    return out
