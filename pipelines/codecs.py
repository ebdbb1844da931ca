"""Codecs: the one table of what this project writes and what each decoder reads.

Codec names are the ones :func:`pipelines.probe.probe_video` reports, made canonical by
:func:`canonical_codec` (FFmpeg may name a stream after its decoder, e.g. ``libdav1d`` for AV1).

- ``WRITERS``: codecs :func:`pipelines.video_io.write_video` encodes (PyAV encoder, container, suffix).
- ``DALI_CPU_CODECS``: what ``fn.decoders.video(device="cpu")`` reads (DALI's CPU decoder: VP8, VP9,
  MJPEG).
- ``DALI_GPU_CODECS``: what ``fn.decoders.video(device="mixed")`` reads through NVDEC.
"""
from __future__ import annotations

# our codec name -> (PyAV encoder, container format, file suffix)
WRITERS = {
    "vp9": ("libvpx-vp9", "webm", ".webm"),
    "vp8": ("libvpx", "webm", ".webm"),
    "h264": ("libx264", "mp4", ".mp4"),
    "mjpeg": ("mjpeg", "avi", ".avi"),
}

# FFmpeg decoder / alternative names -> the canonical codec name
_ALIASES = {
    "libdav1d": "av1", "libaom-av1": "av1", "av1_cuvid": "av1", "av1_qsv": "av1",
    "h265": "hevc", "hevc_cuvid": "hevc",
    "avc": "h264", "h264_cuvid": "h264",
    "libvpx": "vp8", "libvpx-vp8": "vp8", "vp8_cuvid": "vp8",
    "libvpx-vp9": "vp9", "vp9_cuvid": "vp9",
    "mpeg4_cuvid": "mpeg4",
    "mjpeg_cuvid": "mjpeg",
}

# what DALI's CPU video decoder reads; everything else needs the GPU (mixed) backend
DALI_CPU_CODECS = frozenset({"vp8", "vp9", "mjpeg"})
# what fn.decoders.video(device="mixed") reads (DALI's documentation: H.264, H.265, VP8, VP9, AV1, MPEG-4,
# MJPEG), subject to what the GPU's NVDEC supports
DALI_GPU_CODECS = frozenset({"vp8", "vp9", "mjpeg", "av1", "mpeg4", "h264", "hevc"})


def canonical_codec(name: str | None) -> str:
    """The canonical name of a codec as FFmpeg/PyAV reports it: ``libdav1d`` -> ``av1``, ``h265`` -> ``hevc``."""
    if not name:
        return ""
    name = str(name).strip().lower()
    return _ALIASES.get(name, name)


def writer(codec: str) -> tuple[str, str, str]:
    """``(encoder, container format, suffix)`` for writing ``codec``; ValueError naming the choices."""
    if codec not in WRITERS:
        raise ValueError(f"codec {codec!r} is not supported for writing; choose one of {sorted(WRITERS)}")
    return WRITERS[codec]


def codec_suffix(codec: str) -> str:
    """The file suffix this project gives videos in ``codec`` (``.webm`` for VP9)."""
    return writer(codec)[2]


def dali_reads(codec: str, placement: str) -> bool:
    """Whether DALI's video decoder in ``placement`` (``cpu`` or ``gpu``) reads ``codec``."""
    table = DALI_CPU_CODECS if placement == "cpu" else DALI_GPU_CODECS
    return canonical_codec(codec) in table
