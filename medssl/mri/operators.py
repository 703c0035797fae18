"""Multi-coil PROPELLER forward / adjoint operators on torchkbnufft, with density compensation and Toeplitz AᴴWA.

``A = P F S``: coil sensitivities ``S`` (``[C, H, W]``, normalised to ``sum_c |S_c|^2 = 1``), the non-uniform
FFT ``F`` onto the blade samples (torchkbnufft's Kaiser-Bessel NUFFT on a 2x grid) and the sample selection
``P``. The NUFFT is scaled to be unitary on a Nyquist Cartesian grid (``||A x|| = ||x||`` when the samples are
the ``N x N`` Cartesian grid and ``S`` is normalised), so the k-space noise sigma equals the image-domain one
(:func:`medssl.transforms.kspace.noise_sigma_for_snr`).

Density compensation ``W`` (Pipe & Menon iterations, torchkbnufft) is rescaled so that ``AᴴWA`` (single
coil) has unit gain on a smooth image, i.e. gridding is unbiased. Then ``AᴴWy`` is the density-compensated
gridding image and the weighted normal operator ``AᴴWA`` (applied by Toeplitz embedding: two FFTs on the 2x
grid per coil, no interpolation) is well conditioned, which is what CG-SENSE and the network's data-consistency
steps solve with.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["PropellerOperator", "density_compensation", "dot"]


def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``<a, b> = sum(conj(a) * b)`` over all but the first (batch) axis; complex ``[B]``."""
    return (a.conj() * b).reshape(a.shape[0], -1).sum(dim=1)


def density_compensation(traj: torch.Tensor, im_size: int, num_iterations: int = 10) -> torch.Tensor:
    """Pipe-Menon density compensation weights ``[K]`` (float32, arbitrary scale) of a trajectory ``[2, K]``."""
    import torchkbnufft as tkbn

    w = tkbn.calc_density_compensation_function(traj.float(), (im_size, im_size), num_iterations=num_iterations)
    return w.reshape(-1).real.float().clamp_min(0)


class PropellerOperator:
    """``A = P F S`` for one sample set (a PROPELLER trajectory or any subset of it) and a batch of coil maps.

    Args:
        traj: ``[2, K]`` sample coordinates (radians per voxel), e.g.
            :func:`medssl.transforms.kspace.propeller_trajectory`, possibly masked.
        im_size: image matrix ``N`` (square images ``[N, N]``).
        sens: coil maps ``[C, N, N]`` or ``[B, C, N, N]`` (complex); ``None`` = one coil of ones.
        dcf: density-compensation weights ``[K]``; ``None`` computes them (:func:`density_compensation`).
        normalise_dcf: rescale ``dcf`` so that ``AᴴWA`` has unit gain on smooth images (unbiased gridding).
        toeplitz: precompute the Toeplitz kernel of ``AᴴWA`` (needed by :meth:`normal`).

    Shapes: images ``[B, N, N]`` complex64, k-space ``[B, C, K]`` complex64.
    """

    def __init__(
        self,
        traj: torch.Tensor,
        im_size: int,
        sens: torch.Tensor | None = None,
        dcf: torch.Tensor | None = None,
        normalise_dcf: bool = True,
        toeplitz: bool = True,
    ) -> None:
        import torchkbnufft as tkbn

        if traj.ndim != 2 or traj.shape[0] != 2:
            raise ValueError(f"traj must be [2, K], got {tuple(traj.shape)}")
        self.traj = traj.float().contiguous()
        self.im_size = int(im_size)
        self.device = self.traj.device
        size = (self.im_size, self.im_size)
        self._nufft = tkbn.KbNufft(size).to(self.device)
        self._adj = tkbn.KbNufftAdjoint(size).to(self.device)
        self._toep = tkbn.ToepNufft().to(self.device)
        grid = self._nufft.grid_size.tolist() if hasattr(self._nufft, "grid_size") else [2 * self.im_size] * 2
        # norm="ortho" is unitary on the oversampled grid; rescale to unitary on the N x N grid
        self.scale = math.sqrt(float(grid[0] * grid[1]) / float(self.im_size**2))
        self.sens = self._prep_sens(sens)
        w = density_compensation(self.traj.cpu(), self.im_size) if dcf is None else dcf.reshape(-1).float()
        self.dcf = w.to(self.device)
        self._kernel: torch.Tensor | None = None
        if toeplitz or normalise_dcf:
            self._kernel = self._make_kernel(self.dcf)
        if normalise_dcf:
            lam = self._max_eig()
            self.dcf = self.dcf / lam
            self._kernel = self._kernel / lam
        # symmetric views (:meth:`dihedral`), shared by the copies :meth:`with_sens` makes
        self._views: dict[int, tuple[PropellerOperator, torch.Tensor]] = {}

    # ------------------------------------------------------------------ set-up

    def _prep_sens(self, sens: torch.Tensor | None) -> torch.Tensor:
        if sens is None:
            return torch.ones(1, 1, self.im_size, self.im_size, dtype=torch.complex64, device=self.device)
        s = sens.to(self.device, torch.complex64)
        if s.ndim == 3:
            s = s[None]
        if s.ndim != 4 or tuple(s.shape[-2:]) != (self.im_size, self.im_size):
            raise ValueError(f"sens must be [C, N, N] or [B, C, N, N] with N={self.im_size}, got {tuple(s.shape)}")
        return s.contiguous()

    def _make_kernel(self, weights: torch.Tensor) -> torch.Tensor:
        import torchkbnufft as tkbn

        k = tkbn.calc_toeplitz_kernel(self.traj, (self.im_size, self.im_size), weights=weights.reshape(1, -1),
                                      norm="ortho")
        return k * self.scale**2

    def _max_eig(self) -> float:
        """The gain of ``AᴴWA`` (single coil) on a smooth test image (a Gaussian of width N/8)."""
        n = self.im_size
        r = torch.arange(n, dtype=torch.float32, device=self.device) - n // 2
        blob = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * (n / 8) ** 2)).to(torch.complex64)[None]
        one = torch.ones(1, 1, n, n, dtype=torch.complex64, device=self.device)
        y = self._toep(blob[:, None], self._kernel, smaps=one, norm="ortho")[:, 0]
        gain = float((blob.conj() * y).sum().real / (blob.abs() ** 2).sum())
        return max(gain, 1e-8)

    def with_sens(self, sens: torch.Tensor | None) -> PropellerOperator:
        """A shallow copy that uses other coil maps (the trajectory, weights and Toeplitz kernel are shared)."""
        new = object.__new__(PropellerOperator)
        new.__dict__.update(self.__dict__)
        new.sens = self._prep_sens(sens)
        return new

    def to(self, device: torch.device | str) -> PropellerOperator:
        """A copy on ``device`` (the same object when it is there already)."""
        device = torch.device(device)
        if device == self.device:
            return self
        new = object.__new__(PropellerOperator)
        new.__dict__.update(self.__dict__)
        new.device = device
        for name in ("traj", "sens", "dcf", "_kernel"):
            value = getattr(self, name)
            setattr(new, name, None if value is None else value.to(device))
        for name in ("_nufft", "_adj", "_toep"):
            setattr(new, name, getattr(self, name).to(device))
        new._views = {}
        return new

    def dihedral(self, index: int) -> tuple[PropellerOperator, torch.Tensor]:
        """The acquisition seen as one of a rotated / flipped object: ``(operator, phase [K])``.

        For measured samples ``y`` of image ``x`` under this operator, ``y * phase`` are exact samples of
        ``dihedral_image(x, index)`` under the returned operator, whose coil maps are this operator's maps
        transformed the same way (:func:`medssl.transforms.kspace.dihedral_trajectory`). The density weights are
        reused (the sampling density is invariant), and the views are computed once per trajectory.
        """
        from medssl.transforms.kspace import dihedral_image, dihedral_trajectory

        index = int(index)
        if index not in self._views:
            traj, phase = dihedral_trajectory(self.traj, index)
            view = PropellerOperator(traj, self.im_size, None, dcf=self.dcf, normalise_dcf=False,
                                     toeplitz=self._kernel is not None)
            self._views[index] = (view, phase.to(self.device))
        view, phase = self._views[index]
        return view.with_sens(dihedral_image(self.sens, index)), phase

    @property
    def n_coils(self) -> int:
        """Number of coils of the sensitivity maps."""
        return int(self.sens.shape[1])

    @property
    def n_samples(self) -> int:
        """Number of k-space samples ``K``."""
        return int(self.traj.shape[1])

    def _smaps(self, batch: int) -> torch.Tensor:
        s = self.sens
        return s.expand(batch, -1, -1, -1) if s.shape[0] == 1 and batch > 1 else s

    # ------------------------------------------------------------------ operators

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``A x``: images ``[B, N, N]`` -> k-space ``[B, C, K]``."""
        x = x.to(torch.complex64)
        y = self._nufft(x[:, None], self.traj, smaps=self._smaps(x.shape[0]), norm="ortho")
        return y * self.scale

    __call__ = forward

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``Aᴴ y``: k-space ``[B, C, K]`` -> images ``[B, N, N]`` (coil-combined with ``conj(S)``)."""
        y = y.to(torch.complex64)
        x = self._adj(y, self.traj, smaps=self._smaps(y.shape[0]), norm="ortho")
        return x[:, 0] * self.scale

    def weighted_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``Aᴴ W y``: the density-compensated adjoint."""
        return self.adjoint(y * self.dcf)

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """``Aᴴ W A x`` by Toeplitz embedding (no interpolation); images ``[B, N, N]``."""
        if self._kernel is None:
            self._kernel = self._make_kernel(self.dcf)
        x = x.to(torch.complex64)
        out = self._toep(x[:, None], self._kernel, smaps=self._smaps(x.shape[0]), norm="ortho")
        return out[:, 0]

    def sens_norm(self) -> torch.Tensor:
        """``sum_c |S_c|^2`` per pixel, ``[B or 1, N, N]``."""
        return (self.sens.abs() ** 2).sum(dim=1)

    def gridding(self, y: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
        """Density-compensated gridding reconstruction ``AᴴWy / sum|S|^2`` (SENSE-style coil combination)."""
        return self.weighted_adjoint(y) / self.sens_norm().clamp_min(eps)

    def gridding_from_adjoint(self, aty: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
        """``AᴴWy / sum|S|^2`` from a precomputed ``AᴴWy``."""
        return aty / self.sens_norm().clamp_min(eps)

    def data_loss(self, x: torch.Tensor, aty: torch.Tensor, y_norm2: torch.Tensor) -> torch.Tensor:
        """``||W^(1/2) (A x - y)||^2`` per batch item, from ``x``, ``AᴴWy`` and ``||y||_W^2`` (Toeplitz, exact)."""
        quad = dot(x, self.normal(x)).real
        lin = dot(x, aty).real
        return (quad - 2 * lin + y_norm2).clamp_min(0)

    def weighted_norm2(self, y: torch.Tensor) -> torch.Tensor:
        """``||y||_W^2`` per batch item."""
        return (self.dcf * y.abs() ** 2).reshape(y.shape[0], -1).sum(dim=1)

    def subset(self, mask: torch.Tensor, dcf: torch.Tensor | None = None) -> PropellerOperator:
        """The operator restricted to the samples where the flat boolean ``mask`` (``[K]``) is True.

        Its density compensation is recomputed for the subset (unless ``dcf`` is given).
        """
        m = mask.reshape(-1).to(self.traj.device).bool()
        if m.numel() != self.n_samples:
            raise ValueError(f"mask has {m.numel()} entries, the operator {self.n_samples} samples")
        return PropellerOperator(self.traj[:, m], self.im_size, self.sens, dcf=dcf)


def stack_blades(kspace: torch.Tensor, blades: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Select blades of ``[..., n_blades, n_lines, n_readout]`` k-space and flatten them to ``[..., K]``."""
    idx = torch.as_tensor(blades, dtype=torch.long)
    sel = kspace.index_select(-3, idx.to(kspace.device))
    return sel.reshape(*sel.shape[:-3], -1)
