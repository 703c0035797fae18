"""Rebuild ``medssl/samples/`` from ``../shared/data`` (run from the repo root).

The samples are a curated subset of real, redistributable data (see medssl/samples/SAMPLES.md) that
lets ``make demo`` and the core tests run without ``../shared``. Re-running this script reproduces
them byte for byte, except the shortened echo cine, which is re-encapsulated (its JPEG frames are
copied unchanged).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
OUT = ROOT / "medssl" / "samples"

ECHO_FRAMES = 40
HC18 = [f"{i:03d}_HC" for i in range(8)]
CAROTID = ["202201121752220024VAS", "202201121806070027VAS"]
XCA_TRAIN = ["1", "2", "3", "4", "5", "6"]
XCA_TEST = ["1", "2"]
CINC = ["HR06000", "HR06001", "E07500", "E07501", "JS20005", "JS20008"]


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


IDENTIFYING = (
    "PatientName", "PatientID", "OtherPatientIDs", "OtherPatientIDsSequence", "PatientBirthDate",
    "PatientAddress", "AdditionalPatientHistory", "InstitutionName", "InstitutionAddress",
    "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName", "AccessionNumber", "StationName",
    "DeviceSerialNumber", "StudyID", "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate",
    "PerformedProcedureStepStartDate", "AcquisitionDateTime", "InstanceCreationDate",
)


def deidentify(ds):  # noqa: ANN001, ANN201 - pydicom Dataset in, same out
    """Blank the attributes that could identify a person, and drop private tags (they may hold more)."""
    for keyword in IDENTIFYING:
        if keyword in ds:
            if keyword in ("PatientName", "PatientID"):
                setattr(ds, keyword, "ANONYMOUS" if keyword == "PatientName" else "medssl-sample")
            else:
                delattr(ds, keyword)
    ds.remove_private_tags()
    ds.PatientIdentityRemoved = "YES"
    return ds


def copy_dicom(src: Path, dst: Path) -> None:
    """Copy a DICOM file with its identifying attributes blanked (see SAMPLES.md)."""
    import pydicom

    ds = deidentify(pydicom.dcmread(src))
    dst.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dst, enforce_file_format=True)


def short_echo_cine(src: Path, dst: Path, n_frames: int) -> None:
    """Keep the first ``n_frames`` JPEG frames of the echo cine (about 1.3 s, one heartbeat and more)."""
    import pydicom
    from pydicom.encaps import encapsulate, generate_frames

    ds = deidentify(pydicom.dcmread(src))
    total = int(ds.NumberOfFrames)
    frames = list(generate_frames(ds.PixelData, number_of_frames=total))[:n_frames]
    ds.PixelData = encapsulate(frames)
    ds.NumberOfFrames = n_frames
    ds["PixelData"].is_undefined_length = True
    ds.DerivationDescription = f"First {n_frames} of {total} frames kept by medssl scripts/make_samples.py"
    if "ImageType" in ds:
        ds.ImageType = ["DERIVED", *list(ds.ImageType)[1:]]
    dst.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dst, enforce_file_format=True)


def main() -> int:
    """Copy the curated subset into medssl/samples; exit code 2 when ../shared/data is absent."""
    if not SHARED.is_dir():
        print(f"{SHARED}: not found; the samples are built from ../shared/data", file=sys.stderr)
        return 2
    if OUT.exists():
        for sub in ("ultrasound", "xca", "ecg", "mri", "volumes"):
            shutil.rmtree(OUT / sub, ignore_errors=True)
    us = SHARED / "ultrasound"
    short_echo_cine(us / "dicom" / "color3d_jpeg_baseline.dcm", OUT / "ultrasound" / "echo_cine_40f.dcm",
                    ECHO_FRAMES)
    for stem in HC18:
        _copy(us / "hc18_fetal_head_subset" / "images" / f"{stem}.png",
              OUT / "ultrasound" / "hc18" / "images" / f"{stem}.png")
        _copy(us / "hc18_fetal_head_subset" / "masks" / f"{stem}_mask.png",
              OUT / "ultrasound" / "hc18" / "masks" / f"{stem}_mask.png")
    csv_lines = (us / "hc18_fetal_head_subset" / "pixel_size_and_HC.csv").read_text().splitlines()
    keep = [csv_lines[0]] + [line for line in csv_lines[1:] if line.split(",")[0].replace(".png", "") in HC18]
    (OUT / "ultrasound" / "hc18" / "pixel_size_and_HC.csv").write_text("\n".join(keep) + "\n")
    for rec in CAROTID:
        for kind in ("images", "masks"):
            for f in sorted((us / "ccaui_carotid" / rec / kind).glob("*.png")):
                _copy(f, OUT / "ultrasound" / "carotid" / rec / kind / f.name)
    xca = SHARED / "xca" / "fercer_coronary_xca80"
    for split, names in (("train", XCA_TRAIN), ("test", XCA_TEST)):
        for kind in ("images", "masks"):
            files = sorted((xca / split / kind).iterdir())
            for f in files:
                if f.stem.split("_")[0] in names or f.stem in names:
                    _copy(f, OUT / "xca" / split / kind / f.name)
    ecg = SHARED / "ecg"
    for rec in CINC:
        for ext in (".hea", ".mat"):
            _copy(ecg / "cinc2021_12lead" / f"{rec}{ext}", OUT / "ecg" / "cinc2021" / f"{rec}{ext}")
    labels = (ecg / "cinc2021_12lead" / "labels.csv").read_text().splitlines()
    keep = [labels[0]] + [line for line in labels[1:] if line.split(",")[0] in CINC]
    (OUT / "ecg" / "cinc2021" / "labels.csv").write_text("\n".join(keep) + "\n")
    copy_dicom(ecg / "dicom_waveform_12lead" / "waveform_ecg.dcm", OUT / "ecg" / "waveform_ecg.dcm")
    mri = SHARED / "mri"
    copy_dicom(mri / "magnitude_images_dicom" / "MR_small.dcm", OUT / "mri" / "MR_small.dcm")
    _copy(mri / "kspace_siemens_twix" / "gre.dat", OUT / "mri" / "gre.dat")
    vol = SHARED / "volumes"
    copy_dicom(vol / "dicom" / "pydicom_small" / "CT_small.dcm", OUT / "volumes" / "CT_small.dcm")
    _copy(vol / "nifti" / "anatomical.nii", OUT / "volumes" / "anatomical.nii")
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"samples: {total / 1e6:.1f} MB in {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
