"""Each supported format loads into the right array, axes and geometry (synthetic files made here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medssl.io import Record, load

# ----------------------------------------------------------------------------------------------- DICOM


def test_single_ct_slice_rescaled_with_geometry(ct_file):
    rec = load(ct_file)
    assert isinstance(rec, Record) and isinstance(rec.array, np.ndarray)
    assert rec.modality == "CT" and rec.axes == ("y", "x") and rec.shape == (8, 8)
    raw = np.arange(64).reshape(8, 8) + 1000 + 1
    np.testing.assert_allclose(rec.array, raw - 1024.0)  # slope 1, intercept -1024
    assert rec.meta.spacing == {"y": 0.5, "x": 0.75}
    # index (row 2, col 3) -> LPS (3*0.75, 2*0.5, 0) -> RAS (-2.25, -1.0, 0)
    np.testing.assert_allclose(rec.meta.affine @ [2, 3, 0, 1], [-2.25, -1.0, 0.0, 1.0])
    assert rec.meta.source.transfer_syntax == "Explicit VR Little Endian"


def test_series_folder_sorted_by_position_with_affine(ct_series):
    folder, _files, zs = ct_series
    rec = load(folder)
    assert rec.axes == ("z", "y", "x") and rec.shape == (5, 8, 8)
    # slice i (in z order) was filled with 100*(i+1), rescaled by -1024
    np.testing.assert_allclose(rec.array[:, 0, 0], [100 * (i + 1) - 1024 for i in range(5)])
    assert rec.meta.spacing == pytest.approx({"z": 2.5, "y": 0.5, "x": 0.75})
    for k, z in enumerate(zs):
        np.testing.assert_allclose(rec.meta.affine @ [k, 0, 0, 1], [5.0, 7.0, z, 1.0])
    np.testing.assert_allclose(rec.meta.affine @ [0, 1, 1, 1], [5.0 - 0.75, 7.0 - 0.5, zs[0], 1.0])
    assert rec.meta.extra["series_count"] == 1
    assert rec.meta.source.format == "DICOM series"


def test_series_sorted_by_instance_number_without_positions(tmp_path, make_ct, save_dicom):
    folder = tmp_path / "noipp"
    for n, inst in enumerate([3, 1, 2]):
        ds = make_ct(instance=inst, series_uid="1.2.826.0.1.99", pixels=np.full((8, 8), inst, np.int16))
        del ds.ImagePositionPatient
        save_dicom(ds, folder / f"f{n}.dcm")
    rec = load(folder)
    np.testing.assert_allclose(rec.array[:, 0, 0], np.array([1, 2, 3]) - 1024.0)
    assert rec.axes[0] == "frame" and rec.meta.affine is None


def test_folder_with_two_series_loads_largest_and_says_so(tmp_path, make_ct, save_dicom):
    folder = tmp_path / "mixed"
    big, small = "1.2.826.0.1.3680043.8.498.111", "1.2.826.0.1.3680043.8.498.222"
    for i in range(4):
        save_dicom(make_ct(position=(0, 0, float(i)), instance=i + 1, series_uid=big), folder / f"a{i}.dcm")
    for i in range(2):
        save_dicom(make_ct(position=(0, 0, float(i)), instance=i + 1, series_uid=small), folder / f"b{i}.dcm")
    rec = load(folder)
    assert rec.shape[0] == 4
    extra = rec.meta.extra
    assert extra["series_count"] == 2 and [s["files"] for s in extra["series"]] == [4, 2]
    assert "largest" in extra["note"]
    text = rec.to_json() + repr(rec.meta)
    assert big not in text and small not in text  # UIDs are hashed


def test_dicomdir_resolves_to_series(tmp_path, make_ct):
    from pydicom.fileset import FileSet

    fs = FileSet()
    series = "1.2.826.0.1.3680043.8.498.333"
    for i in range(3):
        fs.add(make_ct(position=(0, 0, 2.0 * i), instance=i + 1, series_uid=series))
    fs.add(make_ct(series_uid="1.2.826.0.1.3680043.8.498.444"))
    out = tmp_path / "fs"
    fs.write(out)
    rec = load(out / "DICOMDIR")
    assert rec.shape == (3, 8, 8) and rec.axes == ("z", "y", "x")
    assert rec.meta.source.format == "DICOMDIR" and rec.meta.extra["series_count"] == 2
    assert load(out).shape == (3, 8, 8)  # a folder holding a DICOMDIR uses it


def _us_multiframe(photometric: str, frames: np.ndarray):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, UltrasoundMultiFrameImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = UltrasoundMultiFrameImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "SECRET123"
    ds.NumberOfFrames = frames.shape[0]
    ds.Rows, ds.Columns = frames.shape[1:3]
    ds.SamplesPerPixel = 3 if frames.ndim == 4 else 1
    if ds.SamplesPerPixel == 3:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.FrameTime = 40.0
    ds.FrameIncrementPointer = 0x00181063
    region = Dataset()
    region.PhysicalUnitsXDirection = 3
    region.PhysicalUnitsYDirection = 3
    region.PhysicalDeltaX = 0.02
    region.PhysicalDeltaY = 0.025
    ds.SequenceOfUltrasoundRegions = [region]
    ds.PixelData = np.ascontiguousarray(frames).tobytes()
    return ds


def test_palette_color_cine_expanded_through_lut(tmp_path, save_dicom):
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 4, (3, 6, 5), dtype=np.uint8)
    ds = _us_multiframe("PALETTE COLOR", idx)
    lut = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [10, 20, 30]], np.uint16) * 257  # 16-bit LUT
    for i, name in enumerate(("Red", "Green", "Blue")):
        setattr(ds, f"{name}PaletteColorLookupTableDescriptor", [4, 0, 16])
        setattr(ds, f"{name}PaletteColorLookupTableData", lut[:, i].astype("<u2").tobytes())
    rec = load(save_dicom(ds, tmp_path / "pal.dcm"))
    assert rec.axes == ("frame", "y", "x", "channel") and rec.shape == (3, 6, 5, 3)
    np.testing.assert_array_equal(rec.array, lut[idx])
    assert rec.meta.frame_time_ms == 40.0
    assert rec.meta.spacing == pytest.approx({"y": 0.25, "x": 0.2})  # cm -> mm
    assert rec.meta.source.photometric == "PALETTE COLOR"
    assert rec.summary()["frames"] == 3


def test_ybr_full_cine_converted_to_rgb(tmp_path, save_dicom):
    from pydicom.pixels import convert_color_space

    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    rec = load(save_dicom(_us_multiframe("YBR_FULL", ybr), tmp_path / "ybr.dcm"))
    assert rec.shape == (2, 8, 8, 3)
    assert np.abs(rec.array.astype(int) - rgb.astype(int)).max() <= 3  # rounding of the colour transform
    assert any("RGB" in n for n in rec.meta.source.notes)


def test_jpeg_baseline_ybr422_cine_matches_pydicom(shared_data):
    import pydicom

    path = shared_data / "ultrasound/dicom/color3d_jpeg_baseline.dcm"
    rec = load(path)
    ref = pydicom.dcmread(path).pixel_array  # pydicom's default plugin + numpy YBR->RGB
    assert rec.shape == ref.shape and rec.dtype == ref.dtype
    diff = np.abs(rec.array.astype(np.int16) - ref.astype(np.int16))
    assert diff.max() <= 8 and diff.mean() < 0.1  # libjpeg-turbo YCbCr->RGB rounds differently
    assert rec.meta.source.photometric == "YBR_FULL_422"


def test_info_probes_cine_without_full_decode(shared_data, tmp_path):
    from medssl.errors import InputError
    from medssl.io import info

    path = shared_data / "ultrasound/dicom/color3d_jpeg_baseline.dcm"
    full = load(path).summary()
    quick = info(path)
    assert quick.pop("extra")["pixels"].startswith("probe")
    full.pop("extra", None)
    assert quick == full
    data = path.read_bytes()
    trunc = tmp_path / "cine_trunc.dcm"
    trunc.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(InputError):
        info(trunc)


def test_info_equals_summary_for_synthetic_files(ct_file, ct_series):
    from medssl.io import info

    for p in (ct_file, ct_series[0]):
        assert info(p) == load(p).summary()


def test_enhanced_multiframe_uses_functional_groups(tmp_path, save_dicom):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import EnhancedCTImageStorage, ExplicitVRLittleEndian, generate_uid

    n = 4
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = EnhancedCTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.NumberOfFrames = n
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    shared = Dataset()
    pm = Dataset()
    pm.PixelSpacing = [0.8, 0.6]
    pm.SliceThickness = 3.0
    po = Dataset()
    po.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PixelMeasuresSequence = [pm]
    shared.PlaneOrientationSequence = [po]
    ds.SharedFunctionalGroupsSequence = [shared]
    per = []
    for i in range(n):
        item = Dataset()
        pp = Dataset()
        pp.ImagePositionPatient = [1.0, 2.0, 3.0 * i]
        pv = Dataset()
        pv.RescaleSlope = 2.0
        pv.RescaleIntercept = -100.0 * i
        pv.RescaleType = "HU"
        item.PlanePositionSequence = [pp]
        item.PixelValueTransformationSequence = [pv]
        per.append(item)
    ds.PerFrameFunctionalGroupsSequence = per
    ds.PixelData = np.full((n, 4, 4), 10, np.uint16).tobytes()
    rec = load(save_dicom(ds, tmp_path / "enh.dcm"))
    assert rec.axes == ("z", "y", "x") and rec.shape == (n, 4, 4)
    np.testing.assert_allclose(rec.array[:, 0, 0], [20 - 100 * i for i in range(n)])  # per-frame rescale
    assert rec.meta.spacing == pytest.approx({"z": 3.0, "y": 0.8, "x": 0.6})
    np.testing.assert_allclose(rec.meta.affine @ [2, 0, 0, 1], [-1.0, -2.0, 6.0, 1.0])


def test_xa_cine_frame_time(tmp_path, save_dicom):
    ds = _us_multiframe("MONOCHROME2", np.zeros((5, 4, 4), np.uint8))
    ds.Modality = "XA"
    del ds.SequenceOfUltrasoundRegions
    ds.FrameTime = 66.7
    ds.ImagerPixelSpacing = [0.3, 0.3]
    rec = load(save_dicom(ds, tmp_path / "xa.dcm"))
    assert rec.modality == "XA" and rec.axes == ("frame", "y", "x")
    assert rec.meta.frame_time_ms == pytest.approx(66.7) and rec.meta.spacing == {"y": 0.3, "x": 0.3}


def test_gzipped_dicom(tmp_path, ct_file):
    import gzip

    gz = tmp_path / "ct.dcm.gz"
    gz.write_bytes(gzip.compress(ct_file.read_bytes()))
    np.testing.assert_array_equal(load(gz).array, load(ct_file).array)


# ----------------------------------------------------------------------------------------------- identifiers


def test_no_patient_identifiers_in_metadata_or_json(ct_file, ct_series, phi_strings):
    for path in (ct_file, ct_series[0]):
        rec = load(path)
        text = rec.to_json() + repr(rec.meta) + json.dumps(rec.summary())
        for s in phi_strings:
            assert s not in text, f"{s!r} leaked from {path}"


def test_no_identifiers_from_real_dicom(shared_data):
    import pydicom

    path = shared_data / "ecg/dicom_waveform_12lead/waveform_ecg.dcm"
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    rec = load(path)
    text = rec.to_json() + repr(rec.meta)
    for kw in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "InstitutionName",
        "StudyDate",
        "AccessionNumber",
    ):
        val = str(ds.get(kw) or "")
        if len(val) >= 4:
            assert val not in text, kw


# ----------------------------------------------------------------------------------------------- NIfTI


@pytest.mark.parametrize("name,nifti2", [("v.nii", False), ("v.nii.gz", False), ("v2.nii", True)])
def test_nifti_affine_spacing_and_time(tmp_path, name, nifti2):
    import nibabel as nib

    aff = np.array([[0, 0, 2.5, -10], [-1.5, 0, 0, 20], [0, 1.2, 0, 5], [0, 0, 0, 1]], float)
    data = np.random.default_rng(2).random((6, 5, 4, 3)).astype(np.float32)
    cls = nib.Nifti2Image if nifti2 else nib.Nifti1Image
    img = cls(data, aff)
    img.header.set_xyzt_units("mm", "msec")
    img.header.set_zooms((1.5, 1.2, 2.5, 750.0))
    nib.save(img, tmp_path / name)
    rec = load(tmp_path / name)
    np.testing.assert_allclose(rec.meta.affine, nib.load(tmp_path / name).affine)
    np.testing.assert_allclose(rec.meta.affine, aff, atol=1e-5)
    np.testing.assert_array_equal(rec.array, data)
    assert rec.axes == ("x", "y", "z", "time")
    assert rec.meta.spacing == pytest.approx({"x": 1.5, "y": 1.2, "z": 2.5})
    assert rec.meta.frame_time_ms == pytest.approx(750.0)
    assert rec.meta.source.format == ("NIfTI-2" if nifti2 else "NIfTI-1")


def test_nifti_big_endian_becomes_native(shared_data):
    rec = load(shared_data / "volumes/nifti/anatomical.nii")
    assert rec.shape == (33, 41, 25) and rec.array.dtype.isnative and rec.array.dtype == np.int16


# ----------------------------------------------------------------------------------------------- signals


def _write_wfdb(folder: Path, name: str, leads: list[str], fs: int = 250, n: int = 1000) -> np.ndarray:
    import wfdb

    t = np.arange(n) / fs
    sig = np.stack([np.sin(2 * np.pi * (k + 1) * t) * (k + 1) * 0.5 for k in range(len(leads))], axis=1)
    wfdb.wrsamp(
        name,
        fs=fs,
        units=["mV"] * len(leads),
        sig_name=leads,
        p_signal=sig,
        fmt=["16"] * len(leads),
        adc_gain=[1000.0] * len(leads),
        baseline=[0] * len(leads),
        write_dir=str(folder),
    )
    return sig


def test_wfdb_record_with_atr_and_per_lead_annotations(tmp_path):
    import wfdb

    sig = _write_wfdb(tmp_path, "r1", ["i", "ii", "v1"])
    wfdb.wrann("r1", "atr", np.array([100, 350, 600]), symbol=["N", "A", "N"], write_dir=str(tmp_path))
    wfdb.wrann("r1", "ii", np.array([90, 100, 110]), symbol=["(", "N", ")"], write_dir=str(tmp_path))
    rec = load(tmp_path / "r1.hea")
    assert rec.modality == "ECG" and rec.axes == ("lead", "time") and rec.shape == (3, 1000)
    np.testing.assert_allclose(rec.array, sig.T, atol=1e-3)
    assert rec.meta.sampling_rate == 250 and rec.meta.lead_names == ("i", "ii", "v1")
    assert rec.meta.units == ("mV", "mV", "mV")
    assert set(rec.meta.annotations) == {"atr", "ii"}
    assert rec.meta.annotations["atr"].counts() == {"N": 2, "A": 1}
    np.testing.assert_array_equal(rec.meta.annotations["ii"].sample, [90, 100, 110])
    s = rec.summary()
    assert s["leads"] == 3 and s["sampling_rate"] == 250 and s["annotations"] == {"atr": 3, "ii": 3}
    assert s["frames"] is None
    np.testing.assert_array_equal(
        load(tmp_path / "r1.dat").array, rec.array
    )  # the .dat resolves to the record


def test_wfdb_annotation_file_points_to_header(tmp_path):
    import wfdb

    from medssl.errors import InputError

    _write_wfdb(tmp_path, "r2", ["i"])
    wfdb.wrann("r2", "atr", np.array([5]), symbol=["N"], write_dir=str(tmp_path))
    with pytest.raises(InputError, match="hea"):
        load(tmp_path / "r2.atr")


# ----------------------------------------------------------------------------------------------- images


def test_png_grey_rgb_and_mask(tmp_path):
    from PIL import Image

    grey = np.random.default_rng(3).integers(0, 256, (12, 9), dtype=np.uint8)
    rgb = np.random.default_rng(4).integers(0, 256, (12, 9, 3), dtype=np.uint8)
    mask = np.zeros((12, 9), np.uint8)
    mask[3:6, 2:5] = 255
    Image.fromarray(grey).save(tmp_path / "g.png")
    Image.fromarray(rgb).save(tmp_path / "c.png")
    Image.fromarray(mask).save(tmp_path / "m_mask.png")
    g, c, m = load(tmp_path / "g.png"), load(tmp_path / "c.png"), load(tmp_path / "m_mask.png")
    np.testing.assert_array_equal(g.array, grey)
    assert g.axes == ("y", "x") and g.modality == "IMAGE"
    np.testing.assert_array_equal(c.array, rgb)
    assert c.axes == ("y", "x", "channel")
    np.testing.assert_array_equal(m.array, mask)
    assert m.modality == "SEG" and m.meta.extra["binary"] is True


def test_jpeg_and_float_tiff(tmp_path):
    from PIL import Image

    img = np.full((10, 14), 128, np.uint8)
    Image.fromarray(img).save(tmp_path / "a.jpg", quality=95)
    assert load(tmp_path / "a.jpg").shape == (10, 14)
    f = np.random.default_rng(5).random((7, 8)).astype(np.float32)
    f[0, 0] = np.nan
    Image.fromarray(f).save(tmp_path / "f.tif")
    rec = load(tmp_path / "f.tif")
    np.testing.assert_array_equal(np.isnan(rec.array), np.isnan(f))
    assert rec.meta.nonfinite_count == 1


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_itk_formats_via_simpleitk(tmp_path, suffix):
    import SimpleITK as sitk

    arr = np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5)  # (z, y, x)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.5, 0.7, 2.0))
    img.SetOrigin((10.0, 20.0, 30.0))
    sitk.WriteImage(img, str(tmp_path / f"v{suffix}"))
    rec = load(tmp_path / f"v{suffix}")
    np.testing.assert_array_equal(rec.array, arr)
    assert rec.axes == ("z", "y", "x") and rec.meta.spacing == pytest.approx({"x": 0.5, "y": 0.7, "z": 2.0})
    # voxel (z=1, y=2, x=3) -> LPS (10+1.5, 20+1.4, 30+2) -> RAS
    np.testing.assert_allclose(rec.meta.affine @ [1, 2, 3, 1], [-11.5, -21.4, 32.0, 1.0])


# ----------------------------------------------------------------------------------------------- k-space


def test_npz_kspace_with_dims(tmp_path):
    k = (np.random.default_rng(6).standard_normal((4, 2, 8)) + 1j).astype(np.complex64)
    np.savez(
        tmp_path / "k_kspace.npz", image=k, image_dims=np.array(["Lin", "Cha", "Col"]), fov_mm=[200.0, 180.0]
    )
    rec = load(tmp_path / "k_kspace.npz")
    np.testing.assert_array_equal(rec.array, k)
    assert rec.modality == "KSPACE" and rec.axes == ("line", "coil", "readout")
    assert rec.meta.kspace_dims == ("Lin", "Cha", "Col") and rec.meta.extra["fov_mm"] == [200.0, 180.0]


def test_npz_kspace_key_with_angles_and_sens(tmp_path):
    k = np.ones((3, 16, 32), np.complex64)
    angles = np.linspace(0, np.pi, 16, endpoint=False)
    sens = np.ones((3, 32, 32), np.complex64)
    np.savez(tmp_path / "radial.npz", kspace=k, angles=angles, sens=sens)
    rec = load(tmp_path / "radial.npz")
    assert rec.axes == ("coil", "spoke", "readout")
    np.testing.assert_array_equal(rec.aux["angles"], angles)
    assert rec.aux["sens"].shape == (3, 32, 32)
    assert rec.summary()["extra"]["aux_arrays"] == {"angles": [16], "sens": [3, 32, 32]}


def test_npz_kspace_nonfinite_flagged(tmp_path):
    k = np.ones((2, 4), np.complex64)
    k[0, 1] = complex(np.nan, 0)
    np.savez(tmp_path / "nan.npz", kspace=k)
    assert load(tmp_path / "nan.npz").summary()["nonfinite_count"] == 1


# ----------------------------------------------------------------------------------------------- API


def test_summary_is_one_line_json(ct_series):
    rec = load(ct_series[0])
    line = rec.to_json()
    assert "\n" not in line
    d = json.loads(line)
    for key in (
        "modality",
        "shape",
        "spacing",
        "sampling_rate",
        "frames",
        "leads",
        "dtype",
        "source",
        "has_nonfinite",
    ):
        assert key in d
    assert d["shape"] == [5, 8, 8] and d["dtype"] == "float32"


def test_iter_load_yields_errors_instead_of_raising(ct_file, tmp_path):
    from medssl.errors import InputError
    from medssl.io import iter_load

    out = list(iter_load([ct_file, tmp_path / "missing.dcm"]))
    assert isinstance(out[0], Record) and isinstance(out[1], InputError)


def test_import_is_light():
    code = (
        "import sys, medssl.io; heavy = ('torch', 'monai', 'pydicom', 'wfdb', 'twixtools', 'SimpleITK', "
        "'highdicom', 'nibabel', 'PIL'); print([m for m in sys.modules if m.split('.')[0] in heavy])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_monochrome1_is_inverted(tmp_path):
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from medssl.io import load

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(tmp_path / "cr.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = 2, 2
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = __import__("numpy").array([[0, 100], [4095, 1]], dtype="<u2").tobytes()
    path = tmp_path / "cr.dcm"
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    rec = load(path)
    # stored 0 is white in MONOCHROME1: after inversion it is the brightest value, 4095 - v
    assert rec.array.tolist() == [[4095, 3995], [0, 4094]]


def test_twelve_bit_jpeg_extended_decodes():
    """Pillow cannot decode 12-bit JPEG: the loader must fall back to pylibjpeg (a vendor file from pydicom)."""
    from pydicom.data import get_testdata_file

    from medssl.io import load

    path = get_testdata_file("JPGExtended.dcm")
    if path is None:
        pytest.skip("pydicom's test file JPGExtended.dcm is not installed")
    rec = load(path)
    assert rec.shape == (1024, 256) and rec.array.max() > 255  # 12-bit values survive
