"""Video files (EchoNet-style AVI, MP4) through medssl.io, and the ultrasound bundle streaming clips from them.

The videos are written here with PyAV: a bright square on a dark background moving ``SPEED`` pixels to the
right per frame, so the decoded frames can be checked against a property of the file, not of the reader.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from medssl.errors import InputError
from medssl.io import info, load, read_video_frames, video_info
from medssl.io import video as video_mod

H, W, N, SPEED, X0, Y0, SIDE = 48, 64, 20, 2, 4, 20, 8
REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "ultrasound_vjepa_segmentation"


def _frame(i: int, h: int = H, w: int = W, speed: int = SPEED) -> np.ndarray:
    img = np.full((h, w, 3), 16, np.uint8)
    x = X0 + speed * i
    img[Y0 : Y0 + SIDE, x : x + SIDE] = 235
    return img


def write_video(
    path: Path, codec: str = "ffv1", pix_fmt: str = "bgr0", n: int = N, gop: int | None = None, fps: int = 50,
    h: int = H, w: int = W, speed: int = SPEED,
) -> Path:
    """A real video file written by FFmpeg (through PyAV), frame ``i`` from :func:`_frame`."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        if gop:
            stream.codec_context.gop_size = gop
        for i in range(n):
            for packet in stream.encode(av.VideoFrame.from_ndarray(_frame(i, h, w, speed), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def _left_edges(frames: np.ndarray) -> np.ndarray:
    """Left column of the bright square in each ``(frame, y, x, channel)`` frame."""
    bright = frames[..., 0] > 128
    return np.array([np.flatnonzero(b.any(axis=0))[0] for b in bright])


def _centroids_x(frames: np.ndarray) -> np.ndarray:
    grey = frames.astype(np.float64).mean(-1) if frames.ndim == 4 else frames.astype(np.float64)
    weight = np.clip(grey - 128, 0, None)
    cols = np.arange(grey.shape[-1])
    return (weight.sum(axis=-2) * cols).sum(-1) / weight.sum(axis=(-2, -1))


# (file name, codec, pixel format, key frame interval): lossless intra, lossy intra, lossy inter-frame codecs
CODECS = [
    ("ffv1.avi", "ffv1", "bgr0", None),
    ("mjpeg.avi", "mjpeg", "yuvj420p", None),
    ("mpeg4.avi", "mpeg4", "yuv420p", 6),
    ("h264.mp4", "libx264", "yuv420p", 6),
]


# ----------------------------------------------------------------------------------------------- reader


def test_lossless_avi_loads_as_an_rgb_cine_with_the_square_moving(tmp_path):
    path = write_video(tmp_path / "echo.avi")
    rec = load(path)
    assert rec.axes == ("frame", "y", "x", "channel") and rec.shape == (N, H, W, 3) and rec.dtype == np.uint8
    assert rec.meta.frame_time_ms == pytest.approx(20.0)  # 50 fps
    assert rec.modality == "VIDEO" and rec.meta.source.format == "AVI" and rec.meta.extra["codec"] == "ffv1"
    np.testing.assert_array_equal(_left_edges(rec.array), X0 + SPEED * np.arange(N))
    np.testing.assert_array_equal(rec.array, np.stack([_frame(i) for i in range(N)]))  # lossless: every pixel
    summary = info(path)  # `medssl info`: every frame decoded, one kept
    assert summary["frames"] == N and summary["frame_time_ms"] == pytest.approx(20.0)


@pytest.mark.parametrize(("name", "codec", "pix_fmt", "gop"), CODECS[1:])
def test_lossy_videos_keep_the_motion(tmp_path, name, codec, pix_fmt, gop):
    rec = load(write_video(tmp_path / name, codec, pix_fmt, gop=gop))
    assert rec.shape == (N, H, W, 3) and rec.dtype == np.uint8
    np.testing.assert_allclose(np.diff(_centroids_x(rec.array)), SPEED, atol=0.3)
    grey = rec.array.astype(int)
    assert np.abs(grey[..., 0] - grey[..., 2]).max() <= 6  # grey data stays grey after YUV -> RGB


def test_grey_stream_has_no_channel_axis(tmp_path):
    rec = load(write_video(tmp_path / "grey.avi", "ffv1", "gray"))
    assert rec.axes == ("frame", "y", "x") and rec.shape == (N, H, W)
    np.testing.assert_array_equal(_left_edges(rec.array[..., None]), X0 + SPEED * np.arange(N))


@pytest.mark.parametrize(("name", "codec", "pix_fmt", "gop"), CODECS)
@pytest.mark.parametrize(("start", "count", "stride"), [(7, 5, 2), (13, 4, 1), (0, 3, 3), (18, 5, 1)])
def test_clip_from_the_middle_equals_the_full_load(tmp_path, name, codec, pix_fmt, gop, start, count, stride):
    path = write_video(tmp_path / name, codec, pix_fmt, gop=gop)
    full = load(path).array
    clip = read_video_frames(path, start, count, stride)
    want = full[start : start + count * stride : stride][:count]  # fewer at the end of the video
    assert clip.shape == want.shape
    np.testing.assert_array_equal(clip.array, want)
    assert clip.meta.frame_time_ms == pytest.approx(20.0 * stride)


def test_a_clip_decodes_from_the_key_frame_before_it_not_from_the_start(tmp_path, monkeypatch):
    path = write_video(tmp_path / "long.avi", "mpeg4", "yuv420p", n=60, gop=10, w=96, speed=1)
    assert video_info(path).frames == 60
    decoded: list[int] = []
    converted: list[int] = []
    real_decoded, real_to_array = video_mod._decoded, video_mod._to_array

    def counting_decoded(*args, **kwargs):
        for idx, frame in real_decoded(*args, **kwargs):
            decoded.append(idx)
            yield idx, frame

    def counting_to_array(*args, **kwargs):
        converted.append(1)
        return real_to_array(*args, **kwargs)

    monkeypatch.setattr(video_mod, "_decoded", counting_decoded)
    monkeypatch.setattr(video_mod, "_to_array", counting_to_array)
    clip = read_video_frames(path, 45, 4, 2)  # frames 45, 47, 49, 51; key frames every 10
    np.testing.assert_allclose(_centroids_x(clip.array), X0 + SIDE / 2 - 0.5 + np.array([45, 47, 49, 51]), atol=0.3)
    assert decoded[0] == 40 and decoded[-1] == 51 and len(decoded) == 12
    assert len(converted) == 4  # only the kept frames become RGB arrays


def test_garbage_truncated_and_out_of_range_videos_raise_input_error(tmp_path):
    garbage = tmp_path / "garbage.avi"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    good = write_video(tmp_path / "good.avi", "mjpeg", "yuvj420p")
    data = good.read_bytes()
    truncated = tmp_path / "truncated.avi"
    truncated.write_bytes(data[: len(data) // 2])
    header_only = tmp_path / "header_only.mp4"
    header_only.write_bytes(write_video(tmp_path / "x.mp4", "libx264", "yuv420p").read_bytes()[:200])
    for bad in (garbage, truncated, header_only):
        for reader in (load, info, lambda p: read_video_frames(p, 15, 3)):
            with pytest.raises(InputError) as err:
                reader(bad)
            assert bad.name in str(err.value) and err.value.reason
            assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="truncated"):
        load(truncated)
    assert read_video_frames(truncated, 2, 3).shape == (3, H, W, 3)  # a clip in the intact part still streams
    with pytest.raises(InputError, match="beyond the last frame"):
        read_video_frames(good, N + 5, 2)
    with pytest.raises(ValueError):
        read_video_frames(good, 0, 2, stride=0)


def test_medssl_io_import_stays_light():
    code = "import sys, medssl.io; assert 'av' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ----------------------------------------------------------------------------------------------- US bundle


@pytest.fixture()
def echonet(tmp_path):
    """An EchoNet-Dynamic-like folder: ``Videos/*.avi`` (112 x 112, 50 fps) beside ``FileList.csv``."""
    root = tmp_path / "EchoNet-Dynamic"
    (root / "Videos").mkdir(parents=True)
    (root / "FileList.csv").write_text("FileName,EF\n0X1,55\n0X2,60\n0X3,40\n")
    for k in range(3):
        write_video(root / "Videos" / f"0X{k + 1}.avi", "mpeg4", "yuv420p", n=30, gop=8, h=112, w=112, speed=2)
    return root


def test_us_clip_dataset_streams_clips_from_an_avi_folder(us, echonet, monkeypatch):
    entries = us.pretraining_entries(echonet)
    assert {Path(e["image"]).name for e in entries} == {"0X1.avi", "0X2.avi", "0X3.avi"}  # CSV left out
    listed = json.dumps({"training": [{"image": "Videos/0X2.avi"}]})
    (echonet / "datalist.json").write_text(listed)
    assert us.pretraining_entries(echonet / "datalist.json")[0]["image"] == str(echonet / "Videos" / "0X2.avi")

    def no_whole_file(path):
        raise AssertionError(f"{path} decoded whole")

    monkeypatch.setattr(us, "load_channel_first", no_whole_file)
    monkeypatch.setattr(us, "_grey_cthw", no_whole_file)
    ds = us.USClipDataset(entries, num_frames=4, stride=3, size=32, random_clip=False)
    item = ds[0]
    assert set(item) == {"image"}
    clip = item["image"]
    assert tuple(clip.shape) == (1, 4, 32, 32) and torch.isfinite(clip).all()
    assert abs(float(clip[0, 0].mean())) < 1e-4  # z-scored per frame
    xs = (clip[0].clamp_min(0) * torch.arange(32.0)).sum((-2, -1)) / clip[0].clamp_min(0).sum((-2, -1))
    assert bool((xs.diff() > 0).all()), xs  # the square moves right from frame to frame of the clip
    assert ds._video_frames == {str(echonet / "Videos" / "0X1.avi"): 30} and not ds._lru
    short = us.USClipDataset([{"image": str(echonet / "Videos" / "0X3.avi")}], num_frames=8, stride=5, size=32)
    held = short[0]["image"]  # 30 frames < span 36: the last frame is held
    assert tuple(held.shape) == (1, 8, 32, 32) and torch.equal(held[:, -1], held[:, -2])


def test_us_pretraining_on_an_avi_folder_with_workers(us, echonet, tmp_path):
    torch.manual_seed(0)
    hist = us.pretrain(echonet / "Videos", tmp_path / "pre", max_steps=2, batch_size=2, img_size=32, num_frames=4,
                       stride=2, device="cpu", num_workers=2, depth=1, hidden_size=48, log_every=1)
    assert Path(hist["encoder"]).is_file()
    meta = json.loads((tmp_path / "pre" / "encoder.json").read_text())
    assert meta["n_entries"] == 3 * 4  # 3 videos, each listed 4 times
