"""JEPA: predict EMA-encoder features of masked tokens from context tokens.

I-JEPA arXiv 2301.08243, V-JEPA arXiv 2404.08471; with optional N-JEPA position noise, 3-D localisation
and dispersive terms.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ...eval.representation import effective_rank_tensor
from ...losses.dispersive import dispersive_loss
from ...losses.jepa import jepa_loss
from ...losses.localisation import LocalisationHead, localisation_loss, token_coordinates
from .base import SSLMethod

__all__ = ["PosNoiseSchedule", "JEPA"]


class PosNoiseSchedule:
    """Std of the N-JEPA noise on the mask tokens' position embeddings, decaying over training.

    Why: noisy positions regularise the predictor early (N-JEPA, Qiu et al. 2025, arXiv 2507.15216); decaying
    to ``sigma_min`` lets it use exact positions at the end.

    - ``"constant"``: ``sigma_max``.
    - ``"linear"``: ``sigma_max + (sigma_min - sigma_max) * step / max_steps``.
    - ``"cosine"``: ``sigma_min + (sigma_max - sigma_min) * (1 + cos(pi * step / max_steps)) / 2``.

    Args:
        sigma_max: std at step 0.
        kind: ``"constant"``, ``"linear"`` or ``"cosine"``.
        sigma_min: std at ``max_steps``.
    """

    def __init__(self, sigma_max: float, kind: str = "cosine", sigma_min: float = 0.0) -> None:
        if sigma_max < 0 or sigma_min < 0:
            raise ValueError(f"noise stds must be >= 0, got {sigma_max}, {sigma_min}.")
        if kind not in ("constant", "linear", "cosine"):
            raise ValueError(f"kind must be constant, linear or cosine, got {kind!r}.")
        self.sigma_max, self.sigma_min, self.kind = float(sigma_max), float(sigma_min), kind

    def __call__(self, step: int, max_steps: int) -> float:
        """Std at ``step``."""
        if self.kind == "constant":
            return self.sigma_max
        frac = min(max(step, 0), max(max_steps, 1)) / max(max_steps, 1)
        if self.kind == "linear":
            return self.sigma_max + (self.sigma_min - self.sigma_max) * frac
        return self.sigma_min + (self.sigma_max - self.sigma_min) * (1.0 + math.cos(math.pi * frac)) / 2.0


_DEFAULT_WEIGHTS = {"pred": 1.0, "dispersive": 0.0}


class JEPA(SSLMethod):
    """Joint-embedding predictive architecture with an EMA target encoder.

    The online ``encoder`` sees only the context tokens; the EMA target encoder sees all tokens under
    ``no_grad``; targets are ``layer_norm(target)[target_idx]`` and the ``predictor`` is trained with L1.

    Args:
        encoder: contract encoder, ``forward(x, context_idx=None) -> [B, N or Nc, D]`` with ``grid_size``
            and ``hidden_size``.
        predictor: ``forward(context_tokens, context_idx, target_idx, pos_noise_std=0.0) -> [B, Nt, D]``.
        loss_weights: weights of ``"pred"`` (default 1) and ``"dispersive"`` (default 0: off; Wang & He
            2025, arXiv 2506.09027, on the flattened context features).
        loc_weight: weight of the 3-D localisation loss (Ellis et al., arXiv 2507.18424); 0 = no head.
        pos_noise: N-JEPA position-noise std: a float (constant) or a :class:`PosNoiseSchedule`; ``None`` = 0.
        ema_momentum: ``(start, end)`` of the target momentum schedule.
        ema_schedule: ``"linear"`` (V-JEPA default) or ``"cosine"``.
        dispersive_tau: temperature of the dispersive term.
        loc_hidden: width of the localisation MLP.
        dispersive_on: ``"samples"`` (the paper's: each sample's flattened context features is one point) or
            ``"tokens"`` (every context token is one point, at most ``dispersive_max_tokens`` of them, evenly
            strided): the second counters the collapse of all tokens onto a few directions within a clip.
        dispersive_max_tokens: bound on the points of the token-level term (its cost is quadratic).
        rank_every: log ``encoder_rank`` (the effective rank of the context tokens, a collapse monitor) on the
            first step and every ``rank_every`` steps; 0 = never.
    """

    def __init__(
        self,
        encoder: nn.Module,
        predictor: nn.Module,
        loss_weights: Mapping[str, float] | None = None,
        loc_weight: float = 0.0,
        pos_noise: float | PosNoiseSchedule | None = None,
        ema_momentum: tuple[float, float] = (0.996, 1.0),
        ema_schedule: str = "linear",
        dispersive_tau: float = 1.0,
        loc_hidden: int = 128,
        dispersive_on: str = "samples",
        dispersive_max_tokens: int = 1024,
        rank_every: int = 10,
    ) -> None:
        super().__init__(ema_momentum, ema_schedule)
        weights = dict(_DEFAULT_WEIGHTS)
        for key, val in (loss_weights or {}).items():
            if key not in weights:
                raise ValueError(f"unknown loss weight {key!r}; expected one of {sorted(weights)}.")
            weights[key] = float(val)
        self.loss_weights = weights
        self.loc_weight = float(loc_weight)
        self.dispersive_tau = float(dispersive_tau)
        if dispersive_on not in ("samples", "tokens"):
            raise ValueError(f"dispersive_on must be 'samples' or 'tokens', got {dispersive_on!r}.")
        self.dispersive_on = dispersive_on
        self.dispersive_max_tokens = int(dispersive_max_tokens)
        self.rank_every = int(rank_every)
        self._rank_due = self.rank_every > 0
        self.encoder = encoder
        self.predictor = predictor
        self.register_ema("encoder", "target_encoder")
        if isinstance(pos_noise, int | float):
            pos_noise = PosNoiseSchedule(float(pos_noise), kind="constant")
        self.pos_noise = pos_noise
        self.pos_noise_std: float = pos_noise(0, 1) if pos_noise is not None else 0.0
        self.loc_head: LocalisationHead | None = (
            LocalisationHead(int(encoder.hidden_size), loc_hidden) if self.loc_weight > 0 else None
        )

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """JEPA loss for a batch with ``image``, ``context_idx``, ``target_idx``."""
        x, ctx, tgt = self._check_tokens(batch)
        z = self.encoder(x, context_idx=ctx)
        noise = self.pos_noise_std if self.training else 0.0
        if self.pos_noise is None:  # predictors without the N-JEPA argument work too
            pred = self.predictor(z, ctx, tgt)
        else:
            pred = self.predictor(z, ctx, tgt, pos_noise_std=noise)
        with torch.no_grad():
            h = self.target_encoder(x)
        loss_pred = jepa_loss(pred, h, tgt)
        loss = self.loss_weights["pred"] * loss_pred
        out: dict[str, torch.Tensor] = {"loss_pred": loss_pred.detach()}
        if self.loc_head is not None:
            coords = token_coordinates(self.encoder.grid_size, ctx).to(z.dtype)
            loss_loc = localisation_loss(self.loc_head(z), coords)
            loss = loss + self.loc_weight * loss_loc
            out["loss_loc"] = loss_loc.detach()
        if self.loss_weights["dispersive"] > 0:
            points = z
            if self.dispersive_on == "tokens":
                points = z.reshape(-1, z.shape[-1])
                points = points[:: -(-points.shape[0] // self.dispersive_max_tokens)]
            loss_disp = dispersive_loss(points, self.dispersive_tau)
            loss = loss + self.loss_weights["dispersive"] * loss_disp
            out["loss_disp"] = loss_disp.detach()
        out["loss"] = loss
        out["pos_noise_std"] = torch.tensor(float(noise))
        if self._rank_due:  # collapse monitor, logged with the losses (no host sync)
            out["encoder_rank"] = effective_rank_tensor(z, max_tokens=2048)
        return out

    def on_step_end(self, step: int, max_steps: int) -> None:
        """EMA update and N-JEPA noise schedule."""
        super().on_step_end(step, max_steps)
        self._rank_due = self.rank_every > 0 and step % self.rank_every == 0
        if self.pos_noise is not None:
            self.pos_noise_std = self.pos_noise(step, max_steps)
