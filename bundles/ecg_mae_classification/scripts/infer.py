"""Inference entry of the ECG bundle: ``run_inference`` is what ``configs/inference.json`` runs.

Per input (WFDB ``.hea``, DICOM ECG, CSV or ``.npy`` with ``csv_fs``): one row of ``predictions.csv``
(probability and thresholded label per class), ``<record>_waves.csv`` (``lead,wave,onset,peak,offset`` in
samples at the record's own rate) and ``<record>.png`` (the 12 leads with the delineated waves shaded); with
``reconstruction=True`` also ``<record>_reconstruction.png`` (75 % of the first 9 s hidden and filled in by
the pretrained MAE). Bad inputs get one line on stderr naming the file; the others are still processed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medssl.eval.delineation import Wave  # noqa: E402
from scripts.ecg_bundle import (  # noqa: E402
    FS,
    classify,
    delineate,
    load_ecg,
    load_mae,
    load_models,
    masked_reconstruction,
)

__all__ = ["plot_reconstruction", "plot_record", "run_inference"]

_WAVE_COLOURS = {"P": "#2ca02c", "QRS": "#d62728", "T": "#1f77b4"}


def _finish(fig: Any, axes: Any, title: str, path: str | os.PathLike[str]) -> Path:
    """Label the time axis, title the figure and save it atomically (temporary file, then rename)."""
    import matplotlib.pyplot as plt

    axes[-1].set_xlabel("time (s)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(path)
    tmp = out.with_name(out.name + ".tmp.png")
    fig.savefig(tmp, dpi=70)
    plt.close(fig)
    os.replace(tmp, out)
    return out


def plot_record(path: str | os.PathLike[str], x: np.ndarray, waves: Sequence[Sequence[Any]] | None, title: str) -> Path:
    """Save a 12-lead plot of a prepared record (250 Hz) with the waves (given at 250 Hz) shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medssl.transforms.ecg import STANDARD_LEADS

    t = np.arange(x.shape[1]) / FS
    fig, axes = plt.subplots(12, 1, figsize=(12, 14), sharex=True)
    for li, ax in enumerate(axes):
        ax.plot(t, x[li], lw=0.6, color="k")
        ax.set_ylabel(STANDARD_LEADS[li], rotation=0, ha="right", va="center", fontsize=8)
        ax.set_yticks([])
        for w in waves[li] if waves else []:
            ax.axvspan(w.onset / FS, (w.offset + 1) / FS, color=_WAVE_COLOURS.get(w.wave, "grey"), alpha=0.25, lw=0)
    return _finish(fig, axes, title, path)


def plot_reconstruction(
    path: str | os.PathLike[str], x: np.ndarray, rec: np.ndarray, hidden: np.ndarray, title: str
) -> Path:
    """Save the 12 leads of the first 9 s (black), the hidden spans shaded and the MAE's fill-in in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medssl.transforms.ecg import STANDARD_LEADS

    n = rec.shape[1]
    t = np.arange(n) / FS
    fig, axes = plt.subplots(12, 1, figsize=(12, 14), sharex=True)
    for li, ax in enumerate(axes):
        ax.plot(t, x[li, :n], lw=0.6, color="k")
        ax.plot(t, np.where(hidden[li], rec[li], np.nan), lw=0.8, color="#d62728")
        edges = np.flatnonzero(np.diff(np.r_[0, hidden[li].astype(int), 0]))
        for a, b in zip(edges[::2], edges[1::2], strict=True):
            ax.axvspan(a / FS, b / FS, color="grey", alpha=0.15, lw=0)
        ax.set_ylabel(STANDARD_LEADS[li], rotation=0, ha="right", va="center", fontsize=8)
        ax.set_yticks([])
    return _finish(fig, axes, title, path)


def run_inference(
    inputs: Sequence[str | os.PathLike[str]] | str,
    output_dir: str | os.PathLike[str],
    model_dir: str | os.PathLike[str],
    threshold: float | None = None,
    delineation: bool = True,
    csv_fs: float | None = None,
    plot: bool = True,
    exit_on_error: bool = False,
    reconstruction: bool = False,
) -> dict[str, Any]:
    """Classify (and delineate) every input; write ``predictions.csv``, ``<record>_waves.csv`` and PNGs.

    Args:
        inputs: files (WFDB ``.hea``/``.dat``/``.mat``, DICOM ECG, ``.csv``/``.npy`` with ``csv_fs``).
        output_dir: where the outputs go (created).
        model_dir: the bundle's ``models/`` folder.
        threshold: one decision threshold for every class; ``None`` uses the per-class thresholds chosen
            on validation data (``model_config.json``).
        delineation: also write the per-lead waves.
        csv_fs: sampling rate of CSV/NumPy inputs (Hz).
        plot: write the PNG per record.
        exit_on_error: raise ``SystemExit(2)`` at the end if any input failed (the CLI convention).
        reconstruction: also write ``<record>_reconstruction.png``: 75 % of the tokens of the first 9 s
            hidden (a fixed mask) and filled in by the pretrained MAE (``models/mae_decoder.pt``); each
            hidden patch is mapped back with its true mean and spread, so the picture shows predicted shape.

    Returns:
        ``{"predictions": path, "records": [...], "failed": {path: reason}}``.
    """
    from medssl.errors import InputError
    from medssl.io.writers import write_csv
    from medssl.transforms.ecg import STANDARD_LEADS, UnusableRecordError

    paths = [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    clf, dl, cfg = load_models(model_dir)
    mae = load_mae(model_dir) if reconstruction else None
    if reconstruction and mae is None:
        print(f"{model_dir}: no mae_decoder.pt, so no masked reconstruction is drawn", file=sys.stderr)
    classes = list(cfg["classes"])
    thr = [float(threshold)] * len(classes) if threshold is not None else list(cfg["thresholds"])
    rows, failed, done = [], {}, []
    for p in paths:
        try:
            item = load_ecg(p, csv_fs=csv_fs)
        except (InputError, UnusableRecordError, OSError, ValueError) as exc:
            msg = str(exc) if str(exc).startswith(str(p)) else f"{p}: {exc}"
            print(msg.splitlines()[0], file=sys.stderr)
            failed[str(p)] = str(exc)
            continue
        prob = classify(clf, item.x)
        row: dict[str, Any] = {"record": item.name, "source": str(p)}
        for c, pr in zip(classes, prob, strict=True):
            row[f"prob_{c}"] = round(float(pr), 6)
        for c, pr, t in zip(classes, prob, thr, strict=True):
            row[f"label_{c}"] = int(pr >= t)
        rows.append(row)
        waves250 = None
        if delineation and dl is not None:
            waves250 = delineate(dl, item.x, fs_out=FS)
            k = item.fs_orig / FS
            waves = [
                [Wave(w.wave, round(w.onset * k), round(w.peak * k), round(w.offset * k)) for w in ws]
                for ws in waves250
            ]
            wrows = [
                {"lead": STANDARD_LEADS[li], "wave": w.wave, "onset": w.onset, "peak": w.peak, "offset": w.offset}
                for li, lead_waves in enumerate(waves)
                for w in lead_waves
                if w.offset < item.length_orig
            ]
            write_csv(out / f"{item.name}_waves.csv", wrows, header=["lead", "wave", "onset", "peak", "offset"])
        if plot:
            title = item.name + "  " + "  ".join(f"{c} {row[f'prob_{c}']:.2f}" for c in classes)
            plot_record(out / f"{item.name}.png", item.x, waves250, title)
        if mae is not None:
            rec, hidden = masked_reconstruction(*mae, item.x, norm_pix=cfg.get("mae", {}).get("norm_pix", True))
            plot_reconstruction(
                out / f"{item.name}_reconstruction.png",
                item.x,
                rec,
                hidden,
                f"{item.name}: 75 % of the 0.3 s patches hidden (grey) and predicted by the MAE (red)",
            )
        done.append(item.name)
    header = ["record", "source", *(f"prob_{c}" for c in classes), *(f"label_{c}" for c in classes)]
    pred_path = write_csv(out / "predictions.csv", rows, header=header)
    if exit_on_error and failed:
        raise SystemExit(2)
    return {"predictions": str(pred_path), "records": done, "failed": failed}
