"""Per-sample wave segmentation (delineation) on a lead-wise 1-D ViT: a light U-Net decoder.

Patch tokens are 75 samples (300 ms at 250 Hz) wide, far coarser than the ±10 ms precision that P/QRS/T
boundaries need. The decoder therefore upsamples each lead's token row in stages and, at every stage,
concatenates features computed from the raw lead at that resolution (the U-Net skip, Ronneberger et al.
2015, arXiv 1505.04597), so the boundaries are placed from the signal itself while the encoder supplies the
context (which beat, which wave).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from medssl.networks.vit import ViTEncoder

__all__ = ["DelineationNet", "SignalUNetDecoder", "factorize_upsampling"]


def factorize_upsampling(patch: int, max_factor: int = 5) -> list[int]:
    """Split ``patch`` into prime factors ``<= max_factor`` (largest first), e.g. 75 -> [5, 5, 3].

    Raises:
        ValueError: ``patch`` has a prime factor above ``max_factor``.
    """
    if patch < 1:
        raise ValueError(f"patch must be >= 1, got {patch}.")
    out, n = [], patch
    for f in range(max_factor, 1, -1):
        while n % f == 0:
            out.append(f)
            n //= f
    if n != 1:
        raise ValueError(f"patch {patch} has a prime factor above {max_factor}; choose another patch size.")
    return out


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv1d(c_in, c_out, 5, padding=2, bias=False),
        nn.BatchNorm1d(c_out),
        nn.GELU(),
        nn.Conv1d(c_out, c_out, 5, padding=2, bias=False),
        nn.BatchNorm1d(c_out),
        nn.GELU(),
    )


class SignalUNetDecoder(nn.Module):
    """Upsample token features ``[N, D, T]`` to ``[N, classes, T * patch]`` with skips from the raw signal.

    Args:
        hidden_size: token width ``D``.
        patch: samples per token.
        out_channels: classes.
        in_channels: channels of the raw signal given as skip (1 for one lead).
        features: widths from the finest (full-rate) level upward; one per upsampling stage.
    """

    def __init__(
        self,
        hidden_size: int,
        patch: int,
        out_channels: int,
        in_channels: int = 1,
        features: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        self.factors = factorize_upsampling(patch)
        n = len(self.factors)
        feats = tuple(features) if features is not None else tuple(min(16 * 2**i, 64) for i in range(n))
        if len(feats) != n:
            raise ValueError(f"features needs {n} widths (one per upsampling stage), got {len(feats)}.")
        self.patch = patch
        # skip encoder: full rate, then pooled by the factors in reverse (finest first)
        self.skip_in = _block(in_channels, feats[0])
        pools = list(reversed(self.factors))  # e.g. [3, 5, 5]: 2250 -> 750 -> 150 -> 30
        self.pools = pools
        self.skip_down = nn.ModuleList([_block(feats[i], feats[i + 1]) for i in range(n - 1)])
        self.reduce = nn.Sequential(nn.Conv1d(hidden_size, feats[-1], 1), nn.GELU())
        # decoder: level n-1 (coarsest skip) ... 0 (full rate)
        self.up = nn.ModuleList()
        for level in range(n - 1, -1, -1):
            c_from = feats[level + 1] if level + 1 < n else feats[-1]
            self.up.append(_block(c_from + feats[level], feats[level]))
        self.head = nn.Conv1d(feats[0], out_channels, 1)

    def forward(self, tokens: torch.Tensor, signal: torch.Tensor) -> torch.Tensor:
        """``tokens [N, D, T]`` and ``signal [N, in_channels, T * patch]`` -> logits ``[N, classes, T * patch]``."""
        if signal.shape[-1] != tokens.shape[-1] * self.patch:
            raise ValueError(
                f"signal length {signal.shape[-1]} must be tokens {tokens.shape[-1]} x patch {self.patch}."
            )
        skips = [self.skip_in(signal)]
        for i, blk in enumerate(self.skip_down):
            skips.append(blk(F.avg_pool1d(skips[-1], self.pools[i])))
        x = self.reduce(tokens)
        for j, level in enumerate(range(len(self.factors) - 1, -1, -1)):
            x = F.interpolate(x, size=skips[level].shape[-1], mode="linear", align_corners=False)
            x = self.up[j](torch.cat([x, skips[level]], dim=1))
        return self.head(x)


class DelineationNet(nn.Module):
    """1-D ViT encoder + :class:`SignalUNetDecoder`: per-lead, per-sample classes (none, P, QRS, T).

    With a lead-wise encoder (``channel_tokens=True``) each lead's row of tokens (which have attended to all
    leads in the encoder) is decoded with that lead's raw signal as skip. With a plain encoder (one token per
    patch of all leads) the one row of tokens is decoded once per lead, each time with that lead's signal as
    skip. Either way the output is ``[B, leads, classes, L]``: one delineation per lead, as LUDB annotates them.

    Args:
        encoder: a 1-D :class:`ViTEncoder` (lead-wise or plain tokens).
        num_classes: classes per sample (4: none, P, QRS, T).
        features: decoder widths (see :class:`SignalUNetDecoder`).
    """

    def __init__(self, encoder: ViTEncoder, num_classes: int = 4, features: tuple[int, ...] | None = None) -> None:
        super().__init__()
        if encoder.spatial_dims != 1:
            raise ValueError("DelineationNet needs a 1-D ViTEncoder.")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
        self.encoder = encoder
        self.num_classes = num_classes
        self.decoder = SignalUNetDecoder(encoder.hidden_size, encoder.patch_size[0], num_classes, 1, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, L]`` -> logits ``[B, C, num_classes, L]``."""
        tokens = self.encoder(x)  # [B, C * T, D] lead-major, or [B, T, D] for plain tokens
        b, c, length = x.shape
        if self.encoder.channel_tokens:
            tok = tokens.reshape(b * c, tokens.shape[1] // c, -1).transpose(1, 2)
        else:  # the shared token row, once per lead
            tok = tokens.transpose(1, 2).repeat_interleave(c, dim=0)
        out = self.decoder(tok, x.reshape(b * c, 1, length))
        return out.reshape(b, c, self.num_classes, length)
