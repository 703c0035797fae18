"""medssl.infer: outputs the size of the input, DICOM SEG that reads back, sliding window, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medssl import samples
from medssl.infer import SegmentationInference, load_frames, output_stem, sliding_window_probabilities
from medssl.io import load
from medssl.networks import CMUNet


def make_xa(path, frames: np.ndarray, frame_of_reference: bool = False):
    """A multi-frame X-ray angiography DICOM (8-bit, MONOCHROME2) from grey frames [T, H, W]."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, XRayAngiographicImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = XRayAngiographicImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = XRayAngiographicImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    if frame_of_reference:
        ds.FrameOfReferenceUID = generate_uid()
    ds.Modality = "XA"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Angio", "X1", "", ""
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyID = "", "", "", "", "1"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = frames.shape[1:]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.NumberOfFrames = frames.shape[0]
    ds.FrameIncrementPointer = 0x00181063
    ds.FrameTime = 66.7
    ds.PixelData = frames.astype(np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    return CMUNet(channels=(8, 16, 32))


def test_sliding_window_covers_images_larger_and_smaller_than_the_roi(net):
    big = np.random.default_rng(0).random((1, 100, 70)).astype(np.float32)
    small = big[:, :20, :24]
    assert sliding_window_probabilities(net, big, (32, 32)).shape == (1, 100, 70)
    p = sliding_window_probabilities(net, small, (32, 32))
    assert p.shape == (1, 20, 24) and ((p >= 0) & (p <= 1)).all()


def test_flip_tta_makes_the_prediction_flip_equivariant(net):
    # A random U-Net is not flip-equivariant; the flip-averaged prediction must be, exactly.
    x = np.random.default_rng(1).random((1, 40, 56)).astype(np.float32)
    plain = sliding_window_probabilities(net, x, (32, 32))
    plain_lr = sliding_window_probabilities(net, x[:, :, ::-1].copy(), (32, 32))[:, :, ::-1]
    assert np.abs(plain - plain_lr).max() > 1e-4
    tta = sliding_window_probabilities(net, x, (32, 32), flip_tta=True)
    for flipped, back in (
        (x[:, :, ::-1], lambda a: a[:, :, ::-1]),
        (x[:, ::-1, :], lambda a: a[:, ::-1, :]),
        (x[:, ::-1, ::-1], lambda a: a[:, ::-1, ::-1]),
    ):
        other = back(sliding_window_probabilities(net, flipped.copy(), (32, 32), flip_tta=True))
        np.testing.assert_allclose(tta, other, atol=1e-5)
    assert tta.shape == plain.shape and not np.allclose(tta, plain)


def test_outputs_match_the_input_size_and_dicom_seg_reads_back(net, tmp_path):
    hd = pytest.importorskip("highdicom")
    png, _ = samples.xca_pairs("test")[0]
    grey = load(png).array
    xa = make_xa(tmp_path / "run.dcm", np.stack([grey, np.roll(grey, 5, 1), np.roll(grey, 9, 0)]))
    xa1 = make_xa(tmp_path / "single.dcm", grey[None, :64, :80])
    ct = samples.ct_small()  # has a Frame of Reference: goes through medssl.io.write_dicom_seg
    nii = samples.nifti_anatomical()
    out = tmp_path / "out"
    summary = SegmentationInference(net, [png, xa, xa1, ct, nii], out, roi_size=(64, 64), device="cpu").run()
    assert summary["failed"] == [] and summary["threshold"] == 0.5

    seg = load(out / f"{png.stem}_seg.png").array
    assert seg.shape == grey.shape and set(np.unique(seg)) <= {0, 255}
    assert (out / f"{png.stem}_overlay.png").is_file()

    for src, frames in ((xa, 3), (xa1, 1), (ct, 1)):
        stem = output_stem(src)
        dcm = hd.seg.segread(out / f"{stem}_seg.dcm")
        assert dcm.number_of_frames == frames
        src_shape = load(src).array.shape
        assert (dcm.Rows, dcm.Columns) == src_shape[-2:]
        refs = [f.DerivationImageSequence[0].SourceImageSequence[0] for f in dcm.PerFrameFunctionalGroupsSequence]
        assert {r.ReferencedSOPInstanceUID for r in refs} == {load_sop(src)}
        if frames > 1:
            assert [int(r.ReferencedFrameNumber) for r in refs] == [1, 2, 3]
            assert str(refs[0].ReferencedSOPClassUID) == "1.2.840.10008.5.1.4.1.1.12.1"  # XA, not the stand-in
        nifti = load(out / f"{stem}_seg.nii.gz")
        assert nifti.array.shape[:2] == (src_shape[-1], src_shape[-2])
        assert (out / f"{stem}_overlay.png").is_file()
    run_mask = hd.seg.segread(out / "run_seg.dcm").pixel_array
    nifti_mask = np.transpose(load(out / "run_seg.nii.gz").array, (2, 1, 0))
    np.testing.assert_array_equal(run_mask > 0, nifti_mask > 0)  # the SEG frames hold the predicted masks

    seg_nii = load(out / "anatomical_seg.nii.gz")
    src = load(nii)
    assert seg_nii.array.shape == src.array.shape
    np.testing.assert_allclose(seg_nii.meta.affine, src.meta.affine, atol=1e-5)


def load_sop(path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_bad_inputs_are_one_line_each_and_good_ones_still_run(net, tmp_path):
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    ecg = samples.cinc_records()[0]  # a signal, not an image
    png, _ = samples.xca_pairs("train")[0]
    lines: list[str] = []
    summary = SegmentationInference(net, [empty, ecg, png], tmp_path / "o", roi_size=(64, 64), device="cpu",
                                    report=lines.append).run()
    assert len(summary["failed"]) == 2 and lines == summary["failed"]
    assert str(empty) in lines[0] and str(ecg) in lines[1]
    assert all("\n" not in line for line in lines)
    assert list(summary["outputs"]) == [str(png)]


def test_threshold_and_checkpoint_errors(net, tmp_path):
    with pytest.raises(ValueError):
        SegmentationInference(net, ["x.png"], tmp_path, threshold=1.5)
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not torch")
    from medssl.errors import InputError

    with pytest.raises(InputError, match="model.pt"):
        SegmentationInference(net, ["x.png"], tmp_path, checkpoint=bad).load_weights()
    info = tmp_path / "model.json"
    info.write_text('{"threshold": 0.3}')
    assert SegmentationInference(net, ["x.png"], tmp_path, model_info=info).resolved_threshold() == 0.3
    assert SegmentationInference(net, ["x.png"], tmp_path, model_info=info, threshold=0.7).resolved_threshold() == 0.7
    assert not SegmentationInference(net, ["x.png"], tmp_path, model_info=info).resolved_flip_tta()
    info.write_text('{"threshold": 0.3, "flip_tta": true}')
    assert SegmentationInference(net, ["x.png"], tmp_path, model_info=info).resolved_flip_tta()
    assert not SegmentationInference(net, ["x.png"], tmp_path, model_info=info, flip_tta=False).resolved_flip_tta()


def _two_blobs() -> np.ndarray:
    """A 64x64 mask with a 10x10 and a 4x4 square, and a single pixel touching the big one only diagonally."""
    m = np.zeros((64, 64), bool)
    m[5:15, 5:15] = True
    m[40:44, 40:44] = True
    m[15, 15] = True  # diagonal neighbour of the big square: the same region under full connectivity
    return m


def test_keep_largest_component_per_frame():
    from medssl.infer import keep_largest_component

    m = _two_blobs()
    kept = keep_largest_component(np.stack([m, m[::-1, ::-1], np.zeros_like(m)]))
    assert kept.shape == (3, 64, 64) and kept.dtype == bool
    assert kept[0].sum() == 101 and not kept[0, 40:44, 40:44].any() and kept[0, 15, 15]
    np.testing.assert_array_equal(kept[1], kept[0][::-1, ::-1])  # each frame on its own
    assert not kept[2].any()
    np.testing.assert_array_equal(keep_largest_component(m), kept[0])  # a single [H, W] frame


class _Fixed(torch.nn.Module):
    """Logits +10 on :func:`_two_blobs`, -10 elsewhere, whatever the input (64x64)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("logits", torch.from_numpy(np.where(_two_blobs(), 10.0, -10.0).astype(np.float32)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], 1, 64, 64)


def test_largest_component_comes_from_the_model_info_and_can_be_turned_off(tmp_path):
    from PIL import Image

    png = tmp_path / "frame.png"
    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(png)
    info = tmp_path / "model.json"
    info.write_text('{"threshold": 0.5, "largest_component": true}')
    runs = {"on": None, "off": False}
    for name, flag in runs.items():
        summary = SegmentationInference(_Fixed(), [png], tmp_path / name, model_info=info, roi_size=(64, 64),
                                        device="cpu", largest_component=flag).run()
        assert summary["largest_component"] is (flag is None)
    on = load(tmp_path / "on" / "frame_seg.png").array > 0
    off = load(tmp_path / "off" / "frame_seg.png").array > 0
    assert on.sum() == 101 and off.sum() == 117
    assert not on[40:44, 40:44].any() and off[40:44, 40:44].all()


def test_load_frames_layouts():
    assert load_frames(samples.echo_cine()).frames.shape == (40, 480, 640)  # RGB cine -> grey frames
    assert load_frames(samples.nifti_anatomical()).frames.shape == (25, 41, 33)  # (z, y, x)


class _Blur(torch.nn.Module):
    """Logits = a 5x5 box mean of the input: its output depends on how many pixels a structure spans."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 4.0 * torch.nn.functional.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=False)


def test_scale_magnifies_the_frame_and_returns_its_own_size():
    from medssl.infer import resample

    rng = np.random.default_rng(3)
    x = rng.random((1, 37, 51)).astype(np.float32)  # odd sizes: the way back must hit them exactly
    plain = sliding_window_probabilities(_Blur(), x, (32, 32), normalise=None)
    for scale in (2.0, 1.5, 0.5):
        p = sliding_window_probabilities(_Blur(), x, (32, 32), normalise=None, scale=scale)
        assert p.shape == x.shape and ((p >= 0) & (p <= 1)).all()
    # magnified twice, the 5x5 box covers half the native extent: closer to the input than at scale 1
    two = sliding_window_probabilities(_Blur(), x, (32, 32), normalise=None, scale=2.0)
    target = 1.0 / (1.0 + np.exp(-4.0 * x))
    assert np.abs(two - target).mean() < np.abs(plain - target).mean()
    # a smooth frame survives the round trip through a pointwise network
    yy, xx = np.mgrid[:37, :51]
    smooth = (np.sin(xx / 9.0) * np.cos(yy / 7.0))[None].astype(np.float32)
    pointwise = torch.nn.Identity()
    np.testing.assert_allclose(sliding_window_probabilities(pointwise, smooth, (32, 32), normalise=None, scale=2.0),
                               1.0 / (1.0 + np.exp(-smooth)), atol=0.01)
    m = torch.zeros(1, 1, 10, 10, dtype=torch.bool)
    m[..., 2:6, 3:8] = True
    up = resample(m, scale=2.0, mask=True)
    assert up.shape == (1, 1, 20, 20) and up.dtype == torch.bool and int(up.sum()) == 4 * int(m.sum())
    with pytest.raises(ValueError, match="scale"):
        sliding_window_probabilities(_Blur(), x, (32, 32), scale=0.0)


def test_scale_comes_from_the_model_info(tmp_path):
    from PIL import Image

    png = tmp_path / "frame.png"
    Image.fromarray((np.random.default_rng(4).random((48, 40)) * 255).astype(np.uint8)).save(png)
    info = tmp_path / "model.json"
    info.write_text('{"threshold": 0.5, "scale": 2.0}')
    masks = {}
    for name, scale in {"from_info": None, "explicit": 2.0, "native": 1.0}.items():
        infer = SegmentationInference(_Blur(), [png], tmp_path / name, model_info=info, roi_size=(32, 32),
                                      device="cpu", scale=scale)
        assert infer.resolved_scale() == (2.0 if scale is None else scale)
        infer.run()
        masks[name] = load(tmp_path / name / "frame_seg.png").array
        assert masks[name].shape == (48, 40)
    np.testing.assert_array_equal(masks["from_info"], masks["explicit"])
    assert (masks["from_info"] != masks["native"]).any()
