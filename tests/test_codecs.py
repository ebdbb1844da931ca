"""The codec table: names, DALI placements, and NVDEC's capabilities per GPU generation.

Expectations are written by hand from NVIDIA's documents, not from the table:
- NVDEC Application Note (Video Codec SDK 13.0), "NVDEC Hardware Capabilities": AV1 Main only on "GA10x and
  Ada" and "Blackwell" (the column "Turing / GA100 / Hopper" says N); H.264 High10/High422 and 8192x8192
  only on Blackwell; HEVC 4:4:4 from Turing; HEVC main 4:2:2 only on Blackwell; VP8 not on 1st-gen Maxwell.
- NVDECODE Programming Guide (SDK 13.0), "Video Decoder Capabilities": minimum sizes H.264 48x16, HEVC
  144x144, VP9 and AV1 128x128; maximum H.264 4096x4096 (before Blackwell), VP9/AV1/HEVC 8192x8192.
- Compute capabilities (CUDA C Programming Guide): A100 8.0, A10/RTX 30 8.6, L4/RTX 40 8.9, H100/H200 9.0,
  B200 10.0, RTX 50 12.0, T4 7.5, V100 7.0.
"""
from __future__ import annotations

import pytest

from pipelines.codecs import (DALI_CPU_CODECS, DALI_GPU_CODECS, WRITERS, canonical_codec, codec_suffix, dali_reads,
                              gpu_arch, nvdec_limits, why_not_decodable, writer)
from pipelines.dataset import VideoRecord


def video(codec="h264", width=340, height=256, profile=None, bit_depth=8, chroma="420", **extra):
    return {"codec": codec, "width": width, "height": height, "profile": profile, "bit_depth": bit_depth,
            "chroma": chroma, **extra}


def test_existing_names_still_work():
    assert writer("vp9") == ("libvpx-vp9", "webm", ".webm") and codec_suffix("h264") == ".mp4"
    assert set(WRITERS) == {"vp9", "vp8", "h264", "mjpeg"}
    assert DALI_CPU_CODECS == {"vp8", "vp9", "mjpeg"}
    assert {"h264", "hevc", "av1", "vp9"} <= DALI_GPU_CODECS
    assert dali_reads("libvpx-vp9", "cpu") and not dali_reads("h264", "cpu") and dali_reads("h264", "gpu")
    with pytest.raises(ValueError, match="choose one of"):
        writer("prores")


@pytest.mark.parametrize("name, canonical", [("libdav1d", "av1"), ("libaom-av1", "av1"), ("h265", "hevc"),
                                             ("AVC", "h264"), ("libvpx", "vp8"), ("h264", "h264"), (None, "")])
def test_canonical_codec(name, canonical):
    assert canonical_codec(name) == canonical


@pytest.mark.parametrize("arch, key", [((8, 0), "ga100"), ("8.6", "ga10x"), ((8, 9), "ada"), ((9, 0), "hopper"),
                                       ((10, 0), "blackwell"), ((12, 0), "blackwell"), ((7, 5), "turing"),
                                       ((7, 0), "volta"), ((6, 1), "pascal"), ("H100", "hopper"),
                                       ("NVIDIA H200", "hopper"), ("A100", "ga100"), ("L4", "ada"),
                                       ("hopper", "hopper")])
def test_gpu_arch_names(arch, key):
    assert gpu_arch(arch) == key


def test_unknown_arch_names_the_choices():
    with pytest.raises(ValueError, match="GPU generation 'voodoo2' is unknown; choose one of"):
        gpu_arch("voodoo2")
    with pytest.raises(ValueError, match="compute capability 3.5"):
        gpu_arch((3, 5))


@pytest.mark.parametrize("arch, decodes", [("ga10x", True), ("ada", True), ("blackwell", True), ("ga100", False),
                                           ("hopper", False), ("turing", False), ("volta", False)])
def test_av1_needs_ga10x_ada_or_blackwell(arch, decodes):
    reason = why_not_decodable(video("libdav1d", 1280, 720), "gpu", arch)
    assert (reason is None) == decodes, reason
    if not decodes:
        assert "av1 is not decoded by NVDEC" in reason and "Ampere GA10x" in reason


@pytest.mark.parametrize("arch", ["maxwell1", "pascal", "turing", "ga100", "hopper", "ga10x", "ada", "blackwell"])
def test_h264_high_420_8bit_decodes_everywhere(arch):
    assert why_not_decodable(video(profile="High"), "gpu", arch) is None
    assert why_not_decodable(video(profile="Main", width=48, height=16), "gpu", arch) is None


@pytest.mark.parametrize("arch", ["hopper", "ga100", "ada", "blackwell"])
def test_h264_lossless_profile_is_refused_everywhere(arch):
    # libx264 qp 0 writes High 4:4:4 Predictive even from 4:2:0 8-bit frames
    reason = why_not_decodable(video(profile="High 4:4:4 Predictive"), "gpu", arch)
    assert reason and "profile 'High 4:4:4 Predictive'" in reason


@pytest.mark.parametrize("arch, decodes", [("hopper", False), ("ada", False), ("blackwell", True)])
def test_h264_10bit_and_422_only_on_blackwell(arch, decodes):
    ten = why_not_decodable(video(profile="High 10", bit_depth=10), "gpu", arch)
    four22 = why_not_decodable(video(profile="High 4:2:2", chroma="422"), "gpu", arch)
    assert (ten is None) == decodes and (four22 is None) == decodes


def test_size_limits():
    assert "below NVDEC's minimum 128x128" in why_not_decodable(video("vp9", 96, 64), "gpu", "hopper")
    assert "below NVDEC's minimum 128x128" in why_not_decodable(video("vp9", 128, 96), "gpu", "hopper")
    assert why_not_decodable(video("vp9", 128, 128, profile="Profile 0"), "gpu", "hopper") is None
    assert "below NVDEC's minimum 144x144" in why_not_decodable(video("hevc", 128, 128), "gpu", "hopper")
    assert "below NVDEC's minimum 48x16" in why_not_decodable(video("h264", 32, 32), "gpu", "ga100")
    assert "above NVDEC's maximum 4096x4096" in why_not_decodable(video("h264", 7680, 4320), "gpu", "hopper")
    assert why_not_decodable(video("h264", 7680, 4320), "gpu", "blackwell") is None
    assert why_not_decodable(video("av1", 7680, 4320), "gpu", "ada") is None


def test_hevc_chroma_by_generation():
    assert why_not_decodable(video("hevc", chroma="444"), "gpu", "turing") is None
    assert "444 chroma" in why_not_decodable(video("hevc", chroma="444"), "gpu", "volta")
    assert why_not_decodable(video("hevc", bit_depth=10), "gpu", "hopper") is None
    assert why_not_decodable(video("hevc", chroma="422", bit_depth=10), "gpu", "hopper") is not None
    assert why_not_decodable(video("hevc", chroma="422", bit_depth=10), "gpu", "blackwell") is None


def test_vp8_vp9_mjpeg_by_generation():
    assert why_not_decodable(video("vp8"), "gpu", "hopper") is None
    assert "not decoded by NVDEC on 1st-gen Maxwell" in why_not_decodable(video("vp8"), "gpu", "maxwell1")
    assert "10-bit vp9" in why_not_decodable(video("vp9", bit_depth=10), "gpu", "hopper")
    assert "not in NVIDIA's NVDEC capability table" in why_not_decodable(video("mjpeg"), "gpu", "hopper")


def test_cpu_placement_and_records():
    assert why_not_decodable(video("vp9", 64, 48), "cpu") is None
    assert "CPU decoder reads only mjpeg/vp8/vp9, not h264" in why_not_decodable(video("h264"), "cpu")
    # an index record keeps profile/bit depth/chroma in .extra
    record = VideoRecord("a.mp4", 0, 300, 30.0, 340, 256, "h264",
                         extra={"profile": "High 4:4:4 Predictive", "bit_depth": 8, "chroma": "420"})
    assert "High 4:4:4 Predictive" in why_not_decodable(record, "gpu", "hopper")
    # an older index without them is judged on codec and size
    assert why_not_decodable(VideoRecord("b.mp4", 0, 300, 30.0, 340, 256, "h264"), "gpu", "hopper") is None
    with pytest.raises(ValueError, match="needs the GPU generation"):
        why_not_decodable(record, "gpu")


def test_nvdec_limits():
    av1 = nvdec_limits("libdav1d", "ga10x")
    assert av1.min_size == (128, 128) and av1.max_size == (8192, 8192) and av1.bit_depths == {8, 10}
    assert nvdec_limits("av1", "A100") is None
    assert nvdec_limits("h264", (9, 0)).max_size == (4096, 4096)
    assert nvdec_limits("h264", (10, 0)).max_size == (8192, 8192)
