"""Multigrid training (Wu et al., "A Multigrid Method for Efficiently Training Video Models", CVPR 2020): which
clip shape, batch and learning-rate factor each epoch and each optimizer step trains with.

The schedule is PySlowFast's (``slowfast/utils/multigrid.py``, ``datasets/multigrid_helper.py``, ``kinetics.py``),
a pure function of the configuration and the epoch, so every rank, loader worker and resumed run agrees on it:

- **Long cycle** (``train.multigrid.long_cycle``): each LR step of the run (``train.lr_steps``; one step over the
  whole run under the cosine policy) is split into stages that cycle through ``long_cycle_factors`` ``(t, s)``:
  ``round(t * T)`` frames at a ``round(s * S)`` crop, the clips per optimizer step scaled by
  ``round(T * S^2 / (T' * S'^2))`` (the batch factor: constant cost per step) and the learning rate with it (the
  linear scaling PySlowFast's ``SOLVER.LRS`` carry). A stage's share of its step is its mean batch factor over
  the sum of them. After the last step a fine-tuning phase at the full shape keeps the run's iteration saving.
  The epochs are then scaled so that they total ``train.epochs * epoch_factor``, rounded at each stage end, and
  the frame stride of a stage with fewer frames is drawn per clip in ``[rate, rate * T // T']`` (the span
  stays about the same).
- **Short cycle** (``train.multigrid.short_cycle``): optimizer steps cycle through three crops,
  ``round(f * S)`` for each of ``short_cycle_factors`` and then the stage's own crop, with the clips per step
  scaled by ``round((crop / (f * S))^2)`` (the learning rate is not). Alone (no long cycle) it stretches the
  run to ``int(train.epochs * epoch_factor)`` epochs and the LR steps by the same factor.
- Under multigrid the smaller of a clip's sides is drawn in ``[round(lo * crop / S), hi]`` for a crop of
  ``crop`` pixels (``data.train_short_side = [lo, hi]``), as PySlowFast shrinks its ``min_scale``.

How a larger step is run here: as gradient accumulation (``engine.trainer.accumulation_step``) of
``train.accumulate * batch_factor`` micro-batches of ``data.batch_size * short-cycle factor`` clips. BatchNorm
therefore normalises over one micro-batch, which is what PySlowFast's ``sub_batchnorm`` does when
``MULTIGRID.BN_BASE_SIZE`` equals the per-GPU batch (the reference: 8 and 8), and the gradient is the mean over
the whole step. Validation, precise BN and testing always use the full shape (``data.num_frames``,
``data.*_crop``): the model is evaluated at the shape it is finally trained at.

Differences from PySlowFast, on purpose: its fine-tuning phase indexes the short-cycle shape list and fails
without the short cycle; here it is the full shape either way. Its long cycle needs a step LR policy; here the
cosine policy is allowed too (one long cycle over the run, the cosine over the multigrid epochs, times the batch
factor).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from utils.errors import UserError


class MultigridError(UserError, ValueError):
    """A multigrid setting that cannot be trained (a stage without Slow frames, a crop of 0 pixels)."""


@dataclass(frozen=True)
class Stage:
    """A long-cycle stage: epochs ``[start_epoch, end_epoch)`` at ``num_frames`` x ``crop``."""

    lr_index: int          # the LR step it belongs to (the LR is base * gamma ** lr_index * batch_factor)
    batch_factor: int      # clips per optimizer step relative to the full shape's
    num_frames: int
    crop: int
    start_epoch: int
    end_epoch: int


@dataclass(frozen=True)
class StepShape:
    """The shape of one optimizer step's clips and how they are batched."""

    num_frames: int
    crop: int
    micro_batch: int                 # clips per micro-batch (BatchNorm statistics over these)
    micro_batches: int               # micro-batches per optimizer step
    sampling_rates: tuple            # (lo, hi): the frame stride, drawn per clip in [lo, hi]
    short_side: tuple                # (lo, hi): the range the short side is scaled into

    @property
    def clips(self) -> int:
        return self.micro_batch * self.micro_batches


def _round(x: float) -> int:
    return int(round(x))


class Multigrid:
    """The multigrid schedule of one configuration (see the module docstring).

    Args:
        num_frames, crop, sampling_rate, short_side, batch_size: the full shape (``data.num_frames``,
            ``data.train_crop``, ``data.sampling_rate``, ``data.train_short_side``, ``data.batch_size``).
        accumulate: ``train.accumulate`` (micro-batches per step at the full shape).
        epochs: ``train.epochs``; ``lr_policy``, ``lr_steps``: ``train.lr_policy`` and ``train.lr_steps``.
        long_cycle, short_cycle, epoch_factor, long_cycle_factors, short_cycle_factors: ``train.multigrid.*``.
        alpha: the model's speed ratio: every stage's frame count must be a positive multiple of it.
    """

    def __init__(self, *, num_frames: int, crop: int, sampling_rate: int, short_side: Sequence[int],
                 batch_size: int, accumulate: int, epochs: int, lr_policy: str, lr_steps: Sequence[int],
                 long_cycle: bool, short_cycle: bool, epoch_factor: float,
                 long_cycle_factors: Sequence[Sequence[float]], short_cycle_factors: Sequence[float],
                 alpha: int = 1) -> None:
        if not (long_cycle or short_cycle):
            raise ValueError("Multigrid needs train.multigrid.long_cycle or short_cycle")
        self.T, self.S, self.rate = int(num_frames), int(crop), int(sampling_rate)
        self.short_side = (int(short_side[0]), int(short_side[1]))
        self.batch_size, self.accumulate, self.alpha = int(batch_size), int(accumulate), int(alpha)
        self.long_cycle, self.short_cycle = bool(long_cycle), bool(short_cycle)
        self.epoch_factor = float(epoch_factor)
        self.short_factors = [float(f) for f in short_cycle_factors]
        self.long_factors = [(float(t), float(s)) for t, s in long_cycle_factors]
        self.base_epochs = int(epochs)
        self._costs: dict[tuple[int, int], int] = {}
        steps = [int(s) for s in lr_steps] if lr_policy == "steps" else [0, int(epochs)]
        if long_cycle:
            self.stages = self._long_cycle_stages(steps)
            self.epochs = self.stages[-1].end_epoch
            # LR steps and factors per stage (PySlowFast's SOLVER.STEPS / LRS after init_multigrid)
            self.lr_steps = [s.start_epoch for s in self.stages]
        else:
            self.epochs = int(self.base_epochs * self.epoch_factor)
            self.stages = [Stage(0, 1, self.T, self.S, 0, self.epochs)]
            self.lr_steps = [int(s * self.epoch_factor) for s in steps]
        for stage in self.stages:
            self._check_shape(stage.num_frames, stage.crop, "train.multigrid.long_cycle_factors")
        for factor in self.short_factors if self.short_cycle else []:
            self._check_shape(self.T, _round(factor * self.S), "train.multigrid.short_cycle_factors")

    @classmethod
    def from_config(cls, cfg: Any, alpha: int = 1) -> Optional["Multigrid"]:
        """The schedule of ``cfg``, or None when ``train.multigrid`` is off."""
        grid = cfg.train.get("multigrid")
        if not grid or not (grid.get("long_cycle") or grid.get("short_cycle")):
            return None
        short = cfg.data.train_short_side
        short = short if isinstance(short, (list, tuple)) else (short, short)
        return cls(num_frames=cfg.data.num_frames, crop=cfg.data.train_crop, sampling_rate=cfg.data.sampling_rate,
                   short_side=short, batch_size=cfg.data.batch_size, accumulate=cfg.train.get("accumulate", 1),
                   epochs=cfg.train.epochs, lr_policy=cfg.train.get("lr_policy", "cosine"),
                   lr_steps=cfg.train.get("lr_steps", []), long_cycle=grid.long_cycle, short_cycle=grid.short_cycle,
                   epoch_factor=grid.epoch_factor, long_cycle_factors=grid.long_cycle_factors,
                   short_cycle_factors=grid.short_cycle_factors, alpha=alpha)

    # ------------------------------------------------------------------------------------------------ schedule
    def _check_shape(self, frames: int, crop: int, key: str) -> None:
        if frames < self.alpha or frames % self.alpha:
            raise MultigridError(
                f"{key} gives a stage of {frames} frames (data.num_frames={self.T}), which is not a positive "
                f"multiple of the model's alpha={self.alpha} (the Slow pathway takes every alpha-th frame); use "
                f"factors t with t * {self.T} a multiple of {self.alpha}, or more data.num_frames")
        if crop < 1:
            raise MultigridError(f"{key} gives a crop of {crop} pixels (data.train_crop={self.S}); use larger "
                                 f"factors")

    def _long_cycle_stages(self, steps: list[int]) -> list[Stage]:
        """PySlowFast's ``get_long_cycle_schedule``: (LR step, shape, cumulative rounded epochs) per stage."""
        full = float(self.T * self.S ** 2)
        shapes, mean_batch = [], []
        for t_factor, s_factor in self.long_factors:
            frames, crop = _round(self.T * t_factor), _round(self.S * s_factor)
            cycle = [(frames, self.S * f) for f in self.short_factors] if self.short_cycle else []
            cycle.append((frames, crop))
            batches = [_round(full / (t * s * s)) for t, s in cycle]
            shapes.append((batches[-1], frames, crop))
            mean_batch.append(sum(batches) / len(batches))
        if len(steps) < 2 or steps[0] != 0:
            raise MultigridError(f"train.lr_steps={steps} must start at 0 and hold at least one more epoch")
        raw, total_iters = [], 0.0
        for index in range(len(steps) - 1):
            step_epochs = steps[index + 1] - steps[index]
            for shape, batch in zip(shapes, mean_batch):
                epochs = step_epochs * batch / sum(mean_batch)
                total_iters += epochs / batch
                raw.append((index, shape, epochs))
        saving = steps[-1] / total_iters
        raw.append((len(steps) - 1, shapes[-1], (self.base_epochs - steps[-1]) / saving * mean_batch[-1]))
        scale = self.base_epochs * self.epoch_factor / sum(epochs for _, _, epochs in raw)
        stages, cumulative, start = [], 0.0, 0
        for index, (batch, frames, crop), epochs in raw:
            cumulative += epochs * scale
            end = _round(cumulative)
            if end > start:  # a stage rounded to no epoch is never trained
                stages.append(Stage(index, batch, frames, crop, start, end))
                start = end
        return stages

    def stage_at(self, epoch: int) -> Stage:
        """The long-cycle stage of ``epoch`` (the last stage past the end)."""
        for stage in self.stages:
            if epoch < stage.end_epoch:
                return stage
        return self.stages[-1]

    def lr_factor(self, epoch: float) -> float:
        """The stage's batch factor at ``epoch`` (the LR is scaled with the clips per step): the cosine
        policy's multiplier."""
        return float(self.stage_at(int(math.floor(epoch))).batch_factor)

    def step_lr_factor(self, epoch: float, gamma: float) -> float:
        """The step policy's LR relative to ``train.base_lr`` at ``epoch`` (PySlowFast's ``SOLVER.LRS`` as
        ``init_multigrid`` rewrites them): ``gamma ** lr_index * batch_factor`` of the stage, except that the
        first half of the fine-tuning phase keeps the LR of the stage before it."""
        if not self.long_cycle:
            index = sum(1 for step in self.lr_steps[1:] if step <= epoch)
            return float(gamma) ** index
        stage = self.stage_at(int(math.floor(epoch)))
        finetune = self.stages[-1]
        if stage is finetune and len(self.stages) > 1 and finetune.lr_index > self.stages[-2].lr_index:
            if epoch < (finetune.start_epoch + finetune.end_epoch) // 2:
                stage = self.stages[-2]
        return float(gamma) ** stage.lr_index * stage.batch_factor

    def step_shapes(self, epoch: int) -> list[StepShape]:
        """The shapes optimizer steps of ``epoch`` cycle through (step ``j`` uses entry ``j % len``)."""
        stage = self.stage_at(int(epoch))
        rates = (self.rate, self.rate * max(self.T // stage.num_frames, 1)) if self.long_cycle else (self.rate,) * 2
        micro_batches = self.accumulate * stage.batch_factor
        crops = [(_round(f * self.S), _round((stage.crop / (f * self.S)) ** 2)) for f in self.short_factors] \
            if self.short_cycle else []
        crops.append((stage.crop, 1))
        return [StepShape(stage.num_frames, crop, self.batch_size * factor, micro_batches, rates,
                          (_round(self.short_side[0] * crop / self.S), self.short_side[1]))
                for crop, factor in crops]

    def max_micro_batch(self) -> int:
        """The largest micro-batch of the run (a DALI pipeline's batch size)."""
        return max(shape.micro_batch for epoch in {s.start_epoch for s in self.stages}
                   for shape in self.step_shapes(epoch))

    def layout(self, shard_size: int, epoch: int) -> list[StepShape]:
        """The optimizer steps of ``epoch`` for a shard of ``shard_size`` videos: one shape per step, in order;
        a trailing step the shard cannot fill is dropped (PySlowFast's ``drop_last``)."""
        shapes, steps, used = self.step_shapes(epoch), [], 0
        while True:
            shape = shapes[len(steps) % len(shapes)]
            if used + shape.clips > shard_size:
                return steps
            steps.append(shape)
            used += shape.clips

    def epoch_cost(self, shard_size: int, epoch: int) -> int:
        """The pixels an epoch decodes and computes on one rank (clips x frames x crop^2 over its steps): what an
        epoch costs relative to another (the ETA's unit)."""
        key = (int(shard_size), int(epoch))
        if key not in self._costs:  # the ETA asks for every later epoch at every log line
            self._costs[key] = sum(s.clips * s.num_frames * s.crop ** 2 for s in self.layout(shard_size, epoch))
        return self._costs[key]

    def describe(self) -> list[str]:
        """One line per stage, for the training log."""
        lines = []
        for stage in self.stages:
            shapes = self.step_shapes(stage.start_epoch)
            crops = "/".join(str(s.crop) for s in shapes)
            lines.append(f"epochs {stage.start_epoch + 1}-{stage.end_epoch}: {stage.num_frames} frames, crops {crops}, "
                         f"{shapes[-1].micro_batches} micro-batch(es) of {'/'.join(str(s.micro_batch) for s in shapes)} "
                         f"clips per step, LR x{stage.batch_factor} (step {stage.lr_index})")
        return lines
