"""Stage 2: one training step (forward, backward, SGD) on synthetic input already on the device.

Variants, as the reference implementations run and as this project runs:
- ``fp32 NCDHW eager`` (baseline): float32, contiguous NCTHW, no compile.
- ``bf16 channels-last``: bf16 autocast, model and inputs in ``torch.channels_last_3d``.
- ``bf16 channels-last + compile``: the same under ``torch.compile``.
Peak memory is ``torch.cuda.max_memory_allocated`` over the timed windows (CUDA only).
"""
from __future__ import annotations

import contextlib
import gc
from dataclasses import dataclass
from typing import Optional

import torch

from benchmarks.timing import Measurement, measure
from models import create_model


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
# 0.14x at batch 4 on 2 cores), and train.py runs fp32 on CPUs; so on CPU "ours" is fp32 channels-last.
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
    """A callable training step for one model/variant/batch, with its own optimizer."""

    def __init__(self, model_name: str, variant: StepVariant, batch: int, device: torch.device,
                 frames: int = 32, size: int = 224, num_classes: int = 400, model_args: Optional[dict] = None):
        self.device = device
        self.model = create_model(model_name, num_classes=num_classes, **(model_args or {})).to(device)
        alpha = self.model.arch.alpha
        if variant.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last_3d)
        self.forward = torch.compile(self.model) if variant.compile else self.model
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, nesterov=True,
                                         weight_decay=1e-4)
        gen = torch.Generator(device=device).manual_seed(0)
        self.inputs = make_inputs(batch, alpha, frames, size, device, variant.channels_last, gen)
        self.labels = torch.randint(0, num_classes, (batch,), device=device, generator=gen)
        self.autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if variant.precision == "bf16"
                         else contextlib.nullcontext())
        self.loss_fn = torch.nn.CrossEntropyLoss()

    def __call__(self) -> None:
        with self.autocast:
            loss = self.loss_fn(self.forward(self.inputs), self.labels)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


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
