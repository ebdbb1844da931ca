"""Precise BatchNorm: recompute BN running statistics over many training batches.

During training BN keeps an exponential moving average of batch statistics that lags the weights;
PySlowFast (``calculate_and_update_precise_bn``, after fvcore's ``update_bn_stats``) replaces it, before
every validation and checkpoint, by the plain average over ``train.precise_bn_batches`` batches
computed with the current weights. This changes the running statistics and nothing else.

The average uses BN's own cumulative mode: with ``momentum=None`` PyTorch updates
``running = running + (batch - running) / num_batches_tracked``, i.e. the arithmetic mean of the batch
means and of the (unbiased) batch variances, exactly fvcore's recurrence. Under DDP each rank averages
its own batches and the ranks' results are then averaged, so every rank (and the checkpoint) holds
the same statistics.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from typing import Callable, ContextManager, Iterable

import torch
from torch import nn

from engine import distributed
from models.registry import unwrap_model

log = logging.getLogger(__name__)

_BN_TYPES = (nn.modules.batchnorm._BatchNorm,)


def bn_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers (any dimension, SyncBatchNorm included) that track running statistics."""
    return [m for m in model.modules() if isinstance(m, _BN_TYPES) and m.track_running_stats]


@torch.no_grad()
def update_bn_stats(
    model: nn.Module,
    batches: Iterable,
    num_batches: int,
    forward: Callable[[nn.Module, object], object] | None = None,
    autocast: Callable[[], ContextManager] = contextlib.nullcontext,
) -> int:
    """Replace every BN layer's running mean/var by their average over ``num_batches`` batches.

    Args:
        model: the network (may be DDP-wrapped; its BN layers are found on the bare module).
        batches: an iterable of batches; only the first ``num_batches`` are used.
        num_batches: how many batches to average over (fewer if ``batches`` runs out).
        forward: ``forward(model, batch)`` runs the model on one batch; by default ``model(batch[0])``,
            which fits the loader contract's ``([slow, fast], labels, video_index)``.
        autocast: a zero-argument callable returning the precision context to run the forward in.

    Returns:
        The number of batches actually used (0 leaves the statistics untouched).
    """
    bare = unwrap_model(model)
    layers = bn_layers(bare)
    if not layers or num_batches <= 0:
        return 0
    forward = forward or (lambda m, batch: m(batch[0]))
    was_training = bare.training
    saved_momentum = [bn.momentum for bn in layers]
    saved_stats = [
        (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()) for bn in layers
    ]
    for bn in layers:
        bn.reset_running_stats()  # zero mean, unit var, num_batches_tracked = 0
        bn.momentum = None  # cumulative moving average: the arithmetic mean over the batches seen
    # Train mode so BN normalises with (and records) batch statistics; weights are untouched (no_grad,
    # no optimizer). Dropout back in eval: it must not perturb the activations the statistics describe.
    bare.train()
    for module in bare.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.eval()
    used = 0
    try:
        for batch in itertools.islice(batches, num_batches):
            with autocast():
                # The bare module: a DDP forward in train mode would broadcast buffers from rank 0.
                forward(bare, batch)
            used += 1
    finally:
        for bn, momentum in zip(layers, saved_momentum):
            bn.momentum = momentum
        bare.train(was_training)
    if used == 0:
        for bn, (mean, var, tracked) in zip(layers, saved_stats):
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
            bn.num_batches_tracked.copy_(tracked)
        return 0
    if distributed.get_world_size() > 1:
        # NOTE: a rank could see fewer batches than another only if loaders disagree in length, which the
        # loader contract forbids; a plain mean over ranks is then the mean over all batches.
        for bn in layers:
            distributed.all_reduce_mean(bn.running_mean)
            distributed.all_reduce_mean(bn.running_var)
    for bn, (_, _, tracked) in zip(layers, saved_stats):
        # Keep the training step counter (it is part of the state dict), not the precise-BN count.
        bn.num_batches_tracked.copy_(tracked)
    return used
