"""Token-grid helpers shared by the encoder, predictors and heads: patchify, unpatchify, gather, sin-cos."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # pragma: no cover
    from medssl.networks.vit import ViTEncoder

__all__ = ["build_sincos_pos_embed", "gather_tokens", "patchify", "unpatchify"]


def build_sincos_pos_embed(
    grid_size: Sequence[int], embed_dim: int, temperature: float = 10000.0
) -> torch.Tensor:
    """Fixed sin-cos position embedding for an n-D token grid (Vaswani et al. 2017, arXiv:1706.03762).

    Each grid axis gets an equal, even share of the channels (sin and cos of ``pos * omega_k`` with
    ``omega_k = temperature ** (-k / K)``), as in MAE (arXiv:2111.06377) and V-JEPA (3-D); channels left
    over when ``embed_dim`` is not divisible by ``2 * len(grid_size)`` are zero.

    Args:
        grid_size: number of tokens along each axis, row-major order of the flat token index.
        embed_dim: channels of the embedding.
        temperature: base of the geometric frequency progression.

    Returns:
        float32 tensor ``[prod(grid_size), embed_dim]``.

    Raises:
        ValueError: if ``embed_dim`` is too small to give every axis at least one sin/cos pair.
    """
    grid_size = tuple(int(g) for g in grid_size)
    n_axes = len(grid_size)
    if n_axes < 1 or any(g < 1 for g in grid_size):
        raise ValueError(f"grid_size must be non-empty with positive entries, got {grid_size}.")
    per_axis = (embed_dim // n_axes) // 2 * 2
    if per_axis < 2:
        raise ValueError(f"embed_dim {embed_dim} too small for a {n_axes}-D sin-cos embedding.")
    half = per_axis // 2
    omega = 1.0 / (temperature ** (torch.arange(half, dtype=torch.float64) / half))
    coords = torch.meshgrid(*[torch.arange(g, dtype=torch.float64) for g in grid_size], indexing="ij")
    parts = []
    for c in coords:
        angles = c.reshape(-1, 1) * omega.reshape(1, -1)
        parts += [torch.sin(angles), torch.cos(angles)]
    emb = torch.cat(parts, dim=1)
    if emb.shape[1] < embed_dim:
        emb = torch.cat([emb, emb.new_zeros(emb.shape[0], embed_dim - emb.shape[1])], dim=1)
    return emb.float()


def gather_tokens(tokens: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Select tokens per sample: ``out[b, i] = tokens[b, idx[b, i]]`` (``tokens`` may be ``[1, N, D]``).

    Args:
        tokens: ``[B, N, D]`` or ``[1, N, D]`` (broadcast over the batch, e.g. a position embedding).
        idx: LongTensor ``[B, K]`` of flat token indices.

    Returns:
        ``[B, K, D]``.
    """
    if idx.ndim != 2 or idx.dtype != torch.long:
        raise ValueError(f"idx must be a LongTensor [B, K], got {tuple(idx.shape)} {idx.dtype}.")
    if tokens.ndim != 3:
        raise ValueError(f"tokens must be [B, N, D], got {tuple(tokens.shape)}.")
    b, k = idx.shape
    if tokens.shape[0] == 1 and b != 1:
        return tokens[0][idx]
    if tokens.shape[0] != b:
        raise ValueError(f"batch mismatch: tokens {tuple(tokens.shape)} vs idx {tuple(idx.shape)}.")
    return torch.gather(tokens, 1, idx.unsqueeze(-1).expand(b, k, tokens.shape[-1]))


def _layout(encoder: ViTEncoder) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """Return (channels per token, grid, patch) describing how ``encoder`` cuts its input."""
    if encoder.channel_tokens:
        # every lead is its own row of tokens: view [B, C, L] as a 1-channel [C, L] image, patch (1, p)
        return 1, tuple(encoder.grid_size), (1, *encoder.patch_size)
    return encoder.in_channels, tuple(encoder.grid_size), tuple(encoder.patch_size)


def patchify(x: torch.Tensor, encoder: ViTEncoder) -> torch.Tensor:
    """Cut an input into the encoder's tokens as flat pixel vectors (MAE targets, arXiv:2111.06377).

    Token order is the encoder's (row-major over ``encoder.grid_size``); within a token, pixels are ordered
    ``(p_1, ..., p_n, channel)``. For ``channel_tokens`` every lead is patched on its own (lead-major).

    Args:
        x: ``[B, C, *spatial]`` exactly as the encoder takes it.
        encoder: a :class:`~medssl.networks.vit.ViTEncoder` (only its geometry is used).

    Returns:
        ``[B, N, patch_dim]`` with ``patch_dim = encoder.patch_dim``.
    """
    encoder.check_input(x)
    c, grid, patch = _layout(encoder)
    b = x.shape[0]
    n = len(grid)
    shape = [b, c]
    for g, p in zip(grid, patch, strict=True):
        shape += [g, p]
    x = x.reshape(shape)
    # axes: 0=b, 1=c, then (g_i at 2+2i, p_i at 3+2i)
    perm = [0] + [2 + 2 * i for i in range(n)] + [3 + 2 * i for i in range(n)] + [1]
    return x.permute(perm).reshape(b, math.prod(grid), math.prod(patch) * c)


def unpatchify(tokens: torch.Tensor, encoder: ViTEncoder) -> torch.Tensor:
    """Exact inverse of :func:`patchify`: ``unpatchify(patchify(x, enc), enc) == x``.

    Args:
        tokens: ``[B, N, patch_dim]``.
        encoder: the encoder whose geometry defines the layout.

    Returns:
        ``[B, C, *spatial]``.
    """
    c, grid, patch = _layout(encoder)
    n = len(grid)
    if tokens.ndim != 3 or tokens.shape[1] != math.prod(grid) or tokens.shape[2] != math.prod(patch) * c:
        raise ValueError(
            f"tokens must be [B, {math.prod(grid)}, {math.prod(patch) * c}], got {tuple(tokens.shape)}."
        )
    b = tokens.shape[0]
    x = tokens.reshape(b, *grid, *patch, c)
    # axes: 0=b, 1..n = g_i, n+1..2n = p_i, 2n+1 = c  ->  b, c, g_1, p_1, g_2, p_2, ...
    perm = [0, 2 * n + 1]
    for i in range(n):
        perm += [1 + i, 1 + n + i]
    return x.permute(perm).reshape(b, encoder.in_channels, *encoder.input_size)
