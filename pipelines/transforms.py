"""CPU spatial transforms of a decoded clip: resize, crop, flip, normalise (the PyAV baseline's half).

The parameters (which size, which crop, whether to flip) come from :mod:`pipelines.sampling`, drawn once
per clip; this module only applies them, the same way to every frame of the clip.
"""
from __future__ import annotations

from typing import Sequence, Union

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
