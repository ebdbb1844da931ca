"""Codecs: the one table of what this project writes and what each decoder reads.

Codec names are the ones :func:`pipelines.probe.probe_video` reports, made canonical by
:func:`canonical_codec` (FFmpeg may name a stream after its decoder, e.g. ``libdav1d`` for AV1).

- ``WRITERS``: codecs :func:`pipelines.video_io.write_video` encodes (PyAV encoder, container, suffix), and
  ``WRITTEN_FORMAT`` the stream format each one produces (profile, pixel format, bit depth, chroma).
- ``DALI_CPU_CODECS``: what ``fn.decoders.video(device="cpu")`` reads in the PyPI DALI wheel (VP8, VP9,
  MJPEG).
- ``DALI_GPU_CODECS``: what ``fn.decoders.video(device="mixed")`` hands to NVDEC.
- ``NVDEC``: what NVDEC decodes, per codec and GPU generation: chroma formats, bit depths, H.264 profiles,
  minimum and maximum frame size. :func:`why_not_decodable` checks a probed video against it;
  :func:`gpu_arch` names the generation of a compute capability.

Sources (checked 2026; the table keeps to what NVIDIA documents, so a video it accepts decodes):

- NVDEC Application Note, Video Codec SDK 13.0, "NVDEC Hardware Capabilities"
  (https://docs.nvidia.com/video-technologies/video-codec-sdk/13.0/nvdec-application-note/index.html):
  which generation decodes which codec/profile. Its columns are 1st-gen Maxwell, 2nd-gen Maxwell,
  Pascal, Volta, "Turing / GA100 / Hopper", "GA10x and Ada" (GA10x = every Ampere GPU except GA100) and
  "Blackwell / Jetson Thor". So: AV1 Main only on GA10x, Ada and Blackwell (not on the A100 = GA100, not
  on Hopper H100/H200); H.264 High10/High422 and 8192x8192 H.264, and HEVC 4:2:2, only on Blackwell;
  HEVC 4:4:4 from Turing on; VP8 from 2nd-gen Maxwell (Pascal: "select GPUs" only); VP9 Profile 0 and
  8192x8192 HEVC/VP9 from Pascal ("select GPUs" on 2nd-gen Maxwell / Pascal).
- NVDECODE API Programming Guide, Video Codec SDK 13.0, "Video Decoder Capabilities"
  (https://docs.nvidia.com/video-technologies/video-codec-sdk/13.0/nvdec-video-decoder-api-prog-guide/index.html):
  per-codec limits: H.264, VP8, MPEG-4 min 48x16; HEVC min 144x144; VP9 and AV1 min 128x128; H.264 and
  VP8 max 4096x4096; MPEG-4 max 2032x2032; HEVC, VP9, AV1 max 8192x8192.
- DALI ``fn.decoders.video`` documentation
  (https://docs.nvidia.com/deeplearning/dali/main-user-guide/docs/operations/nvidia.dali.fn.decoders.video.html):
  the mixed backend reads H.264, HEVC, VP8, VP9, MJPEG, AV1, MPEG-4. DALI asks the driver
  (``cuvidGetDecoderCaps``) for the same limits and refuses a video outside them ("Video is too small in
  at least one dimension", "Codec configuration not supported on this GPU"): NVIDIA/DALI
  ``dali/operators/video/frames_decoder_gpu.cc``, ``NVDECCache::GetDecoder``.

NOTE: entries marked "select GPUs" in NVIDIA's table are left out here (a check that passes must mean the
video decodes); MJPEG is absent from NVIDIA's NVDEC capability table, so no generation is listed for it
(DALI maps it to ``cudaVideoCodec_JPEG`` and leaves the answer to the driver): transcode MJPEG to H.264
for the GPU path.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union

# our codec name -> (PyAV encoder, container format, file suffix)
WRITERS = {
    "vp9": ("libvpx-vp9", "webm", ".webm"),
    "vp8": ("libvpx", "webm", ".webm"),
    "h264": ("libx264", "mp4", ".mp4"),
    "mjpeg": ("mjpeg", "avi", ".avi"),
}

# what write_video produces per codec (as probe_video reports it): 8-bit 4:2:0 everywhere, H.264 in the
# High profile (never High 4:4:4 Predictive, which NVDEC does not decode)
WRITTEN_FORMAT = {
    "vp9": {"profile": "Profile 0", "pix_fmt": "yuv420p", "bit_depth": 8, "chroma": "420"},
    "vp8": {"profile": None, "pix_fmt": "yuv420p", "bit_depth": 8, "chroma": "420"},
    "h264": {"profile": "High", "pix_fmt": "yuv420p", "bit_depth": 8, "chroma": "420"},
    "mjpeg": {"profile": "Baseline", "pix_fmt": "yuvj420p", "bit_depth": 8, "chroma": "420"},
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
# MJPEG), subject to what the GPU's NVDEC supports (NVDEC below)
DALI_GPU_CODECS = frozenset({"vp8", "vp9", "mjpeg", "av1", "mpeg4", "h264", "hevc"})

# GPU generations, oldest first, as the NVDEC application note's columns split them
ARCHS = ("maxwell1", "maxwell2", "pascal", "volta", "turing", "ga100", "hopper", "ga10x", "ada", "blackwell")
ARCH_NAMES = {
    "maxwell1": "1st-gen Maxwell (GM10x)", "maxwell2": "2nd-gen Maxwell (GM20x)", "pascal": "Pascal",
    "volta": "Volta", "turing": "Turing", "ga100": "Ampere GA100 (A100)", "hopper": "Hopper (H100/H200)",
    "ga10x": "Ampere GA10x (A10, A40, RTX 30)", "ada": "Ada (L4, L40, RTX 40)",
    "blackwell": "Blackwell (B200, RTX 50)",
}
# other names a user may give for a generation (product names, chips)
_ARCH_ALIASES = {
    "a100": "ga100", "a30": "ga100", "ampere-ga100": "ga100",
    "h100": "hopper", "h200": "hopper", "h800": "hopper", "gh100": "hopper", "gh200": "hopper",
    "a10": "ga10x", "a10g": "ga10x", "a40": "ga10x", "a6000": "ga10x", "rtx3090": "ga10x", "ampere-ga10x": "ga10x",
    "l4": "ada", "l40": "ada", "l40s": "ada", "rtx4090": "ada", "ad10x": "ada",
    "b100": "blackwell", "b200": "blackwell", "gb200": "blackwell", "b300": "blackwell", "rtx5090": "blackwell",
    "gb100": "blackwell", "gb20x": "blackwell", "thor": "blackwell",
    "v100": "volta", "gv100": "volta", "t4": "turing", "tu10x": "turing", "p100": "pascal", "gp100": "pascal",
    "gp10x": "pascal", "maxwell": "maxwell2",
}

_H264_PROFILES = frozenset({"Baseline", "Constrained Baseline", "Main", "High"})
# NOTE: libx264's lossless mode (qp 0) writes "High 4:4:4 Predictive" even for 4:2:0 8-bit frames; no NVDEC
# generation decodes that profile, so the H.264 check looks at the profile, not only chroma and bit depth.
_H264_BLACKWELL_PROFILES = _H264_PROFILES | {"High 10", "High 4:2:2"}


@dataclass(frozen=True)
class NvdecLimits:
    """What one GPU generation's NVDEC decodes of one codec."""

    chroma: frozenset            # e.g. {"420"}
    bit_depths: frozenset        # e.g. {8}
    min_size: tuple[int, int]    # (width, height)
    max_size: tuple[int, int]
    profiles: Optional[frozenset] = None  # names as FFmpeg reports them; None: chroma + bit depth decide

    def describe(self) -> str:
        chroma = "/".join(f"4:{c[1]}:{c[2]}" for c in sorted(self.chroma))
        depths = "/".join(str(d) for d in sorted(self.bit_depths))
        return (f"{chroma} {depths}-bit, {self.min_size[0]}x{self.min_size[1]} to "
                f"{self.max_size[0]}x{self.max_size[1]}")


def _limits(chroma, depths, min_size, max_size, profiles=None) -> NvdecLimits:
    return NvdecLimits(frozenset(chroma), frozenset(depths), min_size, max_size,
                       frozenset(profiles) if profiles is not None else None)


def _table() -> dict[str, dict[str, NvdecLimits]]:
    """codec -> arch -> limits (an arch missing from a codec's dict does not decode it)."""
    after = lambda first: ARCHS[ARCHS.index(first):]  # noqa: E731 - this generation and the newer ones
    h264 = {arch: _limits({"420"}, {8}, (48, 16), (4096, 4096), _H264_PROFILES) for arch in ARCHS}
    h264["blackwell"] = _limits({"420", "422"}, {8, 10}, (48, 16), (8192, 8192), _H264_BLACKWELL_PROFILES)
    hevc = {"pascal": _limits({"420"}, {8, 10}, (144, 144), (4096, 2304)),  # 8192x8192: select Pascal GPUs
            "volta": _limits({"420"}, {8, 10}, (144, 144), (8192, 8192))}
    for arch in ("turing", "ga100", "hopper", "ga10x", "ada"):
        hevc[arch] = _limits({"420", "444"}, {8, 10, 12}, (144, 144), (8192, 8192))
    hevc["blackwell"] = _limits({"420", "422", "444"}, {8, 10, 12}, (144, 144), (8192, 8192))
    vp8 = {arch: _limits({"420"}, {8}, (48, 16), (4096, 4096)) for arch in after("maxwell2") if arch != "pascal"}
    vp9 = {arch: _limits({"420"}, {8}, (128, 128), (8192, 8192)) for arch in after("volta")}
    vp9["pascal"] = _limits({"420"}, {8}, (128, 128), (4096, 2304))  # 8192x8192: select Pascal GPUs
    av1 = {arch: _limits({"420"}, {8, 10}, (128, 128), (8192, 8192)) for arch in ("ga10x", "ada", "blackwell")}
    mpeg4 = {arch: _limits({"420"}, {8}, (48, 16), (2032, 2032)) for arch in ARCHS}
    return {"h264": h264, "hevc": hevc, "vp8": vp8, "vp9": vp9, "av1": av1, "mpeg4": mpeg4, "mjpeg": {}}


NVDEC: dict[str, dict[str, NvdecLimits]] = _table()


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
    """Whether DALI's video decoder in ``placement`` (``cpu`` or ``gpu``) reads ``codec`` at all (for the GPU,
    :func:`why_not_decodable` also checks the GPU generation, profile, chroma, bit depth and size)."""
    table = DALI_CPU_CODECS if placement == "cpu" else DALI_GPU_CODECS
    return canonical_codec(codec) in table


def gpu_arch(arch: Union[str, tuple[int, int], None]) -> str:
    """The generation key of ``arch``: a key of :data:`ARCHS`, a product or chip name (``"H100"``,
    ``"A100"``, ``"GA10x"``), or a compute capability (``(8, 0)`` or ``"8.6"``).

    Raises:
        ValueError: an unknown name or capability, naming the valid choices.
    """
    if isinstance(arch, tuple) or (isinstance(arch, str) and arch.replace(".", "", 1).isdigit() and "." in arch):
        major, minor = (arch if isinstance(arch, tuple) else tuple(int(x) for x in arch.split(".")))
        by_capability = {5: "maxwell2" if minor >= 2 else "maxwell1", 6: "pascal", 7: "turing" if minor >= 5 else "volta",
                         8: "ga100" if minor == 0 else ("ada" if minor == 9 else "ga10x"), 9: "hopper"}
        if major in by_capability:
            return by_capability[major]
        if major in (10, 11, 12):  # B100/B200 (10.0), B300 (10.3), Thor (11.0), RTX 50 / GB10 (12.x)
            return "blackwell"
        raise ValueError(f"compute capability {major}.{minor} is not in the NVDEC table (5.0-12.x); "
                         f"pass a generation from {list(ARCHS)}")
    key = str(arch or "").strip().lower().replace(" ", "").replace("nvidia", "")
    key = _ARCH_ALIASES.get(key, key)
    if key not in ARCHS:
        raise ValueError(f"GPU generation {arch!r} is unknown; choose one of {list(ARCHS)}, a product name "
                         f"(H100, A100, L4, ...) or a compute capability such as '9.0'")
    return key


def nvdec_limits(codec: str, arch: Union[str, tuple[int, int]]) -> Optional[NvdecLimits]:
    """What NVDEC on ``arch`` decodes of ``codec``; None when it does not decode that codec at all."""
    return NVDEC.get(canonical_codec(codec), {}).get(gpu_arch(arch))


def _field(video: Any, key: str) -> Any:
    if isinstance(video, Mapping):
        return video.get(key)
    value = getattr(video, key, None)
    if value is None:
        value = (getattr(video, "extra", None) or {}).get(key)
    return value


def why_not_decodable(video: Any, placement: str, arch: Union[str, tuple[int, int], None] = None) -> Optional[str]:
    """Why DALI cannot decode ``video`` in ``placement``, or None when it can.

    Args:
        video: a :class:`pipelines.dataset.VideoRecord` (``profile``, ``pix_fmt``, ``bit_depth``, ``chroma``
            in its ``extra``) or a dict with the keys :func:`pipelines.probe.probe_video` returns. Unknown
            (missing) profile, bit depth or chroma are not held against the video: older indexes lack them.
        placement: ``cpu`` (DALI's CPU decoder) or ``gpu`` (NVDEC through the mixed backend).
        arch: the GPU generation (see :func:`gpu_arch`); required for ``gpu``.

    Returns:
        a short reason such as ``"vp9 at 96x64 is below NVDEC's minimum 128x128"``, or None.
    """
    codec = canonical_codec(_field(video, "codec"))
    if placement == "cpu":
        return None if codec in DALI_CPU_CODECS else (
            f"DALI's CPU decoder reads only {'/'.join(sorted(DALI_CPU_CODECS))}, not {codec or 'an unknown codec'}")
    if placement != "gpu":
        raise ValueError(f"placement {placement!r} is unknown; choose 'cpu' or 'gpu'")
    if arch is None:
        raise ValueError("why_not_decodable(..., 'gpu') needs the GPU generation (arch)")
    key = gpu_arch(arch)
    if codec not in DALI_GPU_CODECS:
        return f"DALI's GPU decoder does not read {codec or 'an unknown codec'}"
    limits = NVDEC[codec].get(key)
    if limits is None:
        decoders = [ARCH_NAMES[a] for a in ARCHS if a in NVDEC[codec]]
        where = f"; it needs {', '.join(decoders)}" if decoders else " (not in NVIDIA's NVDEC capability table)"
        return f"{codec} is not decoded by NVDEC on {ARCH_NAMES[key]}{where}"
    profile = _field(video, "profile")
    if limits.profiles is not None and profile and profile not in limits.profiles:
        return (f"{codec} profile {profile!r} is not decoded by NVDEC on {ARCH_NAMES[key]} "
                f"(decodes {', '.join(sorted(limits.profiles))})")
    chroma = _field(video, "chroma")
    if chroma and str(chroma) not in limits.chroma:
        return f"{codec} with {chroma} chroma is not decoded by NVDEC on {ARCH_NAMES[key]} ({limits.describe()})"
    depth = _field(video, "bit_depth")
    if depth and int(depth) not in limits.bit_depths:
        return f"{int(depth)}-bit {codec} is not decoded by NVDEC on {ARCH_NAMES[key]} ({limits.describe()})"
    width, height = int(_field(video, "width") or 0), int(_field(video, "height") or 0)
    if width and height:
        (min_w, min_h), (max_w, max_h) = limits.min_size, limits.max_size
        if width < min_w or height < min_h:
            return f"{codec} at {width}x{height} is below NVDEC's minimum {min_w}x{min_h}"
        if width > max_w or height > max_h:
            return f"{codec} at {width}x{height} is above NVDEC's maximum {max_w}x{max_h} on {ARCH_NAMES[key]}"
    return None
