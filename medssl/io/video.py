"""Video files (AVI, MP4, MOV, ...) through PyAV (FFmpeg), e.g. EchoNet-Dynamic echo cines.

Frames come back like a DICOM cine: ``uint8`` ``(frame, y, x, channel)`` RGB (``(frame, y, x)`` for a grey
stream), with ``frame_time_ms`` from the stream's frame rate. Colour video (YUV) is converted to RGB by
FFmpeg; echo videos are grey data stored as colour, and the datasets turn them into one BT.601 luma channel
as they do RGB DICOM cines.

:func:`read_video_frames` decodes only what a clip needs: it seeks to the key frame before the clip's first
frame, decodes up to its last frame and converts only the frames it keeps. PyAV is imported inside the
functions, so importing :mod:`medssl.io` stays light.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from medssl.errors import InputError
from medssl.io._checks import check_path, reader_errors, short_reason
from medssl.io.record import Record, RecordMeta, SourceInfo

__all__ = ["VIDEO_SUFFIXES", "VideoInfo", "video_info", "read_video", "read_video_frames"]

#: File name endings read as video.
VIDEO_SUFFIXES = (".avi", ".mp4", ".mov", ".m4v", ".mkv", ".webm")

_GREY_FORMATS = {"gray": ("gray", np.uint8), "gray8": ("gray", np.uint8), "gray16le": ("gray16le", np.uint16),
                 "gray16be": ("gray16le", np.uint16), "gray10le": ("gray16le", np.uint16),
                 "gray12le": ("gray16le", np.uint16)}


@dataclass(frozen=True)
class VideoInfo:
    """What a video holds, read from its headers (and, when they do not say, by counting packets).

    Attributes:
        frames: number of frames.
        height: frame height in pixels.
        width: frame width in pixels.
        fps: frames per second (``None`` when the file does not say).
        codec: codec name, e.g. ``"mpeg4"``, ``"h264"``, ``"mjpeg"``.
        pix_fmt: the stored pixel format, e.g. ``"yuv420p"``.
        container: the container format, e.g. ``"AVI"``, ``"MP4"``.
    """

    frames: int
    height: int
    width: int
    fps: float | None
    codec: str
    pix_fmt: str | None
    container: str


def _open(path: Path) -> tuple[Any, Any]:
    """``(container, video stream)``; InputError when FFmpeg cannot open it or it has no video stream."""
    import av

    check_path(path)
    if path.is_dir():
        raise InputError(path, "a folder, not a video file")
    try:
        container = av.open(os.fspath(path), metadata_errors="ignore")
    except Exception as exc:  # noqa: BLE001 - FFmpeg's errors (av.FFmpegError, OSError) become one line
        reason = getattr(exc, "strerror", None) or short_reason(exc)
        raise InputError(path, f"not a readable video: {reason}") from None
    if not container.streams.video:
        container.close()
        raise InputError(path, "no video stream in the file")
    return container, container.streams.video[0]


@contextlib.contextmanager
def _av_errors(path: Path, what: str) -> Iterator[None]:
    """FFmpeg's errors as ``InputError(path, what: <FFmpeg's reason>)``; others as :func:`reader_errors`."""
    import av

    with reader_errors(path, what):
        try:
            yield
        except av.FFmpegError as exc:
            if not getattr(exc, "strerror", None):
                raise
            raise InputError(path, f"{what}: {exc.strerror}") from exc


def _rate(stream: Any) -> Fraction | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return Fraction(rate)
    return None


def _container_name(container: Any, path: Path) -> str:
    name = str(getattr(container.format, "name", "") or "").split(",")[0]
    names = {"avi": "AVI", "mov": "MP4/MOV", "matroska": "Matroska", "webm": "WebM"}
    return names.get(name, name.upper() or path.suffix[1:].upper())


def _count_packets(container: Any, stream: Any) -> int:
    """Frames of a stream whose header does not say, by demuxing (no decoding)."""
    n = 0
    for packet in container.demux(stream):
        if packet.size:
            n += 1
    return n


def video_info(path: str | os.PathLike[str]) -> VideoInfo:
    """Frame count, size and frame rate of a video without decoding its frames.

    Args:
        path: the video file.

    Returns:
        The :class:`VideoInfo`.

    Raises:
        InputError: the file is missing, not a video, or has no video stream.
    """
    p = Path(path)
    container, stream = _open(p)
    with _av_errors(p, "cannot read video"), container:
        cc = stream.codec_context
        frames = int(stream.frames or 0) or _count_packets(container, stream)
        rate = _rate(stream)
        return VideoInfo(
            frames=frames, height=int(cc.height), width=int(cc.width), fps=float(rate) if rate else None,
            codec=str(cc.name), pix_fmt=str(cc.pix_fmt) if cc.pix_fmt else None,
            container=_container_name(container, p),
        )


def _frame_index(frame: Any, stream: Any, rate: Fraction | None) -> int | None:
    """The index of a decoded frame from its timestamp (``None`` when it cannot be known)."""
    pts = frame.pts
    if pts is None or rate is None or stream.time_base is None:
        return None
    t0 = stream.start_time or 0
    return round((pts - t0) * stream.time_base * rate)


def _decoded(container: Any, stream: Any, start: int) -> Iterator[tuple[int, Any]]:
    """``(index, frame)`` from frame ``start`` on: after a seek to the key frame before it when possible.

    The seek is trusted only when the first frame after it carries a timestamp that places it at or before
    ``start``; otherwise decoding restarts from the beginning, counting frames.
    """
    rate = _rate(stream)
    if start > 0 and rate is not None and stream.time_base is not None:
        target = (stream.start_time or 0) + int(Fraction(start) / rate / stream.time_base)
        try:
            container.seek(target, stream=stream, backward=True, any_frame=False)
        except Exception:  # noqa: BLE001 - an unseekable file is read from the start
            pass
        else:
            frames = container.decode(stream)
            first = next(frames, None)
            idx = None if first is None else _frame_index(first, stream, rate)
            if first is not None and idx is not None and idx <= start:
                yield idx, first
                for frame in frames:
                    nxt = _frame_index(frame, stream, rate)
                    idx = idx + 1 if nxt is None or nxt <= idx else nxt
                    yield idx, frame
                return
            container.seek(0, backward=True, any_frame=False)
    for i, frame in enumerate(container.decode(stream)):
        yield i, frame


def _to_array(frame: Any, grey: tuple[str, Any] | None) -> np.ndarray:
    if grey is not None:
        return np.asarray(frame.to_ndarray(format=grey[0]), dtype=grey[1])
    return frame.to_ndarray(format="rgb24")


def _read(
    path: Path, start: int, count: int | None, stride: int, probe: bool = False
) -> tuple[np.ndarray, int, VideoInfo, list[str]]:
    """Frames ``start, start + stride, ...`` (at most ``count``): array, frames decoded, info, notes."""
    if start < 0 or stride < 1 or (count is not None and count < 1):
        raise ValueError(f"need start >= 0, stride >= 1, count >= 1 or None; got {start}, {stride}, {count}.")
    import av

    container, stream = _open(path)
    with _av_errors(path, "cannot decode video"), container:
        cc = stream.codec_context
        pix_fmt = str(cc.pix_fmt) if cc.pix_fmt else None
        grey = _GREY_FORMATS.get(pix_fmt or "")
        rate = _rate(stream)
        info = VideoInfo(
            frames=int(stream.frames or 0), height=int(cc.height), width=int(cc.width),
            fps=float(rate) if rate else None, codec=str(cc.name), pix_fmt=pix_fmt,
            container=_container_name(container, path),
        )
        last = None if count is None else start + (count - 1) * stride
        kept: list[np.ndarray] = []
        seen = 0
        try:
            for idx, frame in _decoded(container, stream, start):
                seen = max(seen, idx + 1)
                if idx < start or (idx - start) % stride:
                    continue
                if last is not None and idx > last:
                    break
                if not probe or not kept:  # probe: every frame is decoded (the file is whole), the first kept
                    kept.append(_to_array(frame, grey))
                if last is not None and idx >= last:
                    break
        except av.FFmpegError as exc:
            if not seen:
                raise
            reason = getattr(exc, "strerror", None) or short_reason(exc)
            reason = f"decoding stopped after {seen} frames ({reason})"
            raise InputError(path, f"truncated or corrupt video: {reason}") from exc
    if not kept:
        if seen:
            raise InputError(path, f"start frame {start} lies beyond the last frame ({seen} frames)")
        raise InputError(path, "no decodable video frames")
    notes = [] if grey is not None or pix_fmt in ("rgb24",) else [f"{pix_fmt} converted to RGB"]
    return np.stack(kept), seen, info, notes


def _record(path: Path, arr: np.ndarray, info: VideoInfo, notes: list[str], stride: int,
            extra: dict[str, Any]) -> Record:
    axes: tuple[str, ...] = ("frame", "y", "x") + (("channel",) if arr.ndim == 4 else ())
    meta = RecordMeta(
        modality="VIDEO",  # a video file does not record the modality
        axes=axes,
        shape=tuple(arr.shape),
        dtype=str(arr.dtype),
        source=SourceInfo(format=info.container, photometric=info.pix_fmt, notes=tuple(notes)),
        frame_time_ms=1000.0 * stride / info.fps if info.fps else None,
        extra={"codec": info.codec, "fps": info.fps, **extra},
    )
    return Record(arr, meta)


def read_video(path: str | os.PathLike[str], probe: bool = False) -> Record:
    """Load every frame of a video (AVI, MP4, MOV, MKV, WebM) into a Record.

    Args:
        path: the video file.
        probe: for ``medssl info``: decode every frame (proving the file is whole) but keep only the first;
            the array is then a read-only broadcast view of it with the full shape.

    Returns:
        ``uint8`` frames ``(frame, y, x, channel)`` RGB, or ``(frame, y, x)`` for a grey stream
        (``uint16`` for a deep grey one); ``meta.frame_time_ms`` from the frame rate; ``meta.extra`` has
        ``codec`` and ``fps``.

    Raises:
        InputError: the file cannot be opened or decoded, has no video stream, or holds fewer frames than
            its header declares (truncated).
    """
    p = Path(path)
    arr, seen, info, notes = _read(p, 0, None, 1, probe=probe)
    if info.frames and seen < info.frames:
        raise InputError(p, f"truncated video: {seen} of the {info.frames} frames in its header are decodable")
    extra: dict[str, Any] = {}
    if probe:
        arr = np.broadcast_to(arr[:1], (seen,) + arr.shape[1:])
        extra["pixels"] = f"probe: {seen} frames decoded, the first kept"
    return _record(p, arr, info, notes, 1, extra)


def read_video_frames(
    path: str | os.PathLike[str], start: int = 0, count: int | None = None, stride: int = 1
) -> Record:
    """Frames ``start, start + stride, ...`` of a video, decoding only up to the last of them.

    The reader seeks to the key frame before ``start`` (frame indices from the timestamps; when a file's
    timestamps cannot be trusted it decodes from the beginning) and stops after the last frame wanted, so a
    clip costs about its own length, not the whole file. Only kept frames are converted to RGB.

    Args:
        path: the video file.
        start: index of the first frame (0-based).
        count: frames to return; ``None``: up to the end. Fewer come back when the video ends first.
        stride: step between returned frames.

    Returns:
        A Record laid out as :func:`read_video` returns (``frame_time_ms`` is the time between the returned
        frames); ``meta.extra`` adds ``start`` and ``stride``.

    Raises:
        InputError: as :func:`read_video`, or ``start`` lies beyond the last frame.
        ValueError: ``start < 0``, ``stride < 1`` or ``count < 1``.
    """
    p = Path(path)
    arr, _, info, notes = _read(p, int(start), None if count is None else int(count), int(stride))
    return _record(p, arr, info, notes, int(stride), {"start": int(start), "stride": int(stride)})
