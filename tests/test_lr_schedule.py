"""The LR schedule against values worked out by hand from PySlowFast's rule (warmup, then half-cosine)."""

from __future__ import annotations

import math

import pytest

from configs import load_config
from engine.lr_schedule import effective_warmup, lr_at, scaled_lr


def _cfg(**train):
    overrides = [f"train.{key}={value}" for key, value in train.items()]
    return load_config(None, ["data.batch_size=8", *overrides])


def test_reference_recipe_on_8_gpus():
    # slowfast.yaml: 8 GPUs x 8 clips = 64 = base_batch, so no scaling: base 0.1, warmup from 0.01 over 34 of
    # 196 epochs. Hand values: cos(pi*34/196) = 0.855143; cosine(34) = 0.1 * (1 + 0.855143) / 2 = 0.0927571.
    cfg = _cfg(epochs=196, base_lr=0.1, base_batch=64, warmup_epochs=34, warmup_start_lr=0.01)
    assert lr_at(0, cfg, world_size=8) == pytest.approx(0.01)
    # warmup midpoint: halfway between 0.01 and 0.0927571
    assert lr_at(17, cfg, world_size=8) == pytest.approx((0.01 + 0.0927571) / 2, rel=1e-5)
    # end of warmup: the cosine curve (continuous), below base_lr because the cosine starts at epoch 0
    assert lr_at(34, cfg, world_size=8) == pytest.approx(0.0927571, rel=1e-5)
    assert lr_at(34 - 1e-9, cfg, world_size=8) == pytest.approx(0.0927571, rel=1e-5)
    # cosine midpoint (epoch 98 of 196): half the base LR
    assert lr_at(98, cfg, world_size=8) == pytest.approx(0.05)
    # end: zero
    assert lr_at(196, cfg, world_size=8) == pytest.approx(0.0, abs=1e-12)
    # a fractional epoch inside the cosine: 150.5 -> 0.1 * (1 + cos(pi * 150.5 / 196)) / 2 = 0.0127179
    assert lr_at(150.5, cfg, world_size=8) == pytest.approx(0.0127179, rel=1e-4)


def test_linear_scaling_with_the_global_batch():
    cfg = _cfg(epochs=10, base_lr=0.1, base_batch=64, warmup_epochs=0, warmup_start_lr=0.01)
    # one GPU x 8 clips = 8 / 64 of the base batch
    assert lr_at(0, cfg, world_size=1) == pytest.approx(0.0125)
    # 16 GPUs x 8 clips = 128 clips: twice the base LR
    assert lr_at(0, cfg, world_size=16) == pytest.approx(0.2)
    assert scaled_lr(0.1, 8, 4, 64) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="base_batch=0"):
        scaled_lr(0.1, 8, 1, 0)


def test_warmup_start_is_scaled_too_and_steps_are_monotonic():
    cfg = _cfg(epochs=4, base_lr=0.4, base_batch=64, warmup_epochs=1, warmup_start_lr=0.04)
    # batch 8, one process: base 0.05, start 0.005; cosine(1 of 4) = 0.05 * (1 + cos(pi/4)) / 2 = 0.0426777
    assert lr_at(0, cfg) == pytest.approx(0.005)
    assert lr_at(1, cfg) == pytest.approx(0.05 * (1 + math.sqrt(0.5)) / 2)
    per_iteration = [lr_at(i / 10, cfg) for i in range(41)]
    assert all(a < b for a, b in zip(per_iteration[:10], per_iteration[1:11]))  # rising in warmup
    assert all(a > b for a, b in zip(per_iteration[10:40], per_iteration[11:41]))  # falling after


def test_a_warmup_longer_than_half_the_run_is_capped_at_half():
    # The reference recipe's 34 warm-up epochs with -o train.epochs=1, batch 64 = base_batch: base 0.1, start 0.01.
    # The cap makes the warm-up 0.5 epoch, to cosine(0.5) = 0.1 * (1 + cos(pi/2)) / 2 = 0.05.
    cfg = _cfg(epochs=1, base_lr=0.1, base_batch=8, warmup_epochs=34, warmup_start_lr=0.01)
    assert effective_warmup(34, 1) == 0.5
    assert lr_at(0, cfg) == pytest.approx(0.01)
    assert lr_at(0.25, cfg) == pytest.approx(0.03)  # halfway up the line 0.01 -> 0.05
    assert lr_at(0.5, cfg) == pytest.approx(0.05)
    # then the cosine: 0.1 * (1 + cos(0.75 pi)) / 2 = 0.1 * (1 - 0.7071068) / 2 = 0.0146447
    assert lr_at(0.75, cfg) == pytest.approx(0.0146447, rel=1e-5)
    assert lr_at(1.0, cfg) == pytest.approx(0.0, abs=1e-12)
    # Without the cap the LR at 0.25 epoch would be 0.01 + (0 - 0.01) * 0.25 / 34, about 0.00993.
    # A warm-up of exactly half the run, or less, is kept as given.
    assert effective_warmup(2, 4) == 2.0
    assert effective_warmup(34, 196) == 34.0
