"""Exponential-moving-average target networks (BYOL, arXiv 2006.07733; I-JEPA/V-JEPA, arXiv 2301.08243)."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

__all__ = ["EMA", "momentum_schedule"]


def momentum_schedule(
    step: int, max_steps: int, start: float = 0.996, end: float = 1.0, kind: str = "linear"
) -> float:
    """EMA momentum at ``step`` of ``max_steps``, going from ``start`` to ``end``.

    Why: the target should move slowly at first and freeze by the end of training.

    - ``"linear"`` (I-JEPA / V-JEPA): ``m = start + (end - start) * step / max_steps``.
    - ``"cosine"`` (BYOL, arXiv 2006.07733):
      ``m = end - (end - start) * (cos(pi * step / max_steps) + 1) / 2``.

    ``step`` is clamped to ``[0, max_steps]``.

    Args:
        step: current step (0-based).
        max_steps: total number of steps (>= 1).
        start: momentum at step 0.
        end: momentum at ``max_steps``.
        kind: ``"linear"`` or ``"cosine"``.

    Returns:
        The momentum, a float.
    """
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}.")
    frac = min(max(step, 0), max_steps) / max_steps
    if kind == "linear":
        return start + (end - start) * frac
    if kind == "cosine":
        return end - (end - start) * (math.cos(math.pi * frac) + 1.0) / 2.0
    raise ValueError(f"kind must be 'linear' or 'cosine', got {kind!r}.")


class EMA(nn.Module):
    """A frozen copy of a module, updated as ``theta_t <- m * theta_t + (1 - m) * theta_o``.

    The copy never receives gradients (``requires_grad=False``) and buffers (e.g. BatchNorm statistics)
    are copied from the online module on every update.

    Args:
        module: the online module; it is deep-copied.

    Example::

        >>> target = EMA(encoder)
        >>> target.update(encoder, momentum=0.996)
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = copy.deepcopy(module)
        self.module.requires_grad_(False)

    @torch.no_grad()
    def update(self, online: nn.Module, momentum: float) -> None:
        """Move the target parameters towards ``online``'s and copy its buffers.

        Args:
            online: module with the same structure as the target.
            momentum: ``m`` in [0, 1]; 1 keeps the target, 0 copies the online weights.
        """
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must lie in [0, 1], got {momentum}.")
        tgt_params = list(self.module.parameters())
        on_params = list(online.parameters())
        if len(tgt_params) != len(on_params):
            raise ValueError("online module does not match the EMA target's structure.")
        if tgt_params:
            torch._foreach_mul_(tgt_params, momentum)
            torch._foreach_add_(tgt_params, [p.detach() for p in on_params], alpha=1.0 - momentum)
        for b_t, b_o in zip(self.module.buffers(), online.buffers(), strict=True):
            b_t.copy_(b_o)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the target module."""
        return self.module(*args, **kwargs)
