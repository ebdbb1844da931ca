"""Clip sampling and augmentation parameters, shared by every loader.

Every loader (the PyAV baseline, the DALI CPU and GPU pipelines) asks this module *which* frames and
*which* crop to produce, so that for the same seed they deliver the same clips. Nothing here decodes.

The rules are PySlowFast's (facebookresearch/SlowFast ``slowfast/datasets/decoder.py``, ``utils.py``,
``transform.py``), reproduced to the float operation where they decide an integer:

Temporal rules:
- A clip is ``num_frames`` fast-pathway frames taken ``sampling_rate`` apart at ``target_fps``; on a
  video at ``fps`` it spans ``max(1, sampling_rate * num_frames / target_fps * fps)`` source frames
  (``decode``'s ``clip_sizes``, in that order of operations).
- Frame indices are ``temporal_sampling``'s: ``torch.linspace(start, start + span - 1, num_frames)`` in
  float32, clamped to ``[0, n - 1]`` and truncated to integers: a video shorter than the span repeats its
  edge frames, it is never dropped. (float64 ``numpy.linspace`` differs by one frame on about 1 % of the
  clips at 24 or 25 fps; ``tests/test_protocol.py`` checks the reference's arithmetic.)
- Train: a uniformly random start in ``[0, n - span]`` (``get_start_end_idx`` with ``clip_idx = -1``).
  Validation: the centred clip (``train.val_sampling: centred``) or, as PySlowFast validates, the training
  draw (``reference``). Test (``test.clip_rule``): ``reference`` = clip ``i`` of ``N`` starts at
  ``delta * i / N``, ``delta = max(n - span, 0)`` (``get_start_end_idx`` without offset sampling; one clip
  starts at 0); ``spread`` = from the first possible start to the last, ``delta * i / (N - 1)`` (one clip:
  centred).
- Slow pathway: ``linspace(0, T - 1, T // alpha)`` truncated, over the fast clip's T frames.

Spatial rules:
- Train (``spatial_sampling`` with ``spatial_idx = -1``): short side scaled to
  ``int(round(uniform(lo, hi)))`` (``random_short_side_scale_jitter``: a continuous draw, rounded half to
  even, so ``lo`` and ``hi`` come up half as often as the sizes between them), then a ``crop`` square at
  ``randint(0, size - crop)`` on each axis, the upper bound exclusive (``random_crop``: the last offset is
  never drawn; an axis equal to the crop gets offset 0), then a horizontal flip with probability 0.5;
  one draw per clip, applied to every frame.
- Val (centred): short side ``short_side``, centred crop. Test: short side ``short_side``, ``num_crops``
  crops along the long side. ``reference``: ``uniform_crop``'s spatial indices, 1 crop = index 1 (centre),
  2 crops = indices 0 and 1 (left/top and centre, as PySlowFast's ``kinetics.py`` takes ``idx % 2``),
  3 crops = 0, 1, 2 (left/top, centre, right/bottom); more than 3 has no reference. ``spread``: evenly
  from the first offset to the last (1 crop = centre; 2 = both ends).
- Offsets of the centre: ``ceil((size - crop) / 2)``; the resized long side is floored.

Randomness comes from ``clip_rng(seed, epoch, video_index)``, so a clip does not depend on which worker,
rank or pipeline produced it. The draws follow PySlowFast's distributions and bounds, not its global
random stream.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

#: ``test.clip_rule`` values: PySlowFast's test views, or the project's even spread (see the module docstring)
CLIP_RULES = ("reference", "spread")
#: ``train.val_sampling`` values: the centred clip and crop, or PySlowFast's (validation drawn like training)
VAL_SAMPLINGS = ("centred", "reference")
#: the fourth seed word of each random stream of a clip: training draws (``[seed, epoch, video]`` and
#: ``[seed, epoch, video, 0]`` are the same seed), the replacement order (``pipelines.base``), validation draws
TRAIN_STREAM, REPLACEMENT_STREAM, VAL_STREAM = 0, 1, 2
#: the most test crops PySlowFast's ``uniform_crop`` places (spatial index 0, 1, 2)
REFERENCE_MAX_CROPS = 3


def clip_rng(seed: int, epoch: int, video_index: int, stream: int = TRAIN_STREAM) -> np.random.Generator:
    """The random stream for one clip of one video in one epoch (``stream``: which draws, see ``*_STREAM``)."""
    words = [int(seed), int(epoch), int(video_index)]
    if stream != TRAIN_STREAM:
        words.append(int(stream))
    return np.random.default_rng(words)


def clip_span(fps: float, num_frames: int = 32, sampling_rate: int = 2, target_fps: float = 30.0) -> float:
    """Source frames covered by one clip on a video at ``fps`` (adapts the span to the real frame rate).

    PySlowFast's ``max(1, sampling_rate * num_frames / target_fps * fps)``, in that order: the order of the
    float operations moves the last bit (64 * 25 / 30 != 64 / 30 * 25), which can move a truncated index.
    """
    if fps is None or not fps > 0:
        fps = target_fps
    return max(1.0, int(sampling_rate) * int(num_frames) / float(target_fps) * float(fps))


def clip_frames(start: float, span: float, num_frames: int, video_frames: int) -> np.ndarray:
    """The ``num_frames`` frame indices of a clip starting at ``start``: PySlowFast's ``temporal_sampling``.

    ``torch.linspace(start, start + span - 1, num_frames)`` (float32, torch's own arithmetic), clamped to
    ``[0, video_frames - 1]``, truncated towards zero. Returns int64 numpy indices.
    """
    index = torch.linspace(float(start), float(start) + float(span) - 1.0, int(num_frames), dtype=torch.float32)
    index = torch.clamp(index, 0, max(int(video_frames) - 1, 0)).long()
    return index.numpy().astype(np.int64, copy=False)


def _delta(video_frames: int, span: float) -> float:
    return max(int(video_frames) - span, 0)


def train_clip_indices(
    video_frames: int, fps: float, rng: np.random.Generator,
    num_frames: int = 32, sampling_rate: int = 2, target_fps: float = 30.0,
) -> np.ndarray:
    """Fast-pathway frame indices of one random clip, shape ``(num_frames,)``, int64.

    The start is ``uniform(0, delta)``, ``delta = max(video_frames - span, 0)`` (``get_start_end_idx``, clip
    index -1); drawn even when ``delta`` is 0, so the later draws of ``rng`` do not depend on the length.
    """
    span = clip_span(fps, num_frames, sampling_rate, target_fps)
    start = float(rng.uniform(0.0, _delta(video_frames, span)))
    return clip_frames(start, span, num_frames, video_frames)


def clip_starts(video_frames: int, span: float, num_clips: int, rule: str = "reference") -> list[float]:
    """The start frames (floats) of ``num_clips`` test clips of ``span`` frames under ``rule``.

    ``reference``: ``delta * i / num_clips`` (PySlowFast ``get_start_end_idx``, ``USE_OFFSET_SAMPLING=False``;
    PaddleVideo's ``DecodeSampler`` does the same); one clip starts at 0. ``spread``: ``delta * i /
    (num_clips - 1)``, first to last possible start; one clip is centred.
    """
    if rule not in CLIP_RULES:
        raise ValueError(f"test.clip_rule={rule!r} is unknown; choose one of {CLIP_RULES}")
    delta = _delta(video_frames, span)
    if rule == "reference":
        return [delta * i / num_clips for i in range(num_clips)]
    if num_clips == 1:
        return [delta / 2.0]
    return [delta * i / (num_clips - 1) for i in range(num_clips)]


def test_clip_indices(
    video_frames: int, fps: float, num_clips: int = 10,
    num_frames: int = 32, sampling_rate: int = 2, target_fps: float = 30.0, *, rule: str = "reference",
) -> np.ndarray:
    """Frame indices of ``num_clips`` test clips (``rule``: see :func:`clip_starts`).

    Returns:
        int64 array ``(num_clips, num_frames)``.
    """
    span = clip_span(fps, num_frames, sampling_rate, target_fps)
    starts = clip_starts(video_frames, span, num_clips, rule)
    return np.stack([clip_frames(s, span, num_frames, video_frames) for s in starts])


def val_clip_indices(
    video_frames: int, fps: float, num_frames: int = 32, sampling_rate: int = 2, target_fps: float = 30.0,
) -> np.ndarray:
    """The centred clip (start ``delta / 2``), shape ``(num_frames,)``."""
    span = clip_span(fps, num_frames, sampling_rate, target_fps)
    return clip_frames(_delta(video_frames, span) / 2.0, span, num_frames, video_frames)


def slow_indices(num_fast_frames: int, alpha: int, rule: str = "linspace") -> np.ndarray:
    """Positions, within the fast clip, of the slow pathway's frames: the model's ``arch.slow_sampling`` rule,
    defined with the model (:func:`models.slowfast.slow_frame_indices`: ``linspace`` as PySlowFast, ``nearest``
    as MMAction2)."""
    from models.slowfast import slow_frame_indices

    return slow_frame_indices(num_fast_frames, alpha, rule)


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
    """Frame shape after scaling its short side to ``short_side`` (the long side is floored, as
    ``random_short_side_scale_jitter`` computes it)."""
    if width < height:
        return int(math.floor((float(height) / width) * short_side)), short_side
    return short_side, int(math.floor((float(width) / height) * short_side))


def train_short_side(rng: np.random.Generator, short_side_range: tuple[int, int]) -> int:
    """``int(round(uniform(lo, hi)))``: ``random_short_side_scale_jitter``'s size (round half to even)."""
    lo, hi = short_side_range
    return int(round(float(rng.uniform(float(lo), float(hi)))))


def random_crop_offset(rng: np.random.Generator, size: int, crop: int) -> int:
    """``random_crop``'s offset on one axis: ``randint(0, size - crop)`` (exclusive) if ``size > crop``, else 0
    (no draw)."""
    return int(rng.integers(0, size - crop)) if size > crop else 0


def train_spatial_params(
    height: int, width: int, rng: np.random.Generator,
    short_side_range: tuple[int, int] = (256, 320), crop: int = 224, allow_flip: bool = True,
) -> SpatialParams:
    """One clip's random scale, crop and flip, in PySlowFast's order (scale, y, x, flip).

    ``allow_flip=False`` never flips; the flip is still drawn, so the stream is the same either way.
    """
    short = train_short_side(rng, short_side_range)
    rh, rw = resized_shape(height, width, short)
    y = random_crop_offset(rng, rh, crop)
    x = random_crop_offset(rng, rw, crop)
    flip = bool(rng.random() < 0.5) and allow_flip
    return SpatialParams(rh, rw, y, x, crop, flip)


def crop_positions(num_crops: int, rule: str = "reference") -> list:
    """Where each of ``num_crops`` test crops sits: ``uniform_crop`` spatial indices (``reference``) or
    fractions of the free length (``spread``)."""
    if rule not in CLIP_RULES:
        raise ValueError(f"test.clip_rule={rule!r} is unknown; choose one of {CLIP_RULES}")
    if rule == "reference":
        if num_crops > REFERENCE_MAX_CROPS:
            raise ValueError(
                f"test.num_crops={num_crops} has no reference: PySlowFast's uniform_crop places at most "
                f"{REFERENCE_MAX_CROPS} crops (left/top, centre, right/bottom); use test.num_crops <= 3 or "
                f"test.clip_rule=spread")
        # kinetics.py: spatial index = view % num_crops, and 1 (the centre) for a single crop
        return [1] if num_crops == 1 else list(range(num_crops))
    return [0.5] if num_crops == 1 else [i / (num_crops - 1) for i in range(num_crops)]


def test_spatial_params(
    height: int, width: int, short_side: int = 256, crop: int = 256, num_crops: int = 3, *,
    rule: str = "reference",
) -> list[SpatialParams]:
    """``num_crops`` crops along the long side (vertical when the resized frame is taller than wide).

    ``reference`` follows ``uniform_crop``: index 0 = offset 0, 1 = ``ceil((size - crop) / 2)``, 2 =
    ``size - crop``; the short axis is centred. ``spread``: offset ``ceil(f * (size - crop))`` for the
    fractions of :func:`crop_positions`.
    """
    rh, rw = resized_shape(height, width, short_side)
    params = []
    for position in crop_positions(num_crops, rule):
        y = int(math.ceil((rh - crop) / 2))
        x = int(math.ceil((rw - crop) / 2))
        if rule == "reference":
            along = {0: 0, 1: None, 2: (rh if rh > rw else rw) - crop}[position]
        else:
            along = int(math.ceil(position * ((rh if rh > rw else rw) - crop)))
        if along is not None:
            if rh > rw:
                y = along
            else:
                x = along
        params.append(SpatialParams(rh, rw, max(y, 0), max(x, 0), crop, False))
    return params


def val_spatial_params(height: int, width: int, short_side: int = 256, crop: int = 224) -> SpatialParams:
    """The centred crop at ``short_side`` (the centred validation)."""
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
