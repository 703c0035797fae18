"""medssl.eval.effective_rank: the label-free collapse check logged during JEPA pretraining."""

from __future__ import annotations

import pytest
import torch
from scipy.linalg import hadamard

from medssl.eval import effective_rank


@pytest.mark.parametrize("k", [1, 3, 8])
def test_k_equal_orthogonal_directions_have_rank_k(k: int) -> None:
    # columns 1..k of a Hadamard matrix: zero mean, orthogonal, equal norm -> k equal singular values
    h = torch.from_numpy(hadamard(16)).double()
    x = torch.cat([h[:, 1 : k + 1], torch.zeros(16, 20 - k, dtype=torch.float64)], dim=1)
    rot = torch.linalg.qr(torch.randn(20, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))[0]
    assert effective_rank(x @ rot) == pytest.approx(k, rel=1e-9)


def test_collapse_unequal_spectrum_and_degenerate_inputs() -> None:
    g = torch.Generator().manual_seed(0)
    direction = torch.randn(64, generator=g)
    collapsed = torch.randn(500, 1, generator=g) * direction + 5.0  # one direction plus a constant offset
    assert effective_rank(collapsed) == pytest.approx(1.0, abs=1e-6)
    # two directions with energies 0.9 / 0.1: exp(entropy) = exp(-(0.9 ln 0.9 + 0.1 ln 0.1)) = 1.384
    x = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    p = torch.tensor([0.9, 0.1], dtype=torch.float64)
    assert effective_rank(x) == pytest.approx(float(torch.exp(-(p * p.log()).sum())), rel=1e-6)
    assert effective_rank(torch.ones(10, 4)) == 0.0 and effective_rank(torch.ones(1, 4)) == 0.0
    # batched tokens [B, N, D] count every token; max_tokens keeps an even stride of rows
    iso = torch.randn(4, 256, 16, generator=g)
    assert 14.0 < effective_rank(iso) <= 16.0
    assert 12.0 < effective_rank(iso, max_tokens=128) <= 16.0
