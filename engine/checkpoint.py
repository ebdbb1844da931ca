"""Checkpoint files of a run: writing, naming, pruning, reading, RNG state, the resume lookup.

What a checkpoint holds is defined in :mod:`models.checkpoint_format` (the one definition of the format;
``make_checkpoint`` builds the dict). This module writes and reads the files.

Files in ``output_dir``: ``<prefix>_epoch_000196.pt`` every ``train.save_every`` epochs and at the end
(the newest ``train.keep_last`` are kept), ``latest.pt`` after every epoch (resume point) and ``best.pt``
(best validation top-1). ``<prefix>`` is the output directory's name (``output/SlowFast`` gives
``SlowFast_epoch_000196.pt``, as the seed's runs name them).

Every write goes through :mod:`utils.atomic` (a temporary file unique to the writer, fsync, rename), so a
crash mid-write leaves the previous file intact and no partial file under a final name; ``latest.pt`` and
``best.pt`` are hard links to the epoch file where the filesystem allows (:func:`utils.atomic.atomic_copy`).
"""

from __future__ import annotations

import os
import random
import re
import zipfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from models.checkpoint_format import CHECKPOINT_FORMAT, format_problem, model_spec
from utils.atomic import atomic_open
from utils.errors import UserError

__all__ = ["CHECKPOINT_FORMAT", "LATEST_NAME", "BEST_NAME", "DEFAULT_PREFIX", "CheckpointError",
           "checkpoint_prefix", "epoch_checkpoint_name", "save_checkpoint", "prune_epoch_checkpoints",
           "rng_state", "set_rng_state", "load_checkpoint", "read_model_spec", "find_latest"]

LATEST_NAME = "latest.pt"
BEST_NAME = "best.pt"
DEFAULT_PREFIX = "SlowFast"


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be read or does not fit this run; the message says which and why."""


def checkpoint_prefix(output_dir: str | os.PathLike) -> str:
    """File-name prefix for epoch checkpoints: the output directory's name, made file-name safe."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(output_dir).resolve().name).strip("._")
    return name or DEFAULT_PREFIX


def epoch_checkpoint_name(prefix: str, epoch: int) -> str:
    """``SlowFast_epoch_000196.pt`` for ``prefix="SlowFast", epoch=196`` (epochs completed)."""
    return f"{prefix}_epoch_{int(epoch):06d}.pt"


def _epoch_files(directory: Path, prefix: str) -> list[tuple[int, Path]]:
    pattern = re.compile(rf"^{re.escape(prefix)}_epoch_(\d+)\.pt$")
    found = []
    for path in directory.iterdir():
        match = pattern.match(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """``torch.save(state)`` to ``path`` atomically (see :mod:`utils.atomic`); returns the path.

    Args:
        state: the checkpoint dict (:func:`models.checkpoint_format.make_checkpoint`).
        path: the final file name; its directory is created if missing. On any error ``path`` is left as
            it was and no temporary file remains.
    """
    with atomic_open(path, "wb") as handle:
        torch.save(state, handle)
    return Path(path)


def prune_epoch_checkpoints(output_dir: str | os.PathLike, prefix: str, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` epoch checkpoints; ``latest.pt``/``best.pt`` are not touched.

    Args:
        output_dir: the run's directory.
        prefix: the epoch files' prefix (see :func:`checkpoint_prefix`).
        keep_last: how many epoch files to keep (``<= 0`` keeps all).

    Returns:
        The deleted paths.
    """
    if keep_last <= 0:
        return []
    files = _epoch_files(Path(output_dir), prefix)
    removed = []
    for _, path in files[:-keep_last]:
        # latest.pt / best.pt may be hard links to this file: unlinking the name leaves them whole.
        path.unlink()
        removed.append(path)
    return removed


def rng_state() -> dict:
    """This process's random states (python, numpy, torch, cuda) as plain values and tensors."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np.asarray(np_state["state"]["key"]).astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict) -> None:
    """Restore the states saved by :func:`rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": np_state["bit_generator"],
            "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
            "has_gauss": np_state["has_gauss"],
            "gauss": np_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Read a training checkpoint in this project's format (written by :func:`save_checkpoint`, or by any
    earlier version with a plain ``torch.save`` of the same dict).

    Args:
        path: the ``.pt`` file.
        map_location: where tensors go (``"cpu"`` by default; the model moves them later).

    Raises:
        CheckpointError: missing file, unreadable file, or another format (with the way to use it).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for a truncated or foreign file
        raise CheckpointError(
            f"checkpoint {str(path)!r} cannot be read ({type(err).__name__}: {err})"
        ) from None
    problem = format_problem(state, need_weights=False)  # what a resume needs of it, the caller checks
    if problem is not None:
        raise CheckpointError(
            f"{str(path)!r} is not a training checkpoint of this project (it {problem}); to start from its "
            f"weights use -w {path} instead of --resume"
        )
    return state


def read_model_spec(path: str | os.PathLike) -> Optional[tuple[str, dict]]:
    """``(model_name, model_args)`` when ``path`` is one of this project's checkpoints, else None.

    Other formats (PySlowFast .pyth, pytorchvideo, Caffe2 .pkl, PaddleVideo .pdparams) carry no architecture
    record, and a file that cannot be read gives None too (:func:`models.load_weights` then says what it is).
    """
    # torch.save writes a zip archive; Caffe2 .pkl and PaddleVideo .pdparams are bare pickles, and need
    # not be read twice.
    if not zipfile.is_zipfile(path):
        return None
    try:
        # mmap: only the small metadata is read; the tensors stay on disk until load_weights reads them.
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception:  # not a torch file this can read
        return None
    return model_spec(state)


def saved_config(path: str | os.PathLike) -> Optional[dict]:
    """The resolved configuration one of this project's checkpoints carries (its ``config``), else None.

    ``test.py -w RUN/best.pt`` and ``train.py --resume`` start from it when no ``-c`` is given
    (``configs.load_config(base=...)``); other formats carry none.
    """
    path = Path(path)
    if not path.is_file() or not zipfile.is_zipfile(path):
        return None
    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception:  # not a torch file this can read: load_weights / load_checkpoint say what it is
        return None
    if model_spec(state) is None:
        return None
    config = state.get("config")
    return dict(config) if isinstance(config, dict) else None


def find_latest(output_dir: str | os.PathLike) -> Path | None:
    """The checkpoint to resume ``output_dir`` from: ``latest.pt``, else the newest epoch file, else None."""
    directory = Path(output_dir)
    if not directory.is_dir():
        return None
    latest = directory / LATEST_NAME
    if latest.is_file():
        return latest
    candidates = [(epoch, path) for epoch, path in _epoch_files(directory, checkpoint_prefix(directory))]
    return candidates[-1][1] if candidates else None
