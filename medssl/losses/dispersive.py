"""Dispersive loss (Wang & He 2025, "Diffuse and Disperse", arXiv 2506.09027)."""

from __future__ import annotations

import math

import torch
from torch.nn.modules.loss import _Loss

__all__ = ["dispersive_loss", "DispersiveLoss"]


def dispersive_loss(z: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """``log(mean_ij exp(-||z_i - z_j||^2 / (D * tau)))`` over all batch pairs (i = j included).

    Why: a contrastive-without-positives regulariser that spreads representations apart and
    counters collapse (InfoNCE-style L2 variant of arXiv 2506.09027). ``z`` is flattened to ``[B, D]``.
    Computed with logsumexp for stability.

    Args:
        z: ``[B, ...]`` representations; flattened to ``[B, D]``.
        tau: temperature > 0.

    Returns:
        Scalar loss (<= 0; minimised when samples are far apart).
    """
    if z.ndim < 2 or z.shape[0] < 1:
        raise ValueError(f"dispersive_loss expects [B, ...] with B >= 1, got {tuple(z.shape)}.")
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}.")
    flat = z.reshape(z.shape[0], -1)
    b, d = flat.shape
    # ||a-b||^2 = |a|^2 + |b|^2 - 2ab: smooth at a = b, unlike cdist(...)**2 whose sqrt has no gradient at 0
    norms = flat.pow(2).sum(dim=1)
    sq = (norms[:, None] + norms[None, :] - 2.0 * flat @ flat.t()).clamp_min(0.0)
    return torch.logsumexp((-sq / (d * tau)).reshape(-1), dim=0) - math.log(b * b)


class DispersiveLoss(_Loss):
    """Dispersive regulariser (arXiv 2506.09027), L2 variant.

    Args:
        tau: temperature.
    """

    def __init__(self, tau: float = 1.0) -> None:
        super().__init__()
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}.")
        self.tau = tau

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """See :func:`dispersive_loss`."""
        return dispersive_loss(z, self.tau)
