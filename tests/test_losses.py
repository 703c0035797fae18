"""Losses against values worked out by hand from each paper's formula (arithmetic in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

from medssl.losses import (
    BYOLLoss,
    DispersiveLoss,
    InfoNCELoss,
    JEPALoss,
    LocalisationHead,
    LocalisationLoss,
    MaskedReconstructionLoss,
    SDSCLoss,
    byol_loss,
    dispersive_loss,
    info_nce,
    masked_reconstruction_loss,
    sdsc,
    soft_sdsc,
    token_coordinates,
)

T = torch.tensor


# ---------------------------------------------------------------- JEPA (V-JEPA, arXiv 2404.08471)
def test_jepa_l1_vs_layernormed_targets():
    # target tokens (D = 2): t0 = [1, 3] -> mean 2, var 1 -> LN = [-1, 1] / sqrt(1 + 1e-5)
    #                         t1 = [4, 0] -> mean 2, var 4 -> LN = [1, -1] * 2 / sqrt(4 + 1e-5)
    #                         t2 = [5, 5] -> var 0 -> LN = [0, 0]
    target = T([[[1.0, 3.0], [4.0, 0.0], [5.0, 5.0]]])
    target_idx = T([[2, 0]])  # -> [0, 0] and ~[-1, 1]
    pred = T([[[0.5, 0.5], [-1.0, 0.0]]])
    # |0.5-0| + |0.5-0| + |-1+0.999995| + |0-0.999995| = 0.5 + 0.5 + 0.000005 + 0.999995 = 2.0; / 4 = 0.5
    loss = JEPALoss()(pred, target, target_idx)
    assert loss.item() == pytest.approx(0.5, abs=1e-5)
    # without normalisation: targets [5, 5], [1, 3]: |0.5-5|*2 + |-1-1| + |0-3| = 9 + 2 + 3 = 14; / 4 = 3.5
    assert JEPALoss(normalize_targets=False)(pred, target, target_idx).item() == pytest.approx(3.5)


def test_jepa_target_gets_no_gradient_and_shape_check():
    target = torch.randn(2, 5, 4, requires_grad=True)
    pred = torch.randn(2, 3, 4, requires_grad=True)
    JEPALoss()(pred, target, T([[0, 1, 2], [2, 3, 4]])).backward()
    assert target.grad is None and pred.grad is not None
    with pytest.raises(ValueError, match="same shape"):
        JEPALoss()(torch.randn(2, 2, 4), target, T([[0, 1, 2], [2, 3, 4]]))


# ---------------------------------------------------------------- MAE (arXiv 2111.06377)
def test_masked_reconstruction_norm_pix_and_plain():
    # p1 = [0, 0, 2, 2]: mean 1, var 1; p2 = [1, 2, 3, 4]: mean 2.5, var (2.25+.25+.25+2.25)/4 = 1.25
    target = T([[[0.0, 0.0, 2.0, 2.0], [1.0, 2.0, 3.0, 4.0]]])
    pred = torch.zeros(1, 2, 4)
    # norm_pix: p1 -> [-1,-1,1,1]/sqrt(1+1e-6): MSE vs 0 = 1/(1+1e-6);
    #           p2 -> [-1.5,-.5,.5,1.5]/sqrt(1.25+1e-6): MSE = (5/4)/(1.25+1e-6) = 1/(1+8e-7)
    expected = (1 / (1 + 1e-6) + 1 / (1 + 8e-7)) / 2
    assert MaskedReconstructionLoss()(pred, target).item() == pytest.approx(expected, rel=1e-6)
    # plain: p1 (0+0+4+4)/4 = 2; p2 (1+4+9+16)/4 = 7.5; mean 4.75
    assert masked_reconstruction_loss(pred, target, norm_pix=False).item() == pytest.approx(4.75)
    # mask keeps only p1 -> 2
    assert masked_reconstruction_loss(pred, target, T([[1, 0]]), norm_pix=False).item() == pytest.approx(2.0)
    with pytest.raises(ValueError):
        masked_reconstruction_loss(pred, target[:, :1])


# ---------------------------------------------------------------- InfoNCE / BYOL
def test_info_nce_hand_values():
    # q normalised = [[1,0],[0,1]], k = [[1,0],[1,1]] -> [[1,0],[.7071,.7071]], tau = 1
    q, k = T([[3.0, 0.0], [0.0, 2.0]]), T([[1.0, 0.0], [1.0, 1.0]])
    # logits = [[1, .7071], [0, .7071]]; row0: -1 + log(e + e^.7071) = 0.5573858
    #                                     row1: -.7071 + log(1 + e^.7071) = 0.4008335; mean 0.4791096
    assert info_nce(q, k, temperature=1.0).item() == pytest.approx(0.4791096, abs=1e-5)
    # transposed logits [[1, 0], [.7071, .7071]]: row0 -1 + log(e + 1) = 0.3132617, row1 log 2 = 0.6931472
    # -> 0.5032044; symmetric = (0.4791096 + 0.5032044) / 2 = 0.4911570
    assert InfoNCELoss(1.0, symmetric=True)(q, k).item() == pytest.approx(0.4911570, abs=1e-5)
    # identity pairs, tau = 0.5: logits diag 2, off 0 -> log(1 + e^-2) = 0.1269280
    eye = torch.eye(2)
    assert info_nce(eye, eye, temperature=0.5).item() == pytest.approx(0.1269280, abs=1e-6)
    with pytest.raises(ValueError):
        info_nce(q, k, temperature=0.0)


def test_byol_cosine_loss():
    # cos([1,0],[0,1]) = 0 -> 2; cos([1,1],[2,0]) = 1/sqrt2 -> 2 - sqrt2 = 0.5857864; mean 1.2928932
    p, z = T([[1.0, 0.0], [1.0, 1.0]]), T([[0.0, 1.0], [2.0, 0.0]])
    assert BYOLLoss()(p, z).item() == pytest.approx(1.2928932, abs=1e-6)
    assert byol_loss(z, z).item() == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------- Dispersive (arXiv 2506.09027)
def test_dispersive_loss_hand_value():
    # z0 = [0,0], z1 = [1,1]; D = 2, tau = 1; ||z_i - z_j||^2 = [[0, 2], [2, 0]]
    # exp(-d/(D tau)) = [[1, e^-1], [e^-1, 1]]; mean = (1 + e^-1)/2 = 0.6839397; log = -0.3798855
    z = T([[0.0, 0.0], [1.0, 1.0]])
    assert DispersiveLoss(tau=1.0)(z).item() == pytest.approx(-0.3798855, abs=1e-6)
    # a collapsed batch gives log(1) = 0, the maximum; spreading the samples lowers it
    assert dispersive_loss(torch.ones(4, 3)).item() == pytest.approx(0.0, abs=1e-6)
    assert dispersive_loss(torch.randn(4, 3) * 10).item() < -1.0
    zg = torch.randn(4, 3, requires_grad=True)
    dispersive_loss(zg).backward()
    assert torch.isfinite(zg.grad).all() and zg.grad.abs().sum() > 0  # i = j terms must not give NaN
    # [B, N, D] is flattened: D = 2 * 1
    assert dispersive_loss(z.reshape(2, 1, 2)).item() == pytest.approx(-0.3798855, abs=1e-6)


# ---------------------------------------------------------------- SDSC (arXiv 2507.14516)
def test_sdsc_known_values():
    s = T([[1.0, -2.0, 3.0, -0.5]])
    assert sdsc(s, s).item() == pytest.approx(1.0)
    assert sdsc(s, -s).item() == pytest.approx(0.0)
    # 0.5 x: 2 * sum(0.5|s|) / sum(1.5|s|) = 1/1.5 = 2/3 (and 2x likewise)
    assert sdsc(s, 0.5 * s).item() == pytest.approx(2 / 3)
    assert sdsc(s, 2.0 * s).item() == pytest.approx(2 / 3)
    # mixed: s = [1,-2,3], y = [2,2,-1]: s*y = [2,-4,-3] -> H = [1,0,0]; min(|s|,|y|) = [1,2,1]
    # intersection 1; sum(|s|+|y|) = 6 + 5 = 11 -> 2/11
    assert sdsc(T([[1.0, -2.0, 3.0]]), T([[2.0, 2.0, -1.0]])).item() == pytest.approx(2 / 11)


def test_soft_sdsc_and_loss():
    s = T([[1.0, -2.0, 3.0]])
    # gates sigmoid(10*[1, 4, 9]) = [0.9999546, ~1, ~1]; inter = 0.9999546 + 2 + 3; total 12
    # soft = 2 * 5.9999546 / 12 = 0.9999924; loss = 1 - soft = 7.566e-6
    assert soft_sdsc(s, s).item() == pytest.approx(0.9999924, abs=1e-6)
    assert SDSCLoss()(s, s).item() == pytest.approx(7.566e-6, abs=1e-6)
    # inverted: gates sigmoid(-10*[1,4,9]) = [4.54e-5, ~0, ~0] -> soft = 2*4.54e-5/12 = 7.566e-6
    assert SDSCLoss()(s, -s).item() == pytest.approx(1 - 7.566e-6, abs=1e-6)
    pred = torch.zeros(2, 3, requires_grad=True)
    SDSCLoss()(pred + 0.1, torch.ones(2, 3)).backward()
    assert pred.grad is not None and torch.all(pred.grad < 0)  # raising pred towards the target helps


# ---------------------------------------------------------------- Localisation (arXiv 2507.18424)
def test_token_coordinates_on_known_grid():
    # grid (t, h, w) = (2, 2, 3): idx 0 -> (0,0,0); 5 -> t 0, y 5//3 = 1, x 2 -> (0, 1, 1)
    # 7 -> t 7//6 = 1, rest 1 -> y 0, x 1 -> (1, 0, 0.5); 11 -> (1, 1, 1)
    c = token_coordinates((2, 2, 3), T([[0, 5, 7, 11]]))
    assert c.shape == (1, 4, 3)
    assert torch.allclose(c, T([[[0, 0, 0], [0, 1, 1], [1, 0, 0.5], [1, 1, 1.0]]]))
    # 2-D grid (3, 3): idx 4 -> (y 1, x 1) / 2 -> t padded with 0
    assert torch.allclose(token_coordinates((3, 3), T([[4]])), T([[[0.0, 0.5, 0.5]]]))
    assert token_coordinates((2, 2, 3)).shape == (1, 12, 3)
    with pytest.raises(ValueError):
        token_coordinates((2, 2), T([[4]]))


def test_localisation_smooth_l1_and_head():
    # smooth L1, beta 0.1: |d| = 0.5 -> 0.5 - 0.05 = 0.45; |d| = 0.05 -> 0.5 * 0.05^2 / 0.1 = 0.0125; 0 -> 0
    pred, true = T([[[0.5, 0.05, 0.0]]]), torch.zeros(1, 1, 3)
    assert LocalisationLoss(beta=0.1)(pred, true).item() == pytest.approx((0.45 + 0.0125) / 3)
    head = LocalisationHead(8, 16)
    out = head(torch.randn(2, 5, 8))
    assert out.shape == (2, 5, 3) and bool(((out > 0) & (out < 1)).all())


def test_losses_are_finite_on_random_inputs():
    torch.manual_seed(0)
    a, b = torch.randn(4, 8), torch.randn(4, 8)
    for val in (info_nce(a, b), byol_loss(a, b), dispersive_loss(a, 0.5), SDSCLoss()(a, b)):
        assert math.isfinite(val.item())
