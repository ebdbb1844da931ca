"""End to end against the reference: a PySlowFast checkpoint evaluated by ``python test.py`` gives PySlowFast's
30-view scores.

The reference side is PySlowFast's test path (facebookresearch/SlowFast: ``datasets/decoder.py``
get_start_end_idx / temporal_sampling, ``datasets/utils.py`` tensor_normalize / pack_pathway_output,
``datasets/transform.py`` random_short_side_scale_jitter / uniform_crop, ``models/head_helper.py``
ResNetBasicHead in eval mode, ``tools/test_net.py`` summing the softmax of the views), re-implemented minimally
here because PySlowFast cannot be installed from the package index, around pytorchvideo's SlowFast built with
PySlowFast's test-time head. The checkpoint is written in PySlowFast's ``.pyth`` layout with its ``cfg``, and
``test.py`` gets no recipe: the file alone decides the model, as a user downloading it would run it. The video
has Kinetics geometry after preparation (short side 256, so neither side resizes) and is decoded by PyAV on both
sides, so the scores must agree to float precision.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from test_weights import NUM_CLASSES, pyslowfast_name, reference_slowfast

REPO = Path(__file__).resolve().parent.parent
ALPHA, T, SAMPLING_RATE, TARGET_FPS = 4, 8, 2, 30
NUM_CLIPS, NUM_CROPS, SIZE = 10, 3, 256
MEAN, STD = (0.45, 0.45, 0.45), (0.225, 0.225, 0.225)


def _frames(num_frames: int, height: int, width: int) -> np.ndarray:
    """Smooth moving gradients with texture: every clip and crop sees something different."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    texture = rng.integers(0, 40, (height, width, 3)).astype(np.float32)
    out = np.empty((num_frames, height, width, 3), np.uint8)
    for i in range(num_frames):
        r = 128 + 100 * np.sin((xx + 7 * i) / 37.0)
        g = 128 + 100 * np.cos((yy - 5 * i) / 29.0)
        b = 128 + 90 * np.sin((xx + yy + 11 * i) / 53.0)
        out[i] = np.clip(np.stack([r, g, b], -1) * 0.8 + texture, 0, 255).astype(np.uint8)
    return out


# --- PySlowFast's test path, minimal -------------------------------------------------------------------------

def _decode_all(path: Path) -> torch.Tensor:
    import av

    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return torch.from_numpy(np.stack(frames))  # (N, H, W, 3) uint8


def _get_start_end_idx(video_size: int, clip_size: float, clip_idx: int, num_clips: int) -> tuple[float, float]:
    delta = max(video_size - clip_size, 0)
    start = delta * clip_idx / num_clips  # USE_OFFSET_SAMPLING = False
    return start, start + clip_size - 1


def _temporal_sampling(frames: torch.Tensor, start: float, end: float, num_samples: int) -> torch.Tensor:
    index = torch.linspace(start, end, num_samples)
    index = torch.clamp(index, 0, frames.shape[0] - 1).long()
    return torch.index_select(frames, 0, index)


def _uniform_crop(images: torch.Tensor, size: int, spatial_idx: int) -> torch.Tensor:
    height, width = images.shape[2], images.shape[3]
    y_offset = int(math.ceil((height - size) / 2))
    x_offset = int(math.ceil((width - size) / 2))
    if height > width:
        y_offset = 0 if spatial_idx == 0 else height - size if spatial_idx == 2 else y_offset
    else:
        x_offset = 0 if spatial_idx == 0 else width - size if spatial_idx == 2 else x_offset
    return images[:, :, y_offset:y_offset + size, x_offset:x_offset + size]


def _reference_scores(model: torch.nn.Module, path: Path, fps: float) -> np.ndarray:
    video = _decode_all(path)
    clip_size = SAMPLING_RATE * T / TARGET_FPS * fps
    views = []
    for clip_idx in range(NUM_CLIPS):
        start, end = _get_start_end_idx(video.shape[0], clip_size, clip_idx, NUM_CLIPS)
        frames = _temporal_sampling(video, start, end, T).float() / 255.0            # (T, H, W, C)
        frames = (frames - torch.tensor(MEAN)) / torch.tensor(STD)                  # tensor_normalize
        frames = frames.permute(3, 0, 1, 2)                                          # (C, T, H, W)
        assert min(frames.shape[2:]) == SIZE  # random_short_side_scale_jitter(256, 256) leaves it as it is
        for spatial_idx in range(NUM_CROPS):
            fast = _uniform_crop(frames, SIZE, spatial_idx)
            slow = torch.index_select(fast, 1, torch.linspace(0, T - 1, T // ALPHA).long())
            views.append((slow, fast))
    with torch.no_grad():  # the views as one batch, as PySlowFast's test loader batches them
        probs = model([torch.stack([v[0] for v in views]), torch.stack([v[1] for v in views])])
    return probs.double().sum(0).numpy()  # eval: softmax per position, mean over positions; summed over views


# --- the test ------------------------------------------------------------------------------------------------

def test_a_pyslowfast_checkpoint_gives_the_references_30_view_scores(tmp_path):
    from pipelines.video_io import write_video

    torch.set_num_threads(2)
    video = write_video(tmp_path / "clip.mp4", _frames(60, SIZE, 340), fps=30, codec="h264", quality=18)
    reference = reference_slowfast(width=8, beta_inv=4, alpha=ALPHA, fusion_kernel=5, seed=11,
                                   test_head_frames=(T // ALPHA, T))
    # as PySlowFast writes checkpoints: its parameter names under model_state, its configuration as YAML
    cfg = {"SLOWFAST": {"ALPHA": ALPHA, "BETA_INV": 4, "FUSION_KERNEL_SZ": 5},
           "DATA": {"TRAIN_CROP_SIZE": 224, "TEST_CROP_SIZE": SIZE, "NUM_FRAMES": T, "SAMPLING_RATE": SAMPLING_RATE,
                    "MEAN": list(MEAN), "STD": list(STD)},
           "MODEL": {"NUM_CLASSES": NUM_CLASSES, "ARCH": "slowfast"}}
    weights = tmp_path / "SLOWFAST_R50_w8.pyth"
    torch.save({"epoch": 196, "model_state": {pyslowfast_name(k): v for k, v in reference.state_dict().items()},
                "cfg": yaml.safe_dump(cfg)}, weights)
    expected = _reference_scores(reference, video, fps=30.0)

    dump = tmp_path / "scores.npz"
    overrides = [f"data.num_frames={T}", f"data.sampling_rate={SAMPLING_RATE}", f"test.num_clips={NUM_CLIPS}",
                 f"test.num_crops={NUM_CROPS}", f"data.test_short_side={SIZE}", f"data.test_crop={SIZE}",
                 "data.backend=pyav", "data.num_workers=0", "test.batch_size=1", "test.precision=fp32"]
    env = dict(os.environ, OMP_NUM_THREADS="2", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "test.py", "-w", str(weights), "--video", str(video), "--no-progress",
                           "--output-dir", str(tmp_path / "out"), "--save-scores", str(dump),
                           *[a for o in overrides for a in ("-o", o)]],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with np.load(dump, allow_pickle=False) as data:
        got = data["scores"][0] * NUM_CLIPS * NUM_CROPS  # the dump holds the mean over the views
    assert got.shape == expected.shape == (NUM_CLASSES,)
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
    assert int(np.argmax(got)) == int(np.argmax(expected))
