"""Continual latent alignment (CLA) for online continual pretraining.

Keeps the current encoder's latents close to those of a frozen past snapshot on the same inputs, limiting
forgetting (Cignoni et al. 2025, "CLA: Latent Alignment for Online Continual Self-Supervised Learning",
arXiv 2507.10434).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import SSLMethod

__all__ = ["CLA"]


class CLA(SSLMethod):
    """Wrap an :class:`SSLMethod` and add ``cla_weight * alignment(current, past)``.

    The alignment is ``1 - cos`` per token (over the feature dim) averaged over tokens and batch when
    ``distance="cosine"`` (scale-free, so the online objective may still rescale features), or the MSE of
    the latents when ``distance="mse"`` (stricter: pins the scale too). The past encoder is a frozen copy,
    refreshed with :meth:`snapshot` (e.g. at each task/stream boundary).

    Args:
        method: the wrapped method (its ``encoder`` is aligned).
        cla_weight: weight of the alignment term.
        distance: ``"cosine"`` or ``"mse"``.
        input_key: batch key fed to both encoders.
    """

    def __init__(
        self, method: SSLMethod, cla_weight: float = 1.0, distance: str = "cosine", input_key: str = "image"
    ) -> None:
        super().__init__()
        if distance not in ("cosine", "mse"):
            raise ValueError(f"distance must be 'cosine' or 'mse', got {distance!r}.")
        self.method = method
        self.cla_weight = float(cla_weight)
        self.distance = distance
        self.input_key = input_key
        self.past_encoder: nn.Module = self._frozen_copy()

    @property
    def encoder(self) -> nn.Module:  # type: ignore[override]
        """The wrapped method's online encoder."""
        return self.method.encoder

    def _frozen_copy(self) -> nn.Module:
        past = copy.deepcopy(self.method.encoder)
        past.requires_grad_(False)
        past.eval()
        return past

    @torch.no_grad()
    def snapshot(self) -> None:
        """Refresh the past encoder from the current online encoder."""
        self.past_encoder.load_state_dict(self.method.encoder.state_dict())

    def train(self, mode: bool = True) -> CLA:
        """Train mode for the wrapped method; the past encoder stays in eval mode."""
        super().train(mode)
        self.past_encoder.eval()
        return self

    def alignment(self, current: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
        """Alignment loss between current and past latents of the same shape ``[B, ..., D]``."""
        if current.shape != past.shape:
            raise ValueError(f"latents differ in shape: {tuple(current.shape)} vs {tuple(past.shape)}.")
        if self.distance == "cosine":
            return (1.0 - F.cosine_similarity(current, past.detach(), dim=-1)).mean()
        return F.mse_loss(current, past.detach())

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The wrapped method's outputs, with the alignment term added to ``"loss"``."""
        out = dict(self.method(batch))
        x = batch[self.input_key]
        with torch.no_grad():
            past = self.past_encoder(x)
        loss_cla = self.alignment(self.method.encoder(x), past)
        out["loss"] = out["loss"] + self.cla_weight * loss_cla
        out["loss_cla"] = loss_cla.detach()
        return out

    def on_step_end(self, step: int, max_steps: int) -> None:
        """Delegate to the wrapped method (EMA etc.)."""
        self.method.on_step_end(step, max_steps)

    def images(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The wrapped method's images."""
        return self.method.images(batch)
