"""Evaluation metrics for segmentation, classification and reconstruction.

Segmentation: Dice, clDice, HD95. Classification: macro AUROC, threshold choice. Reconstruction: PSNR, SSIM,
NMSE.

MONAI and scikit-image do the work where they have the metric; the functions here fix the conventions
(binary masks, empty masks, data range) so that every bundle reports the same numbers.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch

__all__ = [
    "dice",
    "cldice",
    "hd95",
    "macro_auroc",
    "psnr",
    "ssim",
    "nmse",
    "choose_threshold",
]

ArrayLike = np.ndarray | torch.Tensor | Sequence[float]


def _np(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _binary_pair(pred: ArrayLike, target: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    p, t = _np(pred).astype(bool), _np(target).astype(bool)
    if p.shape != t.shape:
        raise ValueError(f"pred and target shapes differ: {p.shape} vs {t.shape}")
    return p, t


def dice(pred: ArrayLike, target: ArrayLike) -> float:
    """Dice coefficient of two binary masks (any shape; nonzero = foreground).

    Both masks empty gives 1.0 (a perfect "nothing here"). Computed with ``monai.metrics.compute_dice``.

    Examples::

        >>> dice([[1, 1], [0, 0]], [[1, 0], [0, 0]])  # 2*1 / (2+1)
        0.6666666865348816
    """
    from monai.metrics import compute_dice

    p, t = _binary_pair(pred, target)
    yp = torch.from_numpy(p.astype(np.float32))[None, None]
    y = torch.from_numpy(t.astype(np.float32))[None, None]
    return float(compute_dice(yp, y, include_background=True, ignore_empty=False).item())


def _skeletonize(mask: np.ndarray) -> np.ndarray:
    from skimage.morphology import skeletonize

    if mask.ndim not in (2, 3):
        raise ValueError(f"clDice needs a 2-D or 3-D mask, got shape {mask.shape}")
    return skeletonize(mask).astype(bool)


def cldice(pred: ArrayLike, target: ArrayLike) -> float:
    """Centerline Dice (Shit et al., CVPR 2021) of two binary 2-D or 3-D masks.

    ``Tprec = |S(pred) ∩ target| / |S(pred)|``, ``Tsens = |S(target) ∩ pred| / |S(target)|``,
    ``clDice = 2 Tprec Tsens / (Tprec + Tsens)``, with skeletons ``S`` from
    ``skimage.morphology.skeletonize``.
    Both masks empty gives 1.0; one empty gives 0.0.
    """
    p, t = _binary_pair(pred, target)
    if not p.any() and not t.any():
        return 1.0
    if not p.any() or not t.any():
        return 0.0
    sp, st = _skeletonize(p), _skeletonize(t)
    tprec = (sp & t).sum() / max(sp.sum(), 1)
    tsens = (st & p).sum() / max(st.sum(), 1)
    if tprec + tsens == 0:
        return 0.0
    return float(2 * tprec * tsens / (tprec + tsens))


def hd95(pred: ArrayLike, target: ArrayLike, spacing: float | Sequence[float] | None = None) -> float:
    """95th-percentile symmetric Hausdorff distance between two binary masks (in ``spacing`` units).

    Uses ``monai.metrics.compute_hausdorff_distance(percentile=95)``. Both masks empty gives 0.0; exactly one
    empty gives ``inf``.
    """
    from monai.metrics import compute_hausdorff_distance

    p, t = _binary_pair(pred, target)
    if not p.any() and not t.any():
        return 0.0
    if not p.any() or not t.any():
        return math.inf
    yp = torch.from_numpy(p.astype(np.float32))[None, None]
    y = torch.from_numpy(t.astype(np.float32))[None, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = compute_hausdorff_distance(yp, y, include_background=True, percentile=95, spacing=spacing)
    return float(value.item())


def macro_auroc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Macro-averaged area under the ROC curve.

    Args:
        scores: ``[N, C]`` class scores or probabilities (or ``[N]`` for a binary task).
        labels: ``[N, C]`` binary (multi-label or one-hot) or ``[N]`` integer class labels.

    Classes with only positives or only negatives in ``labels`` have no AUROC; they are left out of the
    average with a warning. Computed with ``monai.metrics.compute_roc_auc`` per class.

    Raises:
        ValueError: no class has both positives and negatives.
    """
    from monai.metrics import compute_roc_auc

    s = _np(scores).astype(np.float64)
    y = _np(labels)
    if s.ndim == 1:
        s = s[:, None]
    if y.ndim == 1 and s.shape[1] > 1:
        y = np.eye(s.shape[1], dtype=np.float64)[y.astype(np.int64)]
    elif y.ndim == 1:
        y = y[:, None]
    if y.shape != s.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} do not match")
    y = y.astype(np.float64)
    valid = [c for c in range(y.shape[1]) if 0 < y[:, c].sum() < y.shape[0]]
    if not valid:
        raise ValueError("no class has both positive and negative labels: AUROC is undefined")
    if len(valid) < y.shape[1]:
        warnings.warn(
            f"AUROC: {y.shape[1] - len(valid)} class(es) without both positives and negatives left out",
            stacklevel=2,
        )
    per_class = [
        float(compute_roc_auc(torch.from_numpy(s[:, c]), torch.from_numpy(y[:, c]), average="none")) for c in valid
    ]
    return float(np.mean(per_class))


def psnr(pred: ArrayLike, target: ArrayLike, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB (``skimage.metrics.peak_signal_noise_ratio``).

    Args:
        pred: the reconstruction.
        target: the reference.
        data_range: the reference's value range; default ``target.max() - target.min()``.
    """
    from skimage.metrics import peak_signal_noise_ratio

    x, y = _np(pred).astype(np.float64), _np(target).astype(np.float64)
    if data_range is None:
        data_range = float(y.max() - y.min())
    return float(peak_signal_noise_ratio(y, x, data_range=data_range))


def ssim(pred: ArrayLike, target: ArrayLike, data_range: float | None = None) -> float:
    """Structural similarity of two grayscale 2-D or 3-D images (``skimage.metrics.structural_similarity``).

    The window is 7 (or the largest odd size that fits a small image); ``data_range`` defaults to
    ``target.max() - target.min()``.
    """
    from skimage.metrics import structural_similarity

    x, y = _np(pred).astype(np.float64), _np(target).astype(np.float64)
    if x.shape != y.shape:
        raise ValueError(f"pred and target shapes differ: {x.shape} vs {y.shape}")
    if data_range is None:
        data_range = float(y.max() - y.min())
    win = min(7, min(x.shape))
    if win % 2 == 0:
        win -= 1
    if win < 3:
        raise ValueError(f"SSIM needs images of at least 3 pixels per side, got {x.shape}")
    return float(structural_similarity(y, x, data_range=data_range, win_size=win))


def nmse(pred: ArrayLike, target: ArrayLike) -> float:
    """Normalised mean squared error ``||pred - target||² / ||target||²`` (complex inputs allowed)."""
    x, y = _np(pred), _np(target)
    denom = float(np.sum(np.abs(y) ** 2))
    if denom == 0:
        raise ValueError("NMSE is undefined for an all-zero target")
    return float(np.sum(np.abs(x - y) ** 2) / denom)


def choose_threshold(probs: ArrayLike, labels: ArrayLike, metric: str = "f1") -> float | np.ndarray:
    """The decision threshold that maximises ``metric`` on validation data.

    Args:
        probs: ``[N]`` or ``[N, C]`` predicted probabilities (one threshold per column).
        labels: binary labels of the same shape.
        metric: ``"f1"``, ``"youden"`` (sensitivity + specificity - 1) or ``"balanced_accuracy"``.

    Returns:
        A float for 1-D input, an array of ``C`` thresholds for 2-D input. Candidates are the midpoints
        between sorted distinct probabilities (plus 0.5 when there is a single value); ties go to the
        threshold closest to 0.5.
    """
    p, y = _np(probs).astype(np.float64), _np(labels).astype(bool)
    if p.shape != y.shape:
        raise ValueError(f"probs {p.shape} and labels {y.shape} do not match")
    if metric not in ("f1", "youden", "balanced_accuracy"):
        raise ValueError(f"metric must be 'f1', 'youden' or 'balanced_accuracy', got {metric!r}")
    if p.ndim == 2:
        return np.array([choose_threshold(p[:, c], y[:, c], metric) for c in range(p.shape[1])])
    values = np.unique(p)
    cands = (values[:-1] + values[1:]) / 2 if len(values) > 1 else np.array([0.5])
    cands = np.concatenate([[values[0] - 1e-12], cands, [values[-1] + 1e-12]]) if len(values) > 1 else cands
    best_t, best_v = 0.5, -np.inf
    for t in cands:
        pred = p >= t
        tp = float(np.sum(pred & y))
        fp = float(np.sum(pred & ~y))
        fn = float(np.sum(~pred & y))
        tn = float(np.sum(~pred & ~y))
        sens = tp / (tp + fn) if tp + fn else 0.0
        spec = tn / (tn + fp) if tn + fp else 0.0
        if metric == "f1":
            v = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
        elif metric == "youden":
            v = sens + spec - 1
        else:
            v = (sens + spec) / 2
        if v > best_v + 1e-12 or (abs(v - best_v) <= 1e-12 and abs(t - 0.5) < abs(best_t - 0.5)):
            best_t, best_v = float(t), v
    return best_t
