"""The test protocol against the references' own rules, reimplemented minimally here.

PySlowFast (facebookresearch/SlowFast) is not pip-installable, so the functions that decide which frames and
which pixels a view holds are written out below as that repository has them:

- ``slowfast/datasets/decoder.py``: ``get_start_end_idx`` (``use_offset=False``, the default
  ``DATA.USE_OFFSET_SAMPLING``), ``temporal_sampling``, and ``decode``'s ``clip_sizes``;
- ``slowfast/datasets/transform.py``: ``random_short_side_scale_jitter``, ``random_crop``, ``uniform_crop``;
- ``slowfast/datasets/kinetics.py``: the spatial index of a test view (``idx % NUM_SPATIAL_CROPS``, 1 for a
  single crop) and the normalise-then-resize order.

Our side is ``pipelines.sampling`` and ``pipelines.transforms``; the loaders' use of them is checked in
tests/test_loader_contract.py.
"""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from configs import load_config
from configs.schema import ConfigError
from pipelines import sampling
from pipelines.base import LoaderSettings, resolve_antialias
from pipelines.sampling import SpatialParams
from pipelines.transforms import apply_spatial

# ------------------------------------------------------------------------------------------ the reference


def ref_clip_size(sampling_rate, num_frames, target_fps, fps):
    """decoder.decode: ``np.maximum(1.0, sampling_rate * num_frames / target_fps * fps)``."""
    return np.maximum(1.0, sampling_rate * num_frames / target_fps * fps)


def ref_get_start_end_idx(video_size, clip_size, clip_idx, num_clips_uniform):
    """decoder.get_start_end_idx with use_offset=False; clip_idx -1 draws from Python's ``random``."""
    delta = max(video_size - clip_size, 0)
    if clip_idx == -1:
        start_idx = random.uniform(0, delta)
    else:
        start_idx = delta * clip_idx / num_clips_uniform
    end_idx = start_idx + clip_size - 1
    return start_idx, end_idx


def ref_temporal_sampling(frames, start_idx, end_idx, num_samples):
    """decoder.temporal_sampling."""
    index = torch.linspace(start_idx, end_idx, num_samples)
    index = torch.clamp(index, 0, frames.shape[0] - 1).long()
    return torch.index_select(frames, 0, index)


def ref_test_clip(video_size, fps, clip_idx, num_clips, num_frames, sampling_rate, target_fps):
    """The frame numbers of one test clip: ``temporal_sampling`` over a video whose frame i holds i."""
    frames = torch.arange(video_size)
    clip_size = ref_clip_size(sampling_rate, num_frames, target_fps, fps)
    start, end = ref_get_start_end_idx(video_size, clip_size, clip_idx, num_clips)
    return ref_temporal_sampling(frames, start, end, num_frames).tolist()


def ref_short_side_scale(height, width, size):
    """transform.random_short_side_scale_jitter's output shape for a drawn ``size``."""
    if (width <= height and width == size) or (height <= width and height == size):
        return height, width
    new_width, new_height = size, size
    if width < height:
        new_height = int(math.floor((float(height) / width) * size))
    else:
        new_width = int(math.floor((float(width) / height) * size))
    return new_height, new_width


def ref_uniform_crop_offsets(height, width, size, spatial_idx):
    """transform.uniform_crop's (y_offset, x_offset) on an already resized frame."""
    assert spatial_idx in [0, 1, 2]
    y_offset = int(math.ceil((height - size) / 2))
    x_offset = int(math.ceil((width - size) / 2))
    if height > width:
        if spatial_idx == 0:
            y_offset = 0
        elif spatial_idx == 2:
            y_offset = height - size
    else:
        if spatial_idx == 0:
            x_offset = 0
        elif spatial_idx == 2:
            x_offset = width - size
    return y_offset, x_offset


def ref_spatial_index(view, num_spatial_crops):
    """kinetics.py: ``(idx % NUM_SPATIAL_CROPS) if NUM_SPATIAL_CROPS > 1 else 1``."""
    return (view % num_spatial_crops) if num_spatial_crops > 1 else 1


def ref_random_crop_offset(rs, size_along, crop):
    """transform.random_crop on one axis: ``np.random.randint(0, size - crop)`` when ``size > crop``."""
    return int(rs.randint(0, size_along - crop)) if size_along > crop else 0


def ref_jitter_size(rs, min_size, max_size):
    """transform.random_short_side_scale_jitter's size (inverse_uniform_sampling=False)."""
    return int(round(rs.uniform(min_size, max_size)))


def ref_resize_normalised(frames_thwc, params, mean, std):
    """kinetics.py order: /255, normalise, T H W C -> C T H W, then interpolate (bilinear, no antialias), crop."""
    clip = frames_thwc.float() / 255.0
    clip = (clip - torch.tensor(mean)) / torch.tensor(std)
    clip = clip.permute(3, 0, 1, 2)
    height, width = clip.shape[2], clip.shape[3]
    if (height, width) != (params.resize_h, params.resize_w):
        clip = F.interpolate(clip, size=(params.resize_h, params.resize_w), mode="bilinear", align_corners=False)
    return clip[:, :, params.y: params.y + params.crop, params.x: params.x + params.crop]


# ------------------------------------------------------------------------------------------ temporal

FRAME_RATES = [30.0, 24.0, 25.0, 30000 / 1001, 24000 / 1001, 50.0, 60.0, 15.0, 12.5]
TIMINGS = [(32, 2), (8, 8), (16, 4), (4, 16), (64, 1), (8, 2)]
LENGTHS = [7, 100, 250, 300, 301, 1000, 2999]


@pytest.mark.parametrize("fps", FRAME_RATES)
def test_test_clips_are_the_references_frames(fps):
    checked = 0
    for num_frames, rate in TIMINGS:
        for length in LENGTHS:
            for num_clips in (1, 2, 3, 5, 10):
                ours = sampling.test_clip_indices(length, fps, num_clips, num_frames, rate, 30.0)
                for clip in range(num_clips):
                    assert ours[clip].tolist() == ref_test_clip(length, fps, clip, num_clips, num_frames, rate, 30.0), \
                        (fps, num_frames, rate, length, num_clips, clip)
                    checked += 1
    assert checked == len(TIMINGS) * len(LENGTHS) * 21


def _float64_indices(length, fps, clip, num_clips, num_frames, rate, target_fps):
    """The same rule in float64 numpy with the span computed as T * rate * fps / target (the old arithmetic)."""
    span = num_frames * rate * fps / target_fps
    start = max(length - span, 0) * clip / num_clips
    return np.clip(np.linspace(start, start + span - 1, num_frames), 0, length - 1).astype(np.int64).tolist()


def test_the_comparison_sees_float_truncation():
    # the check above is sharp: float64 linspace differs from the reference's float32 torch.linspace by one frame
    # on some clips at 24 and 25 fps (e.g. 1000 frames at 25 fps, 32 x 2: clip 4 of 10)
    differ = [(fps, n, r, length, num_clips, clip)
              for fps in (24.0, 25.0) for n, r in TIMINGS for length in (1000, 2999) for num_clips in (5, 10)
              for clip in range(num_clips)
              if _float64_indices(length, fps, clip, num_clips, n, r, 30.0) != ref_test_clip(length, fps, clip,
                                                                                             num_clips, n, r, 30.0)]
    assert differ, "no clip tells float64 from float32 truncation; the exactness check would be vacuous"
    ours = sampling.test_clip_indices(1000, 25.0, 10, 32, 2, 30.0)[4].tolist()
    assert ours == ref_test_clip(1000, 25.0, 4, 10, 32, 2, 30.0)
    assert ours != _float64_indices(1000, 25.0, 4, 10, 32, 2, 30.0)


@pytest.mark.parametrize("fps", [24.0, 25.0, 30000 / 1001, 60.0])
def test_train_clips_are_temporal_sampling_of_the_drawn_start(fps):
    for video in range(200):
        length = 40 + 7 * video
        ours = sampling.train_clip_indices(length, fps, sampling.clip_rng(3, 1, video), 16, 4, 30.0)
        clip_size = ref_clip_size(4, 16, 30.0, fps)
        # our draw: uniform(0, delta) from the clip's stream, as get_start_end_idx draws random.uniform(0, delta)
        start = sampling.clip_rng(3, 1, video).uniform(0.0, max(length - clip_size, 0))
        reference = ref_temporal_sampling(torch.arange(length), start, start + clip_size - 1, 16).tolist()
        assert ours.tolist() == reference


def test_train_start_covers_the_references_range():
    # get_start_end_idx: start uniform in [0, delta]; 100 frames, span 8 -> delta 92
    starts = [sampling.train_clip_indices(100, 30.0, sampling.clip_rng(0, 0, v), 4, 2, 30.0)[0] for v in range(2000)]
    assert min(starts) == 0 and max(starts) == 91  # the first frame, truncated: start < 92 almost surely
    assert 40 < np.mean(starts) < 52


# ------------------------------------------------------------------------------------------ spatial

SHAPES = [(240, 320), (320, 240), (256, 256), (256, 340), (360, 640), (480, 270), (257, 256)]


@pytest.mark.parametrize("height, width", SHAPES)
@pytest.mark.parametrize("num_crops", [1, 2, 3])
def test_test_crops_are_uniform_crop(height, width, num_crops):
    short, crop = 256, 224
    ours = sampling.test_spatial_params(height, width, short, crop, num_crops)
    rh, rw = ref_short_side_scale(height, width, short)
    assert len(ours) == num_crops
    for view, params in enumerate(ours):
        assert (params.resize_h, params.resize_w) == (rh, rw)
        assert (params.y, params.x) == ref_uniform_crop_offsets(rh, rw, crop, ref_spatial_index(view, num_crops))
        assert params.crop == crop and not params.flip


def test_two_crops_are_left_and_centre_as_the_reference():
    ours = sampling.test_spatial_params(240, 320, 256, 256, 2)
    assert [(p.y, p.x) for p in ours] == [ref_uniform_crop_offsets(256, 341, 256, i) for i in (0, 1)]


@pytest.mark.parametrize("height, width", SHAPES)
@pytest.mark.parametrize("size", [128, 224, 256, 257, 320])
def test_resized_shape_is_the_references(height, width, size):
    # where the short side already is ``size`` the reference keeps the frame; our shape is then the frame's own
    assert sampling.resized_shape(height, width, size) == ref_short_side_scale(height, width, size)


def test_train_scale_is_a_rounded_continuous_draw():
    # random_short_side_scale_jitter: int(round(uniform(256, 260))): 256 and 260 half as likely as 257..259
    draws = 40000
    ours = np.bincount([sampling.train_short_side(sampling.clip_rng(1, 0, v), (256, 260)) - 256 for v in range(draws)],
                       minlength=5)
    rs = np.random.RandomState(0)
    theirs = np.bincount([ref_jitter_size(rs, 256, 260) - 256 for _ in range(draws)], minlength=5)
    expected = np.array([1, 2, 2, 2, 1]) / 8 * draws
    for counts in (ours, theirs):
        assert len(counts) == 5
        # 5 binomial standard deviations (at most ~ 0.6 % of the draws)
        assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected))


def test_train_crop_offsets_have_the_references_support():
    # 240x320 at short side 128 -> 128x170, crop 112: y in randint(0, 16) = 0..15, x in randint(0, 58) = 0..57
    rs = np.random.RandomState(0)
    ref_y = {ref_random_crop_offset(rs, 128, 112) for _ in range(3000)}
    ref_x = {ref_random_crop_offset(rs, 170, 112) for _ in range(3000)}
    ours = [sampling.train_spatial_params(240, 320, sampling.clip_rng(2, 0, v), (128, 128), 112) for v in range(3000)]
    assert {p.y for p in ours} == ref_y == set(range(16))
    assert {p.x for p in ours} == ref_x == set(range(58))
    # a side equal to the crop: the reference takes offset 0 and draws nothing
    assert ref_random_crop_offset(rs, 112, 112) == 0
    assert {sampling.train_spatial_params(112, 150, sampling.clip_rng(2, 0, v), (112, 112), 112).y
            for v in range(50)} == {0}
    flips = [p.flip for p in ours]
    assert 0.45 < np.mean(flips) < 0.55  # horizontal_flip(0.5): uniform() < 0.5


# ------------------------------------------------------------------------------------------ resize

def _gradient_clip(height=60, width=80, frames=3, seed=0):
    """Smooth gradients plus noise: downscaling with and without antialiasing give visibly different pixels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([128 + 100 * np.sin(xx / 3.0), 128 + 100 * np.cos(yy / 2.0), (xx * yy) % 256], axis=-1)
    clip = np.stack([base + rng.normal(0, 20, base.shape) for _ in range(frames)])
    return np.clip(clip, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("params", [SpatialParams(40, 53, 3, 7, 32), SpatialParams(30, 40, 0, 8, 30, flip=True),
                                    SpatialParams(90, 120, 10, 20, 64), SpatialParams(60, 80, 5, 9, 48)])
def test_resize_without_antialias_is_the_references(params):
    frames = _gradient_clip()
    mean, std = (0.45, 0.4, 0.35), (0.225, 0.25, 0.2)
    ours = apply_spatial(frames, params, mean, std, antialias=False)
    # exactly torch's interpolate(antialias=False) in our order (resize the 0..255 values, then normalise)
    clip = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    if (clip.shape[-2], clip.shape[-1]) != (params.resize_h, params.resize_w):
        clip = F.interpolate(clip, size=(params.resize_h, params.resize_w), mode="bilinear", align_corners=False,
                             antialias=False)
    clip = clip[:, :, params.y: params.y + params.crop, params.x: params.x + params.crop]
    if params.flip:
        clip = clip.flip(-1)
    clip = (clip - torch.tensor(mean).view(1, 3, 1, 1) * 255) / (torch.tensor(std).view(1, 3, 1, 1) * 255)
    assert torch.equal(ours, clip.permute(1, 0, 2, 3).contiguous())
    # and PySlowFast's order (normalise first; bilinear weights sum to 1, so only float rounding differs)
    reference = ref_resize_normalised(torch.from_numpy(frames), params, mean, std)
    if params.flip:
        reference = reference.flip(-1)
    assert torch.allclose(ours, reference, atol=1e-5, rtol=0)


def test_antialias_changes_a_downscale_only():
    frames = _gradient_clip()
    down = SpatialParams(30, 40, 0, 0, 30)
    diff = (apply_spatial(frames, down, antialias=True) - apply_spatial(frames, down, antialias=False)).abs()
    assert diff.mean().item() > 0.1  # several pixel levels on this content (1 level = 0.017)
    up = SpatialParams(90, 120, 5, 5, 80)
    # an upscale is the same filter either way (torch's two kernels round differently in the last bits)
    assert torch.allclose(apply_spatial(frames, up, antialias=True), apply_spatial(frames, up, antialias=False),
                          atol=1e-4, rtol=0)  # < 0.01 pixel level


# ------------------------------------------------------------------------------------------ configuration

def test_protocol_keys_and_defaults():
    cfg = load_config(None, [])
    assert cfg.test.clip_rule == "reference"
    assert cfg.train.val_sampling == "centred"
    assert cfg.data.resize_antialias == "auto"
    settings = LoaderSettings.from_config(cfg)
    assert (settings.clip_rule, settings.val_sampling, settings.antialias) == ("reference", "centred", True)
    assert LoaderSettings.from_config(cfg, imported_weights=True).antialias is False
    spread = load_config(None, ["test.clip_rule=spread", "train.val_sampling=reference", "data.resize_antialias=false"])
    settings = LoaderSettings.from_config(spread)
    assert (settings.clip_rule, settings.val_sampling, settings.antialias) == ("spread", "reference", False)
    forced = load_config(None, ["data.resize_antialias=true"])
    assert LoaderSettings.from_config(forced, imported_weights=True).antialias is True


@pytest.mark.parametrize("override", ["test.clip_rule=uniform", "train.val_sampling=center",
                                      "data.resize_antialias=maybe", "data.resize_antialias=1"])
def test_protocol_keys_reject_other_values(override):
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        load_config(None, [override])


def test_resolve_antialias():
    assert resolve_antialias("auto") is True and resolve_antialias("auto", imported_weights=True) is False
    assert resolve_antialias(False, imported_weights=False) is False
    assert resolve_antialias(True, imported_weights=True) is True
    with pytest.raises(ValueError, match="resize_antialias"):
        resolve_antialias("yes")
