"""Benchmark: one V-JEPA training step and one 2-D MAE step; prints ONE JSON line.

V-JEPA (arXiv:2404.08471): ViT-tiny/16 on 2 clips of 16x224x224 (tubelet 2 -> 8x14x14 = 1568 tokens),
multi-block masks (~90 %), context encoder on context tokens only, EMA target encoder on all tokens
(no grad), predictor depth 6 width 384, L1 loss on layer-normed targets, AdamW step, EMA update.
MAE (arXiv:2111.06377): ViT-tiny/16 on 224x224 images, mask ratio 0.75.

Reported: FLOPs per step (FlopCounterMode, CPU flash attention counted, see _flops.py), achieved GFLOP/s,
the same machine's 2048^3 matmul GFLOP/s (bf16 on CUDA) and their ratio (mfu); context_only_speedup =
time(online encoder fwd+bwd on ALL tokens, masked ones replaced by a learned mask token) / time(context
tokens only); step_speedup = the same ratio for the whole step.

Usage: python benchmarks/ssl_step.py [--quick] [--device cpu|cuda|auto]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import sys
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _flops import (  # noqa: E402
    check_attention_flops,
    count_flops,
    matmul_gflops,
    median_seconds,
)

from medssl.masking import MultiBlockMask3D, RandomPatchMask  # noqa: E402
from medssl.networks import JEPAPredictor, MAEDecoder, create_encoder, gather_tokens, patchify  # noqa: E402

try:  # the losses package is built concurrently; fall back to the formula
    from medssl.losses import JEPALoss  # type: ignore[attr-defined]

    _JEPA_LOSS: nn.Module | None = JEPALoss()
except Exception:  # noqa: BLE001
    _JEPA_LOSS = None


def jepa_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between predictions and layer-normed targets (V-JEPA)."""
    if _JEPA_LOSS is not None:  # normalises the targets itself
        return _JEPA_LOSS(pred.float(), target.float())
    target = F.layer_norm(target.float(), (target.shape[-1],))
    return (pred.float() - target).abs().mean()


def masked_tokens_mode(enc: nn.Module, mask_token: torch.Tensor, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
    """Baseline without context-only encoding: every token goes through the encoder, masked ones replaced
    by a learned mask token (+ position), and the context outputs are gathered afterwards."""
    tokens = enc.embed(x)
    keep = torch.zeros(tokens.shape[:2], dtype=torch.bool, device=x.device).scatter_(1, ctx, True)
    masked = mask_token.to(tokens.dtype) + enc.position_embedding().to(tokens.dtype)
    tokens = torch.where(keep[..., None], tokens, masked)
    return gather_tokens(enc.encode(tokens), ctx)


class JEPAStep:
    """Everything one V-JEPA step touches; ``__call__(all_tokens)`` runs one optimisation step."""

    def __init__(self, cfg: dict[str, Any], device: torch.device, dtype: torch.dtype | None) -> None:
        self.device, self.dtype = device, dtype
        self.online = create_encoder(
            cfg["encoder"],
            in_channels=3,
            img_size=cfg["img"],
            patch_size=cfg["patch"],
            num_frames=cfg["frames"],
            tubelet_size=cfg["tubelet"],
            **cfg.get("enc_overrides", {}),
        ).to(device)
        self.target = copy.deepcopy(self.online).requires_grad_(False)
        self.predictor = JEPAPredictor(
            self.online.num_patches,
            self.online.hidden_size,
            predictor_dim=cfg["pred_dim"],
            depth=cfg["pred_depth"],
            num_heads=cfg["pred_heads"],
            grid_size=self.online.grid_size,
        ).to(device)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, self.online.hidden_size, device=device))
        params = [*self.online.parameters(), *self.predictor.parameters(), self.mask_token]
        self.opt = torch.optim.AdamW([p for p in params if p.requires_grad], lr=1e-4, weight_decay=0.04)
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(cfg["batch"], 3, cfg["frames"], cfg["img"], cfg["img"], generator=g).to(device)
        grid = self.online.grid_size
        if cfg.get("vjepa_masks"):  # V-JEPA's recipe: a short-range and a long-range mask, one pass each
            generators = [MultiBlockMask3D(grid, long=(0, 0.7)), MultiBlockMask3D(grid, short=(0, 0.15))]
        else:  # medssl's default: one mask, the union of both block families
            generators = [MultiBlockMask3D(grid)]
        self.masks = [tuple(t.to(device) for t in gen(cfg["batch"], g)) for gen in generators]
        n = self.online.num_patches
        self.mask_ratio = sum(1.0 - c.shape[1] / n for c, _ in self.masks) / len(self.masks)
        self.target_ratio = sum(t.shape[1] / n for _, t in self.masks) / len(self.masks)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def encode_context(self, ctx: torch.Tensor, all_tokens: bool) -> torch.Tensor:
        if all_tokens:
            return masked_tokens_mode(self.online, self.mask_token, self.x, ctx)
        return self.online(self.x, ctx)

    def encoder_only(self, all_tokens: bool) -> None:
        """Online encoder forward + backward only (for context_only_speedup)."""
        with self.autocast():
            zs = [self.encode_context(ctx, all_tokens) for ctx, _ in self.masks]
        sum(z.float().square().mean() for z in zs).backward()
        self.opt.zero_grad(set_to_none=True)

    def forward_backward(self, all_tokens: bool = False) -> float:
        with self.autocast():
            with torch.no_grad():
                h = self.target(self.x)
            loss = 0.0
            for ctx, tgt in self.masks:
                pred = self.predictor(self.encode_context(ctx, all_tokens), ctx, tgt)
                loss = loss + jepa_loss(pred, gather_tokens(h, tgt)) / len(self.masks)
        loss.backward()
        return float(loss.detach())

    @torch.no_grad()
    def ema(self, momentum: float = 0.998) -> None:
        tp = list(self.target.parameters())
        op = list(self.online.parameters())
        torch._foreach_mul_(tp, momentum)
        torch._foreach_add_(tp, op, alpha=1.0 - momentum)

    def __call__(self, all_tokens: bool = False) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.forward_backward(all_tokens)
        self.opt.step()
        self.ema()


class MAEStep:
    """One MAE step: encoder on visible tokens, decoder, normalised-pixel MSE on masked tokens, AdamW."""

    def __init__(self, cfg: dict[str, Any], device: torch.device, dtype: torch.dtype | None) -> None:
        self.device, self.dtype = device, dtype
        self.enc = create_encoder(
            cfg["encoder"],
            in_channels=3,
            img_size=cfg["img"],
            patch_size=cfg["patch"],
            **cfg.get("enc_overrides", {}),
        ).to(device)
        self.dec = MAEDecoder(
            self.enc.num_patches, self.enc.hidden_size, self.enc.patch_dim, grid_size=self.enc.grid_size
        )
        self.dec.to(device)
        self.opt = torch.optim.AdamW([*self.enc.parameters(), *self.dec.parameters()], lr=1.5e-4, weight_decay=0.05)
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(cfg["batch"], 3, cfg["img"], cfg["img"], generator=g).to(device)
        ctx, tgt = RandomPatchMask(self.enc.grid_size, cfg["mask_ratio"])(cfg["batch"], g)
        self.ctx, self.tgt = ctx.to(device), tgt.to(device)

    def forward_backward(self) -> None:
        ctx_manager = (
            contextlib.nullcontext() if self.dtype is None else torch.autocast(self.device.type, dtype=self.dtype)
        )
        with ctx_manager:
            target = gather_tokens(patchify(self.x, self.enc), self.tgt)
            target = F.layer_norm(target, (target.shape[-1],), eps=1e-6)  # MAE's per-patch normalised pixels
            pred = self.dec(self.enc(self.x, self.ctx), self.ctx, self.tgt)
            loss = F.mse_loss(pred.float(), target.float())
        loss.backward()

    def __call__(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.forward_backward()
        self.opt.step()


def configs(quick: bool) -> tuple[dict[str, Any], dict[str, Any], int, int]:
    """(jepa config, mae config, warmup, iters)."""
    if quick:
        jepa = {
            "encoder": "vit_tiny", "img": 32, "patch": 8, "frames": 4, "tubelet": 2, "batch": 2,
            "pred_dim": 96, "pred_depth": 2, "pred_heads": 4, "enc_overrides": {"depth": 2},
        }  # fmt: skip
        mae = {
            "encoder": "vit_tiny",
            "img": 32,
            "patch": 8,
            "batch": 4,
            "mask_ratio": 0.75,
            "enc_overrides": {"depth": 2},
        }
        return jepa, mae, 2, 3
    jepa = {
        "encoder": "vit_tiny", "img": 224, "patch": 16, "frames": 16, "tubelet": 2, "batch": 2,
        "pred_dim": 384, "pred_depth": 6, "pred_heads": 12,
    }  # fmt: skip
    mae = {"encoder": "vit_tiny", "img": 224, "patch": 16, "batch": 32, "mask_ratio": 0.75}
    return jepa, mae, 1, 3


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--iters", type=int, default=None, help="timed iterations (median)")
    parser.add_argument("--batch", type=int, default=None, help="V-JEPA clips per step (default 2)")
    parser.add_argument("--mae-batch", type=int, default=None, help="MAE images per step (default 32)")
    parser.add_argument(
        "--vjepa-masks",
        action="store_true",
        help="V-JEPA's recipe (two masks per clip, short- and long-range, one context+predictor pass each) "
        "instead of medssl's single union mask; this is the configuration of jepa's 796 GFLOP/step",
    )
    args = parser.parse_args(argv)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    dtype = torch.bfloat16 if on_cuda else None
    jcfg, mcfg, warmup, iters = configs(args.quick)
    iters = args.iters or iters
    jcfg["vjepa_masks"] = args.vjepa_masks
    if args.batch:
        jcfg["batch"] = args.batch
    if args.mae_batch:
        mcfg["batch"] = args.mae_batch
    torch.manual_seed(0)

    attn_check = check_attention_flops(str(device))
    peak_dtype = torch.bfloat16 if on_cuda else torch.float32
    # The peak is measured before and after the model timings and averaged: on a shared CPU the clock and
    # the neighbours' load drift during a run, and one burst measurement would skew the ratio either way.
    peak_before = matmul_gflops(device, peak_dtype)

    jepa = JEPAStep(jcfg, device, dtype)
    gflop_step = count_flops(lambda: jepa.forward_backward(False)) / 1e9
    gflop_step_all = count_flops(lambda: jepa.forward_backward(True)) / 1e9
    jepa.opt.zero_grad(set_to_none=True)
    step_s = median_seconds(lambda: jepa(False), device, warmup, iters)
    step_all_s = median_seconds(lambda: jepa(True), device, warmup, iters)
    enc_s = median_seconds(lambda: jepa.encoder_only(False), device, warmup, iters)
    enc_all_s = median_seconds(lambda: jepa.encoder_only(True), device, warmup, iters)

    mae = MAEStep(mcfg, device, dtype)
    mae_gflop = count_flops(mae.forward_backward) / 1e9
    mae.opt.zero_grad(set_to_none=True)
    mae_s = median_seconds(mae, device, warmup, iters)

    peak_after = matmul_gflops(device, peak_dtype)
    peak = (peak_before + peak_after) / 2
    achieved = gflop_step / step_s
    result = {
        "achieved_gflops": round(achieved, 2),
        "matmul_gflops": round(peak, 2),
        "matmul_gflops_before_after": [round(peak_before, 2), round(peak_after, 2)],
        "mfu": round(achieved / peak, 3),
        "context_only_speedup": round(enc_all_s / enc_s, 2),
        "step_speedup": round(step_all_s / step_s, 2),
        "gflop_per_step": round(gflop_step, 2),
        "gflop_per_step_all_tokens": round(gflop_step_all, 2),
        "step_seconds": round(step_s, 3),
        "step_seconds_all_tokens": round(step_all_s, 3),
        "encoder_seconds_context": round(enc_s, 4),
        "encoder_seconds_all_tokens": round(enc_all_s, 4),
        "mask_ratio": round(jepa.mask_ratio, 4),
        "target_ratio": round(jepa.target_ratio, 4),
        "jepa_config": {k: v for k, v in jcfg.items()} | {"tokens": jepa.online.num_patches},
        "jepa_loss": "medssl.losses.JEPALoss" if _JEPA_LOSS is not None else "inline L1",
        "mae_gflop_per_step": round(mae_gflop, 2),
        "mae_step_seconds": round(mae_s, 3),
        "mae_achieved_gflops": round(mae_gflop / mae_s, 2),
        "mae_mfu": round(mae_gflop / mae_s / peak, 3),
        "mae_config": mcfg,
        "attn_flops_check": attn_check["ok"],
        "device": torch.cuda.get_device_name(device) if on_cuda else "cpu",
        "dtype": "bfloat16-autocast" if on_cuda else "float32",
        "threads": torch.get_num_threads(),
        "warmup": warmup,
        "iters": iters,
        "quick": args.quick,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
