"""Video / signal / MR-artefact transforms (hand-computed values) and the streaming datasets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from medssl.ssl.data import ImageFolderDataset, VideoClipDataset
from medssl.transforms import (
    BandPass,
    BandPassd,
    Ghosting,
    Motion,
    NormalizeClip,
    RandGhosting,
    RandMotiond,
    RandSampleClip,
    RandSampleClipd,
    RandWindow,
    Resample,
    ResizeClip,
    ResizeClipd,
    SampleClip,
    StandardizeLeads,
    ToGreyscale,
    ToGreyscaled,
    Window,
)


# ---------------------------------------------------------------- video
def test_to_greyscale_bt601():
    x = torch.zeros(3, 2, 1, 2)  # [C, T, H, W]
    x[:, 0, 0, 0] = torch.tensor([1.0, 0.0, 0.0])  # -> 0.299
    x[:, 1, 0, 1] = torch.tensor([0.2, 0.4, 0.6])  # -> 0.0598 + 0.2348 + 0.0684 = 0.363
    y = ToGreyscale()(x)
    assert y.shape == (1, 2, 1, 2)
    assert y[0, 0, 0, 0].item() == pytest.approx(0.299)
    assert y[0, 1, 0, 1].item() == pytest.approx(0.363)
    assert ToGreyscale()(y) is not None and ToGreyscale()(y).shape == y.shape  # 1 channel passes
    out = ToGreyscaled("image")({"image": x.numpy(), "label": 3})
    assert isinstance(out["image"], np.ndarray) and out["image"].shape == (1, 2, 1, 2) and out["label"] == 3
    with pytest.raises(ValueError):
        ToGreyscale()(torch.zeros(2, 4, 4))


def _ramp_clip(t: int = 10) -> torch.Tensor:
    return torch.arange(t, dtype=torch.float32).reshape(1, t, 1, 1).expand(1, t, 2, 2).clone()


def test_sample_clip_indices_and_clamp():
    # start 2, stride 3, 4 frames -> 2, 5, 8, 11 -> 11 clamped to the last frame 9
    y = SampleClip(num_frames=4, stride=3, start=2)(_ramp_clip())
    assert y.shape == (1, 4, 2, 2)
    assert y[0, :, 0, 0].tolist() == [2.0, 5.0, 8.0, 9.0]


def test_rand_sample_clip_range_and_seed():
    # T = 10, 4 frames, stride 2 -> span 7 -> start in [0, 3]
    t = RandSampleClip(num_frames=4, stride=2)
    t.set_random_state(0)
    starts = set()
    for _ in range(40):
        y = t(_ramp_clip())
        f = y[0, :, 0, 0]
        assert torch.equal(f - f[0], torch.tensor([0.0, 2.0, 4.0, 6.0]))
        starts.add(int(f[0]))
    assert starts == {0, 1, 2, 3}
    d1 = RandSampleClipd(["a", "b"], 4, 2).set_random_state(7)
    out = d1({"a": _ramp_clip(), "b": _ramp_clip() + 100})
    assert torch.equal(out["b"] - 100, out["a"])  # same frames for every key


def test_resize_clip_area_block_means():
    frame = torch.arange(16, dtype=torch.float32).reshape(4, 4)
    clip = torch.stack([frame, frame + 100]).unsqueeze(0)  # [1, 2, 4, 4]
    y = ResizeClip(2)(clip)
    # 2x2 block means: [0,1,4,5] -> 2.5, [2,3,6,7] -> 4.5, [8,9,12,13] -> 10.5, [10,11,14,15] -> 12.5
    assert y.shape == (1, 2, 2, 2)
    assert torch.allclose(y[0, 0], torch.tensor([[2.5, 4.5], [10.5, 12.5]]))
    assert torch.allclose(y[0, 1], torch.tensor([[102.5, 104.5], [110.5, 112.5]]))  # frames not mixed
    assert ResizeClipd("image", (3, 5))({"image": clip})["image"].shape == (1, 2, 3, 5)


def test_normalize_clip():
    x = torch.tensor([0.0, 5.0, 10.0]).reshape(1, 3, 1, 1)
    assert NormalizeClip("minmax")(x).flatten().tolist() == [0.0, 0.5, 1.0]
    # z-score: mean 5, population std sqrt(50/3) = 4.0824829 -> [-1.2247449, 0, 1.2247449]
    z = NormalizeClip("zscore")(x).flatten()
    assert torch.allclose(z, torch.tensor([-1.2247449, 0.0, 1.2247449]), atol=1e-5)
    assert NormalizeClip("fixed", 10.0)(x).flatten().tolist() == [0.0, 0.5, 1.0]


# ---------------------------------------------------------------- signal
def _sine(freq: float, fs: float = 500.0, seconds: float = 4.0) -> np.ndarray:
    t = np.arange(int(fs * seconds)) / fs
    return np.sin(2 * np.pi * freq * t)[None].astype(np.float32)


def test_bandpass_keeps_10hz_and_attenuates_60hz():
    bp = BandPass(0.67, 40.0, fs=500.0)
    mid = slice(500, 1500)  # ignore the edges

    def rms(a):
        return float(np.sqrt(np.mean(np.asarray(a)[0, mid] ** 2)))

    keep = rms(bp(_sine(10.0))) / rms(_sine(10.0))
    cut = rms(bp(_sine(60.0))) / rms(_sine(60.0))
    assert keep > 0.95
    # Butterworth order 4 forward-backward at 60 Hz vs 40 Hz: |H|^2 ~ 1/(1 + 1.5^8) = 0.038
    assert cut < 0.08
    out = BandPassd("ecg", fs=500.0)({"ecg": torch.from_numpy(_sine(10.0))})
    assert isinstance(out["ecg"], torch.Tensor) and out["ecg"].dtype == torch.float32
    with pytest.raises(ValueError):
        bp(np.zeros((1, 10), np.float32))


def test_resample_lengths():
    assert Resample(500, 250)(np.zeros((12, 1000), np.float32)).shape == (12, 500)
    assert Resample(360, 500)(np.zeros((2, 3600), np.float32)).shape == (2, 5000)
    # a 5 Hz sine stays a 5 Hz sine: 1 s at 250 Hz, sample 50 = sin(2 pi 5 * 0.2) = 0
    y = Resample(500, 250)(_sine(5.0, seconds=2.0))
    assert abs(float(y[0, 50])) < 0.02 and float(y[0, 12]) == pytest.approx(
        np.sin(2 * np.pi * 5 * 12 / 250), abs=0.02
    )


def test_window_and_standardize():
    x = torch.arange(300, dtype=torch.float32).reshape(1, 300)
    w = Window(seconds=2.0, fs=100.0, start=50)(x)  # 200 samples from 50
    assert w.shape == (1, 200) and w[0, 0] == 50 and w[0, -1] == 249
    pad = Window(seconds=2.0, fs=100.0, start=250)(x)  # 50 real samples + 150 zeros
    assert pad.shape == (1, 200) and pad[0, 49] == 299 and float(pad[0, 50:].abs().sum()) == 0.0
    rw = RandWindow(1.0, 100.0)
    rw.set_random_state(0)
    r = rw(x)
    assert r.shape == (1, 100) and torch.equal(r[0], torch.arange(r[0, 0].item(), r[0, 0].item() + 100))
    # lead [1,2,3,4]: mean 2.5, population std sqrt(1.25) = 1.1180340 -> [-1.3416408, -0.4472136, ...]
    s = StandardizeLeads()(np.array([[1.0, 2.0, 3.0, 4.0], [10.0, 10.0, 10.0, 10.0]], np.float32))
    assert np.allclose(s[0], [-1.3416408, -0.4472136, 0.4472136, 1.3416408], atol=1e-5)
    assert np.allclose(s[1], 0.0)  # a flat lead is only centred


# ---------------------------------------------------------------- MR artefacts (torchio)
def test_motion_and_ghosting():
    img = torch.zeros(1, 32, 32)
    img[:, 5:14, 7:20] = 1.0  # not 32/num_ghosts-periodic, so ghosts do not cancel into the restored DC line
    still = Motion(np.zeros((1, 3)), np.zeros((1, 3)), np.array([0.5]))(img)
    assert still.shape == img.shape and torch.allclose(still, img, atol=1e-3)
    ghost = Ghosting(num_ghosts=4, axis=0, intensity=1.0)(img)
    assert ghost.shape == img.shape and float((ghost - img).abs().max()) > 0.01
    rg = RandGhosting(prob=0.0)
    assert rg(img) is img
    d = {"image": torch.rand(1, 16, 16, 4)}
    a = RandMotiond("image", prob=1.0).set_random_state(3)(d)["image"]
    b = RandMotiond("image", prob=1.0).set_random_state(3)(d)["image"]
    assert torch.allclose(a, b) and not torch.allclose(a, d["image"])


# ---------------------------------------------------------------- datasets
def _write_cine_tiff(path, frames: int = 10, size=(12, 16)):
    imgs = [Image.fromarray(np.full(size, 10 * t, np.uint8)) for t in range(frames)]
    imgs[0].save(path, save_all=True, append_images=imgs[1:])


def test_video_clip_dataset_streams_and_picks_frames(tmp_path):
    p1, p2 = tmp_path / "a.tif", tmp_path / "b.tif"
    _write_cine_tiff(p1)
    _write_cine_tiff(p2, frames=4)
    ds = VideoClipDataset(
        [p1, {"image": p2, "label": 1}], num_frames=3, stride=2, size=None, random_clip=False
    )
    assert len(ds) == 2 and ds._cache is None  # nothing loaded up front
    x = ds[0]["image"]
    # T = 10, span (3-1)*2+1 = 5, max start 5, evenly spaced single clip -> start 5 // 2 = 2 -> frames 2, 4, 6
    assert x.shape == (1, 3, 12, 16) and x.dtype == torch.float32
    assert torch.allclose(x[0, :, 0, 0], torch.tensor([20.0, 40.0, 60.0]) / 255)
    item = ds[1]  # 4 frames < span: start 0, frames 0, 2, 4 -> 4 clamped to 3
    assert item["label"] == 1 and torch.allclose(
        item["image"][0, :, 0, 0], torch.tensor([0.0, 20.0, 30.0]) / 255
    )
    assert ds._cache is not None and ds._cache[0] == str(p2)  # only the current file is cached
    small = VideoClipDataset([p1], num_frames=2, stride=1, size=(6, 8), clips_per_file=3, random_clip=False)
    assert [small[i]["image"][0, 0, 0, 0].item() * 255 for i in range(3)] == pytest.approx([0.0, 40.0, 80.0])
    assert small[0]["image"].shape == (1, 2, 6, 8)
    with pytest.raises(IndexError):
        small[3]


def test_image_folder_dataset_with_masks(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "msk").mkdir()
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 255  # pure red -> 0.299
    Image.fromarray(rgb).save(tmp_path / "img" / "case1.png")
    m = np.zeros((8, 8), np.uint8)
    m[:4] = 255
    Image.fromarray(m).save(tmp_path / "msk" / "case1_mask.png")
    ds = ImageFolderDataset(tmp_path / "img", tmp_path / "msk", size=4)
    item = ds[0]
    assert item["image"].shape == (1, 4, 4) and item["image"][0, 0, 0].item() == pytest.approx(
        0.299, abs=1e-3
    )
    assert item["mask"].dtype == torch.int64 and item["mask"].shape == (1, 4, 4)
    assert item["mask"][0, :2].eq(1).all() and item["mask"][0, 2:].eq(0).all()
    clip = ImageFolderDataset(tmp_path / "img", as_clip=True)[0]["image"]
    assert clip.shape == (1, 1, 8, 8)
    with pytest.raises(ValueError, match="no mask"):
        ImageFolderDataset(tmp_path / "msk", tmp_path / "img")  # case1_mask has no image case1_mask(.png)
