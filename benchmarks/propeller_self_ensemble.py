"""Benchmark: the PROPELLER self-ensemble against one pass of the same network; prints ONE JSON line.

The shipped network's setting (propeller_mri_reconstruction): 128², 8 birdcage coils, 8 of 16 blades x 12 lines x
256 readout samples, the 32-64-128-256 unrolled network (3 unrolls x 3 CG steps), inference only. One pass
(``medssl.mri.methods.reconstruct``) and the self-ensemble (``self_ensemble=True``: the 8 rotated / flipped views,
each a relabelled acquisition on a transformed trajectory, reconstructed and turned back) are timed in the same run
after a warm-up (the views' operators are built once per trajectory and cached), so ``ensemble_ratio`` =
time(self-ensemble) / time(one pass) is what to read; ``view_setup_s`` is the one-off cost of the 7 extra operators.

Usage: python benchmarks/propeller_self_ensemble.py [--iters 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _flops import median_seconds  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Time both reconstructions and print the JSON line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=3)
    args = ap.parse_args(argv)
    from _propeller import study_acquisition

    from medssl.mri import PropellerOperator, UnrolledRecon
    from medssl.mri.methods import reconstruct

    geo, blades, sens, acq = study_acquisition()
    y = acq["kspace"][:, blades].reshape(1, 8, -1)
    op = PropellerOperator(geo.trajectory(blades), 128, sens)
    net = UnrolledRecon(n_unrolls=3, cg_iters=3, channels=(32, 64, 128, 256)).eval()
    t0 = time.perf_counter()
    for sym in range(1, 8):
        op.dihedral(sym)
    setup = time.perf_counter() - t0

    def single() -> None:
        with torch.no_grad():
            reconstruct(net, op, y)

    def ensemble() -> None:
        with torch.no_grad():
            reconstruct(net, op, y, self_ensemble=True)

    out: dict[str, object] = {"benchmark": "propeller_self_ensemble", "threads": torch.get_num_threads(),
                              "setting": "128px, 8 coils, 8 of 16 blades x 12 x 256, 3 unrolls x 3 CG, wide U-Net"}
    out["single_s"] = median_seconds(single, "cpu", warmup=1, iters=args.iters)
    out["ensemble_s"] = median_seconds(ensemble, "cpu", warmup=1, iters=args.iters)
    out["view_setup_s"] = setup
    out["ensemble_ratio"] = out["ensemble_s"] / out["single_s"]
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
