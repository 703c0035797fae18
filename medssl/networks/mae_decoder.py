"""MAE decoder: reconstructs the pixels of masked tokens from the encoded context (arXiv:2111.06377)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from medssl.networks.predictor import MaskedTokenPredictor

__all__ = ["MAEDecoder"]


class MAEDecoder(MaskedTokenPredictor):
    """Light MAE decoder (He et al., arXiv:2111.06377) that returns pixel predictions for targets only.

    Args:
        num_patches: size of the encoder's token grid.
        embed_dim: encoder width.
        patch_dim: pixels per token (``encoder.patch_dim``).
        decoder_dim: decoder width.
        depth: transformer blocks.
        num_heads: attention heads.
        mlp_ratio: MLP width / ``decoder_dim``.
        grid_size: encoder grid for a sin-cos position embedding (learned if None).
        use_flash_attention: fused attention kernel.
    """

    def __init__(
        self,
        num_patches: int,
        embed_dim: int,
        patch_dim: int,
        decoder_dim: int = 128,
        depth: int = 2,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        grid_size: Sequence[int] | None = None,
        use_flash_attention: bool = True,
    ) -> None:
        super().__init__(
            num_patches,
            embed_dim,
            patch_dim,
            decoder_dim,
            depth,
            num_heads,
            mlp_ratio=mlp_ratio,
            grid_size=grid_size,
            use_flash_attention=use_flash_attention,
        )
        self.patch_dim = patch_dim

    def forward(
        self, context_tokens: torch.Tensor, context_idx: torch.Tensor, target_idx: torch.Tensor
    ) -> torch.Tensor:
        """Predict the pixels ``[B, Nt, patch_dim]`` of the target tokens (``patchify`` layout)."""
        return self._predict(context_tokens, context_idx, target_idx)
