"""CM-UNet pretraining (Challier et al., arXiv 2507.17779) as a configuration of :class:`ContrastiveMasked`.

- Online branch: the U-Net encoder sees the image with random 16x16 patches zeroed (ratio 0.65); a pixel
  decoder reconstructs it (MSE on the masked patches of the per-image normalised image) and a projector +
  predictor give the query.
- Target branch: EMA copies of the encoder and projector (momentum 0.996 -> 1) see a second view, shifted by
  up to 31 px and, with p = 0.5, with Gaussian noise; their projection is the key.
- Loss: ``L = L_rec + L_con`` with ``L_con`` = InfoNCE (tau = 0.07) on the l2-normalised query and key, the
  other images of the batch being the negatives.

The views and the mask are made per sample in the data loader (:class:`CMUNetViews`), never on the GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ...networks.cmunet import ChannelReductionProjector, MLPPredictor, UNetDecoder, UNetEncoder
from .contrastive_masked import ContrastiveMasked, random_patch_pixel_mask

__all__ = ["RandomShiftNoise", "CMUNetViews", "build_cmunet_pretraining"]


class RandomShiftNoise:
    """The target view: a random shift of up to ``max_shift`` px, then Gaussian noise with ``noise_prob``.

    The shift is reflect-padded; the noise has standard deviation ``noise_std`` (in image units).

    Args:
        max_shift: largest shift in pixels along each axis (CM-UNet: 31).
        noise_prob: probability of adding noise (CM-UNet: 0.5).
        noise_std: noise standard deviation (the images are z-scored, so 0.1 = 10 % of their spread).

    Runs on CPU tensors ``[C, H, W]`` with the global torch RNG (seeded per sample by ``make_loader``).
    """

    def __init__(self, max_shift: int = 31, noise_prob: float = 0.5, noise_std: float = 0.1) -> None:
        if max_shift < 0:
            raise ValueError(f"max_shift must be >= 0, got {max_shift}.")
        if not 0.0 <= noise_prob <= 1.0:
            raise ValueError(f"noise_prob must lie in [0, 1], got {noise_prob}.")
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}.")
        self.max_shift = int(max_shift)
        self.noise_prob = float(noise_prob)
        self.noise_std = float(noise_std)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Shifted (and maybe noisy) copy of ``x`` ``[C, H, W]``, same shape."""
        if x.ndim != 3:
            raise ValueError(f"expected [C, H, W], got {tuple(x.shape)}.")
        s = min(self.max_shift, x.shape[1] - 1, x.shape[2] - 1)
        out = x
        if s > 0:
            dy, dx = (int(v) for v in torch.randint(-s, s + 1, (2,)))
            padded = F.pad(x[None], (s, s, s, s), mode="reflect")[0]
            h, w = x.shape[1:]
            out = padded[:, s + dy : s + dy + h, s + dx : s + dx + w]
        if self.noise_std > 0 and float(torch.rand(())) < self.noise_prob:
            out = out + self.noise_std * torch.randn_like(out)
        return out.contiguous()


class CMUNetViews:
    """Dictionary transform: adds ``target_image`` (:class:`RandomShiftNoise`) and the patch ``mask``.

    Args:
        patch_size: masking patch edge (CM-UNet: 16).
        mask_ratio: fraction of patches masked (CM-UNet: 0.65).
        target_view: the target-view transform.
        key: the image key.
    """

    def __init__(
        self, patch_size: int = 16, mask_ratio: float = 0.65, target_view: RandomShiftNoise | None = None,
        key: str = "image",
    ) -> None:
        self.patch_size = patch_size
        self.mask_ratio = mask_ratio
        self.target_view = target_view or RandomShiftNoise()
        self.key = key

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        """``{"image": [C, H, W]}`` -> plus ``target_image`` ``[C, H, W]`` and ``mask`` ``[1, H, W]`` (1 = masked)."""
        x = sample[self.key]
        out = dict(sample)
        out["target_image"] = self.target_view(x)
        out["mask"] = random_patch_pixel_mask((1, *x.shape), self.patch_size, self.mask_ratio)[0]
        return out


def build_cmunet_pretraining(
    channels: Sequence[int] = (16, 32, 64, 128, 256),
    in_channels: int = 1,
    spatial_dims: int = 2,
    mask_ratio: float = 0.65,
    patch_size: int = 16,
    temperature: float = 0.07,
    contrastive_weight: float = 1.0,
    recon_weight: float = 1.0,
    reduced_channels: int = 32,
    projection_dim: int = 128,
    hidden_dim: int = 512,
    ema_momentum: tuple[float, float] = (0.996, 1.0),
    trainable_reduction: bool = True,
) -> ContrastiveMasked:
    """CM-UNet pretraining: U-Net encoder + pixel decoder + channel-reduction projector + predictor, EMA target.

    ``contrastive_weight=0`` gives the MAE-only ablation with the same network (reconstruction only).

    Args:
        channels: U-Net widths (must match the fine-tuning :class:`~medssl.networks.CMUNet`).
        in_channels: image channels.
        spatial_dims: 2.
        mask_ratio: fraction of 16x16 patches masked.
        patch_size: masking patch edge.
        temperature: InfoNCE temperature.
        contrastive_weight: weight of InfoNCE (0 = MAE-only).
        recon_weight: weight of the masked MSE.
        reduced_channels: channels of the projector's fixed 1x1 reduction.
        projection_dim: embedding size.
        hidden_dim: projector / predictor hidden width.
        ema_momentum: ``(start, end)`` of the EMA momentum (cosine schedule).
        trainable_reduction: train the projector's 1x1 channel reduction, or freeze it at its initialisation.

    Returns:
        A :class:`ContrastiveMasked` whose ``encoder`` is a :class:`~medssl.networks.UNetEncoder`.
    """
    encoder = UNetEncoder(spatial_dims, in_channels, channels)
    decoder = UNetDecoder(spatial_dims, channels, in_channels)
    projector = ChannelReductionProjector(
        encoder.out_channels, reduced_channels, grid=4, hidden_dim=hidden_dim, out_dim=projection_dim,
        spatial_dims=spatial_dims, trainable_reduction=trainable_reduction,
    )
    predictor = MLPPredictor(projection_dim, hidden_dim)
    return ContrastiveMasked(
        encoder, projector, predictor, decoder, mask_ratio=mask_ratio, patch_size=patch_size,
        temperature=temperature, recon_weight=recon_weight, contrastive_weight=contrastive_weight,
        symmetric=False, ema_momentum=ema_momentum, ema_schedule="cosine",
    )
