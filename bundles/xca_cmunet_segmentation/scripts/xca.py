"""The bundle's thin module: angiogram data, CM-UNet / MAE-only pretraining, low-label fine-tuning, test.

Everything generic comes from medssl: the U-Net and the CM-UNet method (:mod:`medssl.networks.cmunet`,
:mod:`medssl.ssl.methods.cmunet`), the Trainer and seeded loaders (:mod:`medssl.ssl`), splits, bias-to-prior,
threshold choice, metrics and results (:mod:`medssl.eval`), and sliding-window inference (:mod:`medssl.infer`).

Fine-tuning protocol (the same for every initialisation, random included):

- ``N`` labelled images are drawn from the 40 training images with :func:`medssl.eval.label_fraction_split`
  (``count=N``, nested over ``N`` for one seed). ``N`` counts every label used: with ``N >= 4``,
  ``max(1, N // 10)`` of them are held out as the validation set (threshold and model selection) and the
  rest are trained on; with ``N < 4`` all are trained on, the threshold is 0.5 and the last step is kept.
- The output bias starts at the vessel prior ``log(p / (1 - p))``, ``p`` = vessel fraction of the training
  labels; Dice + cross-entropy loss; AdamW, warm-up + cosine, gradient clipping, the same steps.
- Every ``eval_every`` steps the validation Dice (at its best threshold) is measured; the best state is kept.
- Test: all test images, full size, sliding window of the training crop; Dice and clDice per image, averaged.
- Flip test-time augmentation (``flip_tta``, on by default): validation and test probabilities are averaged
  over the four flips of the image. The same run also scores the plain prediction (its own validation
  threshold, the same selected step), reported as ``dice_no_tta`` / ``cldice_no_tta``, so the effect of the
  augmentation is measured on the same models.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from medssl.errors import InputError
from medssl.eval.finetune import SupervisedAdapter, init_output_bias_to_prior
from medssl.eval.metrics import choose_threshold, cldice, dice
from medssl.eval.results import append_result
from medssl.eval.splits import label_fraction_split, save_split
from medssl.infer import load_frames, resample, sliding_window_probabilities, zscore
from medssl.networks.cmunet import CMUNet
from medssl.ssl.checkpoint import atomic_write, atomic_write_json
from medssl.ssl.methods.cmunet import CMUNetViews, build_cmunet_pretraining
from medssl.ssl.sampler import make_loader
from medssl.ssl.trainer import Trainer, resolve_device

__all__ = [
    "DATA_NAME",
    "CHANNELS",
    "default_data",
    "image_pairs",
    "unlabelled_frames",
    "CropDataset",
    "build_model",
    "pretrain",
    "finetune_and_test",
    "run_finetune",
    "resolve_encoder",
    "result_rows",
    "publish_split",
    "is_full_dataset",
    "run_job",
]

DATA_NAME = "xca/fercer_coronary_xca80"
CHANNELS = (16, 32, 64, 128, 256)
TASK = "coronary_vessel_segmentation"


# ----------------------------------------------------------------------------------------------- data


def default_data(bundle_root: str | os.PathLike[str]) -> str:
    """``../shared/data/xca/fercer_coronary_xca80`` beside the checkout when present, else ``"samples"``."""
    shared = Path(bundle_root).resolve().parents[1].parent / "shared" / "data" / DATA_NAME
    return os.fspath(shared) if (shared / "train" / "images").is_dir() else "samples"


def image_pairs(data: str | os.PathLike[str], split: str) -> list[tuple[Path, Path]]:
    """``(image, mask)`` pairs of ``split`` (``train`` or ``test``), sorted by number.

    ``data`` is a root laid out as ``<split>/images/<n>.png`` + ``<split>/masks/<n>_gt.png``, or ``"samples"``
    for the shipped samples.
    """
    if os.fspath(data) == "samples":
        from medssl import samples

        return samples.xca_pairs(split)
    base = Path(data) / split
    images = sorted((base / "images").glob("*.png"), key=lambda p: (len(p.stem), p.stem))
    if not images:
        raise InputError(base / "images", "no angiograms (*.png) found")
    pairs = []
    for img in images:
        mask = base / "masks" / f"{img.stem}_gt.png"
        if not mask.is_file():
            raise InputError(mask, f"mask of {img.name} not found")
        pairs.append((img, mask))
    return pairs


def _grey_frames(path: str | os.PathLike[str]) -> list[torch.Tensor]:
    return [torch.from_numpy(f) for f in load_frames(path).frames]


def _mask(path: str | os.PathLike[str]) -> torch.Tensor:
    return torch.from_numpy(load_frames(path).frames[0] > 0)


def unlabelled_frames(
    data: str | os.PathLike[str], extra: Sequence[str | os.PathLike[str]] = ()
) -> list[torch.Tensor]:
    """Every training angiogram (masks unused) plus every frame of the user's extra files (PNG, DICOM XA...)."""
    frames = [f for img, _ in image_pairs(data, "train") for f in _grey_frames(img)]
    for path in extra:
        p = Path(path)
        files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        for f in files:
            frames.extend(_grey_frames(f))
    return frames


class CropDataset(Dataset):
    """Random square crops of z-scored images (and masks), with flips; ``length`` items per epoch.

    Args:
        images: ``[H, W]`` float tensors (any intensity units; z-scored here, per image).
        masks: ``[H, W]`` bool tensors, or ``None`` (pretraining).
        crop: crop edge (images smaller than it are reflect-padded).
        length: items per epoch (small sets are repeated so an epoch holds several batches).
        transform: optional dictionary transform (e.g. :class:`~medssl.ssl.methods.cmunet.CMUNetViews`).
        intensity: random gamma / contrast jitter before z-scoring (fine-tuning augmentation).
    """

    def __init__(
        self, images: Sequence[torch.Tensor], masks: Sequence[torch.Tensor] | None = None, crop: int = 256,
        length: int | None = None, transform: Any = None, intensity: bool = True,
    ) -> None:
        if not images:
            raise ValueError("no images.")
        if masks is not None and len(masks) != len(images):
            raise ValueError(f"{len(images)} images but {len(masks)} masks.")
        self.images = [torch.as_tensor(i, dtype=torch.float32) for i in images]
        self.masks = None if masks is None else [torch.as_tensor(m, dtype=torch.float32) for m in masks]
        self.crop = int(crop)
        self.length = int(length or len(images))
        self.transform = transform
        self.intensity = intensity

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        k = index % len(self.images)
        img = self.images[k]
        stack = img[None] if self.masks is None else torch.stack([img, self.masks[k]])
        h, w = stack.shape[1:]
        if h < self.crop or w < self.crop:
            ph, pw = max(self.crop - h, 0), max(self.crop - w, 0)
            stack = torch.nn.functional.pad(stack[None], (0, pw, 0, ph), mode="reflect")[0]
            h, w = stack.shape[1:]
        y = int(torch.randint(0, h - self.crop + 1, ()))
        x = int(torch.randint(0, w - self.crop + 1, ()))
        stack = stack[:, y : y + self.crop, x : x + self.crop]
        if float(torch.rand(())) < 0.5:
            stack = stack.flip(-1)
        if float(torch.rand(())) < 0.5:
            stack = stack.flip(-2)
        image = stack[0]
        if self.intensity:
            lo, hi = image.min(), image.max()
            u = (image - lo) / (hi - lo).clamp_min(1e-6)
            gamma = float(torch.empty(()).uniform_(0.7, 1.5))
            image = u.pow(gamma) * float(torch.empty(()).uniform_(0.8, 1.2))
        out: dict[str, Any] = {"image": zscore(image)[None].contiguous()}
        if self.masks is not None:
            out["label"] = stack[1:2].contiguous()
        if self.transform is not None:
            out = self.transform(out)
        return out


# ----------------------------------------------------------------------------------------------- models


def build_model(channels: Sequence[int] = CHANNELS) -> CMUNet:
    """The fine-tuning U-Net (one grey channel in, one vessel logit out)."""
    return CMUNet(spatial_dims=2, in_channels=1, out_channels=1, channels=tuple(channels))


def _save_state(path: str | os.PathLike[str], state: dict[str, torch.Tensor]) -> Path:
    cpu = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    return atomic_write(path, lambda fh: torch.save(cpu, fh))


def pretrain(
    data: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    method: str = "cmunet",
    max_steps: int = 1500,
    batch_size: int = 16,
    crop: int = 256,
    lr: float = 1e-3,
    device: str = "auto",
    seed: int = 0,
    resume: bool = False,
    extra_data: Sequence[str | os.PathLike[str]] = (),
    channels: Sequence[int] = CHANNELS,
    num_workers: int = 0,
    log_every: int = 25,
) -> Path:
    """Self-supervised pretraining on unlabelled angiograms; writes ``output_dir/encoder.pt`` (state dict).

    Args:
        data: data root (or ``"samples"``).
        output_dir: run folder (checkpoints, TensorBoard, ``encoder.pt``).
        method: ``"cmunet"`` (reconstruction + InfoNCE) or ``"mae"`` (reconstruction only, same network).
        max_steps: optimiser steps.
        batch_size: crops per step (also the InfoNCE batch: the other crops are the negatives).
        crop: crop edge.
        lr: AdamW peak learning rate.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``.
        seed: data / initialisation seed.
        resume: continue ``output_dir``'s last checkpoint.
        extra_data: further unlabelled files or folders (every DICOM frame becomes an image).
        channels: U-Net widths.
        num_workers: DataLoader workers.
        log_every: logging period.

    Returns:
        The path of the online encoder's state dict.
    """
    if method not in ("cmunet", "mae"):
        raise ValueError(f"method must be 'cmunet' or 'mae', got {method!r}.")
    frames = unlabelled_frames(data, extra_data)
    ds = CropDataset(frames, None, crop, length=max(len(frames), 4 * batch_size), transform=CMUNetViews(),
                     intensity=True)
    loader = make_loader(ds, batch_size, num_workers=num_workers, seed=seed)
    ssl = build_cmunet_pretraining(channels=channels, contrastive_weight=1.0 if method == "cmunet" else 0.0)
    trainer = Trainer(
        ssl, loader, partial(torch.optim.AdamW, lr=lr, weight_decay=1e-4), max_steps=max_steps,
        output_dir=output_dir, ckpt_every=max(max_steps // 4, 50), log_every=log_every, device=device,
        grad_clip=1.0, seed=seed, progress=False,
    )
    trainer.fit(resume=resume)
    return _save_state(Path(output_dir) / "encoder.pt", ssl.encoder.state_dict())


def resolve_encoder(init: str, bundle_root: str | os.PathLike[str], runs_root: str | os.PathLike[str]) -> Path | None:
    """The encoder weights an ``init`` starts from.

    ``scratch``: none; ``pretrained``: the user's own ``medssl pretrain`` run (``runs_root/pretrain``) when there
    is one, else the shipped ``models/pretrained_encoder.pt``; ``cmunet`` / ``mae``: the encoder of
    ``runs_root/pretrain`` / ``runs_root/pretrain_mae``.
    """
    if init == "scratch":
        return None
    if init == "pretrained":
        own = Path(runs_root) / "pretrain" / "encoder.pt"
        path = own if own.is_file() else Path(bundle_root) / "models" / "pretrained_encoder.pt"
    elif init in ("cmunet", "mae"):
        path = Path(runs_root) / ("pretrain" if init == "cmunet" else "pretrain_mae") / "encoder.pt"
    else:
        raise ValueError(f"init must be scratch, pretrained, cmunet or mae, got {init!r}.")
    if not path.is_file():
        raise InputError(path, f"encoder weights for init={init!r} not found (run the pretraining first)")
    return path


def _val_dice(probs: np.ndarray, masks: np.ndarray) -> tuple[float, float]:
    """Best pooled-pixel Dice over thresholds (probabilities rounded to 0.01 for speed) and its threshold."""
    p = np.round(probs.reshape(-1), 2)
    y = masks.reshape(-1).astype(bool)
    t = float(choose_threshold(p, y, metric="f1"))
    t = min(max(t, 0.01), 0.99)
    return dice(probs >= t, masks), t


def finetune_and_test(
    data: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    n_labels: int,
    seed: int = 0,
    encoder: str | os.PathLike[str] | None = None,
    max_steps: int = 1200,
    batch_size: int = 8,
    crop: int = 256,
    lr: float = 1e-3,
    eval_every: int = 200,
    device: str = "auto",
    test_limit: int | None = None,
    channels: Sequence[int] = CHANNELS,
    save_model: str | os.PathLike[str] | None = None,
    flip_tta: bool = True,
    scale: float = 1.0,
) -> dict[str, Any]:
    """Fine-tune (or train from scratch, ``encoder=None``) with ``n_labels`` labelled images, then test.

    See the module docstring for the protocol. With ``scale`` other than 1 the network works on images
    magnified by that factor (training images and masks resampled bilinearly, ``crop`` in magnified pixels);
    validation and test probabilities are resampled back, so thresholds and Dice are at the native size.

    Returns a JSON-ready dict with ``dice``, ``cldice`` (test means), ``threshold``, ``best_step``, ``n_train``,
    ``n_val``, ``prior``, ``split_file``, ``seconds``, the recipe (``scale``, ``crop``, ``channels``); with
    ``flip_tta`` also ``dice_no_tta``, ``cldice_no_tta`` and ``threshold_no_tta`` (the plain prediction).
    """
    t0 = time.perf_counter()
    out = Path(output_dir)
    dev = resolve_device(device)
    pool = image_pairs(data, "train")
    if not 1 <= n_labels <= len(pool):
        raise ValueError(f"n_labels must lie in [1, {len(pool)}], got {n_labels}.")
    ids = [p.stem for p, _ in pool]
    split = label_fraction_split(ids, count=n_labels, seed=seed)
    labelled = [i for i in ids if i in set(split.train)]
    n_val = 0 if n_labels < 4 else max(1, n_labels // 10)
    order = np.random.default_rng(seed).permutation(len(labelled))
    val_ids = sorted(labelled[j] for j in order[:n_val])
    train_ids = [i for i in labelled if i not in val_ids]
    split_file = out / "split.json"
    save_split(split_file, {**split.to_dict(), "train": train_ids, "val": val_ids})

    by_id = {p.stem: (p, m) for p, m in pool}
    tr_img = [_grey_frames(by_id[i][0])[0] for i in train_ids]
    tr_msk = [_mask(by_id[i][1]) for i in train_ids]
    if scale != 1.0:
        tr_img = [resample(im[None, None], scale=scale)[0, 0] for im in tr_img]
        tr_msk = [resample(m[None, None], scale=scale, mask=True)[0, 0] for m in tr_msk]
    prior = float(torch.stack([m.float().mean() for m in tr_msk]).mean())

    torch.manual_seed(seed)
    model = build_model(channels)
    if encoder is not None:
        model.encoder.load_state_dict(torch.load(encoder, map_location="cpu", weights_only=True))
    init_output_bias_to_prior(model.output_layer, prior)

    from monai.losses import DiceCELoss

    ds = CropDataset(tr_img, tr_msk, crop, length=max(len(tr_img), 8 * batch_size))
    loader = make_loader(ds, batch_size, seed=seed)
    method = SupervisedAdapter(model, DiceCELoss(sigmoid=True, batch=True))
    trainer = Trainer(
        method, loader, partial(torch.optim.AdamW, lr=lr, weight_decay=1e-4), max_steps=max_steps,
        output_dir=out, ckpt_every=0, log_every=50, device=dev, grad_clip=1.0, seed=seed, progress=False,
    )
    roi = (crop, crop)
    val = [(_grey_frames(by_id[i][0])[0].numpy(), _mask(by_id[i][1]).numpy()) for i in val_ids]
    best: dict[str, Any] = {"dice": -1.0, "threshold": 0.5, "threshold_no_tta": 0.5, "step": max_steps,
                            "state": None}
    step = 0
    chunk = eval_every if val else max_steps
    while step < max_steps:
        step = min(step + chunk, max_steps)
        trainer.fit(resume=trainer.last_checkpoint if trainer.step else False, stop_at_step=step)
        if val:
            val_masks = np.stack([m for _, m in val])
            probs = np.stack([sliding_window_probabilities(model, im[None], roi, dev, flip_tta=flip_tta,
                                                           scale=scale)[0] for im, _ in val])
            d, t = _val_dice(probs, val_masks)
            if d > best["dice"]:
                t_plain = t
                if flip_tta:  # the plain prediction gets its own validation threshold at the same step
                    plain = np.stack([sliding_window_probabilities(model, im[None], roi, dev, scale=scale)[0]
                                      for im, _ in val])
                    t_plain = _val_dice(plain, val_masks)[1]
                best = {"dice": d, "threshold": t, "threshold_no_tta": t_plain, "step": step,
                        "state": copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})}
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.to(dev)
    trainer.close()
    for stale in (trainer.last_checkpoint,):
        stale.unlink(missing_ok=True)  # the optimiser state is not needed after the run

    test = image_pairs(data, "test")[: test_limit or None]
    dices, cldices, plain_dices, plain_cldices = [], [], [], []
    for img_path, mask_path in test:
        image = _grey_frames(img_path)[0].numpy()[None]
        truth = _mask(mask_path).numpy()
        pred = sliding_window_probabilities(model, image, roi, dev, flip_tta=flip_tta, scale=scale)[0] >= best[
            "threshold"]
        dices.append(dice(pred, truth))
        cldices.append(cldice(pred, truth))
        if flip_tta:
            plain = sliding_window_probabilities(model, image, roi, dev, scale=scale)[0] >= best["threshold_no_tta"]
            plain_dices.append(dice(plain, truth))
            plain_cldices.append(cldice(plain, truth))
    result = {
        "dice": float(np.mean(dices)), "cldice": float(np.mean(cldices)), "threshold": float(best["threshold"]),
        "flip_tta": bool(flip_tta), "scale": float(scale), "crop": int(crop), "channels": list(channels),
        "val_dice": None if best["dice"] < 0 else float(best["dice"]), "best_step": int(best["step"]),
        "max_steps": int(max_steps), "n_labels": int(n_labels), "n_train": len(train_ids), "n_val": len(val_ids),
        "n_test": len(test), "prior": prior, "split_file": os.fspath(split_file),
        "seconds": round(time.perf_counter() - t0, 1), "device": str(dev),
    }
    if flip_tta:
        result.update(dice_no_tta=float(np.mean(plain_dices)), cldice_no_tta=float(np.mean(plain_cldices)),
                      threshold_no_tta=float(best["threshold_no_tta"]))
    if save_model is not None:
        _save_state(save_model, model.state_dict())
        info = {k: result[k] for k in ("threshold", "flip_tta", "n_labels", "n_train", "n_val", "prior", "dice",
                                       "cldice")}
        atomic_write_json(Path(save_model).with_suffix(".json"),
                          {**info, "channels": list(channels), "roi": roi, "scale": float(scale)})
    atomic_write_json(out / "result.json", result)
    return result


def result_rows(
    result: dict[str, Any], init: str, seed: int, pool_size: int, command: str, task: str = TASK
) -> list[dict[str, Any]]:
    """Result rows for :func:`medssl.eval.results.append_result`.

    Dice and clDice, plus ``dice_no_tta`` and ``cldice_no_tta`` (the same models without flip averaging) when
    the run measured them. ``task`` names the recipe (the study's recipe is ``coronary_vessel_segmentation``;
    variants carry a suffix, so their rows form their own table lines).
    """
    extra = {k: result[k] for k in ("n_labels", "n_train", "n_val", "threshold", "best_step", "max_steps",
                                    "n_test", "device")}
    extra["flip_tta"] = bool(result.get("flip_tta", False))
    extra.update({k: result[k] for k in ("scale", "crop", "channels", "seconds") if k in result})
    metrics = [m for m in ("dice", "cldice", "dice_no_tta", "cldice_no_tta") if m in result]
    return [
        {"task": task, "label_fraction": result["n_labels"] / pool_size, "seed": int(seed), "init": init,
         "metric": metric, "value": float(result[metric]), "split_file": result["split_file"], "command": command,
         **extra}
        for metric in metrics
    ]


def publish_split(result: dict[str, Any], bundle_root: str | os.PathLike[str]) -> dict[str, Any]:
    """Copy a run's split into ``<bundle>/docs/splits/n<N>_s<seed>.json`` and point the result at it.

    The split depends only on ``(N, seed)``, so every initialisation of one ``(N, seed)`` shares the file.
    """
    split = json.loads(Path(result["split_file"]).read_text())
    name = f"n{result['n_labels']}_s{split['seed']}.json"
    atomic_write_json(Path(bundle_root) / "docs" / "splits" / name, split)
    return {**result, "split_file": f"docs/splits/{name}"}


def is_full_dataset(data: str | os.PathLike[str]) -> bool:
    """Whether ``data`` is the full 40 + 40 real dataset (only then do rows go to docs/results.json)."""
    if os.fspath(data) == "samples":
        return False
    try:
        return len(image_pairs(data, "train")) == 40 and len(image_pairs(data, "test")) == 40
    except InputError:
        return False


def run_finetune(
    bundle_root: str | os.PathLike[str],
    data: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    label_fraction: float,
    seed: int = 0,
    init: str = "pretrained",
    runs_root: str | os.PathLike[str] = "runs/xca_cmunet_segmentation",
    max_steps: int = 1200,
    device: str = "auto",
    resume: bool = False,
    publish: bool = True,
    **kwargs: Any,
) -> dict[str, Any]:
    """``medssl finetune``: fine-tune at a label fraction, test, append the rows to the results file.

    Rows go to ``<bundle>/docs/results.json`` only with ``publish`` (the config sets it when ``max_steps`` is
    the study's) and the full real dataset; otherwise to the run folder's ``results.json``, so a smoke run or a
    run on the samples never mixes with the real results.
    """
    del resume  # a fine-tune is short; it always starts afresh
    pool = len(image_pairs(data, "train"))
    n_labels = max(1, min(pool, int(math.floor(label_fraction * pool + 0.5))))
    encoder = resolve_encoder(init, bundle_root, runs_root)
    run_dir = Path(output_dir) / f"{init}_n{n_labels}_s{seed}"
    kwargs.setdefault("save_model", run_dir / "model.pt")  # the user's fine-tuned model, for `medssl infer`
    result = finetune_and_test(data, run_dir, n_labels, seed, encoder, max_steps=max_steps, device=device, **kwargs)
    full = publish and is_full_dataset(data)
    results_json = Path(bundle_root) / "docs" / "results.json" if full else run_dir / "results.json"
    if full:
        result = publish_split(result, bundle_root)
    command = f"medssl finetune xca_cmunet_segmentation --label-fraction {label_fraction} --seed {seed} --init {init}"
    for row in result_rows(result, init, seed, pool, command):
        append_result(results_json, row)
    model = os.fspath(kwargs["save_model"])
    return {**result, "init": init, "seed": seed, "results_json": os.fspath(results_json), "model": model}


def result_summary(result: dict[str, Any]) -> str:
    """One JSON line of a run (for logs)."""
    return json.dumps({k: v for k, v in result.items() if k != "split_file"})


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """One unit of the experiment grid, run in a worker process: ``{"kind": "pretrain" | "finetune", ...}``.

    ``threads`` sets ``torch.set_num_threads`` (several fine-tunes share the CPU cores that feed one GPU).
    """
    torch.set_num_threads(int(job.get("threads", 1)))
    kwargs = dict(job["kwargs"])
    t0 = time.perf_counter()
    if job["kind"] == "pretrain":
        path = pretrain(**kwargs)
        return {**job, "encoder": os.fspath(path), "seconds": round(time.perf_counter() - t0, 1)}
    result = finetune_and_test(**kwargs)
    return {**job, "result": result}
