"""Narrow transformer that predicts target-token content from context tokens (JEPA predictor)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.layers import trunc_normal_

from medssl.networks.blocks import transformer_block
from medssl.networks.patching import build_sincos_pos_embed, gather_tokens
from medssl.networks.vit import _init_weights

__all__ = ["JEPAPredictor", "MaskedTokenPredictor"]


class MaskedTokenPredictor(nn.Module):
    """Context tokens + one learned mask token per target position -> blocks -> predictions at targets.

    Shared by the JEPA predictor (I-JEPA arXiv:2301.08243, V-JEPA arXiv:2404.08471) and the MAE decoder
    (arXiv:2111.06377): project context tokens to ``width``, add the position embedding of their positions,
    append ``mask_token + pos[target_idx]`` (optionally with N-JEPA Gaussian noise on those position
    embeddings), run the blocks, normalise and project the target tokens to ``out_dim``.

    Args:
        num_patches: size of the encoder's token grid.
        in_dim: width of the context tokens (encoder hidden size).
        out_dim: width of the predictions.
        width: internal width.
        depth: transformer blocks.
        num_heads: attention heads (must divide ``width``).
        mlp_ratio: MLP width / ``width``.
        grid_size: encoder grid; if given, a fixed sin-cos position embedding over it, else a learned one.
        qkv_bias: bias in the qkv projection.
        use_flash_attention: fused attention kernel.
    """

    def __init__(
        self,
        num_patches: int,
        in_dim: int,
        out_dim: int,
        width: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        grid_size: Sequence[int] | None = None,
        qkv_bias: bool = True,
        use_flash_attention: bool = True,
    ) -> None:
        super().__init__()
        if num_patches < 2:
            raise ValueError(f"num_patches must be >= 2, got {num_patches}.")
        if min(in_dim, out_dim, width) < 1:
            raise ValueError(f"in_dim, out_dim and width must be positive, got {in_dim}, {out_dim}, {width}.")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}.")
        if num_heads < 1 or width % num_heads:
            raise ValueError(f"width {width} must be divisible by num_heads {num_heads}.")
        self.num_patches = num_patches
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.width = width
        self.embed = nn.Linear(in_dim, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        if grid_size is not None:
            grid = tuple(int(g) for g in grid_size)
            n = 1
            for g in grid:
                n *= g
            if n != num_patches:
                raise ValueError(f"grid_size {grid} does not hold num_patches={num_patches} tokens.")
            self.pos_embed = nn.Parameter(build_sincos_pos_embed(grid, width)[None], requires_grad=False)
        else:
            self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, width))
            trunc_normal_(self.pos_embed, mean=0.0, std=0.02, a=-2.0, b=2.0)
        self.blocks = nn.ModuleList(
            [
                transformer_block(
                    width,
                    int(width * mlp_ratio),
                    num_heads,
                    qkv_bias=qkv_bias,
                    use_flash_attention=use_flash_attention,
                )
                for _ in range(depth)
            ]
        )
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, out_dim)
        for m in (self.embed, self.blocks, self.norm, self.proj):
            m.apply(_init_weights)
        trunc_normal_(self.mask_token, mean=0.0, std=0.02, a=-2.0, b=2.0)

    def _predict(
        self,
        context_tokens: torch.Tensor,
        context_idx: torch.Tensor,
        target_idx: torch.Tensor,
        pos_noise_std: float = 0.0,
    ) -> torch.Tensor:
        if context_tokens.ndim != 3 or context_tokens.shape[-1] != self.in_dim:
            raise ValueError(
                f"context_tokens must be [B, Nc, {self.in_dim}], got {tuple(context_tokens.shape)}."
            )
        if tuple(context_idx.shape) != tuple(context_tokens.shape[:2]):
            raise ValueError(
                f"context_idx {tuple(context_idx.shape)} does not match context_tokens "
                f"{tuple(context_tokens.shape)}."
            )
        if target_idx.ndim != 2 or target_idx.shape[0] != context_tokens.shape[0]:
            raise ValueError(f"target_idx must be [B, Nt], got {tuple(target_idx.shape)}.")
        if pos_noise_std < 0:
            raise ValueError(f"pos_noise_std must be >= 0, got {pos_noise_std}.")
        n_ctx = context_tokens.shape[1]
        ctx = self.embed(context_tokens) + gather_tokens(self.pos_embed, context_idx)
        tgt_pos = gather_tokens(self.pos_embed, target_idx)
        if pos_noise_std > 0:
            # N-JEPA: Gaussian noise on the mask tokens' position embeddings only
            tgt_pos = tgt_pos + pos_noise_std * torch.randn_like(tgt_pos)
        tokens = torch.cat([ctx, self.mask_token.to(tgt_pos.dtype) + tgt_pos], dim=1)
        for blk in self.blocks:
            tokens = blk(tokens)
        return self.proj(self.norm(tokens[:, n_ctx:]))


class JEPAPredictor(MaskedTokenPredictor):
    """Narrow JEPA predictor (I-JEPA arXiv:2301.08243, V-JEPA arXiv:2404.08471): returns only targets.

    Args:
        num_patches: size of the encoder's token grid.
        embed_dim: encoder width (input and output width).
        predictor_dim: internal width (narrow: 384 in V-JEPA).
        depth: transformer blocks.
        num_heads: attention heads.
        mlp_ratio: MLP width / ``predictor_dim``.
        grid_size: encoder grid for a sin-cos position embedding (learned if None).
        use_flash_attention: fused attention kernel.
    """

    def __init__(
        self,
        num_patches: int,
        embed_dim: int,
        predictor_dim: int = 384,
        depth: int = 6,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        grid_size: Sequence[int] | None = None,
        use_flash_attention: bool = True,
    ) -> None:
        super().__init__(
            num_patches,
            embed_dim,
            embed_dim,
            predictor_dim,
            depth,
            num_heads,
            mlp_ratio=mlp_ratio,
            grid_size=grid_size,
            use_flash_attention=use_flash_attention,
        )

    def forward(
        self,
        context_tokens: torch.Tensor,
        context_idx: torch.Tensor,
        target_idx: torch.Tensor,
        pos_noise_std: float = 0.0,
    ) -> torch.Tensor:
        """Predict the target tokens' encoder embeddings.

        Args:
            context_tokens: ``[B, Nc, embed_dim]`` encoder output for the context tokens.
            context_idx: ``[B, Nc]`` their flat positions.
            target_idx: ``[B, Nt]`` positions to predict.
            pos_noise_std: std of N-JEPA Gaussian noise on the mask tokens' position embeddings (0 = off).

        Returns:
            ``[B, Nt, embed_dim]``.
        """
        return self._predict(context_tokens, context_idx, target_idx, pos_noise_std)
