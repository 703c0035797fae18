"""Label-free checks of a representation (torch only, cheap enough to log every training step)."""

from __future__ import annotations

import torch

__all__ = ["effective_rank", "effective_rank_tensor"]


@torch.no_grad()
def effective_rank_tensor(tokens: torch.Tensor, max_tokens: int | None = None) -> torch.Tensor:
    """:func:`effective_rank` as a 0-d tensor on the tokens' device, without a host synchronisation.

    For logging inside a training step (the trainer keeps scalars on the device until it flushes them).
    """
    x = tokens.detach().reshape(-1, tokens.shape[-1])
    if max_tokens is not None and x.shape[0] > max_tokens:
        x = x[:: -(-x.shape[0] // max_tokens)]
    if x.shape[0] < 2:
        return torch.zeros((), device=x.device)
    x = x.double()
    energy = torch.linalg.svdvals(x - x.mean(0)) ** 2
    total = energy.sum()
    p = energy / total.clamp_min(1e-300)
    rank = torch.exp(-(p * p.clamp_min(1e-30).log()).sum())
    return torch.where(total > 0, rank, torch.zeros_like(rank)).float()


def effective_rank(tokens: torch.Tensor, max_tokens: int | None = None) -> float:
    """Effective rank (Roy & Vetterli 2007) of centred token features.

    ``exp`` of the entropy of the normalised singular-value energies ``p_i = s_i^2 / sum_j s_j^2``. A collapse
    check that needs no labels: about 1 when every token maps to (nearly) the same direction, ``k`` when the
    features spread evenly over ``k`` orthogonal directions, at most ``min(n_tokens, dim)``.

    Args:
        tokens: ``[..., D]`` features; every leading index is one sample.
        max_tokens: use at most this many rows, evenly strided (bounds the SVD's cost on large batches).

    Returns:
        The effective rank as a float (0.0 for fewer than two tokens or all-equal features).
    """
    return float(effective_rank_tensor(tokens, max_tokens))
