"""The network a run uses: built from the configuration or a checkpoint, placed on its device, checked
against the data settings it must fit. Training, the test and the benchmarks build it here.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

import models
from configs import ConfigError
from engine.checkpoint import CheckpointError, read_model_spec
from models.checkpoint_format import FORMAT_NAME

log = logging.getLogger(__name__)

WEIGHT_FORMATS_HINT = "ours, PySlowFast .pyth, pytorchvideo, Caffe2 .pkl, PaddleVideo .pdparams or MMAction2 .pth"


def place_model(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    """``model`` on ``device``, in ``torch.channels_last_3d`` when ``channels_last`` (model.channels_last)."""
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    return model


def _from_config(cfg: Any) -> nn.Module:
    args = dict(cfg.model.args or {})
    try:
        return models.create_model(cfg.model.name, num_classes=cfg.model.num_classes, **args)
    except (ValueError, TypeError) as err:  # unknown name or architecture field: the message names it
        raise ConfigError(f"model.name={cfg.model.name!r} / model.args={args}: {err}") from None


def build_model(cfg: Any, device: torch.device, weights: Optional[str | os.PathLike] = None, *,
                arch_from_checkpoint: bool = False, infer_arch: bool = False) -> nn.Module:
    """The bare network on ``device`` (channels-last if ``model.channels_last``), maybe with ``weights``.

    How a weights file decides the network:

    - training (``arch_from_checkpoint=False``): the network is ``cfg.model``; the file is loaded strictly,
      except that a classifier of another class count is re-initialised (fine-tuning from any format).
    - evaluation (``arch_from_checkpoint=True``): one of this project's checkpoints rebuilds the network it
      records (``model_name`` / ``model_args``) and ``cfg.model.name`` / ``num_classes`` are updated to it, so
      the saved configuration names the evaluated model; other formats carry no architecture record: with
      ``infer_arch`` (the configuration does not pin the model: no ``-c``, no ``-o model.name``)
      :func:`models.load_pretrained` builds the architecture the file's tensors fit, otherwise ``cfg.model``
      is built. Loading is strict.

    Args:
        cfg: resolved configuration (``model.*``).
        device: where the model goes.
        weights: any file :func:`models.load_weights` reads, or None for a fresh initialisation.
        arch_from_checkpoint: see above.

    Raises:
        ConfigError: an unknown ``model.name`` or architecture field.
        WeightsError: a missing or unreadable file, weights that do not fit, or weights holding NaN or Inf
            (:func:`check_finite_weights`).
    """
    spec = None
    if weights is not None:
        if not Path(weights).is_file():
            raise models.WeightsError(f"weights file {str(weights)!r} does not exist; pass -w with a checkpoint "
                                      f"({WEIGHT_FORMATS_HINT})")
        if arch_from_checkpoint:
            spec = read_model_spec(weights)
    if spec is not None:
        name, arch = spec
        try:
            model = models.model_from_arch(name, arch)
        except (ValueError, TypeError) as err:
            raise CheckpointError(f"{weights} records model {name!r} with {arch}, which this version cannot "
                                  f"build ({err}); use a matching version of this project") from None
        if name != cfg.model.name or model.arch.num_classes != cfg.model.num_classes:
            log.info("weights: the checkpoint records model %s with %d classes; using it (config said %s, %d)",
                     name, model.arch.num_classes, cfg.model.name, cfg.model.num_classes)
        cfg.model.name, cfg.model.num_classes = model.model_name, model.arch.num_classes
    elif weights is not None and arch_from_checkpoint and infer_arch:
        model, report = models.load_pretrained(str(weights))
        log.info("weights: %s fits %s with %d classes (built from the file): %s", weights, model.model_name,
                 model.arch.num_classes, report.summary())
        model.weights_format = report.source_format
        check_finite_weights(model, weights)
        cfg.model.name, cfg.model.num_classes = model.model_name, model.arch.num_classes
        apply_input_conventions(cfg, model)
        return place_model(model, device, bool(cfg.model.channels_last))
    else:
        model = _from_config(cfg)
    if weights is not None:
        # reinit_head only acts when the file's classifier has another class count (fine-tuning).
        report = models.load_weights(model, str(weights), strict=True, reinit_head=not arch_from_checkpoint)
        log.info("weights: %s", report.summary())
        model.weights_format = report.source_format
        check_finite_weights(model, weights)
        if report.reinitialized:
            log.info("weights: the classifier (%s) was re-initialised for model.num_classes=%d (fine-tuning)",
                     ", ".join(report.reinitialized), cfg.model.num_classes)
    return place_model(model, device, bool(cfg.model.channels_last))


def pin_model_from_weights(cfg: Any, weights: str | os.PathLike) -> None:
    """Set ``cfg.model`` to the architecture ``weights`` fit, for a run whose configuration does not pin the model
    (``train.py -w FILE`` without ``-c`` or ``-o model.name``): :func:`models.load_pretrained` reads the file's
    architecture; ``model.name`` becomes the closest registered variant and ``model.args`` the fields that differ
    from it, so the run's saved configuration rebuilds the same network. ``model.num_classes`` stays the
    configuration's (fine-tuning re-initialises a classifier of another size). The data is normalised as the
    weights were trained (:func:`apply_input_conventions`).
    """
    if not Path(weights).is_file():
        raise models.WeightsError(f"weights file {str(weights)!r} does not exist; pass -w with a checkpoint "
                                  f"({WEIGHT_FORMATS_HINT})")
    model, _ = models.load_pretrained(str(weights))
    variant = models.create_model(model.model_name, num_classes=model.arch.num_classes).arch
    args = {field: value for field, value in dataclasses.asdict(model.arch).items()
            if field != "num_classes" and value != getattr(variant, field)}
    args = {k: list(v) if isinstance(v, tuple) else v for k, v in args.items()}
    if cfg.model.name != model.model_name or dict(cfg.model.args or {}) != args:
        log.info("weights: %s holds %s%s; the run trains that model", weights, model.model_name,
                 f" with {args}" if args else "")
    cfg.model.name, cfg.model.args = model.model_name, args
    apply_input_conventions(cfg, model)


def loader_inputs(model: nn.Module) -> dict:
    """What a loader must know of the model it feeds (``pipelines.build_loader`` keywords): its ``alpha``, which
    Fast frames its Slow pathway takes (``arch.slow_sampling``), and whether its weights were imported from
    another project (``imported_weights``: ``data.resize_antialias: auto`` then resizes as the references do)."""
    bare = models.unwrap_model(model)
    source = getattr(bare, "weights_format", None)
    return {"alpha": int(bare.arch.alpha), "slow_sampling": str(bare.arch.slow_sampling),
            "imported_weights": source is not None and source != FORMAT_NAME}


def apply_input_conventions(cfg: Any, model: nn.Module) -> None:
    """Feed an imported model as its source project did: ``data.mean`` / ``data.std`` from the model's
    ``input_mean`` / ``input_std`` (e.g. ImageNet statistics for MMAction2 weights), logged when they change."""
    arch = models.unwrap_model(model).arch
    for key, value in (("mean", arch.input_mean), ("std", arch.input_std)):
        value = [float(v) for v in value]
        if [float(v) for v in cfg.data[key]] != value:
            log.info("weights: data.%s=%s, as the weights were trained (config said %s)", key, value, cfg.data[key])
            cfg.data[key] = value


def check_finite_weights(model: nn.Module, weights: str | os.PathLike) -> None:
    """Refuse weights holding NaN or Inf (a checkpoint of a run that diverged): every output would be NaN.

    Checked once after loading, before any data is read; a re-initialised classifier is finite by construction.

    Raises:
        WeightsError: naming the file, how many tensors are affected, the first one, and the fix.
    """
    bad = [name for name, tensor in model.state_dict().items()
           if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if bad:
        raise models.WeightsError(
            f"weights file {str(weights)!r} holds NaN or Inf in {len(bad)} tensor(s) (first: {bad[0]!r}): the run "
            f"that saved it diverged; use a checkpoint saved before that (an earlier <run>_epoch_*.pt, or best.pt) "
            f"or retrain")


def check_data_fits_model(cfg: Any, model: nn.Module) -> None:
    """Reject data settings the model cannot take: ``data.num_frames`` must be a multiple of its alpha.

    Raises:
        ConfigError: naming both values and the fix.
    """
    alpha = int(models.unwrap_model(model).arch.alpha)
    frames = int(cfg.data.num_frames)
    if frames % alpha:
        lower = max(alpha, frames - frames % alpha)
        raise ConfigError(
            f"data.num_frames={frames} is not a multiple of the model's alpha={alpha} ({cfg.model.name}: the "
            f"Slow pathway takes every alpha-th frame); use -o data.num_frames={lower} or {lower + alpha}")
