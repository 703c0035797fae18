"""Training objectives for the unrolled PROPELLER network, as :class:`medssl.ssl.methods.base.SSLMethod` s.

Batches (``collate`` of :class:`medssl.mri.data.BladeDataset` items) hold ``kspace`` ``[B, C, K]`` (the acquired
samples of the blades in use, flattened blade-major), ``sens`` ``[B, C, N, N]`` and, for supervision only,
``target`` ``[B, N, N]`` (the clean complex image). All methods share the trajectory of the blades in use, so
operators, density compensation and Toeplitz kernels of every sample set are computed once.

- :class:`ReadoutSplitSSL` (after Chen et al.): every blade's readout samples are split into two disjoint sets
  (interleaved by default, see :func:`medssl.transforms.kspace.readout_split`). The network reconstructs from
  set A; the loss is the density-weighted squared k-space residual on set B, normalised by ``||y_B||_W^2``
  (evaluated exactly through the Toeplitz normal operator of set B: ``x^H T_B x - 2 Re x^H A_B^H W y_B +
  ||y_B||_W^2``). With probability 1/2 the roles swap.
- :class:`SSDU` (after Yaman et al.): a fixed pool of random Theta / Lambda splits of the acquired samples
  (``|Lambda| = rho |acquired|``, Gaussian-weighted, centre kept in Theta); data consistency on Theta, the
  normalised L1 + L2 k-space loss on Lambda (computed by the NUFFT).
- :class:`SupervisedRecon`: the same network on all acquired samples, normalised L1 + L2 loss against the clean
  image (the upper bound).

With ``augment=True`` every training step sees the acquisition as that of a rotated / flipped object: one of the
8 symmetries of the square (:func:`medssl.transforms.kspace.dihedral_image`) is drawn per batch, the coil maps
and the clean target are transformed in the image domain, and the measured samples are kept but re-labelled
with the transformed trajectory and a linear phase (:func:`medssl.transforms.kspace.dihedral_trajectory`). This
is exact (no interpolation), needs no new scans and leaves the noise's law unchanged, so it is legitimate for the
self-supervised methods: 8 times the training views from the same noisy blades.

Inside every method inputs are scaled by the 99th percentile of the gridding image's magnitude, so the network
sees intensities of order one whatever the scanner's units.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from medssl.mri.network import UnrolledRecon
from medssl.mri.operators import PropellerOperator
from medssl.ssl.methods.base import SSLMethod
from medssl.transforms.kspace import (
    DIHEDRAL_SIZE,
    dihedral_image,
    dihedral_inverse,
    dihedral_trajectory,
    readout_split,
    ssdu_split,
)

__all__ = ["ReadoutSplitSSL", "SSDU", "SupervisedRecon", "reconstruct", "dihedral_average", "intensity_scale"]


def intensity_scale(x0: torch.Tensor, q: float = 0.99) -> torch.Tensor:
    """Per-item scale ``[B]``: the ``q`` quantile of ``|x0|`` (subsampled; never zero)."""
    mags = x0.detach().abs().reshape(x0.shape[0], -1)
    step = max(1, mags.shape[1] // 16384)
    return torch.quantile(mags[:, ::step], q, dim=1).clamp_min(1e-12)


def reconstruct(network: UnrolledRecon, op: PropellerOperator, kspace: torch.Tensor,
                self_ensemble: bool = False) -> torch.Tensor:
    """Run the trained network on measured samples ``[B, C, K]`` with ``op`` (carrying the coil maps).

    Args:
        network: the trained unrolled network.
        op: the operator of the samples, with their coil maps.
        kspace: ``[B, C, K]`` measured samples.
        self_ensemble: average the reconstructions of the 8 exact rotated / flipped views of the acquisition
            (:meth:`PropellerOperator.dihedral`), each turned back: the geometric self-ensemble of image
            restoration (Lim et al., EDSR, 2017), exact here because the views are relabelled samples, not
            interpolated images. 8 times the compute; no training change.

    Returns:
        ``[B, N, N]`` complex images.
    """
    if self_ensemble:
        return dihedral_average(op, kspace, lambda o, y: _reconstruct_view(network, o, y))
    return _reconstruct_view(network, op, kspace)


def dihedral_average(op: PropellerOperator, kspace: torch.Tensor,
                     fn: Callable[[PropellerOperator, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The mean of ``fn`` over the 8 exact rotated / flipped views of an acquisition, each turned back.

    Args:
        op: the operator of the samples, with their coil maps.
        kspace: ``[B, C, K]`` measured samples.
        fn: ``fn(operator, samples)`` -> images ``[..., N, N]`` (any reconstruction from samples).
    """
    out = fn(op, kspace)
    for sym in range(1, DIHEDRAL_SIZE):
        view, phase = op.dihedral(sym)
        out = out + dihedral_image(fn(view, kspace * phase), dihedral_inverse(sym))
    return out / DIHEDRAL_SIZE


def _reconstruct_view(network: UnrolledRecon, op: PropellerOperator, kspace: torch.Tensor) -> torch.Tensor:
    aty = op.weighted_adjoint(kspace)
    x0 = op.gridding_from_adjoint(aty)
    s = intensity_scale(x0)[:, None, None]
    return network.reconstruct(op, aty / s, x0 / s) * s


class _ReconMethod(SSLMethod):
    """Shared plumbing: the network, the operator cache per device, per-batch coil maps."""

    def __init__(self, network: UnrolledRecon, traj: torch.Tensor, im_size: int, augment: bool = False) -> None:
        super().__init__()
        self.network = network
        self.encoder = network  # what the bundle exports
        self.traj = traj.float()
        self.im_size = int(im_size)
        self.augment = bool(augment)
        self._ops: dict[str, PropellerOperator] = {}
        self._phases: dict[int, torch.Tensor] = {}

    def _op(self, key: str, mask: torch.Tensor | None, device: torch.device, toeplitz: bool = True,
            sym: int = 0) -> Any:
        """The operator of sample set ``key`` (``mask`` of the flat samples) under symmetry ``sym``, cached.

        A transformed set reuses the untransformed set's density compensation (a rotation or flip of the whole
        trajectory leaves the sampling density unchanged), so every view has the same data weighting.
        """
        name = f"{key}/{sym}@{device}"
        if name not in self._ops:
            cpu = self._ops.get(f"{key}/{sym}@cpu")
            if cpu is None:
                if sym == 0:
                    traj = self.traj if mask is None else self.traj[:, mask.reshape(-1)]
                    cpu = PropellerOperator(traj, self.im_size, None, toeplitz=toeplitz, normalise_dcf=toeplitz)
                else:
                    cpu = self._op(key, mask, torch.device("cpu"), toeplitz).dihedral(sym)[0]
                self._ops[f"{key}/{sym}@cpu"] = cpu
            self._ops[name] = cpu.to(device)
        return self._ops[name]

    def _view(self, batch: dict[str, Any]) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(symmetry, kspace, sens, target)`` of the batch, under a random symmetry when augmenting."""
        y, sens, target = batch["kspace"], batch["sens"], batch.get("target")
        if not (self.augment and self.training):
            return 0, y, sens, target
        sym = int(torch.randint(DIHEDRAL_SIZE, ()))
        return (sym, *self.transform(sym, y, sens, target))

    def transform(self, sym: int, kspace: torch.Tensor, sens: torch.Tensor, target: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The batch as an acquisition of the object under symmetry ``sym`` (on the trajectory of ``_op(sym=)``).

        Args:
            sym: index of the symmetry (0-7; 0 is the identity).
            kspace: ``[B, C, K]`` samples of the blades in use.
            sens: ``[B, C, N, N]`` coil maps.
            target: ``[B, N, N]`` clean images or ``None``.
        """
        if sym == 0:
            return kspace, sens, target
        if sym not in self._phases:
            self._phases[sym] = dihedral_trajectory(self.traj, sym)[1]
        phase = self._phases[sym].to(kspace.device)
        tgt = None if target is None else dihedral_image(target, sym)
        return kspace * phase, dihedral_image(sens, sym), tgt

    def _inputs(self, op: PropellerOperator, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            aty = op.weighted_adjoint(y)
            x0 = op.gridding_from_adjoint(aty)
            s = intensity_scale(x0)
        return aty / s[:, None, None], x0 / s[:, None, None], s

    def reconstruct(self, kspace: torch.Tensor, sens: torch.Tensor) -> torch.Tensor:
        """Reconstruct from all acquired samples ``[B, C, K]`` with coil maps ``[B, C, N, N]``."""
        op = self._op("all", None, kspace.device).with_sens(sens)
        return reconstruct(self.network, op, kspace)

    def images(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Gridding and the network's reconstruction of the first item, for TensorBoard ([0, 1])."""
        with torch.no_grad():
            y, sens = batch["kspace"][:1], batch["sens"][:1]
            op = self._op("all", None, y.device).with_sens(sens)
            grid = op.gridding(y).abs()
            rec = self.reconstruct(y, sens).abs()
        out = {}
        for name, img in (("gridding", grid), ("recon", rec)):
            out[name] = (img / img.amax().clamp_min(1e-12)).clamp(0, 1)
        return out


class ReadoutSplitSSL(_ReconMethod):
    """Self-supervised training on the blades' own noisy samples: readout split, k-space loss, role swap.

    Args:
        network: the unrolled network.
        traj: ``[2, K]`` trajectory of the blades in use (flattened ``[n_blades, n_lines, n_readout]``).
        sample_shape: ``(n_blades, n_lines, n_readout)`` of those blades.
        im_size: image matrix.
        mode: ``"interleaved"`` or ``"contiguous"`` readout split.
        swap: swap the roles of the two sets with probability 1/2 at every step (augmentation).
        augment: train on random rotations / flips of the acquisitions (exact, see the module docstring).
    """

    def __init__(self, network: UnrolledRecon, traj: torch.Tensor, sample_shape: Sequence[int], im_size: int,
                 mode: str = "interleaved", swap: bool = True, augment: bool = False) -> None:
        super().__init__(network, traj, im_size, augment=augment)
        a, b = readout_split(*sample_shape, mode=mode)
        self.masks = {"a": a.reshape(-1), "b": b.reshape(-1)}
        self.swap = swap
        self.mode = mode

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``{"loss": normalised k-space loss on the held-out set, "swapped": 0/1}``."""
        sym, y, sens, _ = self._view(batch)
        swapped = bool(self.swap and float(torch.rand(())) < 0.5)
        src, dst = ("b", "a") if swapped else ("a", "b")
        op_in = self._op(src, self.masks[src], y.device, sym=sym).with_sens(sens)
        op_out = self._op(dst, self.masks[dst], y.device, sym=sym).with_sens(sens)
        y_in = y[..., self.masks[src].to(y.device)]
        y_out = y[..., self.masks[dst].to(y.device)]
        aty, x0, s = self._inputs(op_in, y_in)
        x = self.network.reconstruct(op_in, aty, x0)
        with torch.no_grad():
            aty_out = op_out.weighted_adjoint(y_out) / s[:, None, None]
            norm2 = op_out.weighted_norm2(y_out) / s**2
        loss = (op_out.data_loss(x, aty_out, norm2) / norm2).mean()
        return {"loss": loss, "swapped": torch.tensor(float(swapped)), "mu": self.network.mu.detach(),
                "symmetry": torch.tensor(float(sym))}


class SSDU(_ReconMethod):
    """SSDU-style self-supervision: random Theta (data consistency) / Lambda (loss) splits, L1 + L2 loss.

    Args:
        network, traj, sample_shape, im_size: as :class:`ReadoutSplitSSL`.
        coords: ``[*sample_shape, 2]`` sample coordinates (for the Gaussian-weighted draw of Lambda).
        rho: ``|Lambda| / |acquired|`` (0.4 in SSDU).
        n_splits: size of the fixed pool of splits (multi-mask SSDU); one is drawn at random every step.
        seed: seed of the pool.
        augment: train on random rotations / flips of the acquisitions.
    """

    def __init__(self, network: UnrolledRecon, traj: torch.Tensor, sample_shape: Sequence[int], im_size: int,
                 coords: torch.Tensor | None = None, rho: float = 0.4, n_splits: int = 4, seed: int = 0,
                 augment: bool = False) -> None:
        super().__init__(network, traj, im_size, augment=augment)
        g = torch.Generator().manual_seed(int(seed))
        self.splits = []
        for _ in range(int(n_splits)):
            theta, lam = ssdu_split(tuple(sample_shape), rho=rho, coords=coords, centre_radius=0.04 * torch.pi,
                                    generator=g)
            self.splits.append((theta.reshape(-1), lam.reshape(-1)))
        self.rho = rho

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``{"loss": ||y_L - A_L x||_2 / ||y_L||_2 + ||y_L - A_L x||_1 / ||y_L||_1}`` for a random split."""
        sym, y, sens, _ = self._view(batch)
        k = int(torch.randint(len(self.splits), ()))
        theta, lam = self.splits[k]
        op_t = self._op(f"theta{k}", theta, y.device, sym=sym).with_sens(sens)
        op_l = self._op(f"lambda{k}", lam, y.device, toeplitz=False, sym=sym).with_sens(sens)
        y_t = y[..., theta.to(y.device)]
        y_l = y[..., lam.to(y.device)]
        aty, x0, s = self._inputs(op_t, y_t)
        x = self.network.reconstruct(op_t, aty, x0)
        r = op_l.forward(x) - y_l / s[:, None, None]
        yl = (y_l / s[:, None, None]).reshape(y.shape[0], -1)
        r = r.reshape(y.shape[0], -1)
        l2 = r.abs().pow(2).sum(1).sqrt() / yl.abs().pow(2).sum(1).sqrt().clamp_min(1e-12)
        l1 = r.abs().sum(1) / yl.abs().sum(1).clamp_min(1e-12)
        return {"loss": (l2 + l1).mean(), "l2": l2.mean().detach(), "l1": l1.mean().detach()}


class SupervisedRecon(_ReconMethod):
    """The same network trained against clean images (normalised L1 + L2 on the complex image): the upper bound.

    Args: as :class:`_ReconMethod` (``network``, ``traj``, ``im_size``, ``augment``).
    """

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``{"loss": ||x - t||_2 / ||t||_2 + ||x - t||_1 / ||t||_1}`` on all acquired samples."""
        sym, y, sens, target = self._view(batch)
        op = self._op("all", None, y.device, sym=sym).with_sens(sens)
        aty, x0, s = self._inputs(op, y)
        x = self.network.reconstruct(op, aty, x0)
        t = (target / s[:, None, None]).reshape(y.shape[0], -1)
        r = x.reshape(y.shape[0], -1) - t
        l2 = r.abs().pow(2).sum(1).sqrt() / t.abs().pow(2).sum(1).sqrt().clamp_min(1e-12)
        l1 = r.abs().sum(1) / t.abs().sum(1).clamp_min(1e-12)
        return {"loss": (l2 + l1).mean(), "l2": l2.mean().detach()}
