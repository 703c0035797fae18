"""3-D token localisation auxiliary loss (Ellis et al. 2025, arXiv 2507.18424).

Predict each context token's normalised (t, y, x) position from its embedding, which discourages
position-blind features.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.loss import _Loss

__all__ = ["token_coordinates", "LocalisationHead", "localisation_loss", "LocalisationLoss"]


def token_coordinates(grid_size: Sequence[int], idx: torch.Tensor | None = None) -> torch.Tensor:
    """Normalised grid coordinates in [0, 1] of flat token indices (row-major over ``grid_size``).

    Each axis of size ``n`` maps index ``k`` to ``k / (n - 1)`` (0 when ``n == 1``). 1-D and 2-D grids are
    padded on the left with zeros so the result always has 3 columns ``(t, y, x)``.

    Args:
        grid_size: token grid, 1 to 3 ints, e.g. ``(t, h, w)``.
        idx: ``[B, N]`` flat indices, or ``None`` for all tokens (returns ``[1, prod(grid), 3]``).

    Returns:
        Float tensor ``[B, N, 3]``.

    Raises:
        ValueError: for a grid of more than 3 dims or indices out of range.
    """
    grid = [int(g) for g in grid_size]
    if not 1 <= len(grid) <= 3 or min(grid) < 1:
        raise ValueError(f"grid_size must have 1 to 3 positive entries, got {tuple(grid_size)}.")
    grid3 = [1] * (3 - len(grid)) + grid
    n = grid3[0] * grid3[1] * grid3[2]
    if idx is None:
        idx = torch.arange(n).unsqueeze(0)
    if idx.ndim != 2:
        raise ValueError(f"idx must be [B, N], got {tuple(idx.shape)}.")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
        raise ValueError(f"token indices must lie in [0, {n}), grid {tuple(grid)}.")
    t = idx // (grid3[1] * grid3[2])
    y = (idx // grid3[2]) % grid3[1]
    x = idx % grid3[2]
    denom = torch.tensor([max(g - 1, 1) for g in grid3], dtype=torch.float32, device=idx.device)
    return torch.stack((t, y, x), dim=-1).float() / denom


class LocalisationHead(nn.Module):
    """Small MLP mapping token embeddings ``[B, N, D]`` to positions ``[B, N, 3]`` in [0, 1] (sigmoid).

    Args:
        in_dim: embedding dim D.
        hidden_dim: MLP width.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 128) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, 3))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Predict normalised (t, y, x) per token."""
        return torch.sigmoid(self.mlp(tokens))


def localisation_loss(
    pred_coords: torch.Tensor, true_coords: torch.Tensor, beta: float = 0.1
) -> torch.Tensor:
    """Smooth-L1 (Huber) between predicted and true normalised token coordinates.

    Why smooth L1 and not MSE: coordinates are bounded in [0, 1] so errors are small; smooth L1 with a small
    ``beta`` keeps an L1-like, non-vanishing gradient once most tokens are roughly placed (MSE gradients
    shrink with the error and the auxiliary task stalls) while staying quadratic, hence smooth, near 0.

    Args:
        pred_coords: ``[B, N, 3]``.
        true_coords: ``[B, N, 3]`` (see :func:`token_coordinates`).
        beta: Huber threshold.

    Returns:
        Scalar loss.
    """
    if pred_coords.shape != true_coords.shape or pred_coords.shape[-1] != 3:
        raise ValueError(
            f"expected two [B, N, 3] tensors, got {tuple(pred_coords.shape)} and {tuple(true_coords.shape)}."
        )
    return F.smooth_l1_loss(pred_coords, true_coords.to(pred_coords.dtype), beta=beta)


class LocalisationLoss(_Loss):
    """Smooth-L1 token-localisation loss (arXiv 2507.18424); see :func:`localisation_loss`.

    Args:
        beta: Huber threshold.
    """

    def __init__(self, beta: float = 0.1) -> None:
        super().__init__()
        self.beta = beta

    def forward(self, pred_coords: torch.Tensor, true_coords: torch.Tensor) -> torch.Tensor:
        """See :func:`localisation_loss`."""
        return localisation_loss(pred_coords, true_coords, self.beta)
