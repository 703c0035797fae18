"""Generic 2-D / cine segmentation inference: read with :mod:`medssl.io`, predict, write seg, SEG, NIfTI, overlay.

Every input becomes a stack of grey frames ``[T, H, W]`` (a still image is one frame, a multi-frame DICOM
such as an X-ray angiography run gives every frame, a NIfTI volume gives its z slices). Each frame is
z-scored on its own (vendor-independent intensities) and run through the network with MONAI's
``SlidingWindowInferer``: an image larger than the training size is covered by overlapping windows of that
size, a smaller one is padded to it. The probabilities are thresholded and written next to each other:

- PNG/JPEG/TIFF input: ``<stem>_seg.png`` (0/255, input size);
- DICOM input: ``<stem>_seg.dcm`` (DICOM SEG, one frame per source frame) and ``<stem>_seg.nii.gz``;
- NIfTI input: ``<stem>_seg.nii.gz`` with the source affine and shape;
- every input: ``<stem>_overlay.png`` (the frame with the largest segmented area, mask in red).

DICOM SEG: sources with a Frame of Reference go through :func:`medssl.io.write_dicom_seg`. X-ray angiography
and ultrasound multi-frame images usually have none, and highdicom then refuses more than one frame; for
those :func:`write_seg_without_frame_of_reference` writes one multi-frame SEG whose every frame references its
source frame (``ReferencedFrameNumber`` in the per-frame Derivation Image Sequence) with no plane positions,
which the DICOM standard allows and highdicom reads back.
"""

from __future__ import annotations

import copy
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medssl.errors import InputError, MedsslError

__all__ = [
    "Frames",
    "keep_largest_component",
    "load_frames",
    "zscore",
    "sliding_window_probabilities",
    "overlay",
    "write_seg_without_frame_of_reference",
    "output_stem",
    "SegmentationInference",
]

_IMAGE_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "IMAGE")
_SC_UID = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture: a single-frame stand-in for highdicom
# Type 2 attributes highdicom copies from the source; anonymised files often drop them.
_TYPE2_EMPTY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                "AccessionNumber", "ReferringPhysicianName", "StudyID")


def _read_source(path: str | os.PathLike[str]) -> Any:
    """The source DICOM with missing Type 2 patient/study attributes present but empty (as the standard allows)."""
    import pydicom

    ds = pydicom.dcmread(os.fspath(path))
    for keyword in _TYPE2_EMPTY:
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


@dataclass
class Frames:
    """An input as grey frames plus what the writers need.

    Attributes:
        path: the input file.
        frames: float32 ``[T, H, W]`` in stored units (RGB converted to luminance).
        kind: ``"image"``, ``"dicom"`` or ``"nifti"``.
        axes: the record's axes (to put the mask back in the input's layout).
        shape: the record's array shape.
        affine: the record's affine (array index order), if any.
        spacing: the record's spacing per axis name.
        record: the loaded record.
    """

    path: Path
    frames: np.ndarray
    kind: str
    axes: tuple[str, ...]
    shape: tuple[int, ...]
    affine: np.ndarray | None
    spacing: dict[str, float] = field(default_factory=dict)
    record: Any = None


def _grey(arr: np.ndarray, axes: tuple[str, ...]) -> tuple[np.ndarray, tuple[str, ...]]:
    if "channel" not in axes:
        return arr.astype(np.float32), axes
    c = axes.index("channel")
    a = np.moveaxis(arr, c, -1).astype(np.float32)
    if a.shape[-1] >= 3:
        a = a[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)
    else:
        a = a[..., 0]
    return a, tuple(x for x in axes if x != "channel")


def load_frames(path: str | os.PathLike[str]) -> Frames:
    """Read an image, a (multi-frame) DICOM or a NIfTI as grey frames ``[T, H, W]``.

    Raises:
        InputError: unreadable file, or a record that is not an image (signal, k-space, >3-D).
    """
    from medssl.io import load

    p = Path(path)
    rec = load(p)
    fmt = rec.meta.source.format.upper()
    kind = "dicom" if fmt.startswith("DICOM") else "nifti" if fmt.startswith("NIFTI") else "image"
    axes = tuple(rec.axes)
    arr, gaxes = _grey(np.asarray(rec.array), axes)
    if kind == "nifti":
        if gaxes[:2] != ("x", "y") or arr.ndim > 3:
            raise InputError(p, f"expected a 2-D or 3-D NIfTI image (x, y[, z]), got axes {axes}")
        frames = arr[..., None] if arr.ndim == 2 else arr
        frames = np.transpose(frames, (2, 1, 0))  # (z, y, x)
    else:
        if gaxes == ("y", "x"):
            frames = arr[None]
        elif gaxes in (("frame", "y", "x"), ("z", "y", "x")):
            frames = arr
        else:
            raise InputError(p, f"not an image or cine (axes {axes}); segmentation needs (frame,) y, x")
    if frames.shape[1] < 8 or frames.shape[2] < 8:
        raise InputError(p, f"image too small to segment ({frames.shape[1]}x{frames.shape[2]} pixels)")
    if not np.isfinite(frames).all():
        raise InputError(p, "image holds NaN or infinite values")
    return Frames(p, np.ascontiguousarray(frames, np.float32), kind, axes, tuple(rec.array.shape),
                  rec.meta.affine, dict(rec.meta.spacing), rec)


def zscore(x: torch.Tensor | np.ndarray, eps: float = 1e-6) -> torch.Tensor:
    """Per-image zero mean / unit variance over the last two axes (the "normalised image" of CM-UNet)."""
    t = torch.as_tensor(x, dtype=torch.float32)
    mean = t.mean(dim=(-2, -1), keepdim=True)
    std = t.std(dim=(-2, -1), keepdim=True, unbiased=False)
    return (t - mean) / (std + eps)


def resample(
    x: torch.Tensor, scale: float | None = None, size: Sequence[int] | None = None, mask: bool = False
) -> torch.Tensor:
    """Bilinear resampling of ``[B, C, H, W]`` by ``scale`` or to ``size`` (antialiased when shrinking).

    With ``mask`` the input is a binary mask: it is resampled as a fraction and thresholded at 0.5.
    """
    if (scale is None) == (size is None):
        raise ValueError("give exactly one of scale and size.")
    src = x.float()
    if size is None:
        assert scale is not None
        size = tuple(max(1, int(round(n * float(scale)))) for n in src.shape[-2:])
    size = tuple(int(n) for n in size)
    shrink = any(n < m for n, m in zip(size, src.shape[-2:], strict=True))
    out = torch.nn.functional.interpolate(src, size=size, mode="bilinear", align_corners=False, antialias=shrink)
    return out >= 0.5 if mask else out


@torch.no_grad()
def sliding_window_probabilities(
    network: nn.Module,
    frames: np.ndarray | torch.Tensor,
    roi_size: Sequence[int] = (256, 256),
    device: str | torch.device = "cpu",
    overlap: float = 0.25,
    sw_batch_size: int = 4,
    normalise: Callable[[torch.Tensor], torch.Tensor] | None = zscore,
    flip_tta: bool = False,
    scale: float = 1.0,
) -> np.ndarray:
    """Vessel probabilities ``[T, H, W]`` for frames ``[T, H, W]`` (sigmoid of a one-channel network).

    Windows of ``roi_size`` (the training crop) slide over larger images with ``overlap`` and Gaussian
    blending; smaller images are padded to ``roi_size`` (MONAI ``SlidingWindowInferer``). Frames run one at a
    time, so a long cine never sits on the device at once.

    With ``flip_tta`` the probabilities are the mean over the four flips of the frame (none, left-right,
    up-down, both), each flipped back: test-time augmentation at four times the cost. The result is then
    exactly equivariant to those flips.

    With ``scale`` other than 1 each frame is resampled by that factor (bilinear) before the network sees it,
    for a model trained at that magnification, and the probabilities are resampled back (bilinear,
    antialiased), so the output always has the frame's own size.
    """
    from monai.inferers import SlidingWindowInferer

    roi = tuple(int(r) for r in roi_size)
    if len(roi) != 2 or min(roi) < 1:
        raise ValueError(f"roi_size must be two positive ints, got {roi_size}.")
    if not 0.0 < float(scale) <= 8.0:
        raise ValueError(f"scale must lie in (0, 8], got {scale}.")
    dev = torch.device(device)
    inferer = SlidingWindowInferer(roi, sw_batch_size=sw_batch_size, overlap=overlap, mode="gaussian",
                                   padding_mode="reflect")
    was_training = network.training
    network.eval()
    out = []
    try:
        for frame in torch.as_tensor(frames, dtype=torch.float32):
            size = frame.shape[-2:]
            x = frame[None, None].to(dev)
            if scale != 1.0:
                x = resample(x, scale=scale)
            x = normalise(x) if normalise is not None else x
            flips: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1)) if flip_tta else ((),)
            prob = torch.zeros(x.shape[-2:], dtype=torch.float32, device=dev)
            for dims in flips:
                logits = inferer(x.flip(dims) if dims else x, network)
                p = torch.sigmoid(logits.float())[0, 0]
                prob += p.flip(dims) if dims else p
            prob = prob / len(flips)
            if scale != 1.0:
                prob = resample(prob[None, None], size=size)[0, 0]
            out.append(prob.cpu())
    finally:
        network.train(was_training)
    return torch.stack(out).numpy()


def keep_largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep only the largest connected foreground region of each frame of a ``[T, H, W]`` (or ``[H, W]``) mask.

    MONAI's ``KeepLargestConnectedComponent`` (full 2-D connectivity) frame by frame: for single-object tasks
    (a carotid lumen per transverse frame), where a second region is always a false positive. Empty frames stay
    empty.
    """
    from monai.transforms import KeepLargestConnectedComponent

    keep = KeepLargestConnectedComponent(applied_labels=[1], is_onehot=False, connectivity=None)
    frames = np.asarray(mask).astype(bool)
    single = frames.ndim == 2
    frames = frames[None] if single else frames
    out = np.stack([np.asarray(keep(torch.from_numpy(f[None].astype(np.uint8))))[0] > 0 if f.any() else f
                    for f in frames])
    return out[0] if single else out


def overlay(
    image: np.ndarray, mask: np.ndarray, colour: Sequence[int] = (255, 40, 40), alpha: float = 0.5
) -> np.ndarray:
    """RGB uint8 picture of a grey frame (min-max scaled) with the mask blended in ``colour``."""
    img = np.asarray(image, np.float64)
    lo, hi = float(img.min()), float(img.max())
    grey = np.zeros_like(img) if hi <= lo else (img - lo) / (hi - lo)
    rgb = np.repeat((grey * 255.0)[..., None], 3, axis=-1)
    m = np.asarray(mask, bool)
    rgb[m] = (1 - alpha) * rgb[m] + alpha * np.asarray(colour, np.float64)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def output_stem(path: str | os.PathLike[str]) -> str:
    """File name without ``.nii.gz`` / ``.dcm`` / image suffixes."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii", ".dcm", ".dicom"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem if Path(name).suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp") else name


def write_seg_without_frame_of_reference(
    path: str | os.PathLike[str], mask: np.ndarray, source: str | os.PathLike[str], *, segment_label: str = "mask",
    algorithm_name: str = "medssl",
) -> Path:
    """DICOM SEG for a (multi-frame) source without a Frame of Reference, one SEG frame per source frame.

    highdicom builds a valid one-frame SEG from a single-frame stand-in of the source; its per-frame
    functional group is then repeated for every frame with ``ReferencedFrameNumber`` = the source frame and
    the references are pointed back at the real SOP class. No plane positions are written (there is no
    patient geometry to put them in).

    Args:
        path: output ``.dcm``.
        mask: ``(frames, rows, cols)`` (or ``(rows, cols)``), nonzero = segment.
        source: the source DICOM file.
        segment_label: the segment's label.
        algorithm_name: recorded as the algorithm.

    Returns:
        The written path.
    """
    import pydicom

    from medssl.io import write_dicom_seg
    from medssl.io.writers import atomic_path

    ds = _read_source(source)
    m = np.asarray(mask) > 0
    m = m[None] if m.ndim == 2 else m
    n = int(ds.get("NumberOfFrames") or 1)
    if m.shape != (n, int(ds.Rows), int(ds.Columns)):
        raise ValueError(f"mask {m.shape} does not match the source ({n}, {ds.Rows}, {ds.Columns}).")
    true_class = ds.SOPClassUID
    stand_in = copy.deepcopy(ds)
    for keyword in ("NumberOfFrames", "FrameIncrementPointer", "PerFrameFunctionalGroupsSequence",
                    "SharedFunctionalGroupsSequence"):
        if keyword in stand_in:
            delattr(stand_in, keyword)
    stand_in.SOPClassUID = _SC_UID
    first = np.asarray(ds.pixel_array)[0] if n > 1 else np.asarray(ds.pixel_array)
    stand_in.PixelData = np.ascontiguousarray(first).tobytes()
    stand_in.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    if stand_in.get("PhotometricInterpretation", "").startswith("YBR"):
        stand_in.PhotometricInterpretation = "RGB"
    with atomic_path(path) as tmp:
        write_dicom_seg(tmp, m[:1], [stand_in], segment_label=segment_label, algorithm_name=algorithm_name)
        seg = pydicom.dcmread(tmp)
        template = seg.PerFrameFunctionalGroupsSequence[0]
        frames = []
        for i in range(n):
            item = copy.deepcopy(template)
            item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber = i + 1
            frames.append(item)
        seg.PerFrameFunctionalGroupsSequence = frames
        seg.NumberOfFrames = n
        seg.PixelData = np.packbits(m.reshape(-1), bitorder="little").tobytes()
        for elem in seg.iterall():
            if elem.keyword == "ReferencedSOPClassUID" and elem.value == _SC_UID:
                elem.value = true_class
        seg.save_as(tmp, enforce_file_format=True)
    return Path(path)


def _nifti_affine_xyz(src: Frames) -> np.ndarray:
    """Affine for a mask stored as (x, y, frame) from a DICOM source (columns permuted from (.., y, x))."""
    aff = np.eye(4)
    if src.affine is not None and np.asarray(src.affine).shape == (4, 4):
        a = np.asarray(src.affine, np.float64)
        sp_axes = [ax for ax in src.axes if ax in ("z", "y", "x")]
        cols = {ax: a[:, i] for i, ax in enumerate(sp_axes)}
        if "x" in cols and "y" in cols:
            aff[:, 0], aff[:, 1] = cols["x"], cols["y"]
            if "z" in cols:
                aff[:, 2] = cols["z"]
            aff[:, 3] = a[:, 3]
            return aff
    aff[0, 0] = src.spacing.get("x", 1.0)
    aff[1, 1] = src.spacing.get("y", 1.0)
    return aff


class SegmentationInference:
    """Run a binary segmentation network over files and write the bundle contract's outputs.

    Args:
        network: a one-logit segmentation network (``[B, 1, H, W] -> [B, 1, H, W]``).
        inputs: files to segment (one path or a list).
        output_dir: where the outputs go.
        checkpoint: a state dict file for ``network`` (``torch.load(weights_only=True)``); ``None`` keeps the
            network's weights.
        threshold: probability threshold; ``None`` reads ``threshold`` from ``model_info`` (else 0.5).
        model_info: optional JSON file written with the model (holds the validation-chosen threshold).
        roi_size: the training crop size (sliding-window size).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``.
        overlap: sliding-window overlap.
        sw_batch_size: windows per forward pass.
        segment_label: label of the segment in the DICOM SEG.
        flip_tta: average the probabilities over the four flips; ``None`` reads ``flip_tta`` from
            ``model_info`` (else off).
        largest_component: keep only the largest region of each frame (:func:`keep_largest_component`);
            ``None`` reads ``largest_component`` from ``model_info`` (else off).
        scale: magnification the model was trained at (frames are resampled by it, the outputs keep the
            input's size); ``None`` reads ``scale`` from ``model_info`` (else 1).
        report: called with one line per bad input (default: print to stderr).

    Examples::

        infer = SegmentationInference(CMUNet(), ["angio.dcm"], "out", checkpoint="models/model.pt")
        summary = infer.run()   # {"outputs": {...}, "failed": [...], "threshold": 0.47}
    """

    def __init__(
        self,
        network: nn.Module,
        inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        output_dir: str | os.PathLike[str],
        checkpoint: str | os.PathLike[str] | None = None,
        threshold: float | None = None,
        model_info: str | os.PathLike[str] | None = None,
        roi_size: Sequence[int] = (256, 256),
        device: str | torch.device = "auto",
        overlap: float = 0.25,
        sw_batch_size: int = 4,
        segment_label: str = "vessel",
        report: Callable[[str], None] | None = None,
        flip_tta: bool | None = None,
        largest_component: bool | None = None,
        scale: float | None = None,
    ) -> None:
        self.network = network
        self.inputs = [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs)
        if not self.inputs:
            raise ValueError("no inputs to segment.")
        self.output_dir = Path(output_dir)
        self.checkpoint = checkpoint
        self.model_info = model_info
        self.threshold = threshold
        if threshold is not None and not 0.0 < float(threshold) < 1.0:
            raise ValueError(f"threshold must lie in (0, 1), got {threshold}.")
        self.roi_size = tuple(int(r) for r in roi_size)
        self.device = device
        self.overlap = overlap
        self.sw_batch_size = sw_batch_size
        self.segment_label = segment_label
        self.flip_tta = flip_tta
        self.largest_component = largest_component
        self.scale = scale
        self.report = report or (lambda line: print(" ".join(line.split()), file=sys.stderr, flush=True))

    def _model_info(self) -> dict[str, Any]:
        if self.model_info is not None and Path(self.model_info).is_file():
            import json

            info = json.loads(Path(self.model_info).read_text())
            return info if isinstance(info, dict) else {}
        return {}

    def resolved_threshold(self) -> float:
        """The threshold in use: the argument, else the model's recorded one, else 0.5."""
        if self.threshold is not None:
            return float(self.threshold)
        value = self._model_info().get("threshold")
        if isinstance(value, int | float) and 0 < value < 1:
            return float(value)
        return 0.5

    def resolved_flip_tta(self) -> bool:
        """Flip test-time augmentation: the argument, else the model's recorded ``flip_tta``, else off.

        A model selected and thresholded with flip averaging should be run with it: its threshold belongs
        to those probabilities.
        """
        if self.flip_tta is not None:
            return bool(self.flip_tta)
        return bool(self._model_info().get("flip_tta", False))

    def resolved_largest_component(self) -> bool:
        """Largest-region post-processing: the argument, else the model's recorded ``largest_component``, else off."""
        if self.largest_component is not None:
            return bool(self.largest_component)
        return bool(self._model_info().get("largest_component", False))

    def resolved_scale(self) -> float:
        """Input magnification: the argument, else the model's recorded ``scale``, else 1."""
        if self.scale is not None:
            return float(self.scale)
        value = self._model_info().get("scale", 1.0)
        return float(value) if isinstance(value, int | float) and value > 0 else 1.0

    def load_weights(self) -> None:
        """Load ``checkpoint`` into the network (a one-line :class:`InputError` when it does not fit)."""
        if self.checkpoint is None:
            return
        p = Path(self.checkpoint)
        if not p.is_file():
            raise InputError(p, "model weights not found (train the bundle or fetch its models/ folder)")
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
            self.network.load_state_dict(state)
        except Exception as exc:  # noqa: BLE001 - corrupt file or mismatched network: one line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(p, f"cannot load model weights: {first[:200]}") from None

    def probabilities(self, frames: Frames, device: torch.device) -> np.ndarray:
        """Probabilities ``[T, H, W]`` of one input (sliding window); subclasses may pre-process here."""
        return sliding_window_probabilities(
            self.network, frames.frames, self.roi_size, device, self.overlap, self.sw_batch_size,
            flip_tta=self.resolved_flip_tta(), scale=self.resolved_scale(),
        )

    def segment(self, frames: Frames, threshold: float, device: torch.device) -> dict[str, Path]:
        """Predict one input and write its outputs; returns ``{kind: path}``."""
        from medssl.io import write_dicom_seg, write_nifti, write_png

        probs = self.probabilities(frames, device)
        mask = probs >= threshold  # [T, H, W]
        if self.resolved_largest_component():
            mask = keep_largest_component(mask)
        stem = output_stem(frames.path)
        out: dict[str, Path] = {}
        if frames.kind == "image":
            out["seg_png"] = write_png(self.output_dir / f"{stem}_seg.png", mask[0].astype(np.uint8) * 255)
        elif frames.kind == "nifti":
            m = np.transpose(mask, (2, 1, 0)).astype(np.uint8).reshape(frames.shape[: mask.ndim])
            out["seg_nifti"] = write_nifti(self.output_dir / f"{stem}_seg.nii.gz", m, frames.affine)
        else:
            out["seg_nifti"] = write_nifti(
                self.output_dir / f"{stem}_seg.nii.gz",
                np.transpose(mask, (2, 1, 0)).astype(np.uint8),
                _nifti_affine_xyz(frames),
            )
            seg_path = self.output_dir / f"{stem}_seg.dcm"
            if frames.path.is_file():  # a series folder gets the NIfTI only
                import pydicom

                header = pydicom.dcmread(frames.path, stop_before_pixels=True)
                if "FrameOfReferenceUID" in header:
                    out["seg_dicom"] = write_dicom_seg(
                        seg_path, mask, _read_source(frames.path), segment_label=self.segment_label
                    )
                else:
                    out["seg_dicom"] = write_seg_without_frame_of_reference(
                        seg_path, mask, frames.path, segment_label=self.segment_label
                    )
        best = int(np.argmax(mask.reshape(mask.shape[0], -1).sum(1)))
        out["overlay"] = write_png(self.output_dir / f"{stem}_overlay.png", overlay(frames.frames[best], mask[best]))
        return out

    def run(self) -> dict[str, Any]:
        """Segment every input; bad inputs are reported (one line each) and skipped.

        Returns:
            ``{"outputs": {input: {kind: path}}, "failed": [line, ...], "threshold": t, "flip_tta": bool,
            "largest_component": bool}``.
        """
        from medssl.ssl.trainer import resolve_device

        device = resolve_device(self.device)
        self.load_weights()
        self.network.to(device)
        threshold = self.resolved_threshold()
        outputs: dict[str, dict[str, Path]] = {}
        failed: list[str] = []
        for path in self.inputs:
            try:
                frames = load_frames(path)
                with warnings.catch_warnings():  # highdicom's remarks on source attributes are not errors
                    warnings.simplefilter("ignore", UserWarning)
                    outputs[os.fspath(path)] = self.segment(frames, threshold, device)
            except MedsslError as exc:
                failed.append(str(exc))
                self.report(str(exc))
            except (ValueError, OSError) as exc:
                line = str(InputError(path, f"{type(exc).__name__}: {str(exc).strip()[:200]}"))
                failed.append(line)
                self.report(line)
        return {"outputs": outputs, "failed": failed, "threshold": threshold, "flip_tta": self.resolved_flip_tta(),
                "largest_component": self.resolved_largest_component()}
