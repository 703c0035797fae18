"""The whole low-label study of the ultrasound_vjepa_segmentation bundle, in one command.

1. Pretrain the video ViT twice on unlabelled ultrasound clips (echo cine and other US DICOMs, the 9 carotid
   training recordings as sequences, HC18 stills as 1-frame clips; the 3 carotid test recordings are never
   seen): V-JEPA + 3-D localisation loss (``pretrained``) and V-JEPA alone (``vjepa_noloc``), same schedule.
   Each is pretrained once (seed 0) and shared by every fine-tuning seed.
2. Carotid lumen segmentation with N = 1, 2, 4, 9 labelled training recordings x seeds, for the inits
   ``pretrained``, ``vjepa_noloc``, ``random_frozen`` (frozen encoders: the decoder is trained on tokens
   computed once per frame), ``scratch`` (the same ViT trained end to end) and ``unet_supervised`` (MONAI UNet),
   all with the same recipe and steps (scripts/us.py); test Dice on the 3 test recordings.
3. Rows go to docs/results.json (full real data only), the table is rendered into docs/README.md, and with
   ``--write-models`` the ``pretrained`` encoder and its 9-recording segmenter (seed 0) are saved to models/
   (state dicts, atomic). The shipped models/ come from ``--stage sweep --end-to-end --write-models`` (README).
4. ``--task hc18``: the second downstream task, HC18 fetal-head segmentation (50 stills, each a 1-frame
   "recording"), from the same pretrained encoders and with the same inits and recipe. The split is fixed and
   stored in docs/splits/hc18_split.json (made once, by subject, from a fixed permutation): at least 15 test
   images, at least 5 validation images (threshold and model choice for every fraction), and per seed nested
   labelled sets of 2, 4, 8 and all remaining training images. Rows have task ``hc18_fetal_head``; no models/.

Examples::

    # the real run (CPU, one thread, about an hour):
    OMP_NUM_THREADS=1 python bundles/ultrasound_vjepa_segmentation/scripts/experiment.py --stage all
    # stages: pretraining only / fine-tuning from the finished pretraining runs / re-render the table
    python bundles/ultrasound_vjepa_segmentation/scripts/experiment.py --stage pretrain
    python bundles/ultrasound_vjepa_segmentation/scripts/experiment.py --stage finetune
    # a smoke test on the shipped samples (writes only under --out):
    python bundles/ultrasound_vjepa_segmentation/scripts/experiment.py --quick
    # the HC18 fetal-head task from the finished pretraining runs in --out:
    OMP_NUM_THREADS=1 python bundles/ultrasound_vjepa_segmentation/scripts/experiment.py --stage finetune --task hc18
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BUNDLE = Path(__file__).resolve().parents[1]
if os.fspath(BUNDLE) not in sys.path:
    sys.path.insert(0, os.fspath(BUNDLE))

import torch  # noqa: E402

from scripts import us  # noqa: E402

FROZEN = ("pretrained", "vjepa_noloc", "random_frozen")
HC18_TASK = "hc18_fetal_head"
HC18_DIR = "hc18_fetal_head_subset"
HC18_SPLIT = BUNDLE / "docs" / "splits" / "hc18_split.json"
HC18_SPLIT_REF = "docs/splits/hc18_split.json"
HC18_MIN_TEST, HC18_MIN_VAL, HC18_SMALL = 15, 5, (2, 4, 8)
INITS = (*FROZEN, "scratch", "unet_supervised")
MODELS_LIMIT = 25 * 1024 * 1024
SHIPPED = BUNDLE / "docs" / "shipped_model.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", default="all",
                   choices=("all", "pretrain", "finetune", "sweep", "diagnose", "evaluate", "table", "reference"),
                   help="sweep: pretrain with --loc-weight into OUT/pretrain_loc<w> and fine-tune frozen decoders "
                        "on it (rows with init vjepa_loc<w>); diagnose: effective rank of each encoder's tokens; "
                        "evaluate: the shipped models/model.pt on the test recordings through the inference path; "
                        "reference (with --task hc18): test Dice of the mean labelled mask, no network (logged only)")
    p.add_argument("--task", default="carotid", choices=("carotid", "hc18"),
                   help="downstream task of the finetune stage (default carotid; hc18: fetal head, see the docstring)")
    p.add_argument("--data", default=None, help="data root (default: ../shared/data/ultrasound)")
    p.add_argument("--out", default="runs/us_experiment", help="run folder (default: runs/us_experiment)")
    p.add_argument("--quick", action="store_true", help="tiny settings on the samples (not results)")
    p.add_argument("--labels", type=int, nargs="+", default=None,
                   help="labelled recordings (default 1 2 4 9); hc18: labelled images (default 2 4 8 all)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="fine-tuning seeds (default 0 1 2)")
    p.add_argument("--inits", nargs="+", default=None, choices=INITS)
    p.add_argument("--pretrain-steps", type=int, default=None)
    p.add_argument("--finetune-steps", type=int, default=None)
    p.add_argument("--pretrain-lr", type=float, default=None, help="pretraining peak learning rate (default 5e-4)")
    p.add_argument("--loc-weight", type=float, default=0.1, help="localisation loss weight (default 0.1)")
    p.add_argument("--dispersive-weight", type=float, default=0.0,
                   help="sweep: token-level dispersive loss weight (default 0: off), init vjepa_loc<w>_disp<d>")
    p.add_argument("--tag", default="", help="suffix of the init names in the result rows (ablations, e.g. "
                   "_lr1.5e-4 for a second pretraining in another --out); a tagged run never writes models/")
    p.add_argument("--no-models", action="store_true",
                   help="kept for old command lines: models/ is written only with --write-models")
    p.add_argument("--end-to-end", action="store_true",
                   help="sweep: fine-tune the sweep encoder end to end with the scratch recipe instead of freezing "
                        "it (rows vjepa_<...>_e2e)")
    p.add_argument("--write-models", action="store_true",
                   help="finetune / sweep (carotid, full data, no --tag): the encoder and its segmenter trained on "
                        "all training recordings (first seed; the sweep's frozen, or end to end with --end-to-end; "
                        "finetune: the pretrained init) become the bundle's models/")
    return p.parse_args(argv)


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """Steps, batch sizes and grid for the full run or ``--quick``."""
    if args.quick:
        s = {"labels": [1], "seeds": [0], "pretrain_steps": 4, "pretrain_batch": 2, "finetune_steps": 10,
             "finetune_batch": 4, "eval_every": 5, "num_frames": 16, "workers": 0}
    else:
        s = {"labels": [1, 2, 4, 9], "seeds": [0, 1, 2], "pretrain_steps": 500, "pretrain_batch": 8,
             "finetune_steps": 200, "finetune_batch": 8, "eval_every": 50, "num_frames": 16, "workers": 1}
    s["pretrain_lr"] = args.pretrain_lr or 5e-4
    for key in ("labels", "seeds", "pretrain_steps", "finetune_steps"):
        if getattr(args, key):
            s[key] = getattr(args, key)
    s["inits"] = list(args.inits or INITS)
    if args.task == "hc18" and not args.labels:
        s["labels"] = [2] if args.quick else [*HC18_SMALL, -1]  # -1: every training image of the split
    return s


def _log(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def _copy_atomic(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def stage_pretrain(data: str, out: Path, s: dict[str, Any], loc_weight: float) -> None:
    """Both pretraining runs (with and without the localisation loss), one after the other."""
    for name, lw in (("pretrain", loc_weight), ("pretrain_noloc", 0.0)):
        t0 = time.time()
        hist = us.pretrain(data, out / name, loc_weight=lw, max_steps=s["pretrain_steps"],
                           batch_size=s["pretrain_batch"], num_frames=s["num_frames"], device="cpu",
                           lr=s["pretrain_lr"],
                           num_workers=s["workers"], log_every=10)
        loss = [float(v) for v in hist["loss"]]
        _log({"pretrained": name, "loc_weight": lw, "steps": len(loss), "loss_first10": sum(loss[:10]) / 10,
              "loss_last10": sum(loss[-10:]) / 10, "seconds": round(time.time() - t0, 1)})


def stage_diagnose(data: str, out: Path) -> None:
    """Label-free collapse check: effective rank of each encoder's tokens on the training-pool frames."""
    frames, pool, _ = us.load_task(data)
    images = torch.cat([frames[r]["image"] for r in pool])
    encoders = {"random_frozen": None}
    for enc in sorted(out.glob("pretrain*/encoder.pt")):
        encoders[enc.parent.name] = us.load_state(enc)
    for name, state in encoders.items():
        tokens = us.encode_frames(state, images)
        _log({"encoder": name, "effective_rank": round(us.effective_rank(tokens), 2), "frames": len(images)})


def stage_sweep(data: str, out: Path, s: dict[str, Any], loc_weight: float, results_json: Path,
                command: str, dispersive_weight: float = 0.0, tag: str = "", task: str = "carotid",
                write_models: bool = False, end_to_end: bool = False) -> list[dict[str, Any]]:
    """The localisation-weight sweep: one more pretraining and its frozen-decoder fine-tunes.

    ``tag`` is appended to the init name of the rows (``vjepa_loc<w>_disp<d><tag>``), e.g. for the same
    weights with more pretraining steps in another ``--out``. ``task="hc18"``: the frozen fine-tunes are the
    HC18 grid (the pretraining must exist). ``write_models`` (carotid): the segmenter trained on every training
    recording with the first seed, and this sweep's encoder, become the bundle's ``models/``. ``end_to_end``:
    the encoder is not frozen but fine-tuned with the decoder, with the ``scratch`` recipe (rows
    ``vjepa_<name><tag>_e2e``, to compare with ``scratch``).
    """
    from medssl.eval.results import append_result

    name = f"loc{loc_weight:g}" + (f"_disp{dispersive_weight:g}" if dispersive_weight else "")
    enc = out / f"pretrain_{name}" / "encoder.pt"
    if task == "hc18":
        if not enc.is_file():
            raise SystemExit(f"{enc}: no such pretraining (run --stage sweep on the carotid task first)")
        init = f"vjepa_{name}{tag}" + ("_e2e" if end_to_end else "")
        return stage_finetune_hc18(data, out, {**s, "inits": [init]}, results_json, command, encoders={init: enc},
                                   end_to_end=end_to_end)
    if not enc.is_file():
        t0 = time.time()
        hist = us.pretrain(data, enc.parent, loc_weight=loc_weight, max_steps=s["pretrain_steps"],
                           batch_size=s["pretrain_batch"], num_frames=s["num_frames"], device="cpu",
                           lr=s["pretrain_lr"], dispersive_weight=dispersive_weight,
                           num_workers=s["workers"], log_every=10)
        loss = [float(v) for v in hist["loss"]]
        rank = [float(v) for v in hist.get("encoder_rank", []) if v is not None]  # logged every 10 steps
        _log({"pretrained": enc.parent.name, "loc_weight": loc_weight, "dispersive_weight": dispersive_weight,
              "loss_last10": sum(loss[-10:]) / 10, "encoder_rank_first10": sum(rank[:10]) / max(1, len(rank[:10])),
              "encoder_rank_last10": sum(rank[-10:]) / max(1, len(rank[-10:])), "seconds": round(time.time() - t0, 1)})
    frames, pool, test = us.load_task(data)
    state = us.load_state(enc)
    feats = None if end_to_end else us.add_features(frames, state, seed=0)
    rows = []
    for n in s["labels"]:
        for seed in s["seeds"]:
            chosen = us.choose_recordings(pool, n, seed)
            save = (out / "models" / f"vjepa_{name}{tag}{'_e2e' if end_to_end else ''}_n{n}_s{seed}.pt"
                    if write_models and n == len(pool) and seed == s["seeds"][0] else None)
            res = us.finetune_and_test(frames, test, chosen, "pretrained", seed, state, feats,
                                       max_steps=s["finetune_steps"], batch_size=s["finetune_batch"],
                                       eval_every=s["eval_every"], save_model=save,
                                       freeze=False if end_to_end else None)
            if save is not None:
                _publish_models(save, enc, f"vjepa_{name}{tag}" + ("_e2e" if end_to_end else ""))
            split_file = us.save_split(res, out / "splits")
            if results_json.parent == BUNDLE / "docs":
                split_file = us.save_split(res, BUNDLE / "docs" / "splits", "docs/splits/")
            init = f"vjepa_{name}{tag}" + ("_e2e" if end_to_end else "")
            row = us.result_row(res, init, seed, len(pool), command, split_file)
            append_result(results_json, row)
            rows.append(row)
            _log({"init": init, "n": n, "seed": seed, "dice": round(res["dice"], 4), "seconds": res["seconds"]})
    return rows


def _frozen_features(out: Path, inits: Sequence[str], frames: dict[str, Any]) -> dict[str, Any]:
    """``{init: (encoder state or None, frame features)}`` for the frozen inits (the study's encoders in ``out``)."""
    states = {"pretrained": out / "pretrain" / "encoder.pt", "vjepa_noloc": out / "pretrain_noloc" / "encoder.pt"}
    feats: dict[str, Any] = {}
    for init in inits:
        if init in FROZEN:
            state = us.load_state(states[init]) if init in states else None
            feats[init] = (state, us.add_features(frames, state, seed=0))
    return feats


def stage_finetune(data: str, out: Path, s: dict[str, Any], results_json: Path, command: str,
                   write_models: bool, tag: str = "") -> list[dict[str, Any]]:
    """Every fine-tune of the grid; rows appended as they finish."""
    from medssl.eval.results import append_result

    frames, pool, test = us.load_task(data)
    _log({"pool": [r[-7:] for r in pool], "test": [r[-7:] for r in test],
          "frames": {r[-7:]: len(f["image"]) for r, f in frames.items()}})
    feats = _frozen_features(out, s["inits"], frames)
    rows = []
    for n in s["labels"]:
        for seed in s["seeds"]:
            chosen = us.choose_recordings(pool, n, seed)
            for init in s["inits"]:
                state, f = feats.get(init, (None, None))
                save = out / "models" / f"{init}_n{n}_s{seed}.pt" if (init == "pretrained" and n == len(pool)
                                                                       and seed == s["seeds"][0]) else None
                res = us.finetune_and_test(frames, test, chosen, init, seed, state, f,
                                           max_steps=s["finetune_steps"], batch_size=s["finetune_batch"],
                                           eval_every=s["eval_every"], save_model=save)
                split_file = (us.save_split(res, BUNDLE / "docs" / "splits", "docs/splits/")
                              if results_json.parent == BUNDLE / "docs" else us.save_split(res, out / "splits"))
                row = us.result_row(res, init + tag, seed, len(pool), command, split_file)
                append_result(results_json, row)
                rows.append(row)
                _log({"init": init + tag, "n": n, "seed": seed, "recordings": res["recordings"],
                      "dice": round(res["dice"], 4), "threshold": res["threshold"], "val_dice": res["val_dice"],
                      "best_step": res["best_step"], "seconds": res["seconds"]})
                if save is not None and write_models:
                    _publish_models(save, out / "pretrain" / "encoder.pt", init)
    return rows


def _publish_models(model: Path, encoder: Path, init: str) -> None:
    """Copy a segmenter (``model`` + its ``.json``, which gets ``init``) and its encoder into the bundle's models/."""
    from medssl.ssl.checkpoint import atomic_write_json

    _copy_atomic(model, BUNDLE / "models" / "model.pt")
    info = json.loads(model.with_suffix(".json").read_text())
    atomic_write_json(BUNDLE / "models" / "model.json", {**info, "init": init})
    _copy_atomic(encoder, BUNDLE / "models" / "pretrained_encoder.pt")
    _copy_atomic(encoder.with_suffix(".json"), BUNDLE / "models" / "pretrained_encoder.json")


# ----------------------------------------------------------------------------------------------- HC18


def hc18_pairs(data: str) -> dict[str, tuple[Path, Path]]:
    """``{image stem: (image, mask)}`` of the HC18 stills (``data/hc18_fetal_head_subset`` or the samples)."""
    if data == "samples":
        from medssl import samples

        return {img.stem: (img, mask) for img, mask in samples.hc18_pairs()}
    base = Path(data) / HC18_DIR
    return {img.stem: (img, base / "masks" / f"{img.stem}_mask.png") for img in sorted((base / "images").glob("*.png"))}


def hc18_subject(name: str) -> str:
    """The subject of an HC18 image: ``010_2HC`` and ``010_HC`` are two scans of subject ``010``."""
    return name.split("_", 1)[0]


def make_hc18_split(names: list[str], min_test: int = HC18_MIN_TEST, min_val: int = HC18_MIN_VAL,
                    seeds: tuple[int, ...] = (0, 1, 2), small: tuple[int, ...] = HC18_SMALL) -> dict[str, Any]:
    """The fixed HC18 split, by subject (all images of a subject fall in one part).

    Subjects in a fixed permutation (``default_rng(1234)``) fill the test set until it has ``min_test`` images,
    then the validation set until ``min_val``; the rest is the training pool. Labelled sets: the pool ordered as
    one image of each pool subject (subjects in ``default_rng(4321)`` order), then the second images, etc.;
    per seed this order rotated by ``seed * max(small)``, and the first ``n`` images for each ``n`` in ``small``
    and all of them, so the sets are nested within a seed, the small sets of the seeds differ, and a small set
    has distinct subjects.
    """
    import numpy as np

    names = sorted(names)
    subjects = sorted({hc18_subject(n) for n in names})
    by_subject = {sub: [n for n in names if hc18_subject(n) == sub] for sub in subjects}
    test: list[str] = []
    val: list[str] = []
    pool: list[str] = []
    for i in np.random.default_rng(1234).permutation(len(subjects)):
        part = test if len(test) < min_test else val if len(val) < min_val else pool
        part += by_subject[subjects[i]]
    test, val, pool = sorted(test), sorted(val), sorted(pool)
    pool_subjects = sorted({hc18_subject(n) for n in pool})
    perm = [pool_subjects[i] for i in np.random.default_rng(4321).permutation(len(pool_subjects))]
    depth = max(len(by_subject[sub]) for sub in perm)  # one image of each subject first, then the second ones
    order = [by_subject[sub][k] for k in range(depth) for sub in perm if k < len(by_subject[sub])]
    labelled: dict[str, dict[str, list[str]]] = {}
    for seed in seeds:
        rot = order[(seed * max(small)) % len(pool):] + order[: (seed * max(small)) % len(pool)]
        labelled[str(seed)] = {str(n): rot[:n] for n in (*[k for k in small if k < len(pool)], len(pool))}
    return {
        "task": HC18_TASK, "unit": "image (one 1-frame clip)", "grouping": "subject = name before the first '_'",
        "rule": f"subjects in default_rng(1234).permutation fill test (>= {min_test} images), then val "
                f"(>= {min_val}), rest = pool; labelled[seed][n] = first n of the pool in "
                f"one image per subject in default_rng(4321) subject order, then the second ones, rotated by "
                f"seed * {max(small)}",
        "test": test, "val": val, "pool": pool, "labelled": labelled,
    }


def hc18_split(data: str, out: Path) -> dict[str, Any]:
    """The stored HC18 split (docs/splits/hc18_split.json; made once if missing). Samples: a small one in ``out``."""
    names = sorted(hc18_pairs(data))
    if data == "samples":
        split = make_hc18_split(names, min_test=2, min_val=2, seeds=(0,), small=(2,))
        atomic = out / "hc18_split.json"
    else:
        if HC18_SPLIT.is_file():
            split = json.loads(HC18_SPLIT.read_text())
            missing = sorted((set(split["test"]) | set(split["val"]) | set(split["pool"])) - set(names))
            if missing:
                raise FileNotFoundError(f"HC18 images of {HC18_SPLIT} not found under {data}: {missing[:5]}")
            return split
        split = make_hc18_split(names)
        atomic = HC18_SPLIT
    from medssl.ssl.checkpoint import atomic_write_json

    atomic_write_json(atomic, split)
    return split


def hc18_labelled(split: dict[str, Any], n: int, seed: int) -> list[str]:
    """The ``n`` labelled images of ``seed`` (``n = -1`` or ``len(pool)``: the whole pool)."""
    pool = split["pool"]
    n = len(pool) if n in (-1, len(pool)) else n
    if str(seed) in split["labelled"] and str(n) in split["labelled"][str(seed)]:
        return list(split["labelled"][str(seed)][str(n)])
    raise ValueError(f"no labelled set of {n} images for seed {seed} in the HC18 split")


def stage_finetune_hc18(data: str, out: Path, s: dict[str, Any], results_json: Path, command: str,
                        tag: str = "", encoders: dict[str, Path] | None = None,
                        end_to_end: bool = False) -> list[dict[str, Any]]:
    """The HC18 fetal-head grid: every init x labelled images x seed, same recipe as the carotid task.

    ``encoders``: ``{init name: encoder.pt}`` of further inits (the sweep's encoders): frozen, or fine-tuned
    end to end with the ``scratch`` recipe when ``end_to_end``.
    """
    from medssl.eval.results import append_result

    split = hc18_split(data, out)
    pairs = hc18_pairs(data)
    test, val, pool = split["test"], split["val"], split["pool"]
    frames = {name: us.prepare_frames([pairs[name]], keep_full=name in test) for name in [*test, *val, *pool]}
    _log({"task": HC18_TASK, "test": len(test), "val": len(val), "pool": len(pool)})
    feats = _frozen_features(out, s["inits"], frames)
    for init, path in (encoders or {}).items():
        state = us.load_state(path)
        feats[init] = (state, None if end_to_end else us.add_features(frames, state, seed=0))
    for init, (_, init_feats) in feats.items():
        if init_feats is None:
            continue
        tokens = torch.cat([init_feats[r]["tokens"] for r in pool])
        _log({"encoder": init, "effective_rank_hc18_pool": round(us.effective_rank(tokens), 2)})
    split_ref = HC18_SPLIT_REF if results_json.parent == BUNDLE / "docs" else os.fspath(out / "hc18_split.json")
    rows = []
    for n in s["labels"]:
        for seed in s["seeds"]:
            chosen = hc18_labelled(split, n, seed)
            for init in s["inits"]:
                state, f = feats.get(init, (None, None))
                method = "pretrained" if init in (encoders or {}) else init  # a sweep encoder is frozen too
                res = us.finetune_and_test(frames, test, chosen, method, seed, state, f, max_steps=s["finetune_steps"],
                                           batch_size=s["finetune_batch"], eval_every=s["eval_every"], val=val,
                                           freeze=False if end_to_end and init in (encoders or {}) else None)
                row = {**us.result_row(res, init + tag, seed, len(pool), command, split_ref), "task": HC18_TASK}
                append_result(results_json, row)
                rows.append(row)
                _log({"task": HC18_TASK, "init": init + tag, "n": len(chosen), "seed": seed,
                      "dice": round(res["dice"], 4), "threshold": res["threshold"], "val_dice": res["val_dice"],
                      "best_step": res["best_step"], "seconds": res["seconds"]})
    return rows


def stage_reference_hc18(data: str, out: Path, s: dict[str, Any]) -> None:
    """A no-network reference for HC18: the mean of the labelled masks (threshold on validation) on every test image.

    Logged only (not a results row): it shows how much of a Dice comes from the head's typical place and size.
    """
    import numpy as np

    from medssl.eval.metrics import dice
    from medssl.transforms.sector import paste_bbox

    split = hc18_split(data, out)
    pairs = hc18_pairs(data)
    frames = {n: us.prepare_frames([pairs[n]], keep_full=n in split["test"]) for n in [*split["test"], *split["val"],
                                                                                       *split["pool"]]}
    val_mask = torch.cat([frames[n]["mask"] for n in split["val"]])
    for n in s["labels"]:
        for seed in s["seeds"]:
            chosen = hc18_labelled(split, n, seed)
            prob = torch.cat([frames[c]["mask"] for c in chosen]).mean(0, keepdim=True)
            _, t = us._val_threshold(prob.expand_as(val_mask), val_mask)
            d = []
            for name in split["test"]:
                f = frames[name]
                y0, y1, x0, x1 = f["bbox"][0]
                crop = torch.nn.functional.interpolate(prob, size=(y1 - y0, x1 - x0), mode="bilinear",
                                                       align_corners=False)[0, 0].numpy()
                d.append(dice(paste_bbox(crop, f["bbox"][0], f["shape"][0]) >= t, f["full"][0]))
            _log({"task": HC18_TASK, "init": "mean_mask", "n": len(chosen), "seed": seed, "threshold": t,
                  "dice": round(float(np.mean(d)), 4)})


def render(results_json: Path) -> str:
    """Render the results table into docs/README.md and return it."""
    from medssl.eval.results import load_results, render_results_table

    if not results_json.is_file() or not load_results(results_json):
        return ""
    render_results_table(results_json, BUNDLE / "docs" / "README.md")
    text = (BUNDLE / "docs" / "README.md").read_text()
    start, end = text.find("<!-- results:start -->"), text.find("<!-- results:end -->")
    return text[start:end]


def main(argv: list[str] | None = None) -> int:
    """Run the study (or one stage of it)."""
    args = parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    s = settings(args)
    data = "samples" if args.quick else (args.data or us.default_data(BUNDLE))
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    full = us.is_full_dataset(data) and not args.quick
    results_json = BUNDLE / "docs" / "results.json" if full else out / "results.json"
    command = "python bundles/ultrasound_vjepa_segmentation/scripts/experiment.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    if args.stage in ("all", "pretrain"):
        stage_pretrain(data, out, s, args.loc_weight)
    if args.stage == "reference":
        if args.task != "hc18":
            raise SystemExit("--stage reference is for --task hc18")
        stage_reference_hc18(data, out, s)
        return 0
    if args.task == "hc18" and args.stage in ("all", "finetune"):
        full = full and len(hc18_pairs(data)) == 50
        results_json = BUNDLE / "docs" / "results.json" if full else out / "results.json"
        stage_finetune_hc18(data, out, s, results_json, command, args.tag)
    elif args.stage in ("all", "finetune"):
        stage_finetune(data, out, s, results_json, command,
                       full and args.write_models and not args.no_models and not args.tag, args.tag)
    if args.stage == "evaluate":  # the shipped checkpoint through the inference path, on the test recordings
        res = us.evaluate_model(BUNDLE / "models" / "model.pt", data)
        if full:  # the figures docs/README.md quotes and tests/test_us_bundle.py re-checks
            from medssl.ssl.checkpoint import atomic_write_json

            info = json.loads((BUNDLE / "models" / "model.json").read_text())
            atomic_write_json(SHIPPED, {**res, "model": "models/model.pt", "init": info.get("init"),
                                        "command": command})
        _log(res)
        return 0
    if args.stage == "diagnose":
        stage_diagnose(data, out)
    if args.stage == "sweep":
        if args.task == "hc18":
            full = full and len(hc18_pairs(data)) == 50
            results_json = BUNDLE / "docs" / "results.json" if full else out / "results.json"
        stage_sweep(data, out, s, args.loc_weight, results_json, command, args.dispersive_weight, args.tag,
                    task=args.task, write_models=args.write_models and full and not args.tag,
                    end_to_end=args.end_to_end)
    if full:
        print(render(results_json))
        size = sum(p.stat().st_size for p in (BUNDLE / "models").glob("*") if p.is_file())
        _log({"models_mb": round(size / 2**20, 2), "limit_mb": MODELS_LIMIT / 2**20})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
