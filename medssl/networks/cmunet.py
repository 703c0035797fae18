"""CM-UNet: a U-Net whose encoder is pretrained by masked reconstruction plus contrast against an EMA target.

Challier et al., "CM-UNet: A Self-Supervised Learning-Based Model for Coronary Artery Segmentation in X-Ray
Angiography", arXiv 2507.17779. Written from the paper; the blocks are MONAI's ``BasicUNet`` blocks
(two 3x3 convolutions with instance norm, max-pool down, transposed-convolution up with skip concatenation).

The same :class:`UNetEncoder` serves pretraining (:class:`CMUNetPretrainHeads` adds the pixel decoder for
masked reconstruction and the projector / predictor for the contrastive branch) and fine-tuning
(:class:`CMUNet`, a full U-Net whose ``encoder`` is loaded from the pretraining checkpoint).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets.basic_unet import Down, TwoConv, UpCat
from torch import nn

__all__ = ["UNetEncoder", "UNetDecoder", "CMUNet", "ChannelReductionProjector", "MLPPredictor", "cmunet_small"]

_ACT: tuple = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True})
_NORM: tuple = ("instance", {"affine": True})


def _check_channels(channels: Sequence[int]) -> tuple[int, ...]:
    ch = tuple(int(c) for c in channels)
    if len(ch) < 2 or any(c < 1 for c in ch):
        raise ValueError(f"channels must hold at least 2 positive widths, got {channels}.")
    return ch


class UNetEncoder(nn.Module):
    """The contracting path of a U-Net; returns the feature map of every level (finest first).

    Args:
        spatial_dims: 2 (images) or 3 (volumes).
        in_channels: input channels (1 for greyscale angiograms).
        channels: widths per level; ``len(channels) - 1`` down-samplings, so inputs must be divisible by
            ``2 ** (len(channels) - 1)``.
        dropout: dropout inside the convolution blocks.

    Examples::

        >>> enc = UNetEncoder(channels=(8, 16, 32))
        >>> [tuple(f.shape) for f in enc(torch.zeros(1, 1, 32, 32))]
        [(1, 8, 32, 32), (1, 16, 16, 16), (1, 32, 8, 8)]
    """

    def __init__(
        self, spatial_dims: int = 2, in_channels: int = 1, channels: Sequence[int] = (16, 32, 64, 128, 256),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}.")
        self.channels = _check_channels(channels)
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.stem = TwoConv(spatial_dims, in_channels, self.channels[0], _ACT, _NORM, True, dropout)
        self.downs = nn.ModuleList(
            Down(spatial_dims, a, b, _ACT, _NORM, True, dropout)
            for a, b in zip(self.channels[:-1], self.channels[1:], strict=True)
        )

    @property
    def divisor(self) -> int:
        """Input sizes must be multiples of this."""
        return 2 ** (len(self.channels) - 1)

    @property
    def out_channels(self) -> int:
        """Channels of the deepest (bottleneck) feature map."""
        return self.channels[-1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[B, C, *spatial]`` -> feature maps, finest first; the last one is the bottleneck."""
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(f"expected a {self.spatial_dims + 2}-D input [B, C, *spatial], got {tuple(x.shape)}.")
        if any(s % self.divisor for s in x.shape[2:]):
            raise ValueError(f"spatial size {tuple(x.shape[2:])} must be divisible by {self.divisor}.")
        feats = [self.stem(x)]
        for down in self.downs:
            feats.append(down(feats[-1]))
        return feats


class UNetDecoder(nn.Module):
    """The expanding path of a U-Net: up-sample, concatenate the skip, two convolutions; then a 1x1 output.

    Args:
        spatial_dims: 2 or 3.
        channels: the encoder's widths (finest first).
        out_channels: output channels (1 for a binary vessel logit or a reconstructed grey image).
        dropout: dropout inside the blocks.
    """

    def __init__(
        self, spatial_dims: int = 2, channels: Sequence[int] = (16, 32, 64, 128, 256), out_channels: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        ch = _check_channels(channels)
        if out_channels < 1:
            raise ValueError(f"out_channels must be >= 1, got {out_channels}.")
        rev = ch[::-1]
        self.ups = nn.ModuleList(
            UpCat(spatial_dims, a, b, b, _ACT, _NORM, True, dropout, halves=True)
            for a, b in zip(rev[:-1], rev[1:], strict=True)
        )
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.out = conv(ch[0], out_channels, kernel_size=1)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """Feature maps from :class:`UNetEncoder` -> ``[B, out_channels, *spatial]`` at the input size."""
        if len(feats) != len(self.ups) + 1:
            raise ValueError(f"expected {len(self.ups) + 1} feature maps, got {len(feats)}.")
        x = feats[-1]
        for up, skip in zip(self.ups, reversed(feats[:-1]), strict=True):
            x = up(x, skip)
        return self.out(x)


class CMUNet(nn.Module):
    """The fine-tuning U-Net: ``encoder`` (loadable from CM-UNet / MAE pretraining) plus a fresh decoder.

    The output layer is ``decoder.out`` (a 1x1 convolution); set its bias to the vessel prior with
    :func:`medssl.eval.init_output_bias_to_prior`.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output logits (1 = binary vessel map).
        channels: widths per level.
        dropout: dropout in the blocks.

    Examples::

        >>> net = CMUNet(channels=(8, 16, 32))
        >>> tuple(net(torch.zeros(2, 1, 64, 64)).shape)
        (2, 1, 64, 64)
    """

    def __init__(
        self, spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 1,
        channels: Sequence[int] = (16, 32, 64, 128, 256), dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.encoder = UNetEncoder(spatial_dims, in_channels, channels, dropout)
        self.decoder = UNetDecoder(spatial_dims, channels, out_channels, dropout)

    @property
    def output_layer(self) -> nn.Module:
        """The final 1x1 convolution (its bias holds the class prior)."""
        return self.decoder.out

    @property
    def divisor(self) -> int:
        """Input sizes must be multiples of this."""
        return self.encoder.divisor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, *spatial]`` -> logits ``[B, out_channels, *spatial]``."""
        return self.decoder(self.encoder(x))


class ChannelReductionProjector(nn.Module):
    """Projector of the contrastive branch: a fixed 1x1 channel reduction, pooling to a grid, an MLP.

    The channel-reduction layer belongs to the model: it is trained with the online network and its EMA copy
    serves the target. (The reference code draws a new random reduction layer at every step, so the target
    embedding changes meaning from step to step; CM-UNet's issue tracker calls that a flaw, and it is not
    reproduced here.)

    Args:
        in_channels: bottleneck channels.
        reduced_channels: channels after the 1x1 reduction.
        grid: spatial size the reduced map is average-pooled to before flattening (so any input size works).
        hidden_dim: MLP hidden width.
        out_dim: embedding size.
        spatial_dims: 2 or 3.
        trainable_reduction: train the reduction (default) or keep it frozen at its random initialisation
            (still one fixed layer of the model, shared by the online and target branches).
    """

    def __init__(
        self, in_channels: int, reduced_channels: int = 32, grid: int = 4, hidden_dim: int = 512,
        out_dim: int = 128, spatial_dims: int = 2, trainable_reduction: bool = True,
    ) -> None:
        super().__init__()
        if min(in_channels, reduced_channels, grid, hidden_dim, out_dim) < 1:
            raise ValueError("projector sizes must all be >= 1.")
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        pool = nn.AdaptiveAvgPool2d if spatial_dims == 2 else nn.AdaptiveAvgPool3d
        self.reduce = conv(in_channels, reduced_channels, kernel_size=1)
        self.reduce.requires_grad_(trainable_reduction)
        self.pool = pool(grid)
        flat = reduced_channels * grid**spatial_dims
        self.mlp = nn.Sequential(
            nn.Linear(flat, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, feats: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """Bottleneck map (or the encoder's list of maps; the last is used) -> ``[B, out_dim]``."""
        x = feats if isinstance(feats, torch.Tensor) else feats[-1]
        return self.mlp(self.pool(self.reduce(x)).flatten(1))


class MLPPredictor(nn.Module):
    """Predictor of the online branch: ``Linear -> BN -> ReLU -> Linear`` (BYOL-style, arXiv 2006.07733)."""

    def __init__(self, dim: int = 128, hidden_dim: int = 512) -> None:
        super().__init__()
        if dim < 1 or hidden_dim < 1:
            raise ValueError(f"dim and hidden_dim must be >= 1, got {dim}, {hidden_dim}.")
        self.net = nn.Sequential(
            nn.Linear(dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, dim)
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``[B, dim]`` -> ``[B, dim]``."""
        return self.net(z)


def cmunet_small(**overrides: object) -> CMUNet:
    """The bundle's U-Net: widths 16-32-64-128-256 (about 1.9 M parameters), one grey channel in, one logit out."""
    kwargs: dict[str, object] = {"spatial_dims": 2, "in_channels": 1, "out_channels": 1,
                                 "channels": (16, 32, 64, 128, 256)}
    kwargs.update(overrides)
    return CMUNet(**kwargs)  # type: ignore[arg-type]
