"""Spatio-temporal multi-block masks for video (V-JEPA, Bardes et al. 2024, arXiv:2404.08471)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["Block", "MultiBlockMask3D"]

Block = tuple[int, int, int, int]
"""A masked rectangle ``(top, left, height, width)`` in token units; it spans every time position."""


class MultiBlockMask3D:
    """V-JEPA multi-block masking: the target is a union of spatial blocks repeated over the whole clip.

    Each block covers ``scale`` of the frame's ``h x w`` token grid with an aspect ratio drawn log-uniformly
    from ``aspect_ratio``, at a uniformly random position fully inside the frame, and spans all ``t``
    temporal token positions. With the defaults (8 short-range blocks at 15 % and 2 long-range blocks at
    70 %) the union covers about 90 % of the tokens. Target = union of blocks, context = complement; both are
    then randomly subsampled (kept sorted) to the smallest count in the batch, so samples stack unpadded.

    Args:
        grid_size: ``(t, h, w)`` token grid of the video encoder (use ``t = 1`` for images).
        short: ``(count, scale)`` of the short-range blocks.
        long: ``(count, scale)`` of the long-range blocks.
        aspect_ratio: ``(min, max)`` of ``height / width`` of a block.
        min_context: a draw leaving fewer context tokens than this is redrawn (up to 20 times), then the
            tokens needed are unmasked at random.

    Examples::

        >>> ctx, tgt = MultiBlockMask3D((8, 14, 14))(2, torch.Generator().manual_seed(0))
        >>> ctx.shape[0], tgt.shape[0], ctx.shape[1] + tgt.shape[1] <= 8 * 14 * 14
        (2, 2, True)
    """

    def __init__(
        self,
        grid_size: Sequence[int] = (8, 14, 14),
        short: tuple[int, float] = (8, 0.15),
        long: tuple[int, float] = (2, 0.70),
        aspect_ratio: tuple[float, float] = (0.75, 1.5),
        min_context: int = 4,
    ) -> None:
        grid = tuple(int(g) for g in grid_size)
        if len(grid) != 3 or any(g < 1 for g in grid):
            raise ValueError(f"grid_size must be (t, h, w) with positive entries, got {tuple(grid_size)}.")
        specs = []
        for name, spec in (("short", short), ("long", long)):
            count, scale = int(spec[0]), float(spec[1])
            if count < 0 or not 0.0 < scale <= 1.0:
                raise ValueError(f"{name} must be (count >= 0, 0 < scale <= 1), got {spec}.")
            specs.append((count, scale))
        if specs[0][0] + specs[1][0] < 1:
            raise ValueError("at least one block is needed (short and long counts are both 0).")
        lo, hi = float(aspect_ratio[0]), float(aspect_ratio[1])
        if not 0.0 < lo <= hi:
            raise ValueError(f"aspect_ratio must be 0 < min <= max, got {aspect_ratio}.")
        t, h, w = grid
        if h * w < 2:
            raise ValueError(f"the frame grid {h}x{w} needs at least 2 tokens.")
        if not 1 <= min_context < t * h * w:
            raise ValueError(f"min_context must be in [1, {t * h * w}), got {min_context}.")
        self.grid_size = grid
        self.num_patches = t * h * w
        self.short = specs[0]
        self.long = specs[1]
        self.aspect_ratio = (lo, hi)
        self.min_context = int(min_context)

    def sample_blocks(self, generator: torch.Generator | None = None) -> list[Block]:
        """Draw the blocks of one sample as ``(top, left, height, width)`` rectangles in token units."""
        _, h, w = self.grid_size
        n = self.short[0] + self.long[0]
        scales = torch.tensor([self.short[1]] * self.short[0] + [self.long[1]] * self.long[0])
        u = torch.rand(3, n, generator=generator, dtype=torch.float64)
        log_lo, log_hi = math.log(self.aspect_ratio[0]), math.log(self.aspect_ratio[1])
        ar = torch.exp(log_lo + (log_hi - log_lo) * u[0])
        area = scales * h * w
        bh = torch.sqrt(area * ar).round().clamp(1, h).long()
        bw = torch.sqrt(area / ar).round().clamp(1, w).long()
        top = (u[1] * (h - bh + 1)).floor().long().clamp(max=h - bh)
        left = (u[2] * (w - bw + 1)).floor().long().clamp(max=w - bw)
        return [
            (int(a), int(b), int(c), int(d))
            for a, b, c, d in zip(top.tolist(), left.tolist(), bh.tolist(), bw.tolist(), strict=True)
        ]

    def blocks_to_mask(self, blocks: Sequence[Block]) -> torch.Tensor:
        """Union of ``blocks`` as a bool mask ``[t, h, w]`` (True = target); every time slice is identical."""
        t, h, w = self.grid_size
        frame = torch.zeros(h, w, dtype=torch.bool)
        for top, left, bh, bw in blocks:
            frame[top : top + bh, left : left + bw] = True
        return frame.expand(t, h, w)

    def sample_mask(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """One sample's flat target mask ``[t * h * w]`` (True = target), >= ``min_context`` tokens free."""
        _, h, w = self.grid_size
        t = self.grid_size[0]
        need_frame = -(-self.min_context // t)  # free frame cells needed so that t * free >= min_context
        frame = self.blocks_to_mask(self.sample_blocks(generator))[0]
        for _ in range(20):
            if h * w - int(frame.sum()) >= need_frame:
                break
            frame = self.blocks_to_mask(self.sample_blocks(generator))[0]
        else:
            masked = frame.flatten().nonzero().flatten()
            free = masked[torch.randperm(masked.numel(), generator=generator)[:need_frame]]
            frame = frame.flatten().clone()
            frame[free] = False
            frame = frame.reshape(h, w)
        return frame.expand(t, h, w).reshape(-1)

    def __call__(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``(context_idx [B, Nc], target_idx [B, Nt])``: sorted, disjoint, same counts in the batch."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        masks = torch.stack([self.sample_mask(generator) for _ in range(batch_size)])  # [B, N] True = target
        return _truncate_to_min(masks, generator)

    def __repr__(self) -> str:
        return (
            f"MultiBlockMask3D(grid_size={self.grid_size}, short={self.short}, long={self.long}, "
            f"aspect_ratio={self.aspect_ratio})"
        )


def _truncate_to_min(
    masks: torch.Tensor, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of True (target) and False (context) per row, randomly subsampled to the batch minimum."""
    b, n = masks.shape
    n_tgt = int(masks.sum(1).min())
    n_ctx = int((~masks).sum(1).min())
    scores = torch.rand(b, n, generator=generator)
    # rank selected tokens first (score in [0, 1)), others after (score + 2): the first k are a random subset
    tgt = torch.argsort(scores + 2.0 * (~masks), dim=1)[:, :n_tgt].sort(dim=1).values
    ctx = torch.argsort(scores + 2.0 * masks, dim=1)[:, :n_ctx].sort(dim=1).values
    return ctx, tgt
