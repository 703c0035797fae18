"""Base class of every self-supervised method (see docs/dev/core_contract.md)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..ema import EMA, momentum_schedule

__all__ = ["SSLMethod", "pool_tokens", "preview_image"]


def pool_tokens(features: torch.Tensor) -> torch.Tensor:
    """Mean-pool ``[B, N, D]`` tokens to ``[B, D]``; ``[B, D]`` passes through; other shapes flatten."""
    if features.ndim == 3:
        return features.mean(dim=1)
    if features.ndim == 2:
        return features
    return features.flatten(1)


@torch.no_grad()
def preview_image(x: torch.Tensor) -> torch.Tensor | None:
    """First sample of an image/video batch as a ``[C, H, W]`` image min-max scaled to [0, 1].

    Videos/volumes show their middle frame/slice; 1-D signals return ``None``; more than 3 channels keep
    the first.
    """
    if x.ndim < 4:
        return None
    img = x[0].detach().float()
    while img.ndim > 3:
        img = img[:, img.shape[1] // 2]
    if img.shape[0] not in (1, 3):
        img = img[:1]
    lo, hi = img.min(), img.max()
    return ((img - lo) / (hi - lo).clamp_min(1e-8)).cpu()


class SSLMethod(nn.Module):
    """A self-supervised objective wrapping an online ``encoder``.

    Subclasses implement :meth:`forward` returning ``{"loss": scalar with grads, ...detached scalars}``.
    EMA targets registered with :meth:`register_ema` are updated in :meth:`on_step_end` with
    :func:`~medssl.ssl.ema.momentum_schedule`.

    Args:
        ema_momentum: ``(start, end)`` of the momentum schedule.
        ema_schedule: ``"linear"`` (V-JEPA) or ``"cosine"`` (BYOL).
    """

    encoder: nn.Module

    def __init__(
        self, ema_momentum: tuple[float, float] = (0.996, 1.0), ema_schedule: str = "linear"
    ) -> None:
        super().__init__()
        self.ema_momentum = (float(ema_momentum[0]), float(ema_momentum[1]))
        self.ema_schedule = ema_schedule
        momentum_schedule(0, 1, *self.ema_momentum, kind=ema_schedule)  # validates kind early
        self._ema_pairs: list[tuple[str, str]] = []
        self.last_momentum: float = self.ema_momentum[0]

    def register_ema(self, online_name: str, target_name: str) -> EMA:
        """Create ``self.<target_name> = EMA(self.<online_name>)`` and update it in :meth:`on_step_end`."""
        online = getattr(self, online_name)
        target = EMA(online)
        setattr(self, target_name, target)
        self._ema_pairs.append((online_name, target_name))
        return target

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        """Compute the loss for one batch."""
        raise NotImplementedError

    def on_step_end(self, step: int, max_steps: int) -> None:
        """Update the EMA targets with the scheduled momentum (call after ``optimizer.step()``)."""
        m = momentum_schedule(step, max_steps, *self.ema_momentum, kind=self.ema_schedule)
        self.last_momentum = m
        for online_name, target_name in self._ema_pairs:
            getattr(self, target_name).update(getattr(self, online_name), m)

    def images(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Images for TensorBoard (``[C, H, W]`` in [0, 1]); default: the first input."""
        x = batch.get("image")
        if not isinstance(x, torch.Tensor):
            return {}
        img = preview_image(x)
        return {} if img is None else {"input": img}

    @staticmethod
    def _check_tokens(batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        for key in ("image", "context_idx", "target_idx"):
            if key not in batch:
                raise ValueError(f"batch needs {key!r} (add a MaskCollator); keys: {sorted(batch)}.")
        x, ctx, tgt = batch["image"], batch["context_idx"], batch["target_idx"]
        if ctx.ndim != 2 or tgt.ndim != 2 or ctx.shape[0] != x.shape[0] or tgt.shape[0] != x.shape[0]:
            raise ValueError(
                f"context_idx {tuple(ctx.shape)} and target_idx {tuple(tgt.shape)} must be [B, N] with "
                f"B = {x.shape[0]}."
            )
        return x, ctx, tgt
