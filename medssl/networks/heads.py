"""Evaluation heads on encoder tokens: linear probe, attentive probe, light segmentation decoder."""

from __future__ import annotations

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution, CrossAttentionBlock, MLPBlock, UpSample
from monai.networks.layers import trunc_normal_

from medssl.networks.vit import ViTEncoder, _init_weights

__all__ = ["AttentivePoolingHead", "LinearHead", "SegmentationDecoder"]

_POOLS = ("mean", "max")


class LinearHead(nn.Module):
    """Pool tokens and apply one linear layer: the standard linear probe (MAE arXiv:2111.06377).

    Args:
        in_dim: token width.
        num_classes: outputs.
        pool: ``"mean"`` or ``"max"`` over tokens (ignored for already pooled ``[B, D]`` inputs).
        batch_norm: standardise the pooled features with a ``BatchNorm1d`` without affine parameters before
            the linear layer (MAE's linear-probe recipe, arXiv:2111.06377 appendix A.2). Pooled tokens of a
            little-trained encoder vary little between inputs; the norm puts them on a unit scale, so the
            classifier does not have to learn that scale first.
    """

    def __init__(self, in_dim: int, num_classes: int, pool: str = "mean", batch_norm: bool = False) -> None:
        super().__init__()
        if in_dim < 1 or num_classes < 1:
            raise ValueError(f"in_dim and num_classes must be positive, got {in_dim}, {num_classes}.")
        if pool not in _POOLS:
            raise ValueError(f"pool must be one of {_POOLS}, got {pool!r}.")
        self.pool = pool
        self.norm: nn.Module = nn.BatchNorm1d(in_dim, affine=False) if batch_norm else nn.Identity()
        self.fc = nn.Linear(in_dim, num_classes)
        _init_weights(self.fc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, N, in_dim]`` (or ``[B, in_dim]``) -> logits ``[B, num_classes]``."""
        if x.ndim == 3:
            x = x.mean(dim=1) if self.pool == "mean" else x.amax(dim=1)
        elif x.ndim != 2:
            raise ValueError(f"expected [B, N, D] or [B, D], got {tuple(x.shape)}.")
        return self.fc(self.norm(x))


class AttentivePoolingHead(nn.Module):
    """Attentive probe: a learned query cross-attends to the frozen tokens (V-JEPA, arXiv:2404.08471).

    query -> (+ cross-attention to LayerNorm(tokens)) -> (+ MLP) -> LayerNorm -> Linear.

    Args:
        in_dim: token width.
        num_classes: outputs.
        num_heads: attention heads (must divide ``in_dim``).
        mlp_ratio: MLP width / ``in_dim``.
    """

    def __init__(self, in_dim: int, num_classes: int, num_heads: int = 4, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if in_dim < 1 or num_classes < 1:
            raise ValueError(f"in_dim and num_classes must be positive, got {in_dim}, {num_classes}.")
        if num_heads < 1 or in_dim % num_heads:
            raise ValueError(f"in_dim {in_dim} must be divisible by num_heads {num_heads}.")
        self.query = nn.Parameter(torch.zeros(1, 1, in_dim))
        self.norm_kv = nn.LayerNorm(in_dim)
        self.norm_q = nn.LayerNorm(in_dim)
        self.attn = CrossAttentionBlock(in_dim, num_heads, qkv_bias=True, use_flash_attention=True)
        self.norm_mlp = nn.LayerNorm(in_dim)
        self.mlp = MLPBlock(in_dim, int(in_dim * mlp_ratio))
        self.norm_out = nn.LayerNorm(in_dim)
        self.fc = nn.Linear(in_dim, num_classes)
        self.apply(_init_weights)
        trunc_normal_(self.query, mean=0.0, std=0.02, a=-2.0, b=2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, N, in_dim]`` -> logits ``[B, num_classes]``."""
        if x.ndim != 3 or x.shape[-1] != self.query.shape[-1]:
            raise ValueError(f"expected [B, N, {self.query.shape[-1]}], got {tuple(x.shape)}.")
        q = self.query.expand(x.shape[0], -1, -1).to(x.dtype)
        q = q + self.attn(self.norm_q(q), context=self.norm_kv(x))
        q = q + self.mlp(self.norm_mlp(q))
        return self.fc(self.norm_out(q[:, 0]))


class SegmentationDecoder(nn.Module):
    """Light dense head on frozen patch tokens (in the spirit of SETR-naive, arXiv:2012.15840).

    Tokens are reshaped to the encoder's grid, a 3x3 conv reduces the width, the map is upsampled by the
    patch size (tubelet x patch for video: per-frame logits) and refined by a 3x3 conv and a 1x1 classifier.
    For ``channel_tokens`` signals the lead tokens at each time position are averaged first.

    Args:
        encoder: the encoder that produced the tokens (only its geometry is stored, not its weights).
        out_channels: number of classes / output channels.
        features: width of the decoder convolutions.
    """

    def __init__(self, encoder: ViTEncoder, out_channels: int, features: int = 64) -> None:
        super().__init__()
        if out_channels < 1 or features < 1:
            raise ValueError(f"out_channels and features must be positive, got {out_channels}, {features}.")
        self.hidden_size = encoder.hidden_size
        self.channel_tokens = encoder.channel_tokens
        self.grid_size = tuple(encoder.grid_size)
        self.map_size = self.grid_size[1:] if encoder.channel_tokens else self.grid_size
        self.output_size = tuple(encoder.input_size)
        dims = len(self.map_size)
        self.reduce = Convolution(dims, encoder.hidden_size, features, kernel_size=3, act="GELU", norm="BATCH")
        self.upsample = UpSample(
            dims,
            features,
            features,
            scale_factor=tuple(encoder.patch_size),
            mode="nontrainable",
            interp_mode="linear",
            align_corners=False,
        )
        self.refine = Convolution(dims, features, features, kernel_size=3, act="GELU", norm="BATCH")
        self.classifier = Convolution(dims, features, out_channels, kernel_size=1, conv_only=True)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, N, hidden]`` (all tokens, encoder order) -> logits ``[B, out_channels, *input_size]``."""
        n = 1
        for g in self.grid_size:
            n *= g
        if tokens.ndim != 3 or tokens.shape[1] != n or tokens.shape[2] != self.hidden_size:
            raise ValueError(f"expected tokens [B, {n}, {self.hidden_size}], got {tuple(tokens.shape)}.")
        b = tokens.shape[0]
        if self.channel_tokens:
            tokens = tokens.reshape(b, self.grid_size[0], -1, self.hidden_size).mean(dim=1)
        x = tokens.transpose(1, 2).reshape(b, self.hidden_size, *self.map_size)
        x = self.refine(self.upsample(self.reduce(x)))
        return self.classifier(x)
