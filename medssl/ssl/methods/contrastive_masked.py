"""Contrastive-masked pretraining (CM-UNet style, generic).

Masked-image reconstruction plus InfoNCE between the online predictor and an EMA target projector.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...losses.contrastive import info_nce
from .base import SSLMethod

__all__ = ["random_patch_pixel_mask", "ContrastiveMasked"]


def random_patch_pixel_mask(
    shape: Sequence[int],
    patch_size: int | Sequence[int],
    mask_ratio: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random patch-wise pixel mask ``[B, 1, *spatial]``, 1 = masked, exactly ``round(ratio * N)`` patches.

    Args:
        shape: image batch shape ``[B, C, *spatial]``; spatial sizes divisible by ``patch_size``.
        patch_size: patch edge (int) or one per spatial dim.
        mask_ratio: fraction of patches masked, in [0, 1).
        generator: optional RNG.

    Returns:
        Float tensor of 0/1.
    """
    b, spatial = int(shape[0]), [int(s) for s in shape[2:]]
    ps = [int(patch_size)] * len(spatial) if isinstance(patch_size, int) else [int(p) for p in patch_size]
    if len(ps) != len(spatial) or any(s % p for s, p in zip(spatial, ps, strict=True)):
        raise ValueError(f"spatial size {spatial} must be divisible by patch size {ps}.")
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must lie in [0, 1), got {mask_ratio}.")
    grid = [s // p for s, p in zip(spatial, ps, strict=True)]
    n = 1
    for g in grid:
        n *= g
    n_mask = int(round(mask_ratio * n))
    ranks = torch.rand(b, n, generator=generator).argsort(dim=1).argsort(dim=1)
    m = (ranks < n_mask).float().reshape(b, 1, *grid)
    for d, p in enumerate(ps):
        m = m.repeat_interleave(p, dim=2 + d)
    return m


class ContrastiveMasked(SSLMethod):
    """Masked reconstruction + InfoNCE(online predictor, EMA target projector).

    The online encoder sees the masked image (masked patches set to 0); the EMA target encoder sees the full
    image, or ``batch[target_key]`` when the batch carries a separate target view (CM-UNet, arXiv 2507.17779:
    a shifted, noisier copy made in the data loader). Generic over any encoder: ``projector`` must map the
    encoder output to ``[B, D]`` (pool inside it if needed) and ``decoder`` (optional) the encoder output back
    to the image shape.

    Args:
        encoder: online encoder, ``encoder(x) -> features`` (any type the projector/decoder accept).
        projector: ``features -> [B, D]``.
        predictor: ``[B, D] -> [B, D]``.
        decoder: ``features -> image`` or ``None`` (contrastive only).
        mask_ratio: fraction of patches masked.
        patch_size: masking patch size.
        temperature: InfoNCE temperature.
        recon_weight: weight of the reconstruction MSE (masked pixels only).
        contrastive_weight: weight of InfoNCE.
        symmetric: symmetric InfoNCE.
        ema_momentum: ``(start, end)`` momentum schedule.
        ema_schedule: ``"linear"`` or ``"cosine"``.
        target_key: batch key of the optional target view (same shape as ``image``).

    With ``contrastive_weight=0`` the contrastive branch is skipped (reconstruction only: the "MAE-only"
    ablation with the same network).
    """

    def __init__(
        self,
        encoder: nn.Module,
        projector: nn.Module,
        predictor: nn.Module,
        decoder: nn.Module | None = None,
        mask_ratio: float = 0.5,
        patch_size: int | Sequence[int] = 16,
        temperature: float = 0.1,
        recon_weight: float = 1.0,
        contrastive_weight: float = 1.0,
        symmetric: bool = True,
        ema_momentum: tuple[float, float] = (0.996, 1.0),
        ema_schedule: str = "cosine",
        target_key: str = "target_image",
    ) -> None:
        super().__init__(ema_momentum, ema_schedule)
        if decoder is None and recon_weight > 0:
            recon_weight = 0.0
        self.encoder = encoder
        self.projector = projector
        self.predictor = predictor
        self.decoder = decoder
        self.mask_ratio = mask_ratio
        self.patch_size = patch_size
        self.temperature = temperature
        self.recon_weight = recon_weight
        self.contrastive_weight = contrastive_weight
        self.symmetric = symmetric
        self.target_key = target_key
        self.find_unused_parameters = contrastive_weight == 0  # DDP: projector/predictor then get no grads
        self.register_ema("encoder", "target_encoder")
        self.register_ema("projector", "target_projector")

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Loss for a batch with ``image`` (and optionally a pixel ``mask``, 1 = masked)."""
        x = batch["image"]
        mask = batch.get("mask")
        if mask is None:
            mask = random_patch_pixel_mask(x.shape, self.patch_size, self.mask_ratio).to(x.device, x.dtype)
        if mask.shape[0] != x.shape[0] or mask.shape[2:] != x.shape[2:]:
            raise ValueError(f"mask {tuple(mask.shape)} does not match image {tuple(x.shape)}.")
        feats = self.encoder(x * (1.0 - mask))
        loss = x.new_zeros(())
        out: dict[str, torch.Tensor] = {}
        if self.contrastive_weight > 0:
            x_t = batch.get(self.target_key, x)
            if x_t.shape != x.shape:
                raise ValueError(f"{self.target_key} {tuple(x_t.shape)} must match image {tuple(x.shape)}.")
            q = self.predictor(self.projector(feats))
            with torch.no_grad():
                k = self.target_projector(self.target_encoder(x_t))
            loss_nce = info_nce(q.float(), k.detach().float(), self.temperature, self.symmetric)
            loss = loss + self.contrastive_weight * loss_nce
            out["loss_nce"] = loss_nce.detach()
        if self.decoder is not None and self.recon_weight > 0:
            recon = self.decoder(feats)
            if recon.shape != x.shape:
                raise ValueError(f"decoder output {tuple(recon.shape)} must match image {tuple(x.shape)}.")
            m = mask.expand_as(x)
            loss_rec = (F.mse_loss(recon.float(), x.float(), reduction="none") * m).sum() / m.sum().clamp_min(1.0)
            loss = loss + self.recon_weight * loss_rec
            out["loss_rec"] = loss_rec.detach()
        out["loss"] = loss
        return out
