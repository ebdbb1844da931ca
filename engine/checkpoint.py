"""Checkpoints: the on-disk format, atomic writes, naming, pruning, RNG state, resume lookup.

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

Files in ``output_dir``: ``<prefix>_epoch_000196.pt`` every ``train.save_every`` epochs and at the end
(the newest ``train.keep_last`` are kept), ``latest.pt`` after every epoch (resume point) and ``best.pt``
(best validation top-1). ``<prefix>`` is the output directory's name (``output/SlowFast`` gives
``SlowFast_epoch_000196.pt``, as the seed's runs name them).

Every write goes to a temporary file in the same directory, is fsynced, then ``os.replace``-d over the
target, so a crash mid-write leaves the previous file intact and no partial file under a final name.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.errors import UserError

CHECKPOINT_FORMAT = "slowfast-dali/1"
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


def _fsync_directory(directory: Path) -> None:
    # Make the rename itself durable; not every platform lets a directory be opened.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically: temp file in the same directory, fsync, ``os.replace``.

    Args:
        obj: what to save.
        path: the final file name; its directory is created if missing.

    Returns:
        The final path. On any error the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    _fsync_directory(path.parent)
    return path


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Make ``dst`` an atomic replica of ``src``: a hard link where the filesystem allows, else a copy.

    Args:
        src: an existing, complete file.
        dst: the name to (re)place; the old ``dst`` stays intact until the new one is complete.
    """
    src, dst = Path(src), Path(dst)
    fd, tmp_name = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.close(fd)
    try:
        os.unlink(tmp_name)
        try:
            os.link(src, tmp_name)  # no extra bytes written for a multi-hundred-MB checkpoint
        except OSError:
            shutil.copyfile(src, tmp_name)
            with open(tmp_name, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp_name, dst)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    _fsync_directory(dst.parent)
    return dst


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
    """Read a checkpoint written by :func:`atomic_save` in this project's format.

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
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{str(path)!r} is not a training checkpoint of this project (format {found!r}, expected "
            f"{CHECKPOINT_FORMAT!r}); to start from its weights use -w {path} instead of --resume"
        )
    return state


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
