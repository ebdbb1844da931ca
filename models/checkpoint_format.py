"""This project's checkpoint format: the one definition of what a checkpoint file holds.

A checkpoint is ``torch.save`` of a dict (format ``slowfast-dali/1``)::

    format       "slowfast-dali/1"
    model        state_dict of the bare model (no DDP / torch.compile prefixes)
    model_name   registry name, e.g. "slowfast_r50_4x16"
    model_args   dataclasses.asdict(model.arch): rebuilds the network with models.model_from_arch
    epoch        epochs completed (training resumes at this epoch index)
    iteration    optimizer steps taken so far (over all epochs)
    optimizer    optimizer.state_dict()
    scaler       GradScaler.state_dict() (fp16) or None
    scheduler    {"epoch": float, "iters_per_epoch": int, "lr": float}: the LR schedule's position
    config       the resolved configuration as plain dicts
    rng          {"world_size": W, "ranks": [per-rank {python, numpy, torch, cuda} states]}
    metrics      {"train": {...}, "val": {...}, "best_top1": float, "best_epoch": int}

Everything in it is a tensor or a plain Python value, so it loads with ``torch.load(weights_only=True)``.
Only ``format`` and ``model`` are required to load weights (:func:`models.load_weights`); a training
checkpoint that ``--resume`` continues has every key.

It lives in ``models/`` because both layers need it: :mod:`models.weights` recognises the format when loading
weights, and :mod:`engine.checkpoint` writes, names and reads the files (the engine may import models, never
the other way round).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

CHECKPOINT_FORMAT = "slowfast-dali/1"
FORMAT_NAME = "slowfast-dali"  # the format's name in models.weights.FORMATS (without the version)


def make_checkpoint(*, model_state: Mapping, model_name: str, model_args: Mapping, epoch: int, iteration: int,
                    optimizer: Optional[Mapping] = None, scaler: Optional[Mapping] = None,
                    scheduler: Optional[Mapping] = None, config: Optional[Mapping] = None,
                    rng: Optional[Mapping] = None, metrics: Optional[Mapping] = None) -> dict:
    """The checkpoint dict, every key of the module docstring's table (see there for each meaning)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "model": model_state,
        "model_name": model_name,
        "model_args": dict(model_args),
        "epoch": int(epoch),
        "iteration": int(iteration),
        "optimizer": optimizer,
        "scaler": scaler,
        "scheduler": scheduler,
        "config": config,
        "rng": rng,
        "metrics": metrics,
    }


def claims_format(obj: Any) -> bool:
    """Whether ``obj`` (a loaded file) says it is a checkpoint of this project (any version): it has ``format``."""
    return isinstance(obj, Mapping) and "format" in obj


def format_problem(obj: Any, need_weights: bool = True) -> Optional[str]:
    """Why ``obj`` is not a readable checkpoint of this version, or None when it is.

    Args:
        obj: what a file held.
        need_weights: also require the ``model`` state dict (what loading weights needs).

    Returns:
        None, or a fragment (``"has format 'x'; this version reads 'slowfast-dali/1'"``) for the caller to
        prefix with the file name.
    """
    if not isinstance(obj, Mapping):
        return f"holds a {type(obj).__name__}, not a checkpoint dict"
    if obj.get("format") != CHECKPOINT_FORMAT:
        return f"has format {obj.get('format')!r}; this version reads {CHECKPOINT_FORMAT!r}"
    if need_weights and not isinstance(obj.get("model"), Mapping):
        return f"is a {CHECKPOINT_FORMAT} checkpoint without a 'model' state dict"
    return None


def model_spec(obj: Any) -> Optional[tuple[str, dict]]:
    """``(model_name, model_args)`` recorded in a checkpoint of this version, or None (other files, none recorded)."""
    if format_problem(obj) is None and obj.get("model_name"):
        return str(obj["model_name"]), dict(obj.get("model_args") or {})
    return None
