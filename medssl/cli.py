"""The ``medssl`` command: a stable contract for clinical researchers (see README.md).

Every verb imports its heavy dependencies lazily, so ``medssl info`` starts without torch or MONAI.
Bad input is reported as one line on stderr naming the file and the reason, with exit code 2 and no
traceback; when several inputs are given, the good ones are still processed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from medssl import __version__
from medssl.errors import InputError, MedsslError

__all__ = ["main", "build_parser", "EXIT_BAD_INPUT"]

EXIT_BAD_INPUT = 2

_VERBS = {
    "info": "print one JSON line per input: modality, shape, spacing or sampling rate, frames, leads",
    "pretrain": "self-supervised pretraining of a bundle's encoder on unlabelled data",
    "finetune": "fine-tune a bundle with a fraction of the labels and append a row to its results",
    "infer": "run a bundle on your own DICOM, NIfTI, WFDB or image files",
    "demo": "the main job on the samples shipped in the package: pretrain, fine-tune, infer, report",
    "bundle": "list the bundles, or verify one (metadata schema, shapes, inference on a sample)",
}


def _err(message: str) -> None:
    """Write one line to stderr (newlines folded, so one error stays one line)."""
    print(" ".join(str(message).split()), file=sys.stderr, flush=True)


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", metavar="PATH", help="dataset root or MONAI datalist JSON (default: the bundle's)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    p.add_argument("--max-steps", type=int, metavar="N", help="stop after N optimisation steps")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in the run folder")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``medssl`` command (one sub-command per verb of the contract)."""
    parser = argparse.ArgumentParser(
        prog="medssl",
        description="Self-supervised learning for medical imaging and signals (MONAI + PyTorch).",
        epilog="Bad input gets one line on stderr naming the file and the reason, and exit code 2.",
    )
    parser.add_argument("--version", action="version", version=f"medssl {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")

    p = sub.add_parser("info", help=_VERBS["info"], description=_VERBS["info"])
    p.add_argument("paths", nargs="+", metavar="PATH", help="DICOM file/folder/DICOMDIR, NIfTI, WFDB .hea, "
                   "PNG/JPEG/TIFF, AVI/MP4 video, twix .dat, ISMRMRD .h5 or .npz k-space")

    p = sub.add_parser("pretrain", help=_VERBS["pretrain"], description=_VERBS["pretrain"])
    p.add_argument("bundle", metavar="BUNDLE")
    _add_run_options(p)

    p = sub.add_parser("finetune", help=_VERBS["finetune"], description=_VERBS["finetune"])
    p.add_argument("bundle", metavar="BUNDLE")
    p.add_argument("--label-fraction", type=float, required=True, metavar="F")
    p.add_argument("--seed", type=int, default=0, metavar="S")
    p.add_argument("--init", default="pretrained", help="pretrained, scratch, or an ablation's name")
    _add_run_options(p)

    p = sub.add_parser("infer", help=_VERBS["infer"], description=_VERBS["infer"])
    p.add_argument("bundle", metavar="BUNDLE")
    p.add_argument("inputs", nargs="+", metavar="INPUT")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--threshold", type=float, help="probability threshold for segmentation bundles")
    p.add_argument("--no-flip-tta", action="store_true",
                   help="segmentation bundles: skip the flip averaging the model was selected with (4x faster, "
                        "usually a little less accurate)")
    p.add_argument("--no-self-ensemble", action="store_true",
                   help="reconstruction bundles: skip the average over the 8 rotated / flipped views of the "
                        "acquisition that the model card's figures use (8x faster, about 0.4 dB lower)")
    p.add_argument("--no-largest-component", action="store_true",
                   help="segmentation bundles whose model keeps only the largest region per frame (models/model.json "
                        "largest_component): keep every region")
    p.add_argument("--reconstruction", action="store_true",
                   help="masked-autoencoder bundles: also draw <record>_reconstruction.png (75 %% of the signal "
                        "hidden and filled in by the pretrained MAE)")
    p.add_argument("--simulate-blades", type=int, metavar="N",
                   help="reconstruction bundles: simulate N PROPELLER blades from a magnitude image")
    p.add_argument("--snr", type=float, metavar="S", help="reconstruction bundles: SNR of the simulated noise")
    _add_run_options(p)

    p = sub.add_parser("demo", help=_VERBS["demo"], description=_VERBS["demo"])
    p.add_argument("--out", default="demo_report", metavar="DIR", help="report folder (default: demo_report)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto)")
    p.add_argument("--max-steps", type=int, default=200, metavar="N", help="pretraining steps (default: 200)")

    p = sub.add_parser("bundle", help=_VERBS["bundle"], description=_VERBS["bundle"])
    bsub = p.add_subparsers(dest="bundle_verb", metavar="ACTION")
    bsub.add_parser("list", help="list the bundles and where they are")
    v = bsub.add_parser("verify", help="validate metadata against the MONAI schema, check shapes, run a sample")
    v.add_argument("bundle", nargs="?", metavar="BUNDLE", help="one bundle (default: all)")
    return parser


def _cmd_info(args: argparse.Namespace) -> int:
    from medssl.io import info  # no torch, no MONAI; decodes only the first and last frame of a cine

    failed = 0
    for path in args.paths:
        try:
            summary = info(path)
        except MedsslError as exc:
            failed += 1
            _err(str(exc))
            continue
        print(json.dumps(summary), flush=True)
    return EXIT_BAD_INPUT if failed else 0


def bundles_root() -> Path:
    """Where bundles live (see :func:`medssl.bundles.bundles_root`)."""
    from medssl.bundles import bundles_root as _root

    return _root()


def available_bundles() -> list[str]:
    """Names of the bundles that are present (see :func:`medssl.bundles.available_bundles`)."""
    from medssl.bundles import available_bundles as _available

    return _available()


def _require_bundle(name: str) -> Path:
    from medssl.bundles import bundle_dir

    return bundle_dir(name)


def _run_overrides(args: argparse.Namespace) -> dict[str, object]:
    out: dict[str, object] = {"device": args.device, "max_steps": args.max_steps, "resume": bool(args.resume)}
    if args.data is not None:
        data = Path(args.data)
        if not data.exists():
            raise InputError(data, "data path not found")
        out["data"] = os.fspath(data.resolve())
    return out


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from medssl.bundles import run_workflow

    _require_bundle(args.bundle)
    run_workflow(args.bundle, "pretrain", _run_overrides(args))
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    from medssl.bundles import run_workflow

    _require_bundle(args.bundle)
    if not 0.0 < args.label_fraction <= 1.0:
        raise MedsslError(f"--label-fraction must lie in (0, 1], got {args.label_fraction}")
    overrides = _run_overrides(args)
    overrides.update({"label_fraction": args.label_fraction, "seed": args.seed, "init": args.init})
    for result in run_workflow(args.bundle, "finetune", overrides):
        if isinstance(result, dict):
            print(json.dumps(result, default=str), flush=True)
    return 0


def _cmd_infer(args: argparse.Namespace) -> int:
    from medssl.bundles import run_workflow

    _require_bundle(args.bundle)
    if args.threshold is not None and not 0.0 < args.threshold < 1.0:
        raise MedsslError(f"--threshold must lie in (0, 1), got {args.threshold}")
    overrides: dict[str, object] = {
        "inputs": [os.fspath(Path(p).absolute()) for p in args.inputs],
        "output_dir": os.fspath(Path(args.out).absolute()),
        "threshold": args.threshold,
        "device": args.device,
    }
    if args.no_flip_tta:  # only segmentation bundles read it (unset = what models/model.json says)
        overrides["flip_tta"] = False
    if args.no_self_ensemble:  # only reconstruction bundles read it (unset = their default, on)
        overrides["self_ensemble"] = False
    if args.no_largest_component:  # only segmentation bundles read it (unset = what models/model.json says)
        overrides["largest_component"] = False
    if args.reconstruction:  # only bundles with an MAE decoder in models/ read it
        overrides["reconstruction"] = True
    if args.simulate_blades is not None:  # only bundles that simulate k-space read these (unset = their default)
        if args.simulate_blades < 2:
            raise MedsslError(f"--simulate-blades must be >= 2, got {args.simulate_blades}")
        overrides["simulate_blades"] = args.simulate_blades
    if args.snr is not None:
        if not args.snr > 0:
            raise MedsslError(f"--snr must be > 0, got {args.snr}")
        overrides["snr"] = args.snr
    failed = 0
    for result in run_workflow(args.bundle, "inference", overrides):
        if isinstance(result, dict) and "outputs" in result:
            for path, outs in result["outputs"].items():
                print(json.dumps({"input": path, **{k: os.fspath(v) for k, v in outs.items()}}), flush=True)
            failed += len(result.get("failed", []))
    return EXIT_BAD_INPUT if failed else 0


def _cmd_bundle(args: argparse.Namespace) -> int:
    from medssl.bundles import verify_bundle

    if args.bundle_verb == "list":
        names = available_bundles()
        if not names:
            print(f"no bundles yet in {bundles_root()}")
        for name in names:
            print(name)
        return 0
    if args.bundle_verb == "verify":
        names = [args.bundle] if args.bundle else available_bundles()
        for name in names:
            _require_bundle(name)
        if not names:
            print(f"no bundles yet in {bundles_root()}")
            return 0
        failed = 0
        for name in names:
            try:
                print(json.dumps(verify_bundle(name)), flush=True)
            except MedsslError as exc:
                failed += 1
                _err(str(exc))
            except Exception as exc:  # noqa: BLE001 - one bundle's failure must not hide the others' checks
                if os.environ.get("MEDSSL_DEBUG"):
                    raise
                failed += 1
                _err(f"{name}: verify failed: {type(exc).__name__}: {exc}")
        return EXIT_BAD_INPUT if failed else 0
    _err("medssl bundle: choose an action: list or verify")
    return EXIT_BAD_INPUT


def _cmd_demo(args: argparse.Namespace) -> int:
    from medssl.demo import run_demo

    report = run_demo(Path(args.out), device=args.device, max_steps=args.max_steps)
    print(f"demo report: {report}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``medssl`` command; returns the exit code (0 ok, 2 bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_help()
        return 0
    try:
        if args.verb == "info":
            return _cmd_info(args)
        if args.verb == "bundle":
            return _cmd_bundle(args)
        if args.verb == "demo":
            return _cmd_demo(args)
        if args.verb == "pretrain":
            return _cmd_pretrain(args)
        if args.verb == "finetune":
            return _cmd_finetune(args)
        if args.verb == "infer":
            return _cmd_infer(args)
        raise MedsslError(f"medssl: unknown verb {args.verb!r}")
    except MedsslError as exc:
        _err(str(exc))
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        _err("medssl: interrupted")
        return 130
    except Exception as exc:  # noqa: BLE001 - the contract: one line, never a traceback
        if os.environ.get("MEDSSL_DEBUG"):
            raise
        _err(f"medssl {args.verb}: internal error: {type(exc).__name__}: {exc} (set MEDSSL_DEBUG=1 for a traceback)")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
