"""The PROPELLER study of the propeller_mri_reconstruction bundle, in one command (CPU-sized).

1. Fixed split of real magnitude images (scripts/propeller.py, docs/split.json); every image gets a smooth
   synthetic phase, 8 birdcage coils and complex Gaussian noise at SNR 20 or 10 (image-domain definition).
2. Conventional baselines on the test images: gridding, CG-SENSE, and each followed by a scikit-image denoiser;
   CG-SENSE's lambda / iterations and the denoiser (NLM or TV, strength) are tuned on training images for
   every (SNR, blade fraction).
3. The unrolled network (shared MONAI U-Net + CG data consistency) trained three ways on the training images'
   noisy blades, once per (blade fraction, seed), on both SNRs together: ``self_supervised`` (readout split,
   k-space loss), ``ssdu`` (random Theta / Lambda, rho 0.4, L1 + L2) and ``supervised`` (clean targets).
4. Test metrics after the least-squares scale fit, mean over the test images per seed: rows appended to
   docs/results.json (full data only), the table rendered into docs/README.md, figures to docs/figures/.
5. The issue's calibration setting at 256² (16 blades x 24 lines x 256 readout, SNR 20), conventional only.

The study's acquisition (128²): 16 blades x 12 lines x 256 readout samples, i.e. the issue's blade geometry
scaled to 128² with the readout 2x oversampled (as scanners acquire it); the per-sample noise is scaled so that
the image-domain SNR is unchanged. With Nyquist readout the interleaved halves alias at FOV/2 along every
blade, a distortion the network learns to undo and then wrongly "undoes" on complete data.

Examples::

    OMP_NUM_THREADS=1 python bundles/propeller_mri_reconstruction/scripts/experiment.py --out runs/propeller_study
    python bundles/propeller_mri_reconstruction/scripts/experiment.py --quick --out /tmp/propeller_quick
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

BUNDLE = Path(__file__).resolve().parents[1]
if os.fspath(BUNDLE) not in sys.path:
    sys.path.insert(0, os.fspath(BUNDLE))

import torch  # noqa: E402

from medssl.eval.results import append_result, load_results  # noqa: E402
from medssl.mri import SENS_CENTRE_FRACTION  # noqa: E402
from scripts import propeller as P  # noqa: E402

METRICS = ("psnr", "ssim", "nmse", "psnr_mask", "ssim_mask")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=None, help="data root (default: ../shared/data)")
    p.add_argument("--out", default="runs/propeller_study")
    p.add_argument("--quick", action="store_true", help="tiny smoke settings (rows go under --out only)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--snrs", type=float, nargs="+", default=[20.0, 10.0])
    p.add_argument("--fractions", type=float, nargs="+", default=[0.5, 1.0])
    p.add_argument("--methods", nargs="+", default=list(P.TRAINED))
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--lines", type=int, default=12)
    p.add_argument("--readout", type=int, default=256, help="readout samples (256 at 128²: 2x oversampling)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64],
                   help="U-Net widths of the trained networks (the study's tables: 16 32 64; the shipped model: "
                        "32 64 128 256)")
    p.add_argument("--blades", type=int, default=16)
    p.add_argument("--coils", type=int, default=8)
    p.add_argument("--skip", nargs="*", default=[], choices=["conventional", "calibration", "trained"])
    p.add_argument("--budget-minutes", type=float, default=0.0, help="stop starting trainings after this long")
    p.add_argument("--no-models", action="store_true", help="never write models/ (the default unless --write-models)")
    p.add_argument("--write-models", action="store_true",
                   help="copy the seed-0 self-supervised half-blade network to models/, replacing the shipped one")
    p.add_argument("--results", default=None,
                   help="rows file (default: docs/results.json with the full data, else OUT/results.json); the "
                        "model card's table is re-rendered only from docs/results.json")
    p.add_argument("--evaluate", default=None, nargs="+", metavar="MODEL",
                   help="evaluate this trained checkpoint (e.g. models/model.pt) beside the conventional methods on "
                        "every seed's test acquisitions, instead of training; rows under the task suffix _model. "
                        "Several checkpoints trained at one SNR each (models/model_snr10.pt models/model_snr20.pt) "
                        "are evaluated noise-matched: every acquisition goes to the network nearest its SNR "
                        "estimated from the data; rows under the task suffix _noise_matched")
    p.add_argument("--estimated-sens", action="store_true",
                   help="every method uses coil maps estimated from the blades in use (as on measured data) "
                        "instead of the true ones, and the conventional methods are tuned with such maps; rows under "
                        "the task suffix _estimated_sens")
    p.add_argument("--sens-centre-fraction", type=float, default=SENS_CENTRE_FRACTION, metavar="F",
                   help="with --estimated-sens: the k-space radius (fraction of pi, in (0, 1]) the maps are "
                        f"estimated from (default {SENS_CENTRE_FRACTION}, what medssl infer uses; others add the "
                        "task suffix _cfF)")
    p.add_argument("--self-ensemble", action="store_true",
                   help="every method (networks and conventional) averages its reconstructions of the 8 rotated / "
                        "flipped views of each acquisition, as `medssl infer` does by default; rows under the task "
                        "suffix _self_ensemble")
    p.add_argument("--no-figures", action="store_true", help="do not write docs/figures (e.g. a top-up run)")
    p.add_argument("--table", nargs="+", default=None, metavar="RESULTS",
                   help="only print the mean ± std tables of these results files together (e.g. one --evaluate "
                        "run per seed), each row once; nothing is trained or written")
    p.add_argument("--calibration-tune", action="store_true",
                   help="also tune CG-SENSE / the denoiser at the 256² calibration setting (slow on a CPU)")
    return p.parse_args(argv)


def _task(size: int, snr: float, frac: float) -> str:
    return f"propeller_{size}px_snr{snr:g}_{'all' if frac >= 1 else 'half'}_blades"


def _rows(results: str | os.PathLike[str], res: dict[str, Any], size: int, snr: float, frac: float, seed: int,
          command: str, task: str | None = None, extra: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    rows = []
    for method, mets in res["metrics"].items():
        for metric in METRICS:
            row = {"task": task or _task(size, snr, frac), "blade_fraction": frac, "snr": snr, "seed": seed,
                   "method": method, "metric": metric, "value": float(np.mean(mets[metric])), "command": command,
                   "label_fraction": 1.0, "init": method, "split_file": "docs/split.json",
                   "im_size": size, "n_test_images": len(mets[metric]), **(extra or {})}
            rows.append(append_result(results, row))
    return rows


def _log(**kw: Any) -> None:
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in kw.items()}), flush=True)


def merged_rows(paths: list[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    """The rows of several results files, each (task, SNR, blade fraction, seed, method, metric) once.

    Separate ``--evaluate`` runs of one seed each write the same conventional rows; the first one is kept.
    """
    seen: set[tuple] = set()
    out = []
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such results file")
        try:
            rows = load_results(path)
            keys = [(r["task"], r["snr"], r["blade_fraction"], r["seed"], r["method"], r["metric"]) for r in rows]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not a results file ({type(exc).__name__}: {exc})") from None
        for key, r in zip(keys, rows, strict=True):
            if key not in seen:
                seen.add(key)
                out.append(r)
    return out


def summary_table(results: str | os.PathLike[str] | list[dict[str, Any]]) -> str:
    """Markdown tables (one per setting) of mean ± std over seeds of every method and metric.

    Args:
        results: a results file, or rows (e.g. :func:`merged_rows`).
    """
    rows = results if isinstance(results, list) else load_results(results)
    groups: dict[tuple, dict[str, dict[str, list[float]]]] = {}
    models: dict[tuple, set[str]] = {}
    for r in rows:
        key = (r["task"], r.get("im_size", 0), r["snr"], r["blade_fraction"])
        groups.setdefault(key, {}).setdefault(r["method"], {}).setdefault(r["metric"], []).append(r["value"])
        if r.get("model"):
            models.setdefault(key, set()).add(str(r["model"]))
    out = []
    order = {m: i for i, m in enumerate(P.METHODS)}
    def base(task: str) -> str:
        return re.sub(r"_estimated_sens(_cf[0-9.]+)?$", "", task.removesuffix("_self_ensemble"))

    def order_key(k: tuple) -> tuple:
        kind = base(k[0]).endswith("_model") + 2 * base(k[0]).endswith("_noise_matched")
        return ("calib" in k[0], k[0].endswith("_self_ensemble"), "_estimated_sens" in k[0], kind, -k[2], k[3])

    for key in sorted(groups, key=order_key):
        task, size, snr, frac = key
        label = "study"
        if base(task).endswith("_noise_matched"):
            names = ", ".join(f"`{m}`" for m in sorted({n for ms in models.get(key, set()) for n in ms.split(", ")}))
            label = (f"noise-matched networks {names}: every test acquisition reconstructed by the one nearest its "
                     "SNR estimated from the data, on every seed's test acquisitions")
        elif base(task).endswith("_model"):
            evaluated = sorted(models.get(key, set()))
            if all(m.endswith("models/model.pt") for m in evaluated):
                label = "the shipped checkpoint `models/model.pt` on every seed's test acquisitions"
            else:
                names = ", ".join(f"`{m}`" for m in evaluated)
                label = f"checkpoints {names}, each on its seed's test acquisitions"
        if label == "study" and task != base(task):  # a rerun of the conventional methods under other conditions
            label = "conventional methods"
        if "calib" in task:
            label = "calibration, conventional only, " + ("tuned on training images" if "tuned" in task else
                                                          "the issue's settings")
        if "_estimated_sens" in task:
            label += "; every method with coil maps estimated from the blades in use, not the true ones"
            if (m := re.search(r"_cf([0-9.]+)", task)) is not None:
                label += f" (from the k-space radius {m.group(1)} x pi instead of {SENS_CENTRE_FRACTION})"
        if task.endswith("_self_ensemble"):
            label += "; every method averaged over the 8 rotated / flipped views of each acquisition (self-ensemble)"
        out.append(f"**{size}², SNR {snr:g}, {'all' if frac >= 1 else 'half the'} blades** ({label}; `{task}`)\n")
        out.append("| method | PSNR (dB) | SSIM | NMSE | PSNR body (dB) | SSIM body | seeds |")
        out.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for method in sorted(groups[key], key=lambda m: order.get(m, 99)):
            mets = groups[key][method]
            cells = []
            for metric, d in zip(METRICS, (2, 4, 5, 2, 4), strict=True):
                v = np.asarray(mets.get(metric, [np.nan]))
                sd = float(v.std(ddof=1)) if v.size > 1 else 0.0
                cells.append(f"{v.mean():.{d}f} ± {sd:.{d}f}")
            out.append(f"| {method} | " + " | ".join(cells) + f" | {len(mets.get('psnr', []))} |")
        out.append("")
    return "\n".join(out) if out else "_no results yet_"


def render(results: Path, readme: Path) -> str:
    """Write :func:`summary_table` between the results markers of the README (atomically)."""
    from medssl.eval.results import END_MARKER, START_MARKER
    from medssl.ssl.checkpoint import atomic_write_text

    table = summary_table(results)
    text = readme.read_text()
    a, b = text.find(START_MARKER), text.find(END_MARKER)
    if a >= 0 and b > a:
        atomic_write_text(readme, text[: a + len(START_MARKER)] + "\n" + table + "\n" + text[b:])
    return table


def figure(path: Path, res: dict[str, Any], idx: int, title: str) -> None:
    """A row of magnitude images (reference and every method) for test acquisition ``idx``, with PSNRs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medssl.mri import scale_fit

    imgs = res["images"]
    ref = imgs["reference"][idx]
    names = [m for m in P.METHODS if m in imgs]
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(2.6 * (len(names) + 1), 3.0))
    vmax = float(np.percentile(ref, 99.5))
    axes[0].imshow(ref, cmap="gray", vmin=0, vmax=vmax)
    axes[0].set_title("reference", fontsize=8)
    for ax, name in zip(axes[1:], names, strict=True):
        img = imgs[name][idx]
        ax.imshow(img * scale_fit(img, ref), cmap="gray", vmin=0, vmax=vmax)
        ax.set_title(f"{name}\n{res['metrics'][name]['psnr'][idx]:.2f} dB", fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=80, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    """Run the study; returns 0 when everything ran, 1 when the budget cut trainings off."""
    args = parse_args(argv)
    if args.table:
        try:
            print(summary_table(merged_rows(args.table)), flush=True)
        except (FileNotFoundError, ValueError) as exc:
            print(f"experiment: {exc}", file=sys.stderr)
            return 2
        return 0
    if not 0.0 < args.sens_centre_fraction <= 1.0:
        print(f"experiment: --sens-centre-fraction must lie in (0, 1], got {args.sens_centre_fraction}",
              file=sys.stderr)
        return 2
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    evaluated: tuple[Any, dict[str, Any]] | None = None
    if args.evaluate:  # before any simulation or tuning: a bad path is a one-line error
        from medssl.errors import MedsslError

        try:
            if len(args.evaluate) == 1:
                evaluated = P.load_model(args.evaluate[0])
            else:
                matched = P.load_noise_matched(args.evaluate)
                evaluated = (matched, P.load_model(args.evaluate[0])[1])
        except MedsslError as exc:
            print(f"experiment: {exc}", file=sys.stderr)
            return 2
    t0 = time.time()
    deadline = t0 + 60 * args.budget_minutes if args.budget_minutes > 0 else None
    data = args.data or P.default_data(BUNDLE)
    full = P.is_full_dataset(data) and not args.quick
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.quick:
        args.steps, args.seeds, args.snrs, args.fractions = min(args.steps, 10), args.seeds[:1], args.snrs[:1], [0.5]
    results = BUNDLE / "docs" / "results.json" if full else out / "results.json"
    card = full and args.results is None
    if args.results is not None:
        results = Path(args.results).resolve()
    figs = BUNDLE / "docs" / "figures" if card else out / "figures"
    command = "python bundles/propeller_mri_reconstruction/scripts/experiment.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    size = args.size
    geo = P.PropellerGeometry(args.blades, args.lines, args.readout, size)
    train_imgs, test_imgs = P.study_images(data, size)
    only_calibration = set(args.skip) >= {"conventional", "trained"}
    if args.quick:
        train_imgs, test_imgs = train_imgs[:2], test_imgs[:1]
    if full:
        from medssl.ssl.checkpoint import atomic_write_json

        atomic_write_json(BUNDLE / "docs" / "split.json", {
            "train": [n for n, _ in train_imgs], "test": [n for n, _ in test_imgs],
            "files": {"train": P.TRAIN_FILES, "test": P.TEST_FILES},
            "train_slices_example4d_volume0": list(P.TRAIN_SLICES),
            "test_slices_example4d_volume1": list(P.TEST_SLICES)})
    _log(data=os.fspath(data), full=full, train=len(train_imgs), test=len(test_imgs), geometry=geo.__dict__,
         results=os.fspath(results))

    # test acquisitions per (seed, snr): the phase and noise realisation of the seed
    test_acq = {} if only_calibration else {
        (s, snr): P.make_acquisitions(test_imgs, geo, [snr], seed=2000 + s, n_coils=args.coils)
        for s in args.seeds for snr in args.snrs}
    tune_imgs = train_imgs[:: max(1, len(train_imgs) // 6)][:6]
    skip_tuning = only_calibration or ("conventional" in args.skip and args.no_figures and not args.evaluate)
    tune_pool = [] if skip_tuning else P.make_acquisitions(tune_imgs, geo, args.snrs, seed=999, n_coils=args.coils)
    conv: dict[tuple[float, float], dict[str, Any]] = {}
    for snr in [] if skip_tuning else args.snrs:
        for frac in args.fractions:
            pool = [a for a in tune_pool if a["snr"] == snr]
            if args.estimated_sens:  # the baselines are tuned with the maps they will be used with
                pool = P.with_estimated_sens(pool, geo, geo.blades(frac), args.sens_centre_fraction)
            conv[(snr, frac)] = P.tune_conventional(pool, geo, geo.blades(frac))
            _log(tuned=True, snr=snr, fraction=frac, **conv[(snr, frac)])

    cf = "" if args.sens_centre_fraction == SENS_CENTRE_FRACTION else f"_cf{args.sens_centre_fraction:g}"
    sens_suffix = ("_estimated_sens" + cf if args.estimated_sens else "") + (
        "_self_ensemble" if args.self_ensemble else "")
    if "conventional" not in args.skip:
        for s in args.seeds:
            for snr in args.snrs:
                for frac in args.fractions:
                    res = P.evaluate(test_acq[(s, snr)], geo, geo.blades(frac), conv=conv[(snr, frac)],
                                     estimated_sens=args.estimated_sens, self_ensemble=args.self_ensemble,
                                     sens_centre_fraction=args.sens_centre_fraction)
                    _rows(results, res, size, snr, frac, s, command, task=_task(size, snr, frac) + sens_suffix,
                          extra={"settings": conv[(snr, frac)]})
                    _log(seed=s, snr=snr, fraction=frac, **{m: float(np.mean(v["psnr"])) for m, v in
                                                            res["metrics"].items()})

    skipped = []
    if evaluated is not None:
        net, meta = evaluated
        model_name = ", ".join(os.fspath(m) for m in args.evaluate)
        suffix = ("_noise_matched" if isinstance(net, P.NoiseMatched) else "_model") + sens_suffix
        extra = {"model": model_name, "steps": meta.get("steps"), "trained_seed": meta.get("seed")}
        method = str(meta.get("method", "self_supervised"))
        for s in args.seeds:
            for snr in args.snrs:
                for frac in args.fractions:
                    res = P.evaluate(test_acq[(s, snr)], geo, geo.blades(frac), networks={method: net},
                                     conv=conv[(snr, frac)], keep_images=s == args.seeds[0],
                                     estimated_sens=args.estimated_sens, self_ensemble=args.self_ensemble,
                                     sens_centre_fraction=args.sens_centre_fraction)
                    chosen = {}
                    if "selection" in res:
                        sel = res["selection"][method]
                        chosen = {"estimated_snr": [round(e, 2) for e, _ in sel], "chosen_snr": [c for _, c in sel]}
                    _rows(results, res, size, snr, frac, s, command, task=_task(size, snr, frac) + suffix,
                          extra={**extra, **chosen})
                    _log(seed=s, snr=snr, fraction=frac, model=model_name, **chosen,
                         **{m: float(np.mean(v["psnr"])) for m, v in res["metrics"].items()})
                    if s == args.seeds[0] and not args.no_figures:
                        which = "noise-matched models" if suffix.startswith("_noise_matched") else "shipped model"
                        which += ", self-ensemble" if args.self_ensemble else ""
                        for i, (name, _) in enumerate(test_imgs):
                            half = "all" if frac >= 1 else "half"
                            figure(figs / f"{suffix[1:]}_{name}_snr{snr:g}_{half}.png", res, i,
                                   f"{name}: SNR {snr:g}, {len(geo.blades(frac))} of {geo.n_blades} blades "
                                   f"({which}, test noise seed {s})")
    if "trained" not in args.skip and not args.evaluate:
        for s in args.seeds:
            train_acq = P.make_acquisitions(train_imgs, geo, args.snrs, seed=1000 + s, n_coils=args.coils)
            for frac in args.fractions:
                blades = geo.blades(frac)
                nets = {}
                for method in args.methods:
                    if deadline is not None and time.time() > deadline:
                        skipped.append(f"{method}/{frac}/{s}")
                        continue
                    t1 = time.time()
                    torch.manual_seed(s)
                    net = P.build_network(channels=args.channels)
                    m = P.build_method(method, net, geo, blades, seed=s)
                    run_dir = out / f"{method}_f{frac:g}_s{s}"
                    hist = P.train(m, P.BladeDataset(train_acq, blades), run_dir, args.steps, lr=args.lr, seed=s)
                    loss = hist["loss"]
                    info = {"method": method, "blade_fraction": frac, "snrs": args.snrs, "steps": args.steps,
                            "geometry": {"n_blades": args.blades, "n_lines": args.lines, "n_readout": args.readout,
                                         "im_size": size, "n_coils": args.coils},
                            "train_images": [n for n, _ in train_imgs], "seed": s, "readout_split": "interleaved",
                            "command": command}
                    P.save_model(run_dir / "model.pt", net, info)
                    nets[method] = net
                    _log(trained=method, seed=s, fraction=frac, seconds=round(time.time() - t1, 1),
                         loss_first=float(np.mean(loss[:10])), loss_last=float(np.mean(loss[-10:])),
                         mu=float(net.mu.detach()))
                    for snr in args.snrs:
                        keep = s == args.seeds[0]
                        res = P.evaluate(test_acq[(s, snr)], geo, blades, networks={method: net}, keep_images=keep)
                        _rows(results, res, size, snr, frac, s, command, extra={"steps": args.steps})
                        _log(seed=s, snr=snr, fraction=frac, method=method,
                             psnr=float(np.mean(res["metrics"][method]["psnr"])))
                    ship = method == "self_supervised" and frac == 0.5 and s == args.seeds[0]
                    if full and args.write_models and not args.no_models and ship:
                        for suffix in (".pt", ".json"):
                            dst = BUNDLE / "models" / f"model{suffix}"
                            tmp = dst.with_name(f".{dst.name}.tmp")
                            shutil.copyfile(run_dir / f"model{suffix}", tmp)
                            os.replace(tmp, dst)
                        _log(models=os.fspath(BUNDLE / "models"))
                if s == args.seeds[0] and nets and not args.no_figures:
                    for snr in args.snrs:
                        res = P.evaluate(test_acq[(s, snr)], geo, blades, networks=nets, conv=conv[(snr, frac)],
                                         keep_images=True)
                        for i, (name, _) in enumerate(test_imgs):
                            figure(figs / f"{name}_snr{snr:g}_{'all' if frac >= 1 else 'half'}.png", res, i,
                                   f"{name}: SNR {snr:g}, {len(blades)} of {geo.n_blades} blades (seed {s})")
    if "calibration" not in args.skip and not args.quick and not args.evaluate:
        big = P.PropellerGeometry(16, 24, 256, 256)
        tr256, te256 = P.study_images(data, 256)
        pool = P.make_acquisitions(tr256[:: max(1, len(tr256) // 4)][:4], big, [20.0], seed=999, n_coils=8) \
            if args.calibration_tune else []
        for frac in (0.5, 1.0):
            configs = {"issue": {"lam": 0.1, "n_iter": 10, "denoiser": "nlm", "strength": 0.8}}
            if args.calibration_tune:
                configs["tuned"] = P.tune_conventional(pool, big, big.blades(frac), lams=(0.0, 0.1, 0.3, 1.0, 3.0),
                                                       iters=(3, 5, 10, 20), strengths=(0.8, 1.2, 1.6, 2.0),
                                                       denoisers=("nlm", "tv", "wavelet"))
            for s in args.seeds:
                acqs = P.make_acquisitions(te256, big, [20.0], seed=2000 + s, n_coils=8)
                for name, cfg in configs.items():
                    res = P.evaluate(acqs, big, big.blades(frac), conv=cfg)
                    _rows(results, res, 256, 20.0, frac, s, command, task=f"propeller_calibration_256px_{name}_"
                          f"{'all' if frac >= 1 else 'half'}_blades", extra={"settings": cfg})
                    _log(calibration=name, seed=s, fraction=frac, **{m: float(np.mean(v["psnr"])) for m, v in
                                                                     res["metrics"].items()})

    if card:
        render(results, BUNDLE / "docs" / "README.md")
    print(summary_table(results), flush=True)
    _log(minutes=round((time.time() - t0) / 60, 2), skipped=skipped, results=os.fspath(results))
    return 1 if skipped else 0


if __name__ == "__main__":
    raise SystemExit(main())
