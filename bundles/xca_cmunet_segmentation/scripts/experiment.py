"""The whole low-label study of the xca_cmunet_segmentation bundle, in one command.

1. Pretrain the U-Net encoder twice on the 40 training angiograms without their masks: CM-UNet
   (reconstruction + InfoNCE) and MAE-only (reconstruction only, same network and schedule). Each is
   pretrained ONCE (seed 0) and shared by every fine-tuning seed: the seeds measure the spread of the
   label draw and the fine-tuning, not of pretraining.
2. Fine-tune random-init / MAE-only / CM-UNet with N = 1, 2, 4, 10, 20, 40 labelled images x seeds 0, 1, 2,
   all with the same recipe (scripts/xca.py: bias at the vessel prior, validation threshold and model
   selection for N >= 4, threshold 0.5 for N < 4, flip test-time augmentation), test on all 40 test images
   (Dice, clDice, and both without the flip averaging). Random-init runs start beside the pretrainings; the
   others start as soon as their encoder exists.
3. Append every row to docs/results.json as its run finishes (full real data only; ``--fresh`` starts a new
   file), render the table in docs/README.md, and save the CM-UNet encoder and the 40-label CM-UNet model
   (seed 0) to models/ (state dicts, atomic).

Examples::

    # the real run (one H200, all 2 + 54 runs, an estimated 10-11 minutes; 12 workers were no faster than 6):
    python bundles/xca_cmunet_segmentation/scripts/experiment.py --device cuda --parallel 6 --fresh
    # a smoke test on CPU (a couple of minutes; writes only under --out):
    python bundles/xca_cmunet_segmentation/scripts/experiment.py --quick --device cpu
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Any

BUNDLE = Path(__file__).resolve().parents[1]
if os.fspath(BUNDLE) not in sys.path:
    sys.path.insert(0, os.fspath(BUNDLE))

from scripts import xca  # noqa: E402

INITS = ("scratch", "mae", "cmunet")
MODELS_LIMIT = 25 * 1024 * 1024


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=None, help="data root (default: ../shared/data/xca/fercer_coronary_xca80)")
    p.add_argument("--out", default="runs/xca_experiment", help="run folder (default: runs/xca_experiment)")
    p.add_argument("--device", default="auto", help="cuda, cpu or auto")
    p.add_argument("--parallel", "--workers", dest="parallel", type=int, default=1,
                   help="fine-tunes run concurrently as processes (e.g. 6 on one GPU with 16 CPU cores)")
    p.add_argument("--budget-minutes", type=float, default=0.0,
                   help="stop starting new runs after this many minutes (0: no limit); missing runs are listed")
    p.add_argument("--quick", action="store_true", help="tiny settings for a CPU smoke test (not results)")
    p.add_argument("--labels", type=int, nargs="+", default=None, help="label counts (default 1 2 4 10 20 40)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="fine-tuning seeds (default 0 1 2)")
    p.add_argument("--pretrain-steps", type=int, default=None)
    p.add_argument("--finetune-steps", type=int, default=None)
    p.add_argument("--no-models", action="store_true", help="do not write the bundle's models/")
    p.add_argument("--inits", nargs="+", choices=INITS, default=list(INITS),
                   help="initialisations to fine-tune (default: all three)")
    p.add_argument("--encoder", action="append", default=[], metavar="NAME=PATH",
                   help="reuse a pretrained encoder instead of pretraining it (e.g. cmunet=models/"
                        "pretrained_encoder.pt); repeatable")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads per worker (default: the CPU cores shared out over --parallel)")
    p.add_argument("--scale", type=float, default=1.0,
                   help="fine-tune on images magnified by this factor (test at the native size; default 1)")
    p.add_argument("--crop", type=int, default=None, help="fine-tuning crop edge in magnified pixels (default 256)")
    p.add_argument("--channels", type=int, nargs=5, default=None, metavar="C",
                   help="U-Net widths (default 16 32 64 128 256; other widths need --inits scratch)")
    p.add_argument("--tag", default="", help="recipe name: rows get the task coronary_vessel_segmentation_TAG")
    p.add_argument("--results", default=None,
                   help="write the rows here instead of docs/results.json (splits and models/ are left alone)")
    p.add_argument("--fresh", action="store_true",
                   help="start a new results file instead of appending to it (a whole new study)")
    return p.parse_args(argv)


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """Steps, batch sizes and grid for the full run or ``--quick``."""
    if args.quick:
        s = {"labels": [1, 4], "seeds": [0], "pretrain_steps": 10, "pretrain_batch": 4, "finetune_steps": 20,
             "finetune_batch": 4, "crop": 128, "pretrain_crop": 128, "eval_every": 10, "test_limit": 6}
    else:
        s = {"labels": [1, 2, 4, 10, 20, 40], "seeds": [0, 1, 2], "pretrain_steps": 1500, "pretrain_batch": 16,
             "finetune_steps": 1200, "finetune_batch": 8, "crop": 256, "pretrain_crop": 256, "eval_every": 200,
             "test_limit": None}
    if args.labels:
        s["labels"] = args.labels
    if args.seeds:
        s["seeds"] = args.seeds
    if args.pretrain_steps:
        s["pretrain_steps"] = args.pretrain_steps
    if args.finetune_steps:
        s["finetune_steps"] = args.finetune_steps
    if args.crop:
        s["crop"] = args.crop
    s["scale"] = float(args.scale)
    s["channels"] = list(args.channels or xca.CHANNELS)
    return s


def _threads(parallel: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(parallel, 1))


def run_jobs(
    jobs: list[dict[str, Any]], parallel: int, deadline: float | None,
    on_done: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[list[dict], list[dict]]:
    """Run jobs on ``parallel`` worker processes, in list order among those that are ready.

    A job with ``"needs": name`` waits for the pretraining job of that ``name`` and gets its encoder path as
    ``kwargs["encoder"]``; it is dropped when that pretraining was not run. So random-init fine-tunes run
    beside the pretrainings instead of after them. Jobs not started by ``deadline`` are skipped. ``on_done``
    is called in this process as each job finishes (results are written as they come, not at the end).
    """
    done: list[dict] = []
    skipped: list[dict] = []
    encoders: dict[str, str] = {}
    pending = list(jobs)

    def ready(job: dict[str, Any]) -> bool:
        return "needs" not in job or job["needs"] in encoders

    def finish(out: dict[str, Any]) -> None:
        if out["kind"] == "pretrain":
            encoders[out["name"]] = out["encoder"]
        done.append(out)
        _log(out)
        if on_done is not None:
            on_done(out)

    def take() -> dict[str, Any] | None:
        for i, job in enumerate(pending):
            if ready(job):
                job = pending.pop(i)
                if "needs" in job:
                    job = {**job, "kwargs": {**job["kwargs"], "encoder": encoders[job["needs"]]}}
                return job
        return None

    if parallel <= 1:
        while (job := take()) is not None:
            if deadline is not None and time.time() > deadline:
                skipped.append(job)
                continue
            finish(xca.run_job(job))
        return done, skipped + pending
    running: dict[Future, dict] = {}
    with ProcessPoolExecutor(max_workers=parallel, mp_context=get_context("spawn")) as pool:
        while True:
            while len(running) < parallel and (job := take()) is not None:
                if deadline is not None and time.time() > deadline:
                    skipped.append(job)
                    continue
                running[pool.submit(xca.run_job, job)] = job
            if not running:
                break
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in finished:
                running.pop(fut)
                finish(fut.result())
    # jobs whose pretraining never ran (skipped by the deadline) are reported as skipped too
    return done, skipped + pending


def _log(out: dict[str, Any]) -> None:
    if out["kind"] == "pretrain":
        print(json.dumps({"pretrained": out["name"], "seconds": out["seconds"]}), flush=True)
    else:
        r = out["result"]
        print(json.dumps({"init": out["init"], "n_labels": r["n_labels"], "seed": out["seed"],
                          "dice": round(r["dice"], 4), "cldice": round(r["cldice"], 4),
                          "threshold": round(r["threshold"], 3), "best_step": r["best_step"],
                          "seconds": r["seconds"]}), flush=True)


def _copy_atomic(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def main(argv: list[str] | None = None) -> int:
    """Run the study; returns 0 when every run finished, 1 when the budget cut some off."""
    args = parse_args(argv)
    t0 = time.time()
    deadline = t0 + 60 * args.budget_minutes if args.budget_minutes > 0 else None
    s = settings(args)
    data = args.data or xca.default_data(BUNDLE)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    full = xca.is_full_dataset(data) and not args.quick
    results_json = BUNDLE / "docs" / "results.json" if full else out / "results.json"
    if args.results:
        results_json = Path(args.results).resolve()
    publish = full and not args.results  # splits and models/ only for rows that go to docs/results.json
    task = xca.TASK + (f"_{args.tag}" if args.tag else "")
    bad = ("--scale must lie in (0, 8]" if not 0.0 < args.scale <= 8.0 else
           "--crop must be at least 16" if args.crop is not None and args.crop < 16 else
           "--threads must not be negative" if args.threads < 0 else
           "--channels must be positive" if args.channels and min(args.channels) < 1 else None)
    if bad:
        print(f"experiment: {bad}", file=sys.stderr)
        return 2
    if s["channels"] != list(xca.CHANNELS) and set(args.inits) - {"scratch"}:
        print("experiment: --channels other than the shipped widths needs --inits scratch (the pretrained "
              "encoders have the shipped widths)", file=sys.stderr)
        return 2
    command = "python bundles/xca_cmunet_segmentation/scripts/experiment.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    threads = args.threads or (1 if args.quick else _threads(args.parallel))  # --quick shares a small CPU politely
    print(json.dumps({"data": os.fspath(data), "out": os.fspath(out), "full": full, "settings": s,
                      "parallel": args.parallel, "threads": threads}), flush=True)
    if not full and not args.quick and not args.results:
        print(f"note: {data} is not the full 40 + 40 dataset: rows go to {results_json}; models/ is left alone",
              file=sys.stderr, flush=True)
    given = parse_encoders(args.encoder)  # before --fresh touches anything
    if args.fresh and results_json.is_file():
        results_json.unlink()  # a new study replaces the old rows (git keeps them)

    jobs: list[dict[str, Any]] = [
        {"kind": "pretrain", "name": name, "threads": threads,
         "kwargs": {"data": data, "output_dir": os.fspath(out / f"pretrain_{name}"), "method": name,
                    "max_steps": s["pretrain_steps"], "batch_size": s["pretrain_batch"], "crop": s["pretrain_crop"],
                    "device": args.device, "seed": 0}}
        for name in ("cmunet", "mae") if name in args.inits and name not in given
    ]
    for seed in s["seeds"]:
        for n in s["labels"]:
            for init in [i for i in INITS if i in args.inits]:
                run_dir = out / "finetune" / f"{init}_n{n}_s{seed}"
                keep = init == "cmunet" and n == max(s["labels"]) and seed == 0 and publish
                save = out / "models" / "model.pt" if keep else None
                job = {
                    "kind": "finetune", "init": init, "seed": seed, "threads": threads, "keep": keep,
                    "kwargs": {"data": data, "output_dir": os.fspath(run_dir), "n_labels": n, "seed": seed,
                               "encoder": None, "max_steps": s["finetune_steps"],
                               "batch_size": s["finetune_batch"], "crop": s["crop"], "eval_every": s["eval_every"],
                               "device": args.device, "test_limit": s["test_limit"],
                               "save_model": None if save is None else os.fspath(save),
                               "scale": s["scale"], "channels": s["channels"]},
                }
                if init in given:
                    job["kwargs"]["encoder"] = given[init]
                elif init != "scratch":
                    job["needs"] = init
                jobs.append(job)

    pool = len(xca.image_pairs(data, "train"))
    models_written: list[str] = []
    encoders: dict[str, str] = dict(given)

    def on_done(d: dict[str, Any]) -> None:
        """Write each result as it arrives, so a run cut short by a time limit keeps what it finished."""
        if d["kind"] == "pretrain":
            encoders[d["name"]] = d["encoder"]
            return
        result = xca.publish_split(d["result"], BUNDLE) if publish else d["result"]
        for row in xca.result_rows(result, d["init"], d["seed"], pool, command, task=task):
            xca.append_result(results_json, row)
        if d.get("keep") and publish and not args.no_models and "cmunet" in encoders:
            models_written.extend(_ship_models(Path(encoders["cmunet"]), out / "models"))

    done, skipped = run_jobs(jobs, args.parallel, deadline, on_done)
    if publish:
        from medssl.eval.results import render_results_table

        render_results_table(results_json, BUNDLE / "docs" / "README.md")

    from medssl.eval.results import load_results, summarise

    if results_json.is_file():
        for r in summarise(load_results(results_json)):
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}), flush=True)
    missing = [f"{j.get('init', j.get('name'))}/{j['kwargs'].get('n_labels', '-')}/{j.get('seed', 0)}"
               for j in skipped]
    print(json.dumps({"minutes": round((time.time() - t0) / 60, 2), "runs": len(done), "skipped": missing,
                      "results_json": os.fspath(results_json), "models": models_written}), flush=True)
    return 1 if missing else 0


def parse_encoders(items: list[str]) -> dict[str, str]:
    """``["cmunet=path.pt", ...]`` -> ``{"cmunet": "path.pt"}``; each file must exist."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or name not in ("cmunet", "mae"):
            print(f"experiment: --encoder takes cmunet=PATH or mae=PATH, got {item!r}", file=sys.stderr)
            raise SystemExit(2)
        if not Path(path).is_file():
            print(f"experiment: {path}: encoder weights not found (--encoder {name})", file=sys.stderr)
            raise SystemExit(2)
        out[name] = os.fspath(Path(path).resolve())
    return out


def _ship_models(encoder: Path, run_models: Path) -> list[str]:
    """Copy the CM-UNet encoder and the kept fine-tuned model into the bundle's ``models/`` (atomic, <= 25 MB)."""
    files = ((encoder, "pretrained_encoder.pt"), (run_models / "model.pt", "model.pt"),
             (run_models / "model.json", "model.json"))
    size = sum(src.stat().st_size for src, _ in files)
    if size > MODELS_LIMIT:
        print(f"models: {size / 2**20:.1f} MB exceeds 25 MB; not copied", file=sys.stderr)
        return []
    for src, name in files:
        _copy_atomic(src, BUNDLE / "models" / name)
    return [os.fspath(BUNDLE / "models" / name) for _, name in files]


if __name__ == "__main__":
    raise SystemExit(main())
