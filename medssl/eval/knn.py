"""k-nearest-neighbour evaluation on frozen features (cosine similarity)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

__all__ = ["knn_predict"]


@torch.no_grad()
def knn_predict(
    train_features: torch.Tensor | np.ndarray,
    train_labels: torch.Tensor | np.ndarray,
    test_features: torch.Tensor | np.ndarray,
    k: int = 20,
    temperature: float = 0.07,
    weighting: str = "temperature",
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Class scores of test samples from their ``k`` most cosine-similar training samples.

    Args:
        train_features: ``[N, D]``.
        train_labels: ``[N]`` integer classes, or ``[N, C]`` binary multi-label targets.
        test_features: ``[M, D]``.
        k: neighbours (capped at ``N``).
        temperature: for ``weighting="temperature"``: votes weighted by ``exp(similarity / temperature)``
            as in DINO.
        weighting: ``"temperature"`` or ``"majority"`` (equal votes).
        num_classes: number of classes for integer labels; default ``max + 1``.
        chunk_size: test samples per similarity block (bounds memory).

    Returns:
        ``[M, C]`` scores that sum to 1 per row for single-label input (vote shares); for multi-label input
        the weighted mean of the neighbours' label vectors.
    """
    if weighting not in ("temperature", "majority"):
        raise ValueError(f"weighting must be 'temperature' or 'majority', got {weighting!r}")
    tr = F.normalize(torch.as_tensor(train_features, dtype=torch.float32), dim=1)
    te = F.normalize(torch.as_tensor(test_features, dtype=torch.float32), dim=1)
    y = torch.as_tensor(train_labels)
    if y.ndim == 1:
        c = num_classes or int(y.max().item()) + 1
        targets = F.one_hot(y.long(), c).float()
    else:
        targets = y.float()
    k = min(k, tr.shape[0])
    out = []
    for start in range(0, te.shape[0], chunk_size):
        sim = te[start : start + chunk_size] @ tr.T
        top_sim, top_idx = sim.topk(k, dim=1)
        w = (top_sim / temperature).exp() if weighting == "temperature" else torch.ones_like(top_sim)
        votes = (w[..., None] * targets[top_idx]).sum(1)
        out.append(votes / w.sum(1, keepdim=True))
    return torch.cat(out)
