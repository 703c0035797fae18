"""Diagnose the MAE's plateau at the trivial solution on a task with a known easy answer.

    python bundles/ecg_mae_classification/scripts/diagnose_plateau.py [--steps 800] [--lr 5e-4]

Every lead of a synthetic 12-lead signal (a sum of three random sinusoids) is the same, so a masked patch is a
copy of the visible patch of any other lead at the same time. The bundle's encoder and MAE decoder (same sizes
as pretraining, mask ratio 0.75, per-patch normalised targets, AdamW at a constant learning rate, batch 16)
must learn to attend by position to solve it; the masked-patch loss starts at the trivial value 1.0 (predict
each patch's mean). Prints one JSON line per 50 steps. Synthetic data: a diagnostic of the optimisation, not
evidence that the method works.

    python bundles/ecg_mae_classification/scripts/diagnose_plateau.py --linear-reference [--data ../shared/data/ecg]

prints instead what the masked-patch task asks of the MAE on real data: a ridge regression that predicts every
masked patch from the same visible context the MAE has (the same-time patches of the 11 other leads, and the
same lead's neighbouring patches; zero where masked), one regression per lead, fitted on LUDB records 1-120
and scored on the masked patches of the test records 121-160 (first 9 s, mask ratio 0.75), for both target
normalisations (per patch, as MAE's ``norm_pix``; per lead). Beside it: the trivial predictions (zero, and
each masked patch's own mean) and copying the first visible other lead at the same time (no sign). A
learned MAE should do at least as well as this linear reference.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
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
    ap.add_argument("--linear-reference", action="store_true", help="the ridge reference on real LUDB records")
    ap.add_argument("--data", type=Path, default=None, help="ECG data root (default ../shared/data/ecg)")
    ap.add_argument("--ridge", type=float, default=10.0, help="ridge penalty of the linear reference")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.linear_reference:
        return linear_reference(args.data, args.seed, args.ridge)
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


def _context_features(p: np.ndarray, vis: np.ndarray, lead: int) -> np.ndarray:
    """``[n, T, 13 * P]`` features of lead ``lead``'s patches: other leads at the same time, own t-1 and t+1."""
    n, c, t, _ = p.shape
    seen = p * vis[..., None]
    others = [seen[:, m] for m in range(c) if m != lead]
    zero = np.zeros_like(seen[:, lead, :1])
    prev = np.concatenate([zero, seen[:, lead, :-1]], axis=1)
    nxt = np.concatenate([seen[:, lead, 1:], zero], axis=1)
    return np.concatenate([*others, prev, nxt], axis=-1)


def linear_reference(data: Path | None, seed: int = 0, ridge: float = 10.0) -> int:
    """Print the ridge reference and the trivial predictions for both target normalisations (JSON)."""
    root = data or eb.default_data_root()
    if root is None or not (Path(root) / "ludb" / "data").is_dir():
        print("diagnose_plateau: LUDB not found (pass --data ../shared/data/ecg)", file=sys.stderr)
        return 2
    recs = eb.ludb_items(root)
    test = set(eb.LUDB_TEST_IDS)
    x = np.stack([r.x[:, : eb.WINDOW] for r in recs]).astype(np.float64)
    is_test = np.array([r.name in test for r in recs])
    n_patch = eb.WINDOW // eb.PATCH
    patches = x.reshape(len(x), x.shape[1], n_patch, eb.PATCH)
    rng = np.random.default_rng(seed)
    vis = (rng.random(patches.shape[:3]) < 0.25).astype(np.float64)  # mask ratio 0.75
    out: dict[str, object] = {"train_records": int((~is_test).sum()), "test_records": int(is_test.sum())}
    for norm in ("patch", "lead"):
        if norm == "patch":
            q = (patches - patches.mean(-1, keepdims=True)) / np.sqrt(patches.var(-1, keepdims=True) + 1e-6)
        else:
            q = patches
        err, zero, own_mean, copy = [], [], [], []
        for lead in range(q.shape[1]):
            f = _context_features(q, vis, lead)
            masked = vis[:, lead] == 0
            fit = masked & ~is_test[:, None]
            score = masked & is_test[:, None]
            a, b = f[fit], q[:, lead][fit]
            w = np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1]), a.T @ b)
            tgt = q[:, lead][score]
            err.append(((f[score] @ w - tgt) ** 2).sum())
            zero.append((tgt**2).sum())
            own_mean.append(((tgt - tgt.mean(-1, keepdims=True)) ** 2).sum())
            # copy the first visible other lead at the same time, without a sign (zero where none is visible)
            others = [m for m in range(q.shape[1]) if m != lead]
            first = np.argmax(vis[:, others], axis=1)  # [n, T]
            guess = np.take_along_axis(q[:, others], first[:, None, :, None], axis=1)[:, 0]
            guess = guess * vis[:, others].max(axis=1)[..., None]
            copy.append(((guess[score] - tgt) ** 2).sum())
        size = sum(int((vis[is_test, lead] == 0).sum()) for lead in range(q.shape[1])) * eb.PATCH
        out[norm] = {"ridge_mse": sum(err) / size, "zero_mse": sum(zero) / size,
                     "own_mean_mse": sum(own_mean) / size, "copy_same_time_mse": sum(copy) / size}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
