"""How video reaches the model: one contract, several backends.

``build_loader(cfg, split, rank=0, world_size=1, alpha=8, records=None, imported_weights=False)`` returns an
iterable loader for ``split`` in ``{"train", "val", "test"}``; ``cfg.data.backend`` picks the backend:

- ``pyav``: PyAV decoding in torch DataLoader workers, CPU transforms (the baseline, and the fallback
  for codecs DALI's CPU decoder cannot read), ``pipelines/pyav_loader.py``.
- ``dali``: NVIDIA DALI, decoding on the GPU (``data.device=gpu``, NVDEC through the mixed backend)
  or on the CPU (``data.device=cpu``: VP8/VP9/MJPEG only), ``pipelines/dali_loader.py``.

The contract is code: every loader is a :class:`pipelines.base.VideoLoader` (read its module docstring for
what a batch ``([slow, fast], labels, video_index)`` holds, ``len``, ``set_epoch``, sharding, eval padding
marked ``video_index == -1``, the replacement rule for undecodable videos, ``records``, ``failures`` and
``epoch_failures``), and ``tests/test_loader_contract.py`` runs every backend through the same assertions.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Optional

from utils.errors import UserError

# backend name -> (module, factory); imported lazily so a missing DALI never breaks the PyAV path.
_BACKENDS = {
    "pyav": ("pipelines.pyav_loader", "build_pyav_loader"),
    "dali": ("pipelines.dali_loader", "build_dali_loader"),
}
SPLITS = ("train", "val", "test")


class BackendUnavailable(UserError, RuntimeError):
    """The configured backend cannot run here; the message names the alternative."""


def _factory(name: str) -> Callable[..., Any]:
    if name not in _BACKENDS:
        raise ValueError(f"data.backend={name!r} is unknown; choose one of {sorted(_BACKENDS)}")
    module_name, attr = _BACKENDS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        other = "pyav" if name == "dali" else "dali"
        raise BackendUnavailable(f"data.backend={name!r} is unavailable ({err}); install it, or use "
                                 f"-o data.backend={other}") from err
    return getattr(module, attr)


def available_backends() -> dict[str, str]:
    """Each backend name mapped to 'ok' or the reason it cannot be imported."""
    status = {}
    for name in _BACKENDS:
        try:
            _factory(name)
            status[name] = "ok"
        except BackendUnavailable as err:
            status[name] = str(err)
    return status


def build_loader(cfg: Any, split: str, *, rank: int = 0, world_size: int = 1, alpha: int = 8,
                 records: Optional[list] = None, imported_weights: bool = False, slow_sampling: str = "linspace",
                 **kwargs: Any):
    """The loader for ``split`` under ``cfg``: a :class:`pipelines.base.VideoLoader` of ``cfg.data.backend``.

    Args:
        cfg: the resolved configuration.
        split: ``train``, ``val`` or ``test``.
        rank, world_size: this process's shard.
        alpha: the SlowFast speed ratio (the slow pathway's frames).
        records: the videos (default: the split's list, with its index when present).
        imported_weights: the model evaluates weights imported from another project, not trained here:
            resolves ``data.resize_antialias: auto`` to no antialiasing (the references' resize); see
            :meth:`pipelines.base.LoaderSettings.from_config`.
        slow_sampling: the model's ``arch.slow_sampling`` (which Fast frames the Slow pathway takes).
        **kwargs: backend options (DALI: ``decode_per_view``).
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is unknown; choose one of {SPLITS}")
    return _factory(cfg.data.backend)(cfg, split, rank=rank, world_size=world_size, alpha=alpha, records=records,
                                      imported_weights=imported_weights, slow_sampling=slow_sampling, **kwargs)
