"""The GPU preflight on a CPU machine: its messages, and its checks with the GPU parts faked.

The expectations about what NVDEC decodes come from NVIDIA's documents (see tests/test_codecs.py): on Hopper
(H100/H200) no AV1, VP9 from 128x128, H.264 Baseline/Main/High 4:2:0 8-bit; libx264's lossless mode writes
High 4:4:4 Predictive, which no generation decodes.
"""
from __future__ import annotations

import ctypes

import pytest
import torch

from pipelines import preflight
from pipelines.dataset import VideoRecord, read_index, index_path_for
from pipelines.prepare import index_list
from pipelines.preflight import (PreflightError, dali_package_for, preflight_gpu_data, preflight_gpu_environment,
                                 transcode_command)
from pipelines.video_io import numbered_frames, write_video
from utils.errors import UserError


def record(path, codec="h264", width=340, height=256, **extra):
    return VideoRecord(path, 0, 300, 30.0, width, height, codec, extra=extra)


def test_decodable_data_passes():
    preflight_gpu_data([record("a.mp4", profile="High", bit_depth=8, chroma="420"), record("b.webm", "vp9", 128, 128)],
                       "/data/k400", "/data/k400/train.list", arch="hopper")


def test_undecodable_data_is_one_error_naming_videos_reasons_and_the_fix():
    records = [record("ok.mp4", profile="High"),
               record("x/av1_0.mp4", "av1", 1280, 720), record("x/av1_1.mp4", "av1", 1280, 720),
               record("x/av1_2.mp4", "av1", 1280, 720), record("x/av1_3.mp4", "av1", 1280, 720),
               record("small.webm", "vp9", 96, 64), record("lossless.mp4", profile="High 4:4:4 Predictive")]
    with pytest.raises(PreflightError) as info:
        preflight_gpu_data(records, "/data/k400", "/data/k400/train.list", arch="H100")
    message = str(info.value)
    assert isinstance(info.value, UserError) and "\n" not in message
    assert message.startswith("6 of 7 videos in '/data/k400/train.list' cannot be decoded by NVDEC on Hopper")
    # per reason: the count and the first three paths
    assert "4 x av1 is not decoded by NVDEC on Hopper" in message
    assert "'x/av1_0.mp4', 'x/av1_1.mp4', 'x/av1_2.mp4', ..." in message and "av1_3" not in message
    assert "1 x vp9 at 96x64 is below NVDEC's minimum 128x128 (e.g. 'small.webm')" in message
    assert "profile 'High 4:4:4 Predictive'" in message and "'lossless.mp4'" in message
    assert ("`python -m pipelines.prepare --root /data/k400 --list /data/k400/train.list "
            "--transcode-to /data/k400_h264 --codec h264`") in message
    assert "ok.mp4" not in message


def test_ampere_a100_has_no_av1_but_ga10x_has():
    av1 = [record("a.mp4", "av1", 640, 480)]
    with pytest.raises(PreflightError, match="on Ampere GA100"):
        preflight_gpu_data(av1, "r", "r/l.list", arch=(8, 0))
    preflight_gpu_data(av1, "r", "r/l.list", arch=(8, 6))


def test_transcode_command_quotes_paths():
    assert transcode_command("/d/my data", "/d/my data/train.list") == (
        "python -m pipelines.prepare --root '/d/my data' --list '/d/my data/train.list' "
        "--transcode-to '/d/my data_h264' --codec h264")


def test_real_files_probe_into_the_index_and_lossless_h264_is_refused(tmp_path):
    import av

    # a real libx264 qp-0 file, written directly (write_video never writes it): High 4:4:4 Predictive
    with av.open(str(tmp_path / "lossless.mp4"), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {"qp": "0", "preset": "veryfast"}
        for frame in numbered_frames(8, 48, 64):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    write_video(tmp_path / "high.mp4", numbered_frames(8, 48, 64), codec="h264", quality=12)
    (tmp_path / "train.list").write_text("lossless.mp4 0\nhigh.mp4 1\n")
    index_list(tmp_path / "train.list", tmp_path, workers=1, progress=False)
    records = read_index(index_path_for(tmp_path / "train.list"))
    assert [(r.extra["profile"], r.extra["chroma"], r.extra["bit_depth"]) for r in records] == \
        [("High 4:4:4 Predictive", "420", 8), ("High", "420", 8)]
    with pytest.raises(PreflightError, match=r"^1 of 2 videos .* profile 'High 4:4:4 Predictive' .*lossless\.mp4"):
        preflight_gpu_data(records, tmp_path, tmp_path / "train.list", arch="hopper")


def test_cpu_placement_suggests_vp9():
    with pytest.raises(PreflightError, match=r"DALI's CPU decoder: .*--codec vp9`"):
        preflight.preflight_data([record("a.mp4")], "r", "r/l.list", "cpu")


def test_without_cuda_the_environment_check_says_so(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(PreflightError, match="^GPU preflight: no CUDA GPU is visible to torch"):
        preflight_gpu_environment()
    with pytest.raises(PreflightError, match="no CUDA GPU"):
        preflight_gpu_data([record("a.mp4")], "r", "r/l.list")  # arch from the (absent) GPU


def test_missing_nvcuvid_names_the_library_and_the_container_fix(monkeypatch):
    def refuse(name, *args, **kwargs):
        raise OSError(f"{name}: cannot open shared object file: No such file or directory")

    monkeypatch.setattr(ctypes, "CDLL", refuse)
    message = preflight.nvdec_library_error()
    assert "libnvcuvid.so.1 cannot be loaded" in message
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility,video" in message
    monkeypatch.setattr(ctypes, "CDLL", lambda name, *a, **k: object())
    assert preflight.nvdec_library_error() is None


@pytest.mark.parametrize("torch_cuda, package", [("13.0", "nvidia-dali-cuda130"), ("12.8", "nvidia-dali-cuda120"),
                                                 (None, "nvidia-dali-cuda120")])
def test_dali_package_for_torch(torch_cuda, package):
    assert dali_package_for(torch_cuda) == package


def test_dali_built_for_another_cuda_is_named(monkeypatch):
    dali = pytest.importorskip("nvidia.dali")
    monkeypatch.setattr(dali, "__cuda_version__", 12090, raising=False)
    message = preflight.dali_error("13.0")
    assert "built for CUDA 12 but torch for CUDA 13.0" in message and "pip install nvidia-dali-cuda130" in message


def _fake_gpu(monkeypatch, capability=(9, 0), name="NVIDIA H100 80GB HBM3"):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)


def test_environment_problems_come_in_one_message(monkeypatch):
    pytest.importorskip("nvidia.dali")
    _fake_gpu(monkeypatch)
    monkeypatch.setattr(preflight, "dali_error", lambda torch_cuda: "DALI sees no CUDA device")
    monkeypatch.setattr(preflight, "nvdec_library_error", lambda: "libnvcuvid.so.1 cannot be loaded")
    with pytest.raises(PreflightError) as info:
        preflight_gpu_environment()
    assert str(info.value) == ("GPU preflight on NVIDIA H100 80GB HBM3 (GPU 0): DALI sees no CUDA device; "
                               "libnvcuvid.so.1 cannot be loaded")


def test_environment_passes_and_names_the_generation(monkeypatch):
    pytest.importorskip("nvidia.dali")
    _fake_gpu(monkeypatch, capability=(8, 0), name="NVIDIA A100-SXM4-40GB")
    monkeypatch.setattr(preflight, "dali_error", lambda torch_cuda: None)
    monkeypatch.setattr(preflight, "nvdec_library_error", lambda: None)
    monkeypatch.setattr(preflight, "decode_check_error", lambda device_id: "never called")
    info = preflight_gpu_environment(decode_check=False)
    assert info["arch"] == "ga100" and info["capability"] == (8, 0) and info["device"] == "NVIDIA A100-SXM4-40GB"
    with pytest.raises(PreflightError, match="never called"):
        preflight_gpu_environment(decode_check=True)
    # the data check takes the generation from the (faked) device: no AV1 on the A100
    with pytest.raises(PreflightError, match="on Ampere GA100"):
        preflight_gpu_data([record("a.mp4", "av1", 640, 480)], "r", "r/l.list")
