"""Clip sampling and augmentation parameters, shared by every loader.

Every loader (the PyAV baseline, the DALI CPU and GPU pipelines) asks this module *which* frames and
*which* crop to produce, so that for the same seed they deliver the same clips. Nothing here decodes.

Temporal rules (PySlowFast's):
- A clip is ``num_frames`` fast-pathway frames taken ``sampling_rate`` apart at ``target_fps``; on a
  video at ``fps`` it spans ``num_frames * sampling_rate * fps / target_fps`` source frames.
- Frame indices are ``linspace(start, start + span - 1, num_frames)`` truncated to integers and
  clamped to ``[0, n - 1]``: a video shorter than the span repeats its edge frames, it is never dropped.
- Train: a uniformly random start. Validation: the centred clip. Test: ``num_clips`` starts spread
  uniformly from the first possible start to the last (one clip = centred).
- Slow pathway: ``linspace(0, T - 1, T // alpha)`` truncated, over the fast clip's T frames.

Spatial rules:
- Train: short side scaled to a random integer in ``[lo, hi]``, a random ``crop`` square, a random
  horizontal flip; one draw per clip, applied to every frame.
- Val: short side ``short_side``, centred crop. Test: short side ``short_side``, ``num_crops`` crops
  along the long side (left/top, centre, right/bottom for 3).

Randomness comes from ``clip_rng(seed, epoch, video_index)``, so a clip does not depend on which worker,
rank or pipeline produced it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def clip_rng(seed: int, epoch: int, video_index: int) -> np.random.Generator:
    """The random stream for one clip of one video in one epoch."""
    return np.random.default_rng([int(seed), int(epoch), int(video_index)])


def clip_span(fps: float, num_frames: int = 32, sampling_rate: int = 2, target_fps: float = 30.0) -> float:
    """Source frames covered by one clip on a video at ``fps`` (adapts the span to the real frame rate)."""
    if fps is None or not fps > 0:
        fps = target_fps
    return num_frames * sampling_rate * float(fps) / float(target_fps)


def _indices(start: float, span: float, num_frames: int, video_frames: int) -> np.ndarray:
    idx = np.linspace(start, start + span - 1, num_frames)
    return np.clip(idx, 0, max(video_frames - 1, 0)).astype(np.int64)


def train_clip_indices(
    video_frames: int, fps: float, rng: np.random.Generator,
    num_frames: int = 32, sampling_rate: int = 2, target_fps: float = 30.0,
) -> np.ndarray:
    """Fast-pathway frame indices of one random clip, shape ``(num_frames,)``, int64."""
    span = clip_span(fps, num_frames, sampling_rate, target_fps)
    delta = max(video_frames - span, 0.0)
    start = rng.uniform(0.0, delta) if delta > 0 else 0.0
    return _indices(start, span, num_frames, video_frames)


def test_clip_indices(
    video_frames: int, fps: float, num_clips: int = 10,
    num_frames: int = 32, sampling_rate: int = 2, target_fps: float = 30.0,
) -> np.ndarray:
    """Frame indices of ``num_clips`` uniformly spaced clips, shape ``(num_clips, num_frames)``, int64."""
    span = clip_span(fps, num_frames, sampling_rate, target_fps)
    delta = max(video_frames - span, 0.0)
    if num_clips == 1:
        starts = [delta / 2.0]
    else:
        starts = [delta * i / (num_clips - 1) for i in range(num_clips)]
    return np.stack([_indices(s, span, num_frames, video_frames) for s in starts])


def val_clip_indices(
    video_frames: int, fps: float, num_frames: int = 32, sampling_rate: int = 2, target_fps: float = 30.0,
) -> np.ndarray:
    """The centred clip, shape ``(num_frames,)``."""
    return test_clip_indices(video_frames, fps, 1, num_frames, sampling_rate, target_fps)[0]


def slow_indices(num_fast_frames: int, alpha: int) -> np.ndarray:
    """Positions, within the fast clip, of the slow pathway's frames (PySlowFast's linspace rule)."""
    if num_fast_frames % alpha:
        raise ValueError(f"num_frames={num_fast_frames} must be a multiple of alpha={alpha}")
    return np.linspace(0, num_fast_frames - 1, num_fast_frames // alpha).astype(np.int64)


@dataclass(frozen=True)
class SpatialParams:
    """Resize the frame to ``(resize_h, resize_w)``, crop ``crop`` x ``crop`` at ``(y, x)``, maybe flip."""

    resize_h: int
    resize_w: int
    y: int
    x: int
    crop: int
    flip: bool = False


def resized_shape(height: int, width: int, short_side: int) -> tuple[int, int]:
    """Frame shape after scaling its short side to ``short_side`` (the long side is floored)."""
    if width <= height:
        return int(math.floor(height / width * short_side)), short_side
    return short_side, int(math.floor(width / height * short_side))


def train_spatial_params(
    height: int, width: int, rng: np.random.Generator,
    short_side_range: tuple[int, int] = (256, 320), crop: int = 224, allow_flip: bool = True,
) -> SpatialParams:
    """One clip's random scale, crop and flip; ``allow_flip=False`` never flips (same random stream)."""
    lo, hi = short_side_range
    short = int(rng.integers(lo, hi + 1))
    rh, rw = resized_shape(height, width, short)
    y = int(rng.integers(0, max(rh - crop, 0) + 1))
    x = int(rng.integers(0, max(rw - crop, 0) + 1))
    flip = bool(rng.random() < 0.5) and allow_flip
    return SpatialParams(rh, rw, y, x, crop, flip)


def test_spatial_params(
    height: int, width: int, short_side: int = 256, crop: int = 256, num_crops: int = 3,
) -> list[SpatialParams]:
    """``num_crops`` crops spread along the long side; one crop = the centre."""
    rh, rw = resized_shape(height, width, short_side)
    params = []
    for i in range(num_crops):
        y = int(math.ceil((rh - crop) / 2))
        x = int(math.ceil((rw - crop) / 2))
        if num_crops > 1:
            frac = i / (num_crops - 1)
            if rh > rw:
                y = int(math.ceil(frac * (rh - crop)))
            else:
                x = int(math.ceil(frac * (rw - crop)))
        params.append(SpatialParams(rh, rw, max(y, 0), max(x, 0), crop, False))
    return params


def val_spatial_params(height: int, width: int, short_side: int = 256, crop: int = 224) -> SpatialParams:
    return test_spatial_params(height, width, short_side, crop, 1)[0]


def shard_indices(
    num_videos: int, rank: int = 0, world_size: int = 1, *, shuffle: bool = False,
    seed: int = 0, epoch: int = 0, pad: bool = True,
) -> np.ndarray:
    """This rank's video indices: a disjoint, strided shard of a (seeded, per-epoch) permutation.

    With ``pad=True`` every rank gets ``ceil(num_videos / world_size)`` entries; the missing ones are
    ``-1`` (padding samples, to be dropped from metrics), so that ranks run the same number of steps.
    Training instead uses ``pad=False`` with the shard length cut to the shortest rank's
    (``num_videos // world_size``), dropping a few random videos of this epoch, as DistributedSampler does
    with ``drop_last``. Every video appears in exactly one rank's shard.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside [0, {world_size})")
    order = np.arange(num_videos, dtype=np.int64)
    if shuffle:
        order = np.random.default_rng([int(seed), int(epoch), 2**31 - 1]).permutation(num_videos)
    if pad:
        per_rank = -(-num_videos // world_size)
        padded = np.full(per_rank * world_size, -1, dtype=np.int64)
        padded[:num_videos] = order
        return padded[rank::world_size]
    per_rank = num_videos // world_size
    return order[rank::world_size][:per_rank]
