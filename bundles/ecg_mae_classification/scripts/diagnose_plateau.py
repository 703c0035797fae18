"""Diagnose the MAE's plateau at the trivial solution on a task with a known easy answer.

    python bundles/ecg_mae_classification/scripts/diagnose_plateau.py [--steps 800] [--lr 5e-4]

Every lead of a synthetic 12-lead signal (a sum of three random sinusoids) is the same, so a masked patch is a
copy of the visible patch of any other lead at the same time. The bundle's encoder and MAE decoder (same sizes
as pretraining, mask ratio 0.75, per-patch normalised targets, AdamW at a constant learning rate, batch 16)
must learn to attend by position to solve it; the masked-patch loss starts at the trivial value 1.0 (predict
each patch's mean). Prints one JSON line per 50 steps. Synthetic data: a diagnostic of the optimisation, not
evidence that the method works.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts import ecg_bundle as eb  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Train on the copy task and print the loss every 50 steps."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from medssl.losses.reconstruction import masked_reconstruction_loss
    from medssl.masking import MaskCollator, RandomPatchMask
    from medssl.networks import MAEDecoder, patchify
    from medssl.networks.patching import gather_tokens

    torch.manual_seed(args.seed)
    enc = eb.build_encoder()
    dec = MAEDecoder(enc.num_patches, enc.hidden_size, enc.patch_dim, decoder_dim=128, depth=2, num_heads=4,
                     grid_size=enc.grid_size)
    opt = torch.optim.AdamW([*enc.parameters(), *dec.parameters()], lr=args.lr, weight_decay=0.05, betas=(0.9, 0.95))
    collate = MaskCollator(RandomPatchMask(enc.grid_size, 0.75))
    t = torch.arange(eb.WINDOW) / eb.FS
    for step in range(args.steps + 1):
        freq = torch.rand(16, 3, 1) * 8 + 0.5
        phase = torch.rand(16, 3, 1) * 2 * math.pi
        x = torch.sin(2 * math.pi * freq * t + phase).sum(1, keepdim=True).expand(16, 12, eb.WINDOW).contiguous()
        batch = collate([{"image": xi} for xi in x])
        ctx, tgt = batch["context_idx"], batch["target_idx"]
        pred = dec(enc(x, context_idx=ctx), ctx, tgt)
        loss = masked_reconstruction_loss(pred, gather_tokens(patchify(x, enc), tgt), norm_pix=True)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0:
            print(json.dumps({"step": step, "masked_patch_loss": round(float(loss.detach()), 4)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
