"""Learning-rate schedule: linear warmup, then half-cosine to zero (or steps), as a pure function of the epoch.

``train.lr_policy: steps`` is PySlowFast's ``steps_with_relative_lrs`` with ``LRS[i] = train.lr_gamma ** i``: the
LR is ``base_lr * gamma ** i`` from epoch ``train.lr_steps[i]`` on, after the same warm-up line. Multigrid
training (:mod:`pipelines.multigrid`) brings its own steps and a per-stage factor (:func:`lr_at`'s ``multigrid``).

The rule is PySlowFast's ``lr_policy.get_lr_at_epoch`` with ``cosine_end_lr = 0`` (PaddleVideo's
``CustomWarmupCosineDecay`` is the same):

- ``cosine(e) = lr * (1 + cos(pi * e / epochs)) / 2``: a half cosine over *all* epochs, from ``lr`` at
  epoch 0 to 0 at the last epoch.
- For ``e < warmup_epochs`` the LR is the straight line from ``warmup_start_lr`` at epoch 0 to
  ``cosine(warmup_epochs)`` at the end of warmup, so the curve is continuous there.

Linear scaling rule (Goyal et al., 2017): both ``base_lr`` and ``warmup_start_lr`` are given for
``train.base_batch`` clips per optimizer step and are multiplied by ``global_batch / base_batch`` with
``global_batch = data.batch_size * world_size * train.accumulate`` (:func:`global_batch`). The reference recipe
(8 GPUs x 8 clips, base_lr 0.1, base_batch 64) therefore trains at 0.1; one GPU with 8 clips trains at 0.0125,
and one GPU with 8 clips and ``train.accumulate: 8`` at 0.1 again (one optimizer step per 64 clips).

Warm-up longer than the run: a warm-up is capped at :data:`MAX_WARMUP_FRACTION` (half) of ``train.epochs``
(:func:`effective_warmup`). ``-o train.epochs=1`` on the reference recipe (34 warm-up epochs) would otherwise
spend the whole run on the first 3% of its warm-up line, near ``warmup_start_lr``; with the cap it warms up over
0.5 epoch, to ``cosine(0.5)``, then follows the cosine to 0. The trainer logs the adjusted value once. The
reference recipe (34 of 196 epochs, 17%) and the demo (1 of 17) are below the cap and unchanged.

The LR is set every optimizer step from ``epoch + step / steps_per_epoch`` (with gradient accumulation a step is
``train.accumulate`` micro-batches), so it depends only on the position in training: a resumed run sees exactly
the same sequence.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from pipelines.multigrid import Multigrid

MAX_WARMUP_FRACTION = 0.5  # the longest warm-up, as a share of train.epochs


def global_batch(cfg: Any, world_size: int = 1) -> int:
    """Clips per optimizer step over all processes: ``data.batch_size * world_size * train.accumulate``.

    Args:
        cfg: the resolved configuration (``train.accumulate`` missing, as in older configurations, means 1).
        world_size: number of processes.
    """
    return int(cfg.data.batch_size) * int(world_size) * int(cfg.train.get("accumulate", 1))


def scaled_lr(lr: float, batch_size: int, world_size: int, base_batch: int) -> float:
    """``lr`` given for ``base_batch`` clips, scaled linearly to ``batch_size * world_size`` clips.

    Args:
        lr: learning rate for a global batch of ``base_batch`` clips.
        batch_size: clips per process per step (``data.batch_size``).
        world_size: number of processes.
        base_batch: the global batch ``lr`` was tuned for (``train.base_batch``).
    """
    if base_batch <= 0:
        raise ValueError(f"train.base_batch={base_batch} must be a positive number of clips, e.g. 64")
    return float(lr) * batch_size * world_size / base_batch


def effective_warmup(warmup_epochs: float, epochs: float) -> float:
    """The warm-up length actually used: ``warmup_epochs``, at most ``MAX_WARMUP_FRACTION * epochs``.

    Args:
        warmup_epochs: ``train.warmup_epochs``.
        epochs: ``train.epochs``.
    """
    return min(float(warmup_epochs), MAX_WARMUP_FRACTION * float(epochs))


def lr_at(epoch: float, cfg: Any, world_size: int = 1, multigrid: Optional[Multigrid] = None) -> float:
    """The learning rate at fractional ``epoch`` (``epoch_index + iteration / iters_per_epoch``).

    Args:
        epoch: position in training, in epochs (0 = the first step, the run's epochs = the end).
        cfg: the resolved configuration; reads ``train.{base_lr, warmup_start_lr, warmup_epochs, epochs,
            base_batch, accumulate, lr_policy, lr_steps, lr_gamma}`` and ``data.batch_size``; the warm-up is
            :func:`effective_warmup`.
        world_size: number of processes (the global batch is :func:`global_batch`).
        multigrid: the run's multigrid schedule (:class:`pipelines.multigrid.Multigrid`), if any: the run lasts
            its ``epochs``, its LR steps replace ``train.lr_steps``, and a long-cycle stage's LR is multiplied by
            its batch factor (PySlowFast's multigrid ``SOLVER.LRS``); the warm-up line ends at that value.
    """
    train = cfg.train
    total = float(multigrid.epochs if multigrid is not None else train.epochs)
    if total <= 0:
        raise ValueError(f"train.epochs={train.epochs} must be positive")
    clips = global_batch(cfg, world_size)  # = batch_size x (world_size x accumulate) in scaled_lr's terms
    base = scaled_lr(train.base_lr, clips, 1, train.base_batch)
    start = scaled_lr(train.warmup_start_lr, clips, 1, train.base_batch)
    policy = train.get("lr_policy", "cosine")
    gamma = float(train.get("lr_gamma", 0.1))

    def scheduled(e: float) -> float:
        if policy == "steps":
            if multigrid is not None:
                return base * multigrid.step_lr_factor(e, gamma)
            return base * gamma ** sum(1 for step in list(train.lr_steps)[1:] if step <= e)
        value = base * (1.0 + math.cos(math.pi * min(e, total) / total)) / 2.0
        return value * (multigrid.lr_factor(e) if multigrid is not None else 1.0)

    warmup = effective_warmup(train.warmup_epochs, total)
    if epoch < warmup:
        return start + (scheduled(warmup) - start) * epoch / warmup
    return scheduled(epoch)
