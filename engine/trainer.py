"""Training: PySlowFast's recipe with DDP, the project's precision policy, precise BN, checkpoints and resume.

The pieces, in the order a run uses them (``python train.py`` calls :func:`run_training`):

- :func:`build_trainer`: model (:func:`engine.model.build_model`), optimizer (:func:`build_optimizer`: SGD with
  Nesterov momentum, weight decay on conv/linear weights only, as PySlowFast's ``BN.WEIGHT_DECAY = 0``; or
  AdamW for the CPU demo), precision (:mod:`engine.precision`), :func:`wrap_model` (SyncBatchNorm, DDP,
  ``torch.compile``) and the loaders (:func:`pipelines.build_loader`).
- :func:`train_step`: one optimizer step (forward under autocast, loss, skip on a non-finite loss on every
  rank together, backward, step); the benchmark times this very function. :func:`accumulation_step` is the
  same over ``train.accumulate`` micro-batches (gradient accumulation), and :mod:`engine.mixup` the optional
  mixup / cutmix / label smoothing (``train.mixup.*``) of each micro-batch.
- :func:`train_one_epoch`, :func:`validate`, :func:`precise_bn`, :func:`save`, :func:`resume`.
- :func:`fit`: the epoch loop, with ``curves.png`` (:mod:`engine.plots`) after every epoch and a summary block at
  the end; :func:`run_training`: one process's whole run (the output directory's lock, resume or refusal, the
  process group's timeout, every rank's failure named); :func:`resolve_config`: the configuration of
  ``train.py`` (``--resume`` without ``-c`` starts from the checkpoint's own configuration).

The learning rate follows :mod:`engine.lr_schedule` every optimizer step; the checkpoint format is
:mod:`models.checkpoint_format`, its files :mod:`engine.checkpoint`.

Gradient accumulation (``train.accumulate: A``): the global batch is ``data.batch_size x world_size x A`` clips
per optimizer step (the LR scales with it), while BatchNorm sees one micro-batch of ``data.batch_size`` clips, as
on the reference 8 GPUs x 8 clips; 2 GPUs with ``A = 4`` reproduce it exactly. Each micro-batch's loss is divided
by ``A`` before backward, so the gradients are the mean over all micro-batches and ranks (DDP averages over ranks);
DDP all-reduces only on the last micro-batch (``no_sync`` before). An epoch has ``len(loader) // A`` optimizer
steps; the last ``len(loader) % A`` batches of an epoch (an incomplete group) are not trained on. ``iteration``
counts optimizer steps. Checkpoints record ``accumulate`` and the global batch; a resume with another
``train.accumulate`` continues when the global batch is unchanged (e.g. 4 GPUs x A=2 -> 8 GPUs x A=1) and is
refused otherwise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from configs import Config, ConfigError, load_config, save_config
from configs.schema import OPTIMIZERS
from engine import checkpoint as ckpt
from engine import distributed
from engine import plots
from engine.lr_schedule import MAX_WARMUP_FRACTION, effective_warmup, global_batch, lr_at, scaled_lr
from engine.meters import RunLog, SmoothedValue, setup_logging, topk_correct
from engine.mixup import MixUp, dominant_labels, mixup_rng, soft_target_cross_entropy
from engine.model import build_model, check_data_fits_model
from engine.precise_bn import update_bn_stats
from engine.precision import Precision, precision_for, to_model_inputs
from models.checkpoint_format import make_checkpoint
from pipelines import build_loader
from pipelines.multigrid import Multigrid
from pipelines.preflight import preflight_run
from utils.atomic import atomic_copy
from utils.errors import UserError
from utils.progress import Progress, format_duration

log = logging.getLogger("train")

# NOTE: with channels_last_3d, a 1x1x1 conv weight (C_out, C_in, 1, 1, 1) gets strides (C_in, 1, C_in, C_in,
# C_in) while autograd hands DDP a gradient with strides (C_in, 1, 1, 1, 1): the same memory (the size-1
# dims' strides are meaningless), yet DDP's reducer warns "Grad strides do not match bucket view strides"
# on every such layer (seen with torch 2.13, gloo, slowfast_tiny). Silence that one message.
warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")


class TrainingError(UserError, RuntimeError):
    """Training cannot go on (bad setup or diverged); the message says what happened and what to do."""


class NonFiniteLossError(TrainingError):
    """The loss stayed NaN/inf for ``train.max_nonfinite`` consecutive steps."""


# ---------------------------------------------------------------------------------------------- build


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


def build_optimizer(model: nn.Module, cfg: Config, device: torch.device) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum (the recipe); fused kernels on CUDA (torch's, else apex's when installed).

    ``train.optimizer: adamw`` selects AdamW instead (same parameter groups, LR schedule and weight decay;
    momentum/nesterov unused). It exists for the CPU demo: ``slowfast_tiny`` trained from scratch for a few
    hundred steps stays at chance with SGD (lr 0.0125-0.4 tried on the synthetic motion data), while AdamW
    learns it; see configs/demo.yaml.
    """
    name = cfg.train.get("optimizer", "sgd")
    if name not in OPTIMIZERS:
        raise ConfigError(f"train.optimizer={name!r} is unknown; use one of {OPTIMIZERS}")
    groups = param_groups(model, float(cfg.train.weight_decay))
    if name == "adamw":
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
    """SyncBatchNorm (``train.sync_bn``, when distributed), DDP (when distributed), ``torch.compile``
    (``train.compile``), in that order. SyncBatchNorm replaces ``model``'s BN layers in place."""
    if dist_info.distributed:
        if cfg.train.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            log.info("sync_bn: BatchNorm statistics synchronised across %d ranks", dist_info.world_size)
        device_ids = [dist_info.device.index] if dist_info.device.type == "cuda" else None
        # Gradients as views of the all-reduce buckets: no copy into the buckets, less memory.
        model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids, gradient_as_bucket_view=True)
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
    progress: bool = True  # progress meters (training epochs, validation, precise BN) on stderr, primary rank only
    mixup: Optional[MixUp] = None  # train.mixup (None: off)
    epoch: int = 0  # epochs completed
    iteration: int = 0  # optimizer steps attempted (skipped non-finite ones included)
    nonfinite_streak: int = 0
    nonfinite_total: int = 0
    best_top1: float = -1.0
    best_epoch: int = -1
    history: list = field(default_factory=list)
    prefix: str = ckpt.DEFAULT_PREFIX
    # epoch files of an earlier run that --overwrite started over: never pruned (only written over by name)
    foreign_files: set = field(default_factory=set)
    started: float = field(default_factory=time.perf_counter)  # this process's start, for the wall time
    clips_trained: int = 0  # training clips of this process's epochs, all ranks
    train_seconds: float = 0.0  # time spent in those epochs
    curves_problem_logged: bool = False
    multigrid: Optional[Multigrid] = None  # train.multigrid's schedule (None: off)

    @property
    def accumulate(self) -> int:
        """Micro-batches per optimizer step at the full shape (``train.accumulate``)."""
        return int(self.cfg.train.get("accumulate", 1))

    @property
    def epochs(self) -> int:
        """The run's epochs: ``train.epochs``, or the multigrid schedule's (``epoch_factor`` times as many)."""
        return self.multigrid.epochs if self.multigrid is not None else int(self.cfg.train.epochs)

    def micro_batches_per_step(self, epoch: int) -> int:
        """Micro-batches per optimizer step in ``epoch``: :attr:`accumulate`, times a multigrid stage's batch
        factor (its larger steps run as accumulation, see :mod:`pipelines.multigrid`)."""
        if self.multigrid is None:
            return self.accumulate
        return self.multigrid.step_shapes(epoch)[0].micro_batches

    @property
    def iters_per_epoch(self) -> int:
        """Optimizer steps of the loader's current epoch: its batches in whole groups of
        :meth:`micro_batches_per_step`."""
        if self.multigrid is None:
            return len(self.train_loader) // self.accumulate
        return len(self.train_loader) // self.micro_batches_per_step(self.train_loader.epoch)

    def lr(self, epoch_float: float) -> float:
        return lr_at(epoch_float, self.cfg, self.dist.world_size, self.multigrid)

    def epochs_ahead(self, epoch: int) -> float:
        """The epochs after ``epoch``, in units of ``epoch``'s cost (for the ETA): their count, or under multigrid
        the sum of their pixels to decode and compute (clips x frames x crop^2) over ``epoch``'s."""
        later = range(epoch + 1, self.epochs)
        if self.multigrid is None:
            return float(len(later))
        shard = len(self.train_loader.shard(epoch))
        cost = [self.multigrid.epoch_cost(shard, e) for e in (epoch, *later)]
        return sum(cost[1:]) / max(cost[0], 1)

    def meter(self, total: int, what: str, unit: str = "batches") -> Progress:
        """A progress meter on stderr (primary rank, unless ``--no-progress``); throttled when not a terminal."""
        return Progress(total, what, unit, enabled=self.progress and self.dist.is_primary)


def build_trainer(
    cfg: Config,
    dist_info: distributed.DistInfo,
    *,
    validate: bool = False,
    weights: Optional[str] = None,
    explicit_keys: Iterable[str] = frozenset(),
    progress: bool = True,
) -> Trainer:
    """Model, optimizer, precision, loaders and log sinks for this process.

    Args:
        cfg: resolved configuration.
        dist_info: this process's rank, world size and device (:func:`engine.distributed.init_distributed`).
        validate: build the validation loader too.
        weights: initial weights (``-w``), any format :func:`models.load_weights` reads.
        explicit_keys: configuration keys given on the command line (for the precision policy).
        progress: show progress meters for training epochs, validation and precise BN.
    """
    device = dist_info.device
    output_dir = Path(cfg.train.output_dir)
    # Every rank builds the same initial weights (DDP would broadcast rank 0's anyway), then each rank
    # draws its own dropout/augmentation randomness.
    seed_everything(int(cfg.train.seed))
    model = build_model(cfg, device, weights)
    check_data_fits_model(cfg, model)
    seed_everything(int(cfg.train.seed) + dist_info.rank)
    precision = precision_for(cfg, "train", device, explicit_keys)
    optimizer = build_optimizer(model, cfg, device)
    wrapped = wrap_model(model, cfg, dist_info)
    alpha = int(model.arch.alpha)
    slow_sampling = str(model.arch.slow_sampling)  # the frames the model's Slow pathway was built to take
    train_loader = build_loader(cfg, "train", rank=dist_info.rank, world_size=dist_info.world_size, alpha=alpha,
                                slow_sampling=slow_sampling)
    if len(train_loader) == 0:
        raise TrainingError(
            f"the training loader yields no batch: {len(train_loader.records)} videos over {dist_info.world_size} "
            f"process(es) with data.batch_size={cfg.data.batch_size}; lower data.batch_size or add videos"
        )
    accumulate = int(cfg.train.get("accumulate", 1))
    multigrid = getattr(train_loader, "multigrid", None)
    for stage in multigrid.stages if multigrid is not None else []:
        if not train_loader.step_layout(stage.start_epoch):
            need = multigrid.step_shapes(stage.start_epoch)[0].clips
            raise TrainingError(
                f"multigrid epochs {stage.start_epoch + 1}-{stage.end_epoch} take {need} clips per optimizer step on "
                f"each of {dist_info.world_size} process(es) ({stage.batch_factor} x train.accumulate={accumulate} "
                f"micro-batches of data.batch_size={cfg.data.batch_size} x the short cycle), but each process has "
                f"{len(train_loader.shard())} training videos; lower data.batch_size, use fewer or milder "
                f"train.multigrid factors, or add videos")
    if multigrid is None and len(train_loader) < accumulate:
        raise TrainingError(
            f"train.accumulate={accumulate} needs {accumulate} micro-batches per optimizer step, but the training "
            f"loader yields {len(train_loader)} batch(es) per epoch on each of {dist_info.world_size} process(es) "
            f"(data.batch_size={cfg.data.batch_size}); lower train.accumulate or data.batch_size, or add videos"
        )
    mixup = MixUp.from_config(cfg)
    if mixup is not None and mixup.mixes and int(cfg.data.batch_size) < 2:
        raise TrainingError(
            f"train.mixup mixes each sample with another of its micro-batch, but data.batch_size="
            f"{cfg.data.batch_size}; use data.batch_size >= 2, or -o train.mixup.alpha=0 -o "
            f"train.mixup.cutmix_alpha=0 for label smoothing alone"
        )
    val_loader = None
    if validate:
        val_loader = build_loader(cfg, "val", rank=dist_info.rank, world_size=dist_info.world_size, alpha=alpha,
                                  slow_sampling=slow_sampling)
    return Trainer(
        cfg=cfg,
        dist=dist_info,
        model=wrapped,
        bare_model=model,
        optimizer=optimizer,
        precision=precision,
        scaler=precision.make_scaler(),
        train_loader=train_loader,
        val_loader=val_loader,
        output_dir=output_dir,
        run_log=RunLog(output_dir, enabled=dist_info.is_primary),
        validate=validate,
        progress=progress,
        prefix=ckpt.checkpoint_prefix(output_dir),
        mixup=mixup,
        multigrid=multigrid,
    )


# ---------------------------------------------------------------------------------------------- steps


def _any_rank(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is true on at least one rank (every rank gets the same answer)."""
    if distributed.get_world_size() == 1:
        return flag
    box = torch.tensor([1.0 if flag else 0.0], device=device)
    distributed.all_reduce_sum(box)
    return bool(box.item() > 0)


class BufferSnapshot:
    """A copy of a model's buffers (BN running statistics), taken before each forward and put back when the
    step is skipped: the forward of a step that turns out non-finite has already moved them (maybe to NaN)."""

    def __init__(self, model: nn.Module) -> None:
        self.buffers = list(model.buffers())
        self.saved = [b.detach().clone() for b in self.buffers]

    def save(self) -> None:
        if self.buffers:
            torch._foreach_copy_(self.saved, self.buffers)

    def restore(self) -> None:
        if self.buffers:
            torch._foreach_copy_(self.buffers, self.saved)


@dataclass
class StepResult:
    loss: float  # the mean micro-batch loss (for a skipped step: the non-finite value that skipped it)
    logits: torch.Tensor  # detached; the micro-batches' logits, concatenated in order
    applied: bool  # False: the loss was non-finite on some rank and no rank updated


def training_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy in float32: on class indices (N,), or on soft targets (N, K) from :mod:`engine.mixup`."""
    if targets.dim() == 2 and targets.is_floating_point():
        return soft_target_cross_entropy(logits.float(), targets)
    return F.cross_entropy(logits.float(), targets)


def _ddp_of(model: Any) -> Optional[nn.parallel.DistributedDataParallel]:
    """The DDP wrapper inside ``model`` (itself, or under ``torch.compile``'s wrapper), or None."""
    while model is not None:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            return model
        model = getattr(model, "_orig_mod", None)
    return None


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: list[torch.Tensor],
    labels: torch.Tensor,
    precision: Precision,
    scaler: Optional[torch.amp.GradScaler] = None,
    snapshot: Optional[BufferSnapshot] = None,
) -> StepResult:
    """One optimizer step on one batch: forward under ``precision``, cross-entropy, backward, step (scaled for fp16).

    A non-finite loss on any rank skips the step on every rank together (a rank that ran backward alone would
    wait forever in DDP's gradient all-reduce): no update, gradients dropped, buffers restored from
    ``snapshot``. The loss is read on the host once per step (the skip decision needs it). This is
    :func:`accumulation_step` with one micro-batch.

    Args:
        model: what forward runs (DDP / compiled wrappers included), in train mode.
        optimizer: its learning rate already set for this step.
        inputs: ``[slow, fast]`` on the device (:func:`engine.precision.to_model_inputs`).
        labels: (N,) class indices on the device, or (N, K) soft targets (:class:`engine.mixup.MixUp`).
        precision: the autocast policy; ``scaler``: the fp16 gradient scaler (``precision.make_scaler()``).
        snapshot: the model's buffers, saved before the forward and restored on a skip.
    """
    return accumulation_step(model, optimizer, [(inputs, labels)], precision, scaler, snapshot, accumulate=1)


def accumulation_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: Iterable[tuple[list[torch.Tensor], torch.Tensor]],
    precision: Precision,
    scaler: Optional[torch.amp.GradScaler] = None,
    snapshot: Optional[BufferSnapshot] = None,
    *,
    accumulate: Optional[int] = None,
) -> StepResult:
    """One optimizer step over ``accumulate`` micro-batches (gradient accumulation).

    Each micro-batch runs forward (BatchNorm normalises with that micro-batch's statistics) and backward with its
    loss divided by ``accumulate``, so the step uses the mean gradient over all micro-batches, and over the ranks
    (DDP averages them): one process with ``accumulate = 2`` takes the step two ranks with one micro-batch each
    take. Under DDP the gradients are all-reduced only in the last micro-batch's backward (``no_sync`` before).

    The micro-batches are pulled one at a time, each when the previous one's backward is done (a loader's batch
    may live in a buffer that the next batch reuses). A non-finite loss on any rank, in any micro-batch, skips
    the whole step on every rank together: the remaining micro-batches are still pulled (the loader stays in
    step) but not run, the gradients are dropped and the buffers (BN statistics) restored to what they were
    before the first micro-batch.

    Args:
        model: what forward runs (DDP / compiled wrappers included), in train mode; gradients are None on entry.
        optimizer: its learning rate already set for this step.
        micro_batches: ``(inputs, targets)`` pairs, ``inputs`` = ``[slow, fast]`` on the device, ``targets`` class
            indices (N,) or soft targets (N, K); an iterator is consumed exactly ``accumulate`` times.
        precision: the autocast policy; ``scaler``: the fp16 gradient scaler.
        snapshot: the model's buffers, saved before the first forward and restored on a skip.
        accumulate: micro-batches in this step (default: ``len(micro_batches)``).

    Raises:
        ValueError: ``micro_batches`` ran out before ``accumulate`` micro-batches.
    """
    if accumulate is None:
        micro_batches = list(micro_batches)
        accumulate = len(micro_batches)
    if accumulate < 1:
        raise ValueError(f"accumulate={accumulate}: a step needs at least one micro-batch")
    if snapshot is not None:
        snapshot.save()
    ddp = _ddp_of(model)
    pending = iter(micro_batches)
    losses: list[float] = []
    outputs: list[torch.Tensor] = []
    for index in range(accumulate):
        try:
            inputs, targets = next(pending)
        except StopIteration:
            raise ValueError(f"accumulation_step got {index} micro-batch(es), expected {accumulate}") from None
        last = index == accumulate - 1
        # The forward belongs inside no_sync too: DDP decides at forward time whether the backward all-reduces.
        with ddp.no_sync() if ddp is not None and not last else contextlib.nullcontext():
            with precision.autocast():
                logits = model(inputs)
            loss = training_loss(logits, targets)
            loss_value = loss.item()
            outputs.append(logits.detach())
            losses.append(loss_value)
            if _any_rank(not math.isfinite(loss_value), targets.device):
                for _ in range(accumulate - index - 1):  # every rank decided alike: all drain, none runs
                    next(pending, None)
                optimizer.zero_grad(set_to_none=True)
                if snapshot is not None:
                    snapshot.restore()
                return StepResult(loss_value, _joined(outputs), applied=False)
            if accumulate > 1:
                loss = loss / accumulate
            if scaler is not None:
                scaler.scale(loss).backward()
            else:
                loss.backward()
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(sum(losses) / accumulate, _joined(outputs), applied=True)


def _joined(tensors: list[torch.Tensor]) -> torch.Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def _batch_inputs(trainer: Trainer, batch: Any) -> tuple[list[torch.Tensor], torch.Tensor, Any]:
    pathways, labels, video_index = batch
    inputs = to_model_inputs(pathways, trainer.dist.device, bool(trainer.cfg.model.channels_last), trainer.precision)
    return inputs, labels.to(trainer.dist.device, non_blocking=True), video_index


@dataclass
class _StepInputs:
    """What :func:`_micro_batches` saw for one optimizer step: the metric labels and the time spent waiting."""

    labels: list = field(default_factory=list)
    data_wait: float = 0.0


def _micro_batches(trainer: Trainer, batches: Any, epoch: int, step: int, seen: _StepInputs):
    """The ``train.accumulate`` micro-batches of optimizer step ``step``, pulled from ``batches`` one at a time,
    on the device and mixed when ``train.mixup`` is on (:mod:`engine.mixup`; seeded per micro-batch)."""
    accumulate = trainer.micro_batches_per_step(epoch)
    for micro in range(accumulate):
        start = time.perf_counter()
        batch = next(batches, None)
        if batch is None:
            return  # the loader delivered fewer batches than its len(): accumulation_step names the shortfall
        seen.data_wait += time.perf_counter() - start
        inputs, labels, _ = _batch_inputs(trainer, batch)
        targets = labels
        if trainer.mixup is not None:
            rng = mixup_rng(trainer.cfg.train.seed, epoch, step * accumulate + micro, trainer.dist.rank)
            inputs, targets = trainer.mixup(inputs, labels, rng)
            labels = dominant_labels(targets)
        seen.labels.append(labels)
        yield inputs, targets


def train_one_epoch(trainer: Trainer, epoch: int) -> dict:
    """One pass over the training loader in optimizer steps of ``train.accumulate`` micro-batches; the LR follows
    the schedule every optimizer step. The loader's last ``len(loader) % train.accumulate`` batches (an incomplete
    group) are left out.

    Returns:
        The epoch's summary (mean loss, top-1 over its batches, throughput, skipped steps).
    """
    cfg, device = trainer.cfg, trainer.dist.device
    model, optimizer = trainer.model, trainer.optimizer
    loader = trainer.train_loader
    loader.set_epoch(epoch)
    model.train()
    num_iters = trainer.iters_per_epoch  # optimizer steps
    accumulate = trainer.micro_batches_per_step(epoch)
    world = trainer.dist.world_size
    loss_meter, top1_meter = SmoothedValue(cfg.train.log_every), SmoothedValue(cfg.train.log_every)
    iter_time, data_time = SmoothedValue(cfg.train.log_every), SmoothedValue(cfg.train.log_every)
    skipped = 0
    epoch_start = end = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    snapshot = BufferSnapshot(trainer.bare_model)
    meter = trainer.meter(num_iters, f"[TRAIN] epoch {epoch + 1}/{trainer.epochs}")
    batches = iter(loader)
    for step in range(num_iters):
        lr = trainer.lr(epoch + step / num_iters)
        for group in optimizer.param_groups:
            group["lr"] = lr
        seen = _StepInputs()
        result = accumulation_step(model, optimizer, _micro_batches(trainer, batches, epoch, step, seen),
                                   trainer.precision, trainer.scaler, snapshot, accumulate=accumulate)
        data_time.update(seen.data_wait)
        trainer.iteration += 1
        meter.update()
        if not result.applied:
            skipped += 1
            trainer.nonfinite_streak += 1
            trainer.nonfinite_total += 1
            log.warning(
                "epoch %d iter %d: non-finite loss (%s on this rank); step skipped (%d in a row, %d in all)",
                epoch + 1, step + 1, result.loss, trainer.nonfinite_streak, trainer.nonfinite_total,
            )
            if trainer.nonfinite_streak >= cfg.train.max_nonfinite:
                raise NonFiniteLossError(
                    f"the loss was non-finite for {trainer.nonfinite_streak} consecutive steps "
                    f"(train.max_nonfinite={cfg.train.max_nonfinite}) at epoch {epoch + 1}, iteration {step + 1}; "
                    f"training diverged: lower train.base_lr, lengthen train.warmup_epochs, use "
                    f"-o train.precision=bf16 or fp32 instead of fp16, or check the input data"
                )
            end = time.perf_counter()
            continue
        trainer.nonfinite_streak = 0
        labels = _joined(seen.labels)
        batch_size = labels.shape[0]  # this rank's clips in the step: data.batch_size x accumulate
        top1 = topk_correct(result.logits, labels, (1,))[1].float().mean().item()
        loss_meter.update(result.loss, batch_size)
        top1_meter.update(top1, batch_size)
        iter_time.update(time.perf_counter() - end)
        end = time.perf_counter()
        if (step + 1) % cfg.train.log_every == 0 or step + 1 == num_iters:
            # steps left, in this epoch's steps (multigrid: later epochs weighted by their cost)
            remaining = (num_iters - step - 1) + trainer.epochs_ahead(epoch) * num_iters
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
                "epoch %d/%d iter %d/%d  loss %.4f  top1 %.1f%%  lr %.5f  %.1f clips/s  data %.0f%%%s  eta %s",
                epoch + 1, trainer.epochs, step + 1, num_iters, record["loss"], 100 * record["top1"], lr,
                record["clips_per_s"], 100 * record["data_wait"],
                f"  mem {record['max_mem_gib']:.1f}G" if "max_mem_gib" in record else "",
                format_duration(record["eta_s"]),
            )
            trainer.run_log.write("iter", record, step=trainer.iteration)
    meter.close()
    del batches  # the incomplete trailing group (if any) is never pulled
    elapsed = time.perf_counter() - epoch_start
    summary = {
        "epoch": epoch + 1,
        "loss": loss_meter.global_avg,
        "top1": top1_meter.global_avg,
        "lr": trainer.lr(epoch + 1),
        "time_s": elapsed,
        "clips_per_s": loss_meter.count * world / max(elapsed, 1e-9),
        "clips": loss_meter.count * world,
        "data_wait": data_time.total / max(elapsed, 1e-9),
        "skipped_steps": skipped,
    }
    if device.type == "cuda":
        summary["max_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    failures = getattr(loader, "failures", [])
    if failures:
        summary["decode_failures"] = len(failures)
        log.warning("epoch %d: %d video(s) failed to decode and were replaced; first: %s",
                    epoch + 1, len(failures), failures[0])
    return summary


@torch.no_grad()
def validate(trainer: Trainer, loader: Any, epoch: int) -> dict:
    """Single-clip top-1/top-5 and loss over ``loader``, summed over ranks, padding samples dropped."""
    device = trainer.dist.device
    model = trainer.bare_model  # identical on every rank; DDP adds nothing in eval
    model.eval()
    loader.set_epoch(epoch)
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, top-1 hits, top-5 hits, videos
    meter = trainer.meter(len(loader), f"[VAL] epoch {epoch + 1}")
    for batch in loader:
        inputs, labels, video_index = _batch_inputs(trainer, batch)
        with trainer.precision.autocast():
            logits = model(inputs)
        meter.update()
        keep = (torch.as_tensor(video_index) >= 0).to(device)
        logits, labels = logits[keep].float(), labels[keep]
        if labels.numel() == 0:
            continue
        hits = topk_correct(logits, labels, (1, 5))
        totals += torch.stack([
            F.cross_entropy(logits, labels, reduction="sum").double(),
            hits[1].sum().double(),
            hits[5].sum().double(),
            torch.tensor(labels.numel(), device=device).double(),
        ])
    meter.close()
    distributed.all_reduce_sum(totals)
    loss_sum, top1, top5, count = totals.tolist()
    if count == 0:
        raise TrainingError("validation saw no video: check data.val_list")
    return {"epoch": epoch + 1, "top1": top1 / count, "top5": top5 / count, "loss": loss_sum / count,
            "videos": int(count)}


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
    loader = trainer.train_loader
    loader.set_epoch(epoch)

    def forward(model: nn.Module, batch: Any) -> Any:
        inputs, _, _ = _batch_inputs(trainer, batch)
        output = model(inputs)
        meter.update()
        return output

    # multigrid: at the full shape, the one validation and testing use (as the references recompute it at the
    # final shape)
    with loader.full_shape() if trainer.multigrid is not None else contextlib.nullcontext():
        count = min(batches, len(loader))
        meter = trainer.meter(count, f"[precise BN] epoch {epoch + 1}")
        used = update_bn_stats(trainer.model, loader, count, forward, trainer.precision.autocast)
    meter.close()
    log.info("precise BN: statistics recomputed over %d batch(es)", used)
    return used


# ---------------------------------------------------------------------------------------------- save


def checkpoint_state(trainer: Trainer, rng_states: list, metrics: dict) -> dict:
    """The checkpoint dict (:mod:`models.checkpoint_format`)."""
    bare = trainer.bare_model
    return make_checkpoint(
        model_state=bare.state_dict(),
        model_name=getattr(bare, "model_name", trainer.cfg.model.name),
        model_args=dataclasses.asdict(bare.arch),
        epoch=trainer.epoch,
        iteration=trainer.iteration,
        optimizer=trainer.optimizer.state_dict(),
        scaler=trainer.scaler.state_dict() if trainer.scaler is not None else None,
        scheduler={"epoch": float(trainer.epoch), "iters_per_epoch": trainer.iters_per_epoch,
                   "lr": trainer.lr(trainer.epoch), "accumulate": trainer.accumulate,
                   "global_batch": global_batch(trainer.cfg, trainer.dist.world_size)},
        config=trainer.cfg.to_dict(),
        rng={"world_size": trainer.dist.world_size, "ranks": rng_states},
        metrics=metrics,
    )


def save(trainer: Trainer, numbered: bool, is_best: bool, metrics: dict) -> Optional[Path]:
    """Write latest.pt (always), the epoch file (if ``numbered``), best.pt (if ``is_best``); rank 0 only.

    Every rank must call this (the RNG states are gathered from all of them, and a failed write stops every
    rank together instead of leaving the others waiting in the next collective).

    Raises:
        engine.checkpoint.CheckpointError: a file could not be written (disk full, file-size limit, permissions):
            one line naming the path and the free space (:mod:`utils.atomic`); the files written before are
            intact, and the run stops.
    """
    rng_states = distributed.all_gather_object(ckpt.rng_state())
    written = None
    problem = None
    if trainer.dist.is_primary:
        state = checkpoint_state(trainer, rng_states, metrics)
        out = trainer.output_dir
        latest = out / ckpt.LATEST_NAME
        try:
            if numbered:
                name = ckpt.epoch_checkpoint_name(trainer.prefix, trainer.epoch)
                written = ckpt.save_checkpoint(state, out / name)
                trainer.foreign_files.discard(name)  # this run's own file now
                atomic_copy(written, latest)
                for path in ckpt.prune_epoch_checkpoints(out, trainer.prefix, int(trainer.cfg.train.keep_last),
                                                         exclude=trainer.foreign_files):
                    log.info("checkpoint: removed %s (train.keep_last=%d)", path.name, trainer.cfg.train.keep_last)
            else:
                written = ckpt.save_checkpoint(state, latest)
            if is_best:
                atomic_copy(written, out / ckpt.BEST_NAME)
        except OSError as err:
            reason = err.strerror or str(err)
            if err.filename and str(err.filename) not in reason:
                reason = f"{err.filename}: {reason}"
            problem = (f"checkpoint of epoch {trainer.epoch} not saved: {reason}; resume later with --resume "
                       f"(from {latest})")
        else:
            log.info("checkpoint: %s%s", written, " (best)" if is_best else "")
    problem = distributed.broadcast_object(problem)  # also the barrier: every rank waits for the files
    if problem is not None:
        raise ckpt.CheckpointError(problem)
    return written


def _model_section(config: dict) -> dict:
    model = config.get("model") or {}
    return {"name": model.get("name"), "num_classes": model.get("num_classes"), "args": dict(model.get("args") or {})}


def check_resume_fits(cfg: Config, path: Path) -> None:
    """Refuse, before anything is built, a resume whose model differs from the checkpoint's (name, class count,
    architecture arguments): such a run cannot continue that training.

    Raises:
        engine.checkpoint.CheckpointError: one line naming both values and the fix.
    """
    saved = ckpt.saved_config(path)
    if saved is None:
        return  # no configuration saved (or not this project's file): load_checkpoint / resume() judge it
    before, now = _model_section(saved), _model_section(cfg.to_dict())
    changed = [f"model.{key}={before[key]!r} in the checkpoint, {now[key]!r} now"
               for key in ("name", "num_classes", "args") if before[key] != now[key]]
    if changed:
        raise ckpt.CheckpointError(
            f"--resume {path}: {'; '.join(changed)}; a resumed run keeps its model: drop the change (without -c, "
            f"--resume starts from the checkpoint's own configuration), or start a new run from its weights with "
            f"-w {path} --output-dir NEW_DIR")


def resume(trainer: Trainer, path: Path) -> None:
    """Continue from ``path``: weights, optimizer, scaler, position, best metric, RNG states."""
    state = ckpt.load_checkpoint(path, map_location="cpu")
    bare = trainer.bare_model
    expected_name = getattr(bare, "model_name", trainer.cfg.model.name)
    expected_args = dataclasses.asdict(bare.arch)
    saved_args = state.get("model_args") or {}
    if state.get("model_name") != expected_name or saved_args != expected_args:
        changed = [f"model_name {state.get('model_name')!r} in the checkpoint, {expected_name!r} now"] \
            if state.get("model_name") != expected_name else []
        changed += [f"{key} {saved_args.get(key)!r} in the checkpoint, {expected_args.get(key)!r} now"
                    for key in sorted(set(saved_args) | set(expected_args))
                    if saved_args.get(key) != expected_args.get(key)]
        raise ckpt.CheckpointError(
            f"--resume {path}: the checkpoint's model differs from this run's ({'; '.join(changed)}); resume with "
            f"the run's own config (leave out -c and the model.* overrides), or start a new run from its weights "
            f"with -w {path} --output-dir NEW_DIR"
        )
    check_accumulate_fits(trainer, state, path)
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
        log.warning("resume: %s was written by %s process(es), this run has %d; random states re-seeded",
                    path, rng.get("world_size"), trainer.dist.world_size)
        seed_everything(int(trainer.cfg.train.seed) + 1000 * trainer.epoch + trainer.dist.rank)
    _log_config_changes(state.get("config") or {}, trainer.cfg.to_dict())
    log.info("resume: %s at epoch %d/%d (iteration %d, LR %.5f)", path, trainer.epoch, trainer.epochs,
             trainer.iteration, trainer.lr(trainer.epoch))


def saved_accumulation(state: dict) -> tuple[int, Optional[int]]:
    """``(accumulate, global batch)`` a checkpoint was trained with; checkpoints from before gradient accumulation
    count as ``accumulate = 1`` and their global batch is ``data.batch_size x`` the world size they record (None
    when unknown)."""
    scheduler = state.get("scheduler") or {}
    config = state.get("config") or {}
    train_cfg, data_cfg = config.get("train") or {}, config.get("data") or {}
    accumulate = int(scheduler.get("accumulate", train_cfg.get("accumulate", 1)) or 1)
    if scheduler.get("global_batch") is not None:
        return accumulate, int(scheduler["global_batch"])
    world = (state.get("rng") or {}).get("world_size")
    if world is None or data_cfg.get("batch_size") is None:
        return accumulate, None
    return accumulate, int(data_cfg["batch_size"]) * int(world) * accumulate


def check_accumulate_fits(trainer: Trainer, state: dict, path: Path) -> None:
    """A resume with another ``train.accumulate`` continues only with the checkpoint's global batch (clips per
    optimizer step, which sets the LR and what a step means), e.g. 4 GPUs x ``accumulate`` 2 -> 8 GPUs x 1.

    Raises:
        engine.checkpoint.CheckpointError: ``accumulate`` changed and the global batch with it; one line, the fix.
    """
    saved_accumulate, saved_global = saved_accumulation(state)
    now_global = global_batch(trainer.cfg, trainer.dist.world_size)
    if saved_accumulate == trainer.accumulate:
        return
    if saved_global == now_global:
        log.info("resume: train.accumulate was %d, now %d with %d process(es): the same global batch of %d clips "
                 "per optimizer step, so the run continues", saved_accumulate, trainer.accumulate,
                 trainer.dist.world_size, now_global)
        return
    keep = saved_global // (int(trainer.cfg.data.batch_size) * trainer.dist.world_size) if saved_global else None
    fix = (f"-o train.accumulate={keep}" if keep and keep * int(trainer.cfg.data.batch_size) * trainer.dist.world_size
           == saved_global else f"-o train.accumulate={saved_accumulate} on the checkpoint's process count")
    raise ckpt.CheckpointError(
        f"--resume {path}: train.accumulate={saved_accumulate} in the checkpoint (global batch "
        f"{saved_global if saved_global is not None else 'unknown'}), {trainer.accumulate} now (global batch "
        f"{now_global} = data.batch_size {trainer.cfg.data.batch_size} x {trainer.dist.world_size} process(es) x "
        f"{trainer.accumulate}); a resumed run keeps its global batch: resume with {fix}, or start a new run from "
        f"its weights with -w {path} --output-dir NEW_DIR")


def _log_config_changes(saved: dict, current: dict, prefix: str = "") -> None:
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            _log_config_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            log.warning("resume: %s%s was %r, now %r", prefix, key, a, b)


def _names(paths: list[Path]) -> str:
    shown = ", ".join(p.name for p in paths[:4])
    return shown + (f" and {len(paths) - 4} more" if len(paths) > 4 else "")


def resume_source(resume_arg: Optional[str], output_dir: Path, overwrite: bool = False) -> Optional[Path]:
    """The checkpoint to resume from, or None to start from scratch.

    Args:
        resume_arg: ``--resume``: None (not given), ``"latest"`` (given without a value) or a file.
        output_dir: the run's directory. Under a torchrun restart (``TORCHELASTIC_RESTART_COUNT > 0``) the run
            resumes from its ``latest.pt`` without ``--resume``.
        overwrite: ``--overwrite``: a fresh run may write over the checkpoints already in ``output_dir`` (none is
            deleted beforehand; an earlier run's epoch files are never pruned).

    Raises:
        engine.checkpoint.CheckpointError: ``--resume FILE`` that does not exist; a fresh start (or ``--resume``
            with nothing to continue) in a directory that holds checkpoints, without ``--overwrite``.
    """
    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    latest = ckpt.find_latest(output_dir)
    existing = ckpt.existing_checkpoints(output_dir)
    if resume_arg not in (None, "latest"):
        path = Path(resume_arg)
        if not path.is_file():
            raise ckpt.CheckpointError(
                f"--resume {resume_arg}: no such file; omit the value to resume {output_dir}/{ckpt.LATEST_NAME}")
        return path
    if resume_arg == "latest" or restarts > 0:
        if latest is None:
            if existing and not overwrite:
                raise ckpt.CheckpointError(
                    f"--resume: {output_dir} holds {_names(existing)} but no {ckpt.LATEST_NAME} or epoch file of "
                    f"this directory to continue from; resume from one of them with --resume "
                    f"{existing[0]}, or pass --overwrite to start a new run there")
            log.info("resume: no checkpoint in %s yet; starting from scratch", output_dir)
        elif restarts > 0 and resume_arg is None:
            log.info("resume: torchrun restart %d; continuing from %s", restarts, latest)
        return latest
    if existing and not overwrite:
        raise ckpt.CheckpointError(
            f"{output_dir} already holds a run ({_names(existing)}); pass --resume to continue it, --overwrite to "
            f"start a new run that writes over it, or choose another directory with --output-dir (or "
            f"-o train.output_dir=...) to start a new one"
        )
    return None


def resolve_config(config_path: Optional[str], overrides: Iterable[str], resume_arg: Optional[str] = None,
                   output_dir: Optional[str] = None) -> Config:
    """The configuration ``train.py`` runs with.

    With ``--resume`` and no ``-c``, it starts from the configuration the checkpoint carries (the run continues
    as it was configured; ``-o`` overrides still apply on top), and the run's directory is the checkpoint's
    (``--resume RUN/latest.pt`` writes into RUN). Otherwise: defaults, the recipe, the overrides.

    Args:
        config_path: ``-c`` (None when not given).
        overrides: ``-o key=value`` strings.
        resume_arg: ``--resume``: None, ``"latest"`` or a checkpoint file.
        output_dir: ``--output-dir`` (replaces ``train.output_dir``).

    Raises:
        configs.ConfigError: as :func:`configs.load_config`.
    """
    overrides = list(overrides)
    cfg = load_config(config_path, overrides)
    if output_dir:
        cfg.train.output_dir = output_dir
    if resume_arg is None or config_path is not None:
        return cfg
    path = Path(resume_arg) if resume_arg != "latest" else ckpt.find_latest(cfg.train.output_dir)
    saved = ckpt.saved_config(path) if path is not None else None
    if saved is None:
        return cfg  # nothing to start from: a missing or foreign file is reported by resume_source / resume
    cfg = load_config(None, overrides, base=saved, base_source=f"the configuration saved in {path}")
    if output_dir:
        cfg.train.output_dir = output_dir
    elif "train.output_dir" not in {text.split("=", 1)[0].strip() for text in overrides}:
        cfg.train.output_dir = str(path.parent)
    log.info("configuration: from %s%s", path, f" with {len(overrides)} override(s)" if overrides else "")
    return cfg


# ---------------------------------------------------------------------------------------------- loop


def fit(trainer: Trainer) -> dict:
    """Train from ``trainer.epoch`` to ``train.epochs``: an epoch, then precise BN, validation, checkpoints and
    the curves as configured (:func:`end_of_epoch`). Returns the run's summary (:func:`final_summary`), which
    the primary rank also logs as a block (:func:`log_final_summary`)."""
    _log_setup(trainer)
    # Where this run starts: the curves drop the log's records of later epochs written before (engine.plots).
    trainer.run_log.write("start", {"epoch": trainer.epoch, "epochs": trainer.epochs})
    for epoch in range(trainer.epoch, trainer.epochs):
        train_summary = train_one_epoch(trainer, epoch)
        trainer.epoch = epoch + 1
        trainer.clips_trained += int(train_summary.get("clips", 0))
        trainer.train_seconds += float(train_summary["time_s"])
        end_of_epoch(trainer, epoch, train_summary)
    summary = final_summary(trainer)
    if trainer.dist.is_primary:
        log_final_summary(summary)
    return summary


def run_training(
    cfg: Config,
    *,
    validate: bool = False,
    resume_from: Optional[str] = None,
    weights: Optional[str] = None,
    explicit_keys: Iterable[str] = frozenset(),
    progress: bool = True,
    overwrite: bool = False,
    command: str = "",
) -> dict:
    """One process's training run: join the process group (torchrun, timeout ``train.dist_timeout_s``), lock
    the output directory, log, decide resume or refuse, build, resume, :func:`fit`.

    Args:
        cfg: resolved configuration (``train.output_dir`` is where everything goes).
        validate: validate every ``train.validate_every`` epochs and at the end; keep ``best.pt``.
        resume_from: ``--resume`` (see :func:`resume_source`).
        weights: initial weights (``-w``); ignored when resuming.
        explicit_keys: configuration keys given on the command line (for the precision policy).
        progress: progress meters on stderr (training epochs, validation, precise BN).
        overwrite: ``--overwrite``: a fresh run may write over the checkpoints in ``train.output_dir``.
        command: the command line, recorded in the directory's lock file (for a second run's message).

    Raises:
        utils.errors.UserError: every error of the setup and the run a user can fix (a used or locked
            directory, a checkpoint that does not fit, a full disk, ...); with several processes, prefixed
            with the rank (:func:`engine.distributed.rank_errors`).

    Returns:
        The summary of :func:`final_summary`.
    """
    timeout_s = float(cfg.train.dist_timeout_s)
    dist_info = distributed.init_distributed(timeout_s=timeout_s)
    try:
        with distributed.rank_errors(dist_info, timeout_s):
            return _run(cfg, dist_info, validate=validate, resume_from=resume_from, weights=weights,
                        explicit_keys=explicit_keys, progress=progress, overwrite=overwrite, command=command)
    finally:
        distributed.cleanup()


def _run(cfg: Config, dist_info: distributed.DistInfo, *, validate: bool, resume_from: Optional[str],
         weights: Optional[str], explicit_keys: Iterable[str], progress: bool, overwrite: bool,
         command: str) -> dict:
    output_dir = ckpt.check_output_dir(cfg.train.output_dir)
    lock, problem = None, None
    if dist_info.is_primary:
        try:
            lock = ckpt.lock_output_dir(output_dir, command)
        except UserError as err:
            problem = err
    # Every rank stops together when the directory is taken (none waits in a later collective).
    shared = distributed.broadcast_object(None if problem is None else str(problem))
    if problem is not None:
        raise problem
    if shared is not None:
        raise TrainingError(shared)
    trainer = None
    try:
        setup_logging(dist_info.is_primary, output_dir, "train")
        checkpoint = resume_source(resume_from, output_dir, overwrite=overwrite)
        foreign: set = set()
        if checkpoint is not None:
            check_resume_fits(cfg, checkpoint)
        elif overwrite:
            foreign = {path.name for path in ckpt.existing_checkpoints(output_dir)}
            if foreign:
                log.warning("--overwrite: a new run in %s writes over the earlier run's %s (nothing is deleted; "
                            "its epoch files are never pruned)", output_dir, ", ".join(sorted(foreign)))
        preflight_run(cfg, dist_info.device.index, decode_check=dist_info.local_rank == 0)
        trainer = build_trainer(cfg, dist_info, validate=validate, weights=None if checkpoint else weights,
                                explicit_keys=explicit_keys, progress=progress)
        trainer.foreign_files = {name for name in foreign if name not in (ckpt.LATEST_NAME, ckpt.BEST_NAME)}
        if dist_info.is_primary:
            save_config(cfg, output_dir)
        if checkpoint is not None:
            resume(trainer, checkpoint)
        return fit(trainer)
    finally:
        if trainer is not None:
            trainer.run_log.close()
            for loader in (trainer.train_loader, trainer.val_loader):
                if loader is not None:
                    loader.close()  # DALI: pipelines freed now, not in the interpreter's teardown
        if lock is not None:
            lock.release()


def _log_setup(trainer: Trainer) -> None:
    cfg, world = trainer.cfg, trainer.dist.world_size
    log.info(
        "model %s (%.2fM parameters) on %s, %d process(es), precision %s, channels_last %s, compile %s",
        cfg.model.name, sum(p.numel() for p in trainer.bare_model.parameters()) / 1e6, trainer.dist.device, world,
        trainer.precision.name, cfg.model.channels_last, cfg.train.compile,
    )
    clips = global_batch(cfg, world)
    steps = cfg.train.get("lr_policy", "cosine") == "steps"
    log.info(
        "LR: base_lr %.4g for %d clips -> %.4g for the global batch %d (%d x %d process(es) x %d accumulated), "
        "linear warmup from %.4g over %g epochs, %s",
        cfg.train.base_lr, cfg.train.base_batch, scaled_lr(cfg.train.base_lr, clips, 1, cfg.train.base_batch),
        clips, cfg.data.batch_size, world, trainer.accumulate,
        scaled_lr(cfg.train.warmup_start_lr, clips, 1, cfg.train.base_batch),
        effective_warmup(cfg.train.warmup_epochs, trainer.epochs),
        f"x{cfg.train.lr_gamma:g} at epochs {(trainer.multigrid.lr_steps if trainer.multigrid else cfg.train.lr_steps)[1:]}"
        if steps else f"half-cosine to 0 at epoch {trainer.epochs}",
    )
    if trainer.multigrid is not None:
        log.info("multigrid (long cycle %s, short cycle %s): %d epochs (train.epochs %d x %g); validation, precise "
                 "BN and testing at the full shape", trainer.multigrid.long_cycle, trainer.multigrid.short_cycle,
                 trainer.epochs, cfg.train.epochs, trainer.multigrid.epoch_factor)
        for line in trainer.multigrid.describe():
            log.info("multigrid: %s", line)
    dropped = 0 if trainer.multigrid is not None else len(trainer.train_loader) % trainer.accumulate
    if dropped:
        log.info("train.accumulate=%d: %d optimizer steps per epoch; the last %d of the %d batches per epoch (an "
                 "incomplete group) are not trained on", trainer.accumulate, trainer.iters_per_epoch, dropped,
                 len(trainer.train_loader))
    if trainer.mixup is not None:
        m = trainer.mixup
        log.info("mixup: alpha %g, cutmix_alpha %g, prob %g, switch_prob %g, label_smoothing %g (soft-target "
                 "cross-entropy; training top-1 against the dominant label)", m.alpha, m.cutmix_alpha, m.prob,
                 m.switch_prob, m.label_smoothing)
    if effective_warmup(cfg.train.warmup_epochs, trainer.epochs) != float(cfg.train.warmup_epochs):
        log.warning(
            "train.warmup_epochs=%g is longer than %g of %s=%d: warming up over %g epochs instead "
            "(engine/lr_schedule.py caps the warm-up); set -o train.warmup_epochs=... to choose another",
            cfg.train.warmup_epochs, MAX_WARMUP_FRACTION,
            "train.epochs" if trainer.multigrid is None else "the multigrid run's epochs", trainer.epochs,
            effective_warmup(cfg.train.warmup_epochs, trainer.epochs),
        )
    log.info(
        "data: %s on %s, %d training batches per epoch%s; output in %s",
        cfg.data.backend, cfg.data.device, trainer.iters_per_epoch,
        f", {len(trainer.val_loader)} validation batches" if trainer.val_loader is not None else "",
        trainer.output_dir,
    )


def end_of_epoch(trainer: Trainer, epoch: int, train_summary: dict) -> None:
    """After epoch ``epoch``: log, precise BN (or rank 0's BN statistics), validation, checkpoints."""
    cfg = trainer.cfg
    done = epoch + 1
    last = done == trainer.epochs
    do_val = trainer.validate and (done % cfg.train.validate_every == 0 or last)
    numbered = done % cfg.train.save_every == 0 or last
    log.info(
        "epoch %d/%d done in %s: loss %.4f  top1 %.1f%%  %.1f clips/s  data wait %.0f%%  skipped %d",
        done, trainer.epochs, format_duration(train_summary["time_s"]), train_summary["loss"],
        100 * train_summary["top1"], train_summary["clips_per_s"], 100 * train_summary["data_wait"],
        train_summary["skipped_steps"],
    )
    trainer.run_log.write("epoch", train_summary, step=trainer.iteration)
    if (do_val or numbered) and precise_bn(trainer, epoch) == 0:
        # Without precise BN every rank still holds the running statistics of its own last batches;
        # validation and the checkpoint use rank 0's, as DDP's next forward would.
        broadcast_buffers(trainer.bare_model)
    val = None
    is_best = False
    if do_val:
        val = validate(trainer, trainer.val_loader, epoch)
        is_best = val["top1"] > trainer.best_top1
        if is_best:
            trainer.best_top1, trainer.best_epoch = val["top1"], done
        log.info(
            "val epoch %d: top1 %.2f%%  top5 %.2f%%  loss %.4f  (%d videos; best top1 %.2f%% at epoch %d)",
            done, 100 * val["top1"], 100 * val["top5"], val["loss"], val["videos"], 100 * trainer.best_top1,
            trainer.best_epoch,
        )
        trainer.run_log.write("val", val, step=trainer.iteration)
    trainer.history.append({"train": train_summary, "val": val})
    metrics = {"train": train_summary, "val": val, "best_top1": trainer.best_top1, "best_epoch": trainer.best_epoch}
    save(trainer, numbered=numbered, is_best=is_best, metrics=metrics)
    if trainer.dist.is_primary:
        draw_curves(trainer)


def draw_curves(trainer: Trainer) -> Optional[Path]:
    """Redraw ``curves.png`` (:mod:`engine.plots`); without matplotlib, or when the file cannot be written, one
    log line (once) and the run goes on: the curves are a view of ``train_log.jsonl``, which keeps the data."""
    try:
        drawn = plots.write_curves(trainer.output_dir, title=f"{trainer.cfg.model.name} in {trainer.output_dir}")
    except OSError as err:
        if not trainer.curves_problem_logged:
            log.warning("curves: %s not written (%s)", trainer.output_dir / plots.CURVES_NAME, err.strerror or err)
            trainer.curves_problem_logged = True
        return None
    if drawn is None:
        if not trainer.curves_problem_logged:
            log.info("curves: skipped, matplotlib is not installed (pip install .[bench]); train_log.jsonl has "
                     "the data")
            trainer.curves_problem_logged = True
        return None
    return drawn[0]

def final_summary(trainer: Trainer) -> dict:
    """What the run reached: epochs, iterations, best and last validation, time and speed, where the files are."""
    last_val = next((h["val"] for h in reversed(trainer.history) if h["val"] is not None), None)
    last_train = trainer.history[-1]["train"] if trainer.history else None
    out = trainer.output_dir
    best = out / ckpt.BEST_NAME
    curves = out / plots.CURVES_NAME
    tensorboard = out / "tensorboard"
    return {
        "output_dir": str(out),
        "epochs": trainer.epoch,
        "iteration": trainer.iteration,
        "best_top1": trainer.best_top1 if trainer.best_epoch > 0 else None,
        "best_epoch": trainer.best_epoch if trainer.best_epoch > 0 else None,
        "last_val": last_val,
        "last_train": last_train,
        "best_checkpoint": str(best) if best.is_file() else None,
        "latest_checkpoint": str(out / ckpt.LATEST_NAME),
        "epoch_checkpoints": [str(p) for _, p in ckpt._epoch_files(out, trainer.prefix)] if out.is_dir() else [],
        "nonfinite_steps": trainer.nonfinite_total,
        "wall_time_s": time.perf_counter() - trainer.started,
        "clips_per_s": trainer.clips_trained / trainer.train_seconds if trainer.train_seconds > 0 else None,
        "logs": [str(out / "train.log"), str(out / "train_log.jsonl")]
        + ([str(tensorboard)] if tensorboard.is_dir() else []),
        "curves": str(curves) if curves.is_file() else None,
    }


def log_final_summary(summary: dict) -> None:
    """The block a finished run ends with: accuracy, time, speed, and where its files are."""
    lines = [f"training finished: {summary['epochs']} epoch(s), {summary['iteration']} iterations in "
             f"{format_duration(summary['wall_time_s'])} wall time"
             + (f", {summary['clips_per_s']:.1f} training clips/s" if summary["clips_per_s"] else "")]
    if summary["best_epoch"] is not None:
        last = summary["last_val"]
        lines.append(f"  best val top-1 {100 * summary['best_top1']:.2f}% at epoch {summary['best_epoch']}; "
                     f"final val top-1 {100 * last['top1']:.2f}%, top-5 {100 * last['top5']:.2f}% "
                     f"(epoch {last['epoch']})")
    elif summary["last_train"] is not None:
        lines.append(f"  no validation (pass --validate to measure it and keep best.pt); final training top-1 "
                     f"{100 * summary['last_train']['top1']:.2f}%, loss {summary['last_train']['loss']:.4f}")
    checkpoints = [summary["latest_checkpoint"]] + ([summary["best_checkpoint"]] if summary["best_checkpoint"]
                                                    else []) + summary["epoch_checkpoints"]
    lines.append(f"  checkpoints: {', '.join(checkpoints)}")
    lines.append(f"  logs: {', '.join(summary['logs'])}")
    lines.append(f"  curves: {summary['curves'] or 'not drawn (matplotlib is not installed)'}")
    for line in lines:
        log.info("%s", line)
