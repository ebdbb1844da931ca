"""CPU spatial transforms of a decoded clip: resize, crop, flip, normalise (the PyAV loader's half).

:func:`apply_spatial` is the reference (float, the whole frame resized); the loader runs the same steps in
uint8 (:func:`resize_frames`, :func:`cut_view`) and normalises last, only the kept pixels
(:func:`normalise_into`), within one level of the reference (see the NOTE below).

The parameters (which size, which crop, whether to flip) come from :mod:`pipelines.sampling`, drawn once
per clip; this module only applies them, the same way to every frame of the clip.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.sampling import SpatialParams


def apply_spatial(
    frames: Union[np.ndarray, torch.Tensor],
    params: SpatialParams,
    mean: Sequence[float] = (0.45, 0.45, 0.45),
    std: Sequence[float] = (0.225, 0.225, 0.225),
    antialias: bool = True,
) -> torch.Tensor:
    """Resize, crop, flip and normalise one clip.

    Args:
        frames: uint8 clip, (T, H, W, 3) RGB, numpy or torch.
        params: the whole frame is resized to ``(params.resize_h, params.resize_w)`` (bilinear,
            ``align_corners=False``; not at all when it already has that size), then the ``crop`` x ``crop``
            square at ``(params.y, params.x)`` is cut out and, if ``params.flip``, mirrored left-right.
        mean: per-channel mean on [0, 1] pixels.
        std: per-channel standard deviation on [0, 1] pixels.
        antialias: antialias a downscale (torch's ``antialias=True``); ``False`` is the references' resize
            (PySlowFast ``random_short_side_scale_jitter``: ``interpolate(mode="bilinear",
            align_corners=False)``). An upscale is the same either way.

    Returns:
        float32 tensor (3, T, crop, crop) holding ``(pixel / 255 - mean) / std``.
    """
    clip = torch.as_tensor(frames)
    if clip.ndim != 4 or clip.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3) RGB, got shape {tuple(clip.shape)}")
    if clip.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8, got {clip.dtype}")
    crop = int(params.crop)
    if params.y < 0 or params.x < 0 or params.y + crop > params.resize_h or params.x + crop > params.resize_w:
        raise ValueError(f"crop {crop}x{crop} at (y={params.y}, x={params.x}) does not fit the resized frame "
                         f"{params.resize_h}x{params.resize_w}; use a short side >= the crop size")
    # (T, H, W, 3) -> (T, 3, H, W): interpolate works on the last two dims
    clip = clip.permute(0, 3, 1, 2).float()
    if (clip.shape[-2], clip.shape[-1]) != (params.resize_h, params.resize_w):
        clip = F.interpolate(clip, size=(params.resize_h, params.resize_w), mode="bilinear",
                             align_corners=False, antialias=bool(antialias))
    clip = clip[:, :, params.y: params.y + crop, params.x: params.x + crop]
    if params.flip:
        clip = clip.flip(-1)
    mean_t = torch.tensor([float(m) for m in mean], dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    std_t = torch.tensor([float(s) for s in std], dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    clip = (clip - mean_t) / std_t
    return clip.permute(1, 0, 2, 3).contiguous()  # (3, T, crop, crop)


# ----------------------------------------------------------------------------------------------
# the loader's transform: resize in uint8, cut crops as views, normalise last and only what is kept
#
# NOTE: measured on a 340x256 VP9 Kinetics-geometry clip (32 frames, 2 shared cores, torch 2.13 CPU): today's
# float transform (apply_spatial) spends its time converting whole frames to float and resizing them in float
# (~420 ms per clip under contention, ~90 ms quiet). Resizing in uint8 with torch's bilinear kernel (an AVX2
# path for channels-last 3-channel images, same filter and antialias rule as the float path, rounded once)
# took 8-10 ms for 32 frames, and normalising only the kept 224x224 crop, in place, 8 ms. Scaling inside
# PyAV's colour conversion (``VideoFrame.reformat(width=, height=, format="rgb24", interpolation=...)``, one
# swscale call) was tried first and was no faster (BILINEAR 21-70 ms for 32 frames, AREA 32 ms,
# FAST_BILINEAR 55 ms, all including the conversion) and further from today's transform: swscale scales
# the chroma planes on their own grid and rounds differently; against apply_spatial, BILINEAR (the closest,
# antialiased on downscale like antialias=True) differed by mean 1.3-1.9, max 31-67 levels on colour edges,
# and no swscale filter reproduces the unantialiased resize (antialias=False: BILINEAR mean 1.9-2.8, max
# 45-71). The uint8 torch path differs from apply_spatial by the final rounding only (max 1 level, mean 0.31
# measured; tests/test_transforms.py) and honours ``antialias`` exactly, so it is the one used.


def resize_frames(frames: Union[np.ndarray, torch.Tensor], height: int, width: int,
                  antialias: bool = True, exact: bool = False) -> torch.Tensor:
    """Resize a uint8 clip in uint8: the resize of :func:`apply_spatial`, rounded once to whole levels.

    Args:
        frames: uint8 (T, H, W, 3) RGB, numpy or torch.
        height, width: the resized size.
        antialias: as in :func:`apply_spatial` (torch's ``antialias``; an upscale is the same either way).
        exact: resize in float32 instead (:func:`apply_spatial`'s values exactly, no rounding); the test
            path uses it, where each video is resized once and the cost is one float copy of its frames.

    Returns:
        uint8 (float32 with ``exact``) tensor (T, height, width, 3), a view of channels-last memory;
        ``frames`` itself when no resize is needed.
    """
    clip = _check_clip(frames)
    if (clip.shape[1], clip.shape[2]) == (int(height), int(width)):
        return clip
    if exact:
        return F.interpolate(clip.permute(0, 3, 1, 2).float(), size=(int(height), int(width)), mode="bilinear",
                             align_corners=False, antialias=bool(antialias)).permute(0, 2, 3, 1)
    # (T, H, W, 3) viewed as (T, 3, H, W) is channels-last memory: torch's fast uint8 bilinear path
    resized = F.interpolate(clip.permute(0, 3, 1, 2), size=(int(height), int(width)), mode="bilinear",
                            align_corners=False, antialias=bool(antialias))
    return resized.permute(0, 2, 3, 1)


def cut_view(resized: torch.Tensor, params: SpatialParams) -> torch.Tensor:
    """The ``crop`` x ``crop`` square of a resized uint8 clip at ``(params.y, params.x)``, mirrored if ``flip``.

    Args:
        resized: uint8 (T, resize_h, resize_w, 3) from :func:`resize_frames`.
        params: the clip's spatial draw (its ``resize_h``/``resize_w`` must be ``resized``'s size).

    Returns:
        uint8 (T, crop, crop, 3): a view of ``resized`` (a copy of the crop only when flipped).
    """
    crop = int(params.crop)
    if tuple(resized.shape[1:3]) != (int(params.resize_h), int(params.resize_w)):
        raise ValueError(f"the clip is {tuple(resized.shape[1:3])}, but the crop was drawn for "
                         f"{params.resize_h}x{params.resize_w}; resize it with resize_frames first")
    if params.y < 0 or params.x < 0 or params.y + crop > params.resize_h or params.x + crop > params.resize_w:
        raise ValueError(f"crop {crop}x{crop} at (y={params.y}, x={params.x}) does not fit the resized frame "
                         f"{params.resize_h}x{params.resize_w}; use a short side >= the crop size")
    window = resized[:, params.y: params.y + crop, params.x: params.x + crop]
    return window.flip(2) if params.flip else window


def normalise_into(out: torch.Tensor, views: Sequence[torch.Tensor], mean: Sequence[float] = (0.45, 0.45, 0.45),
                   std: Sequence[float] = (0.225, 0.225, 0.225),
                   positions: Optional[Sequence[Optional[torch.Tensor]]] = None) -> torch.Tensor:
    """Write ``(pixel / 255 - mean) / std`` of uint8 views into the float batch ``out`` (one pass each).

    Args:
        out: float tensor (N, T, h, w, 3) (the NTHWC buffer whose ``permute(0, 4, 1, 2, 3)`` is an
            (N, C, T, H, W) batch in ``torch.channels_last_3d``).
        views: N uint8 (or float 0..255) (U, h, w, 3) views (:func:`cut_view`).
        mean, std: per-channel, on [0, 1] pixels.
        positions: per view, the T frames of it to take (int64, into its U frames), so a clip cut from a
            video decoded once is never copied in uint8 first; ``None`` (or a ``None`` entry): all U = T.

    Returns:
        ``out``.
    """
    if len(views) != out.shape[0]:
        raise ValueError(f"{len(views)} views for a batch of {out.shape[0]}")
    scale = torch.tensor([1.0 / (255.0 * float(s)) for s in std], dtype=out.dtype)
    offset = torch.tensor([-float(m) / float(s) for m, s in zip(mean, std)], dtype=out.dtype)
    same_scale = bool((scale == scale[0]).all())
    positions = positions if positions is not None else [None] * len(views)

    def put(dst: torch.Tensor, src: torch.Tensor) -> None:
        if same_scale:  # one pass: uint8 -> float, scaled and shifted (the usual equal-std case)
            torch.add(offset, src, alpha=float(scale[0]), out=dst)
        else:
            dst.copy_(src).mul_(scale).add_(offset)

    for row, view, where in zip(out, views, positions):
        if where is None:
            put(row, view)
        else:
            for t, frame in enumerate(where.tolist()):
                put(row[t], view[frame])
    return out


def transform_clip(frames: Union[np.ndarray, torch.Tensor], params: SpatialParams,
                   mean: Sequence[float] = (0.45, 0.45, 0.45), std: Sequence[float] = (0.225, 0.225, 0.225),
                   antialias: bool = True) -> torch.Tensor:
    """The loader's transform of one clip (:func:`resize_frames`, :func:`cut_view`, :func:`normalise_into`):
    :func:`apply_spatial`'s result within one level's rounding, as (3, T, crop, crop) float32 (a
    channels-last view)."""
    view = cut_view(resize_frames(frames, params.resize_h, params.resize_w, antialias), params)
    out = torch.empty((1, *view.shape), dtype=torch.float32)
    return normalise_into(out, [view], mean, std)[0].permute(3, 0, 1, 2)


def _check_clip(frames: Union[np.ndarray, torch.Tensor]) -> torch.Tensor:
    clip = torch.as_tensor(frames)
    if clip.ndim != 4 or clip.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3) RGB, got shape {tuple(clip.shape)}")
    if clip.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8, got {clip.dtype}")
    return clip
