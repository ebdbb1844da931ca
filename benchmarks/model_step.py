"""Stage 2: the engine's training step (``engine.trainer.train_step``) on synthetic input already on the device.

What is timed is the step training runs: the model from ``engine.model.build_model``, the optimizer from
``engine.trainer.build_optimizer`` (the recipe's SGD: Nesterov momentum, weight decay on conv/linear weights,
fused on CUDA), ``engine.trainer.wrap_model`` for ``torch.compile``, the precision from ``engine.precision``
(a gradient scaler for fp16), inputs through ``engine.precision.to_model_inputs``, and the non-finite-loss
guard with its BN-buffer snapshot.

Variants, as the reference implementations run and as this project runs:
- ``fp32 NCDHW eager`` (baseline): float32, contiguous NCTHW, no compile.
- ``bf16 channels-last``: bf16 autocast, model and inputs in ``torch.channels_last_3d``.
- ``bf16 channels-last + compile``: the same under ``torch.compile``.
Peak memory is ``torch.cuda.max_memory_allocated`` over the timed windows (CUDA only).
"""
from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Optional

import torch

from benchmarks.timing import Measurement, measure
from configs import load_config
from engine.distributed import DistInfo
from engine.model import build_model
from engine.precision import resolve_precision, to_model_inputs
from engine.trainer import BufferSnapshot, build_optimizer, train_step, wrap_model


@dataclass(frozen=True)
class StepVariant:
    name: str
    precision: str          # fp32 | bf16
    channels_last: bool
    compile: bool


BASELINE = StepVariant("fp32 NCDHW eager", "fp32", False, False)
OURS = StepVariant("bf16 channels-last", "bf16", True, False)
OURS_COMPILED = StepVariant("bf16 channels-last + compile", "bf16", True, True)
# NOTE: on a CPU without native bf16 units, bf16 autocast is emulated and slower than fp32 (measured here:
# 0.14x at batch 4 on 2 cores), and training runs fp32 on CPUs (engine.precision); so on CPU "ours" is fp32
# channels-last.
OURS_CPU = StepVariant("fp32 channels-last", "fp32", True, False)
OURS_CPU_COMPILED = StepVariant("fp32 channels-last + compile", "fp32", True, True)


def our_variants(device: torch.device) -> tuple[StepVariant, StepVariant]:
    """This project's (eager, compiled) step variants on ``device``."""
    return (OURS, OURS_COMPILED) if device.type == "cuda" else (OURS_CPU, OURS_CPU_COMPILED)


def make_inputs(batch: int, alpha: int, frames: int, size: int, device: torch.device, channels_last: bool,
                generator: Optional[torch.Generator] = None) -> list[torch.Tensor]:
    """Random (not zero) clips: zeros can run faster than real data."""
    fast = torch.randn(batch, 3, frames, size, size, device=device, generator=generator)
    slow = fast[:, :, :: alpha].clone()
    if channels_last:
        fast = fast.contiguous(memory_format=torch.channels_last_3d)
        slow = slow.contiguous(memory_format=torch.channels_last_3d)
    return [slow, fast]


class TrainStep:
    """A callable training step for one model/variant/batch: ``engine.trainer.train_step`` with its own model,
    optimizer, precision and fixed inputs (replace ``inputs`` / ``labels`` to feed real batches)."""

    def __init__(self, model_name: str, variant: StepVariant, batch: int, device: torch.device,
                 frames: int = 32, size: int = 224, num_classes: int = 400, model_args: Optional[dict] = None):
        self.device = device
        self.variant = variant
        cfg = load_config(None, [f"model.name={model_name}", f"model.num_classes={num_classes}",
                                 f"model.channels_last={str(variant.channels_last).lower()}",
                                 f"train.compile={str(variant.compile).lower()}",
                                 f"train.precision={variant.precision}", f"data.num_frames={frames}"])
        cfg.model.args = dict(model_args or {})
        self.model = build_model(cfg, device)
        alpha = self.model.arch.alpha
        self.optimizer = build_optimizer(self.model, cfg, device)
        self.forward = wrap_model(self.model, cfg, DistInfo(device=device))
        # explicit: the variant's precision is what is measured, also on a CPU
        self.precision = resolve_precision(variant.precision, device, explicit=True)
        self.scaler = self.precision.make_scaler()
        self.snapshot = BufferSnapshot(self.model)
        gen = torch.Generator(device=device).manual_seed(0)
        self.inputs = make_inputs(batch, alpha, frames, size, device, variant.channels_last, gen)
        self.labels = torch.randint(0, num_classes, (batch,), device=device, generator=gen)
        self.model.train()

    def __call__(self) -> None:
        inputs = to_model_inputs(self.inputs, self.device, self.variant.channels_last, self.precision)
        train_step(self.forward, self.optimizer, inputs, self.labels, self.precision, self.scaler, self.snapshot)


def measure_step(model_name: str, variant: StepVariant, batch: int, device: torch.device, *, frames: int = 32,
                 size: int = 224, warmup: int = 3, repeats: int = 5, iters: int = 5,
                 model_args: Optional[dict] = None) -> Measurement:
    step = TrainStep(model_name, variant, batch, device, frames, size, model_args=model_args)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result = measure(step, batch, warmup=warmup + (2 if variant.compile else 0), repeats=repeats, iters=iters,
                     unit="clips/s", device=device)
    result.extra["batch"] = batch
    if device.type == "cuda":
        result.extra["peak_mem_gb"] = round(torch.cuda.max_memory_allocated(device) / 1e9, 2)
    del step
    release(device)
    return result


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def fits(model_name: str, variant: StepVariant, batch: int, device: torch.device, frames: int, size: int) -> bool:
    """Whether one step at ``batch`` runs without running out of memory."""
    try:
        step = TrainStep(model_name, variant, batch, device, frames, size)
        step()
        step()
        ok = True
    except torch.cuda.OutOfMemoryError:
        ok = False
    step = None  # noqa: F841 - drop references before releasing the cache
    release(device)
    return ok


def largest_batch(model_name: str, variant: StepVariant, device: torch.device, frames: int = 32, size: int = 224,
                  start: int = 8, limit: int = 512) -> int:
    """The largest batch (doubling, then bisecting) that fits on ``device``; CUDA only."""
    if not fits(model_name, variant, start, device, frames, size):
        return 0
    lo, hi = start, None
    while hi is None and lo * 2 <= limit:
        if fits(model_name, variant, lo * 2, device, frames, size):
            lo *= 2
        else:
            hi = lo * 2
    if hi is None:
        return lo
    while hi - lo > max(lo // 8, 1):
        mid = (lo + hi) // 2
        if fits(model_name, variant, mid, device, frames, size):
            lo = mid
        else:
            hi = mid
    return lo
