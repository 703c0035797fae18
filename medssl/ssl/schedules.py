"""Step-based schedules for learning rates and other hyper-parameters."""

from __future__ import annotations

import math
from functools import partial

import torch

__all__ = ["warmup_cosine", "cosine_schedule", "warmup_cosine_scheduler"]


def warmup_cosine(step: int, max_steps: int, warmup: int, final_ratio: float = 0.0) -> float:
    """Multiplier for a linear warm-up followed by a cosine decay.

    Args:
        step: the current optimiser step (0-based: the step about to be taken).
        max_steps: the total number of steps of the run.
        warmup: the number of warm-up steps; the multiplier rises linearly to 1 over them.
        final_ratio: the multiplier reached at ``max_steps`` (for example ``min_lr / lr``).

    Returns:
        A factor in ``[final_ratio, 1]`` to multiply the base learning rate with.

    Examples::

        >>> warmup_cosine(0, 100, 10)
        0.1
        >>> warmup_cosine(10, 100, 10)
        1.0
        >>> warmup_cosine(100, 100, 10)
        0.0
    """
    if max_steps <= 0:
        raise ValueError(f"max_steps must be positive, got {max_steps}")
    warmup = max(0, int(warmup))
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_schedule(start: float, end: float, step: int, max_steps: int) -> float:
    """Cosine interpolation from ``start`` (step 0) to ``end`` (step ``max_steps`` and after).

    Used for values such as the EMA momentum (0.996 → 1.0) or weight decay.

    Examples::

        >>> cosine_schedule(0.996, 1.0, 0, 100)
        0.996
        >>> cosine_schedule(0.996, 1.0, 100, 100)
        1.0
    """
    if max_steps <= 0:
        return end
    progress = min(1.0, max(0.0, step / max_steps))
    return end - (end - start) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine_scheduler(
    optimizer: torch.optim.Optimizer, max_steps: int, warmup: int | None = None, final_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` that applies :func:`warmup_cosine`, stepped once per optimiser step.

    Args:
        optimizer: the optimiser whose learning rates to schedule.
        max_steps: the total number of steps.
        warmup: warm-up steps; default 5 % of ``max_steps``.
        final_ratio: the final learning-rate multiplier.
    """
    if warmup is None:
        warmup = max_steps // 20
    fn = partial(warmup_cosine, max_steps=max_steps, warmup=warmup, final_ratio=final_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
