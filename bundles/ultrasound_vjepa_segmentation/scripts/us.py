"""The bundle's thin module: ultrasound clips, V-JEPA (+ 3-D localisation) pretraining, frozen-encoder segmentation.

Everything generic comes from medssl: the video ViT, the JEPA predictor and method with its localisation head
(:mod:`medssl.networks`, :mod:`medssl.ssl.methods.jepa`, :mod:`medssl.losses.localisation`), 3-D multi-block
masks (:mod:`medssl.masking`), the streaming clip dataset and the Trainer (:mod:`medssl.ssl`), the sector crop
(:mod:`medssl.transforms.sector`), metrics and results (:mod:`medssl.eval`) and the writers of
:class:`medssl.infer.SegmentationInference`.

Geometry. Every frame is cropped to its ultrasound sector (DICOM ``SequenceOfUltrasoundRegions`` when present,
else :func:`medssl.transforms.sector.estimate_sector_bbox`), resized to ``img_size`` squared and z-scored on its
own. Pretraining clips are ``num_frames`` frames, ``stride`` apart, cut into tubelets of 2 frames x 16 x 16
pixels. Segmentation is per frame: a frame is given to the encoder as a 2-frame clip (the frame twice, one
tubelet) so the pretrained video encoder is used unchanged, with the position embedding of the first time slot.

Segmentation protocol (identical for every initialisation):

- the carotid recordings are split by recording: the last 3 (sorted by name) are the fixed test set, the other 9
  the labelled pool; ``N`` recordings are drawn by rotating a fixed permutation of the pool with the seed, so at
  ``N = 1`` every seed uses another recording;
- validation frames (threshold and model choice) come from the labelled recordings only: with ``N >= 4`` the
  last drawn recording is held out, with ``N < 4`` every 4th frame of each drawn recording (recordings of
  fewer than 4 frames are trained on whole; with no validation frame the threshold is 0.5 and the last step
  is kept);
- output bias at the lumen prior, Dice + cross-entropy, AdamW, warm-up + cosine, gradient clipping, horizontal
  flips, the same steps and batch size for every initialisation;
- test: every frame of the test recordings at full resolution (prediction made on the crop, pasted back);
  Dice per frame, averaged over frames.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medssl.errors import InputError
from medssl.eval.finetune import init_output_bias_to_prior
from medssl.eval.metrics import dice
from medssl.eval.results import append_result
from medssl.infer.segmentation import Frames, SegmentationInference, zscore
from medssl.io.video import VIDEO_SUFFIXES, read_video_frames, video_info
from medssl.networks.vit import ViTEncoder
from medssl.ssl.checkpoint import atomic_write, atomic_write_json
from medssl.ssl.data import VideoClipDataset, load_channel_first
from medssl.ssl.schedules import warmup_cosine
from medssl.transforms.sector import crop_to_bbox, paste_bbox, sector_bbox

__all__ = [
    "TASK",
    "ENCODER_DEFAULTS",
    "default_data",
    "carotid_recordings",
    "carotid_split",
    "pretraining_entries",
    "USER_SUFFIXES",
    "USClipDataset",
    "build_video_encoder",
    "frame_encoder",
    "FrameDecoder",
    "USSegmenter",
    "build_segmenter",
    "pretrain",
    "prepare_frames",
    "encode_frames",
    "finetune_and_test",
    "run_finetune",
    "resolve_encoder",
    "USSegmentationInference",
]

TASK = "carotid_lumen_segmentation"
CAROTID = "ccaui_carotid"
ENCODER_DEFAULTS: dict[str, Any] = {
    "img_size": 128, "patch_size": 16, "num_frames": 16, "tubelet_size": 2, "hidden_size": 192, "depth": 6,
    "num_heads": 3,
}
N_TEST = 3


# ----------------------------------------------------------------------------------------------- data


def default_data(bundle_root: str | os.PathLike[str]) -> str:
    """``../shared/data/ultrasound`` beside the checkout when present, else ``"samples"``."""
    shared = Path(bundle_root).resolve().parents[1].parent / "shared" / "data" / "ultrasound"
    return os.fspath(shared) if (shared / CAROTID).is_dir() else "samples"


def carotid_recordings(data: str | os.PathLike[str]) -> dict[str, list[tuple[Path, Path]]]:
    """``{recording: [(frame, mask), ...]}`` in slice order, from ``data/ccaui_carotid`` or the samples."""
    if os.fspath(data) == "samples":
        from medssl import samples

        return samples.carotid_recordings()
    base = Path(data) / CAROTID if (Path(data) / CAROTID).is_dir() else Path(data)
    out: dict[str, list[tuple[Path, Path]]] = {}
    for rec in sorted(p for p in base.iterdir() if (p / "images").is_dir()):
        frames = sorted((rec / "images").glob("*.png"), key=lambda p: int(p.stem.rsplit("_", 1)[-1]))
        out[rec.name] = [(f, rec / "masks" / f.name) for f in frames]
    if not out:
        raise InputError(base, "no carotid recordings (<recording>/images/*.png) found")
    return out


def carotid_split(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(pool, test)``: the last ``N_TEST`` recordings (sorted) are the fixed test set (1 for the samples)."""
    names = sorted(names)
    n_test = N_TEST if len(names) > 2 * N_TEST else 1
    return names[:-n_test], names[-n_test:]


def choose_recordings(pool: Sequence[str], n: int, seed: int) -> list[str]:
    """``n`` recordings of ``pool``: a fixed permutation rotated by ``seed`` (distinct recordings per seed at n=1)."""
    if not 1 <= n <= len(pool):
        raise ValueError(f"n must lie in [1, {len(pool)}], got {n}.")
    perm = [pool[i] for i in np.random.default_rng(1234).permutation(len(pool))]
    return [perm[(seed * n + k) % len(pool)] for k in range(n)]


#: File endings taken from a user's data folder (DICOM, images, NIfTI, videos such as EchoNet's ``.avi``).
USER_SUFFIXES = (".dcm", ".png", ".jpg", ".jpeg", ".nii", ".gz", "") + VIDEO_SUFFIXES


def _user_entries(extra: str | os.PathLike[str] | Sequence[Any] | None) -> list[dict[str, Any]]:
    """User data: a MONAI datalist JSON (``{"training": [{"image": ...}]}`` or a list), files or folders.

    A folder is searched recursively for :data:`USER_SUFFIXES`, so an EchoNet-Dynamic folder (``Videos/*.avi``
    beside its CSV files) or its ``Videos/`` folder can be given as it is.
    """
    if not extra:
        return []
    items: list[Any] = [extra] if isinstance(extra, str | os.PathLike) else list(extra)
    out: list[dict[str, Any]] = []
    for item in items:
        if isinstance(item, Mapping):
            out.append({"image": item["image"]})
            continue
        p = Path(item)
        if p.suffix.lower() == ".json":
            doc = json.loads(p.read_text())
            rows = doc.get("training", doc.get("data", [])) if isinstance(doc, dict) else doc
            for row in rows:
                img = row["image"] if isinstance(row, Mapping) else row
                img = img if isinstance(img, list) else os.fspath(Path(p.parent, img))
                out.append({"image": img})
        elif p.is_dir():
            out.extend({"image": os.fspath(f)} for f in sorted(p.rglob("*")) if f.is_file()
                       and f.suffix.lower() in USER_SUFFIXES)
        else:
            out.append({"image": os.fspath(p)})
    return out


def pretraining_entries(
    data: str | os.PathLike[str],
    exclude: Sequence[str] = (),
    extra: str | os.PathLike[str] | Sequence[Any] | None = None,
    cine_repeats: int = 4,
) -> list[dict[str, Any]]:
    """Datalist of unlabelled clips: ultrasound DICOMs, carotid recordings (frame lists), HC18 stills, user data.

    Cines (DICOMs, carotid recordings, user files) are listed ``cine_repeats`` times, so still images (HC18, as
    1-frame clips that repeat their one frame) do not dominate an epoch. Masks are never read. Recordings in
    ``exclude`` (the downstream test set) are left out.
    """
    entries: list[dict[str, Any]] = []
    root = Path(data)
    known = ("dicom", CAROTID, "hc18_fetal_head_subset")
    if os.fspath(data) != "samples" and (root.is_file() or not any((root / k).is_dir() for k in known)):
        entries = [dict(e) for e in _user_entries(data) for _ in range(cine_repeats)]  # the user's own data only
        if not entries:
            raise InputError(data, "no pretraining data found")
        return entries
    if os.fspath(data) == "samples":
        from medssl import samples

        dicoms = [samples.echo_cine()]
        recs = {k: [i for i, _ in v] for k, v in samples.carotid_recordings().items()}
        stills = [i for i, _ in samples.hc18_pairs()]
    else:
        dicoms = sorted((root / "dicom").glob("*.dcm")) if (root / "dicom").is_dir() else []
        recs = {k: [i for i, _ in v] for k, v in carotid_recordings(root).items()} if (root / CAROTID).is_dir() else {}
        hc = root / "hc18_fetal_head_subset" / "images"
        stills = sorted(hc.glob("*.png")) if hc.is_dir() else []
    for path in dicoms:
        entries.extend({"image": os.fspath(path)} for _ in range(cine_repeats))
    for name, frames in recs.items():
        if name not in exclude:
            entries.extend({"image": [os.fspath(f) for f in frames]} for _ in range(cine_repeats))
    entries.extend({"image": os.fspath(p)} for p in stills)
    for e in _user_entries(extra):
        entries.extend(dict(e) for _ in range(cine_repeats))
    if not entries:
        raise InputError(data, "no pretraining data found")
    return entries


def _grey_cthw(path: str | os.PathLike[str] | Sequence[str]) -> np.ndarray:
    """A file (or a list of frame files, stacked in order) as ``[C, T, H, W]`` in the stored dtype."""
    if isinstance(path, str | os.PathLike):
        return load_channel_first(path)
    parts = [load_channel_first(p) for p in path]
    return np.concatenate(parts, axis=1)


def _is_video(path: Any) -> bool:
    return isinstance(path, str | os.PathLike) and Path(path).suffix.lower() in VIDEO_SUFFIXES


def _channel_first(arr: np.ndarray, axes: Sequence[str]) -> np.ndarray:
    """A ``(frame, y, x[, channel])`` array as ``[C, T, H, W]``."""
    out = np.moveaxis(arr, [axes.index("frame"), axes.index("y"), axes.index("x")], [-3, -2, -1])
    return out[None] if "channel" not in axes else out


def _luma(arr: np.ndarray) -> np.ndarray:
    """``[C, T, H, W]`` -> float32 ``[T, H, W]`` (BT.601 for RGB)."""
    a = arr.astype(np.float32)
    if a.shape[0] >= 3:
        return np.tensordot(np.array([0.299, 0.587, 0.114], np.float32), a[:3], axes=1)
    return a[0]


class USClipDataset(VideoClipDataset):
    """:class:`medssl.ssl.data.VideoClipDataset` with the sector crop, frame lists and a bounded cache.

    Each entry is a file (DICOM cine or still, PNG/JPEG, NIfTI, any :func:`medssl.io.load` format) or a list of
    frame files of one recording. Before the resize, the frames are cropped to the sector (DICOM regions, else
    the estimate over up to 32 frames). Decoded, cropped and resized files are kept in an LRU cache of at most
    ``cache_mb`` per worker, so memory stays bounded whatever the dataset size. Each clip is z-scored frame by
    frame (as at inference).

    Videos (``.avi``, ``.mp4``, ... e.g. EchoNet-Dynamic) are streamed instead: the frame count comes from the
    file's header, and each item decodes only its own clip (:func:`medssl.io.video.read_video_frames`: a seek
    to the key frame before it, ``num_frames`` frames ``stride`` apart); the sector is estimated on the clip.
    Nothing of a video is cached but its frame count. A video shorter than the clip holds its last frame.
    """

    def __init__(self, data: Sequence[Mapping[str, Any]], *args: Any, cache_mb: float = 256.0, **kwargs: Any) -> None:
        super().__init__(data, *args, **kwargs)
        self.cache_bytes = int(cache_mb * 2**20)
        self._lru: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._video_frames: dict[str, int] = {}

    def _video_clip(self, path: str | os.PathLike[str], clip: int) -> torch.Tensor:
        """One clip of a video, decoded on its own: float ``[C', num_frames, H', W']`` (grey, cropped, resized)."""
        key = os.fspath(path)
        if key not in self._video_frames:
            self._video_frames[key] = video_info(path).frames
        start = self._start(self._video_frames[key], clip)
        rec = read_video_frames(path, start, self.num_frames, self.stride)
        arr = _channel_first(rec.array, rec.axes)
        if arr.shape[1] < self.num_frames:  # shorter than the clip (or than its header said): hold the last frame
            pad = np.repeat(arr[:, -1:], self.num_frames - arr.shape[1], axis=1)
            arr = np.concatenate([arr, pad], axis=1)
        bbox, _ = sector_bbox(_luma(arr))
        return self._prepare(np.ascontiguousarray(crop_to_bbox(arr, bbox)))

    def _clip_source(self, path: Any) -> torch.Tensor:
        key = json.dumps(path) if not isinstance(path, str | os.PathLike) else os.fspath(path)
        if key in self._lru:
            self._lru.move_to_end(key)
            return self._lru[key]
        arr = _grey_cthw(path)
        dicom = path if isinstance(path, str | os.PathLike) and str(path).lower().endswith(".dcm") else None
        sample = _luma(arr[:, :: max(1, arr.shape[1] // 32)])
        bbox, _ = sector_bbox(sample, dicom=dicom)
        clip = self._prepare(np.ascontiguousarray(crop_to_bbox(arr, bbox)))
        self._lru[key] = clip
        while len(self._lru) > 1 and sum(v.numel() * 4 for v in self._lru.values()) > self.cache_bytes:
            self._lru.popitem(last=False)
        return clip

    def __getitem__(self, index: int) -> dict[str, Any]:
        entry = self.entries[index // self.clips_per_file] if 0 <= index < len(self) else None
        if entry is not None and _is_video(entry[self.image_key]):
            out = dict(entry)
            out[self.image_key] = self._video_clip(entry[self.image_key], index % self.clips_per_file).contiguous()
            if self.transform is not None:
                out = self.transform(out)
        else:
            out = super().__getitem__(index)
        x = out[self.image_key]
        out = {self.image_key: zscore(x).contiguous()}  # per frame; the datalist's other keys are dropped
        return out


# ----------------------------------------------------------------------------------------------- networks


def build_video_encoder(**overrides: Any) -> ViTEncoder:
    """The pretraining video ViT (``ENCODER_DEFAULTS`` updated with ``overrides``)."""
    cfg = {**ENCODER_DEFAULTS, **overrides}
    return ViTEncoder(
        spatial_dims=2, in_channels=1, img_size=cfg["img_size"], patch_size=cfg["patch_size"],
        num_frames=cfg["num_frames"], tubelet_size=cfg["tubelet_size"], hidden_size=cfg["hidden_size"],
        depth=cfg["depth"], num_heads=cfg["num_heads"],
    )


def frame_encoder(state: Mapping[str, torch.Tensor] | None = None, **overrides: Any) -> ViTEncoder:
    """The same ViT for single frames (a 2-frame clip = one tubelet), with ``state`` from a video encoder.

    The fixed sin-cos position embedding of the 1-tubelet grid equals the first time slot of the video grid,
    so every weight of the video encoder is reused as is.
    """
    cfg = {**ENCODER_DEFAULTS, **overrides}
    enc = build_video_encoder(**{**cfg, "num_frames": cfg["tubelet_size"]})
    if state is not None:
        state = {k: v for k, v in state.items() if not k.endswith("position_embeddings")}
        missing, unexpected = enc.load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if not k.endswith("position_embeddings")]:
            raise ValueError(f"encoder weights do not fit: missing {missing}, unexpected {unexpected}.")
    return enc


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.GELU())


class FrameDecoder(nn.Module):
    """Light decoder: patch tokens -> 3x3 conv -> x(patch/2) upsampling, fused with a tiny image stem at half size.

    The image stem (two 3x3 convs on the frame at half resolution) only sharpens edges; the content comes from
    the frozen tokens. Logits are upsampled x2 to the input size.

    Args:
        hidden_size: token width.
        grid: token grid ``(h, w)``.
        patch_size: pixels per token side.
        features: decoder width.
    """

    def __init__(self, hidden_size: int, grid: Sequence[int], patch_size: int, features: int = 64) -> None:
        super().__init__()
        self.grid = (int(grid[0]), int(grid[1]))
        self.patch_size = int(patch_size)
        self.reduce = _conv(hidden_size, features)
        self.mid = _conv(features, features // 2)
        self.stem = nn.Sequential(_conv(1, 16), _conv(16, 16))
        self.fuse = _conv(features // 2 + 16, 16)
        self.output_layer = nn.Conv2d(16, 1, 1)

    def forward(self, tokens: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """``tokens [B, h*w, D]``, ``image [B, 1, H, W]`` (z-scored, ``H = h * patch``) -> logits ``[B, 1, H, W]``."""
        b, n, d = tokens.shape
        x = tokens.transpose(1, 2).reshape(b, d, *self.grid)
        x = self.reduce(x)
        x = F.interpolate(x, scale_factor=self.patch_size // 4, mode="bilinear", align_corners=False)
        x = self.mid(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        s = self.stem(F.avg_pool2d(image, 2))
        x = self.fuse(torch.cat([x, s], dim=1))
        return F.interpolate(self.output_layer(x), scale_factor=2, mode="bilinear", align_corners=False)


class USSegmenter(nn.Module):
    """Frame segmenter: ``[B, 1, H, W]`` z-scored frame (any size) -> lumen logits ``[B, 1, H, W]``.

    The frame is resized to ``img_size`` squared, doubled into one tubelet, encoded by the ViT, decoded by
    :class:`FrameDecoder`, and the logits are resized back.
    """

    def __init__(self, encoder: ViTEncoder, decoder: FrameDecoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.img_size = tuple(encoder.img_size)
        self.tubelet = encoder.tubelet_size if encoder.is_video else 1

    @property
    def output_layer(self) -> nn.Conv2d:
        """The 1x1 output convolution (its bias starts at the class prior)."""
        return self.decoder.output_layer

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder tokens of frames already at ``img_size``."""
        clip = x.unsqueeze(2).expand(-1, -1, self.tubelet, -1, -1) if self.tubelet > 1 else x
        return self.encoder(clip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits at the input size."""
        size = tuple(x.shape[-2:])
        xr = x if size == self.img_size else F.interpolate(x, size=self.img_size, mode="area")
        logits = self.decoder(self.tokens(xr), xr)
        return logits if size == self.img_size else F.interpolate(logits, size=size, mode="bilinear",
                                                                  align_corners=False)


class UNetSegmenter(nn.Module):
    """The supervised baseline: MONAI UNet on the frame resized to ``img_size`` squared (same pipeline)."""

    def __init__(self, img_size: int = 128) -> None:
        super().__init__()
        from monai.networks.nets import UNet

        self.img_size = (int(img_size), int(img_size))
        self.net = UNet(spatial_dims=2, in_channels=1, out_channels=1, channels=(16, 32, 64, 128),
                        strides=(2, 2, 2), num_res_units=1)

    @property
    def output_layer(self) -> nn.Module:
        """The last convolution (bias at the class prior)."""
        last = [m for m in self.net.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)][-1]
        return last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits at the input size."""
        size = tuple(x.shape[-2:])
        xr = x if size == self.img_size else F.interpolate(x, size=self.img_size, mode="area")
        logits = self.net(xr)
        return logits if size == self.img_size else F.interpolate(logits, size=size, mode="bilinear",
                                                                  align_corners=False)


def build_segmenter(encoder_state: Mapping[str, torch.Tensor] | None = None, **overrides: Any) -> USSegmenter:
    """A :class:`USSegmenter` (optionally with a pretrained video encoder's weights)."""
    cfg = {**ENCODER_DEFAULTS, **overrides}
    enc = frame_encoder(encoder_state, **cfg)
    grid = enc.grid_size[-2:]
    return USSegmenter(enc, FrameDecoder(enc.hidden_size, grid, cfg["patch_size"]))


def _save_state(path: str | os.PathLike[str], state: Mapping[str, torch.Tensor], half: bool = False) -> Path:
    cpu = {k: (v.detach().cpu().half() if half and v.is_floating_point() else v.detach().cpu()).contiguous()
           for k, v in state.items()}
    return atomic_write(path, lambda fh: torch.save(cpu, fh))


def load_state(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A state dict (``weights_only=True``), in float32."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


# ----------------------------------------------------------------------------------------------- pretraining


def build_jepa(loc_weight: float = 0.1, predictor_dim: int = 96, predictor_depth: int = 3,
               dispersive_weight: float = 0.0, **overrides: Any) -> Any:
    """V-JEPA (EMA target, L1) on the video ViT, with the 3-D localisation loss weighted by ``loc_weight``.

    ``dispersive_weight`` > 0 adds the token-level dispersive loss (Wang & He 2025) against collapse.
    """
    from medssl.networks import JEPAPredictor
    from medssl.ssl import JEPA

    enc = build_video_encoder(**overrides)
    pred = JEPAPredictor(enc.num_patches, enc.hidden_size, predictor_dim=predictor_dim, depth=predictor_depth,
                         num_heads=3, grid_size=enc.grid_size)
    return JEPA(enc, pred, loc_weight=loc_weight, loss_weights={"dispersive": dispersive_weight},
                dispersive_on="tokens")


def pretrain(
    data: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    loc_weight: float = 0.1,
    max_steps: int = 500,
    batch_size: int = 8,
    img_size: int = 128,
    num_frames: int = 16,
    stride: int = 2,
    lr: float = 5e-4,
    device: str = "auto",
    seed: int = 0,
    resume: bool = False,
    extra_data: str | Sequence[Any] | None = None,
    num_workers: int = 1,
    depth: int = 6,
    hidden_size: int = 192,
    log_every: int = 10,
    dispersive_weight: float = 0.0,
) -> dict[str, Any]:
    """V-JEPA pretraining on unlabelled ultrasound clips; writes ``output_dir/encoder.pt`` (+ ``encoder.json``).

    The carotid test recordings are never seen. Returns the Trainer history plus ``encoder`` (its path).
    """
    from medssl.masking import MaskCollator, MultiBlockMask3D
    from medssl.ssl.sampler import make_loader
    from medssl.ssl.trainer import Trainer

    exclude: list[str] = []
    try:
        exclude = carotid_split(list(carotid_recordings(data)))[1]
    except (InputError, OSError, ValueError):
        exclude = []
    entries = pretraining_entries(data, exclude, extra_data)
    hc18_test = hc18_test_images()
    entries = [e for e in entries if not _is_hc18_image(e["image"], hc18_test)]
    ds = USClipDataset(entries, num_frames=num_frames, stride=stride, size=img_size, random_clip=True)
    cfg = {"img_size": img_size, "num_frames": num_frames, "depth": depth, "hidden_size": hidden_size}
    method = build_jepa(loc_weight=loc_weight, dispersive_weight=dispersive_weight, **cfg)
    collate = MaskCollator(MultiBlockMask3D(method.encoder.grid_size))
    loader = make_loader(ds, batch_size, collate_fn=collate, num_workers=num_workers, seed=seed,
                         persistent_workers=num_workers > 0)
    trainer = Trainer(
        method, loader, partial(torch.optim.AdamW, lr=lr, weight_decay=0.04), max_steps=max_steps,
        output_dir=output_dir, ckpt_every=max(max_steps // 4, 20), log_every=log_every, device=device,
        grad_clip=1.0, seed=seed, progress=False,
    )
    history = trainer.fit(resume=resume)
    path = _save_state(Path(output_dir) / "encoder.pt", method.encoder.state_dict())
    atomic_write_json(Path(output_dir) / "encoder.json", {
        **ENCODER_DEFAULTS, **cfg, "loc_weight": loc_weight, "dispersive_weight": dispersive_weight,
        "max_steps": max_steps, "batch_size": batch_size,
        "stride": stride, "n_entries": len(entries), "excluded_recordings": exclude,
        "excluded_hc18_test_images": sorted(hc18_test),
    })
    return {**history, "encoder": os.fspath(path)}


def hc18_test_images(split_file: str | os.PathLike[str] | None = None) -> set[str]:
    """Stems (``005_HC``) of the HC18 test images in the bundle's fixed split (``docs/splits/hc18_split.json``)."""
    default = Path(__file__).resolve().parents[1] / "docs" / "splits" / "hc18_split.json"
    path = Path(split_file) if split_file else default
    if not path.is_file():
        return set()
    return {Path(name).stem for name in json.loads(path.read_text())["test"]}


def _is_hc18_image(image: Any, names: set[str]) -> bool:
    """Whether a datalist ``image`` is one of the HC18 images ``names`` (stems, in ``hc18_fetal_head_subset/``)."""
    if not names or not isinstance(image, str | os.PathLike):
        return False
    p = Path(image)
    return p.stem in names and p.parent.parent.name == "hc18_fetal_head_subset"


# ----------------------------------------------------------------------------------------------- downstream


def _read_grey(path: str | os.PathLike[str]) -> np.ndarray:
    return _luma(load_channel_first(path)[:, :1])[0]


def prepare_frames(
    pairs: Sequence[tuple[Path, Path]], img_size: int = 128, keep_full: bool = False
) -> dict[str, Any]:
    """Crop each frame to its sector, resize to ``img_size`` squared, z-score; masks resized (area, > 0.5).

    Returns ``{"image": [N, 1, S, S], "mask": [N, 1, S, S], "bbox": [...], "shape": [...], "full": [...]}``
    (``full``: the full-size boolean masks when ``keep_full``).
    """
    imgs, masks, boxes, shapes, full = [], [], [], [], []
    for img_path, mask_path in pairs:
        img = _read_grey(img_path)
        mask = _read_grey(mask_path) > 0
        box, _ = sector_bbox(img)
        ci = torch.from_numpy(np.ascontiguousarray(crop_to_bbox(img, box)))[None, None]
        cm = torch.from_numpy(np.ascontiguousarray(crop_to_bbox(mask, box))).float()[None, None]
        imgs.append(zscore(F.interpolate(ci, size=(img_size, img_size), mode="area"))[0])
        masks.append((F.interpolate(cm, size=(img_size, img_size), mode="area") > 0.5).float()[0])
        boxes.append(box)
        shapes.append(img.shape)
        if keep_full:
            full.append(mask)
    return {"image": torch.stack(imgs), "mask": torch.stack(masks), "bbox": boxes, "shape": shapes, "full": full}


@torch.no_grad()
def encode_frames(encoder_state: Mapping[str, torch.Tensor] | None, images: torch.Tensor, seed: int = 0,
                  batch: int = 32, **overrides: Any) -> torch.Tensor:
    """Frozen tokens ``[N, h*w, D]`` of frames ``[N, 1, S, S]`` (random init from ``seed`` when no state)."""
    torch.manual_seed(seed)
    model = build_segmenter(encoder_state, **overrides).eval()
    return torch.cat([model.tokens(images[i : i + batch]) for i in range(0, len(images), batch)])


def effective_rank(tokens: torch.Tensor) -> float:
    """Effective rank of centred token features (:func:`medssl.eval.effective_rank`): about 1 means collapse."""
    from medssl.eval.representation import effective_rank as _effective_rank

    return _effective_rank(tokens)


def _pooled_dice(pred: torch.Tensor | np.ndarray, truth: torch.Tensor | np.ndarray) -> float:
    """Dice of boolean masks pooled over all their frames (1 denominator pixel at least)."""
    return 2 * float((pred & truth).sum()) / max(float(pred.sum() + truth.sum()), 1.0)


def _val_threshold(probs: torch.Tensor, masks: torch.Tensor) -> tuple[float, float]:
    """Best pooled Dice over thresholds 0.05..0.95 on validation frames, and that threshold."""
    best = (-1.0, 0.5)
    y = masks.bool()
    for t in np.arange(0.05, 0.951, 0.05):
        d = _pooled_dice(probs >= t, y)
        if d > best[0]:
            best = (d, round(float(t), 2))
    return best


def _split_frames(by_rec: Mapping[str, dict[str, Any]], chosen: Sequence[str]) -> tuple[list, list]:
    """``(train, val)`` lists of ``(recording, frame index)`` (see the module docstring)."""
    train, val = [], []
    if len(chosen) >= 4:
        for r in chosen[:-1]:
            train += [(r, i) for i in range(len(by_rec[r]["image"]))]
        val = [(chosen[-1], i) for i in range(len(by_rec[chosen[-1]]["image"]))]
        return train, val
    for r in chosen:
        n = len(by_rec[r]["image"])
        for i in range(n):
            (val if n >= 4 and i % 4 == 3 else train).append((r, i))
    return train, val


def finetune_and_test(
    frames: Mapping[str, dict[str, Any]],
    test: Sequence[str],
    chosen: Sequence[str],
    init: str,
    seed: int = 0,
    encoder_state: Mapping[str, torch.Tensor] | None = None,
    features: Mapping[str, dict[str, torch.Tensor]] | None = None,
    max_steps: int = 200,
    batch_size: int = 8,
    lr: float = 1e-3,
    eval_every: int = 50,
    save_model: str | os.PathLike[str] | None = None,
    encoder_cfg: Mapping[str, Any] | None = None,
    val: Sequence[str] | None = None,
    freeze: bool | None = None,
) -> dict[str, Any]:
    """Train one segmenter on the frames of ``chosen`` recordings and test it on ``test`` recordings.

    Args:
        frames: ``{recording: prepare_frames(...)}`` (test recordings with ``keep_full``).
        test: the test recordings.
        chosen: the labelled recordings.
        init: ``pretrained`` / ``vjepa_noloc`` / ``random_frozen`` (frozen encoder, decoder trained on
            ``features``), ``scratch`` (the same ViT trained end to end) or ``unet_supervised``.
        seed: training seed.
        encoder_state: the encoder weights (frozen inits; ``None`` for random).
        features: ``{recording: {"tokens": [N, n, D], "tokens_flip": [N, n, D]}}`` for frozen inits.
        max_steps: optimiser steps (the same for every init).
        batch_size: frames per step.
        lr: AdamW peak learning rate.
        eval_every: validation period (model and threshold choice).
        save_model: write the full segmenter state dict (fp16) and a ``.json`` with the threshold here.
        encoder_cfg: encoder geometry overrides.
        val: fixed validation recordings (HC18: a fixed set of images); then every frame of ``chosen`` is
            trained on. ``None``: validation frames come from ``chosen`` (carotid, see the module docstring).
        freeze: ``False`` trains the encoder end to end from ``encoder_state`` (the ``scratch`` recipe from
            pretrained weights); ``None`` decides by ``init`` as above.

    Returns:
        JSON-ready dict: ``dice`` (mean over test frames), ``dice_per_recording``, ``threshold``, ``val_dice``,
        ``best_step``, ``n_train``, ``n_val``, ``prior``, ``recordings``, ``seconds``.
    """
    t0 = time.perf_counter()
    cfg = {**ENCODER_DEFAULTS, **(encoder_cfg or {})}
    frozen = init in ("pretrained", "vjepa_noloc", "random_frozen") if freeze is None else bool(freeze)
    if val is None:
        train_ids, val_ids = _split_frames(frames, chosen)
    else:
        train_ids = [(r, i) for r in chosen for i in range(len(frames[r]["image"]))]
        val_ids = [(r, i) for r in val for i in range(len(frames[r]["image"]))]

    def gather(ids: Sequence[tuple[str, int]], key: str, src: Mapping[str, Mapping[str, Any]]) -> torch.Tensor:
        return torch.stack([src[r][key][i] for r, i in ids])

    tr_img, tr_msk = gather(train_ids, "image", frames), gather(train_ids, "mask", frames)
    prior = float(tr_msk.mean())
    torch.manual_seed(seed)
    if init == "unet_supervised":
        model: nn.Module = UNetSegmenter(cfg["img_size"])
    else:
        model = build_segmenter(encoder_state if (frozen or freeze is False) else None, **cfg)
    init_output_bias_to_prior(model.output_layer, prior)
    if frozen:
        assert features is not None
        tr_tok, tr_tok_f = gather(train_ids, "tokens", features), gather(train_ids, "tokens_flip", features)
        model.encoder.requires_grad_(False)
        params = list(model.decoder.parameters())
    else:
        params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    warm = max(1, max_steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, max_steps, warm))
    from monai.losses import DiceCELoss

    loss_fn = DiceCELoss(sigmoid=True, batch=True)
    gen = torch.Generator().manual_seed(seed)

    def forward(idx: torch.Tensor, flip: torch.Tensor | None, train: bool) -> torch.Tensor:
        img = (tr_img if train else va_img)[idx]
        if flip is not None:
            img = torch.where(flip[:, None, None, None], img.flip(-1), img)
        if not frozen:
            return model(img)
        tok = (tr_tok if train else va_tok)[idx]
        if flip is not None:
            tok = torch.where(flip[:, None, None], (tr_tok_f if train else va_tok_f)[idx], tok)
        return model.decoder(tok, img)

    va_img = gather(val_ids, "image", frames) if val_ids else None
    va_msk = gather(val_ids, "mask", frames) if val_ids else None
    if frozen and val_ids:
        va_tok, va_tok_f = gather(val_ids, "tokens", features), gather(val_ids, "tokens_flip", features)

    def validate() -> tuple[float, float]:
        model.eval()
        with torch.no_grad():
            probs = torch.cat([torch.sigmoid(forward(torch.arange(i, min(i + 32, len(val_ids))), None, False))
                               for i in range(0, len(val_ids), 32)])
        model.train()
        if frozen:
            model.encoder.eval()
        return _val_threshold(probs, va_msk)

    best: dict[str, Any] = {"dice": -1.0, "threshold": 0.5, "step": max_steps, "state": None}
    model.train()
    if frozen:
        model.encoder.eval()
    n = len(train_ids)
    for step in range(max_steps):
        idx = torch.randint(0, n, (batch_size,), generator=gen)
        flip = torch.rand(batch_size, generator=gen) < 0.5
        target = torch.where(flip[:, None, None, None], tr_msk[idx].flip(-1), tr_msk[idx])
        loss = loss_fn(forward(idx, flip, True), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if val_ids and ((step + 1) % eval_every == 0 or step + 1 == max_steps):
            d, t = validate()
            if d > best["dice"]:
                best = {"dice": d, "threshold": t, "step": step + 1,
                        "state": copy.deepcopy({k: v.detach() for k, v in model.state_dict().items()})}
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    largest = {"largest_component": False, "val_dice_largest_component": None}
    if val_ids:  # one region per frame? chosen on the validation frames, like the threshold
        from medssl.infer.segmentation import keep_largest_component

        with torch.no_grad():
            probs = torch.cat([torch.sigmoid(forward(torch.arange(i, min(i + 32, len(val_ids))), None, False))
                               for i in range(0, len(val_ids), 32)])
        raw = (probs[:, 0] >= best["threshold"]).numpy()
        y = va_msk[:, 0].bool().numpy()
        d_kept = _pooled_dice(keep_largest_component(raw), y)
        largest = {"largest_component": d_kept > _pooled_dice(raw, y), "val_dice_largest_component": round(d_kept, 4)}

    dices: list[float] = []
    per_rec: dict[str, float] = {}
    with torch.no_grad():
        for r in test:
            fr = frames[r]
            d_rec = []
            for i in range(len(fr["image"])):
                if frozen:
                    logit = model.decoder(features[r]["tokens"][i : i + 1], fr["image"][i : i + 1])
                else:
                    logit = model(fr["image"][i : i + 1])
                y0, y1, x0, x1 = fr["bbox"][i]
                prob = torch.sigmoid(F.interpolate(logit, size=(y1 - y0, x1 - x0), mode="bilinear",
                                                   align_corners=False))[0, 0].numpy()
                full = paste_bbox(prob, fr["bbox"][i], fr["shape"][i])
                d_rec.append(dice(full >= best["threshold"], fr["full"][i]))
            dices += d_rec
            per_rec[r[-7:]] = float(np.mean(d_rec))
    result = {
        "dice": float(np.mean(dices)), "dice_per_recording": per_rec, "threshold": float(best["threshold"]),
        "val_dice": None if best["dice"] < 0 else round(float(best["dice"]), 4), "best_step": int(best["step"]),
        "max_steps": int(max_steps), "n_recordings": len(chosen), "recordings": [r[-7:] for r in chosen],
        "n_train": len(train_ids), "n_val": len(val_ids), "n_test": len(dices), "prior": round(prior, 5),
        "seconds": round(time.perf_counter() - t0, 1), **largest,
        "split": {"labelled_recordings": list(chosen), "train_frames": [f"{r}:{i}" for r, i in train_ids],
                  "val_frames": [f"{r}:{i}" for r, i in val_ids], "test_recordings": list(test), "seed": seed},
    }
    if save_model is not None:
        _save_state(save_model, model.state_dict(), half=True)
        atomic_write_json(Path(save_model).with_suffix(".json"), {
            "threshold": result["threshold"], "largest_component": result["largest_component"],
            "val_dice": result["val_dice"], "val_dice_largest_component": result["val_dice_largest_component"],
            "init": init, "encoder": dict(cfg), "n_recordings": len(chosen),
            "dice_test": result["dice"], "test_recordings": [r[-7:] for r in test],
        })
    return result


def resolve_encoder(init: str, bundle_root: str | os.PathLike[str], runs_root: str | os.PathLike[str]) -> Path | None:
    """The encoder weights an ``init`` starts from.

    ``pretrained``: the user's ``runs_root/pretrain`` run when there is one, else the shipped
    ``models/pretrained_encoder.pt``; ``vjepa_noloc``: ``runs_root/pretrain_noloc``; ``random_frozen``,
    ``scratch`` and ``unet_supervised``: none.
    """
    if init in ("random_frozen", "scratch", "unet_supervised"):
        return None
    if init == "pretrained":
        own = Path(runs_root) / "pretrain" / "encoder.pt"
        path = own if own.is_file() else Path(bundle_root) / "models" / "pretrained_encoder.pt"
    elif init == "vjepa_noloc":
        path = Path(runs_root) / "pretrain_noloc" / "encoder.pt"
    else:
        raise ValueError(f"unknown init {init!r}.")
    if not path.is_file():
        raise InputError(path, f"encoder weights for init={init!r} not found (run the pretraining first)")
    return path


def load_task(data: str | os.PathLike[str], img_size: int = 128) -> tuple[dict[str, dict[str, Any]], list, list]:
    """All carotid recordings prepared (test ones with full masks), the pool and the test names."""
    recs = carotid_recordings(data)
    pool, test = carotid_split(list(recs))
    frames = {r: prepare_frames(recs[r], img_size, keep_full=r in test) for r in recs}
    return frames, pool, test


def add_features(frames: Mapping[str, dict[str, Any]], state: Mapping[str, torch.Tensor] | None,
                 seed: int = 0, **cfg: Any) -> dict[str, dict[str, torch.Tensor]]:
    """Frozen tokens of every frame and of its horizontal flip, per recording."""
    return {r: {"tokens": encode_frames(state, f["image"], seed, **cfg),
                "tokens_flip": encode_frames(state, f["image"].flip(-1), seed, **cfg)} for r, f in frames.items()}


def is_full_dataset(data: str | os.PathLike[str]) -> bool:
    """Whether ``data`` holds the 12 real carotid recordings (only then may rows go to docs/results.json)."""
    if os.fspath(data) == "samples":
        return False
    try:
        return len(carotid_recordings(data)) == 12
    except (InputError, OSError):
        return False


def run_finetune(
    bundle_root: str | os.PathLike[str],
    data: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    label_fraction: float,
    seed: int = 0,
    init: str = "pretrained",
    runs_root: str | os.PathLike[str] = "runs/ultrasound_vjepa_segmentation",
    max_steps: int = 200,
    device: str = "auto",
    resume: bool = False,
    publish: bool = False,
    batch_size: int = 8,
    lr: float = 1e-3,
    eval_every: int = 50,
    img_size: int = 128,
) -> dict[str, Any]:
    """``medssl finetune``: one carotid fine-tune at a label fraction of the training recordings, then test.

    ``label_fraction`` of the pool's recordings (at least 1) are labelled. Rows go to the run folder's
    ``results.json``, and to ``<bundle>/docs/results.json`` only with ``publish`` on the full real data.
    """
    del resume, device  # a fine-tune is short and runs on the CPU threads it is given
    recordings = carotid_recordings(data)
    pool, test = carotid_split(list(recordings))
    frames = {r: prepare_frames(recordings[r], img_size, keep_full=r in test) for r in recordings}
    n = max(1, min(len(pool), int(math.floor(label_fraction * len(pool) + 0.5))))
    chosen = choose_recordings(pool, n, seed)
    enc_path = resolve_encoder(init, bundle_root, runs_root)
    state = load_state(enc_path) if enc_path is not None else None
    cfg = {"img_size": img_size}
    if enc_path is not None and enc_path.with_suffix(".json").is_file():  # the geometry it was pretrained with
        saved = json.loads(enc_path.with_suffix(".json").read_text())
        cfg = {k: saved[k] for k in ENCODER_DEFAULTS if k in saved}
        if int(cfg.get("img_size", img_size)) != img_size:
            frames = {r: prepare_frames(recordings[r], int(cfg["img_size"]), keep_full=r in test) for r in frames}
    feats = None
    if init in ("pretrained", "vjepa_noloc", "random_frozen"):
        feats = add_features({r: frames[r] for r in [*chosen, *test]}, state, **cfg)
    run_dir = Path(output_dir) / f"{init}_n{n}_s{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    result = finetune_and_test(frames, test, chosen, init, seed, state, feats, max_steps=max_steps,
                               batch_size=batch_size, lr=lr, eval_every=eval_every, save_model=run_dir / "model.pt",
                               encoder_cfg=cfg)
    atomic_write_json(run_dir / "result.json", result)
    command = (f"medssl finetune ultrasound_vjepa_segmentation --label-fraction {label_fraction} --seed {seed} "
               f"--init {init}")
    full = publish and is_full_dataset(data)
    results_json = Path(bundle_root) / "docs" / "results.json" if full else run_dir / "results.json"
    split_file = (save_split(result, Path(bundle_root) / "docs" / "splits", "docs/splits/") if full
                  else save_split(result, run_dir))
    append_result(results_json, result_row(result, init, seed, len(pool), command, split_file))
    return {**result, "init": init, "seed": seed, "model": os.fspath(run_dir / "model.pt"),
            "results_json": os.fspath(results_json)}


def save_split(result: Mapping[str, Any], folder: str | os.PathLike[str], prefix: str = "") -> str:
    """Write a fine-tune's split to ``folder/carotid_n<N>_s<seed>.json``; returns ``prefix`` + the file name.

    The split depends only on ``(N, seed)``, so every initialisation of one ``(N, seed)`` shares the file.
    """
    split = result["split"]
    name = f"carotid_n{result['n_recordings']}_s{split['seed']}.json"
    atomic_write_json(Path(folder) / name, split)
    return f"{prefix}{name}" if prefix else os.fspath(Path(folder) / name)


def result_row(result: Mapping[str, Any], init: str, seed: int, pool_size: int, command: str,
               split_file: str) -> dict[str, Any]:
    """One results.json row (test Dice) of a fine-tune."""
    extra = {k: result[k] for k in ("n_recordings", "recordings", "n_train", "n_val", "n_test", "threshold",
                                    "best_step", "max_steps", "dice_per_recording")}
    return {"task": TASK, "label_fraction": round(result["n_recordings"] / pool_size, 4), "seed": int(seed),
            "init": init, "metric": "dice", "value": float(result["dice"]), "command": command,
            "split_file": split_file, **extra}


# ----------------------------------------------------------------------------------------------- inference


def evaluate_model(
    model: str | os.PathLike[str], data: str | os.PathLike[str], threshold: float | None = None
) -> dict[str, Any]:
    """Test Dice of a saved segmenter through the inference path (what ``medssl infer`` writes), per frame.

    Every frame of the test recordings is read from its PNG, sector-cropped, segmented and pasted back exactly
    as :class:`USSegmentationInference` does; the threshold (and ``largest_component``) are the ones in the
    model's JSON unless given. ``dice_test_all_regions`` is the Dice without the largest-region step.
    """
    from medssl.infer.segmentation import keep_largest_component, load_frames

    info = json.loads(Path(model).with_suffix(".json").read_text())
    net = build_segmenter(**info.get("encoder", {}))
    net.load_state_dict(load_state(model))
    t = float(threshold if threshold is not None else info["threshold"])
    largest = bool(info.get("largest_component", False))
    recs = carotid_recordings(data)
    _, test = carotid_split(list(recs))
    per_rec: dict[str, float] = {}
    dices: list[float] = []
    raw_dices: list[float] = []
    for r in test:
        d_rec = []
        for img, mask in recs[r]:
            probs = USSegmentationInference.probabilities(_Runner(net), load_frames(img), torch.device("cpu"))
            truth = _read_grey(mask) > 0
            raw = probs[0] >= t
            raw_dices.append(dice(raw, truth))
            d_rec.append(dice(keep_largest_component(raw), truth) if largest else raw_dices[-1])
        per_rec[r[-7:]] = round(float(np.mean(d_rec)), 4)
        dices += d_rec
    return {"model": os.fspath(model), "threshold": t, "largest_component": largest,
            "dice_test": round(float(np.mean(dices)), 4), "dice_test_all_regions": round(float(np.mean(raw_dices)), 4),
            "dice_per_recording": per_rec, "n_test_frames": len(dices)}


class _Runner:
    """The one attribute :meth:`USSegmentationInference.probabilities` uses."""

    def __init__(self, network: nn.Module) -> None:
        self.network = network


class USSegmentationInference(SegmentationInference):
    """:class:`medssl.infer.SegmentationInference` with the sector crop.

    Per input, the sector box comes from the DICOM ``SequenceOfUltrasoundRegions`` when present, else it is
    estimated over the input's frames (temporal change for a cine, intensity for a still). Each frame is cropped,
    z-scored, segmented at the network's size and the probabilities are resized to the crop and pasted back
    (0 outside the sector). Outputs are written as for every segmentation bundle.
    """

    def probabilities(self, frames: Frames, device: torch.device) -> np.ndarray:
        """Lumen probabilities ``[T, H, W]`` of ``frames``."""
        dicom = frames.path if frames.kind == "dicom" and frames.path.is_file() else None
        sample = frames.frames[:: max(1, len(frames.frames) // 32)]
        bbox, _ = sector_bbox(sample, dicom=dicom)
        y0, y1, x0, x1 = bbox
        net = self.network.eval()
        out = []
        with torch.no_grad():
            for i in range(0, len(frames.frames), 16):
                crop = torch.from_numpy(np.ascontiguousarray(frames.frames[i : i + 16, y0:y1, x0:x1]))
                x = zscore(crop)[:, None].to(device)
                out.append(torch.sigmoid(net(x).float())[:, 0].cpu().numpy())
        return paste_bbox(np.concatenate(out), bbox, frames.frames.shape)
