"""How video reaches the model: one contract, several backends.

``build_loader(cfg, split, rank=0, world_size=1, alpha=8)`` returns an iterable loader for
``split`` in ``{"train", "val", "test"}``; ``cfg.data.backend`` picks the backend:

- ``pyav``: PyAV decoding in torch DataLoader workers, CPU transforms (the baseline, and the fallback
  for codecs DALI's CPU decoder cannot read), ``pipelines/pyav_loader.py``.
- ``dali``: NVIDIA DALI, decoding on the GPU (``data.device=gpu``, NVDEC through the mixed backend)
  or on the CPU (``data.device=cpu``: VP8/VP9/MJPEG only), ``pipelines/dali_loader.py``.

Every loader yields ``([slow, fast], labels, video_index)``:

- train/val: ``fast`` is (N, C, T, H, W), ``slow`` is (N, C, T // alpha, H, W); ``labels`` and
  ``video_index`` are (N,) int64. ``video_index`` indexes ``loader.records``; ``-1`` marks a padding sample
  (present only so every rank runs the same number of steps) that metrics must drop.
- test: each batch holds N videos x V views (V = num_clips x num_crops), flattened video-major and,
  within a video, clip-major (view ``v = clip * num_crops + crop``): ``fast`` is (N * V, C, T, H, W);
  ``labels`` and ``video_index`` are (N,).

Loaders expose ``len(loader)`` (batches per epoch), ``set_epoch(epoch)``, ``records`` (the
:class:`pipelines.dataset.VideoRecord` list) and ``failures`` (dicts with ``index``, ``path``,
``error`` for every video that failed to decode; training replaces such a video, testing leaves it out
and reports it).
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

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


def build_loader(cfg: Any, split: str, *, rank: int = 0, world_size: int = 1, alpha: int = 8, **kwargs: Any):
    """The loader for ``split`` under ``cfg`` (see the module docstring for the contract)."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is unknown; choose one of {SPLITS}")
    return _factory(cfg.data.backend)(cfg, split, rank=rank, world_size=world_size, alpha=alpha, **kwargs)
