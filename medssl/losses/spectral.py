"""Frequency-domain and coarse-grained reconstruction targets for signal MAEs.

Xu et al., "Masked Autoencoders that Feel the Heart: Unveiling Simplicity Bias for ECG Analyses"
(arXiv 2506.22495) show that an ECG MAE trained on the time-domain MSE alone fits the dominant low-frequency
shape and neglects the rest (simplicity bias); they add targets in the frequency domain and at several
granularities. medssl's version, all computed from the one decoder output (no extra heads):

- fine (time) target: the per-patch normalised signal (MAE ``norm_pix``, in the core loss);
- frequency target: the magnitude spectrum ``|rfft(patch)|`` of each normalised masked patch;
- coarse target: each normalised masked patch average-pooled by ``coarse_factor`` (a down-sampled signal).

:class:`TimeFrequencyTargets` returns the two extra terms in the form of :class:`medssl.ssl.MAE`'s
``extra_targets`` hook.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

from .reconstruction import normalize_patches

__all__ = [
    "TimeFrequencyTargets",
    "coarse_patches",
    "coarse_reconstruction_loss",
    "denormalize_patches",
    "reconstruction_quality",
    "patch_magnitude_spectrum",
    "split_channels",
    "spectral_reconstruction_loss",
    "SpectralReconstructionLoss",
]


def patch_magnitude_spectrum(patches: torch.Tensor, norm: str = "ortho") -> torch.Tensor:
    """Magnitude of the one-sided DFT of every patch: ``|rfft(patch)|`` over the last dim.

    Args:
        patches: ``[..., P]`` real patches (samples on the last dim).
        norm: ``torch.fft`` normalisation; ``"ortho"`` (default) scales by ``1/sqrt(P)`` so that Parseval
            holds up to the one-sided folding; ``"backward"`` equals ``numpy.abs(numpy.fft.rfft(x))``.

    Returns:
        ``[..., P // 2 + 1]`` non-negative magnitudes.
    """
    if patches.ndim < 1 or patches.shape[-1] < 2:
        raise ValueError(f"patches need at least 2 samples on the last dim, got {tuple(patches.shape)}.")
    return torch.fft.rfft(patches.float(), dim=-1, norm=norm).abs()


def split_channels(patches: torch.Tensor, channels: int) -> torch.Tensor:
    """``[..., P * C]`` tokens whose samples are ordered ``(p, channel)`` -> ``[..., C, P]``, one row per channel.

    :func:`medssl.networks.patching.patchify` orders a multi-channel token's samples with the channel
    fastest; the frequency and coarse targets must be taken per channel (per ECG lead), not over that
    interleaved vector. ``channels=1`` only adds the channel axis.
    """
    if channels < 1 or patches.shape[-1] % channels:
        raise ValueError(f"channels {channels} must be >= 1 and divide the token length {patches.shape[-1]}.")
    p = patches.shape[-1] // channels
    return patches.reshape(*patches.shape[:-1], p, channels).transpose(-1, -2)


def spectral_reconstruction_loss(
    pred: torch.Tensor, target: torch.Tensor, norm_pix: bool = True, log: bool = True, channels: int = 1
) -> torch.Tensor:
    """MSE between the magnitude spectra of predicted and true patches (arXiv 2506.22495).

    Args:
        pred: ``[B, K, P * channels]`` predicted patches (in the normalised space when ``norm_pix``).
        target: ``[B, K, P * channels]`` true patches (raw; normalised here, over the whole token, when
            ``norm_pix``).
        norm_pix: normalise each true patch first, as the time target does.
        log: compare ``log1p`` magnitudes (keeps the few large low-frequency bins from dominating).
        channels: channels per token, samples ordered ``(p, channel)`` as :func:`split_channels` expects;
            the spectrum is taken per channel over its ``P`` samples.

    Returns:
        Scalar mean over patches, channels and frequency bins.
    """
    if pred.shape != target.shape or pred.ndim != 3:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must both be [B, K, P].")
    tgt = normalize_patches(target.detach()) if norm_pix else target.detach()
    pred, tgt = split_channels(pred, channels), split_channels(tgt, channels)
    sp, st = patch_magnitude_spectrum(pred), patch_magnitude_spectrum(tgt)
    if log:
        sp, st = torch.log1p(sp), torch.log1p(st)
    return F.mse_loss(sp, st)


def coarse_patches(patches: torch.Tensor, factor: int) -> torch.Tensor:
    """Average-pool every patch by ``factor`` (``[..., P]`` -> ``[..., P // factor]``); ``factor`` must divide P."""
    if factor < 1 or patches.shape[-1] % factor:
        raise ValueError(f"factor {factor} must be >= 1 and divide the patch length {patches.shape[-1]}.")
    return patches.reshape(*patches.shape[:-1], patches.shape[-1] // factor, factor).mean(dim=-1)


def coarse_reconstruction_loss(
    pred: torch.Tensor, target: torch.Tensor, factor: int = 5, norm_pix: bool = True, channels: int = 1
) -> torch.Tensor:
    """MSE between down-sampled (average-pooled) predicted and true patches: the coarse-grained target.

    Args:
        pred: ``[B, K, P * channels]`` predicted patches.
        target: ``[B, K, P * channels]`` true patches (normalised here when ``norm_pix``).
        factor: pooling factor (75-sample patches at 250 Hz, factor 5: 15 values at 50 Hz).
        norm_pix: normalise each true patch first.
        channels: channels per token (see :func:`split_channels`); each channel is pooled over its own samples.

    Returns:
        Scalar.
    """
    if pred.shape != target.shape or pred.ndim != 3:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must both be [B, K, P].")
    tgt = normalize_patches(target.detach()) if norm_pix else target.detach()
    pred, tgt = split_channels(pred, channels), split_channels(tgt, channels)
    return F.mse_loss(coarse_patches(pred, factor), coarse_patches(tgt, factor))


def denormalize_patches(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Map per-patch-normalised predictions back with each true patch's mean and std (MAE's figures)."""
    mean = target.mean(dim=-1, keepdim=True)
    std = torch.sqrt(target.var(dim=-1, unbiased=False, keepdim=True) + eps)
    return pred * std + mean


@torch.no_grad()
def reconstruction_quality(pred: torch.Tensor, target: torch.Tensor, norm_pix: bool = True) -> dict[str, float]:
    """MSE and SDSC (arXiv 2507.14516) of masked-patch reconstructions against the true signal.

    Args:
        pred: ``[B, K, P]`` decoder output (normalised space when ``norm_pix``).
        target: ``[B, K, P]`` true patches in signal units.
        norm_pix: de-normalise ``pred`` with the true patches' statistics first.

    Returns:
        ``{"mse": ..., "sdsc": ...}`` averaged over the batch, in signal units.
    """
    from .sdsc import sdsc

    if pred.shape != target.shape or pred.ndim != 3:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must both be [B, K, P].")
    rec = denormalize_patches(pred.float(), target.float()) if norm_pix else pred.float()
    return {"mse": float(F.mse_loss(rec, target.float())), "sdsc": float(sdsc(rec, target.float()).mean())}


class SpectralReconstructionLoss(_Loss):
    """Module form of :func:`spectral_reconstruction_loss`.

    Args:
        norm_pix: normalise true patches first.
        log: compare ``log1p`` magnitudes.
    """

    def __init__(self, norm_pix: bool = True, log: bool = True) -> None:
        super().__init__()
        self.norm_pix, self.log = norm_pix, log

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """See :func:`spectral_reconstruction_loss`."""
        return spectral_reconstruction_loss(pred, target, self.norm_pix, self.log)


class TimeFrequencyTargets:
    """MAE ``extra_targets`` hook adding the weighted frequency and coarse terms (arXiv 2506.22495).

    Total MAE loss = time MSE + ``freq_weight`` * spectral MSE + ``coarse_weight`` * coarse MSE.

    Args:
        freq_weight: weight of :func:`spectral_reconstruction_loss` (0 switches it off).
        coarse_weight: weight of :func:`coarse_reconstruction_loss` (0 switches it off).
        coarse_factor: pooling factor of the coarse target.
        norm_pix: whether the MAE's time target is normalised per patch (must match the MAE).
        log_spectrum: compare ``log1p`` magnitudes.
        channels: channels in one token (1 for lead-wise tokens; 12 for tokens that hold a patch of all 12
            leads): the spectrum and the pooling are then taken per lead (:func:`split_channels`).
    """

    def __init__(
        self,
        freq_weight: float = 0.5,
        coarse_weight: float = 0.5,
        coarse_factor: int = 5,
        norm_pix: bool = True,
        log_spectrum: bool = True,
        channels: int = 1,
    ) -> None:
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}.")
        if freq_weight < 0 or coarse_weight < 0:
            raise ValueError(f"weights must be >= 0, got {freq_weight}, {coarse_weight}.")
        self.freq_weight = float(freq_weight)
        self.coarse_weight = float(coarse_weight)
        self.coarse_factor = int(coarse_factor)
        self.norm_pix = norm_pix
        self.log_spectrum = log_spectrum
        self.channels = int(channels)

    def __call__(
        self, batch: dict[str, Any], pred: torch.Tensor, target: torch.Tensor, target_idx: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Return ``{"freq": weighted loss, "coarse": weighted loss}`` (terms with weight 0 left out)."""
        out: dict[str, torch.Tensor] = {}
        if self.freq_weight > 0:
            out["freq"] = self.freq_weight * spectral_reconstruction_loss(
                pred, target, self.norm_pix, self.log_spectrum, self.channels
            )
        if self.coarse_weight > 0:
            out["coarse"] = self.coarse_weight * coarse_reconstruction_loss(
                pred, target, self.coarse_factor, self.norm_pix, self.channels
            )
        return out
