"""Signal Dice Similarity Coefficient.

Lee & Kang 2025, "SDSC: A Structure-Aware Metric for Semantic Signal Representation Learning",
arXiv 2507.14516.
"""

from __future__ import annotations

import torch
from torch.nn.modules.loss import _Loss

__all__ = ["sdsc", "soft_sdsc", "SDSCLoss"]


def _reduce_dims(x: torch.Tensor, reduce_batch: bool) -> tuple[int, ...]:
    return tuple(range(x.ndim)) if reduce_batch else tuple(range(1, x.ndim))


def _sdsc(
    x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor, reduce_batch: bool, eps: float
) -> torch.Tensor:
    dims = _reduce_dims(x, reduce_batch)
    inter = (gate * torch.minimum(x.abs(), y.abs())).sum(dim=dims)
    total = (x.abs() + y.abs()).sum(dim=dims)
    return 2.0 * inter / (total + eps)


def _check(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape:
        raise ValueError(
            f"SDSC expects signals of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}."
        )


def sdsc(x: torch.Tensor, y: torch.Tensor, reduce_batch: bool = False, eps: float = 1e-8) -> torch.Tensor:
    """SDSC metric ``2 sum H(x y) min(|x|, |y|) / sum(|x| + |y|)``, H the Heaviside step.

    Why: a bounded, polarity-aware similarity for signals: the overlap only counts where signs agree
    (arXiv 2507.14516). Identical -> 1, inverted -> 0, scaled by 0.5 -> 2/3.

    Args:
        x: signal ``[B, ...]``.
        y: signal, same shape.
        reduce_batch: sum over the batch as well and return one value; else one value per sample ``[B]``.
        eps: guards the division for all-zero signals.

    Returns:
        ``[B]`` or scalar in [0, 1].
    """
    _check(x, y)
    gate = (x * y > 0).to(x.dtype)
    return _sdsc(x, y, gate, reduce_batch, eps)


def soft_sdsc(
    x: torch.Tensor, y: torch.Tensor, alpha: float = 10.0, reduce_batch: bool = False, eps: float = 1e-8
) -> torch.Tensor:
    """Differentiable SDSC: the Heaviside replaced by ``sigmoid(alpha * x * y)`` (arXiv 2507.14516).

    Args:
        x: signal ``[B, ...]``.
        y: signal, same shape.
        alpha: sharpness of the sigmoid gate.
        reduce_batch: see :func:`sdsc`.
        eps: see :func:`sdsc`.

    Returns:
        ``[B]`` or scalar.
    """
    _check(x, y)
    gate = torch.sigmoid(alpha * x * y)
    return _sdsc(x, y, gate, reduce_batch, eps)


class SDSCLoss(_Loss):
    """``1 - soft SDSC`` averaged over the batch (arXiv 2507.14516).

    Args:
        alpha: sigmoid sharpness replacing the Heaviside (paper: differentiable approximation).
        eps: division guard.
    """

    def __init__(self, alpha: float = 10.0, eps: float = 1e-8) -> None:
        super().__init__()
        self.alpha = alpha
        self.eps = eps

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Return ``mean_b(1 - soft_sdsc(pred_b, target_b))``."""
        return (1.0 - soft_sdsc(pred, target, self.alpha, eps=self.eps)).mean()
