"""Evaluation on the GPU: DALI's NVDEC decode-once test views equal its decode-per-view ones on H.264, and
the bf16 channels-last evaluation covers every video once with scores close to fp32's."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from configs import load_config
from engine import evaluator as ev
from engine.precision import resolve_precision

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.dali,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (NVDEC decoding via DALI)"),
]

FPS = 30
NUM_CLASSES = 5
# name -> (frames, height, width): one shorter than a clip's span (16 frames), one portrait.
# NOTE: NVDEC refuses H.264 below 48x16, so the frames are a little larger than the CPU tests'.
VIDEOS = {"a.mp4": (12, 64, 96), "b.mp4": (40, 64, 96), "c.mp4": (30, 96, 64)}
SMALL = [
    "model.name=slowfast_tiny", f"model.num_classes={NUM_CLASSES}", "data.backend=dali", "data.device=gpu",
    "data.dtype=fp32", "data.num_frames=8", "data.sampling_rate=2", "data.target_fps=30",
    "data.test_short_side=48", "data.test_crop=48", "data.val_crop=48", "test.num_clips=2", "test.num_crops=3",
    "test.batch_size=2",
]
NUM_VIEWS = 6


def _frames(seed: int, num_frames: int, height: int, width: int) -> list[np.ndarray]:
    yy, xx = np.mgrid[0:height, 0:width]
    frames = []
    for t in range(num_frames):
        frame = np.empty((height, width, 3), np.uint8)
        frame[..., 0] = (128 + 100 * np.sin(xx / (5.0 + seed) + t / 4.0)).astype(np.uint8)
        frame[..., 1] = (yy * (2 + seed) + 30 * seed) % 256
        frame[..., 2] = (128 + 100 * np.cos((xx + yy) / (6.0 + seed) - t / 5.0)).astype(np.uint8)
        frames.append(frame)
    return frames


@pytest.fixture(scope="module")
def h264_data(tmp_path_factory) -> Path:
    pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed")
    from pipelines.video_io import write_video

    root = tmp_path_factory.mktemp("evaluate_gpu")
    for seed, (name, (num_frames, height, width)) in enumerate(VIDEOS.items()):
        # short GOPs, so the clips of the longer videos start after a seek to a later keyframe
        write_video(root / name, _frames(seed, num_frames, height, width), fps=FPS, codec="h264",
                    keyframe_interval=8)
    (root / "test.list").write_text("".join(f"{name} {i % NUM_CLASSES}\n" for i, name in enumerate(VIDEOS)))
    return root


def _cfg(root: Path, *extra: str):
    return load_config(None, SMALL + [f"data.root={root}", f"data.test_list={root / 'test.list'}", *extra])


def test_nvdec_decode_once_views_equal_decode_per_view_on_h264(h264_data):
    from pipelines.dali_loader import build_dali_loader

    cfg = _cfg(h264_data)
    once = list(build_dali_loader(cfg, "test", alpha=4))
    per_view = list(build_dali_loader(cfg, "test", alpha=4, decode_per_view=True))
    assert [b[2].tolist() for b in once] == [b[2].tolist() for b in per_view] == [[0, 1], [2]]
    for ((slow, fast), labels, _), ((ref_slow, ref_fast), ref_labels, _) in zip(once, per_view):
        assert fast.is_cuda and fast.shape == (len(labels) * NUM_VIEWS, 3, 8, 48, 48)
        torch.testing.assert_close(fast, ref_fast, atol=1e-5, rtol=0)
        torch.testing.assert_close(slow, ref_slow, atol=1e-5, rtol=0)
        torch.testing.assert_close(labels.cpu(), ref_labels.cpu())
        # slow = the fast clip's frames 0 and 7 (linspace(0, 7, 8 // 4) truncated)
        torch.testing.assert_close(slow, fast[:, :, [0, 7]], atol=0, rtol=0)


def test_bf16_channels_last_evaluation_covers_every_video_once(h264_data):
    from models import create_model
    from pipelines.dali_loader import build_dali_loader

    cfg = _cfg(h264_data, "data.dtype=bf16")
    device = torch.device("cuda", torch.cuda.current_device())
    torch.manual_seed(0)
    model = create_model("slowfast_tiny", num_classes=NUM_CLASSES)
    model = ev.prepare_model(model, device, channels_last=True)
    results = {}
    for precision in ("bf16", "fp32"):
        loader = build_dali_loader(cfg, "test", alpha=model.arch.alpha)
        policy = resolve_precision(precision, device, explicit=True)
        assert policy.name == precision and torch.backends.cudnn.benchmark  # set by the policy on CUDA
        results[precision] = ev.evaluate(model, loader, num_views=NUM_VIEWS, device=device, precision=policy)
    for result in results.values():
        assert result.video_indices.tolist() == [0, 1, 2] and not result.failures and not result.missing
        # each row sums the softmax of its 6 views
        np.testing.assert_allclose(result.scores.sum(axis=1), NUM_VIEWS, rtol=1e-4)
    # bf16 keeps about 3 significant digits: the per-view probabilities agree to well under 0.05
    np.testing.assert_allclose(results["bf16"].scores / NUM_VIEWS, results["fp32"].scores / NUM_VIEWS,
                               atol=0.05)
