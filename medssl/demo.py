"""``medssl demo``: the main job on the samples shipped in the package, written up as a report with pictures.

The demo is what a new user runs first (``make demo``). It loads every shipped sample through
:mod:`medssl.io` and draws it, then runs each stage of the self-supervised pipeline that exists so far on
the real samples, and writes ``DIR/index.html`` and ``DIR/report.md`` with the figures and numbers.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medssl.mri.cartesian import cartesian_recon  # numpy only; moved to the PROPELLER package

__all__ = ["run_demo", "Section", "cartesian_recon"]


@dataclass
class Section:
    """One part of the demo report: a title, a few lines of text, figures and figures' numbers."""

    title: str
    text: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    numbers: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out: Path, name: str) -> str:
    """Save a figure atomically as PNG and return its file name."""
    plt = _plt()
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=out)
    os.close(fd)
    fig.savefig(tmp, dpi=90, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, out / name)
    return name


def _grey(frame: np.ndarray) -> np.ndarray:
    """Luminance of an RGB frame (ITU-R BT.601), or the frame itself when it is grey."""
    if frame.ndim == 3 and frame.shape[-1] == 3:
        return frame[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return frame.astype(np.float32)


def _overlay(ax: Any, image: np.ndarray, mask: np.ndarray, title: str) -> None:
    ax.imshow(_grey(image), cmap="gray")
    shown = np.ma.masked_where(mask == 0, mask > 0)
    ax.imshow(shown, cmap="autumn", alpha=0.45, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def _tour_ultrasound(out: Path) -> Section:
    from medssl import samples
    from medssl.io import load

    plt = _plt()
    sec = Section("Ultrasound: echo cine, fetal head, carotid sweep")
    cine = load(samples.echo_cine())
    n = cine.shape[0]
    picks = np.linspace(0, n - 1, 4).round().astype(int)
    fig, axes = plt.subplots(1, 4, figsize=(12, 2.6))
    for ax, i in zip(axes, picks, strict=True):
        ax.imshow(cine.array[i].astype(np.uint8) if cine.array.ndim == 4 else cine.array[i], cmap="gray")
        t = (cine.meta.frame_time_ms or 0.0) * i
        ax.set_title(f"frame {i} ({t:.0f} ms)", fontsize=9)
        ax.axis("off")
    sec.images.append(_save(fig, out, "echo_cine.png"))
    sec.text.append(
        f"Echo cine: {n} frames of {cine.shape[1]}×{cine.shape[2]}, {cine.meta.frame_time_ms:.1f} ms per frame, "
        f"decoded from {cine.meta.source.transfer_syntax} ({cine.meta.source.photometric})."
    )
    sec.numbers["echo_frames"] = n

    hc_img, hc_mask = samples.hc18_pairs()[0]
    car = next(iter(samples.carotid_recordings().values()))
    car_img, car_mask = car[len(car) // 2]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    _overlay(axes[0], load(hc_img).array, load(hc_mask).array, f"HC18 {hc_img.stem} with head mask")
    _overlay(axes[1], load(car_img).array, load(car_mask).array, f"carotid {car_img.stem[-9:]} with lumen mask")
    sec.images.append(_save(fig, out, "ultrasound_masks.png"))
    sec.text.append(f"HC18: {len(samples.hc18_pairs())} images with masks; carotid: "
                    f"{sum(len(v) for v in samples.carotid_recordings().values())} frames in "
                    f"{len(samples.carotid_recordings())} recordings, a lumen mask on every frame.")
    return sec


def _tour_xca(out: Path) -> Section:
    from medssl import samples
    from medssl.io import load

    plt = _plt()
    sec = Section("X-ray coronary angiography")
    pairs = samples.xca_pairs("train")[:3]
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.5))
    fractions = []
    for ax, (img, mask) in zip(axes, pairs, strict=True):
        m = load(mask).array
        fractions.append(float((m > 0).mean()))
        _overlay(ax, load(img).array, m, f"angiogram {img.stem}: {100 * fractions[-1]:.1f} % vessel")
    sec.images.append(_save(fig, out, "xca.png"))
    sec.numbers["vessel_fraction_mean"] = round(float(np.mean(fractions)), 4)
    sec.text.append("300×300 angiograms with expert vessel masks; vessels are a few per cent of the pixels, "
                    "which is why segmentation baselines start their output bias at the vessel prior.")
    return sec


def _plot_leads(ax_grid: Any, record: Any, seconds: float = 10.0) -> None:
    fs = float(record.meta.sampling_rate)
    sig = record.array
    n = min(sig.shape[1], int(seconds * fs))
    t = np.arange(n) / fs
    for i, ax in enumerate(ax_grid.flat):
        if i >= sig.shape[0]:
            ax.axis("off")
            continue
        ax.plot(t, sig[i, :n], lw=0.6, color="k")
        ax.set_ylabel(record.meta.lead_names[i] if record.meta.lead_names else str(i), rotation=0, labelpad=14)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)


def _tour_ecg(out: Path) -> Section:
    from medssl import samples
    from medssl.io import load

    plt = _plt()
    sec = Section("12-lead ECG: WFDB (CinC 2021) and DICOM waveform")
    rec = load(samples.cinc_records()[0])
    fig, axes = plt.subplots(6, 2, figsize=(12, 7), sharex=True)
    _plot_leads(axes.T, rec)
    fig.suptitle(f"{samples.cinc_records()[0].stem}: {rec.shape[0]} leads at {rec.meta.sampling_rate:g} Hz "
                 f"({', '.join(sorted(set(rec.meta.units)))})", fontsize=10)
    sec.images.append(_save(fig, out, "ecg_wfdb.png"))
    dcm = load(samples.ecg_dicom())
    sec.text.append(f"WFDB record: {rec.shape[0]} leads × {rec.shape[1]} samples at {rec.meta.sampling_rate:g} Hz. "
                    f"DICOM ECG: {dcm.shape[0]} leads × {dcm.shape[1]} samples at {dcm.meta.sampling_rate:g} Hz.")
    sec.numbers.update({"wfdb_leads": rec.shape[0], "dicom_ecg_leads": dcm.shape[0]})
    return sec


def log_magnitude(kspace: np.ndarray, floor: float = 1e-6) -> np.ndarray:
    """``log10`` of ``|k|`` relative to its peak, floored, so k-space shows more than its centre."""
    mag = np.abs(kspace)
    return np.log10(np.maximum(mag / max(float(mag.max()), 1e-30), floor))


def _tour_mri(out: Path) -> Section:
    from medssl import samples
    from medssl.io import load

    plt = _plt()
    sec = Section("MRI: magnitude image and Siemens raw k-space")
    mr = load(samples.mr_small())
    tw = load(samples.twix_gre())
    k = tw.array
    axes = tw.meta.axes
    osf = float(tw.meta.extra.get("readout_oversampling", 2.0)) if tw.meta.extra else 2.0
    img = cartesian_recon(k, axes, osf)
    coil_axis = axes.index("coil")
    k0 = np.take(k, 0, axis=coil_axis)
    while k0.ndim > 2:
        k0 = k0.mean(axis=0) if k0.shape[0] > 1 else k0[0]
    fig, axs = plt.subplots(1, 3, figsize=(12, 3.8))
    axs[0].imshow(np.squeeze(mr.array), cmap="gray")
    axs[0].set_title(f"MR_small {mr.shape}", fontsize=9)
    axs[1].imshow(log_magnitude(k0), cmap="magma", aspect="auto")
    axs[1].set_title("twix GRE k-space, coil 0: log10 |k|", fontsize=9)
    axs[2].imshow(img, cmap="gray")
    axs[2].set_title(f"RSS recon {img.shape[0]}×{img.shape[1]}", fontsize=9)
    for a in axs:
        a.axis("off")
    sec.images.append(_save(fig, out, "mri.png"))
    sec.numbers["twix_shape"] = list(k.shape)
    sec.text.append(f"Siemens twix GRE phantom: k-space {list(k.shape)} ({', '.join(axes)}), "
                    f"reconstructed by inverse FFT and root-sum-of-squares over {k.shape[coil_axis]} coils.")
    return sec


def _write_report(out: Path, sections: list[Section], total_s: float) -> Path:
    md = ["# medssl demo report", "",
          f"Made by `medssl demo` in {total_s:.0f} s on the samples shipped in the package "
          "(see medssl/samples/SAMPLES.md for provenance and licences).", ""]
    html = ["<!doctype html><html><head><meta charset='utf-8'><title>medssl demo</title>",
            "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}img{max-width:100%}"
            "code{background:#eee}</style></head><body><h1>medssl demo report</h1>",
            f"<p>Made by <code>medssl demo</code> in {total_s:.0f} s on the shipped samples.</p>"]
    for sec in sections:
        md += [f"## {sec.title}", ""] + [f"{t}" for t in sec.text] + [""]
        md += [f"![{img}]({img})" for img in sec.images] + [""]
        html.append(f"<h2>{sec.title}</h2>")
        html += [f"<p>{t}</p>" for t in sec.text]
        html += [f"<img src='{img}' alt='{img}'>" for img in sec.images]
        if sec.numbers:
            md += ["```json", json.dumps(sec.numbers), "```", ""]
            html.append(f"<pre>{json.dumps(sec.numbers)}</pre>")
    html.append("</body></html>")
    for name, text in (("report.md", "\n".join(md)), ("index.html", "\n".join(html))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / name)
    summary = {s.title: {"numbers": s.numbers, "images": s.images, "seconds": round(s.seconds, 1)} for s in sections}
    (out / ".summary.json.tmp").write_text(json.dumps(summary, indent=1))
    os.replace(out / ".summary.json.tmp", out / "summary.json")
    return out / "index.html"


def run_demo(out: Path, device: str = "auto", max_steps: int = 200) -> Path:
    """Run the demo and write the report; returns the path of ``index.html``.

    Args:
        out: report folder (created).
        device: ``cpu``, ``cuda`` or ``auto`` for the training stages.
        max_steps: pretraining steps for each self-supervised stage.
    """
    out.mkdir(parents=True, exist_ok=True)
    stages: list[tuple[str, Callable[[], Section]]] = [
        ("ultrasound samples", lambda: _tour_ultrasound(out)),
        ("angiography samples", lambda: _tour_xca(out)),
        ("ECG samples", lambda: _tour_ecg(out)),
        ("MRI samples", lambda: _tour_mri(out)),
    ]
    stages += _training_stages(out, device, max_steps)
    sections = []
    t_all = time.perf_counter()
    for i, (name, stage) in enumerate(stages, 1):
        print(f"[{i}/{len(stages)}] {name} ...", flush=True)
        t0 = time.perf_counter()
        sec = stage()
        sec.seconds = time.perf_counter() - t0
        print(f"[{i}/{len(stages)}] {name}: done in {sec.seconds:.1f} s", flush=True)
        sections.append(sec)
    return _write_report(out, sections, time.perf_counter() - t_all)


def _loss_panel(ax: Any, losses: list[float], title: str) -> None:
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses, color="0.6", lw=1, label="loss per step")
    k = max(1, len(losses) // 6)
    if len(losses) >= 2 * k:
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], smooth, color="C0", lw=2, label=f"mean of {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def _first_last(losses: list[float], k: int = 5) -> tuple[float, float]:
    k = max(1, min(k, len(losses) // 2))
    return float(np.mean(losses[:k])), float(np.mean(losses[-k:]))


def _pretrain(method: Any, loader: Any, run_dir: Path, device: str, max_steps: int, lr: float,
              weight_decay: float) -> list[float]:
    """Run the shared Trainer (AdamW, warm-up + cosine) and return the loss of every step."""
    import torch

    from medssl.ssl.trainer import Trainer

    trainer = Trainer(method, loader, lambda p: torch.optim.AdamW(p, lr=lr, weight_decay=weight_decay),
                      max_steps=max_steps, output_dir=run_dir, ckpt_every=max_steps, log_every=5,
                      device=device, seed=0, warmup_steps=max(1, max_steps // 10))
    history = trainer.fit()
    trainer.close()
    return [float(v) for v in history["loss"]]


def _stage_jepa_echo(out: Path, device: str, max_steps: int) -> Section:
    """V-JEPA with the 3-D localisation loss on clips of the shipped echo cine (the ultrasound core)."""
    import torch

    from medssl import samples
    from medssl.masking import MaskCollator, MultiBlockMask3D
    from medssl.networks import JEPAPredictor, create_encoder
    from medssl.ssl import JEPA
    from medssl.ssl.data import VideoClipDataset
    from medssl.ssl.sampler import make_loader

    plt = _plt()
    sec = Section("Self-supervised pretraining: V-JEPA on the echo cine")
    torch.manual_seed(0)
    size, frames = 128, 16
    data = VideoClipDataset([samples.echo_cine()], num_frames=frames, stride=2, size=size, clips_per_file=16)
    enc = create_encoder("vit_tiny", spatial_dims=2, in_channels=1, img_size=size, patch_size=16,
                         num_frames=frames, tubelet_size=2, depth=4)
    pred = JEPAPredictor(enc.num_patches, enc.hidden_size, predictor_dim=96, depth=2, num_heads=4,
                         grid_size=enc.grid_size)
    method = JEPA(enc, pred, loc_weight=0.1)
    masks = MultiBlockMask3D(enc.grid_size)
    loader = make_loader(data, batch_size=4, collate_fn=MaskCollator(masks), seed=0)
    run_dir = out / "runs" / "jepa_echo"
    losses = _pretrain(method, loader, run_dir, device, max_steps, lr=5e-4, weight_decay=0.04)
    first, last = _first_last(losses)

    clip = data[0]["image"][0].numpy()  # [T, H, W]
    g = torch.Generator().manual_seed(1)
    mask3d = masks.sample_mask(g).reshape(enc.grid_size).numpy().astype(float)  # True = masked (target)
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.2), gridspec_kw={"width_ratios": [1, 1, 1, 1.6]})
    up = np.kron(mask3d[frames // 4], np.ones((16, 16)))  # tubelet of frame frames//2
    frame = clip[frames // 2]
    lo, hi = float(frame.min()), float(frame.max())
    views = (("clip frame", frame), ("context: what the encoder sees", np.where(up > 0, lo, frame)),
             (f"target, predicted ({100 * mask3d.mean():.0f} % in this draw)", np.where(up > 0, frame, lo)))
    for ax, (title, img) in zip(axes[:3], views, strict=True):
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    _loss_panel(axes[3], losses, "V-JEPA loss (L1 to EMA targets + 0.1 x localisation)")
    sec.images.append(_save(fig, out, "jepa_echo.png"))
    ratio = float(np.mean([masks.sample_mask(g).float().mean().item() for _ in range(200)]))
    sec.text.append(
        f"A ViT encoder ({enc.hidden_size} wide, {len(enc.blocks)} blocks) sees only the context tubelets of "
        f"{frames}-frame clips ({size}x{size}, tubelet 2, patch 16, {enc.num_patches} tokens, "
        f"{100 * ratio:.0f} % masked on average by V-JEPA's multi-block masks); the predictor "
        f"fills in the EMA target encoder's features of the masked 3-D blocks. {max_steps} steps on {device}: "
        f"mean loss of the first 5 steps {first:.3f}, of the last 5 {last:.3f}. TensorBoard logs: "
        f"`tensorboard --logdir {run_dir / 'tb'}`."
    )
    sec.text.append("This is a smoke run on one shipped cine to show the pipeline, not a trained model.")
    sec.numbers.update({"steps": max_steps, "loss_first5": round(first, 4), "loss_last5": round(last, 4),
                        "mask_ratio_mean_200_draws": round(ratio, 3)})
    return sec


def _stage_mae_xca(out: Path, device: str, max_steps: int) -> Section:
    """A 2-D masked autoencoder on the shipped angiograms, with its reconstruction."""
    import torch

    from medssl import samples
    from medssl.masking import MaskCollator, RandomPatchMask
    from medssl.networks import MAEDecoder, create_encoder
    from medssl.ssl import MAE
    from medssl.ssl.data import ImageFolderDataset
    from medssl.ssl.sampler import make_loader

    plt = _plt()
    sec = Section("Self-supervised pretraining: masked autoencoder on angiograms")
    torch.manual_seed(0)
    images = [img for img, _ in samples.xca_pairs("train")]
    data = ImageFolderDataset(images, size=128)
    enc = create_encoder("vit_tiny", spatial_dims=2, in_channels=1, img_size=128, patch_size=16, depth=4)
    dec = MAEDecoder(enc.num_patches, enc.hidden_size, enc.patch_dim, decoder_dim=96, depth=2, num_heads=4)
    method = MAE(enc, dec, norm_pix=True)
    loader = make_loader(data, batch_size=6, collate_fn=MaskCollator(RandomPatchMask(enc.grid_size, 0.75)), seed=0)
    run_dir = out / "runs" / "mae_xca"
    losses = _pretrain(method, loader, run_dir, device, max_steps, lr=1e-3, weight_decay=0.05)
    first, last = _first_last(losses)
    method.eval()
    batch = next(iter(loader))
    with torch.no_grad():
        views = method.cpu().images(batch)
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.2), gridspec_kw={"width_ratios": [1, 1, 1, 1.6]})
    for ax, name in zip(axes[:3], ("input", "masked", "reconstruction"), strict=True):
        if name in views:
            ax.imshow(views[name].float().numpy()[0], cmap="gray")
        ax.set_title(name + (" (75 % of patches hidden)" if name == "masked" else ""), fontsize=8)
        ax.axis("off")
    _loss_panel(axes[3], losses, "MAE loss (MSE on masked, patch-normalised pixels)")
    sec.images.append(_save(fig, out, "mae_xca.png"))
    sec.text.append(f"ViT encoder on 128x128 angiograms, 75 % random patch masking, {max_steps} steps on {device}: "
                    f"mean loss of the first 5 steps {first:.3f}, of the last 5 {last:.3f}.")
    sec.numbers.update({"steps": max_steps, "loss_first5": round(first, 4), "loss_last5": round(last, 4)})
    return sec


def _stage_xca_bundle(out: Path, device: str, max_steps: int) -> Section:
    """The xca_cmunet_segmentation bundle end to end on the samples: pretrain, fine-tune with 4 labels, infer."""
    from medssl import samples
    from medssl.bundles import run_workflow
    from medssl.io import load

    plt = _plt()
    name = "xca_cmunet_segmentation"
    sec = Section(f"Bundle {name}: CM-UNet pretraining, 4-label fine-tuning, inference")
    root = out / "runs" / name
    common = {"data": "samples", "runs_root": str(root), "device": device, "batch_size": 4, "crop": 128}
    run_workflow(name, "pretrain", {**common, "max_steps": max_steps})
    pool = len(samples.xca_pairs("train"))
    (res,) = run_workflow(name, "finetune", {**common, "max_steps": max_steps, "label_fraction": 4 / pool,
                                              "seed": 0, "init": "pretrained", "eval_every": max(1, max_steps // 4)})
    model = Path(res["model"])
    tests = samples.xca_pairs("test")
    (summary,) = run_workflow(name, "inference", {
        "inputs": [str(img) for img, _ in tests], "output_dir": str(root / "inference"), "device": device,
        "inferer#checkpoint": str(model), "inferer#model_info": str(model.with_suffix(".json")),
    })
    fig, axes = plt.subplots(1, 2 * len(tests), figsize=(4 * len(tests) * 2, 3.6))
    for i, (img, mask) in enumerate(tests):
        outputs = summary["outputs"][str(img)]
        seg = load(outputs["seg_png"]).array if "seg_png" in outputs else None
        _overlay(axes[2 * i], load(img).array, load(mask).array, f"test {img.stem}: expert mask")
        if seg is not None:
            _overlay(axes[2 * i + 1], load(img).array, seg, f"test {img.stem}: prediction")
    sec.images.append(_save(fig, out, "xca_bundle.png"))
    sec.text.append(
        f"CM-UNet pretraining ({max_steps} steps, the {pool} shipped training angiograms without masks), then a "
        f"U-Net fine-tuned from it with {res['n_train']} labelled images and {res['n_val']} for validation "
        f"({max_steps} steps, threshold {res['threshold']:.2f} chosen on validation), then `medssl infer` on "
        f"the 2 shipped test angiograms: Dice {res['dice']:.3f}, clDice {res['cldice']:.3f}. A smoke run on the "
        "samples, not the bundle's results (see its docs/README.md)."
    )
    sec.numbers.update({"dice_2_test_images": round(float(res["dice"]), 4), "labels": res["n_train"]})
    return sec


def _stage_us_bundle(out: Path, device: str, max_steps: int) -> Section:
    """The ultrasound_vjepa_segmentation bundle on the samples: V-JEPA + localisation, frozen fine-tune, infer."""
    from medssl import samples
    from medssl.bundles import bundle_dir, run_workflow
    from medssl.io import load

    plt = _plt()
    name = "ultrasound_vjepa_segmentation"
    sec = Section(f"Bundle {name}: V-JEPA + 3-D localisation pretraining, frozen-encoder lumen segmentation")
    root = out / "runs" / name
    common = {"data": "samples", "runs_root": str(root), "device": device}
    steps = max(1, min(max_steps, 20))  # 16-frame clips: the costliest step of the demo on a CPU
    (history,) = run_workflow(name, "pretrain", {**common, "max_steps": steps, "batch_size": 2, "num_workers": 0})
    (res,) = run_workflow(name, "finetune", {**common, "max_steps": max(steps, 40), "batch_size": 4,
                                              "label_fraction": 1.0, "seed": 0, "init": "pretrained",
                                              "eval_every": 10})
    model = Path(res["model"])
    recs = samples.carotid_recordings()
    png, mask = recs[sorted(recs)[-1]][0]
    (summary,) = run_workflow(name, "inference", {
        "inputs": [str(png), str(samples.echo_cine())], "output_dir": str(root / "inference"), "device": device,
        "inferer#checkpoint": str(model), "inferer#model_info": str(model.with_suffix(".json")),
    })
    shipped_png = None
    if (bundle_dir(name) / "models" / "model.pt").is_file():  # the model trained on the real recordings
        (shipped,) = run_workflow(name, "inference", {"inputs": [str(png)], "output_dir": str(root / "shipped"),
                                                      "device": device})
        shipped_png = shipped["outputs"].get(str(png), {}).get("seg_png")
    fig, axes = plt.subplots(1, 4 if shipped_png else 3, figsize=(17 if shipped_png else 13, 3.6))
    _loss_panel(axes[0], [float(v) for v in history["loss"]],
                "V-JEPA loss (L1 to EMA targets + 0.1 x localisation + dispersive)")
    outputs = summary["outputs"].get(str(png), {})
    _overlay(axes[1], load(png).array, load(mask).array, f"sweep {png.stem[-8:]}: expert lumen")
    if "seg_png" in outputs:
        _overlay(axes[2], load(png).array, load(outputs["seg_png"]).array, "this demo's model (frozen encoder)")
    if shipped_png:
        _overlay(axes[3], load(png).array, load(shipped_png).array, "shipped models/ (trained on this sweep)")
    sec.images.append(_save(fig, out, "us_bundle.png"))
    n_seg = len(summary["outputs"].get(str(samples.echo_cine()), {}))
    sec.text.append(
        f"V-JEPA pretraining with the localisation loss ({steps} steps of two 16-frame 128x128 clips of the sector "
        f"crop: echo cine, carotid sweeps, HC18 stills), then a decoder on the frozen encoder trained on "
        f"{res['n_train']} frames of one carotid recording ({res['n_val']} for the threshold), then `medssl infer` "
        f"on the other recording's first frame and on the echo cine DICOM ({n_seg} outputs: SEG, NIfTI, overlay). "
        f"Test Dice over the {res['n_test']} frames of the other recording: {res['dice']:.3f}. A smoke run on the "
        "samples, not the bundle's results (see its docs/README.md)."
        + (" Last panel: the shipped models/ on the same frame; its recording is one of the 9 real training "
           "recordings of that model, so this is a picture, not a test figure." if shipped_png else "")
    )
    sec.numbers.update({"dice_test_recording": round(float(res["dice"]), 4), "labelled_frames": res["n_train"]})
    return sec


def _stage_ecg_bundle(out: Path, device: str, max_steps: int) -> Section:
    """The ecg_mae_classification bundle on the samples: MAE pretraining, diagnosis fine-tune, inference."""
    import shutil

    from medssl import samples
    from medssl.bundles import bundle_dir, run_workflow

    plt = _plt()
    name = "ecg_mae_classification"
    sec = Section(f"Bundle {name}: masked-autoencoder pretraining, fine-tuning, inference on a DICOM ECG")
    root = out / "runs" / name
    cinc = str(samples.cinc_records()[0].parent)
    steps = max(1, min(max_steps, 60))  # the 1-D ViT on 12 leads is the slowest stage on a CPU
    (history,) = run_workflow(name, "pretrain", {"data": cinc, "output_dir": str(root / "pretrain"),
                                                 "max_steps": steps, "batch_size": 4, "device": device})
    (res,) = run_workflow(name, "finetune", {
        "data": cinc, "output_dir": str(root / "finetune"), "init": "pretrained",
        "pretrained": str(root / "pretrain" / "encoder.pt"), "max_steps": steps, "device": device,
    })
    model_dir = Path(res["models"][0]).parent
    (summary,) = run_workflow(name, "inference", {"inputs": [str(samples.ecg_dicom())],
                                                  "output_dir": str(root / "inference"), "model_dir": str(model_dir)})
    fig, ax = plt.subplots(figsize=(6, 3))
    for key in ("loss", "loss_rec", "loss_freq", "loss_coarse"):
        if key in history:
            ax.plot([float(v) for v in history[key]], label=key)
    ax.set_xlabel("step")
    ax.set_title("ECG MAE pretraining: time, frequency and coarse targets", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    sec.images.append(_save(fig, out, "ecg_bundle_loss.png"))
    picture = root / "inference" / f"{samples.ecg_dicom().stem}.png"
    if picture.is_file():
        shutil.copyfile(picture, out / "ecg_bundle_record.png")
        sec.images.append("ecg_bundle_record.png")
    # the shipped models (trained on LUDB): delineation and the pretrained MAE's fill-in of the hidden patches
    shipped = bundle_dir(name) / "models"
    if (shipped / "mae_decoder.pt").is_file():
        run_workflow(name, "inference", {"inputs": [str(samples.ecg_dicom())], "reconstruction": True,
                                         "output_dir": str(root / "inference_shipped"), "model_dir": str(shipped)})
        for src, dst in (("", "ecg_bundle_shipped_waves.png"), ("_reconstruction", "ecg_bundle_reconstruction.png")):
            pic = root / "inference_shipped" / f"{samples.ecg_dicom().stem}{src}.png"
            if pic.is_file():
                shutil.copyfile(pic, out / dst)
                sec.images.append(dst)
    losses = [float(v) for v in history["loss"]]
    first, last = _first_last(losses)
    sec.text.append(
        f"1-D ViT masked autoencoder (one token per 0.3 s patch of all 12 leads, the bundle's default), "
        f"{steps} steps on the {len(samples.cinc_records())} shipped CinC ECGs "
        f"(mean loss of the first 5 steps {first:.3f}, of the last 5 {last:.3f}); diagnosis head fine-tuned for "
        f"{steps} steps; `medssl infer` on the DICOM ECG wrote {Path(summary['predictions']).name} and the "
        "12-lead picture. The samples carry no wave labels, so this smoke run has no delineation head; the "
        "bundle's docs/README.md gives its measured figures."
    )
    if "ecg_bundle_reconstruction.png" in sec.images:
        sec.text.append(
            "With the bundle's shipped models (LUDB-trained): the DICOM ECG's P (green), QRS (red) and T (blue) "
            "waves, and the shipped masked autoencoder filling in 75 % of the 0.3 s patches it never saw (red "
            "over the grey spans; each patch is mapped back with its true mean and spread)."
        )
    sec.numbers.update({"steps": steps, "loss_first5": round(first, 4), "loss_last5": round(last, 4)})
    return sec


def _stage_propeller_bundle(out: Path, device: str, max_steps: int) -> Section:
    """The propeller_mri_reconstruction bundle on the samples: self-supervised training, half-blade recon, twix.

    Short self-supervised training on noisy blades simulated from the shipped MR image, reconstruction from half
    the blades beside gridding, and the twix GRE phantom through the PROPELLER path.
    """
    import shutil

    from medssl import samples
    from medssl.bundles import run_workflow

    plt = _plt()
    name = "propeller_mri_reconstruction"
    sec = Section(f"Bundle {name}: self-supervised PROPELLER reconstruction from noisy blades")
    root = out / "runs" / name
    steps = max(1, min(max_steps, 40))
    (res,) = run_workflow(name, "pretrain", {
        "data": "samples", "output_dir": str(root / "pretrain"), "max_steps": steps, "im_size": 64, "n_lines": 6,
        "snrs": [20.0], "device": "cpu" if device == "auto" else device, "seed": 0,
    })
    model = Path(res["model"])
    (summary,) = run_workflow(name, "inference", {
        "inputs": [str(samples.mr_small()), str(samples.twix_gre())], "output_dir": str(root / "inference"),
        "checkpoint": str(model), "model_info": str(model.with_suffix(".json")), "simulate_blades": 16,
        "snr": 20.0, "device": "cpu" if device == "auto" else device,
    })
    fig, ax = plt.subplots(figsize=(5, 3))
    _loss_panel(ax, [float(v) for v in res.get("losses", [])], "readout-split k-space loss (held-out half)")
    sec.images.append(_save(fig, out, "propeller_loss.png"))
    for src, dst in ((samples.mr_small(), "propeller_mr_small.png"), (samples.twix_gre(), "propeller_twix.png")):
        outs = summary["outputs"].get(str(src), {})
        if "panel_png" in outs:
            shutil.copyfile(outs["panel_png"], out / dst)
            sec.images.append(dst)
    sec.text.append(
        f"An unrolled network (MONAI U-Net regulariser + CG data consistency through a multi-coil torchkbnufft "
        f"NUFFT) trained for {steps} steps without clean images: each blade's readout samples are split into two "
        f"interleaved halves, the network reconstructs from one and is scored in k-space on the other. Training "
        f"data: 16 blades x 6 lines x 64 readout simulated from rotations of the shipped 64x64 MR_small (smooth "
        f"phase, 8 birdcage coils, SNR 20); mean loss of the first steps {res['loss_first']:.4f}, of the last "
        f"{res['loss_last']:.4f}. Then `medssl infer` reconstructs MR_small from 8 of 16 simulated blades (the "
        "network's reconstructions of the 8 exact rotated / flipped views of the acquisition averaged) beside "
        "gridding, and the Siemens twix GRE phantom (Cartesian, 2 coils) resampled onto 16 blades, with coil maps "
        "estimated from the blade centres, beside its Cartesian RSS image. A smoke run, not the bundle's results "
        "(see its docs/README.md)."
    )
    sec.numbers.update({"steps": steps, "loss_first": round(float(res["loss_first"]), 5),
                        "loss_last": round(float(res["loss_last"]), 5)})
    return sec


def _training_stages(out: Path, device: str, max_steps: int) -> list[tuple[str, Callable[[], Section]]]:
    """The self-supervised stages that exist so far (more arrive with each bundle)."""
    from medssl.bundles import available_bundles

    stages = [
        ("V-JEPA pretraining on the echo cine", lambda: _stage_jepa_echo(out, device, max_steps)),
        ("MAE pretraining on angiograms", lambda: _stage_mae_xca(out, device, max_steps)),
    ]
    if "xca_cmunet_segmentation" in available_bundles():
        stages.append(("bundle xca_cmunet_segmentation", lambda: _stage_xca_bundle(out, device, max_steps)))
    if "ultrasound_vjepa_segmentation" in available_bundles():
        stages.append(("bundle ultrasound_vjepa_segmentation", lambda: _stage_us_bundle(out, device, max_steps)))
    if "ecg_mae_classification" in available_bundles():
        stages.append(("bundle ecg_mae_classification", lambda: _stage_ecg_bundle(out, device, max_steps)))
    if "propeller_mri_reconstruction" in available_bundles():
        stages.append(("bundle propeller_mri_reconstruction", lambda: _stage_propeller_bundle(out, device, max_steps)))
    return stages
