"""JEPA feature-prediction loss (I-JEPA, Assran et al. 2023, arXiv 2301.08243; V-JEPA, Bardes et al. 2024)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

__all__ = ["layer_norm_targets", "gather_tokens", "jepa_loss", "JEPALoss"]


def layer_norm_targets(features: torch.Tensor) -> torch.Tensor:
    """Layer-normalise features over the last (feature) dim without affine parameters.

    Why: V-JEPA normalises the EMA targets so the predictor cannot win by shrinking their scale.

    Args:
        features: ``[..., D]`` features.

    Returns:
        The normalised features, same shape.
    """
    return F.layer_norm(features, (features.shape[-1],))


def gather_tokens(tokens: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Pick tokens per sample by flat index, vectorised.

    Args:
        tokens: ``[B, N, D]``.
        idx: LongTensor ``[B, K]`` of indices into ``N``.

    Returns:
        ``[B, K, D]``.

    Raises:
        ValueError: on shape mismatch.
    """
    if tokens.ndim != 3 or idx.ndim != 2 or idx.shape[0] != tokens.shape[0]:
        raise ValueError(
            f"gather_tokens expects tokens [B, N, D] and idx [B, K], got {tuple(tokens.shape)} and "
            f"{tuple(idx.shape)}."
        )
    return torch.gather(tokens, 1, idx.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def jepa_loss(
    pred: torch.Tensor,
    target_features: torch.Tensor,
    target_idx: torch.Tensor | None = None,
    normalize_targets: bool = True,
) -> torch.Tensor:
    """Mean L1 between predicted and (layer-normed) target features at the target tokens.

    Why: V-JEPA (arXiv 2404.08471) regresses EMA-encoder features with L1, which was more stable than L2.

    Args:
        pred: predictor output ``[B, Nt, D]``.
        target_features: EMA encoder output, either over all tokens ``[B, N, D]`` (then ``target_idx`` picks
            the targets) or already gathered ``[B, Nt, D]`` (``target_idx=None``).
        target_idx: ``[B, Nt]`` flat token indices, or ``None``.
        normalize_targets: apply :func:`layer_norm_targets` first (over all tokens, before gathering).

    Returns:
        Scalar loss.

    Raises:
        ValueError: on shape mismatch.
    """
    tgt = target_features.detach()
    if normalize_targets:
        tgt = layer_norm_targets(tgt)
    if target_idx is not None:
        tgt = gather_tokens(tgt, target_idx)
    if pred.shape != tgt.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and targets {tuple(tgt.shape)} must have the same shape.")
    return F.l1_loss(pred, tgt)


class JEPALoss(_Loss):
    """L1 between predictions and layer-normed EMA-target features (V-JEPA, arXiv 2404.08471).

    Args:
        normalize_targets: layer-norm the targets over the feature dim (no affine), as in V-JEPA.

    Example::

        >>> loss = JEPALoss()(pred, target_features, target_idx)
    """

    def __init__(self, normalize_targets: bool = True) -> None:
        super().__init__()
        self.normalize_targets = normalize_targets

    def forward(
        self, pred: torch.Tensor, target_features: torch.Tensor, target_idx: torch.Tensor | None = None
    ) -> torch.Tensor:
        """See :func:`jepa_loss`."""
        return jepa_loss(pred, target_features, target_idx, self.normalize_targets)
