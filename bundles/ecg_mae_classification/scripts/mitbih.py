"""MIT-BIH beat classification (normal N against atrial premature A) from the lead-wise ECG encoder.

    python bundles/ecg_mae_classification/scripts/mitbih.py --encoder ENCODER.pt [--data ../shared/data/ecg]

MIT-BIH record 100 has two leads (MLII, V5) where the encoder expects twelve. The lead-wise encoder does not
need the other ten: only the tokens of lead II (MLII) and V5 are passed as context (``context_idx``), each
with its own lead embedding, exactly as the MAE saw visible tokens during pretraining.

Protocol (one record, so the split is by time, never by beat, to keep neighbouring beats apart):

- beats 0-15 min train, 15-20 min validation (threshold), 20-30 min test; only N and A beats are scored
  (the record also holds one V beat and one rhythm mark);
- every beat is centred in its own 9 s window; its features are the encoder tokens of both leads at the R peak
  and the token before it (the P wave), concatenated, plus three RR features (previous RR, next RR, previous RR
  over the mean of the last ten), which is what a cardiologist reads first;
- a logistic regression (L-BFGS, bias at the class prior) on: RR only (the baseline a user would pick), the
  pretrained encoder's tokens + RR, a random encoder's tokens + RR, and each encoder's tokens alone (does
  the representation carry the premature P wave without being told the timing?); with all training beats and
  with 10 % of them (at least 2 A beats, 3 draws);
- metrics on the test beats: AUROC, average precision (the positive class is about 1.5 % of beats, so AUROC
  alone flatters), and sensitivity, PPV and F1 at the F1-best threshold on the validation beats.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts import ecg_bundle as eb  # noqa: E402

BUNDLE = Path(__file__).resolve().parents[1]
LEADS = ("II", "V5")  # MIT-BIH 100: MLII is a modified lead II
SPLIT_MINUTES = (15.0, 20.0)  # train < 15 min <= validation < 20 min <= test
TASK = "mitbih_beats_normal_vs_apb"
SPLIT = "MIT-BIH 100 by time: 0-15 / 15-20 / 20-30 min"


@dataclass
class Beats:
    """Beats of one record: R-peak sample (at 250 Hz), label (1 = A), RR features and minute of the beat."""

    r: np.ndarray
    y: np.ndarray
    rr: np.ndarray
    minute: np.ndarray
    x: np.ndarray  # [2, L] prepared signal (II, V5) at 250 Hz


def load_beats(record: str | os.PathLike[str]) -> Beats:
    """Read a MIT-BIH record (``.hea`` + ``.atr``) and return its N and A beats with RR features.

    Raises:
        medssl.errors.InputError: unreadable record; ValueError: no lead II/MLII or V5.
    """
    import wfdb

    from medssl.transforms.ecg import ECGPrepConfig, prepare_ecg

    path = Path(record)
    base = str(path.with_suffix(""))
    rec = wfdb.rdrecord(base)
    ann = wfdb.rdann(base, "atr")
    names = ["II" if n.upper() == "MLII" else n for n in rec.sig_name]
    fs = float(rec.fs)
    x = prepare_ecg(rec.p_signal.T, names, fs, ECGPrepConfig(fs=eb.FS, leads=LEADS), units=rec.units, name=path.stem)
    sym = np.asarray(ann.symbol)
    beat = np.isin(sym, list("NLRBAaJSVrFejnE/fQ?"))
    samples = np.asarray(ann.sample)[beat]
    sym = sym[beat]
    rr = np.diff(samples) / fs
    prev = np.concatenate([[rr[0]], rr])
    nxt = np.concatenate([rr, [rr[-1]]])
    local = np.array([prev[max(0, i - 10) : i + 1].mean() for i in range(len(prev))])
    keep = np.isin(sym, ["N", "A"])
    r250 = np.round(samples * eb.FS / fs).astype(int)
    feats = np.stack([prev, nxt, prev / local], axis=1).astype(np.float32)
    return Beats(r250[keep], (sym[keep] == "A").astype(np.int64), feats[keep], samples[keep] / fs / 60.0, x)


@torch.no_grad()
def token_features(encoder: torch.nn.Module, beats: Beats, batch_size: int = 64) -> np.ndarray:
    """Tokens of II and V5 at each beat's R peak and the token before, from a beat-centred 9 s window.

    Returns:
        ``[n_beats, 4 * hidden]`` float32.
    """
    from medssl.transforms.ecg import STANDARD_LEADS

    encoder.eval()
    n_pos = eb.WINDOW // eb.PATCH
    rows = [STANDARD_LEADS.index(lead) for lead in LEADS]
    ctx = torch.tensor([[row * n_pos + p for row in sorted(rows) for p in range(n_pos)]])
    length = beats.x.shape[1]
    out = []
    for i in range(0, len(beats.r), batch_size):
        r = beats.r[i : i + batch_size]
        starts = np.clip(r - eb.WINDOW // 2, 0, length - eb.WINDOW)
        x = torch.zeros(len(r), 12, eb.WINDOW)
        for j, s in enumerate(starts):
            x[j, rows] = torch.from_numpy(beats.x[:, s : s + eb.WINDOW])
        tok = encoder(x, context_idx=ctx.expand(len(r), -1))  # [B, 2 * n_pos, D], lead-major
        tok = tok.reshape(len(r), len(rows), n_pos, -1)
        p = torch.from_numpy(np.clip((r - starts) // eb.PATCH, 1, n_pos - 1))
        b = torch.arange(len(r))
        cur = tok[b, :, p]  # [B, 2, D]
        before = tok[b, :, p - 1]
        out.append(torch.cat([cur.flatten(1), before.flatten(1)], dim=1).numpy())
    return np.concatenate(out).astype(np.float32)


def _standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mu, sd = train.mean(0), train.std(0) + 1e-6
    return [(a - mu) / sd for a in (train, *others)]


def _probe(xtr: np.ndarray, ytr: np.ndarray, xva: np.ndarray, xte: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logistic regression (medssl.eval.linear_probe: L-BFGS, bias at the prior); (p_val, p_test)."""
    from medssl.eval.linear_probe import linear_probe

    xtr, xva, xte = _standardise(xtr, xva, xte)
    p = linear_probe(
        torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(np.concatenate([xva, xte])), weight_decay=1e-2
    ).numpy()
    p = p[:, 1] if p.ndim == 2 and p.shape[1] == 2 else p.reshape(-1)
    return p[: len(xva)], p[len(xva) :]


def score(p_val: np.ndarray, y_val: np.ndarray, p_test: np.ndarray, y_test: np.ndarray) -> dict[str, float]:
    """AUROC and average precision on test; sensitivity, PPV and F1 at the F1-best validation threshold."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    from medssl.eval.metrics import choose_threshold

    thr = float(choose_threshold(p_val, y_val, "f1"))
    pred = p_test >= thr
    tp = float((pred & (y_test == 1)).sum())
    sens = tp / max(1.0, float((y_test == 1).sum()))
    ppv = tp / max(1.0, float(pred.sum()))
    f1 = 2 * sens * ppv / max(1e-12, sens + ppv)
    return {
        "auroc": float(roc_auc_score(y_test, p_test)),
        "average_precision": float(average_precision_score(y_test, p_test)),
        "sensitivity": sens,
        "ppv": ppv,
        "f1": f1,
    }


def subsample(y: np.ndarray, fraction: float, seed: int, min_pos: int = 2) -> np.ndarray:
    """Indices of a stratified ``fraction`` of the training beats with at least ``min_pos`` positives."""
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    k_pos = min(len(pos), max(min_pos, round(fraction * len(pos))))
    k_neg = max(1, round(fraction * len(neg)))
    return np.sort(np.concatenate([rng.choice(pos, k_pos, replace=False), rng.choice(neg, k_neg, replace=False)]))


def evaluate(
    record: str | os.PathLike[str],
    encoders: dict[str, str | os.PathLike[str] | None],
    fractions: Sequence[float] = (1.0, 0.1),
    seeds: Sequence[int] = (0, 1, 2),
) -> list[dict[str, float | str | int]]:
    """Run the protocol of this module; one dict per (features, fraction, seed, metric).

    Args:
        record: the MIT-BIH header (``100.hea``).
        encoders: name -> encoder weights (``None`` = a random encoder, seeded 0); features ``<name>`` (tokens +
            RR) and ``<name>_tokens_only``; ``rr_only`` is always added.
        fractions: fractions of the training beats.
        seeds: draws of the subsample (all seeds agree at fraction 1.0, so only the first is run there).
    """
    beats = load_beats(record)
    tr = beats.minute < SPLIT_MINUTES[0]
    va = (beats.minute >= SPLIT_MINUTES[0]) & (beats.minute < SPLIT_MINUTES[1])
    te = beats.minute >= SPLIT_MINUTES[1]
    feats: dict[str, np.ndarray] = {"rr_only": beats.rr}
    for name, path in encoders.items():
        torch.manual_seed(0)
        enc = eb.build_encoder()
        if path is not None:
            eb.load_encoder_weights(enc, path)
        tok = token_features(enc, beats)
        feats[f"{name}_tokens_only"] = tok
        feats[name] = np.concatenate([tok, beats.rr], axis=1)
    rows: list[dict[str, float | str | int]] = []
    for frac in fractions:
        for seed in seeds if frac < 1.0 else seeds[:1]:
            idx = np.flatnonzero(tr)
            if frac < 1.0:
                idx = idx[subsample(beats.y[idx], frac, seed)]
            for name, f in feats.items():
                pv, pt = _probe(f[idx], beats.y[idx], f[va], f[te])
                for metric, value in score(pv, beats.y[va], pt, beats.y[te]).items():
                    rows.append(
                        {
                            "init": name,
                            "label_fraction": frac,
                            "seed": seed,
                            "metric": metric,
                            "value": value,
                            "n_train_beats": int(len(idx)),
                            "n_train_apb": int(beats.y[idx].sum()),
                        }
                    )
    return rows


def describe(record: str | os.PathLike[str]) -> dict[str, int]:
    """Beat counts per split (the imbalance, reported beside the figures)."""
    b = load_beats(record)
    parts = {
        "train": b.minute < SPLIT_MINUTES[0],
        "val": (b.minute >= SPLIT_MINUTES[0]) & (b.minute < SPLIT_MINUTES[1]),
        "test": b.minute >= SPLIT_MINUTES[1],
    }
    return {f"{k}_{c}": int(((b.y == (c == "A")) & m).sum()) for k, m in parts.items() for c in ("N", "A")}


def main(argv: list[str] | None = None) -> int:
    """Command line: score the encoders and append rows to the bundle's results.json."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None, help="ECG data root (default ../shared/data/ecg)")
    ap.add_argument("--encoder", type=Path, default=None, help="pretrained encoder weights (state dict)")
    ap.add_argument("--results", type=Path, default=None, help="append rows here (default: print only)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    root = args.data or eb.default_data_root()
    header = Path(root or ".") / "mitbih_arrhythmia_100" / "100.hea"
    if not header.is_file():
        print(f"mitbih: {header}: not found (pass --data ../shared/data/ecg)", file=sys.stderr)
        return 2
    encoders: dict[str, str | os.PathLike[str] | None] = {"random_frozen": None}
    if args.encoder is not None:
        encoders = {"pretrained": args.encoder, **encoders}
    command = "python bundles/ecg_mae_classification/scripts/mitbih.py " + shlex.join(argv or sys.argv[1:])
    print(f"[mitbih] beats per split: {describe(header)}")
    rows = evaluate(header, encoders)
    from medssl.eval.results import append_result

    for r in rows:
        print(
            f"[mitbih] {r['init']:>14} frac {r['label_fraction']:<4} seed {r['seed']} {r['metric']:>17} "
            f"{r['value']:.3f} ({r['n_train_beats']} beats, {r['n_train_apb']} A)"
        )
        if args.results is not None:
            append_result(args.results, {"task": TASK, "split_file": SPLIT, "command": command, **r})
    return 0


if __name__ == "__main__":
    sys.exit(main())
