"""Label smoothing, mixup and cutmix for the training step (``train.mixup.*``, PySlowFast's ``MIXUP`` options).

Off by default (``train.mixup.enable: false``): the training step then uses the plain cross-entropy on class
indices, bit for bit as without this module. When enabled, every micro-batch is treated as PySlowFast's
``MixUp`` treats a batch (the rule of timm's mixup for videos):

- With probability ``prob`` the micro-batch is mixed with itself reversed (sample ``i`` with sample ``N-1-i``);
  otherwise ``lam = 1`` and only label smoothing applies.
- Which mix: with ``alpha > 0`` and ``cutmix_alpha > 0``, cutmix with probability ``switch_prob``, else mixup;
  with one of them 0, the other one. ``lam ~ Beta(a, a)`` of the chosen kind.
- mixup: ``x = lam * x + (1 - lam) * x[::-1]``.
- cutmix: a box of ``int(H * sqrt(1 - lam)) x int(W * sqrt(1 - lam))`` around a uniform centre, clipped to the
  frame, is pasted from the reversed batch, over every frame; ``lam`` becomes ``1 - box area / (H * W)`` (the
  clipped box's real share).
- Targets: the smoothed one-hot (``eps / K`` off the label, ``1 - eps + eps / K`` on it, ``eps`` =
  ``label_smoothing``) of the labels, mixed with the same ``lam``: ``lam * y + (1 - lam) * y[::-1]``.

SlowFast has two pathways cut from the same clip: both get the same ``lam``, the same pairing and the same
cutmix box (in H, W, over all their frames), so the slow and fast views of a sample stay one mixed clip.
(PySlowFast's ``train_net.py`` mixes only ``inputs[0]``, the slow pathway, leaving the fast one unmixed.)

The loss is the soft-target cross-entropy :func:`soft_target_cross_entropy`. Training top-1 is reported against
the **dominant label**: the argmax of the mixed target (:func:`dominant_labels`; for ``lam = 0.5`` exactly, the
lower class index). PySlowFast also takes the argmax of the targets but first adds the score of the second-largest
target's class to the first's, so a prediction of either mixed class counts; here only the dominant one counts.

Randomness: each micro-batch draws from its own generator, :func:`mixup_rng` of (``train.seed``, epoch,
micro-batch index in the epoch, rank), so a resumed run (which restarts at an epoch boundary) draws the same
mixes, whatever happened before, and the draws do not touch the global RNGs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

MIXUP_STREAM = 0x6D78  # last entry of the seed sequence: keeps these draws apart from the clip sampler's


def smoothed_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """(N, K) float32 targets: ``1 - smoothing + smoothing / K`` at each label, ``smoothing / K`` elsewhere.

    Args:
        labels: (N,) class indices.
        num_classes: K.
        smoothing: label smoothing ``eps`` in [0, 1].
    """
    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    targets = torch.full((labels.shape[0], num_classes), off, dtype=torch.float32, device=labels.device)
    return targets.scatter_(1, labels.long().view(-1, 1), on)


def mix_targets(labels: torch.Tensor, num_classes: int, lam: float, smoothing: float = 0.0) -> torch.Tensor:
    """``lam * y + (1 - lam) * y[::-1]`` with ``y`` = :func:`smoothed_one_hot` of ``labels``; (N, K) float32."""
    targets = smoothed_one_hot(labels, num_classes, smoothing)
    if lam == 1.0:
        return targets
    return targets * lam + targets.flip(0) * (1.0 - lam)


def cutmix_box(height: int, width: int, lam: float, rng: np.random.Generator) -> tuple[tuple[int, int, int, int],
                                                                                           float]:
    """A cutmix box for ``lam`` and the corrected ``lam``.

    The box side is ``int(side * sqrt(1 - lam))`` around a centre drawn uniformly over the frame, half a side each
    way (``centre - side // 2`` to ``centre + side // 2``), clipped to the frame.

    Returns:
        ``((top, bottom, left, right), lam)``: rows ``top:bottom``, columns ``left:right``, and
        ``1 - (bottom - top) * (right - left) / (height * width)``.
    """
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy = int(rng.integers(0, height))
    cx = int(rng.integers(0, width))
    top, bottom = int(np.clip(cy - cut_h // 2, 0, height)), int(np.clip(cy + cut_h // 2, 0, height))
    left, right = int(np.clip(cx - cut_w // 2, 0, width)), int(np.clip(cx + cut_w // 2, 0, width))
    corrected = 1.0 - (bottom - top) * (right - left) / float(height * width)
    return (top, bottom, left, right), corrected


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``-sum_k targets[k] * log_softmax(logits)[k]`` (cross-entropy on soft targets)."""
    return torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()


def dominant_labels(targets: torch.Tensor) -> torch.Tensor:
    """The class with the largest target weight per sample, (N,) int64 (ties: the lower class index)."""
    return targets.argmax(dim=1)


def mixup_rng(seed: int, epoch: int, micro_batch: int, rank: int) -> np.random.Generator:
    """The generator of one micro-batch's mix: a function of (seed, epoch, micro-batch index in the epoch, rank)."""
    return np.random.default_rng([int(seed), int(epoch), int(micro_batch), int(rank), MIXUP_STREAM])


@dataclass(frozen=True)
class MixDraw:
    """One micro-batch's draw: ``lam`` (already corrected for a clipped cutmix box) and the box, if cutmix."""

    lam: float
    box: Optional[tuple[int, int, int, int]] = None  # (top, bottom, left, right)


@dataclass(frozen=True)
class MixUp:
    """Mixup / cutmix / label smoothing of ``[slow, fast]`` micro-batches (see the module docstring).

    Args:
        num_classes: K.
        alpha: mixup Beta parameter (0: no mixup).
        cutmix_alpha: cutmix Beta parameter (0: no cutmix).
        prob: probability that a micro-batch is mixed.
        switch_prob: with both alphas > 0, probability of cutmix.
        label_smoothing: ``eps``.
    """

    num_classes: int
    alpha: float = 0.8
    cutmix_alpha: float = 1.0
    prob: float = 1.0
    switch_prob: float = 0.5
    label_smoothing: float = 0.1

    @classmethod
    def from_config(cls, cfg: Any) -> Optional["MixUp"]:
        """``train.mixup`` of a resolved configuration; None when ``enable`` is false (or the section is absent)."""
        section = cfg.train.get("mixup") or {}
        if not section.get("enable", False):
            return None
        return cls(num_classes=int(cfg.model.num_classes), alpha=float(section["alpha"]),
                   cutmix_alpha=float(section["cutmix_alpha"]), prob=float(section["prob"]),
                   switch_prob=float(section["switch_prob"]), label_smoothing=float(section["label_smoothing"]))

    @property
    def mixes(self) -> bool:
        """Whether any micro-batch can be mixed (otherwise only label smoothing applies)."""
        return self.prob > 0 and (self.alpha > 0 or self.cutmix_alpha > 0)

    def draw(self, rng: np.random.Generator, height: int, width: int) -> MixDraw:
        """Decide one micro-batch's mix for frames of ``height x width``."""
        if not (self.mixes and rng.random() < self.prob):
            return MixDraw(1.0)
        if self.alpha > 0 and self.cutmix_alpha > 0:
            use_cutmix = bool(rng.random() < self.switch_prob)
        else:
            use_cutmix = self.cutmix_alpha > 0
        a = self.cutmix_alpha if use_cutmix else self.alpha
        lam = float(rng.beta(a, a))
        if not use_cutmix:
            return MixDraw(lam)
        box, lam = cutmix_box(height, width, lam, rng)
        return MixDraw(lam, box)

    def __call__(self, inputs: Sequence[torch.Tensor], labels: torch.Tensor, rng: np.random.Generator
                 ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Mix ``inputs`` (``[slow, fast]``, each (N, C, T, H, W)) and turn ``labels`` into soft targets.

        The inputs are not modified: mixed pathways are new tensors (same dtype and memory format); with
        ``lam = 1`` they are returned as they are.

        Returns:
            ``([slow, fast], targets)``: targets (N, K) float32 (:func:`mix_targets`).
        """
        sizes = {tuple(x.shape[-2:]) for x in inputs}
        if len(sizes) != 1:
            raise ValueError(f"mixup needs every pathway at the same height and width; got {sorted(sizes)}")
        height, width = sizes.pop()
        mix = self.draw(rng, height, width)
        if mix.lam == 1.0:
            return list(inputs), mix_targets(labels, self.num_classes, 1.0, self.label_smoothing)
        mixed = []
        for x in inputs:
            partner = x.flip(0)  # (N, C, T, H, W): sample i meets sample N-1-i
            if mix.box is None:
                mixed.append(x * mix.lam + partner * (1.0 - mix.lam))
            else:
                top, bottom, left, right = mix.box
                out = x.clone(memory_format=torch.preserve_format)
                out[..., top:bottom, left:right] = partner[..., top:bottom, left:right]  # every frame, every channel
                mixed.append(out)
        return mixed, mix_targets(labels, self.num_classes, mix.lam, self.label_smoothing)
