"""Model registry: a name -> factory table that refuses duplicates (torchvision's ``_api.py`` pattern)."""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``factory`` under its function name; a second factory with the same name is an error."""
    if factory.__name__ in _MODELS:
        raise ValueError(f"model name {factory.__name__!r} is already registered; pick another name")
    _MODELS[factory.__name__] = factory
    return factory


def list_models() -> list[str]:
    """The registered model names, sorted."""
    return sorted(_MODELS)


def create_model(name: str, num_classes: int = 400, **overrides: Any) -> nn.Module:
    """Build the registered model ``name``.

    Args:
        name: one of :func:`list_models`.
        num_classes: size of the classifier output.
        **overrides: architecture fields to change (e.g. ``dropout=0.2``); an unknown field is an error.

    Returns:
        The model, with ``.model_name`` set to ``name`` and ``.arch`` holding its architecture dataclass.
    """
    if name not in _MODELS:
        raise ValueError(f"model {name!r} is unknown; choose one of {list_models()}")
    model = _MODELS[name](num_classes=num_classes, **overrides)
    model.model_name = name
    return model


def model_from_arch(name: str, arch: dict[str, Any]) -> nn.Module:
    """Rebuild a model from a checkpoint's ``model_name`` and ``model_args`` (``asdict(model.arch)``).

    Args:
        name: the registered model name the checkpoint was made with.
        arch: every field of its architecture dataclass; lists (from YAML or JSON) stand for tuples.
    """
    return create_model(name, **dict(arch))


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The bare module under DDP and/or torch.compile wrappers."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model
