"""MONAI transformer blocks as the encoders and predictors use them."""

from __future__ import annotations

from monai.networks.blocks import TransformerBlock
from torch import nn

__all__ = ["transformer_block"]


def transformer_block(
    hidden_size: int,
    mlp_dim: int,
    num_heads: int,
    dropout_rate: float = 0.0,
    qkv_bias: bool = True,
    use_flash_attention: bool = True,
) -> TransformerBlock:
    """A MONAI ``TransformerBlock`` (self-attention only) without its unused cross-attention norm.

    MONAI builds ``norm_cross_attn`` even when ``with_cross_attention`` is off. Its parameters then never
    receive gradients, which makes ``DistributedDataParallel`` fail unless ``find_unused_parameters`` (slow)
    is on, so it is replaced by an identity here.
    """
    block = TransformerBlock(
        hidden_size,
        mlp_dim,
        num_heads,
        dropout_rate=dropout_rate,
        qkv_bias=qkv_bias,
        use_flash_attention=use_flash_attention,
    )
    block.norm_cross_attn = nn.Identity()
    return block
