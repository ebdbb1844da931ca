"""The precision policy, one for training, validation, test and benchmarks.

``train.precision`` (training and validation) and ``test.precision`` (the multi-view test and ``--video``;
it falls back to ``train.precision`` in configurations without it) ask for ``bf16``, ``fp16`` or ``fp32``.
What runs:

- On a GPU: ``bf16`` autocast (falls back to ``fp16`` where the GPU has no bf16), ``fp16`` autocast, or
  ``fp32``. Training in fp16 needs a gradient scaler (:meth:`Precision.make_scaler`); bf16 and fp32 do not.
- On the CPU: fp32, because the recipes' ``bf16`` is meant for GPUs and CPU bf16 autocast is slower than fp32
  on CPUs without bf16 matrix units (measured 0.14x at batch 4 on 2 cores). To autocast bf16 on a CPU anyway,
  ask for it on the command line (``-o train.precision=bf16``). ``fp16`` on the CPU is an error when asked
  for on the command line, and fp32 otherwise.
- Inputs of an fp32 run are cast to fp32 (a bf16 DALI batch evaluated in fp32); under autocast they are
  handed over as delivered (:func:`to_model_inputs`).
- CUDA runs set ``torch.backends.cudnn.benchmark = True`` here (every run resolves its precision once, before
  its first step): clip shapes are fixed within a run, so cuDNN's autotuned kernels pay off after one step.

AMP in three lines, as every user of this module writes it::

    precision = resolve_precision("bf16", device, explicit=False)
    scaler = precision.make_scaler()          # None unless fp16
    with precision.autocast(): logits = model(to_model_inputs(pathways, device, True, precision))
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, ContextManager, Iterable, Optional, Sequence

import torch

from configs import ConfigError
from configs.schema import PRECISIONS  # the allowed names live with the configuration schema

log = logging.getLogger(__name__)

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
STAGES = ("train", "test")


@dataclass(frozen=True)
class Precision:
    """How the forward pass runs: the autocast dtype (None: plain fp32) on a device type."""

    name: str  # bf16 | fp16 | fp32: what actually runs (after the fallbacks)
    device_type: str  # cuda | cpu
    dtype: Optional[torch.dtype] = None

    def autocast(self) -> ContextManager:
        """The autocast context of this precision (``nullcontext`` for fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    @property
    def needs_scaler(self) -> bool:
        """fp16 gradients underflow without loss scaling; bf16 has fp32's exponent range."""
        return self.dtype == torch.float16

    def make_scaler(self) -> Optional[torch.amp.GradScaler]:
        """A gradient scaler for fp16 training, else None."""
        return torch.amp.GradScaler(self.device_type) if self.needs_scaler else None

    def cast_input(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` as the model takes it: fp32 in an fp32 run, as delivered under autocast."""
        if self.dtype is None and tensor.is_floating_point() and tensor.dtype != torch.float32:
            return tensor.float()
        return tensor


def resolve_precision(requested: str, device: torch.device, explicit: bool,
                      key: str = "train.precision") -> Precision:
    """The precision to run: ``requested`` where the device supports it (see the module docstring).

    Args:
        requested: ``bf16``, ``fp16`` or ``fp32`` (the value of ``key``).
        device: this process's device.
        explicit: whether ``key`` was given on the command line (``-o``): only then does the CPU autocast
            bf16, and only then is fp16 on the CPU an error rather than fp32.
        key: the configuration key ``requested`` came from, for messages.
    """
    if requested not in PRECISIONS:
        raise ConfigError(f"{key}={requested!r} is unknown; use one of {PRECISIONS}")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # the one place (see the module docstring)
        if requested == "bf16" and not torch.cuda.is_bf16_supported():
            log.warning("precision: this GPU has no bf16; using fp16 autocast (with a gradient scaler in training)")
            requested = "fp16"
        return Precision(requested, "cuda", _AUTOCAST_DTYPES[requested])
    if requested == "fp16":
        if explicit:
            raise ConfigError(f"{key}=fp16 needs a CUDA GPU; on the CPU use -o {key}=fp32 or bf16")
        requested = "fp32"
    if requested == "bf16" and not explicit:
        log.info("precision: fp32 on the CPU (the recipe's bf16 is for GPUs; -o %s=bf16 to autocast bf16 here)", key)
        requested = "fp32"
    return Precision(requested, device.type, _AUTOCAST_DTYPES[requested])


def requested_precision(cfg: Any, stage: str) -> tuple[str, str]:
    """``(key, value)`` of the precision ``stage`` asks for: ``train.precision``, or ``test.precision`` (which
    falls back to ``train.precision`` in a configuration without that key).

    Args:
        cfg: resolved configuration.
        stage: ``train`` (training, validation, precise BN) or ``test`` (multi-view test, ``--video``).
    """
    if stage not in STAGES:
        raise ValueError(f"stage={stage!r} is unknown; choose one of {STAGES}")
    if stage == "test" and "precision" in cfg.test:
        return "test.precision", cfg.test.precision
    return "train.precision", cfg.train.precision


def precision_for(cfg: Any, stage: str, device: torch.device, explicit_keys: Iterable[str] = ()) -> Precision:
    """The precision ``stage`` runs on ``device`` under ``cfg``.

    Args:
        cfg: resolved configuration.
        stage: ``train`` or ``test`` (see :func:`requested_precision`).
        device: where the model runs.
        explicit_keys: configuration keys given on the command line (:func:`overridden_keys`).
    """
    key, value = requested_precision(cfg, stage)
    return resolve_precision(value, device, key in set(explicit_keys), key=key)


def overridden_keys(overrides: Sequence[str]) -> frozenset:
    """The keys of ``-o key=value`` overrides: ``["train.precision=bf16"]`` -> ``{"train.precision"}``."""
    return frozenset(text.split("=", 1)[0].strip() for text in overrides if "=" in text)


def to_model_inputs(pathways: Sequence[torch.Tensor], device: torch.device, channels_last: bool,
                    precision: Precision) -> list[torch.Tensor]:
    """A loader's ``[slow, fast]`` on ``device``, in the model's memory layout and this precision's input dtype.

    Args:
        pathways: ``[slow, fast]`` (N, C, T, H, W) tensors from a loader.
        device: where the model is.
        channels_last: hand the pathways over as ``torch.channels_last_3d`` (a no-op for DALI's NTHWC
            batches, which already are channels_last_3d views).
        precision: fp32 runs get fp32 inputs (:meth:`Precision.cast_input`).
    """
    memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
    inputs = []
    for x in pathways:
        x = precision.cast_input(x.to(device, non_blocking=True))
        inputs.append(x.contiguous(memory_format=memory_format) if x.dim() == 5 else x)
    return inputs
