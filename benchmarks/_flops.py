"""Reusable FLOP counting and timing helpers for medssl benchmarks.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``. torch 2.13 has no formula for the CPU flash
attention kernels (``aten._scaled_dot_product_flash_attention_for_cpu`` and its backward), so they would count
as 0 FLOPs; :func:`register_cpu_sdpa_formulas` registers torch's own SDPA formulas for them: forward
``4 B H Nq Nk d`` (QK^T and PV), backward 2.5x that (dQ, dK, dV, dP plus the recomputed QK^T), the same
convention torch uses for its CUDA flash / efficient kernels. :func:`check_attention_flops` verifies this
against the unfused math path.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

__all__ = [
    "check_attention_flops",
    "count_flops",
    "matmul_gflops",
    "median_seconds",
    "register_cpu_sdpa_formulas",
    "sync",
]

_aten = torch.ops.aten


def register_cpu_sdpa_formulas() -> None:
    """Give the CPU flash-attention ops the FLOP formulas of their CUDA siblings (idempotent)."""
    fwd = _aten._scaled_dot_product_flash_attention_for_cpu
    bwd = _aten._scaled_dot_product_flash_attention_for_cpu_backward
    if fwd not in flop_counter.flop_registry:

        @register_flop_formula(fwd)
        def _fwd(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)

    if bwd not in flop_counter.flop_registry:

        @register_flop_formula(bwd)
        def _bwd(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def count_flops(fn: Callable[[], Any]) -> int:
    """Total FLOPs of everything ``fn`` runs (forward and backward if it calls ``backward``)."""
    register_cpu_sdpa_formulas()
    with FlopCounterMode(display=False) as mode:
        fn()
    return int(mode.get_total_flops())


def check_attention_flops(device: str = "cpu", b: int = 2, h: int = 3, n: int = 64, d: int = 16) -> dict[str, Any]:
    """Count fused SDPA vs the unfused math path (QK^T, softmax, PV), forward and backward separately.

    Expected: forward identical (``4 b h n^2 d``); fused backward = math backward (``8 b h n^2 d``) plus one
    recomputed QK^T (``2 b h n^2 d``), i.e. 2.5x the forward.
    """
    register_cpu_sdpa_formulas()
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(b, h, n, d, generator=g).to(device).requires_grad_() for _ in range(3))

    def math_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.softmax(q @ k.transpose(-1, -2) * d**-0.5, dim=-1) @ v

    counts: dict[str, int] = {}
    for name, attn in (("fused", F.scaled_dot_product_attention), ("math", math_attn)):
        with FlopCounterMode(display=False) as fwd_mode:
            out = attn(q, k, v)
        with FlopCounterMode(display=False) as bwd_mode:
            out.sum().backward()
        counts[f"{name}_fwd"] = int(fwd_mode.get_total_flops())
        counts[f"{name}_bwd"] = int(bwd_mode.get_total_flops())
    unit = b * h * n * n * d
    ok = (
        counts["fused_fwd"] == counts["math_fwd"] == 4 * unit
        and counts["math_bwd"] == 8 * unit
        and counts["fused_bwd"] == 10 * unit
    )
    return {**counts, "ok": ok}


def sync(device: torch.device | str) -> None:
    """Wait for queued kernels so wall-clock timings are real (no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def median_seconds(fn: Callable[[], Any], device: torch.device | str, warmup: int = 1, iters: int = 3) -> float:
    """Median wall-clock seconds of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_gflops(
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
    n: int = 2048,
    warmup: int = 2,
    iters: int = 5,
) -> float:
    """This machine's dense ``n^3`` matmul throughput in GFLOP/s (``2 n^3`` FLOPs per product)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sec = median_seconds(lambda: torch.mm(a, b), device, warmup=warmup, iters=iters)
    return 2 * n**3 / sec / 1e9
