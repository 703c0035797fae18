"""Benchmark: one self-supervised PROPELLER training step per U-Net width; prints ONE JSON line.

The bundle's study setting (propeller_mri_reconstruction): 128², 8 birdcage coils, 8 of 16 blades x 12 lines x
256 readout samples, the unrolled network (3 unrolls, 3 CG steps, NUFFT data consistency through torchkbnufft)
trained with the readout-split k-space loss, Adam. The image is the shipped MR_small sample resized to 128²
(the content does not change the cost). Both widths are timed in the same run, so the ratio is what to read:
``step_ratio`` = time(32-64-128-256 step) / time(16-32-64 step); ``regulariser_share`` = the fraction of the
narrow step spent in the U-Net (its forward + backward on one 128² image, 4 applications per step).

Usage: python benchmarks/propeller_step.py [--iters 5]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _flops import median_seconds  # noqa: E402

WIDTHS = {"narrow": (16, 32, 64), "wide": (32, 64, 128, 256)}


def main(argv: list[str] | None = None) -> int:
    """Time the training steps and print the JSON line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=5)
    args = ap.parse_args(argv)
    from _propeller import study_acquisition

    from medssl.mri import BladeDataset, ReadoutSplitSSL, UnrolledRecon

    geo, blades, _, acq = study_acquisition()
    batch = {k: v[None] for k, v in BladeDataset([acq], blades)[0].items()}
    out: dict[str, object] = {"benchmark": "propeller_step", "threads": torch.get_num_threads(),
                              "setting": "128px, 8 coils, 8 of 16 blades x 12 x 256, 3 unrolls x 3 CG"}
    for name, channels in WIDTHS.items():
        net = UnrolledRecon(n_unrolls=3, cg_iters=3, channels=channels)
        method = ReadoutSplitSSL(net, geo.trajectory(blades), geo.sample_shape(len(blades)), 128, swap=False)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)

        def step(method: torch.nn.Module = method, opt: torch.optim.Optimizer = opt) -> None:
            loss = method(batch)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()

        x = torch.randn(1, 2, 128, 128)

        def regulariser(net: UnrolledRecon = net, x: torch.Tensor = x) -> None:
            net.regulariser(x).sum().backward()

        out[f"{name}_params"] = sum(p.numel() for p in net.parameters())
        out[f"{name}_step_s"] = median_seconds(step, "cpu", warmup=1, iters=args.iters)
        out[f"{name}_regulariser_s"] = median_seconds(regulariser, "cpu", warmup=1, iters=args.iters)
    out["step_ratio"] = out["wide_step_s"] / out["narrow_step_s"]
    out["regulariser_share"] = 4 * out["narrow_regulariser_s"] / out["narrow_step_s"]
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
