"""ECG wave delineation: waves from per-sample labels, LUDB marks, boundary F1 and error within a tolerance.

The usual LUDB protocol (Kalyakulina et al. 2020, IEEE Access 8:186181; Moskalenko et al. 2019, arXiv
1908.01659): a predicted boundary is a true positive if it lies within ±150 ms of a cardiologist's mark of the
same kind, each mark matched at most once; F1 = 2 TP / (2 TP + FP + FN); the error (prediction - mark) of the
matched pairs is reported as mean ± std in ms. LUDB leaves the first and last beat of a record unmarked, and
in 93 % of leads the marks begin and end with a QRS complex, so the P wave before the first marked QRS and the
T wave after the last one are real but unmarked. A predicted wave is therefore scored only when its centre
lies within the span of the lead's marks: counting the P wave before the first marked QRS would turn its
offset (within 150 ms of that QRS) into a false positive in almost every lead, while its onset lies farther
out, which lowered P-offset and T-onset F1 by about 0.05 against the other boundaries.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "BOUNDARIES",
    "WAVE_CLASSES",
    "Wave",
    "DelineationScore",
    "ludb_waves",
    "match_boundaries",
    "score_delineation",
    "waves_from_labels",
    "waves_to_labels",
]

WAVE_CLASSES: tuple[str, ...] = ("none", "P", "QRS", "T")
BOUNDARIES: tuple[str, ...] = ("P_onset", "P_offset", "QRS_onset", "QRS_offset", "T_onset", "T_offset")
_LUDB_SYMBOL = {"p": "P", "N": "QRS", "t": "T"}


@dataclass(frozen=True)
class Wave:
    """One delineated wave, in samples (offset inclusive)."""

    wave: str
    onset: int
    peak: int
    offset: int


def ludb_waves(sample: Sequence[int] | np.ndarray, symbol: Sequence[str]) -> list[Wave]:
    """Turn LUDB per-lead marks ``( p )``, ``( N )``, ``( t )`` into :class:`Wave` triplets.

    Args:
        sample: mark positions.
        symbol: ``"("``, ``")"`` or a wave symbol (``p``, ``N``, ``t``) per mark.

    Returns:
        Waves whose onset, peak and offset are all marked, in time order (incomplete triplets are dropped).
    """
    s = np.asarray(sample, dtype=np.int64)
    if len(s) != len(symbol):
        raise ValueError(f"{len(s)} samples but {len(symbol)} symbols.")
    out = []
    for i, sym in enumerate(symbol):
        if sym not in _LUDB_SYMBOL:
            continue
        if 0 < i < len(symbol) - 1 and symbol[i - 1] == "(" and symbol[i + 1] == ")":
            out.append(Wave(_LUDB_SYMBOL[sym], int(s[i - 1]), int(s[i]), int(s[i + 1])))
    return out


def waves_to_labels(waves: Iterable[Wave], length: int, classes: Sequence[str] = WAVE_CLASSES) -> np.ndarray:
    """Per-sample class indices (``0`` = none) from waves; ``onset..offset`` inclusive, clipped to the signal."""
    lab = np.zeros(length, dtype=np.int64)
    for w in waves:
        lo, hi = max(w.onset, 0), min(w.offset, length - 1)
        if hi >= lo:
            lab[lo : hi + 1] = classes.index(w.wave)
    return lab


def waves_from_labels(
    labels: np.ndarray,
    signal: np.ndarray | None = None,
    classes: Sequence[str] = WAVE_CLASSES,
    min_samples: Mapping[str, int] | None = None,
) -> list[Wave]:
    """Runs of the same non-zero class become waves; the peak is the sample of largest ``|signal|`` in the run.

    Args:
        labels: ``[L]`` class indices.
        signal: ``[L]`` lead signal for the peak (the run's centre without it).
        classes: class names, index 0 = background.
        min_samples: drop runs shorter than this per wave (spurious fragments), e.g. ``{"QRS": 5}``.

    Returns:
        Waves in time order.
    """
    lab = np.asarray(labels).astype(np.int64).reshape(-1)
    if signal is not None and len(signal) != len(lab):
        raise ValueError(f"signal length {len(signal)} differs from labels {len(lab)}.")
    if lab.size == 0:
        return []
    change = np.flatnonzero(np.diff(lab)) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [len(lab)]]) - 1
    out = []
    mins = dict(min_samples or {})
    for a, b in zip(starts, ends, strict=True):
        c = int(lab[a])
        if c == 0:
            continue
        name = classes[c]
        if b - a + 1 < mins.get(name, 1):
            continue
        if signal is not None:
            seg = np.abs(np.asarray(signal[a : b + 1], dtype=np.float64))
            peak = int(a + int(np.argmax(seg)))
        else:
            peak = int((a + b) // 2)
        out.append(Wave(name, int(a), peak, int(b)))
    return out


def match_boundaries(
    pred: Sequence[int] | np.ndarray, true: Sequence[int] | np.ndarray, tolerance: float
) -> tuple[int, int, int, np.ndarray]:
    """One-to-one matching of predicted to true positions within ``tolerance`` samples.

    Pairs are taken greedily in order of increasing distance, so each mark and each prediction is used at
    most once (optimal for points on a line when the tolerance is below half the spacing of marks).

    Returns:
        ``(tp, fp, fn, errors)`` with ``errors`` = prediction - mark of the matched pairs (samples).
    """
    p = np.sort(np.asarray(pred, dtype=np.float64))
    t = np.sort(np.asarray(true, dtype=np.float64))
    if len(p) == 0 or len(t) == 0:
        return 0, len(p), len(t), np.zeros(0)
    d = p[:, None] - t[None, :]
    cand = np.argwhere(np.abs(d) <= tolerance)
    order = np.argsort(np.abs(d[cand[:, 0], cand[:, 1]]), kind="stable")
    used_p, used_t, errs = set(), set(), []
    for k in order:
        i, j = cand[k]
        if i in used_p or j in used_t:
            continue
        used_p.add(int(i))
        used_t.add(int(j))
        errs.append(d[i, j])
    tp = len(errs)
    return tp, len(p) - tp, len(t) - tp, np.asarray(errs)


@dataclass
class DelineationScore:
    """Counts and errors per boundary, summed over leads and records (:func:`score_delineation`)."""

    tp: dict[str, int]
    fp: dict[str, int]
    fn: dict[str, int]
    errors_ms: dict[str, list[float]]

    @classmethod
    def empty(cls) -> DelineationScore:
        """Zero counts for every boundary."""
        return cls(
            {b: 0 for b in BOUNDARIES},
            {b: 0 for b in BOUNDARIES},
            {b: 0 for b in BOUNDARIES},
            {b: [] for b in BOUNDARIES},
        )

    def add(self, other: DelineationScore) -> DelineationScore:
        """Accumulate ``other`` into this score (in place) and return it."""
        for b in BOUNDARIES:
            self.tp[b] += other.tp[b]
            self.fp[b] += other.fp[b]
            self.fn[b] += other.fn[b]
            self.errors_ms[b] += other.errors_ms[b]
        return self

    def f1(self, boundary: str) -> float:
        """``2 TP / (2 TP + FP + FN)`` (1.0 when there is nothing to find and nothing found)."""
        den = 2 * self.tp[boundary] + self.fp[boundary] + self.fn[boundary]
        return 1.0 if den == 0 else 2 * self.tp[boundary] / den

    def summary(self) -> dict[str, float]:
        """F1 and error mean/std (ms) per boundary, plus ``mean_f1`` and ``mean_abs_error_ms`` over the six.

        Keys: ``<boundary>_f1``, ``<boundary>_error_mean_ms``, ``<boundary>_error_std_ms``.
        """
        out: dict[str, float] = {}
        maes = []
        for b in BOUNDARIES:
            e = np.asarray(self.errors_ms[b], dtype=np.float64)
            out[f"{b}_f1"] = self.f1(b)
            out[f"{b}_error_mean_ms"] = float(e.mean()) if e.size else float("nan")
            out[f"{b}_error_std_ms"] = float(e.std()) if e.size else float("nan")
            if e.size:
                maes.append(float(np.abs(e).mean()))
        out["mean_f1"] = float(np.mean([out[f"{b}_f1"] for b in BOUNDARIES]))
        out["mean_abs_error_ms"] = float(np.mean(maes)) if maes else float("nan")
        return out


def score_delineation(
    pred: Sequence[Wave], true: Sequence[Wave], fs: float, tolerance_ms: float = 150.0
) -> DelineationScore:
    """Score one lead: predicted waves against marked waves, for the six boundaries.

    A predicted wave whose centre ``(onset + offset) / 2`` lies outside ``[first mark, last mark]`` is ignored,
    both its boundaries (LUDB leaves the first and last beat unmarked; see the module docstring).

    Args:
        pred: predicted waves.
        true: marked waves.
        fs: sampling rate of both (Hz).
        tolerance_ms: matching tolerance (ms).
    """
    if fs <= 0 or tolerance_ms <= 0:
        raise ValueError(f"fs and tolerance_ms must be > 0, got {fs}, {tolerance_ms}.")
    tol = tolerance_ms * fs / 1000.0
    score = DelineationScore.empty()
    marks = [p for w in true for p in (w.onset, w.offset)]
    lo, hi = (min(marks), max(marks)) if marks else (np.inf, -np.inf)
    scored = [w for w in pred if lo <= (w.onset + w.offset) / 2.0 <= hi]
    for b in BOUNDARIES:
        wave, kind = b.split("_")
        t = [getattr(w, kind) for w in true if w.wave == wave]
        p = [getattr(w, kind) for w in scored if w.wave == wave]
        tp, fp, fn, err = match_boundaries(p, t, tol)
        score.tp[b], score.fp[b], score.fn[b] = tp, fp, fn
        score.errors_ms[b] = list(err * 1000.0 / fs)
    return score
