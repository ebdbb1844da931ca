"""Learning-rate schedule: linear warmup, then half-cosine to zero, as a pure function of the epoch.

The rule is PySlowFast's ``lr_policy.get_lr_at_epoch`` with ``cosine_end_lr = 0`` (PaddleVideo's
``CustomWarmupCosineDecay`` is the same):

- ``cosine(e) = lr * (1 + cos(pi * e / epochs)) / 2``: a half cosine over *all* epochs, from ``lr`` at
  epoch 0 to 0 at the last epoch.
- For ``e < warmup_epochs`` the LR is the straight line from ``warmup_start_lr`` at epoch 0 to
  ``cosine(warmup_epochs)`` at the end of warmup, so the curve is continuous there.

Linear scaling rule (Goyal et al., 2017): both ``base_lr`` and ``warmup_start_lr`` are given for
``train.base_batch`` clips per optimizer step and are multiplied by ``global_batch / base_batch`` with
``global_batch = data.batch_size * world_size``. The reference recipe (8 GPUs x 8 clips, base_lr 0.1,
base_batch 64) therefore trains at 0.1; one GPU with 8 clips trains at 0.0125.

The LR is set every iteration from ``epoch + iteration / iters_per_epoch``, so it depends only on the
position in training: a resumed run sees exactly the same sequence.
"""

from __future__ import annotations

import math
from typing import Any


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


def lr_at(epoch: float, cfg: Any, world_size: int = 1) -> float:
    """The learning rate at fractional ``epoch`` (``epoch_index + iteration / iters_per_epoch``).

    Args:
        epoch: position in training, in epochs (0 = the first step, ``cfg.train.epochs`` = the end).
        cfg: the resolved configuration; reads ``train.{base_lr, warmup_start_lr, warmup_epochs,
            epochs, base_batch}`` and ``data.batch_size``.
        world_size: number of processes (the global batch is ``data.batch_size * world_size``).
    """
    train = cfg.train
    total = float(train.epochs)
    if total <= 0:
        raise ValueError(f"train.epochs={train.epochs} must be positive")
    base = scaled_lr(train.base_lr, cfg.data.batch_size, world_size, train.base_batch)
    start = scaled_lr(train.warmup_start_lr, cfg.data.batch_size, world_size, train.base_batch)

    def cosine(e: float) -> float:
        return base * (1.0 + math.cos(math.pi * min(e, total) / total)) / 2.0

    warmup = float(train.warmup_epochs)
    if epoch < warmup:
        return start + (cosine(warmup) - start) * epoch / warmup
    return cosine(epoch)
