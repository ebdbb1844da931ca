"""Train SlowFast: bf16 channels-last, DDP, DALI (or PyAV) loaders, PySlowFast's recipe.

One device (a GPU, or the CPU)::

    python train.py --validate -c configs/recognition/slowfast/slowfast.yaml

One node with 8 GPUs (the reference recipe: 8 x 8 clips, LR 0.1)::

    torchrun --nproc_per_node=8 train.py --validate -c configs/recognition/slowfast/slowfast.yaml

Several nodes: the same command on every node, with
``--nnodes=2 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 --rdzv_id=JOB`` (or ``--nnodes=2 --node_rank=R
--master_addr=HOST --master_port=29500``). Add ``--max-restarts=3`` to let torchrun restart crashed
workers: a restarted run resumes from ``latest.pt`` by itself.

Options: ``-o key=value`` overrides any config key, ``--resume [CKPT]`` continues a run (its
``latest.pt`` by default), ``-w PATH`` starts from weights in any format :func:`models.load_weights`
reads, ``--output-dir DIR`` replaces ``train.output_dir``.

Precision (``train.precision``): on a GPU, ``bf16`` autocast (default; falls back to ``fp16`` where the
GPU has no bf16), ``fp16`` autocast with a gradient scaler, or ``fp32``. On the CPU the run is fp32: the
recipes' ``bf16`` is meant for GPUs, and CPU bf16 autocast is slower than fp32 on CPUs without bf16
matrix units. To autocast bf16 on a CPU anyway, set it on the command line: ``-o train.precision=bf16``.

Weight decay applies to convolution and linear weights only; BatchNorm parameters and biases get none
(PySlowFast's default ``BN.WEIGHT_DECAY = 0``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import os
import random
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ContextManager, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import models
from configs import Config, ConfigError, add_config_args, config_from_args, save_config
from engine import checkpoint as ckpt
from engine import distributed
from engine.lr_schedule import lr_at, scaled_lr
from engine.meters import RunLog, SmoothedValue, format_duration, setup_logging, topk_correct
from engine.precise_bn import update_bn_stats
from pipelines import BackendUnavailable, build_loader
from pipelines.dataset import DatasetError
from utils.errors import UserError

log = logging.getLogger("train")

# NOTE: with channels_last_3d, a 1x1x1 conv weight (C_out, C_in, 1, 1, 1) gets strides (C_in, 1, C_in, C_in,
# C_in) while autograd hands DDP a gradient with strides (C_in, 1, 1, 1, 1): the same memory (the size-1
# dims' strides are meaningless), yet DDP's reducer warns "Grad strides do not match bucket view strides"
# on every such layer (seen with torch 2.13, gloo, slowfast_tiny). Silence that one message.
warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")

PRECISIONS = ("bf16", "fp16", "fp32")


class TrainingError(UserError, RuntimeError):
    """Training cannot go on (bad setup or diverged); the message says what happened and what to do."""


class NonFiniteLossError(TrainingError):
    """The loss stayed NaN/inf for ``train.max_nonfinite`` consecutive steps."""


# ---------------------------------------------------------------------------------------------- parse


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train a SlowFast video classifier (single process, or one process per GPU via torchrun)."
    )
    add_config_args(parser)
    parser.add_argument(
        "--validate",
        action="store_true",
        help="validate (single centred clip) every train.validate_every epochs and at the end; "
        "keeps best.pt",
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        metavar="CHECKPOINT",
        help="continue a run: from CHECKPOINT, or without a value from <output_dir>/latest.pt "
        "(starts from scratch, with a log line, when there is none yet)",
    )
    parser.add_argument(
        "-w",
        "--weights",
        metavar="PATH",
        help="initial weights in any format models.load_weights reads (this project, PySlowFast "
        ".pyth, pytorchvideo, Caffe2 .pkl, PaddleVideo .pdparams); a head of another class "
        "count is re-initialised",
    )
    parser.add_argument(
        "--output-dir", metavar="DIR", help="where checkpoints and logs go (train.output_dir)"
    )
    return parser.parse_args(argv)


def _overridden_keys(overrides: list[str]) -> set[str]:
    return {text.split("=", 1)[0].strip() for text in overrides if "=" in text}


def check_config(cfg: Config) -> None:
    """Reject values training cannot use, naming the key and the fix."""
    train = cfg.train
    if train.precision not in PRECISIONS:
        raise ConfigError(f"train.precision={train.precision!r} is unknown; use one of {PRECISIONS}")
    positive = {
        "train.epochs": train.epochs,
        "data.batch_size": cfg.data.batch_size,
        "train.base_batch": train.base_batch,
        "train.validate_every": train.validate_every,
        "train.save_every": train.save_every,
        "train.log_every": train.log_every,
        "train.max_nonfinite": train.max_nonfinite,
    }
    for key, value in positive.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{key}={value!r} must be a positive integer")
    if train.get("optimizer", "sgd") not in OPTIMIZERS:
        raise ConfigError(f"train.optimizer={train.get('optimizer')!r} must be one of {OPTIMIZERS}")
    for key, value in {
        "train.base_lr": train.base_lr,
        "train.warmup_start_lr": train.warmup_start_lr,
        "train.warmup_epochs": train.warmup_epochs,
        "train.weight_decay": train.weight_decay,
        "train.momentum": train.momentum,
        "train.precise_bn_batches": train.precise_bn_batches,
    }.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"{key}={value!r} must be a non-negative number")


# ---------------------------------------------------------------------------------------------- build


@dataclass
class Precision:
    """How the forward pass runs: autocast dtype (or none) and whether a gradient scaler is needed."""

    name: str
    device_type: str
    dtype: Optional[torch.dtype] = None

    def autocast(self) -> ContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    @property
    def needs_scaler(self) -> bool:
        return self.dtype == torch.float16


def resolve_precision(requested: str, device: torch.device, explicit: bool) -> Precision:
    """The precision to run: ``requested`` where the device supports it (see the module docstring).

    Args:
        requested: ``train.precision``.
        device: this process's device.
        explicit: whether ``train.precision`` was given on the command line (``-o``).
    """
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
    if device.type == "cuda":
        if requested == "bf16" and not torch.cuda.is_bf16_supported():
            log.warning("precision: this GPU has no bf16; using fp16 autocast with a gradient scaler")
            requested = "fp16"
        return Precision(requested, "cuda", dtypes[requested])
    if requested == "fp16":
        if explicit:
            raise ConfigError("train.precision=fp16 needs a CUDA GPU; on the CPU use fp32 or bf16")
        requested = "fp32"
    if requested == "bf16" and not explicit:
        log.info(
            "precision: fp32 on the CPU (the recipe's bf16 is for GPUs; -o train.precision=bf16 to "
            "autocast bf16 here)"
        )
        requested = "fp32"
    return Precision(requested, "cpu", dtypes[requested])


def build_model(cfg: Config, device: torch.device, weights: Optional[str] = None) -> nn.Module:
    """The bare network on ``device`` (channels-last if configured), maybe initialised from ``weights``."""
    try:
        model = models.create_model(cfg.model.name, num_classes=cfg.model.num_classes,
                                    **dict(cfg.model.args or {}))
    except (ValueError, TypeError) as err:  # unknown name or architecture field: the message names it
        raise ConfigError(
            f"model.name={cfg.model.name!r} / model.args={dict(cfg.model.args or {})}: {err}") from None
    if weights:
        # reinit_head only acts when the file's classifier has another class count (fine-tuning).
        report = models.load_weights(model, weights, strict=True, reinit_head=True)
        log.info("weights: %s: %s", weights, report.summary())
        if report.reinitialized:
            log.info("weights: the classifier (%s) was re-initialised for model.num_classes=%d (fine-tuning)",
                     ", ".join(report.reinitialized), cfg.model.num_classes)
    model.to(device)
    if cfg.model.channels_last:
        model.to(memory_format=torch.channels_last_3d)
    return model


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed (conv/linear weights) and not decayed (norm parameters and all biases)."""
    decay, no_decay = [], []
    norm_types = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            if isinstance(module, norm_types) or name == "bias" or param.ndim <= 1:
                no_decay.append(param)
            else:
                decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


OPTIMIZERS = ("sgd", "adamw")


def build_optimizer(model: nn.Module, cfg: Config, device: torch.device) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum (the recipe); fused kernels on CUDA (torch's, else apex's when installed).

    ``train.optimizer: adamw`` selects AdamW instead (same parameter groups, LR schedule and weight decay;
    momentum/nesterov unused). It exists for the CPU demo: ``slowfast_tiny`` trained from scratch for a few
    hundred steps stays at chance with SGD (lr 0.0125-0.4 tried on the synthetic motion data), while AdamW
    learns it; see configs/demo.yaml.
    """
    groups = param_groups(model, float(cfg.train.weight_decay))
    if cfg.train.get("optimizer", "sgd") == "adamw":
        log.info("optimizer: torch.optim.AdamW")
        return torch.optim.AdamW(groups, lr=float(cfg.train.base_lr))
    kwargs = dict(
        lr=float(cfg.train.base_lr),
        momentum=float(cfg.train.momentum),
        nesterov=bool(cfg.train.nesterov) and cfg.train.momentum > 0,
    )
    if device.type == "cuda":
        try:
            optimizer = torch.optim.SGD(groups, fused=True, **kwargs)
            log.info("optimizer: torch.optim.SGD(fused=True)")
            return optimizer
        except (TypeError, RuntimeError) as err:  # torch builds without the fused SGD kernel
            log.info("optimizer: torch fused SGD unavailable (%s)", err)
        try:
            from apex.optimizers import FusedSGD  # NVIDIA apex; the unrelated PyPI `apex` has no optimizers
        except ImportError:
            FusedSGD = None
        if FusedSGD is not None:
            log.info("optimizer: apex.optimizers.FusedSGD")
            return FusedSGD(groups, **kwargs)
    return torch.optim.SGD(groups, **kwargs)


def wrap_model(model: nn.Module, cfg: Config, dist_info: distributed.DistInfo) -> nn.Module:
    """SyncBatchNorm (optional), DDP (when distributed), torch.compile (optional), in that order."""
    if dist_info.distributed:
        if cfg.train.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            log.info("sync_bn: BatchNorm statistics synchronised across %d ranks", dist_info.world_size)
        device_ids = [dist_info.device.index] if dist_info.device.type == "cuda" else None
        # Gradients as views of the all-reduce buckets: no copy into the buckets, less memory.
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=device_ids, gradient_as_bucket_view=True
        )
    if cfg.train.compile:
        model = torch.compile(model)
    return model


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------- state


@dataclass
class Trainer:
    """Everything one process trains with; built by :func:`build_trainer`."""

    cfg: Config
    dist: distributed.DistInfo
    model: nn.Module  # what forward runs (DDP / compiled wrappers included)
    bare_model: nn.Module  # what is saved and what precise BN updates
    optimizer: torch.optim.Optimizer
    precision: Precision
    scaler: Optional[torch.amp.GradScaler]
    train_loader: Any
    val_loader: Any
    output_dir: Path
    run_log: RunLog
    validate: bool = False
    epoch: int = 0  # epochs completed
    iteration: int = 0  # optimizer steps attempted (skipped non-finite ones included)
    nonfinite_streak: int = 0
    nonfinite_total: int = 0
    best_top1: float = -1.0
    best_epoch: int = -1
    history: list = field(default_factory=list)
    prefix: str = ckpt.DEFAULT_PREFIX

    @property
    def iters_per_epoch(self) -> int:
        return len(self.train_loader)

    def lr(self, epoch_float: float) -> float:
        return lr_at(epoch_float, self.cfg, self.dist.world_size)


def build_trainer(
    cfg: Config,
    dist_info: distributed.DistInfo,
    *,
    validate: bool = False,
    weights: Optional[str] = None,
    explicit_keys: frozenset = frozenset(),
) -> Trainer:
    """Model, optimizer, precision, loaders and log sinks for this process."""
    device = dist_info.device
    output_dir = Path(cfg.train.output_dir)
    # Every rank builds the same initial weights (DDP would broadcast rank 0's anyway), then each rank
    # draws its own dropout/augmentation randomness.
    seed_everything(int(cfg.train.seed))
    model = build_model(cfg, device, weights)
    seed_everything(int(cfg.train.seed) + dist_info.rank)
    precision = resolve_precision(cfg.train.precision, device, "train.precision" in explicit_keys)
    optimizer = build_optimizer(model, cfg, device)
    scaler = torch.amp.GradScaler(device.type) if precision.needs_scaler else None
    wrapped = wrap_model(model, cfg, dist_info)
    alpha = int(model.arch.alpha)
    train_loader = build_loader(
        cfg, "train", rank=dist_info.rank, world_size=dist_info.world_size, alpha=alpha
    )
    if len(train_loader) == 0:
        raise TrainingError(
            f"the training loader yields no batch: {len(train_loader.records)} videos over "
            f"{dist_info.world_size} "
            f"process(es) with data.batch_size={cfg.data.batch_size}; lower data.batch_size or add videos"
        )
    val_loader = None
    if validate:
        val_loader = build_loader(
            cfg, "val", rank=dist_info.rank, world_size=dist_info.world_size, alpha=alpha
        )
    return Trainer(
        cfg=cfg,
        dist=dist_info,
        model=wrapped,
        bare_model=model,
        optimizer=optimizer,
        precision=precision,
        scaler=scaler,
        train_loader=train_loader,
        val_loader=val_loader,
        output_dir=output_dir,
        run_log=RunLog(output_dir, enabled=dist_info.is_primary),
        validate=validate,
        prefix=ckpt.checkpoint_prefix(output_dir),
    )


# ---------------------------------------------------------------------------------------------- steps


def to_device(batch: Any, device: torch.device, channels_last: bool, float32: bool):
    """``([slow, fast], labels, video_index)`` from a loader -> device tensors in the model's layout.

    Args:
        batch: one loader batch (see ``pipelines`` for the contract).
        device: where the model is.
        channels_last: hand the pathways over as ``torch.channels_last_3d`` (a no-op when already so).
        float32: cast half-precision inputs (DALI's bf16/fp16 output) to fp32 for an fp32 run.
    """
    pathways, labels, video_index = batch
    memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
    inputs = []
    for x in pathways:
        x = x.to(device, non_blocking=True)
        if float32 and x.dtype != torch.float32:
            x = x.float()
        inputs.append(x.contiguous(memory_format=memory_format))
    return inputs, labels.to(device, non_blocking=True), video_index


def _any_rank(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is true on at least one rank (every rank gets the same answer)."""
    if distributed.get_world_size() == 1:
        return flag
    box = torch.tensor([1.0 if flag else 0.0], device=device)
    distributed.all_reduce_sum(box)
    return bool(box.item() > 0)


def _copy_tensors(targets: list[torch.Tensor], sources: list[torch.Tensor]) -> None:
    if targets:
        torch._foreach_copy_(targets, sources)


def train_one_epoch(trainer: Trainer, epoch: int) -> dict:
    """One pass over the training loader; the LR follows the schedule every iteration.

    Returns:
        The epoch's summary (mean loss, top-1 over its batches, throughput, skipped steps).
    """
    cfg, device = trainer.cfg, trainer.dist.device
    model, optimizer, scaler = trainer.model, trainer.optimizer, trainer.scaler
    loader = trainer.train_loader
    loader.set_epoch(epoch)
    model.train()
    num_iters = len(loader)
    world = trainer.dist.world_size
    float32 = trainer.precision.dtype is None
    loss_meter, top1_meter = SmoothedValue(cfg.train.log_every), SmoothedValue(cfg.train.log_every)
    iter_time, data_time = SmoothedValue(cfg.train.log_every), SmoothedValue(cfg.train.log_every)
    skipped = 0
    epoch_start = end = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # The forward of a step that turns out non-finite has already moved the BN running statistics (maybe
    # to NaN); they are put back from this copy, taken before every forward (a few hundred small tensors).
    buffers = list(trainer.bare_model.buffers())
    saved_buffers = [b.detach().clone() for b in buffers]
    for step, batch in enumerate(loader):
        data_time.update(time.perf_counter() - end)
        inputs, labels, _ = to_device(batch, device, cfg.model.channels_last, float32)
        lr = trainer.lr(epoch + step / num_iters)
        for group in optimizer.param_groups:
            group["lr"] = lr
        _copy_tensors(saved_buffers, buffers)
        with trainer.precision.autocast():
            logits = model(inputs)
        loss = F.cross_entropy(logits.float(), labels)
        loss_value = loss.item()  # one host sync per step: the skip decision needs it
        trainer.iteration += 1
        if _any_rank(not math.isfinite(loss_value), device):
            # Skip on every rank together: a rank that ran backward alone would wait forever in DDP's
            # gradient all-reduce.
            optimizer.zero_grad(set_to_none=True)
            _copy_tensors(buffers, saved_buffers)
            skipped += 1
            trainer.nonfinite_streak += 1
            trainer.nonfinite_total += 1
            log.warning(
                "epoch %d iter %d: non-finite loss (%s on this rank); step skipped (%d in a row, %d in all)",
                epoch + 1,
                step + 1,
                loss_value,
                trainer.nonfinite_streak,
                trainer.nonfinite_total,
            )
            if trainer.nonfinite_streak >= cfg.train.max_nonfinite:
                raise NonFiniteLossError(
                    f"the loss was non-finite for {trainer.nonfinite_streak} consecutive steps "
                    f"(train.max_nonfinite={cfg.train.max_nonfinite}) at epoch {epoch + 1}, "
                    f"iteration {step + 1}; "
                    f"training diverged: lower train.base_lr, lengthen train.warmup_epochs, use "
                    f"-o train.precision=bf16 or fp32 instead of fp16, or check the input data"
                )
            end = time.perf_counter()
            continue
        trainer.nonfinite_streak = 0
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        batch_size = labels.shape[0]
        top1 = topk_correct(logits.detach(), labels, (1,))[1].float().mean().item()
        loss_meter.update(loss_value, batch_size)
        top1_meter.update(top1, batch_size)
        iter_time.update(time.perf_counter() - end)
        end = time.perf_counter()
        if (step + 1) % cfg.train.log_every == 0 or step + 1 == num_iters:
            remaining = (num_iters - step - 1) + (cfg.train.epochs - epoch - 1) * num_iters
            record = {
                "epoch": epoch + 1,
                "iter": step + 1,
                "iters": num_iters,
                "step": trainer.iteration,
                "loss": loss_meter.window_avg,
                "top1": top1_meter.window_avg,
                "lr": lr,
                "clips_per_s": batch_size * world / iter_time.window_avg,
                "data_wait": data_time.window_avg / max(iter_time.window_avg, 1e-9),
                "eta_s": remaining * iter_time.global_avg,
            }
            if device.type == "cuda":
                record["max_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            log.info(
                "epoch %d/%d iter %d/%d  loss %.4f  top1 %.1f%%  lr %.5f  %.1f clips/s  data %.0f%%%s  "
                "eta %s",
                epoch + 1,
                cfg.train.epochs,
                step + 1,
                num_iters,
                record["loss"],
                100 * record["top1"],
                lr,
                record["clips_per_s"],
                100 * record["data_wait"],
                f"  mem {record['max_mem_gib']:.1f}G" if "max_mem_gib" in record else "",
                format_duration(record["eta_s"]),
            )
            trainer.run_log.write("iter", record, step=trainer.iteration)
    elapsed = time.perf_counter() - epoch_start
    summary = {
        "epoch": epoch + 1,
        "loss": loss_meter.global_avg,
        "top1": top1_meter.global_avg,
        "lr": trainer.lr(epoch + 1),
        "time_s": elapsed,
        "clips_per_s": loss_meter.count * world / max(elapsed, 1e-9),
        "data_wait": data_time.total / max(elapsed, 1e-9),
        "skipped_steps": skipped,
    }
    if device.type == "cuda":
        summary["max_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    failures = getattr(loader, "failures", [])
    if failures:
        summary["decode_failures"] = len(failures)
        log.warning(
            "epoch %d: %d video(s) failed to decode and were replaced; first: %s",
            epoch + 1,
            len(failures),
            failures[0],
        )
    return summary


@torch.no_grad()
def evaluate(trainer: Trainer, loader: Any, epoch: int) -> dict:
    """Single-clip top-1/top-5 and loss over ``loader``, summed over ranks, padding samples dropped."""
    device = trainer.dist.device
    model = trainer.bare_model  # identical on every rank; DDP adds nothing in eval
    model.eval()
    loader.set_epoch(epoch)
    float32 = trainer.precision.dtype is None
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, top-1 hits, top-5 hits, videos
    for batch in loader:
        inputs, labels, video_index = to_device(batch, device, trainer.cfg.model.channels_last, float32)
        with trainer.precision.autocast():
            logits = model(inputs)
        keep = (video_index >= 0).to(device)
        logits, labels = logits[keep].float(), labels[keep]
        if labels.numel() == 0:
            continue
        hits = topk_correct(logits, labels, (1, 5))
        totals += torch.stack(
            [
                F.cross_entropy(logits, labels, reduction="sum").double(),
                hits[1].sum().double(),
                hits[5].sum().double(),
                torch.tensor(labels.numel(), device=device).double(),
            ]
        )
    distributed.all_reduce_sum(totals)
    loss_sum, top1, top5, count = totals.tolist()
    if count == 0:
        raise TrainingError("validation saw no video: check data.val_list")
    return {
        "epoch": epoch + 1,
        "top1": top1 / count,
        "top5": top5 / count,
        "loss": loss_sum / count,
        "videos": int(count),
    }


def broadcast_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (BN running statistics) to every rank; a no-op on one process."""
    if distributed.get_world_size() > 1:
        for buffer in model.buffers():
            torch.distributed.broadcast(buffer, src=0)


def precise_bn(trainer: Trainer, epoch: int) -> int:
    """Recompute BN statistics over ``train.precise_bn_batches`` training batches (weights unchanged)."""
    batches = int(trainer.cfg.train.precise_bn_batches)
    if batches <= 0:
        return 0
    float32 = trainer.precision.dtype is None
    loader = trainer.train_loader
    loader.set_epoch(epoch)

    def forward(model: nn.Module, batch: Any) -> Any:
        inputs, _, _ = to_device(batch, trainer.dist.device, trainer.cfg.model.channels_last, float32)
        return model(inputs)

    used = update_bn_stats(
        trainer.model, loader, min(batches, len(loader)), forward, trainer.precision.autocast
    )
    log.info("precise BN: statistics recomputed over %d batch(es)", used)
    return used


# ---------------------------------------------------------------------------------------------- save


def checkpoint_state(trainer: Trainer, rng_states: list, metrics: dict) -> dict:
    """The checkpoint dict (see engine/checkpoint.py for the format)."""
    bare = trainer.bare_model
    return {
        "format": ckpt.CHECKPOINT_FORMAT,
        "model": bare.state_dict(),
        "model_name": getattr(bare, "model_name", trainer.cfg.model.name),
        "model_args": dataclasses.asdict(bare.arch),
        "epoch": trainer.epoch,
        "iteration": trainer.iteration,
        "optimizer": trainer.optimizer.state_dict(),
        "scaler": trainer.scaler.state_dict() if trainer.scaler is not None else None,
        "scheduler": {
            "epoch": float(trainer.epoch),
            "iters_per_epoch": trainer.iters_per_epoch,
            "lr": trainer.lr(trainer.epoch),
        },
        "config": trainer.cfg.to_dict(),
        "rng": {"world_size": trainer.dist.world_size, "ranks": rng_states},
        "metrics": metrics,
    }


def save(trainer: Trainer, numbered: bool, is_best: bool, metrics: dict) -> Optional[Path]:
    """Write latest.pt (always), the epoch file (if ``numbered``), best.pt (if ``is_best``); rank 0 only.

    Every rank must call this (the RNG states are gathered from all of them).
    """
    rng_states = distributed.all_gather_object(ckpt.rng_state())
    written = None
    if trainer.dist.is_primary:
        state = checkpoint_state(trainer, rng_states, metrics)
        out = trainer.output_dir
        latest = out / ckpt.LATEST_NAME
        if numbered:
            written = ckpt.atomic_save(state, out / ckpt.epoch_checkpoint_name(trainer.prefix, trainer.epoch))
            ckpt.atomic_copy(written, latest)
            for path in ckpt.prune_epoch_checkpoints(out, trainer.prefix, int(trainer.cfg.train.keep_last)):
                log.info(
                    "checkpoint: removed %s (train.keep_last=%d)", path.name, trainer.cfg.train.keep_last
                )
        else:
            written = ckpt.atomic_save(state, latest)
        if is_best:
            ckpt.atomic_copy(written, out / ckpt.BEST_NAME)
        log.info("checkpoint: %s%s", written, " (best)" if is_best else "")
    distributed.barrier()
    return written


def resume(trainer: Trainer, path: Path) -> None:
    """Continue from ``path``: weights, optimizer, scaler, position, best metric, RNG states."""
    state = ckpt.load_checkpoint(path, map_location="cpu")
    bare = trainer.bare_model
    expected_args = dataclasses.asdict(bare.arch)
    if (
        state.get("model_name") != getattr(bare, "model_name", trainer.cfg.model.name)
        or state.get("model_args") != expected_args
    ):
        raise ckpt.CheckpointError(
            f"{path} holds {state.get('model_name')!r} with {state.get('model_args')}, but this run builds "
            f"{trainer.cfg.model.name!r} with {expected_args}; resume with the run's own config, or start "
            f"from its "
            f"weights with -w {path}"
        )
    bare.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    if trainer.scaler is not None and state.get("scaler"):
        trainer.scaler.load_state_dict(state["scaler"])
    trainer.epoch = int(state["epoch"])
    trainer.iteration = int(state["iteration"])
    metrics = state.get("metrics") or {}
    trainer.best_top1 = float(metrics.get("best_top1", -1.0))
    trainer.best_epoch = int(metrics.get("best_epoch", -1))
    rng = state.get("rng") or {}
    if rng.get("world_size") == trainer.dist.world_size and len(rng.get("ranks", [])) > trainer.dist.rank:
        ckpt.set_rng_state(rng["ranks"][trainer.dist.rank])
    else:
        log.warning(
            "resume: %s was written by %s process(es), this run has %d; random states re-seeded",
            path,
            rng.get("world_size"),
            trainer.dist.world_size,
        )
        seed_everything(int(trainer.cfg.train.seed) + 1000 * trainer.epoch + trainer.dist.rank)
    _log_config_changes(state.get("config") or {}, trainer.cfg.to_dict())
    log.info(
        "resume: %s at epoch %d/%d (iteration %d, LR %.5f)",
        path,
        trainer.epoch,
        trainer.cfg.train.epochs,
        trainer.iteration,
        trainer.lr(trainer.epoch),
    )


def _log_config_changes(saved: dict, current: dict, prefix: str = "") -> None:
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            _log_config_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            log.warning("resume: %s%s was %r, now %r", prefix, key, a, b)


# ---------------------------------------------------------------------------------------------- main


def _resume_source(args: argparse.Namespace, output_dir: Path) -> Optional[Path]:
    """The checkpoint to resume from, or None to start from scratch (see --resume and torchrun restarts)."""
    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    latest = ckpt.find_latest(output_dir)
    if args.resume not in (None, "latest"):
        path = Path(args.resume)
        if not path.is_file():
            raise ckpt.CheckpointError(
                f"--resume {args.resume}: no such file; omit the value to resume "
                f"{output_dir}/{ckpt.LATEST_NAME}"
            )
        return path
    if args.resume == "latest" or restarts > 0:
        if latest is None:
            log.info("resume: no checkpoint in %s yet; starting from scratch", output_dir)
        elif restarts > 0 and args.resume is None:
            log.info("resume: torchrun restart %d; continuing from %s", restarts, latest)
        return latest
    if latest is not None:
        raise ckpt.CheckpointError(
            f"{output_dir} already holds a run ({latest.name}); pass --resume to continue it, or choose "
            f"another "
            f"directory with --output-dir (or -o train.output_dir=...) to start a new one"
        )
    return None


def main(argv: Optional[list[str]] = None) -> dict:
    """Train as the command line ``argv`` says; returns the final metrics (see :func:`cli` for exit codes)."""
    args = parse_args(argv)
    cfg = config_from_args(args)
    if args.output_dir:
        cfg.train.output_dir = args.output_dir
    check_config(cfg)
    dist_info = distributed.init_distributed()
    output_dir = Path(cfg.train.output_dir)
    setup_logging(dist_info.is_primary, output_dir, "train")
    trainer = None
    try:
        resume_from = _resume_source(args, output_dir)
        trainer = build_trainer(
            cfg,
            dist_info,
            validate=args.validate,
            weights=None if resume_from else args.weights,
            explicit_keys=frozenset(_overridden_keys(args.override)),
        )
        if dist_info.is_primary:
            save_config(cfg, output_dir)
        if resume_from is not None:
            resume(trainer, resume_from)
        _log_setup(trainer)
        for epoch in range(trainer.epoch, cfg.train.epochs):
            train_summary = train_one_epoch(trainer, epoch)
            trainer.epoch = epoch + 1
            _end_of_epoch(trainer, epoch, train_summary)
        return _final_summary(trainer)
    finally:
        if trainer is not None:
            trainer.run_log.close()
        distributed.cleanup()


def _log_setup(trainer: Trainer) -> None:
    cfg, world = trainer.cfg, trainer.dist.world_size
    global_batch = cfg.data.batch_size * world
    log.info(
        "model %s (%.2fM parameters) on %s, %d process(es), precision %s, channels_last %s, compile %s",
        cfg.model.name,
        sum(p.numel() for p in trainer.bare_model.parameters()) / 1e6,
        trainer.dist.device,
        world,
        trainer.precision.name,
        cfg.model.channels_last,
        cfg.train.compile,
    )
    log.info(
        "LR: base_lr %.4g for %d clips -> %.4g for the global batch %d (%d x %d), linear warmup from %.4g "
        "over %g epochs, half-cosine to 0 at epoch %d",
        cfg.train.base_lr,
        cfg.train.base_batch,
        scaled_lr(cfg.train.base_lr, cfg.data.batch_size, world, cfg.train.base_batch),
        global_batch,
        cfg.data.batch_size,
        world,
        scaled_lr(cfg.train.warmup_start_lr, cfg.data.batch_size, world, cfg.train.base_batch),
        cfg.train.warmup_epochs,
        cfg.train.epochs,
    )
    log.info(
        "data: %s on %s, %d training batches per epoch%s; output in %s",
        cfg.data.backend,
        cfg.data.device,
        trainer.iters_per_epoch,
        f", {len(trainer.val_loader)} validation batches" if trainer.val_loader is not None else "",
        trainer.output_dir,
    )


def _end_of_epoch(trainer: Trainer, epoch: int, train_summary: dict) -> None:
    cfg = trainer.cfg
    done = epoch + 1
    last = done == cfg.train.epochs
    do_val = trainer.validate and (done % cfg.train.validate_every == 0 or last)
    numbered = done % cfg.train.save_every == 0 or last
    log.info(
        "epoch %d/%d done in %s: loss %.4f  top1 %.1f%%  %.1f clips/s  data wait %.0f%%  skipped %d",
        done,
        cfg.train.epochs,
        format_duration(train_summary["time_s"]),
        train_summary["loss"],
        100 * train_summary["top1"],
        train_summary["clips_per_s"],
        100 * train_summary["data_wait"],
        train_summary["skipped_steps"],
    )
    trainer.run_log.write("epoch", train_summary, step=trainer.iteration)
    if not (do_val or numbered):
        pass
    elif precise_bn(trainer, epoch) == 0:
        # Without precise BN every rank still holds the running statistics of its own last batches;
        # validation and the checkpoint use rank 0's, as DDP's next forward would.
        broadcast_buffers(trainer.bare_model)
    val = None
    is_best = False
    if do_val:
        val = evaluate(trainer, trainer.val_loader, epoch)
        is_best = val["top1"] > trainer.best_top1
        if is_best:
            trainer.best_top1, trainer.best_epoch = val["top1"], done
        log.info(
            "val epoch %d: top1 %.2f%%  top5 %.2f%%  loss %.4f  (%d videos; best top1 %.2f%% at epoch %d)",
            done,
            100 * val["top1"],
            100 * val["top5"],
            val["loss"],
            val["videos"],
            100 * trainer.best_top1,
            trainer.best_epoch,
        )
        trainer.run_log.write("val", val, step=trainer.iteration)
    trainer.history.append({"train": train_summary, "val": val})
    metrics = {
        "train": train_summary,
        "val": val,
        "best_top1": trainer.best_top1,
        "best_epoch": trainer.best_epoch,
    }
    save(trainer, numbered=numbered, is_best=is_best, metrics=metrics)


def _final_summary(trainer: Trainer) -> dict:
    last_val = next((h["val"] for h in reversed(trainer.history) if h["val"] is not None), None)
    best = trainer.output_dir / ckpt.BEST_NAME
    return {
        "output_dir": str(trainer.output_dir),
        "epochs": trainer.epoch,
        "iteration": trainer.iteration,
        "best_top1": trainer.best_top1 if trainer.best_epoch > 0 else None,
        "best_epoch": trainer.best_epoch if trainer.best_epoch > 0 else None,
        "last_val": last_val,
        "best_checkpoint": str(best) if best.is_file() else None,
        "latest_checkpoint": str(trainer.output_dir / ckpt.LATEST_NAME),
        "nonfinite_steps": trainer.nonfinite_total,
    }


USER_ERRORS = (ConfigError, ckpt.CheckpointError, TrainingError, DatasetError, BackendUnavailable,
               models.WeightsError)


def cli(argv: Optional[list[str]] = None) -> int:
    """``main`` for the command line: user errors become one ``error:`` line and exit status 2."""
    try:
        main(argv)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; resume with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(cli())
