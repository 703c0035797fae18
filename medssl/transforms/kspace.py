"""PROPELLER k-space physics: blade trajectory, sample splits, synthetic phase, body mask and noise at a set SNR.

Conventions (used by :mod:`medssl.mri` as well):

- Images are complex ``[H, W]`` (or batched ``[B, H, W]``) on a square grid ``N = H = W``.
- k-space coordinates are in radians per voxel, in ``[-pi, pi)``, ordered ``(k_row, k_col)`` (torchkbnufft's
  ``omega`` layout ``[2, K]``). One Nyquist step of the ``N``-grid is ``2 pi / N``.
- A PROPELLER acquisition has ``n_blades`` blades of ``n_lines`` parallel phase-encoding lines of
  ``n_readout`` samples. Blade ``b`` is the Cartesian strip ``{k_ro in [-pi, pi), |k_pe| <= n_lines pi / N}``
  rotated by ``theta_b = b pi / n_blades`` (blades cover 180 degrees; the opposite half is the same line set).
  The readout spans the whole k-space extent, so ``n_readout = N`` is Nyquist and ``2 N`` is 2x readout
  oversampling; lines are Nyquist-spaced (``2 pi / N``), so a blade is ``n_lines / N`` of k-space wide.
- Sample masks are boolean ``[n_blades, n_lines, n_readout]``; flattened in the same (row-major) order as the
  trajectory.

SNR (see :func:`noise_sigma_for_snr`): the mean magnitude of the (coil-combined, sensitivity-normalised) image
inside the body divided by the standard deviation of the complex noise an equivalent Nyquist Cartesian
acquisition would have in the image. With a unitary Fourier transform and sensitivities normalised to
``sum_c |S_c|^2 = 1`` that image-domain sigma equals the per-sample k-space sigma, so noise with
``E|n|^2 = sigma^2`` is added to every k-space sample of every coil.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

__all__ = [
    "blade_angles",
    "propeller_coordinates",
    "propeller_trajectory",
    "blade_subset",
    "readout_split",
    "ssdu_split",
    "smooth_phase",
    "body_mask",
    "noise_sigma_for_snr",
    "add_complex_noise",
    "normalise_magnitude",
    "DIHEDRAL_SIZE",
    "dihedral_image",
    "dihedral_inverse",
    "dihedral_trajectory",
]


def blade_angles(n_blades: int) -> torch.Tensor:
    """Rotation angles of ``n_blades`` blades, evenly over 180 degrees: ``b * pi / n_blades`` (float32)."""
    if n_blades < 1:
        raise ValueError(f"n_blades must be >= 1, got {n_blades}")
    return torch.arange(n_blades, dtype=torch.float64).mul(math.pi / n_blades).float()


def propeller_coordinates(
    n_blades: int,
    n_lines: int,
    n_readout: int,
    im_size: int,
    angles: Sequence[float] | torch.Tensor | None = None,
) -> torch.Tensor:
    """k-space coordinates of every PROPELLER sample, ``[n_blades, n_lines, n_readout, 2]`` (radians/voxel).

    Args:
        n_blades: number of blades (ignored when ``angles`` is given).
        n_lines: phase-encoding lines per blade (the blade width in Nyquist steps).
        n_readout: samples per line; the readout spans ``[-pi, pi)`` (``n_readout = im_size`` is Nyquist).
        im_size: image matrix ``N`` (square).
        angles: blade angles in radians (default :func:`blade_angles`).

    Returns:
        float32 tensor; the last axis is ``(k_row, k_col)``. Blade ``b`` at angle ``t`` has its readout along
        ``(sin t, cos t)`` and its lines along ``(cos t, -sin t)`` in ``(row, col)``; at ``t = 0`` the readout
        runs along the columns.
    """
    if n_lines < 1 or n_readout < 2 or im_size < 2:
        raise ValueError(f"need n_lines >= 1, n_readout >= 2, im_size >= 2; got {n_lines}, {n_readout}, {im_size}")
    ang = blade_angles(n_blades) if angles is None else torch.as_tensor(angles, dtype=torch.float32).reshape(-1)
    ang = ang.double()
    ro = (torch.arange(n_readout, dtype=torch.float64) - n_readout / 2) * (2 * math.pi / n_readout)
    pe = (torch.arange(n_lines, dtype=torch.float64) - n_lines / 2) * (2 * math.pi / im_size)
    ro = ro[None, None, :]
    pe = pe[None, :, None]
    c, s = torch.cos(ang)[:, None, None], torch.sin(ang)[:, None, None]
    k_row = s * ro + c * pe
    k_col = c * ro - s * pe
    coords = torch.stack(torch.broadcast_tensors(k_row, k_col), dim=-1)
    # keep inside the NUFFT's [-pi, pi) domain (only corners of rotated blades can reach past it)
    return coords.clamp(-math.pi, math.pi - 1e-6).float()


def propeller_trajectory(
    n_blades: int,
    n_lines: int,
    n_readout: int,
    im_size: int,
    angles: Sequence[float] | torch.Tensor | None = None,
) -> torch.Tensor:
    """The PROPELLER trajectory as torchkbnufft's ``omega``: ``[2, n_blades * n_lines * n_readout]``."""
    coords = propeller_coordinates(n_blades, n_lines, n_readout, im_size, angles)
    return coords.reshape(-1, 2).T.contiguous()


def blade_subset(n_blades: int, fraction: float = 0.5, offset: int = 0) -> torch.Tensor:
    """Indices of the blades kept when only ``fraction`` of them are used: evenly spread over 180 degrees.

    ``fraction = 0.5`` keeps every other blade (``offset`` picks the even or odd ones), which keeps the angular
    coverage uniform.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    keep = max(1, int(round(n_blades * fraction)))
    idx = torch.floor(torch.arange(keep, dtype=torch.float64) * (n_blades / keep)).long()
    return torch.remainder(idx + offset, n_blades).sort().values


def readout_split(
    n_blades: int, n_lines: int, n_readout: int, mode: str = "interleaved", swap: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split every blade's samples along the readout into two disjoint sets that together cover the blade.

    Args:
        n_blades: number of blades.
        n_lines: lines per blade.
        n_readout: readout samples per line.
        mode: ``"interleaved"`` (even / odd readout samples; the default) or ``"contiguous"`` (the readout's
            first / second half). Interleaving is the default because each set then spans the whole blade,
            k-space centre included, at half the readout sampling density (readout aliasing at FOV/2 along a
            direction that rotates with the blade, which the other blades and the network resolve). Contiguous
            halves give each set only one side of every blade: a partial-Fourier problem in which the set
            seen by the network misses half of k-space and only touches the centre at its edge.
        swap: exchange the two sets (the role swap used as augmentation).

    Returns:
        ``(set_a, set_b)`` boolean masks ``[n_blades, n_lines, n_readout]``.
    """
    m = torch.arange(n_readout)
    if mode == "interleaved":
        a = m % 2 == 0
    elif mode == "contiguous":
        a = m < n_readout // 2
        # the k-space centre sample (index n_readout // 2) goes to set b; give set a the sample next to it
        # so that both sets reach the centre from their side
    else:
        raise ValueError(f"mode must be 'interleaved' or 'contiguous', got {mode!r}")
    set_a = a[None, None, :].expand(n_blades, n_lines, n_readout).clone()
    set_b = ~set_a
    return (set_b, set_a) if swap else (set_a, set_b)


def ssdu_split(
    shape: Sequence[int],
    rho: float = 0.4,
    coords: torch.Tensor | None = None,
    centre_radius: float = 0.0,
    generator: torch.Generator | None = None,
    within: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SSDU's random split of the acquired samples into a data-consistency set Theta and a loss set Lambda.

    After Yaman et al. (SSDU): a fraction ``rho`` of the acquired samples is drawn into Lambda with a
    probability that falls off as a Gaussian of ``|k|`` (std ``pi / 2``), so Lambda holds low and high
    frequencies; samples within ``centre_radius`` (radians) of the k-space centre always stay in Theta.

    Args:
        shape: sample-mask shape, e.g. ``(n_blades, n_lines, n_readout)``.
        rho: ``|Lambda| / |acquired|``.
        coords: ``[*shape, 2]`` coordinates (for the Gaussian weighting); ``None`` = uniform draw.
        centre_radius: protected centre radius in radians per voxel.
        generator: torch random generator.
        within: boolean mask of acquired samples (default: all).

    Returns:
        ``(theta, lam)`` disjoint boolean masks whose union is ``within``.
    """
    if not 0 < rho < 1:
        raise ValueError(f"rho must lie in (0, 1), got {rho}")
    acquired = torch.ones(tuple(shape), dtype=torch.bool) if within is None else within.bool().clone()
    weight = torch.ones(tuple(shape), dtype=torch.float64)
    if coords is not None:
        r = coords.double().norm(dim=-1)
        weight = torch.exp(-0.5 * (r / (math.pi / 2)) ** 2)
        weight[r < centre_radius] = 0.0
    weight = weight * acquired
    n_lam = int(round(rho * int(acquired.sum())))
    n_lam = min(n_lam, int((weight > 0).sum()))
    flat = weight.reshape(-1)
    idx = torch.multinomial(flat / flat.sum(), n_lam, replacement=False, generator=generator)
    lam = torch.zeros(flat.numel(), dtype=torch.bool)
    lam[idx] = True
    lam = lam.reshape(tuple(shape))
    return acquired & ~lam, lam


def smooth_phase(
    size: int, max_phase: float = math.pi, n_terms: int = 6, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A smooth random phase map ``[size, size]`` (radians): a sum of low-order 2-D cosines.

    Mimics B0 / receive phase of real MR images: spatial frequencies of at most 2 cycles per field of view.
    """
    g = generator
    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    phase = torch.zeros(size, size)
    for _ in range(n_terms):
        fy, fx = (torch.rand(2, generator=g) * 2.0 - 1.0) * 1.0
        ph0 = torch.rand((), generator=g) * 2 * math.pi
        amp = torch.rand((), generator=g)
        phase = phase + amp * torch.cos(math.pi * (fy * y + fx * x) + ph0)
    phase = phase - phase.mean()
    return phase / phase.abs().max().clamp_min(1e-6) * max_phase


def body_mask(image: torch.Tensor | np.ndarray, threshold: float = 0.08, smooth: float = 2.0) -> torch.Tensor:
    """Foreground (body) mask of a magnitude image: smoothed magnitude above ``threshold`` of its 99th percentile.

    Holes are filled and small islands dropped (scipy.ndimage); returns a bool ``[H, W]`` tensor.
    """
    from scipy import ndimage

    mag = np.abs(np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image, dtype=np.complex64))
    mag = ndimage.gaussian_filter(mag.astype(np.float32), smooth)
    ref = float(np.percentile(mag, 99)) or 1.0
    mask = mag > threshold * ref
    mask = ndimage.binary_fill_holes(ndimage.binary_closing(mask, iterations=2))
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum(mask, labels, range(1, n + 1))
        mask = np.isin(labels, 1 + np.flatnonzero(sizes >= 0.05 * sizes.max()))
    return torch.from_numpy(np.asarray(mask, dtype=bool))


def noise_sigma_for_snr(image: torch.Tensor, mask: torch.Tensor, snr: float) -> float:
    """``sigma = mean(|image| in mask) / snr``: the complex noise std of an equivalent Nyquist Cartesian scan.

    With the unitary NUFFT of :class:`medssl.mri.PropellerOperator` and normalised coil maps, that is the std
    of the complex noise to add to every k-space sample (``E|n|^2 = sigma^2``).
    """
    if snr <= 0:
        raise ValueError(f"snr must be > 0, got {snr}")
    mag = image.abs()
    inside = mag[mask.bool()] if bool(mask.any()) else mag.reshape(-1)
    return float(inside.mean()) / float(snr)


def add_complex_noise(kspace: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``kspace + n`` with circular complex Gaussian ``n``, ``E|n|^2 = sigma^2`` (``sigma / sqrt 2`` per part)."""
    shape = kspace.shape
    re = torch.randn(shape, generator=generator, dtype=torch.float32)
    im = torch.randn(shape, generator=generator, dtype=torch.float32)
    return kspace + (sigma / math.sqrt(2.0)) * torch.complex(re, im).to(kspace.device)


def normalise_magnitude(image: np.ndarray | torch.Tensor, size: int | None = None) -> torch.Tensor:
    """A magnitude image as float32 in ``[0, 1]`` (99.5th percentile = 1), optionally resized to ``size``².

    Non-square images are centre-padded to a square first, so the anatomy keeps its aspect ratio.
    """
    arr = np.abs(np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image)).astype(np.float32)
    arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {arr.shape}")
    h, w = arr.shape
    n = max(h, w)
    if h != w:
        pad = np.zeros((n, n), np.float32)
        pad[(n - h) // 2 : (n - h) // 2 + h, (n - w) // 2 : (n - w) // 2 + w] = arr
        arr = pad
    t = torch.from_numpy(np.ascontiguousarray(arr))
    if size is not None and size != n:
        t = torch.nn.functional.interpolate(t[None, None], size=(size, size), mode="bilinear", antialias=n > size,
                                            align_corners=False)[0, 0]
    hi = float(torch.quantile(t.reshape(-1)[:: max(1, t.numel() // 65536)], 0.995)) or 1.0
    return (t / hi).clamp(0, 1.5).float()


# The 8 grid symmetries of a square image (rotations by multiples of 90 degrees, each optionally followed by a
# left-right flip) as exact k-space maps. With the NUFFT's centre at pixel N/2, ``torch.rot90`` / ``torch.flip``
# map the pixel lattice {-N/2 .. N/2-1} onto itself through ``r -> R r + t`` (``t`` in {0, -1}²), so the
# transformed image's k-space at ``M k`` is the original k-space at ``k`` times ``exp(i b . M k)``: a new
# trajectory and a linear phase, exact for every image (no interpolation, no edge effects).
# (rot90 turns, flip, M as rows of the 2x2 matrix acting on (k_row, k_col), b).
_DIHEDRAL: tuple[tuple[int, bool, tuple[tuple[int, int], tuple[int, int]], tuple[int, int]], ...] = (
    (0, False, ((1, 0), (0, 1)), (0, 0)),
    (0, True, ((1, 0), (0, -1)), (0, 1)),
    (1, False, ((0, -1), (1, 0)), (1, 0)),
    (1, True, ((0, -1), (-1, 0)), (1, 1)),
    (2, False, ((-1, 0), (0, -1)), (1, 1)),
    (2, True, ((-1, 0), (0, 1)), (1, 0)),
    (3, False, ((0, 1), (-1, 0)), (0, 1)),
    (3, True, ((0, 1), (1, 0)), (0, 0)),
)
DIHEDRAL_SIZE = len(_DIHEDRAL)


def _dihedral(index: int) -> tuple[int, bool, tuple[tuple[int, int], tuple[int, int]], tuple[int, int]]:
    if not 0 <= int(index) < DIHEDRAL_SIZE:
        raise ValueError(f"dihedral index must lie in [0, {DIHEDRAL_SIZE}), got {index}")
    return _DIHEDRAL[int(index)]


def dihedral_image(x: torch.Tensor, index: int) -> torch.Tensor:
    """Element ``index`` (0-7) of the square's symmetry group applied to the last two axes of ``x``.

    ``index // 2`` quarter turns (``torch.rot90``), then a left-right flip when ``index`` is odd; 0 is the
    identity. Coil maps, clean images and network outputs all transform this way.
    """
    turns, flip, _, _ = _dihedral(index)
    out = torch.rot90(x, turns, dims=(-2, -1)) if turns else x
    return torch.flip(out, dims=(-1,)) if flip else out


def dihedral_inverse(index: int) -> int:
    """The index of the inverse symmetry, so that applying ``index`` and then its inverse is the identity.

    Reflections (odd indices) are their own inverses; ``t`` quarter turns are undone by ``4 - t``.
    """
    turns, flip, _, _ = _dihedral(index)
    return int(index) if flip else 2 * ((4 - turns) % 4)


def dihedral_trajectory(traj: torch.Tensor, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k-space side of :func:`dihedral_image`: ``(trajectory [2, K], phase [K])``.

    If ``y = F_traj(x)`` (torchkbnufft's NUFFT, image centre at pixel ``N/2``), then
    ``F_traj'(dihedral_image(x, index)) = y * phase``. Measured blades therefore become an exact acquisition
    of the rotated / flipped object on the returned trajectory, which is how :mod:`medssl.mri.methods`
    augments self-supervised training without new scans (the noise, white and circular, is unchanged in law).
    """
    _, _, m, b = _dihedral(index)
    mat = torch.tensor(m, dtype=traj.dtype, device=traj.device)
    new = (mat @ traj).clamp(-math.pi, math.pi - 1e-6)
    bb = torch.tensor(b, dtype=traj.dtype, device=traj.device)
    phase = torch.polar(torch.ones_like(new[0]), (bb[:, None] * (mat @ traj)).sum(0))
    return new.contiguous(), phase.to(torch.complex64)
