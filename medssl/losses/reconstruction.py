"""Masked reconstruction loss (MAE, He et al. 2022, arXiv 2111.06377)."""

from __future__ import annotations

import torch
from torch.nn.modules.loss import _Loss

__all__ = ["normalize_patches", "masked_reconstruction_loss", "MaskedReconstructionLoss"]


def normalize_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Normalise each patch to zero mean, unit variance: ``(x - mean) / sqrt(var + eps)``.

    Why: MAE's "norm_pix" target improves representation quality (He et al. 2022, arXiv 2111.06377).
    The variance is the biased (population) one, as in MAE.

    Args:
        patches: ``[..., P]`` with the patch values on the last dim.
        eps: added to the variance.

    Returns:
        Normalised patches, same shape.
    """
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, unbiased=False, keepdim=True)
    return (patches - mean) / torch.sqrt(var + eps)


def masked_reconstruction_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    norm_pix: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Mean squared error over masked patches only.

    Args:
        pred: ``[B, K, P]`` predicted patches.
        target: ``[B, K, P]`` true patches (already gathered at the masked tokens), or ``[B, N, P]`` with
            ``mask``.
        mask: optional ``[B, N]`` bool/float, 1 = masked (counted in the loss); required when ``pred`` covers
            all ``N`` tokens and only some are to be scored.
        norm_pix: normalise each target patch first (:func:`normalize_patches`).
        eps: variance epsilon for ``norm_pix``.

    Returns:
        Scalar: per-patch MSE averaged over the masked patches.

    Raises:
        ValueError: on shape mismatch.
    """
    if pred.shape != target.shape or pred.ndim != 3:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must both be [B, K, P].")
    tgt = target.detach()
    if norm_pix:
        tgt = normalize_patches(tgt, eps)
    per_patch = (pred - tgt).pow(2).mean(dim=-1)
    if mask is None:
        return per_patch.mean()
    if mask.shape != per_patch.shape:
        raise ValueError(f"mask {tuple(mask.shape)} must be [B, K] = {tuple(per_patch.shape)}.")
    m = mask.to(per_patch.dtype)
    return (per_patch * m).sum() / m.sum().clamp_min(1.0)


class MaskedReconstructionLoss(_Loss):
    """MSE on the masked patches, optionally against per-patch-normalised targets (MAE, arXiv 2111.06377).

    Args:
        norm_pix: normalise each target patch to zero mean / unit variance.
        eps: variance epsilon.
    """

    def __init__(self, norm_pix: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm_pix = norm_pix
        self.eps = eps

    def forward(
        self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """See :func:`masked_reconstruction_loss`."""
        return masked_reconstruction_loss(pred, target, mask, self.norm_pix, self.eps)
