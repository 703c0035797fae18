"""Every malformed input must raise InputError naming the file and a short reason (no traceback, no hang)."""

from __future__ import annotations

import gzip
import os
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from medssl.errors import InputError
from medssl.io import load


def _raises(path: Path, *fragments: str) -> InputError:
    with pytest.raises(InputError) as info:
        load(path)
    err = info.value
    assert isinstance(err, ValueError)
    assert str(path) in str(err), str(err)
    assert err.path == str(path) or err.path.startswith(str(path) + os.sep)  # a folder names the bad file
    for frag in fragments:
        assert frag.lower() in err.reason.lower(), err.reason
    assert "\n" not in str(err) and "Traceback" not in str(err)
    return err


def test_missing_path(tmp_path):
    _raises(tmp_path / "nope.dcm", "no such file")


def test_zero_byte_file(bad_file):
    for name in ("empty.dcm", "empty.nii", "empty.hea", "empty.png", "empty.npz"):
        _raises(bad_file(name, b""), "empty file")


def test_random_bytes_named_dcm(bad_file):
    rng = np.random.default_rng(0)
    _raises(bad_file("random.dcm", rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()), "not a DICOM")


def test_text_without_extension_is_not_dicom(bad_file):
    _raises(bad_file("README", b"just some text\n" * 20), "not a DICOM")


def test_dicom_truncated_in_pixel_data(tmp_path, make_ct, save_dicom):
    src = save_dicom(make_ct(rows=64, cols=64), tmp_path / "full.dcm")
    data = src.read_bytes()
    pixel_bytes = 64 * 64 * 2
    cut = len(data) - pixel_bytes // 2  # pixel data is the last element
    trunc = tmp_path / "trunc.dcm"
    trunc.write_bytes(data[:cut])
    _raises(trunc, "truncated")


def test_compressed_dicom_truncated(shared_data, tmp_path):
    data = (shared_data / "ultrasound/dicom/US1_J2KR.dcm").read_bytes()
    trunc = tmp_path / "j2k_trunc.dcm"
    trunc.write_bytes(data[: len(data) // 2])
    _raises(trunc)


def test_dicom_without_pixel_data(tmp_path, make_ct, save_dicom):
    ds = make_ct()
    del ds.PixelData
    _raises(save_dicom(ds, tmp_path / "nopix.dcm"), "no pixel data")


def test_missing_decoder_names_syntax_and_package(monkeypatch, tmp_path, make_ct, save_dicom):
    from pydicom.pixels.decoders.base import get_decoder
    from pydicom.uid import RLELossless

    ds = make_ct(rows=16, cols=16)
    ds.compress(RLELossless, encoding_plugin="pydicom")
    path = save_dicom(ds, tmp_path / "rle.dcm")
    assert load(path).shape == (16, 16)  # decodes while a plugin is available
    monkeypatch.setattr(get_decoder(RLELossless), "_available", {})
    err = _raises(path, "RLE Lossless", "install", "pylibjpeg-rle")
    assert "1.2.840.10008.1.2.5" in err.reason


def test_missing_decoder_on_real_jpeg2000(monkeypatch, shared_data):
    from pydicom.pixels.decoders.base import get_decoder
    from pydicom.uid import JPEG2000Lossless

    monkeypatch.setattr(get_decoder(JPEG2000Lossless), "_available", {})
    _raises(shared_data / "ultrasound/dicom/US1_J2KR.dcm", "JPEG 2000", "pylibjpeg-openjpeg")


def test_nii_gz_that_is_not_gzip(bad_file, tmp_path):
    import nibabel as nib

    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4))
    plain = tmp_path / "plain.nii"
    nib.save(img, plain)
    _raises(bad_file("fake.nii.gz", plain.read_bytes()), "not a gzip")


def _nifti_header_bytes(shape: tuple[int, ...], dtype=np.float32) -> bytes:
    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(dtype)
    hdr.set_qform(np.eye(4), code=1)
    return hdr.binaryblock + b"\x00" * 4  # 348-byte header + 4-byte extension flag; vox_offset 352


def test_nifti_header_claims_more_than_file_holds(bad_file):
    # ~64 GB claimed, 1 KB present: must be refused quickly, without allocating.
    content = _nifti_header_bytes((4096, 4096, 1024)) + b"\x00" * 1024
    path = bad_file("huge.nii", content)
    t0 = time.perf_counter()
    _raises(path, "header claims", "bytes")
    assert time.perf_counter() - t0 < 2.0


def test_nifti_gz_header_claims_more_than_file_holds(bad_file):
    content = gzip.compress(_nifti_header_bytes((4096, 4096, 1024)) + b"\x00" * 1024)
    path = bad_file("huge.nii.gz", content)
    t0 = time.perf_counter()
    _raises(path, "header claims")
    assert time.perf_counter() - t0 < 2.0


def test_nifti_gz_truncated_stream(tmp_path):
    import nibabel as nib

    full = tmp_path / "full.nii.gz"
    nib.save(
        nib.Nifti1Image(np.random.default_rng(1).random((32, 32, 32), dtype=np.float32), np.eye(4)), full
    )
    data = full.read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(data[: len(data) // 2])
    _raises(cut)


def test_nan_and_inf_are_loaded_and_flagged(tmp_path):
    import nibabel as nib

    arr = np.ones((5, 6, 7), np.float32)
    arr[0, 0, 0] = np.nan
    arr[1, 2, 3] = np.inf
    arr[4, 5, 6] = -np.inf
    path = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(arr, np.eye(4)), path)
    rec = load(path)
    assert rec.shape == (5, 6, 7)
    assert rec.has_nonfinite and rec.meta.nonfinite_count == 3
    s = rec.summary()
    assert s["has_nonfinite"] is True and s["nonfinite_count"] == 3
    assert '"has_nonfinite": true' in rec.to_json()


def test_finite_data_not_flagged(tmp_path):
    import nibabel as nib

    path = tmp_path / "ok.nii"
    nib.save(nib.Nifti1Image(np.ones((3, 3, 3), np.float32), np.eye(4)), path)
    rec = load(path)
    assert not rec.has_nonfinite and rec.summary()["nonfinite_count"] == 0


def test_wfdb_header_with_missing_signal_file(bad_file):
    hea = bad_file(
        "rec1.hea",
        b"rec1 2 360 1000\nrec1.dat 212 200 11 1024 0 0 0 MLII\nrec1.dat 212 200 11 1024 0 0 0 V5\n",
    )
    _raises(hea, "signal file missing", "rec1.dat")


def test_wfdb_garbage_header(bad_file):
    _raises(bad_file("junk.hea", b"\x00\x01\x02 not a header at all\n"))


def test_png_with_garbage(bad_file):
    _raises(bad_file("broken.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 50), "image")


def test_twix_garbage(bad_file):
    _raises(bad_file("meas.dat", struct.pack("<II", 0, 1) + b"\xff" * 2000), "twix")


def test_npz_garbage(bad_file):
    _raises(bad_file("k.npz", b"PK\x03\x04 definitely not a zip"), "npz")


def test_npz_without_kspace(tmp_path):
    p = tmp_path / "nok.npz"
    np.savez(p, labels=np.arange(3))
    _raises(p, "no k-space")


def test_unsupported_suffix(bad_file):
    _raises(bad_file("notes.txt", b"hello"), "unsupported")


def test_empty_folder(tmp_path):
    (tmp_path / "empty_dir").mkdir()
    _raises(tmp_path / "empty_dir", "no DICOM files")


def test_series_of_dicoms_without_pixels(tmp_path, make_ct, save_dicom):
    folder = tmp_path / "nopix"
    for i in range(2):
        ds = make_ct(position=(0, 0, float(i)), instance=i + 1, series_uid="1.2.3.4")
        del ds.PixelData
        save_dicom(ds, folder / f"{i}.dcm")
    _raises(folder, "no pixel data")
