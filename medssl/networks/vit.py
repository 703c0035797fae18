"""One ViT encoder for 1-D signals, 2-D images, 3-D volumes and video that embeds only context tokens."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import PatchEmbeddingBlock
from monai.networks.layers import trunc_normal_
from monai.utils import ensure_tuple_rep

from medssl.networks.blocks import transformer_block
from medssl.networks.patching import build_sincos_pos_embed, gather_tokens, patchify

__all__ = ["ViTEncoder"]

_POS_EMBED_TYPES = ("sincos", "learnable")


def _init_weights(m: nn.Module) -> None:
    """ViT initialisation (truncated normal 0.02 for linear layers, unit LayerNorm), arXiv:2010.11929."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, mean=0.0, std=0.02, a=-2.0, b=2.0)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class _SignalPatchEmbedding(nn.Module):
    """Conv1d patch embedding for 1-D signals (MONAI's ``PatchEmbeddingBlock`` has no 1-D sin-cos).

    With ``channel_tokens`` every lead is patched by the same 1-channel projection and tagged with a
    learned lead embedding, so tokens are ordered lead-major: ``N = C * (L // p)``.
    """

    def __init__(
        self,
        in_channels: int,
        length: int,
        patch: int,
        hidden_size: int,
        pos_embed_type: str,
        channel_tokens: bool,
    ) -> None:
        super().__init__()
        self.channel_tokens = channel_tokens
        self.in_channels = in_channels
        n_time = length // patch
        self.proj = nn.Conv1d(1 if channel_tokens else in_channels, hidden_size, patch, stride=patch)
        if pos_embed_type == "sincos":
            self.position_embeddings = nn.Parameter(
                build_sincos_pos_embed((n_time,), hidden_size)[None], requires_grad=False
            )
        else:
            self.position_embeddings = nn.Parameter(torch.zeros(1, n_time, hidden_size))
            trunc_normal_(self.position_embeddings, mean=0.0, std=0.02, a=-2.0, b=2.0)
        self.lead_embeddings: nn.Parameter | None = None
        if channel_tokens:
            self.lead_embeddings = nn.Parameter(torch.zeros(in_channels, 1, hidden_size))
            trunc_normal_(self.lead_embeddings, mean=0.0, std=0.02, a=-2.0, b=2.0)

    def full_position_embeddings(self) -> torch.Tensor:
        """Position (+ lead) embedding of every token, ``[1, N, hidden]`` in token order."""
        if self.lead_embeddings is None:
            return self.position_embeddings
        return (self.position_embeddings[:, None] + self.lead_embeddings[None]).flatten(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed ``[B, C, L]`` into ``[B, N, hidden]`` with position (and lead) embeddings added."""
        b, c, length = x.shape
        if not self.channel_tokens:
            return self.proj(x).transpose(1, 2) + self.position_embeddings
        t = self.proj(x.reshape(b * c, 1, length)).transpose(1, 2)  # [B*C, n, D]
        t = t.reshape(b, c, t.shape[1], t.shape[2]) + self.position_embeddings[:, None] + self.lead_embeddings
        return t.flatten(1, 2)


class ViTEncoder(nn.Module):
    """Vision Transformer (Dosovitskiy et al., arXiv:2010.11929) that can skip masked tokens entirely.

    Masked-modelling SSL (MAE arXiv:2111.06377, I-JEPA arXiv:2301.08243, V-JEPA arXiv:2404.08471) runs the
    encoder on the visible (context) tokens only: with ``context_idx`` the patches are embedded, the
    position embedding is added, and only the context tokens are gathered and sent through the blocks, so
    the cost scales with the number of context tokens and masked content can never leak into the output.
    Only the context patches are even projected: the patch embedding is applied as a matrix to the
    gathered patches (the same linear map as MONAI's strided convolution, whose weights it uses).

    Layouts (``x`` is ``[B, C, *input_size]``):

    - ``spatial_dims=1``: signals ``[B, C, L]``; ``channel_tokens=True`` patches every lead separately.
    - ``spatial_dims=2``: images ``[B, C, H, W]``; with ``num_frames > 1`` video ``[B, C, T, H, W]`` cut into
      tubelets ``(tubelet_size, p, p)`` (V-JEPA).
    - ``spatial_dims=3``: volumes ``[B, C, D, H, W]``.

    Args:
        spatial_dims: 1, 2 or 3 (video is ``spatial_dims=2`` with ``num_frames > 1``).
        in_channels: input channels (leads for signals).
        img_size: spatial size (without time for video); int or one value per spatial dim.
        patch_size: spatial patch size; int or one value per spatial dim; must divide ``img_size``.
        num_frames: frames of a video clip (``1`` = not video).
        tubelet_size: frames per token for video; must divide ``num_frames``.
        hidden_size: token width.
        depth: number of transformer blocks.
        num_heads: attention heads; must divide ``hidden_size``.
        mlp_ratio: MLP width / ``hidden_size``.
        channel_tokens: 1-D only: one token row per lead with a learned lead embedding.
        pos_embed_type: ``"sincos"`` (fixed) or ``"learnable"``.
        qkv_bias: bias in the qkv projection.
        dropout_rate: dropout in the blocks.
        use_flash_attention: fused ``scaled_dot_product_attention`` (much faster; keep True).
        proj_type: patch projection for 2-D/3-D/video (``"conv"`` or ``"perceptron"``, MONAI names).

    Attributes:
        grid_size: tokens per axis (row-major order of the flat token index); video ``(T/t, H/p, W/p)``,
            channel tokens ``(C, L/p)``.
        num_patches: ``prod(grid_size)``.
        hidden_size: token width.
        patch_size: patch size per input axis (video: ``(tubelet_size, p, p)``).
        input_size: spatial size of the input after the channel axis (video: ``(T, H, W)``).
        patch_dim: pixels per token (``patchify`` width).

    Examples::

        >>> enc = ViTEncoder(2, 1, 32, 8, hidden_size=48, depth=2, num_heads=3)
        >>> enc.grid_size, enc.num_patches
        ((4, 4), 16)
        >>> enc(torch.zeros(2, 1, 32, 32), context_idx=torch.tensor([[0, 5], [1, 2]])).shape
        torch.Size([2, 2, 48])
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        img_size: Sequence[int] | int,
        patch_size: Sequence[int] | int,
        num_frames: int = 1,
        tubelet_size: int = 1,
        hidden_size: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        channel_tokens: bool = False,
        pos_embed_type: str = "sincos",
        qkv_bias: bool = True,
        dropout_rate: float = 0.0,
        use_flash_attention: bool = True,
        proj_type: str = "conv",
    ) -> None:
        super().__init__()
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}.")
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}.")
        if num_frames < 1 or tubelet_size < 1:
            raise ValueError(f"num_frames and tubelet_size must be >= 1, got {num_frames}, {tubelet_size}.")
        is_video = num_frames > 1
        if is_video and spatial_dims != 2:
            raise ValueError(f"video (num_frames > 1) needs spatial_dims=2, got spatial_dims={spatial_dims}.")
        if not is_video and tubelet_size != 1:
            raise ValueError("tubelet_size > 1 needs a video encoder (num_frames > 1).")
        if is_video and num_frames % tubelet_size:
            raise ValueError(f"num_frames {num_frames} is not divisible by tubelet_size {tubelet_size}.")
        if channel_tokens and spatial_dims != 1:
            raise ValueError("channel_tokens is only supported for spatial_dims=1.")
        if hidden_size < 1 or num_heads < 1 or hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} must be divisible by num_heads {num_heads}.")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}.")
        if mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be > 0, got {mlp_ratio}.")
        if pos_embed_type not in _POS_EMBED_TYPES:
            raise ValueError(f"pos_embed_type must be one of {_POS_EMBED_TYPES}, got {pos_embed_type!r}.")
        img = ensure_tuple_rep(img_size, spatial_dims)
        patch = ensure_tuple_rep(patch_size, spatial_dims)
        for i, p in zip(img, patch, strict=True):
            if p < 1 or i < 1:
                raise ValueError(f"img_size {img} and patch_size {patch} must be positive.")
            if i % p:
                raise ValueError(f"img_size {img} is not divisible by patch_size {patch}.")
        sincos_axes = spatial_dims + int(is_video)
        if pos_embed_type == "sincos" and sincos_axes > 1 and hidden_size % (2 * sincos_axes):
            raise ValueError(
                f"sin-cos position embedding over {sincos_axes} axes needs hidden_size divisible by "
                f"{2 * sincos_axes}, got {hidden_size}."
            )

        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.img_size: tuple[int, ...] = tuple(int(v) for v in img)
        self.num_frames = num_frames
        self.tubelet_size = tubelet_size
        self.is_video = is_video
        self.channel_tokens = channel_tokens
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        if is_video:
            self.input_size: tuple[int, ...] = (num_frames, *self.img_size)
            self.patch_size: tuple[int, ...] = (tubelet_size, *(int(p) for p in patch))
        else:
            self.input_size = self.img_size
            self.patch_size = tuple(int(p) for p in patch)
        grid = tuple(i // p for i, p in zip(self.input_size, self.patch_size, strict=True))
        self.grid_size: tuple[int, ...] = (in_channels, *grid) if channel_tokens else grid
        self.num_patches = math.prod(self.grid_size)
        self.patch_dim = math.prod(self.patch_size) * (1 if channel_tokens else in_channels)

        self.patch_embed: nn.Module
        if spatial_dims == 1:
            self.patch_embed = _SignalPatchEmbedding(
                in_channels, self.img_size[0], self.patch_size[0], hidden_size, pos_embed_type, channel_tokens
            )
        else:
            self.patch_embed = PatchEmbeddingBlock(
                in_channels=in_channels,
                img_size=self.input_size,
                patch_size=self.patch_size,
                hidden_size=hidden_size,
                num_heads=num_heads,
                proj_type=proj_type,
                pos_embed_type="learnable" if pos_embed_type == "learnable" else "none",
                spatial_dims=len(self.input_size),
            )
            if pos_embed_type == "sincos":
                # same layout as MONAI's but any number of axes, and frozen
                self.patch_embed.position_embeddings = nn.Parameter(
                    build_sincos_pos_embed(grid, hidden_size)[None], requires_grad=False
                )
        self.blocks = nn.ModuleList(
            [
                transformer_block(
                    hidden_size,
                    int(hidden_size * mlp_ratio),
                    num_heads,
                    dropout_rate=dropout_rate,
                    qkv_bias=qkv_bias,
                    use_flash_attention=use_flash_attention,
                )
                for _ in range(depth)
            ]
        )
        self.norm = nn.LayerNorm(hidden_size)
        self.blocks.apply(_init_weights)
        self.norm.apply(_init_weights)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError unless ``x`` is ``[B, in_channels, *input_size]``."""
        expected = (self.in_channels, *self.input_size)
        if x.ndim != 2 + len(self.input_size) or tuple(x.shape[1:]) != expected:
            raise ValueError(f"expected input [B, {', '.join(map(str, expected))}], got {tuple(x.shape)}.")

    def position_embedding(self) -> torch.Tensor:
        """Position (and lead) embedding of every token: ``[1, num_patches, hidden]``."""
        if isinstance(self.patch_embed, _SignalPatchEmbedding):
            return self.patch_embed.full_position_embeddings()
        return self.patch_embed.position_embeddings

    def _projection(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Patch projection as a ``[hidden, patch_dim]`` matrix in ``patchify`` pixel order, and its bias."""
        pe = self.patch_embed
        conv = pe.proj if isinstance(pe, _SignalPatchEmbedding) else pe.patch_embeddings
        if isinstance(conv, nn.Sequential):  # MONAI "perceptron": Rearrange to (p..., c) then Linear
            linear = conv[-1]
            return linear.weight, linear.bias
        w = conv.weight  # [hidden, C, *p] -> [hidden, *p, C]
        perm = [0, *range(2, w.ndim), 1]
        return w.permute(perm).reshape(w.shape[0], -1), conv.bias

    def embed(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Patch-embed ``x`` and add position (and lead) embeddings.

        Args:
            x: ``[B, C, *input_size]``.
            idx: optional ``[B, K]`` token indices; only those patches are projected (the cost of the
                embedding then scales with ``K`` and no other pixel reaches the output).

        Returns:
            ``[B, num_patches, hidden]`` or ``[B, K, hidden]``.
        """
        self.check_input(x)
        if idx is None:
            return self.patch_embed(x)
        if idx.ndim != 2 or idx.shape[0] != x.shape[0]:
            raise ValueError(f"context_idx must be [B={x.shape[0]}, Nc], got {tuple(idx.shape)}.")
        patches = gather_tokens(patchify(x, self), idx)
        weight, bias = self._projection()
        return F.linear(patches, weight, bias) + gather_tokens(self.position_embedding(), idx)

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Run already-embedded tokens ``[B, K, hidden]`` through the blocks and the final LayerNorm."""
        for blk in self.blocks:
            tokens = blk(tokens)
        return self.norm(tokens)

    def forward(self, x: torch.Tensor, context_idx: torch.Tensor | None = None) -> torch.Tensor:
        """Encode all tokens, or only the context tokens.

        Args:
            x: ``[B, C, *input_size]``.
            context_idx: optional LongTensor ``[B, Nc]`` of flat token indices (sorted, per sample) to keep.

        Returns:
            ``[B, N, hidden]`` or ``[B, Nc, hidden]`` (final LayerNorm applied).
        """
        return self.encode(self.embed(x, context_idx))
