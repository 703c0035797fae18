"""Every file in ../shared/data loads (or fails with a clear InputError), and the documented facts hold."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from medssl.errors import InputError
from medssl.io import load

pytestmark = pytest.mark.shared

SHARED_DATA = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data"
)  # same as the shared_data fixture

NON_DATA_NAMES = {"README", "RECORDS", "ANNOTATORS", "LICENSE", "DICOMDIR-nopatient"}
NON_DATA_SUFFIXES = {".md", ".csv", ".txt", ".json"}
# Files that are real DICOM but hold nothing loadable: each must fail with this reason.
EXPECTED_ERRORS = {
    "volumes/dicom/pydicom_small/rtstruct.dcm": "no pixel data",
    "volumes/dicom/dicomdir_series/DICOMDIR-empty.dcm": "references no image",
    "volumes/dicom/dicomdir_series/TINY_ALPHA/DICOMDIR": "no pixel data",
}
TINY_ALPHA_IMAGES = "volumes/dicom/dicomdir_series/TINY_ALPHA/PT000000"  # DICOMDIR test set: headers only


def _kind(path: Path) -> str:
    """'data', 'companion' (loaded through another file) or 'skip' (documentation)."""
    rel = path.relative_to(SHARED_DATA).as_posix()
    if rel.startswith("licenses/") or path.name in NON_DATA_NAMES or path.suffix.lower() in NON_DATA_SUFFIXES:
        return "skip"
    hea = path.with_suffix(".hea")
    if path.suffix.lower() != ".hea" and hea.is_file():
        return "companion"  # .dat/.mat signals, .atr, .xyz and LUDB per-lead annotation files
    return "data"


def _data_files() -> list[str]:
    if not SHARED_DATA.is_dir():
        return []
    return sorted(
        p.relative_to(SHARED_DATA).as_posix()
        for p in SHARED_DATA.rglob("*")
        if p.is_file() and _kind(p) == "data"
    )


DATA_FILES = _data_files()


def test_shared_data_has_files(shared_data):
    assert len(DATA_FILES) > 500


@pytest.mark.parametrize("rel", DATA_FILES or ["<no shared data>"])
def test_every_file_loads(shared_data, rel):
    path = shared_data / rel
    expected = EXPECTED_ERRORS.get(rel) or ("no pixel data" if rel.startswith(TINY_ALPHA_IMAGES) else None)
    if expected:
        with pytest.raises(InputError, match=expected):
            load(path)
        return
    rec = load(path)
    assert isinstance(rec.array, np.ndarray) and rec.array.size > 0
    assert len(rec.axes) == rec.array.ndim
    s = json.loads(rec.to_json())
    assert s["shape"] == list(rec.array.shape) and s["modality"]


def test_companions_are_reported_as_such(shared_data):
    for rel in ("ecg/mitbih_arrhythmia_100/100.atr", "ecg/ludb/data/1.v6", "ecg/ptbdb_s0010_re/s0010_re.xyz"):
        with pytest.raises(InputError, match="hea"):
            load(shared_data / rel)


def test_echo_cine(shared_data):
    rec = load(shared_data / "ultrasound/dicom/color3d_jpeg_baseline.dcm")
    assert rec.shape == (120, 480, 640, 3) and rec.axes == ("frame", "y", "x", "channel")
    assert rec.dtype == np.uint8 and rec.modality == "US"
    assert rec.meta.frame_time_ms == pytest.approx(33.33, abs=0.01)
    assert rec.meta.source.transfer_syntax == "JPEG Baseline (Process 1)"
    assert rec.summary()["frames"] == 120


def test_mitbih_100(shared_data):
    rec = load(shared_data / "ecg/mitbih_arrhythmia_100/100.hea")
    assert rec.shape == (2, 650000) and rec.meta.sampling_rate == 360
    assert rec.meta.lead_names == ("MLII", "V5") and rec.meta.units == ("mV", "mV")
    ann = rec.meta.annotations["atr"]
    assert len(ann) == 2274
    assert ann.counts() == {"N": 2239, "A": 33, "V": 1, "+": 1}
    assert np.all(np.diff(ann.sample) >= 0) and ann.sample.max() < 650000


def test_dicom_ecg(shared_data):
    rec = load(shared_data / "ecg/dicom_waveform_12lead/waveform_ecg.dcm")
    assert rec.shape == (12, 10000) and rec.axes == ("lead", "time")
    assert rec.meta.sampling_rate == 1000 and rec.modality == "ECG"
    assert rec.meta.lead_names[:3] == ("I", "II", "III") and len(set(rec.meta.lead_names)) == 12
    assert set(rec.meta.units) == {"uV"}
    assert 50 < np.abs(rec.array).max() < 20000  # physical microvolts, not raw counts of a wrong scale


def test_cinc2021(shared_data):
    heads = sorted((shared_data / "ecg/cinc2021_12lead").glob("*.hea"))
    assert len(heads) == 50
    for h in heads:
        rec = load(h)
        assert rec.shape == (12, 5000) and rec.meta.sampling_rate == 500


def test_ludb_records_and_per_lead_annotations(shared_data):
    heads = sorted((shared_data / "ecg/ludb/data").glob("*.hea"))
    assert len(heads) == 160
    leads = ("i", "ii", "iii", "avr", "avl", "avf", "v1", "v2", "v3", "v4", "v5", "v6")
    for h in heads[:20]:
        rec = load(h)
        assert rec.shape == (12, 5000) and rec.meta.sampling_rate == 500
        assert rec.meta.lead_names == leads
        assert set(rec.meta.annotations) == set(leads)
        assert {"N", "t", "(", ")"} <= set(rec.meta.annotations["ii"].symbol)


def test_xca_images_and_vessel_fraction(shared_data):
    root = shared_data / "xca/fercer_coronary_xca80"
    images = sorted(root.glob("*/images/*"))
    masks = sorted(root.glob("*/masks/*"))
    assert len(images) == 80 and len(masks) == 80
    fractions = []
    for p in images[:10]:
        rec = load(p)
        assert rec.shape == (300, 300) and rec.dtype == np.uint8
    for p in masks:
        fractions.append(float((load(p).array > 0).mean()))
    assert 0.045 < np.mean(fractions) < 0.07


def test_carotid_image_and_mask_same_size(shared_data):
    root = shared_data / "ultrasound/ccaui_carotid"
    pairs = 0
    for img in sorted(root.glob("*/images/*.png"))[::10]:
        mask = img.parent.parent / "masks" / img.name
        assert mask.is_file(), mask
        a, m = load(img), load(mask)
        assert a.shape == m.shape == (749, 709)
        pairs += 1
    assert pairs > 10


def test_twix_two_coils_and_matches_npz(shared_data):
    root = shared_data / "mri/kspace_siemens_twix"
    rec = load(root / "gre.dat")
    assert rec.modality == "KSPACE" and rec.dtype == np.complex64
    assert rec.shape[rec.axes.index("coil")] == 2
    assert (
        rec.meta.extra["readout_oversampling"] == 2.0
        and rec.meta.extra["readout_oversampling_removed"] is False
    )
    assert rec.shape[rec.axes.index("readout")] == 320  # 160 x 2 oversampling kept
    npz = load(root / "gre_kspace.npz")
    assert npz.axes == rec.axes and npz.meta.kspace_dims == rec.meta.kspace_dims
    np.testing.assert_allclose(npz.array, rec.array, rtol=1e-5, atol=1e-6)
    assert rec.summary()["source"]["model"] == "Skyra"


def test_dicom_series_folder_and_dicomdir(shared_data):
    ct = load(shared_data / "volumes/dicom/dicomdir_series/77654033/CT2")
    assert ct.shape == (4, 16, 16) and ct.axes == ("z", "y", "x") and ct.meta.affine is not None
    rec = load(shared_data / "volumes/dicom/dicomdir_series/DICOMDIR")
    assert rec.meta.source.format == "DICOMDIR" and rec.meta.extra["series_count"] > 1
    assert rec.shape[0] == max(s["files"] for s in rec.meta.extra["series"])


def test_nifti_volumes(shared_data):
    func = load(shared_data / "volumes/nifti/functional.nii")
    assert func.shape == (17, 21, 3, 20) and func.axes[-1] == "time"
    ex = load(shared_data / "volumes/nifti/example4d.nii.gz")
    assert ex.shape == (128, 96, 24, 2)
    import nibabel as nib

    np.testing.assert_allclose(
        ex.meta.affine, nib.load(shared_data / "volumes/nifti/example4d.nii.gz").affine
    )


def test_enhanced_and_seg_dicom(shared_data):
    emri = load(shared_data / "mri/magnitude_images_dicom/emri_small.dcm")
    assert emri.shape == (10, 64, 64)
    seg = load(shared_data / "volumes/dicom/pydicom_small/liver.dcm")
    assert seg.modality == "SEG" and seg.shape == (3, 512, 512) and set(np.unique(seg.array)) <= {0, 1}


def test_annotation_symbols_summary(shared_data):
    rec = load(shared_data / "ecg/ludb/data/1.hea")
    counts = Counter(rec.meta.annotations["i"].symbol)
    assert counts["N"] > 0 and rec.summary()["annotations"]["i"] == sum(counts.values())
