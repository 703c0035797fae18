"""BYOL (Grill et al. 2020, arXiv 2006.07733): predict an EMA target's projection of another view."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...losses.contrastive import byol_loss
from .base import SSLMethod, pool_tokens, preview_image

__all__ = ["MLP", "BYOL"]


class MLP(nn.Sequential):
    """BYOL projector/predictor: Linear -> BatchNorm1d -> ReLU -> Linear."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__(
            nn.Linear(in_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )


class _Embed(nn.Module):
    """Encoder + token pooling + projector, so one EMA covers the whole target branch."""

    def __init__(self, encoder: nn.Module, projector: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = projector

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(pool_tokens(self.encoder(x)))


class BYOL(SSLMethod):
    """BYOL with symmetric ``2 - 2 cos`` loss over ``batch["view1"]`` and ``batch["view2"]``.

    Args:
        encoder: ``encoder(x) -> [B, N, D]`` (mean-pooled) or ``[B, D]``.
        feature_dim: encoder output dim; default ``encoder.hidden_size``.
        projection_dim: projector output dim.
        hidden_dim: MLP hidden width.
        ema_momentum: ``(start, end)``; BYOL uses 0.996 -> 1 with a cosine schedule.
        ema_schedule: ``"cosine"`` (BYOL) or ``"linear"``.
    """

    def __init__(
        self,
        encoder: nn.Module,
        feature_dim: int | None = None,
        projection_dim: int = 256,
        hidden_dim: int = 4096,
        ema_momentum: tuple[float, float] = (0.996, 1.0),
        ema_schedule: str = "cosine",
    ) -> None:
        super().__init__(ema_momentum, ema_schedule)
        dim = int(feature_dim if feature_dim is not None else encoder.hidden_size)
        self.online = _Embed(encoder, MLP(dim, hidden_dim, projection_dim))
        self.predictor = MLP(projection_dim, hidden_dim, projection_dim)
        self.register_ema("online", "target")

    @property
    def encoder(self) -> nn.Module:  # type: ignore[override]
        """The online encoder."""
        return self.online.encoder

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Symmetric BYOL loss."""
        for key in ("view1", "view2"):
            if key not in batch:
                raise ValueError(f"BYOL needs batch[{key!r}] (two augmented views); keys: {sorted(batch)}.")
        v1, v2 = batch["view1"], batch["view2"]
        if v1.shape != v2.shape:
            raise ValueError(f"views must have the same shape, got {tuple(v1.shape)} and {tuple(v2.shape)}.")
        p1 = self.predictor(self.online(v1))
        p2 = self.predictor(self.online(v2))
        with torch.no_grad():
            t1, t2 = self.target(v1), self.target(v2)
        loss = byol_loss(p1, t2) + byol_loss(p2, t1)
        return {"loss": loss}

    def images(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The two views of the first sample."""
        out = {}
        for key in ("view1", "view2"):
            img = preview_image(batch[key]) if key in batch else None
            if img is not None:
                out[key] = img
        return out
