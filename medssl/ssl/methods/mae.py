"""Masked autoencoder (He et al. 2022, arXiv 2111.06377): reconstruct masked patches from the visible ones."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ...losses.jepa import gather_tokens
from ...losses.reconstruction import masked_reconstruction_loss
from .base import SSLMethod, preview_image

__all__ = ["MAE"]

ExtraTargets = Callable[[dict[str, Any], torch.Tensor, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]


def _default_patchify(x: torch.Tensor, encoder: nn.Module) -> torch.Tensor:
    from ...networks import patchify  # imported lazily: medssl.networks is built alongside

    return patchify(x, encoder)


def _default_unpatchify(tokens: torch.Tensor, encoder: nn.Module) -> torch.Tensor:
    from ...networks import unpatchify

    return unpatchify(tokens, encoder)


class MAE(SSLMethod):
    """MAE with masked MSE on (optionally per-patch normalised) pixels.

    Args:
        encoder: contract encoder (``forward(x, context_idx)``); visible tokens = ``context_idx``.
        decoder: ``forward(context_tokens, context_idx, target_idx) -> [B, Nt, patch_dim]``.
        norm_pix: per-patch normalised targets (MAE's better default).
        extra_targets: optional hook ``f(batch, pred, target_patches, target_idx) -> {name: loss}``; each
            returned scalar is added to the loss and logged (e.g. an ECG frequency-domain term).
        patchify_fn: ``f(x, encoder) -> [B, N, patch_dim]``; default ``medssl.networks.patchify``.
        unpatchify_fn: its inverse, used only by :meth:`images`; default ``medssl.networks.unpatchify``.
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        norm_pix: bool = True,
        extra_targets: ExtraTargets | None = None,
        patchify_fn: Callable[[torch.Tensor, nn.Module], torch.Tensor] | None = None,
        unpatchify_fn: Callable[[torch.Tensor, nn.Module], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.norm_pix = norm_pix
        self.extra_targets = extra_targets
        self.patchify_fn = patchify_fn or _default_patchify
        self.unpatchify_fn = unpatchify_fn or _default_unpatchify

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Masked MSE for a batch with ``image``, ``context_idx``, ``target_idx``."""
        x, ctx, tgt = self._check_tokens(batch)
        z = self.encoder(x, context_idx=ctx)
        pred = self.decoder(z, ctx, tgt)
        with torch.no_grad():
            target = gather_tokens(self.patchify_fn(x, self.encoder), tgt)
        loss_rec = masked_reconstruction_loss(pred, target, norm_pix=self.norm_pix)
        loss = loss_rec
        out: dict[str, torch.Tensor] = {"loss_rec": loss_rec.detach()}
        if self.extra_targets is not None:
            for name, val in self.extra_targets(batch, pred, target, tgt).items():
                loss = loss + val
                out[f"loss_{name}"] = val.detach()
        out["loss"] = loss
        return out

    @torch.no_grad()
    def images(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Input, masked input and reconstruction of the first sample (``[C, H, W]`` in [0, 1]).

        With ``norm_pix`` the predicted patches are mapped back with each true patch's mean and std, as in
        the MAE paper's figures.
        """
        x, ctx, tgt = self._check_tokens(batch)
        x, ctx, tgt = x[:1], ctx[:1], tgt[:1]
        patches = self.patchify_fn(x, self.encoder)
        pred = self.decoder(self.encoder(x, context_idx=ctx), ctx, tgt).to(patches.dtype)
        true_t = gather_tokens(patches, tgt)
        if self.norm_pix:
            mean = true_t.mean(dim=-1, keepdim=True)
            std = torch.sqrt(true_t.var(dim=-1, unbiased=False, keepdim=True) + 1e-6)
            pred = pred * std + mean
        index = tgt.unsqueeze(-1).expand(-1, -1, patches.shape[-1])
        masked = patches.scatter(1, index, torch.zeros_like(pred))
        recon = patches.scatter(1, index, pred)
        out = {}
        for name, img in (
            ("input", x),
            ("masked", self.unpatchify_fn(masked, self.encoder)),
            ("reconstruction", self.unpatchify_fn(recon, self.encoder)),
        ):
            prev = preview_image(img)
            if prev is not None:
                out[name] = prev
        return out
