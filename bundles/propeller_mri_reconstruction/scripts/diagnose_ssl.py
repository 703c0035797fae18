r"""Diagnostic: does the readout-split k-space loss rank reconstructions the way PSNR does (CPU, minutes)?

The self-supervised network of the study came out below gridding. This script separates the two possible
causes without training anything new:

1. **The loss.** Fixed reconstructions from readout set A (CG-SENSE at several ``lambda`` / iteration counts,
   gridding blurred by a Gaussian of several widths) are scored by the held-out loss on set B (exactly as
   :class:`medssl.mri.ReadoutSplitSSL` computes it) and by PSNR against the clean image. PSNR is taken after a
   least-squares intensity fit, so the loss is also given at its best scalar scale of the candidate
   (``loss_scaled``: Tikhonov CG shrinks the image, which the raw loss punishes and PSNR does not). If the
   scaled loss ranks the candidates as PSNR does (Spearman rho near +1 against -PSNR), the objective is sound.
2. **Train / test mismatch.** A network trained to reconstruct from one readout set (half the samples: twice
   the noise variance) is run on all samples at inference. Each trained checkpoint given with ``--model`` is
   evaluated three ways: from set A only, from all samples, and as the mean of its set-A and set-B
   reconstructions (two inputs at the noise level it was trained on).

Example::

    OMP_NUM_THREADS=1 python bundles/propeller_mri_reconstruction/scripts/diagnose_ssl.py \
        --model runs/propeller_study/self_supervised_f0.5_s0/model.pt
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

BUNDLE = Path(__file__).resolve().parents[1]
if os.fspath(BUNDLE) not in sys.path:
    sys.path.insert(0, os.fspath(BUNDLE))

import torch  # noqa: E402

from scripts import propeller as P  # noqa: E402


def _spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def main(argv: list[str] | None = None) -> int:
    """Print one JSON object with the loss / PSNR table and the network evaluations."""
    from scipy.ndimage import gaussian_filter

    from medssl.mri import PropellerOperator, cg_sense, image_metrics
    from medssl.mri.methods import intensity_scale
    from medssl.transforms.kspace import readout_split

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=None)
    p.add_argument("--snr", type=float, default=20.0)
    p.add_argument("--fraction", type=float, default=0.5)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--readout", type=int, default=256)
    p.add_argument("--lines", type=int, default=12)
    p.add_argument("--split", default="interleaved", choices=["interleaved", "contiguous"])
    p.add_argument("--model", nargs="*", default=[], help="trained checkpoints (model.pt with model.json)")
    p.add_argument("--images", type=int, default=4, help="test images used")
    p.add_argument("--seed", type=int, default=0, help="test noise / phase of the study's seed (draw 2000 + seed)")
    args = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    data = args.data or P.default_data(BUNDLE)
    geo = P.PropellerGeometry(16, args.lines, args.readout, args.size)
    _, test_imgs = P.study_images(data, args.size)
    acqs = P.make_acquisitions(test_imgs[: args.images], geo, [args.snr], seed=2000 + args.seed, n_coils=8)
    blades = geo.blades(args.fraction)
    traj = geo.trajectory(blades)
    a_mask, b_mask = (m.reshape(-1) for m in readout_split(*geo.sample_shape(len(blades)), mode=args.split))
    op_all = PropellerOperator(traj, geo.im_size, None)
    op_a = PropellerOperator(traj[:, a_mask], geo.im_size, None)
    op_b = PropellerOperator(traj[:, b_mask], geo.im_size, None)

    def heldout_loss(op_out: PropellerOperator, x: torch.Tensor, y_out: torch.Tensor, fit: bool = False) -> float:
        aty = op_out.weighted_adjoint(y_out)
        n2 = op_out.weighted_norm2(y_out)
        if fit:  # min over a real scale c of c^2 q - 2 c l + n2
            q = (x.conj() * op_out.normal(x)).real.sum()
            lin = (x.conj() * aty).real.sum()
            return float(((n2 - lin**2 / q) / n2).mean())
        return float((op_out.data_loss(x, aty, n2) / n2).mean())

    candidates: dict[str, dict[str, list[float]]] = {}
    from medssl.errors import MedsslError

    try:
        nets = {m: P.load_model(m)[0] for m in args.model}
    except MedsslError as exc:  # a missing or foreign checkpoint: one line, exit code 2
        print(f"error: {exc}", file=sys.stderr)
        return 2
    net_rows: dict[str, dict[str, list[float]]] = {m: {} for m in args.model}
    for acq in acqs:
        y = acq["kspace"][:, blades].reshape(1, acq["kspace"].shape[0], -1)
        ya, yb = y[..., a_mask], y[..., b_mask]
        oa, ob, oall = op_a.with_sens(acq["sens"]), op_b.with_sens(acq["sens"]), op_all.with_sens(acq["sens"])
        ref, mask = acq["magnitude"], acq["mask"]
        recs: dict[str, torch.Tensor] = {}
        for lam in (0.0, 0.03, 0.1, 0.3, 1.0, 3.0):
            for it in (3, 10):
                recs[f"cg_lam{lam:g}_it{it}"] = cg_sense(oa, ya, lam=lam, n_iter=it)
        grid = oa.gridding(ya)
        for sigma in (0.0, 0.5, 0.75, 1.0, 1.5, 2.0):
            if sigma == 0:
                recs["grid_blur0"] = grid
                continue
            re = gaussian_filter(grid.real[0].numpy(), sigma)
            im = gaussian_filter(grid.imag[0].numpy(), sigma)
            recs[f"grid_blur{sigma:g}"] = torch.complex(torch.from_numpy(re), torch.from_numpy(im))[None]
        for name, x in recs.items():
            c = candidates.setdefault(name, {"loss": [], "loss_scaled": [], "psnr": []})
            c["loss"].append(heldout_loss(ob, x, yb))
            c["loss_scaled"].append(heldout_loss(ob, x, yb, fit=True))
            c["psnr"].append(image_metrics(x.abs()[0], ref, mask)["psnr"])
        for m, net in nets.items():
            with torch.no_grad():
                xa = P.reconstruct(net, oa, ya)
                xb = P.reconstruct(net, ob, yb)
                xall = P.reconstruct(net, oall, y)
                s = intensity_scale(xa)[0]
                rows = {"from_set_a": image_metrics(xa.abs()[0], ref, mask)["psnr"],
                        "from_all": image_metrics(xall.abs()[0], ref, mask)["psnr"],
                        "mean_of_a_and_b": image_metrics(((xa + xb) / 2).abs()[0], ref, mask)["psnr"],
                        "heldout_loss_from_a": heldout_loss(ob, xa, yb), "scale": float(s)}
            for k, v in rows.items():
                net_rows[m].setdefault(k, []).append(float(v))
        for name in ("gridding_all", "cg_all"):
            x = oall.gridding(y) if name == "gridding_all" else cg_sense(oall, y, lam=0.1, n_iter=10)
            candidates.setdefault(name, {"loss": [], "loss_scaled": [], "psnr": []})["psnr"].append(
                image_metrics(x.abs()[0], ref, mask)["psnr"])
    table = {k: {"loss": float(np.mean(v["loss"])) if v["loss"] else None,
                 "loss_scaled": float(np.mean(v["loss_scaled"])) if v["loss_scaled"] else None,
                 "psnr": float(np.mean(v["psnr"]))} for k, v in candidates.items()}
    ranked = [k for k in table if table[k]["loss"] is not None]
    out = {
        "snr": args.snr, "seed": args.seed, "fraction": args.fraction, "split": args.split, "images": len(acqs),
        "candidates_from_set_a": table,
        "spearman_loss_vs_minus_psnr": _spearman([table[k]["loss"] for k in ranked],
                                                 [-table[k]["psnr"] for k in ranked]),
        "spearman_scaled_loss_vs_minus_psnr": _spearman([table[k]["loss_scaled"] for k in ranked],
                                                        [-table[k]["psnr"] for k in ranked]),
        "argmin_loss": min(ranked, key=lambda k: table[k]["loss"]),
        "argmin_scaled_loss": min(ranked, key=lambda k: table[k]["loss_scaled"]),
        "argmax_psnr": max(ranked, key=lambda k: table[k]["psnr"]),
        "networks": {m: {k: float(np.mean(v)) for k, v in r.items()} for m, r in net_rows.items()},
    }
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
