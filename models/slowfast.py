"""The SlowFast family (Feichtenhofer et al., "SlowFast Networks for Video Recognition", ICCV 2019).

Blocks (:class:`Stem`, :class:`Bottleneck`, :class:`ResStage`, :class:`FuseFastToSlow`, :class:`Head`), the
network (:class:`SlowFast`), its architecture dataclass (:class:`SlowFastArch`) and one registered factory per
variant (:data:`VARIANTS` holds their architectures). The published variants reproduce PySlowFast's
``SLOWFAST_4x16_R50`` / ``SLOWFAST_8x8_R50`` / ``SLOWFAST_8x8_R101`` and pytorchvideo's ``create_slowfast`` layer
for layer (same parameter count, same multiply-accumulates, weights importable by :mod:`models.weights`);
``lateral_norm=False`` gives MMAction2's SlowFast (fusion convolutions without BN and ReLU).

The architecture also records the input conventions of the weights (``input_mean`` / ``input_std``,
``slow_sampling``: :func:`slow_frame_indices`) and the training crop that sizes the test-time head's pooling
window (``train_crop``, ``head_pooling``; see :class:`Head`), so a checkpoint carries everything needed to feed
and evaluate its model.

Parameter names are a file format (checkpoints and the converters in :mod:`models.weights` depend on them):
``{slow,fast}_stem.{conv,bn}``, ``fuse_{stem,res2,res3,res4}.{conv,bn}``,
``{slow,fast}_res{2..5}.blocks.{i}.{conv_a,bn_a,conv_b,bn_b,conv_c,bn_c,shortcut_conv,shortcut_bn}``,
``head.proj``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.registry import register_model

# Spatial stride of stem conv and stem max-pool; together they divide H and W by 4 before res2.
_STEM_SPATIAL_STRIDE = 2
_NUM_STAGES = 4  # res2..res5
HEAD_POOLINGS = ("reference", "global")
SLOW_SAMPLINGS = ("linspace", "nearest")
# Input normalisation on [0, 1] RGB pixels: PySlowFast / pytorchvideo / PaddleVideo recipes (this project's
# default) and MMAction2's ImageNet statistics (123.675, 116.28, 103.53 / 58.395, 57.12, 57.375 on 0-255).
KINETICS_MEAN, KINETICS_STD = (0.45, 0.45, 0.45), (0.225, 0.225, 0.225)
IMAGENET_MEAN = tuple(v / 255 for v in (123.675, 116.28, 103.53))
IMAGENET_STD = tuple(v / 255 for v in (58.395, 57.12, 57.375))


@dataclass
class SlowFastArch:
    """Everything needed to rebuild a SlowFast network; stored in checkpoints as ``model_args``.

    Args:
        depths: residual blocks in res2, res3, res4, res5 ((3, 4, 6, 3) for R50, (3, 4, 23, 3) for R101).
        width: slow-pathway stem channels; res2..res5 have inner widths ``width * 2**i`` (i = 0..3).
        expansion: bottleneck output channels / inner channels.
        alpha: frame-rate ratio fast / slow (the fast clip has ``alpha`` times the slow clip's frames).
        beta_inv: channel ratio slow / fast (every fast layer has ``1 / beta_inv`` of the slow channels).
        fusion_kernel: temporal kernel of the fast-to-slow fusion convolution (odd).
        fusion_ratio: fusion convolution output channels / fast-pathway channels.
        slow_stem_kernel: (T, H, W) kernel of the slow stem convolution.
        fast_stem_kernel: (T, H, W) kernel of the fast stem convolution.
        slow_temporal_kernels: temporal kernel of every bottleneck's first conv (conv_a), res2..res5, slow.
        fast_temporal_kernels: the same for the fast pathway.
        spatial_strides: spatial stride of the first block of res2..res5.
        in_channels: input channels (3 for RGB).
        fast_time_diff: feed the Fast pathway its RGB frames together with their time differences
            (frame t minus frame t-1; zero for the first frame), 2 * in_channels input channels. The SlowFast
            paper (Sec. 4.3, Fast pathway input ablation) uses such time-difference input; it makes motion
            learnable in far fewer steps for small models trained from scratch. Off in the published variants.
        dropout: dropout probability before the classifier.
        num_classes: classifier outputs.
        lateral_norm: the fusion convolutions are followed by BN and ReLU (PySlowFast, pytorchvideo,
            PaddleVideo, MMAction2's ``lateral_norm=True``); False: a bare convolution (MMAction2's default).
        train_crop: the square crop (pixels) the network was trained at. The reference head's pooling window is
            the res5 feature size at this crop (7x7 at 224), see :class:`Head`.
        head_pooling: ``"reference"``: on an input larger than ``train_crop`` the head pools with the training
            window at stride 1 and averages the per-position softmax (PySlowFast / PaddleVideo test time);
            ``"global"``: global average pooling at every size (MMAction2).
        input_mean: per-channel mean the input was normalised with, on [0, 1] RGB pixels (metadata: the model
            does not normalise; loaders read it).
        input_std: per-channel standard deviation, likewise.
        slow_sampling: which frames of the Fast clip the Slow pathway takes (:func:`slow_frame_indices`):
            ``"linspace"`` (PySlowFast, pytorchvideo, PaddleVideo) or ``"nearest"`` (MMAction2: 0, alpha, ...).
    """

    depths: tuple[int, ...] = (3, 4, 6, 3)
    width: int = 64
    expansion: int = 4
    alpha: int = 8
    beta_inv: int = 8
    fusion_kernel: int = 5
    fusion_ratio: int = 2
    slow_stem_kernel: tuple[int, ...] = (1, 7, 7)
    fast_stem_kernel: tuple[int, ...] = (5, 7, 7)
    slow_temporal_kernels: tuple[int, ...] = (1, 1, 3, 3)
    fast_temporal_kernels: tuple[int, ...] = (3, 3, 3, 3)
    spatial_strides: tuple[int, ...] = (1, 2, 2, 2)
    in_channels: int = 3
    fast_time_diff: bool = False
    dropout: float = 0.5
    num_classes: int = 400
    # Fields added after slowfast-dali/1 checkpoints were first written: their defaults rebuild those models.
    lateral_norm: bool = True
    train_crop: int = 224
    head_pooling: str = "reference"
    input_mean: tuple[float, ...] = KINETICS_MEAN
    input_std: tuple[float, ...] = KINETICS_STD
    slow_sampling: str = "linspace"

    def __post_init__(self) -> None:
        # Checkpoints written as YAML/JSON give lists back; the architecture is the same.
        for name in ("depths", "slow_stem_kernel", "fast_stem_kernel", "slow_temporal_kernels",
                     "fast_temporal_kernels", "spatial_strides"):
            setattr(self, name, tuple(int(v) for v in getattr(self, name)))
        for name in ("input_mean", "input_std"):
            setattr(self, name, tuple(float(v) for v in getattr(self, name)))
            if len(getattr(self, name)) != self.in_channels:
                raise ValueError(f"{name}={getattr(self, name)} must have in_channels={self.in_channels} entries")
        if min(self.input_std) <= 0:
            raise ValueError(f"input_std={self.input_std} must be positive")
        if self.head_pooling not in HEAD_POOLINGS:
            raise ValueError(f"head_pooling={self.head_pooling!r} is unknown; choose one of {list(HEAD_POOLINGS)}")
        if self.slow_sampling not in SLOW_SAMPLINGS:
            raise ValueError(f"slow_sampling={self.slow_sampling!r} is unknown; choose one of "
                             f"{list(SLOW_SAMPLINGS)}")
        for name in ("depths", "slow_temporal_kernels", "fast_temporal_kernels", "spatial_strides"):
            if len(getattr(self, name)) != _NUM_STAGES:
                raise ValueError(f"{name}={getattr(self, name)} must have {_NUM_STAGES} entries (res2..res5)")
        for name in ("slow_stem_kernel", "fast_stem_kernel"):
            if len(getattr(self, name)) != 3:
                raise ValueError(f"{name}={getattr(self, name)} must be a (T, H, W) kernel")
        for name in ("width", "expansion", "alpha", "beta_inv", "fusion_kernel", "fusion_ratio",
                     "in_channels", "num_classes", "train_crop"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be a positive integer")
        if min(self.depths) < 1 or min(self.spatial_strides) < 1:
            raise ValueError(f"depths={self.depths} and spatial_strides={self.spatial_strides} must be >= 1")
        if self.width % self.beta_inv:
            raise ValueError(f"width={self.width} must be divisible by beta_inv={self.beta_inv} "
                             f"(the fast pathway has width / beta_inv channels)")
        # An even temporal kernel with padding k // 2 would change the number of frames and break the
        # alignment of the two pathways at the fusions.
        kernels = (self.fusion_kernel, self.slow_stem_kernel[0], self.fast_stem_kernel[0],
                   *self.slow_temporal_kernels, *self.fast_temporal_kernels)
        if any(k % 2 == 0 for k in kernels):
            raise ValueError(f"temporal kernels must be odd; got fusion_kernel={self.fusion_kernel}, "
                             f"stem kernels {self.slow_stem_kernel}/{self.fast_stem_kernel}, stage kernels "
                             f"{self.slow_temporal_kernels}/{self.fast_temporal_kernels}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")


def slow_frame_indices(num_fast_frames: int, alpha: int, rule: str = "linspace") -> np.ndarray:
    """Positions, within a Fast clip of ``num_fast_frames``, of the Slow pathway's ``num_fast_frames // alpha``
    frames: the meaning of :attr:`SlowFastArch.slow_sampling`.

    Args:
        num_fast_frames: frames of the Fast clip (a multiple of ``alpha``).
        alpha: the frame-rate ratio.
        rule: ``"linspace"``: ``linspace(0, T - 1, T / alpha)`` rounded down (PySlowFast, pytorchvideo,
            PaddleVideo; 0, 10, 20, 31 for 32 frames at alpha 8); ``"nearest"``: every alpha-th frame from the
            first, what MMAction2's nearest temporal interpolation by 1 / alpha picks (0, 8, 16, 24).
    """
    if rule not in SLOW_SAMPLINGS:
        raise ValueError(f"slow_sampling={rule!r} is unknown; choose one of {list(SLOW_SAMPLINGS)}")
    if num_fast_frames % alpha:
        raise ValueError(f"num_frames={num_fast_frames} must be a multiple of alpha={alpha}")
    if rule == "nearest":
        return np.arange(0, num_fast_frames, alpha, dtype=np.int64)
    return np.linspace(0, num_fast_frames - 1, num_fast_frames // alpha).astype(np.int64)


def feature_size(size: int, spatial_strides: Sequence[int]) -> int:
    """Height (or width) after res5 of an input ``size`` pixels high: the stem and its max-pool halve it, each
    stage divides it by its stride, every step rounding up (padded convolutions)."""
    for stride in (_STEM_SPATIAL_STRIDE, _STEM_SPATIAL_STRIDE, *spatial_strides):
        size = -(-size // stride)
    return size


def time_difference(clip: torch.Tensor) -> torch.Tensor:
    """Frame t minus frame t-1 along T of an (N, C, T, H, W) clip, zero for the first frame; same layout."""
    diff = torch.zeros_like(clip)  # zeros_like keeps the memory format (channels_last_3d stays so)
    diff[:, :, 1:] = clip[:, :, 1:] - clip[:, :, :-1]
    return diff


class Stem(nn.Module):
    """Conv (stride 1x2x2), BN, ReLU, max-pool 1x3x3 (stride 1x2x2): (N, C, T, H, W) -> (N, C', T, H/4, W/4).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel: (T, H, W) convolution kernel; padded by half so T is kept.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: Sequence[int]) -> None:
        super().__init__()
        stride = (1, _STEM_SPATIAL_STRIDE, _STEM_SPATIAL_STRIDE)
        self.conv = nn.Conv3d(in_channels, out_channels, tuple(kernel), stride=stride,
                              padding=tuple(k // 2 for k in kernel), bias=False)
        self.bn = nn.BatchNorm3d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool3d((1, 3, 3), stride=stride, padding=(0, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.relu(self.bn(self.conv(x))))


class Bottleneck(nn.Module):
    """Residual bottleneck: Tx1x1 conv_a, 1x3x3 conv_b (spatial stride), 1x1x1 conv_c; projection shortcut.

    Args:
        in_channels: input channels.
        inner_channels: channels of conv_a and conv_b.
        out_channels: output channels.
        temporal_kernel: temporal kernel of conv_a (1 = purely spatial block).
        spatial_stride: stride of conv_b (and of the shortcut) in H and W.
    """

    def __init__(self, in_channels: int, inner_channels: int, out_channels: int, temporal_kernel: int,
                 spatial_stride: int) -> None:
        super().__init__()
        stride = (1, spatial_stride, spatial_stride)
        self.conv_a = nn.Conv3d(in_channels, inner_channels, (temporal_kernel, 1, 1),
                                padding=(temporal_kernel // 2, 0, 0), bias=False)
        self.bn_a = nn.BatchNorm3d(inner_channels)
        self.conv_b = nn.Conv3d(inner_channels, inner_channels, (1, 3, 3), stride=stride, padding=(0, 1, 1),
                                bias=False)
        self.bn_b = nn.BatchNorm3d(inner_channels)
        self.conv_c = nn.Conv3d(inner_channels, out_channels, 1, bias=False)
        self.bn_c = nn.BatchNorm3d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        if in_channels != out_channels or spatial_stride != 1:
            self.shortcut_conv = nn.Conv3d(in_channels, out_channels, 1, stride=stride, bias=False)
            self.shortcut_bn = nn.BatchNorm3d(out_channels)
        else:
            self.shortcut_conv = None
            self.shortcut_bn = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.shortcut_conv is None else self.shortcut_bn(self.shortcut_conv(x))
        x = self.relu(self.bn_a(self.conv_a(x)))  # (N, inner, T, H, W)
        x = self.relu(self.bn_b(self.conv_b(x)))  # (N, inner, T, H / stride, W / stride)
        x = self.bn_c(self.conv_c(x))  # (N, out, T, H / stride, W / stride)
        return self.relu(x + shortcut)


class ResStage(nn.Module):
    """``depth`` bottlenecks; the first changes channels and applies the spatial stride.

    Args:
        depth: number of blocks.
        in_channels: input channels of the first block.
        inner_channels: bottleneck inner channels.
        out_channels: output channels of every block.
        temporal_kernel: temporal kernel of every block's conv_a.
        spatial_stride: spatial stride of the first block.
    """

    def __init__(self, depth: int, in_channels: int, inner_channels: int, out_channels: int,
                 temporal_kernel: int, spatial_stride: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[
            Bottleneck(in_channels if i == 0 else out_channels, inner_channels, out_channels, temporal_kernel,
                       spatial_stride if i == 0 else 1)
            for i in range(depth)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class FuseFastToSlow(nn.Module):
    """Lateral connection: a time-strided conv brings fast features to the slow frame rate; they are
    concatenated to the slow features on the channel dimension.

    Args:
        fast_channels: channels of the fast features.
        fusion_ratio: output channels of the fusion conv / ``fast_channels``.
        fusion_kernel: temporal kernel (odd) of the fusion conv.
        alpha: its temporal stride (the fast / slow frame-rate ratio).
        norm: follow the conv by BN and ReLU (PySlowFast); without, ``bn`` and ``relu`` are None (MMAction2).
    """

    def __init__(self, fast_channels: int, fusion_ratio: int, fusion_kernel: int, alpha: int,
                 norm: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv3d(fast_channels, fast_channels * fusion_ratio, (fusion_kernel, 1, 1),
                              stride=(alpha, 1, 1), padding=(fusion_kernel // 2, 0, 0), bias=False)
        self.bn = nn.BatchNorm3d(fast_channels * fusion_ratio) if norm else None
        self.relu = nn.ReLU(inplace=True) if norm else None

    def forward(self, slow: torch.Tensor, fast: torch.Tensor) -> torch.Tensor:
        fused = self.conv(fast)  # (N, Cf * ratio, Tf / alpha, H, W)
        if self.bn is not None:
            fused = self.relu(self.bn(fused))
        return torch.cat([slow, fused], dim=1)  # (N, Cs + Cf * ratio, Ts, H, W)


class Head(nn.Module):
    """Per-pathway average pooling, concatenation, dropout, linear.

    What ``forward`` returns, for res5 features of ``H x W`` positions and a pooling window ``window x window``
    (the res5 size at the training crop, 7 for 224):

    - ``H <= window`` and ``W <= window`` (the training size or smaller), or ``pooling="global"``: global average
      pool of each pathway, concat, dropout, linear: **logits** (N, K), in training and in evaluation.
    - otherwise (``pooling="reference"``, e.g. a 256 test crop after training at 224: 8x8 features): PySlowFast's
      test-time head (``ResNetBasicHead``). Each pathway is average-pooled over all its frames and a
      ``window x window`` window at stride 1 (a 2x2 grid of positions at 256), the pathways are concatenated at
      each position, then dropout and the linear layer give per-position scores; the softmax of each position
      is averaged over the grid. The head returns the **log** of these averaged probabilities (N, K), float32:
      a softmax applied afterwards (the evaluator's) gives PySlowFast's averaged probabilities back exactly,
      argmax and top-k are those of the averaged probabilities, and cross-entropy on it is their negative log
      likelihood. The same in training mode (PySlowFast has no defined output there).

    PySlowFast's window in time is the training clip's frames; here it is the input clip's frames, the same
    whenever test clips have the training clips' length (``data.num_frames`` serves both).

    Args:
        in_channels: slow + fast channels after res5.
        num_classes: outputs.
        dropout: dropout probability.
        window: side of the reference pooling window in res5 positions.
        pooling: ``"reference"`` or ``"global"`` (see above); an attribute that may be changed after building.
    """

    def __init__(self, in_channels: int, num_classes: int, dropout: float, window: int = 7,
                 pooling: str = "reference") -> None:
        super().__init__()
        if pooling not in HEAD_POOLINGS:
            raise ValueError(f"head pooling {pooling!r} is unknown; choose one of {list(HEAD_POOLINGS)}")
        self.window = int(window)
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(in_channels, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-initialise the classifier (PySlowFast's std 0.01 normal, zero bias), e.g. for fine-tuning."""
        nn.init.normal_(self.proj.weight, std=0.01)
        nn.init.zeros_(self.proj.bias)

    def pools_positions(self, height: int, width: int) -> bool:
        """Whether res5 features of ``height x width`` get the multi-position reference pooling (and ``forward``
        returns log-probabilities rather than logits)."""
        return self.pooling == "reference" and (height > self.window or width > self.window)

    @staticmethod
    def pool(slow: torch.Tensor, fast: torch.Tensor) -> torch.Tensor:
        """Global average pool of each pathway over (T, H, W), concatenated: (N, Cs + Cf), slow channels first."""
        # A mean over (T, H, W) rather than AvgPool3d + flatten: it works for any clip size and never
        # reshapes a channels-last tensor.
        return torch.cat([slow.mean(dim=(2, 3, 4)), fast.mean(dim=(2, 3, 4))], dim=1)  # (N, Cs + Cf)

    def forward(self, slow: torch.Tensor, fast: torch.Tensor) -> torch.Tensor:
        if not self.pools_positions(*slow.shape[-2:]):
            return self.proj(self.dropout(self.pool(slow, fast)))  # (N, num_classes)
        kernel_h, kernel_w = min(self.window, slow.shape[-2]), min(self.window, slow.shape[-1])
        slow = F.avg_pool3d(slow, (slow.shape[2], kernel_h, kernel_w), stride=1)  # (N, Cs, 1, H', W')
        fast = F.avg_pool3d(fast, (fast.shape[2], kernel_h, kernel_w), stride=1)  # (N, Cf, 1, H', W')
        grid = torch.cat([slow, fast], dim=1).permute(0, 2, 3, 4, 1).flatten(1, 3)  # (N, P, Cs + Cf)
        scores = self.proj(self.dropout(grid))  # (N, P, num_classes)
        log_probs = torch.log_softmax(scores.float(), dim=-1)  # (N, P, num_classes)
        # log(mean_p softmax_p), computed without leaving log space
        return torch.logsumexp(log_probs, dim=1) - math.log(grid.shape[1])  # (N, num_classes)


class SlowFast(nn.Module):
    """SlowFast network: a Slow pathway (few frames, many channels) and a Fast pathway (``alpha`` times the
    frames, ``1 / beta_inv`` of the channels), with fast-to-slow fusions after the stem, res2, res3 and res4::

            slow (N, 3, T/alpha, H, W)        fast (N, 3, T, H, W)
                       |                                |
                   slow_stem                        fast_stem
                       | <----- fuse_stem ------------- |
                   slow_res2                        fast_res2
                       | <----- fuse_res2 ------------- |
                   slow_res3                        fast_res3
                       | <----- fuse_res3 ------------- |
                   slow_res4                        fast_res4
                       | <----- fuse_res4 ------------- |
                   slow_res5                        fast_res5
                       |                                |
                       +------------> head <------------+
                     average pool per pathway, concat, dropout, linear -> (N, num_classes)

    No stage strides in time, so the slow pathway keeps T/alpha frames and the fast one T throughout. The
    fusions are conv + BN + ReLU, or a bare conv with ``lateral_norm=False``. The head pools globally up to the
    training crop and like PySlowFast's test-time head above it (:class:`Head` says what it returns).

    Args:
        arch: the architecture.
    """

    def __init__(self, arch: SlowFastArch) -> None:
        super().__init__()
        self.arch = arch
        self.model_name = "slowfast"  # create_model overwrites it with the registered name
        beta_inv, ratio, alpha = arch.beta_inv, arch.fusion_ratio, arch.alpha

        self.slow_stem = Stem(arch.in_channels, arch.width, arch.slow_stem_kernel)
        fast_in_channels = arch.in_channels * (2 if arch.fast_time_diff else 1)
        self.fast_stem = Stem(fast_in_channels, arch.width // beta_inv, arch.fast_stem_kernel)
        self.fuse_stem = FuseFastToSlow(arch.width // beta_inv, ratio, arch.fusion_kernel, alpha, arch.lateral_norm)

        slow_in = arch.width + arch.width // beta_inv * ratio
        fast_in = arch.width // beta_inv
        for i, name in enumerate(("res2", "res3", "res4", "res5")):
            inner = arch.width * 2 ** i
            out = inner * arch.expansion
            stride = arch.spatial_strides[i]
            setattr(self, f"slow_{name}", ResStage(arch.depths[i], slow_in, inner, out,
                                                   arch.slow_temporal_kernels[i], stride))
            setattr(self, f"fast_{name}", ResStage(arch.depths[i], fast_in, inner // beta_inv,
                                                   out // beta_inv, arch.fast_temporal_kernels[i], stride))
            slow_in, fast_in = out, out // beta_inv
            if name != "res5":
                setattr(self, f"fuse_{name}", FuseFastToSlow(fast_in, ratio, arch.fusion_kernel, alpha,
                                                             arch.lateral_norm))
                slow_in += fast_in * ratio
        self.head = Head(slow_in + fast_in, arch.num_classes, arch.dropout,
                         window=feature_size(arch.train_crop, arch.spatial_strides), pooling=arch.head_pooling)
        _init_weights(self)

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Scores (N, num_classes) for ``[slow, fast]`` clips, (N, C, T / alpha, H, W) and (N, C, T, H, W).

        Logits for inputs up to ``arch.train_crop`` (or with ``head_pooling="global"``); for larger inputs with
        the reference head, log-probabilities averaged over positions as PySlowFast does (see :class:`Head`).
        Either way ``softmax`` of the output is the class probability the reference implementation reports.
        """
        return self.head(*self.res5_features(inputs))  # (N, num_classes)

    def features(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """The pooled pre-classifier features (N, C) of ``[slow, fast]`` clips, before dropout and the classifier.

        ``C`` = slow + fast res5 channels (2048 + 256 = 2304 for the R50 variants): each pathway's res5 output
        averaged over all its frames and positions (global average pooling, :meth:`Head.pool`), slow first. The
        pooling is global at every input size, also where the reference head pools a window at several positions
        for its scores (inputs larger than ``arch.train_crop``). :meth:`scores_and_features` gives both from one
        forward pass.
        """
        return Head.pool(*self.res5_features(inputs))

    def scores_and_features(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(self(inputs), self.features(inputs))`` from one pass through the network."""
        slow, fast = self.res5_features(inputs)
        return self.head(slow, fast), Head.pool(slow, fast)

    def res5_features(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The two pathways' res5 outputs, (N, 32w, T/alpha, H/32, W/32) and (N, 32w/beta_inv, T, H/32, W/32)."""
        slow, fast = self._check_inputs(inputs)
        if self.arch.fast_time_diff:
            fast = torch.cat([fast, time_difference(fast)], dim=1)  # (N, 2C, T, H, W)
        # Shapes as (slow), (fast); w = width, a = alpha, b = beta_inv.
        slow, fast = self.slow_stem(slow), self.fast_stem(fast)  # (N, w, T/a, H/4, W/4), (N, w/b, T, ...)
        slow = self.fuse_stem(slow, fast)  # (N, w + 2w/b, T/a, H/4, W/4)
        slow, fast = self.slow_res2(slow), self.fast_res2(fast)  # (N, 4w, T/a, H/4, W/4), (N, 4w/b, T, ...)
        slow = self.fuse_res2(slow, fast)  # (N, 4w + 8w/b, T/a, H/4, W/4)
        slow, fast = self.slow_res3(slow), self.fast_res3(fast)  # (N, 8w, T/a, H/8, W/8), (N, 8w/b, T, ...)
        slow = self.fuse_res3(slow, fast)  # (N, 8w + 16w/b, T/a, H/8, W/8)
        slow, fast = self.slow_res4(slow), self.fast_res4(fast)  # (N, 16w, ., H/16, W/16), (N, 16w/b, ...)
        slow = self.fuse_res4(slow, fast)  # (N, 16w + 32w/b, T/a, H/16, W/16)
        return self.slow_res5(slow), self.fast_res5(fast)  # (N, 32w, ., H/32, W/32), (N, 32w/b, ...)

    def returns_log_probs(self, height: int, width: int) -> bool:
        """Whether ``forward`` on ``height x width`` clips returns averaged log-probabilities (the reference head
        pools several positions) rather than logits."""
        size = [feature_size(s, self.arch.spatial_strides) for s in (height, width)]
        return self.head.pools_positions(*size)

    def _check_inputs(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(inputs, torch.Tensor) or len(inputs) != 2:
            raise ValueError("SlowFast expects a list [slow, fast] of two (N, C, T, H, W) tensors; got "
                             f"{type(inputs).__name__}")
        slow, fast = inputs
        if slow.dim() != 5 or fast.dim() != 5:
            raise ValueError(f"slow {tuple(slow.shape)} and fast {tuple(fast.shape)} must be (N, C, T, H, W)")
        if fast.shape[2] != slow.shape[2] * self.arch.alpha:
            raise ValueError(f"the fast clip must have alpha={self.arch.alpha} times the slow clip's frames; "
                             f"got slow T={slow.shape[2]}, fast T={fast.shape[2]} (build the loader with "
                             f"alpha={self.arch.alpha})")
        return slow, fast


def _init_weights(model: nn.Module) -> None:
    """PySlowFast's initialisation: MSRA (fan-out) convs, unit BN, std-0.01 classifier, and a zero gamma in
    the last BN of every residual branch so each block starts as the identity (Goyal et al., 2017)."""
    for module in model.modules():
        if isinstance(module, nn.Conv3d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm3d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    for module in model.modules():
        if isinstance(module, Bottleneck):
            nn.init.zeros_(module.bn_c.weight)
        elif isinstance(module, Head):
            module.reset_parameters()


def _build(base: SlowFastArch, num_classes: int, overrides: dict[str, Any]) -> SlowFast:
    valid = [f.name for f in fields(SlowFastArch)]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ValueError(f"unknown architecture override(s) {unknown}; valid fields: {valid}")
    return SlowFast(replace(base, num_classes=num_classes, **overrides))


# The registered variants' architectures (before per-call overrides); models.weights.load_pretrained matches a
# weights file's inferred architecture against them.
VARIANTS: dict[str, SlowFastArch] = {
    "slowfast_r50_4x16": SlowFastArch(alpha=8, fusion_kernel=5),
    "slowfast_r50_8x8": SlowFastArch(alpha=4, fusion_kernel=7),
    "slowfast_r101_8x8": SlowFastArch(depths=(3, 4, 23, 3), alpha=4, fusion_kernel=5),
    "slowfast_tiny": SlowFastArch(depths=(1, 1, 1, 1), width=8, alpha=4, beta_inv=4, fusion_kernel=5, dropout=0.2),
}


@register_model
def slowfast_r50_4x16(num_classes: int = 400, **overrides: Any) -> SlowFast:
    """SlowFast R50, 4x16 sampling (slow 4 frames, fast 32, alpha 8), fusion kernel 5."""
    return _build(VARIANTS["slowfast_r50_4x16"], num_classes, overrides)


@register_model
def slowfast_r50_8x8(num_classes: int = 400, **overrides: Any) -> SlowFast:
    """SlowFast R50, 8x8 sampling (slow 8 frames, fast 32, alpha 4), fusion kernel 7."""
    return _build(VARIANTS["slowfast_r50_8x8"], num_classes, overrides)


@register_model
def slowfast_r101_8x8(num_classes: int = 400, **overrides: Any) -> SlowFast:
    """SlowFast R101 (blocks 3-4-23-3), 8x8 sampling (alpha 4), fusion kernel 5."""
    return _build(VARIANTS["slowfast_r101_8x8"], num_classes, overrides)


@register_model
def slowfast_tiny(num_classes: int = 400, **overrides: Any) -> SlowFast:
    """The SlowFast topology at toy size (one block per stage, width 8, alpha 4, beta_inv 4) for CPU demos
    and tests; the fast pathway keeps its temporal kernels, which is where motion is seen."""
    return _build(VARIANTS["slowfast_tiny"], num_classes, overrides)
