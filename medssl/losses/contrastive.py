"""Contrastive losses: InfoNCE and the BYOL cosine prediction loss.

InfoNCE: van den Oord et al. 2018, arXiv 1807.03748; BYOL: Grill et al. 2020, arXiv 2006.07733.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

__all__ = ["info_nce", "InfoNCELoss", "byol_loss", "BYOLLoss"]


def _check_pair(a: torch.Tensor, b: torch.Tensor, name: str) -> None:
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(
            f"{name} expects two [B, D] tensors of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}."
        )


def info_nce(
    query: torch.Tensor, key: torch.Tensor, temperature: float = 0.1, symmetric: bool = False
) -> torch.Tensor:
    """InfoNCE: cross-entropy of l2-normalised cosine logits / temperature, positives on the diagonal.

    Why: pulls matching pairs together and pushes the other samples of the batch away (arXiv 1807.03748).

    Args:
        query: ``[B, D]``.
        key: ``[B, D]``; ``key[i]`` is the positive of ``query[i]``, every other row a negative.
        temperature: softmax temperature tau > 0.
        symmetric: average the query->key and key->query losses.

    Returns:
        Scalar loss.
    """
    _check_pair(query, key, "info_nce")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    q = F.normalize(query, dim=-1)
    k = F.normalize(key, dim=-1)
    logits = q @ k.t() / temperature
    labels = torch.arange(q.shape[0], device=q.device)
    loss = F.cross_entropy(logits, labels)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(logits.t(), labels))
    return loss


class InfoNCELoss(_Loss):
    """InfoNCE with temperature (arXiv 1807.03748), positives on the diagonal.

    Args:
        temperature: softmax temperature.
        symmetric: average both directions.
    """

    def __init__(self, temperature: float = 0.1, symmetric: bool = False) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        self.temperature = temperature
        self.symmetric = symmetric

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """See :func:`info_nce`."""
        return info_nce(query, key, self.temperature, self.symmetric)


def byol_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BYOL regression loss ``2 - 2 cos(p, z)``, averaged over the batch; the target is detached.

    Why: equals the MSE between l2-normalised vectors (Grill et al. 2020, arXiv 2006.07733).

    Args:
        pred: online predictor output ``[B, D]``.
        target: target projection ``[B, D]``.

    Returns:
        Scalar loss in [0, 4].
    """
    _check_pair(pred, target, "byol_loss")
    cos = F.cosine_similarity(pred, target.detach(), dim=-1)
    return (2.0 - 2.0 * cos).mean()


class BYOLLoss(_Loss):
    """BYOL cosine prediction loss ``2 - 2 cos`` (arXiv 2006.07733)."""

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """See :func:`byol_loss`."""
        return byol_loss(pred, target)
