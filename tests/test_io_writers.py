"""Writers round-trip (NIfTI affine, DICOM-SEG references, PNG, CSV), are atomic and add no identifiers."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from medssl.io import load, write_csv, write_dicom_seg, write_nifti, write_png

AFFINE = np.array([[0.0, 0.0, -2.0, 30.0], [0.9, 0.0, 0.0, -12.0], [0.0, 1.1, 0.0, 7.5], [0, 0, 0, 1]])


def _no_temp_left(folder: Path) -> None:
    assert not [p for p in folder.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.parametrize("name", ["out.nii", "out.nii.gz"])
def test_nifti_round_trip_keeps_affine(tmp_path, name):
    data = np.random.default_rng(0).random((5, 6, 7)).astype(np.float32)
    path = write_nifti(tmp_path / name, data, AFFINE)
    rec = load(path)
    np.testing.assert_allclose(rec.meta.affine, AFFINE, atol=1e-6)
    np.testing.assert_array_equal(rec.array, data)
    _no_temp_left(tmp_path)


def test_nifti2_round_trip(tmp_path):
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    rec = load(write_nifti(tmp_path / "n2.nii", data, AFFINE, nifti2=True))
    assert rec.meta.source.format == "NIfTI-2"
    np.testing.assert_allclose(rec.meta.affine, AFFINE, atol=1e-6)


def test_dicom_series_to_nifti_keeps_geometry(tmp_path, ct_series):
    rec = load(ct_series[0])
    back = load(write_nifti(tmp_path / "ct.nii.gz", rec.array, rec.meta.affine))
    np.testing.assert_allclose(back.meta.affine, rec.meta.affine, atol=1e-5)
    np.testing.assert_allclose(back.array, rec.array)


def test_nifti_has_no_identifiers(tmp_path, ct_series, phi_strings):
    import nibabel as nib

    rec = load(ct_series[0])
    path = write_nifti(tmp_path / "ct.nii", rec.array, rec.meta.affine)
    hdr = nib.load(path).header
    assert hdr["descrip"].item() == b"" and hdr["aux_file"].item() == b"" and hdr["intent_name"].item() == b""
    raw = path.read_bytes()
    for s in phi_strings:
        assert s.encode() not in raw


def test_write_failure_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    import nibabel as nib

    path = tmp_path / "keep.nii"
    write_nifti(path, np.zeros((2, 2, 2), np.float32), np.eye(4))
    before = path.read_bytes()

    def half_write_then_fail(
        img, filename
    ):  # simulates a crash (disk full) in the middle of the library write
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", half_write_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_nifti(path, np.ones((3, 3, 3), np.float32), np.eye(4))
    assert path.read_bytes() == before
    _no_temp_left(tmp_path)
    with pytest.raises(ValueError):
        write_png(tmp_path / "bad.png", np.zeros((2, 2, 2, 2)))
    assert not (tmp_path / "bad.png").exists()


def test_dicom_seg_for_series_references_sources(tmp_path, ct_series):
    import highdicom as hd
    import pydicom

    folder, files, _zs = ct_series
    rec = load(folder)
    mask = np.zeros(rec.shape, bool)
    mask[1:4, 2:6, 3:7] = True
    # sources in the same (z-sorted) order as the loaded volume
    dsets = sorted((pydicom.dcmread(f) for f in files), key=lambda d: float(d.ImagePositionPatient[2]))
    out = write_dicom_seg(tmp_path / "seg.dcm", mask, dsets, segment_label="lesion")
    seg = hd.seg.segread(out)
    refs = {
        r.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence for r in s.ReferencedInstanceSequence
    }
    assert refs == {d.SOPInstanceUID for d in dsets}
    assert seg.SegmentSequence[0].SegmentLabel == "lesion"
    vol = seg.get_volume().array if hasattr(seg, "get_volume") else None
    if vol is not None:
        assert int(vol.sum()) == int(mask.sum())
    back = load(out)
    assert back.modality == "SEG" and int((back.array > 0).sum()) == int(mask.sum())
    _no_temp_left(tmp_path)


def test_dicom_seg_for_real_ct_and_no_new_identifiers(tmp_path, shared_data):
    import highdicom as hd
    import pydicom

    src = shared_data / "volumes/dicom/pydicom_small/CT_small.dcm"
    ds = pydicom.dcmread(src)
    mask = np.zeros((ds.Rows, ds.Columns), np.uint8)
    mask[40:80, 30:90] = 1
    out = write_dicom_seg(tmp_path / "ct_seg.dcm", mask, [src])
    seg = hd.seg.segread(out)
    assert (
        seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
        == ds.SOPInstanceUID
    )
    _check_no_new_identifiers(seg, ds)


def test_dicom_seg_synthetic_identifiers_only_from_source(tmp_path, ct_file, phi_strings):
    import pydicom

    out = write_dicom_seg(tmp_path / "s.dcm", np.ones((8, 8), bool), [ct_file])
    seg = pydicom.dcmread(out)
    _check_no_new_identifiers(seg, pydicom.dcmread(ct_file))
    # identifiers that are not part of the patient/study modules highdicom copies must not be carried over
    for kw in ("InstitutionName", "DeviceSerialNumber", "OperatorsName", "InstitutionAddress"):
        assert str(seg.get(kw) or "") not in phi_strings and "Nowhere" not in str(seg.get(kw) or "")
    assert seg.DeviceSerialNumber == "0"


IDENTIFYING = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "OtherPatientIDs",
    "InstitutionName",
    "InstitutionAddress",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "OperatorsName",
    "PerformingPhysicianName",
)


def _check_no_new_identifiers(seg, source) -> None:
    for kw in IDENTIFYING:
        val = str(seg.get(kw) or "")
        if val:
            assert val == str(source.get(kw) or ""), f"{kw}={val!r} not from the source"


def test_dicom_seg_shape_mismatch_is_refused(tmp_path, ct_file):
    with pytest.raises(ValueError, match="frames"):
        write_dicom_seg(tmp_path / "x.dcm", np.ones((2, 8, 8), bool), [ct_file])


def test_png_round_trip(tmp_path):
    grey = np.random.default_rng(1).integers(0, 256, (9, 11), dtype=np.uint8)
    np.testing.assert_array_equal(load(write_png(tmp_path / "g.png", grey)).array, grey)
    mask = np.zeros((9, 11), bool)
    mask[2:4] = True
    m = load(write_png(tmp_path / "m_mask.png", mask))
    np.testing.assert_array_equal(m.array, mask.astype(np.uint8) * 255)
    f = load(write_png(tmp_path / "f.png", np.linspace(-1, 1, 20).reshape(4, 5)))
    assert f.array.min() == 0 and f.array.max() == 255
    _no_temp_left(tmp_path)


def test_csv_round_trip(tmp_path):
    rows = [{"file": "a.dcm", "dice": 0.91}, {"file": "b.dcm", "dice": 0.5, "note": "x"}]
    path = write_csv(tmp_path / "r.csv", rows)
    with open(path, newline="") as fh:
        got = list(csv.DictReader(fh))
    assert [r["file"] for r in got] == ["a.dcm", "b.dcm"] and got[1]["note"] == "x" and got[0]["note"] == ""
    path2 = write_csv(tmp_path / "s.csv", [[1, 2], [3, 4]], header=["a", "b"])
    assert path2.read_text().splitlines() == ["a,b", "1,2", "3,4"]
    _no_temp_left(tmp_path)


def test_dicom_seg_multiframe_without_frame_of_reference_is_refused_clearly(tmp_path, shared_data):
    src = shared_data / "mri/magnitude_images_dicom/emri_small.dcm"  # 10 frames, no Frame of Reference
    with pytest.raises(ValueError, match="Frame of Reference"):
        write_dicom_seg(tmp_path / "x.dcm", np.ones((10, 64, 64), bool), [src])
    assert not (tmp_path / "x.dcm").exists()
