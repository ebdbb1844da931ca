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

The run directory itself: :func:`lock_output_dir` takes an exclusive ``flock`` on ``<output_dir>/.lock`` for the
whole run (primary rank), so a second run into the same directory stops at once, naming the running process;
:func:`check_output_dir` refuses a path that is a file, and :func:`existing_checkpoints` lists what a fresh run
would write over.
"""

from __future__ import annotations

import errno
import fcntl
import os
import random
import re
import socket
import time
import zipfile
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import torch

from models.checkpoint_format import CHECKPOINT_FORMAT, format_problem, model_spec
from utils.atomic import atomic_open
from utils.errors import UserError

__all__ = ["CHECKPOINT_FORMAT", "LATEST_NAME", "BEST_NAME", "DEFAULT_PREFIX", "CheckpointError",
           "checkpoint_prefix", "epoch_checkpoint_name", "save_checkpoint", "prune_epoch_checkpoints",
           "rng_state", "set_rng_state", "load_checkpoint", "read_model_spec", "find_latest", "saved_config",
           "existing_checkpoints", "check_output_dir", "lock_output_dir", "RunLock", "OutputDirInUse", "LOCK_NAME"]

LATEST_NAME = "latest.pt"
BEST_NAME = "best.pt"
DEFAULT_PREFIX = "SlowFast"
LOCK_NAME = ".lock"
_ANY_EPOCH_FILE = re.compile(r"^.+_epoch_\d+\.pt$")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be read, written or does not fit this run; the message says which and why."""


class OutputDirInUse(UserError, RuntimeError):
    """Another live process holds the output directory's lock."""


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
        writer = _ErrorKeepingWriter(handle)
        try:
            torch.save(state, writer)
        except RuntimeError:
            if writer.error is not None:  # the real cause, e.g. ENOSPC/EFBIG: utils.atomic names path and space
                raise writer.error from None
            raise
    return Path(path)


class _ErrorKeepingWriter:
    """A file handle for ``torch.save`` that keeps the ``OSError`` of a failed write.

    NOTE: torch's zip writer turns an exception raised by ``write`` into ``RuntimeError: [enforce fail at
    inline_container.cc:672] . unexpected pos 704 vs 598`` (torch 2.13, with a full disk or a file-size limit),
    losing the errno that tells a full disk from a bug.
    """

    def __init__(self, handle: Any) -> None:
        self.handle, self.error = handle, None

    def write(self, data: Any) -> int:
        try:
            return self.handle.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.handle.flush()


def prune_epoch_checkpoints(output_dir: str | os.PathLike, prefix: str, keep_last: int,
                            exclude: Iterable[str] = ()) -> list[Path]:
    """Delete all but the newest ``keep_last`` epoch checkpoints; ``latest.pt``/``best.pt`` are not touched.

    Args:
        output_dir: the run's directory.
        prefix: the epoch files' prefix (see :func:`checkpoint_prefix`).
        keep_last: how many epoch files to keep (``<= 0`` keeps all).
        exclude: file names neither counted nor deleted (an earlier run's files that ``--overwrite`` found).

    Returns:
        The deleted paths.
    """
    if keep_last <= 0:
        return []
    excluded = set(exclude)
    files = [(epoch, path) for epoch, path in _epoch_files(Path(output_dir), prefix) if path.name not in excluded]
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


def existing_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Every checkpoint file in ``output_dir`` a fresh run could write over: ``latest.pt``, ``best.pt`` and epoch
    files of any prefix (``*_epoch_000012.pt``), sorted by name; empty when the directory does not exist."""
    directory = Path(output_dir)
    if not directory.is_dir():
        return []
    return sorted(path for path in directory.iterdir()
                  if path.is_file() and (path.name in (LATEST_NAME, BEST_NAME) or _ANY_EPOCH_FILE.match(path.name)))


def check_output_dir(output_dir: str | os.PathLike) -> Path:
    """``output_dir`` as a Path, or a :class:`CheckpointError` when it (or a parent) is an existing non-directory.

    Raises:
        CheckpointError: one line naming the path and the fix.
    """
    path = Path(output_dir)
    for candidate in (path, *path.parents):
        if candidate.exists() and not candidate.is_dir():
            what = "the output directory" if candidate == path else f"a parent of the output directory {str(path)!r}"
            raise CheckpointError(f"{str(candidate)!r} ({what}) is an existing file, not a directory; choose a "
                                  f"directory with --output-dir DIR (or -o train.output_dir=DIR)")
    return path


class RunLock:
    """An exclusive ``flock`` on ``<output_dir>/.lock``; :func:`lock_output_dir` takes it, :meth:`release` (or the
    process's end, even a ``kill -9``) gives it back. The file holds the holder's pid, host and start time."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self._fd = path, fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def lock_output_dir(output_dir: str | os.PathLike, command: str = "") -> RunLock:
    """Take the run directory's lock for this process, or fail at once if a live process holds it.

    NOTE: the lock file is written in place, not through :mod:`utils.atomic`: an atomic write replaces the file
    (a new inode), and a second run would then lock the new file while the first holds the old one. The file is
    never deleted for the same reason; a lock whose holder died is free (the kernel drops ``flock`` locks with
    the process), and the stale pid in the file is then simply overwritten.

    Args:
        output_dir: the run directory (created if missing).
        command: what this run is (e.g. the command line), recorded in the lock file for the message.

    Raises:
        OutputDirInUse: another process holds the lock; the message names the directory and that process.
    """
    directory = check_output_dir(output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        try:
            holder = path.read_text(encoding="utf-8", errors="replace").strip() or "a process that is starting"
        except OSError:
            holder = "another process"
        raise OutputDirInUse(
            f"{str(directory)!r} is in use by another training run ({holder}); wait for it to finish or stop it, "
            f"or choose another directory with --output-dir DIR") from None
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    text = f"pid {os.getpid()} on {socket.gethostname()}, started {started}" + (f": {command}" if command else "")
    os.ftruncate(fd, 0)
    os.pwrite(fd, (text + "\n").encode("utf-8"), 0)
    return RunLock(path, fd)
