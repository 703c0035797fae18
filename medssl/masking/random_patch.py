"""Uniform random token masks for 1-D, 2-D and 3-D token grids (MAE, arXiv:2111.06377)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["RandomPatchMask", "split_by_scores"]


def split_by_scores(scores: torch.Tensor, num_target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split every row of ``scores`` into its ``num_target`` lowest entries (target) and the rest (context).

    Args:
        scores: ``[B, N]`` random scores, one per token.
        num_target: tokens per sample that become targets.

    Returns:
        ``(context_idx [B, N - num_target], target_idx [B, num_target])``, each sorted ascending.
    """
    order = torch.argsort(scores, dim=1)
    target = order[:, :num_target].sort(dim=1).values
    context = order[:, num_target:].sort(dim=1).values
    return context, target


class RandomPatchMask:
    """Mask a fixed fraction of tokens uniformly at random, independently per sample (MAE).

    Args:
        grid_size: the encoder's token grid (any number of axes; only its size matters).
        mask_ratio: fraction of tokens that become targets; ``round(mask_ratio * N)`` exactly.

    Examples::

        >>> ctx, tgt = RandomPatchMask((4, 4), 0.75)(2, torch.Generator().manual_seed(0))
        >>> ctx.shape, tgt.shape
        (torch.Size([2, 4]), torch.Size([2, 12]))
    """

    def __init__(self, grid_size: Sequence[int] | int, mask_ratio: float = 0.75) -> None:
        grid = (int(grid_size),) if isinstance(grid_size, int) else tuple(int(g) for g in grid_size)
        if not grid or any(g < 1 for g in grid):
            raise ValueError(f"grid_size must be non-empty with positive entries, got {grid_size}.")
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}.")
        self.grid_size = grid
        self.num_patches = math.prod(grid)
        self.mask_ratio = float(mask_ratio)
        self.num_target = int(round(mask_ratio * self.num_patches))
        if not 0 < self.num_target < self.num_patches:
            raise ValueError(
                f"mask_ratio {mask_ratio} on {self.num_patches} tokens leaves no context or no target."
            )

    def __call__(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``(context_idx [B, N - Nt], target_idx [B, Nt])`` LongTensors, sorted, disjoint."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        scores = torch.rand(batch_size, self.num_patches, generator=generator)
        return split_by_scores(scores, self.num_target)

    def __repr__(self) -> str:
        return f"RandomPatchMask(grid_size={self.grid_size}, mask_ratio={self.mask_ratio})"
