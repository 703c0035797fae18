"""The unrolled reconstruction network: a MONAI U-Net regulariser alternating with NUFFT data consistency.

``x_0 = AᴴWy / sum|S|^2`` (gridding); for ``k = 1..K``: ``z = x + R(x)`` (the shared U-Net on the real and
imaginary parts) then ``x = argmin ||W^(1/2)(A x - y)||^2 + mu ||x - z||^2``, solved by a few CG steps on
``(AᴴWA + mu I) x = AᴴWy + mu z`` (Toeplitz-embedded ``AᴴWA``); ``mu`` is learnt. A last regulariser step
follows the last data-consistency block (joint reconstruction and denoising).

**k-space support.** No blade samples k-space beyond the trajectory's largest radius (the corners of the
Cartesian grid), so no k-space loss can see what a network puts there. With ``kspace_support`` (default) every
regulariser residual ``R(x)`` is projected onto the disc of the sampled radius (an FFT mask), and the network
cannot invent content the data never constrain. Without it, the self-supervised networks of the CPU study
filled that region with noise: filtering their outputs to the disc raised their PSNR by 2 dB (readout split)
and 4 dB (SSDU), against +0.1 dB for the supervised network (``scripts/diagnose_ssl.py`` in the bundle).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medssl.mri.baselines import conjugate_gradient
from medssl.mri.operators import PropellerOperator

__all__ = ["UnrolledRecon", "kspace_support_mask", "to_channels", "to_complex"]


def kspace_support_mask(traj: torch.Tensor, im_size: int) -> torch.Tensor:
    """Boolean ``[N, N]`` mask (``torch.fft`` order) of the Cartesian frequencies within the trajectory's radius.

    Args:
        traj: ``[2, K]`` sample coordinates in radians per voxel.
        im_size: image matrix ``N``.
    """
    radius = float(traj.float().norm(dim=0).max())
    k = torch.fft.fftfreq(int(im_size), device=traj.device) * (2 * torch.pi)
    return (k[:, None] ** 2 + k[None, :] ** 2).sqrt() <= radius + 1e-6


def to_channels(x: torch.Tensor) -> torch.Tensor:
    """Complex ``[B, H, W]`` -> real ``[B, 2, H, W]`` (real, imaginary)."""
    return torch.stack([x.real, x.imag], dim=1).float()


def to_complex(x: torch.Tensor) -> torch.Tensor:
    """Real ``[B, 2, H, W]`` -> complex ``[B, H, W]``."""
    return torch.complex(x[:, 0].float(), x[:, 1].float())


class UnrolledRecon(nn.Module):
    """Unrolled proximal-gradient / CG network (MoDL-style) for PROPELLER, weights shared over unrolls.

    Args:
        n_unrolls: number of regulariser + data-consistency blocks ``K``.
        cg_iters: CG steps per data-consistency block.
        channels: widths of the MONAI U-Net regulariser (two downsamplings for three widths).
        mu_init: initial data-consistency weight ``mu``.
        num_res_units: residual units per U-Net level.
        final_denoise: apply the regulariser once more after the last data-consistency block (joint
            reconstruction and denoising: the output need not reproduce the noise of the data).
        kspace_support: project every regulariser residual onto the sampled k-space disc (module docstring).

    ``forward(x)`` on a real ``[B, 2, H, W]`` image without an operator runs the regulariser chain only
    (used for shape checks); :meth:`reconstruct` is the full network.
    """

    def __init__(
        self, n_unrolls: int = 5, cg_iters: int = 4, channels: Sequence[int] = (16, 32, 64), mu_init: float = 0.5,
        num_res_units: int = 1, final_denoise: bool = True, kspace_support: bool = True,
    ) -> None:
        super().__init__()
        from monai.networks.nets import UNet

        self.final_denoise = bool(final_denoise)
        self.kspace_support = bool(kspace_support)
        self.n_unrolls = int(n_unrolls)
        self.cg_iters = int(cg_iters)
        self.channels = tuple(int(c) for c in channels)
        self.regulariser = UNet(spatial_dims=2, in_channels=2, out_channels=2, channels=self.channels,
                                strides=(2,) * (len(self.channels) - 1), num_res_units=num_res_units, norm=None,
                                act="PRELU")
        self.log_mu = nn.Parameter(torch.tensor(float(mu_init)).log())
        # R = 0 at initialisation (a zero-initialised output gain, as ReZero): the untrained network is
        # Tikhonov-regularised CG-SENSE, and training starts from there
        self.res_gain = nn.Parameter(torch.zeros(()))

    @property
    def mu(self) -> torch.Tensor:
        """The data-consistency weight (positive)."""
        return self.log_mu.exp()

    def denoise(self, x: torch.Tensor, support: torch.Tensor | None = None) -> torch.Tensor:
        """``x + R(x)`` on complex ``[B, H, W]`` (sizes not divisible by 4 are padded).

        Args:
            x: complex images.
            support: optional boolean ``[H, W]`` k-space mask (:func:`kspace_support_mask`) that ``R(x)`` is
                projected onto.
        """
        h, w = x.shape[-2:]
        m = 2 ** (len(self.channels) - 1)
        ph, pw = (-h) % m, (-w) % m
        c = to_channels(x)
        if ph or pw:
            c = nn.functional.pad(c, (0, pw, 0, ph), mode="reflect")
        r = to_complex(self.res_gain * self.regulariser(c)[..., :h, :w])
        if support is not None:
            r = torch.fft.ifft2(torch.fft.fft2(r) * support.to(r.device))
        return x + r

    def reconstruct(self, op: PropellerOperator, aty: torch.Tensor, x0: torch.Tensor | None = None) -> torch.Tensor:
        """The unrolled reconstruction from ``AᴴWy`` (``[B, N, N]``; ``op`` carries the batch's coil maps)."""
        x = op.gridding_from_adjoint(aty) if x0 is None else x0
        mu = self.mu
        support = kspace_support_mask(op.traj, op.im_size) if self.kspace_support else None
        for _ in range(self.n_unrolls):
            z = self.denoise(x, support)
            x = conjugate_gradient(op.normal, aty + mu * z, x0=z, n_iter=self.cg_iters, lam=mu)
        return self.denoise(x, support) if self.final_denoise else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The regulariser chain alone on a real ``[B, 2, H, W]`` image (no data consistency)."""
        z = to_complex(x)
        for _ in range(self.n_unrolls):
            z = self.denoise(z)
        return to_channels(z)
