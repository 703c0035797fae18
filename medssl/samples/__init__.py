"""Paths to the real sample data shipped inside the package (provenance and licences: SAMPLES.md).

The samples let ``medssl demo``, the notebooks and the core tests run on a fresh machine without
``../shared/data``. Each helper returns :class:`pathlib.Path` objects; nothing is loaded here.

Examples::

    >>> from medssl import samples
    >>> samples.echo_cine().name
    'echo_cine_40f.dcm'
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "root",
    "echo_cine",
    "hc18_pairs",
    "carotid_recordings",
    "xca_pairs",
    "cinc_records",
    "cinc_labels",
    "ecg_dicom",
    "mr_small",
    "twix_gre",
    "ct_small",
    "nifti_anatomical",
    "all_inputs",
]

_ROOT = Path(__file__).resolve().parent


def root() -> Path:
    """The folder that holds the samples and SAMPLES.md."""
    return _ROOT


def echo_cine() -> Path:
    """Apical 4-chamber echo cine: 40 frames of 480×640 YBR_FULL_422 JPEG baseline, 33.3 ms per frame."""
    return _ROOT / "ultrasound" / "echo_cine_40f.dcm"


def _pairs(images: Path, masks: Path, mask_name: str) -> list[tuple[Path, Path]]:
    out = []
    for image in sorted(images.glob("*.png")):
        out.append((image, masks / mask_name.format(stem=image.stem, name=image.name)))
    return out


def hc18_pairs() -> list[tuple[Path, Path]]:
    """Eight HC18 fetal-head B-mode images (800×540) with filled head masks, as (image, mask) pairs."""
    base = _ROOT / "ultrasound" / "hc18"
    return _pairs(base / "images", base / "masks", "{stem}_mask.png")


def carotid_recordings() -> dict[str, list[tuple[Path, Path]]]:
    """Two CCAUI carotid sweeps (749×709 grey frames), each a list of (frame, lumen mask) in slice order."""
    base = _ROOT / "ultrasound" / "carotid"
    out: dict[str, list[tuple[Path, Path]]] = {}
    for rec in sorted(p for p in base.iterdir() if p.is_dir()):
        pairs = _pairs(rec / "images", rec / "masks", "{name}")
        out[rec.name] = sorted(pairs, key=lambda pair: int(pair[0].stem.rsplit("_", 1)[-1]))
    return out


def xca_pairs(split: str = "train") -> list[tuple[Path, Path]]:
    """X-ray coronary angiograms (300×300, 8-bit) with expert vessel masks; ``split`` is train or test."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    base = _ROOT / "xca" / split
    pairs = _pairs(base / "images", base / "masks", "{stem}_gt.png")
    return sorted(pairs, key=lambda pair: int(pair[0].stem))


def cinc_records() -> list[Path]:
    """Six 12-lead ECGs (500 Hz, 10 s) from the PhysioNet/CinC Challenge 2021, as WFDB ``.hea`` paths."""
    return sorted((_ROOT / "ecg" / "cinc2021").glob("*.hea"))


def cinc_labels() -> Path:
    """CSV of the six records' SNOMED diagnoses (decoded), one row per record."""
    return _ROOT / "ecg" / "cinc2021" / "labels.csv"


def ecg_dicom() -> Path:
    """12-lead DICOM ECG Waveform Storage, 10 s at 1 kHz (Mortara ELI 250)."""
    return _ROOT / "ecg" / "waveform_ecg.dcm"


def mr_small() -> Path:
    """64×64 real head MR magnitude image (DICOM), for simulating k-space."""
    return _ROOT / "mri" / "MR_small.dcm"


def twix_gre() -> Path:
    """Siemens twix raw data of a GRE phantom scan: 2 coils, 160 lines × 320 samples (2× oversampled)."""
    return _ROOT / "mri" / "gre.dat"


def ct_small() -> Path:
    """128×128 GE CT slice (DICOM), the source for DICOM SEG round trips."""
    return _ROOT / "volumes" / "CT_small.dcm"


def nifti_anatomical() -> Path:
    """NIfTI-1 anatomical volume, 33×41×25 at 2 mm (nibabel test data)."""
    return _ROOT / "volumes" / "anatomical.nii"


def all_inputs() -> list[Path]:
    """One path per loadable sample input (images, not masks), in a stable order."""
    paths = [echo_cine(), *(img for img, _ in hc18_pairs())]
    for pairs in carotid_recordings().values():
        paths.extend(img for img, _ in pairs)
    paths.extend(img for img, _ in xca_pairs("train") + xca_pairs("test"))
    paths.extend(cinc_records())
    paths.extend([ecg_dicom(), mr_small(), twix_gre(), ct_small(), nifti_anatomical()])
    return paths
