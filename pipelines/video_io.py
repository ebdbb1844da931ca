"""Writing video files with PyAV: the codecs this project uses and how to name them.

``write_video`` is what the synthetic-data generator, the transcoder and the tests use to produce
files; decoding lives with the loaders.
"""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from pipelines.codecs import writer
from utils.atomic import atomic_path

# NOTE: libx264's lossless mode (qp 0) can only be written as "High 4:4:4 Predictive" (with profile=high
# libx264 refuses: "high profile doesn't support lossless"), and no NVDEC generation decodes that profile
# (Video Codec SDK 13.0 NVDEC application note: H.264 Baseline, Main, High; High10/High422 on Blackwell).
# lossless=True with H.264 therefore writes qp 1 in the High profile, 4:2:0 8-bit: not bit-exact, but
# flat and smooth test frames come back within a grey level or two, and NVDEC decodes it.
H264_NEAR_LOSSLESS_QP = 1


def write_video(
    path: str | os.PathLike,
    frames: Iterable[np.ndarray],
    fps: float | Fraction = 30,
    codec: str = "vp9",
    keyframe_interval: Optional[int] = None,
    quality: Optional[int] = None,
    lossless: bool = False,
) -> Path:
    """Encode RGB uint8 frames (each H x W x 3, H and W even) to ``path``.

    Args:
        fps: frame rate; a Fraction such as ``Fraction(30000, 1001)`` keeps NTSC rates exact.
        codec: ``vp9`` (default, DALI CPU-decodable), ``vp8``, ``h264`` or ``mjpeg``.
        keyframe_interval: GOP length in frames (``None`` = the encoder's default).
        quality: CRF for vp9/h264 (lower = better), qscale for mjpeg.
        lossless: lossless VP9, for tests that compare pixels. With H.264 it means near-lossless: qp 1 in
            the High profile (true lossless H.264 is High 4:4:4 Predictive, which NVDEC cannot decode).

    H.264 is always written in the High profile, yuv420p, 8-bit (what every NVDEC generation decodes).

    The file is written to a temporary name and renamed, so a partial file never has the final name.
    """
    import av

    encoder, fmt, _ = writer(codec)
    path = Path(path)
    rate = fps if isinstance(fps, Fraction) else Fraction(fps).limit_denominator(1001)
    with atomic_path(path) as tmp:
        container = av.open(str(tmp), mode="w", format=fmt)
        try:
            _encode(container, frames, path, encoder, codec, rate, keyframe_interval, quality, lossless)
        finally:
            container.close()
    return path


def _encode(container, frames, path: Path, encoder: str, codec: str, rate: Fraction,
            keyframe_interval: Optional[int], quality: Optional[int], lossless: bool) -> None:
    """Encode ``frames`` into the open ``container`` (see :func:`write_video` for the arguments)."""
    import av

    stream = None
    for frame in frames:
        frame = np.ascontiguousarray(frame, dtype=np.uint8)
        if stream is None:
            height, width = frame.shape[:2]
            if height % 2 or width % 2:
                raise ValueError(f"frame size {width}x{height} must be even for yuv420p encoding")
            stream = container.add_stream(encoder, rate=rate)
            stream.width, stream.height = width, height
            stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
            options = {}
            if keyframe_interval:
                stream.codec_context.gop_size = int(keyframe_interval)
                if codec == "h264":
                    # NOTE: libx264 ignores unknown top-level options such as "keyint"; without
                    # x264-params its scene-cut detection inserted extra keyframes (0, 6, 12, 18, 25 for 8)
                    k = int(keyframe_interval)
                    options["x264-params"] = f"keyint={k}:min-keyint={k}:scenecut=0"
            if codec in ("vp9", "vp8"):
                options.update({"deadline": "realtime", "cpu-used": "8", "row-mt": "1"})
                if keyframe_interval:
                    options.update({"kf-min-dist": str(keyframe_interval),
                                    "kf-max-dist": str(keyframe_interval)})
                if lossless:
                    options["lossless"] = "1"
                elif quality is not None:
                    options.update({"crf": str(quality), "b": "0"})
            if codec == "h264":
                options.setdefault("preset", "veryfast")
                options["profile"] = "high"
                if lossless:
                    options["qp"] = str(H264_NEAR_LOSSLESS_QP)
                elif quality is not None:
                    options["crf"] = str(quality)
            if codec == "mjpeg" and quality is not None:
                stream.codec_context.qscale = int(quality)
            stream.options = options
        video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
        for packet in stream.encode(video_frame):
            container.mux(packet)
    if stream is None:
        raise ValueError(f"no frames given for {str(path)!r}")
    for packet in stream.encode():
        container.mux(packet)


def numbered_frames(num_frames: int, height: int = 64, width: int = 96) -> Iterable[np.ndarray]:
    """Frames whose content encodes their own index: frame ``i`` is flat grey at level ``4 * i % 256``
    in the left half and ``(4 * i // 256) * 32`` in the right half (so up to 2048 frames stay distinct).

    Decoded with a near-lossless codec, ``frame_number(pixels)`` recovers ``i`` exactly.
    """
    for i in range(num_frames):
        frame = np.empty((height, width, 3), dtype=np.uint8)
        frame[:, : width // 2] = (4 * i) % 256
        frame[:, width // 2:] = ((4 * i) // 256) * 32
        yield frame


def frame_number(frame: np.ndarray) -> int:
    """Inverse of :func:`numbered_frames` on an (H, W, 3) uint8 frame (tolerates codec noise < 2 levels)."""
    height, width = frame.shape[:2]
    left = float(frame[height // 4: 3 * height // 4, width // 8: 3 * width // 8].astype(np.float64).mean())
    right = float(frame[height // 4: 3 * height // 4, 5 * width // 8: 7 * width // 8].astype(np.float64).mean())
    return int(round(right / 32)) * 64 + int(round(left / 4)) % 64
