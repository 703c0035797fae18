"""ECG MAE bundle: data, models and the pretrain / fine-tune workflows on the shared medssl core.

Recipe (see docs/README.md): 12 standard leads, 250 Hz, 0.67-40 Hz band-pass, per-lead standardisation,
9 s windows (2250 samples = 30 patches of 75 samples; 10 s = 2500 is not a multiple of 75), lead-wise
patches with lead embeddings (ST-MEM, ICLR 2024), mask ratio 0.75, MAE with time + frequency + coarse
targets (Xu et al., arXiv 2506.22495; medssl.losses.spectral).
"""

from __future__ import annotations

import csv
import json
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from medssl.eval.delineation import WAVE_CLASSES, Wave, ludb_waves, waves_from_labels, waves_to_labels
from medssl.io import load
from medssl.transforms.ecg import STANDARD_LEADS, ECGPrepConfig, UnusableRecordError, prepare_ecg, warn_skipped

__all__ = [
    "FS",
    "WINDOW",
    "PATCH",
    "DIAGNOSES",
    "ECGItem",
    "WindowDataset",
    "LudbDataset",
    "build_encoder",
    "build_classifier",
    "build_delineation",
    "default_data_root",
    "load_ecg",
    "load_ecgs",
    "ludb_items",
    "ludb_split_labels",
    "pretrain_paths",
    "pretrain",
    "delineation_loss",
    "feature_baseline",
    "auroc_by_diagnosis",
    "rhythm_features",
    "sliding_logits",
    "delineate",
    "save_models",
    "load_models",
]

FS = 250.0
WINDOW = 2250  # 9 s at 250 Hz
PATCH = 75
PREP = ECGPrepConfig(fs=FS, low=0.67, high=40.0)
# LUDB diagnoses with enough positives among records 1-160 (positives: 111 and 61 of 160).
# Left ventricular hypertrophy is not among them: its voltage criteria need absolute amplitudes, which the
# per-lead standardisation of the input removes (earlier three-label runs scored it at or below chance).
DIAGNOSES: tuple[str, ...] = ("sinus_rhythm", "left_axis_deviation")
# The record splits stay stratified on the three LUDB labels they were first drawn with, so that every saved
# split (docs/splits/) and every delineation row keeps its records.
SPLIT_STRATA: tuple[str, ...] = ("sinus_rhythm", "left_axis_deviation", "left_ventricular_hypertrophy")
ENCODER_ARGS: dict[str, Any] = {"hidden_size": 192, "depth": 4, "num_heads": 3}
LUDB_TEST_IDS = tuple(str(i) for i in range(121, 161))  # fixed test split: the last 40 records


def default_data_root() -> Path | None:
    """``../shared/data/ecg`` beside the checkout when present (``MEDSSL_DATA`` overrides), else None."""
    env = os.environ.get("MEDSSL_DATA")
    cands = [Path(env) / "ecg", Path(env)] if env else []
    here = Path(__file__).resolve()
    cands += [p / "shared" / "data" / "ecg" for p in here.parents[:6]]
    for c in cands:
        if (c / "ludb" / "data").is_dir() or (c / "cinc2021_12lead").is_dir():
            return c
    return None


# ----------------------------------------------------------------------------------------------- data
@dataclass
class ECGItem:
    """One usable record, prepared (``x`` float32 ``[12, L]`` at 250 Hz)."""

    name: str
    x: np.ndarray
    fs_orig: float
    length_orig: int


def load_ecg(path: str | os.PathLike[str], csv_fs: float | None = None) -> ECGItem:
    """Read a WFDB / DICOM ECG / CSV / .npy record and prepare it (:func:`medssl.transforms.ecg.prepare_ecg`).

    CSV: a header row of lead names, one row per sample (a first column named ``time`` is ignored); NumPy
    ``.npy``: ``[12, L]`` in the standard lead order. Both need ``csv_fs`` (Hz).

    Raises:
        medssl.errors.InputError: unreadable file; UnusableRecordError: unusable leads (names the record).
    """
    p = Path(path)
    name = p.stem
    if p.suffix.lower() in (".csv", ".npy"):
        if not csv_fs:
            raise UnusableRecordError(f"{name}: CSV/NumPy input needs a sampling rate (csv_fs)")
        if p.suffix.lower() == ".npy":
            arr = np.load(p, allow_pickle=False).astype(np.float64)
            leads: Sequence[str] = STANDARD_LEADS[: arr.shape[0]]
        else:
            with open(p, newline="") as fh:
                rows = list(csv.reader(fh))
            if len(rows) < 2:
                raise UnusableRecordError(f"{name}: CSV has no samples")
            head = [h.strip() for h in rows[0]]
            keep = [i for i, h in enumerate(head) if h.lower() != "time"]
            leads = [head[i] for i in keep]
            arr = np.array([[float(r[i]) for i in keep] for r in rows[1:]], dtype=np.float64).T
        return ECGItem(name, prepare_ecg(arr, leads, float(csv_fs), PREP, name=name), float(csv_fs), arr.shape[1])
    rec = load(p)
    fs = float(rec.meta.sampling_rate or 0)
    x = prepare_ecg(rec.array, rec.meta.lead_names or (), fs, PREP, units=rec.meta.units, name=name)
    return ECGItem(name, x, fs, int(rec.array.shape[-1]))


def load_ecgs(paths: Sequence[str | os.PathLike[str]]) -> list[ECGItem]:
    """Load every path; unusable or unreadable ones are skipped with a warning that names them."""
    from medssl.errors import InputError

    out = []
    for p in paths:
        try:
            out.append(load_ecg(p))
        except (UnusableRecordError, InputError) as exc:
            warn_skipped(exc)
    return out


def pretrain_paths(data_root: str | os.PathLike[str], exclude_ludb: Sequence[str] = LUDB_TEST_IDS) -> list[Path]:
    """Unlabelled pretraining records: LUDB (minus ``exclude_ludb``), CinC 2021, PTB and MIT-BIH headers.

    MIT-BIH has 2 leads and is skipped (with a warning) by :func:`load_ecgs`; it is listed so the skip is
    visible. ``data_root`` may also be a folder of records (all ``.hea``/``.dcm`` under it are used).
    """
    root = Path(data_root)
    excl = set(exclude_ludb)
    out: list[Path] = []
    if (root / "ludb" / "data").is_dir():
        out += sorted(
            (p for p in (root / "ludb" / "data").glob("*.hea") if p.stem not in excl), key=lambda p: int(p.stem)
        )
        for sub in ("cinc2021_12lead", "ptbdb_s0010_re", "mitbih_arrhythmia_100"):
            out += sorted((root / sub).glob("*.hea"))
        return out
    return sorted([*root.rglob("*.hea"), *root.rglob("*.dcm")])


class WindowDataset(Dataset):
    """Random 9 s crops of prepared records, ``windows_per_record`` items per record per epoch."""

    def __init__(self, items: Sequence[ECGItem], windows_per_record: int = 1, length: int = WINDOW) -> None:
        if not items:
            raise ValueError("no usable ECG records for pretraining.")
        self.items = list(items)
        self.k = int(windows_per_record)
        self.length = length

    def __len__(self) -> int:
        return len(self.items) * self.k

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x = self.items[i % len(self.items)].x
        return {"image": torch.from_numpy(_random_crop(x, self.length)[0])}


def _random_crop(x: np.ndarray, length: int, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    n = x.shape[-1]
    if n < length:
        pad = length - n
        return (np.pad(x, ((0, 0), (0, pad))), *(np.pad(o, ((0, 0), (0, pad)), constant_values=-100) for o in others))
    s = int(torch.randint(0, n - length + 1, (1,)).item())
    return (np.ascontiguousarray(x[:, s : s + length]), *(np.ascontiguousarray(o[:, s : s + length]) for o in others))


# ----------------------------------------------------------------------------------------------- LUDB
@dataclass
class LudbRecord:
    """A LUDB record prepared at 250 Hz, with per-lead labels, marks (500 Hz) and diagnoses."""

    name: str
    x: np.ndarray  # [12, 2500]
    labels: np.ndarray  # [12, 2500] class per sample, -100 outside the marked span
    waves: list[list[Wave]]  # per lead, at the record's 500 Hz
    diagnosis: np.ndarray  # [len(DIAGNOSES)] 0/1


def _ludb_labels(csv_path: Path, names: Sequence[str] = DIAGNOSES) -> dict[str, np.ndarray]:
    """``{record id: 0/1 vector}`` of the LUDB labels ``names`` (any of :data:`SPLIT_STRATA`)."""
    out = {}
    with open(csv_path, newline="") as fh:
        for row in csv.DictReader(fh):
            rhythm = row["Rhythms"].strip().lower()
            axis = row["Electric axis of the heart"].strip().lower()
            hyp = row["Hypertrophies"].strip().lower()
            known = {
                "sinus_rhythm": rhythm == "sinus rhythm",
                "left_axis_deviation": "left axis deviation" in axis,
                "left_ventricular_hypertrophy": "left ventricular hypertrophy" in hyp,
            }
            out[row["ID"].strip()] = np.array([known[n] for n in names], dtype=np.float32)
    return out


def ludb_split_labels(data_root: str | os.PathLike[str]) -> dict[str, list[int]]:
    """The labels the record splits are stratified on (:data:`SPLIT_STRATA`), per LUDB record id."""
    labels = _ludb_labels(Path(data_root) / "ludb" / "ludb.csv", SPLIT_STRATA)
    return {k: v.astype(int).tolist() for k, v in labels.items()}


def ludb_items(data_root: str | os.PathLike[str], ids: Sequence[str] | None = None) -> list[LudbRecord]:
    """Prepared LUDB records (default all in ``ludb/data``), labels resampled to 250 Hz."""
    root = Path(data_root) / "ludb"
    diag = _ludb_labels(root / "ludb.csv")
    names = ids if ids is not None else sorted((p.stem for p in (root / "data").glob("*.hea")), key=int)
    out = []
    for name in names:
        rec = load(root / "data" / f"{name}.hea")
        fs = float(rec.meta.sampling_rate)
        x = prepare_ecg(rec.array, rec.meta.lead_names, fs, PREP, units=rec.meta.units, name=name)
        ratio = FS / fs
        waves, labels = [], np.full(x.shape, -100, dtype=np.int64)
        for li, lead in enumerate(rec.meta.lead_names):
            ann = rec.meta.annotations.get(lead.lower())
            w = ludb_waves(ann.sample, ann.symbol) if ann is not None else []
            waves.append(w)
            if not w:
                continue
            w250 = [Wave(v.wave, round(v.onset * ratio), round(v.peak * ratio), round(v.offset * ratio)) for v in w]
            lab = waves_to_labels(w250, x.shape[1])
            lo, hi = w250[0].onset, w250[-1].offset
            labels[li, lo : hi + 1] = lab[lo : hi + 1]
        out.append(LudbRecord(name, x, labels, waves, diag[name]))
    return out


class LudbDataset(Dataset):
    """9 s crops of LUDB records: ``{"image": [12, L], "label": ...}``.

    Args:
        records: prepared records.
        target: ``"waves"`` (per-lead, per-sample classes ``[12, L]``) or ``"diagnosis"`` (``[C]`` 0/1).
        repeats: items per record per epoch.
        random_crop: a random 9 s crop (training) or the first 9 s (evaluation).
    """

    def __init__(
        self, records: Sequence[LudbRecord], target: str = "waves", repeats: int = 1, random_crop: bool = True
    ) -> None:
        if target not in ("waves", "diagnosis"):
            raise ValueError(f"target must be 'waves' or 'diagnosis', got {target!r}")
        self.records, self.target, self.repeats, self.random_crop = list(records), target, int(repeats), random_crop

    def __len__(self) -> int:
        return len(self.records) * self.repeats

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        r = self.records[i % len(self.records)]
        if self.random_crop:
            x, lab = _random_crop(r.x, WINDOW, r.labels)
        else:
            x, lab = r.x[:, :WINDOW], r.labels[:, :WINDOW]
        y = lab if self.target == "waves" else r.diagnosis
        return {"image": torch.from_numpy(np.ascontiguousarray(x)), "label": torch.from_numpy(np.ascontiguousarray(y))}


# ----------------------------------------------------------------------------------------------- models
def build_encoder(**overrides: Any) -> nn.Module:
    """The lead-wise 1-D ViT: 12 leads x 30 patches of 75 samples (``vit_tiny`` width, depth 4).

    ``channel_tokens=False`` gives the plain 1-D ViT instead: 30 tokens, each a 75-sample patch of all 12
    leads (``--tokens mixed``; the delineation head then decodes the shared token row once per lead).
    """
    from medssl.networks import create_encoder

    args = {"channel_tokens": True, **ENCODER_ARGS, **overrides}
    return create_encoder("vit_tiny", spatial_dims=1, in_channels=12, img_size=WINDOW, patch_size=PATCH, **args)


class Classifier(nn.Module):
    """Encoder + mean-pooled, batch-normalised linear head (multi-label logits).

    The head standardises the pooled tokens (``BatchNorm1d`` without affine, MAE's linear-probe recipe)
    before its linear layer: the pooled tokens of a little-trained encoder differ little between records,
    and without the norm, fine-tuning on LUDB stayed at chance (docs/dev/next_steps.md has the one-off runs).
    """

    def __init__(self, encoder: nn.Module, num_classes: int = len(DIAGNOSES)) -> None:
        super().__init__()
        from medssl.networks import LinearHead

        self.encoder = encoder
        self.head = LinearHead(encoder.hidden_size, num_classes, batch_norm=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 12, L]`` -> ``[B, num_classes]``."""
        return self.head(self.encoder(x))


MAE_DECODER_ARGS = {"decoder_dim": 128, "depth": 2, "num_heads": 4}


def build_mae_decoder(encoder: nn.Module) -> nn.Module:
    """The MAE decoder of :func:`pretrain` for ``encoder`` (width 128, depth 2, 4 heads)."""
    from medssl.networks import MAEDecoder

    return MAEDecoder(
        encoder.num_patches, encoder.hidden_size, encoder.patch_dim, grid_size=encoder.grid_size, **MAE_DECODER_ARGS
    )


def build_classifier(encoder: nn.Module | None = None) -> Classifier:
    """A :class:`Classifier` on a new (or the given) encoder."""
    return Classifier(encoder if encoder is not None else build_encoder())


def build_delineation(encoder: nn.Module | None = None) -> nn.Module:
    """:class:`medssl.networks.DelineationNet` (none/P/QRS/T per lead and sample)."""
    from medssl.networks import DelineationNet

    return DelineationNet(encoder if encoder is not None else build_encoder(), num_classes=len(WAVE_CLASSES))


def delineation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per lead and sample; labels ``-100`` (outside LUDB's marked span) are ignored."""
    return F.cross_entropy(logits.transpose(1, 2), labels.long(), ignore_index=-100)


# ----------------------------------------------------------------------------------------------- pretraining
def pretrain(
    data: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None,
    output_dir: str | os.PathLike[str],
    max_steps: int = 2000,
    batch_size: int = 16,
    lr: float = 1e-3,
    mask_ratio: float = 0.75,
    freq_weight: float = 0.5,
    coarse_weight: float = 0.5,
    coarse_factor: int = 5,
    windows_per_record: int = 8,
    device: str = "auto",
    resume: bool = False,
    seed: int = 0,
    exclude_ludb: Sequence[str] = LUDB_TEST_IDS,
    progress: bool = False,
    num_workers: int = 0,
    norm_pix: bool = True,
    channel_tokens: bool = True,
    tokens: str | None = None,
) -> dict[str, Any]:
    """Self-supervised MAE pretraining (time + frequency + coarse targets) on unlabelled ECGs.

    ``norm_pix`` normalises every target patch by its own mean and standard deviation (MAE's choice); with
    ``False`` the targets are the patches of the lead-standardised signal (per-lead normalisation).
    ``channel_tokens=False`` pretrains the plain 1-D ViT (one token per 75-sample patch of all 12 leads,
    :func:`build_encoder`) instead of the lead-wise one; ``tokens`` (``"lead"`` or ``"mixed"``), when given,
    overrides it (``configs/pretrain.json`` passes ``tokens``; its default is ``"mixed"``, the layout that
    leaves the trivial solution on these records, see the model card).

    Writes ``output_dir/checkpoints/last.pt`` (the trainer's) and ``output_dir/encoder.pt`` (the encoder's
    state dict). Returns the trainer history plus ``"checkpoint"`` and ``"encoder"`` paths.
    """
    from medssl.losses.spectral import TimeFrequencyTargets
    from medssl.masking import MaskCollator, RandomPatchMask
    from medssl.ssl import MAE, Trainer
    from medssl.ssl.sampler import make_loader

    if tokens is not None:
        channel_tokens = _lead_tokens(tokens)
    if data is None:
        data = default_data_root() or sample_dir()
    paths = pretrain_paths(data, exclude_ludb) if isinstance(data, str | os.PathLike) else [Path(p) for p in data]
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        items = load_ecgs(paths)
    ds = WindowDataset(items, windows_per_record)
    encoder = build_encoder(channel_tokens=channel_tokens)
    decoder = build_mae_decoder(encoder)
    method = MAE(
        encoder,
        decoder,
        norm_pix=norm_pix,
        # per-lead spectra and pooling also when a token holds all 12 leads (samples ordered (time, lead))
        extra_targets=TimeFrequencyTargets(
            freq_weight, coarse_weight, coarse_factor, norm_pix=norm_pix, channels=1 if channel_tokens else 12
        ),
    )
    collate = MaskCollator(RandomPatchMask(encoder.grid_size, mask_ratio))
    loader = make_loader(ds, min(batch_size, len(ds)), collate, seed=seed, num_workers=num_workers)
    opt = torch.optim.AdamW(method.parameters(), lr=lr, weight_decay=0.05, betas=(0.9, 0.95))
    trainer = Trainer(
        method,
        loader,
        opt,
        max_steps=max_steps,
        output_dir=output_dir,
        ckpt_every=max(100, max_steps // 5),
        log_every=10,
        device=device,
        grad_clip=1.0,
        seed=seed,
        progress=progress,
    )
    history = trainer.fit(resume=resume)
    trainer.close()
    out = Path(output_dir)
    from medssl.ssl.checkpoint import atomic_write

    enc_path = out / "encoder.pt"
    state = {k: v.detach().cpu() for k, v in encoder.state_dict().items()}
    atomic_write(enc_path, lambda fh: torch.save(state, fh))
    return {
        **history,
        "checkpoint": str(out / "checkpoints" / "last.pt"),
        "encoder": str(enc_path),
        "method": method,
        "records": [it.name for it in items],
    }


@torch.no_grad()
def reconstruction_metrics(
    method: nn.Module, signals: Sequence[np.ndarray], mask_ratio: float = 0.75, seed: int = 0
) -> dict[str, float]:
    """Masked-patch reconstruction MSE and SDSC of a pretrained MAE on the first 9 s of ``signals``.

    Also returns the same metrics for the trivial prediction (each masked patch = its own mean:
    ``baseline_mse``, ``baseline_sdsc``) so the numbers can be read. A model trained on per-lead targets
    (``norm_pix=False``) is scored on its raw output, against the same own-mean baseline (which knows each
    masked patch's mean, so it is an oracle for such a model) and against the lead mean (``zero_mse``).
    """
    from medssl.losses.jepa import gather_tokens
    from medssl.losses.spectral import reconstruction_quality
    from medssl.masking import RandomPatchMask
    from medssl.networks import patchify

    method = method.cpu().eval()
    x = torch.from_numpy(np.stack([np.asarray(s[:, :WINDOW], dtype=np.float32) for s in signals]))
    ctx, tgt = RandomPatchMask(method.encoder.grid_size, mask_ratio)(len(x), torch.Generator().manual_seed(seed))
    pred = method.decoder(method.encoder(x, context_idx=ctx), ctx, tgt)
    target = gather_tokens(patchify(x, method.encoder), tgt)
    q = reconstruction_quality(pred, target, norm_pix=bool(getattr(method, "norm_pix", True)))
    b = reconstruction_quality(torch.zeros_like(pred), target)
    z = reconstruction_quality(torch.zeros_like(pred), target, norm_pix=False)
    return {**q, "baseline_mse": b["mse"], "baseline_sdsc": b["sdsc"], "zero_mse": z["mse"]}


@torch.no_grad()
def masked_reconstruction(
    encoder: nn.Module,
    decoder: nn.Module,
    x: np.ndarray,
    mask_ratio: float = 0.75,
    seed: int = 0,
    norm_pix: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Hide ``mask_ratio`` of the tokens of the first 9 s of a prepared record and let the MAE fill them in.

    Args:
        encoder: the pretrained encoder (either token layout).
        decoder: its MAE decoder (:func:`build_mae_decoder`).
        x: ``[12, L]`` prepared record (250 Hz, standardised leads), ``L >= 2250`` (shorter ones are zero-padded).
        mask_ratio: fraction of tokens hidden (0.75 as in pretraining).
        seed: seed of the mask.
        norm_pix: the decoder predicts per-patch normalised values (MAE's ``norm_pix``, the bundle's default);
            they are mapped back with each hidden patch's true mean and standard deviation, as MAE's figures
            do, so the picture shows the predicted *shape* of each hidden patch.

    Returns:
        ``(reconstruction, hidden)``: ``[12, 2250]`` signal (the visible samples copied from ``x``) and a
        boolean ``[12, 2250]`` map of the hidden samples.
    """
    from medssl.losses.jepa import gather_tokens
    from medssl.losses.spectral import denormalize_patches
    from medssl.masking import RandomPatchMask
    from medssl.networks import patchify, unpatchify

    encoder, decoder = encoder.cpu().eval(), decoder.cpu().eval()
    xt = torch.from_numpy(np.asarray(x, dtype=np.float32))[None, :, :WINDOW]
    xt = F.pad(xt, (0, WINDOW - xt.shape[-1]))
    ctx, tgt = RandomPatchMask(encoder.grid_size, mask_ratio)(1, torch.Generator().manual_seed(seed))
    pred = decoder(encoder(xt, context_idx=ctx), ctx, tgt)
    tokens = patchify(xt, encoder)
    true = gather_tokens(tokens, tgt)
    rec = denormalize_patches(pred, true) if norm_pix else pred
    idx = tgt[..., None].expand(-1, -1, tokens.shape[-1])
    out = tokens.scatter(1, idx, rec.to(tokens.dtype))
    hidden = torch.zeros_like(tokens).scatter(1, idx, torch.ones_like(rec, dtype=tokens.dtype))
    return unpatchify(out, encoder)[0].numpy(), unpatchify(hidden, encoder)[0].numpy() > 0.5


def load_mae(model_dir: str | os.PathLike[str]) -> tuple[nn.Module, nn.Module] | None:
    """``(encoder, MAE decoder)`` from a ``models/`` folder, or ``None`` if it ships no ``mae_decoder.pt``."""
    d = Path(model_dir)
    if not (d / "mae_decoder.pt").is_file() or not (d / "encoder_pretrained.pt").is_file():
        return None
    cfg = json.loads((d / "model_config.json").read_text()) if (d / "model_config.json").is_file() else {}
    encoder = build_encoder(channel_tokens=cfg.get("tokens", "lead") == "lead")
    load_encoder_weights(encoder, d / "encoder_pretrained.pt")
    decoder = build_mae_decoder(encoder)
    _load_state(decoder, d / "mae_decoder.pt")
    return encoder.eval(), decoder.eval()


def mae_decoder_from_checkpoint(path: str | os.PathLike[str], encoder: nn.Module) -> nn.Module | None:
    """The MAE decoder in a pretraining checkpoint (``checkpoints/last.pt``); ``None`` if it holds none."""
    sd = _torch_state(path)
    dec = _method_part(sd["method"], "decoder.") if "method" in sd else {}
    if not dec:
        return None
    decoder = build_mae_decoder(encoder)
    try:
        decoder.load_state_dict(dec, strict=True)
    except RuntimeError as exc:
        from medssl.errors import CheckpointError

        reason = str(exc).splitlines()[0][:200]
        raise CheckpointError(path, f"its MAE decoder does not fit this encoder ({reason})") from None
    return decoder


def sample_dir() -> Path:
    """The CinC 2021 samples shipped in ``medssl/samples/ecg``."""
    from medssl import samples

    return samples.cinc_records()[0].parent


# ----------------------------------------------------------------------------------------------- inference helpers
@torch.no_grad()
def sliding_logits(model: nn.Module, x: torch.Tensor, window: int = WINDOW, stride: int | None = None) -> torch.Tensor:
    """Apply a per-sample model ``[1, 12, W] -> [1, 12, K, W]`` over a record ``[12, L]`` of any length.

    Windows every ``stride`` samples (default half a window) plus one aligned to the end; softmax
    probabilities are averaged where windows overlap. Records shorter than a window are zero-padded.

    Returns:
        ``[12, K, L]`` class probabilities.
    """
    c, n = x.shape
    stride = stride or window // 2
    xp = F.pad(x, (0, max(0, window - n)))
    total = xp.shape[-1]
    starts = sorted({*range(0, max(total - window, 0) + 1, stride), max(total - window, 0)})
    acc = None
    count = torch.zeros(total)
    for s in starts:
        p = torch.softmax(model(xp[None, :, s : s + window].float())[0].float(), dim=1).cpu()
        if acc is None:
            acc = torch.zeros(c, p.shape[1], total)
        acc[:, :, s : s + window] += p
        count[s : s + window] += 1
    assert acc is not None
    return (acc / count.clamp_min(1))[:, :, :n]


@torch.no_grad()
def delineate(model: nn.Module, x: np.ndarray, fs_out: float = FS) -> list[list[Wave]]:
    """Per-lead waves of a prepared record ``[12, L]`` at 250 Hz, returned in samples at ``fs_out``."""
    was = model.training
    model.eval()
    probs = sliding_logits(model, torch.from_numpy(np.asarray(x, dtype=np.float32)))
    model.train(was)
    lab = probs.argmax(dim=1).numpy()
    scale = fs_out / FS
    mins = {"P": 3, "QRS": 4, "T": 5}  # 12, 16, 20 ms at 250 Hz: shorter runs are fragments
    out = []
    for li in range(lab.shape[0]):
        ws = waves_from_labels(lab[li], x[li], min_samples=mins)
        out.append([Wave(w.wave, round(w.onset * scale), round(w.peak * scale), round(w.offset * scale)) for w in ws])
    return out


@torch.no_grad()
def classify(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """Class probabilities of a prepared record: sigmoid of the logits averaged over its 9 s windows."""
    was = model.training
    model.eval()
    xt = torch.from_numpy(np.asarray(x, dtype=np.float32))
    xt = F.pad(xt, (0, max(0, WINDOW - xt.shape[-1])))
    n = xt.shape[-1]
    starts = sorted({*range(0, n - WINDOW + 1, WINDOW // 2), n - WINDOW})
    logits = torch.stack([model(xt[None, :, s : s + WINDOW])[0] for s in starts]).mean(0)
    model.train(was)
    return torch.sigmoid(logits.float()).numpy()


# ----------------------------------------------------------------------------------------------- shipped models
def save_models(
    model_dir: str | os.PathLike[str],
    classifier: nn.Module,
    delineation: nn.Module | None,
    thresholds: Sequence[float],
    pretrained_encoder: nn.Module | None = None,
    info: dict[str, Any] | None = None,
    tokens: str = "lead",
    mae_decoder: nn.Module | None = None,
) -> list[Path]:
    """Write the shipped state dicts in float16 (atomic) and ``model_config.json``; returns the paths.

    ``tokens`` (``"lead"`` or ``"mixed"``) is the encoders' token layout; it is stored in the config so that
    :func:`load_models` builds the same networks. ``mae_decoder`` (the pretraining's decoder, with
    ``pretrained_encoder``) lets inference draw the masked reconstruction (:func:`load_mae`).
    """
    _lead_tokens(tokens)
    from medssl.ssl.checkpoint import atomic_write, atomic_write_json

    d = Path(model_dir)
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for name, m in (
        ("classifier.pt", classifier),
        ("delineation.pt", delineation),
        ("encoder_pretrained.pt", pretrained_encoder),
        ("mae_decoder.pt", mae_decoder if pretrained_encoder is not None else None),
    ):
        if m is None:
            continue
        sd = {
            k: (v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu())
            for k, v in m.state_dict().items()
        }
        out.append(atomic_write(d / name, lambda fh, sd=sd: torch.save(sd, fh)))
        os.chmod(out[-1], 0o644)
    cfg = {
        "classes": list(DIAGNOSES),
        "thresholds": [float(t) for t in thresholds],
        "wave_classes": list(WAVE_CLASSES),
        "fs": FS,
        "window": WINDOW,
        "patch": PATCH,
        "encoder": ENCODER_ARGS,
        "tokens": tokens,
        "leads": list(STANDARD_LEADS),
        **({"mae": {"mask_ratio": 0.75, "norm_pix": True, **MAE_DECODER_ARGS}} if mae_decoder is not None else {}),
        **(info or {}),
    }
    out.append(atomic_write_json(d / "model_config.json", cfg))
    return out


def _torch_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` of a weights file; a missing or unreadable one is a ``CheckpointError``."""
    from medssl.errors import CheckpointError

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(p, "weights file not found")
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for corrupt files: one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(p, f"cannot be loaded ({type(exc).__name__}: {first[:200]})") from None
    if not isinstance(sd, dict):
        raise CheckpointError(p, f"not a state dict (holds a {type(sd).__name__})")
    return sd


def _load_state(m: nn.Module, path: Path) -> None:
    from medssl.errors import CheckpointError

    sd = _torch_state(path)
    ref = m.state_dict()
    try:
        m.load_state_dict({k: v.to(ref[k].dtype) if k in ref else v for k, v in sd.items()})
    except RuntimeError as exc:
        raise CheckpointError(path, f"does not fit this network ({str(exc).splitlines()[0][:200]})") from None


def load_models(model_dir: str | os.PathLike[str]) -> tuple[nn.Module, nn.Module | None, dict[str, Any]]:
    """``(classifier, delineation or None, config)`` from a ``models/`` folder (CPU, eval mode)."""
    from medssl.errors import CheckpointError

    d = Path(model_dir)
    cfg_path = d / "model_config.json"
    if not (d / "classifier.pt").is_file() or not cfg_path.is_file():
        raise CheckpointError(d, "no trained model (classifier.pt + model_config.json); run the study or finetune")
    cfg = json.loads(cfg_path.read_text())
    tokens = cfg.get("tokens", "lead")  # configs written before the mixed-token option are lead-wise
    if tokens not in ("lead", "mixed"):
        raise CheckpointError(cfg_path, f"tokens must be 'lead' or 'mixed', got {tokens!r}")
    clf = build_classifier(build_encoder(channel_tokens=tokens == "lead"))
    _load_state(clf, d / "classifier.pt")
    dl = None
    if (d / "delineation.pt").is_file():
        dl = build_delineation(build_encoder(channel_tokens=tokens == "lead"))
        _load_state(dl, d / "delineation.pt")
        dl.eval()
    return clf.eval(), dl, cfg


def bundle_root() -> Path:
    """The folder of this bundle."""
    return Path(__file__).resolve().parents[1]


if str(bundle_root()) not in sys.path:  # so `import scripts...` works from anywhere
    sys.path.insert(0, str(bundle_root()))


# ----------------------------------------------------------------------------------------------- fine-tuning
def _lead_tokens(tokens: str) -> bool:
    if tokens not in ("lead", "mixed"):
        raise ValueError(f"tokens must be 'lead' or 'mixed', got {tokens!r}.")
    return tokens == "lead"


def _method_part(method_state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The ``prefix`` (``"encoder."``, ``"decoder."``) part of a trainer checkpoint's ``method`` state dict."""
    return {k[len(prefix) :]: v for k, v in method_state.items() if k.startswith(prefix)}


def _encoder_state(path: Path) -> dict[str, torch.Tensor]:
    sd = _torch_state(path)
    return _method_part(sd["method"], "encoder.") if "method" in sd else sd  # a medssl trainer checkpoint


def encoder_tokens(path: str | os.PathLike[str]) -> str:
    """The token layout of saved encoder weights: ``"lead"`` (one input lead per patch) or ``"mixed"`` (12).

    Raises:
        InputError: the file holds no 1-D ViT patch embedding.
    """
    from medssl.errors import InputError

    p = Path(path)
    w = _encoder_state(p).get("patch_embed.proj.weight")
    if w is None or w.ndim != 3:
        raise InputError(p, "not an ECG encoder state dict (no 1-D patch_embed.proj.weight)")
    return "lead" if w.shape[1] == 1 else "mixed"


def load_encoder_weights(encoder: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load an encoder state dict (``encoder.pt`` / ``models/encoder_pretrained.pt``) or a trainer checkpoint."""
    p = Path(path)
    sd = _encoder_state(p)
    ref = encoder.state_dict()
    bad = [k for k, v in sd.items() if k in ref and tuple(v.shape) != tuple(ref[k].shape)]
    if bad:
        from medssl.errors import InputError

        raise InputError(p, f"encoder weights do not fit this encoder ({bad[0]}: {tuple(sd[bad[0]].shape)} vs "
                            f"{tuple(ref[bad[0]].shape)}); lead-wise and mixed-token encoders differ (--tokens)")
    encoder.load_state_dict({k: v.to(ref[k].dtype) for k, v in sd.items() if k in ref}, strict=True)


def _loader(ds: Dataset, batch_size: int, seed: int, shuffle: bool = True, drop_last: bool = True) -> Any:
    from medssl.ssl.sampler import make_loader

    return make_loader(ds, min(batch_size, len(ds)), seed=seed, shuffle=shuffle, drop_last=drop_last)


def _finetune(
    model: nn.Module,
    train: Sequence[LudbRecord],
    target: str,
    loss: Any,
    output_dir: str | os.PathLike[str],
    max_steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: str,
) -> nn.Module:
    """The one fine-tuning recipe (medssl.eval.finetune: AdamW, warm-up + cosine, clip 1.0, encoder lr x 0.5)."""
    from medssl.eval.finetune import finetune

    repeats = max(1, (max_steps * batch_size) // max(1, len(train)) + 1)
    res = finetune(
        model,
        _loader(LudbDataset(train, target, repeats), batch_size, seed),
        None,
        loss,
        max_steps=max_steps,
        lr=lr,
        output_dir=output_dir,
        encoder_lr_scale=0.5,
        device=device,
        seed=seed,
        progress=False,
        log_every=50,
    )
    return res.model.cpu().eval()


def train_delineation(
    train: Sequence[LudbRecord],
    init: str | os.PathLike[str] | None,
    output_dir: str | os.PathLike[str],
    max_steps: int = 300,
    batch_size: int = 8,
    lr: float = 1e-3,
    seed: int = 0,
    device: str = "auto",
    tokens: str = "lead",
) -> nn.Module:
    """Fine-tune :func:`build_delineation` on LUDB records (``init`` = encoder weights, ``None`` = scratch).

    The recipe is identical for both inits (AdamW, warm-up + cosine, clip 1.0, same steps and batch).
    ``tokens``: ``"lead"`` (one token per lead and patch) or ``"mixed"`` (one per patch of all 12 leads); it
    must match the layout of ``init``.
    """
    torch.manual_seed(seed)
    net = build_delineation(build_encoder(channel_tokens=_lead_tokens(tokens)))
    if init is not None:
        load_encoder_weights(net.encoder, init)
    return _finetune(net, train, "waves", delineation_loss, output_dir, max_steps, batch_size, lr, seed, device)


def score_records(model: nn.Module, records: Sequence[LudbRecord]) -> dict[str, float]:
    """Boundary F1 (±150 ms) and error (ms) over all leads of ``records`` (marks at 500 Hz)."""
    from medssl.eval.delineation import DelineationScore, score_delineation

    total = DelineationScore.empty()
    for r in records:
        pred = delineate(model, r.x, fs_out=500.0)
        for li in range(12):
            total.add(score_delineation(pred[li], r.waves[li], fs=500.0, tolerance_ms=150.0))
    return total.summary()


def train_diagnosis(
    train: Sequence[LudbRecord],
    init: str | os.PathLike[str] | None,
    output_dir: str | os.PathLike[str],
    max_steps: int = 200,
    batch_size: int = 8,
    lr: float = 5e-4,
    seed: int = 0,
    device: str = "auto",
    tokens: str = "lead",
) -> nn.Module:
    """Fine-tune :func:`build_classifier` (multi-label BCE, output bias at the training prior).

    ``tokens`` as in :func:`train_delineation`.
    """
    from medssl.eval.finetune import init_output_bias_to_prior

    torch.manual_seed(seed)
    clf = build_classifier(build_encoder(channel_tokens=_lead_tokens(tokens)))
    if init is not None:
        load_encoder_weights(clf.encoder, init)
    prior = np.stack([r.diagnosis for r in train]).mean(0)
    init_output_bias_to_prior(clf.head.fc, prior)
    return _finetune(
        clf, train, "diagnosis", nn.BCEWithLogitsLoss(), output_dir, max_steps, batch_size, lr, seed, device
    )


def diagnosis_scores(model: nn.Module, records: Sequence[LudbRecord]) -> np.ndarray:
    """``[N, C]`` probabilities over the records (windows averaged)."""
    return np.stack([classify(model, r.x) for r in records])


def auroc_by_diagnosis(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """``{"macro_auroc": ..., "auroc_<diagnosis>": ...}`` of ``[N, len(DIAGNOSES)]`` scores (macro first)."""
    from medssl.eval.metrics import macro_auroc

    out = {"macro_auroc": macro_auroc(scores, labels)}
    for c, name in enumerate(DIAGNOSES):
        out[f"auroc_{name}"] = macro_auroc(scores[:, c : c + 1], labels[:, c : c + 1])
    return out


def probe_diagnosis(
    train: Sequence[LudbRecord], test: Sequence[LudbRecord], init: str | os.PathLike[str] | None,
    tokens: str = "lead",
) -> np.ndarray:
    """Linear probe (L-BFGS logistic regression, bias at the prior) on frozen mean-pooled tokens."""
    from medssl.eval.linear_probe import extract_features, linear_probe

    enc = build_encoder(channel_tokens=_lead_tokens(tokens))
    if init is not None:
        load_encoder_weights(enc, init)
    tr = _loader(LudbDataset(train, "diagnosis", random_crop=False), 16, 0, shuffle=False, drop_last=False)
    te = _loader(LudbDataset(test, "diagnosis", random_crop=False), 16, 0, shuffle=False, drop_last=False)
    xtr, ytr = extract_features(enc, tr, device="cpu")
    xte, _ = extract_features(enc, te, device="cpu")
    return linear_probe(xtr, ytr, xte, multilabel=True, weight_decay=1e-2).numpy()


def rhythm_features(x: np.ndarray, fs: float = FS) -> np.ndarray:
    """Hand-crafted features of a prepared record for the diagnosis reference (no learning involved).

    Per lead: maximum, minimum, skewness and kurtosis of the standardised signal (polarity and shape of the
    QRS, which give the electrical axis); from lead II: mean, standard deviation and coefficient of
    variation of the R-R interval (rhythm regularity), with R peaks found by ``scipy.signal.find_peaks``.
    """
    from scipy.signal import find_peaks
    from scipy.stats import kurtosis, skew

    x = np.asarray(x, dtype=np.float64)
    lead_ii = np.abs(x[1])
    peaks, _ = find_peaks(lead_ii, distance=int(0.3 * fs), height=0.5 * lead_ii.max())
    rr = np.diff(peaks) / fs if len(peaks) > 2 else np.ones(2)
    per_lead = [x.max(1), x.min(1), skew(x, axis=1), kurtosis(x, axis=1)]
    return np.concatenate([*per_lead, [rr.mean(), rr.std(), rr.std() / max(rr.mean(), 1e-6)]])


def feature_baseline(train: Sequence[LudbRecord], test: Sequence[LudbRecord]) -> np.ndarray:
    """The reference the encoders must beat: logistic regression on :func:`rhythm_features`.

    One regression per diagnosis on standardised features, its inverse regularisation ``C`` chosen by
    cross-validated AUROC on the training records only (up to 5 folds; ``C = 0.1`` when a class has fewer
    than 3 examples of either label, and the training prior when it has none). Returns ``[len(test), C]``
    probabilities.
    """
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    xtr = np.stack([rhythm_features(r.x) for r in train])
    xte = np.stack([rhythm_features(r.x) for r in test])
    ytr = np.stack([r.diagnosis for r in train])
    out = np.zeros((len(test), ytr.shape[1]))
    for c in range(ytr.shape[1]):
        y = ytr[:, c]
        n_min = int(min(y.sum(), len(y) - y.sum()))
        if n_min == 0:
            out[:, c] = y.mean()
            continue
        clf = (
            LogisticRegressionCV(Cs=[1e-3, 1e-2, 1e-1, 1.0, 10.0], cv=min(5, n_min), scoring="roc_auc", max_iter=5000)
            if n_min >= 3
            else LogisticRegression(C=0.1, max_iter=5000)
        )
        out[:, c] = make_pipeline(StandardScaler(), clf).fit(xtr, y).predict_proba(xte)[:, 1]
    return out


# ----------------------------------------------------------------------------------------------- workflows
_CINC_MAP = {"sinus_rhythm": ("NSR",), "left_axis_deviation": ("LAD",)}


def cinc_items(folder: str | os.PathLike[str]) -> list[LudbRecord]:
    """CinC 2021 records of a folder with ``labels.csv`` as diagnosis items (no delineation marks).

    The diagnoses map from the CinC abbreviations NSR and LAD.
    """
    root = Path(folder)
    labels: dict[str, set[str]] = {}
    with open(root / "labels.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            labels[row["record"]] = set(row["dx_abbrev"].split("|"))
    out = []
    for it in load_ecgs(sorted(root.glob("*.hea"))):
        dx = labels.get(it.name, set())
        y = np.array([bool(dx & set(_CINC_MAP[c])) for c in DIAGNOSES], dtype=np.float32)
        out.append(LudbRecord(it.name, it.x, np.full(it.x.shape, -100, dtype=np.int64), [[] for _ in range(12)], y))
    return out


def finetune_workflow(
    data: str | os.PathLike[str] | None,
    output_dir: str | os.PathLike[str],
    label_fraction: float = 1.0,
    seed: int = 0,
    init: str = "pretrained",
    pretrained: str | os.PathLike[str] | None = None,
    max_steps: int = 300,
    device: str = "auto",
    results_json: str | os.PathLike[str] | None = None,
    command: str = "medssl finetune ecg_mae_classification",
    tokens: str | None = None,
) -> dict[str, Any]:
    """``configs/finetune.json``: fine-tune diagnosis (and, on LUDB, delineation) at one label fraction.

    On LUDB (``data`` holds ``ludb/``): the fixed test split (records 121-160), 18 validation records, a
    seeded draw of ``label_fraction`` of the rest; rows (macro AUROC, boundary F1 and errors) are appended
    to ``results_json``. Without LUDB (the shipped CinC samples): diagnosis only, trained on all usable
    samples and scored on them (a smoke run; no rows appended). The fine-tuned models are written to
    ``output_dir/models`` in the shipped format.

    Args:
        data: ECG data root (``../shared/data/ecg``) or a CinC sample folder; ``None``: the default.
        output_dir: checkpoints, logs and ``models/``.
        label_fraction: fraction of the training pool, in ``(0, 1]``.
        seed: record draw and training seed.
        init: ``"pretrained"`` (``pretrained`` encoder weights) or ``"scratch"``.
        pretrained: encoder weights (default: the bundle's ``models/encoder_pretrained.pt``).
        max_steps: fine-tuning steps (same for both inits).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``.
        results_json: where rows go (default the bundle's ``docs/results.json``).
        command: recorded in the rows.
        tokens: the encoder's token layout (``"lead"`` or ``"mixed"``); ``None``: read from the pretrained
            weights (``"lead"`` for scratch). Mixed-token rows are named ``pretrained_mixed`` / ``scratch_mixed``.
    """
    from medssl.eval.metrics import choose_threshold, macro_auroc
    from medssl.eval.results import append_result
    from medssl.eval.splits import label_fraction_split, save_split

    if init not in ("pretrained", "scratch"):
        raise ValueError(f"init must be 'pretrained' or 'scratch', got {init!r}")
    root = Path(data) if data is not None else (default_data_root() or sample_dir())
    weights = None
    if init == "pretrained":
        weights = Path(pretrained) if pretrained else bundle_root() / "models" / "encoder_pretrained.pt"
        if not weights.is_file():
            from medssl.errors import CheckpointError

            raise CheckpointError(weights, "pretrained encoder not found; run `medssl pretrain` first")
        found = encoder_tokens(weights)
        if tokens is not None and tokens != found:
            from medssl.errors import InputError

            raise InputError(weights, f"a {found}-token encoder, but tokens={tokens!r} was asked for")
        tokens = found
    tokens = tokens or "lead"
    _lead_tokens(tokens)
    row_init = init + ("_mixed" if tokens == "mixed" else "")
    out = Path(output_dir)
    results = Path(results_json) if results_json else bundle_root() / "docs" / "results.json"
    summary: dict[str, Any] = {}
    if (root / "ludb" / "data").is_dir():
        records = ludb_items(root)
        strata = ludb_split_labels(root)
        by_name = {r.name: r for r in records}
        ids = [r.name for r in records]
        test = [by_name[i] for i in LUDB_TEST_IDS if i in by_name]
        split = label_fraction_split(
            ids,
            {r.name: strata[r.name] for r in records},
            fraction=label_fraction,
            seed=seed,
            test_ids=list(LUDB_TEST_IDS),
            val_fraction=18 / (len(ids) - len(test)),
        )
        split_file = out / f"split_f{label_fraction}_seed{seed}.json"
        save_split(split_file, split)
        train, val = [by_name[i] for i in split.train], [by_name[i] for i in split.val]
        dl = train_delineation(
            train, weights, out / "delineation", max_steps=max_steps, seed=seed, device=device, tokens=tokens
        )
        clf = train_diagnosis(
            train, weights, out / "diagnosis", max_steps=max_steps, seed=seed, device=device, tokens=tokens
        )
        y = np.stack([r.diagnosis for r in test])
        summary = {**score_records(dl, test), "macro_auroc": macro_auroc(diagnosis_scores(clf, test), y)}
        for k, v in summary.items():
            if np.isfinite(v):
                task = "ludb_diagnosis_finetune" if k == "macro_auroc" else "ludb_delineation"
                append_result(
                    results,
                    {
                        "task": task,
                        "label_fraction": label_fraction,
                        "seed": seed,
                        "init": row_init,
                        "metric": k,
                        "value": float(v),
                        "split_file": str(split_file),
                        "command": command,
                    },
                )
        thr = choose_threshold(diagnosis_scores(clf, val), np.stack([r.diagnosis for r in val]))
    else:
        items = cinc_items(root) if (root / "labels.csv").is_file() else []
        if not items:
            raise ValueError(f"{root}: neither LUDB (ludb/data) nor CinC records with labels.csv")
        clf = train_diagnosis(
            items, weights, out / "diagnosis", max_steps=max_steps, seed=seed, device=device, tokens=tokens
        )
        dl = None
        thr = np.full(len(DIAGNOSES), 0.5)
    paths = save_models(
        out / "models",
        clf,
        dl,
        list(np.atleast_1d(thr)),
        info={"label_fraction": label_fraction, "seed": seed, "init": init},
        tokens=tokens,
    )
    return {"summary": summary, "models": [str(p) for p in paths]}
