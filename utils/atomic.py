"""The one way this project writes a file: atomically, durably, and without collisions.

Every write goes to a temporary file in the target's directory with a name unique to the writer
(``.<name>.<host>.<pid>.<random>.tmp``), is flushed and fsynced, then renamed over the target, and the
directory is fsynced so the rename survives a power cut. A reader therefore sees the old file or the new
one, never a partial one, and two concurrent writers of the same target never share a temporary file.
On an error the temporary file is removed and the target is left as it was. Temporary files left by a
writer that was killed (``kill -9``) are removed by the next write of the same target on the same host,
once their writer's process is gone.

New files get the permissions the user's umask allows (``0666 & ~umask``), as ``open()`` would give them,
not the ``0600`` of a bare ``mkstemp``.

    with atomic_open("out/metrics.json", "w") as handle: handle.write(text)
    write_text("out/log.txt", text); write_bytes(path, data)
    with atomic_path("out/video.mp4") as tmp: encoder_writing_to(tmp)     # writers that need a file name
    atomic_copy("out/epoch_5.pt", "out/best.pt")                           # a hard link where possible
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import socket
from pathlib import Path
from typing import IO, Iterator, Union

PathLike = Union[str, os.PathLike]
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:32] or "host"


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _temp_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.{_HOST}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def clean_stale_temps(target: PathLike) -> list[Path]:
    """Remove temporary files of ``target`` left by killed writers on this host; returns what was removed."""
    target = Path(target)
    if not target.parent.is_dir():
        return []
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.{re.escape(_HOST)}\.(\d+)\.[0-9a-f]+\.tmp$")
    removed = []
    for entry in target.parent.iterdir():
        match = pattern.match(entry.name)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid == os.getpid() or _pid_alive(pid):
            continue
        with contextlib.suppress(FileNotFoundError):
            entry.unlink()
            removed.append(entry)
    return removed


def fsync_directory(directory: PathLike) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened)."""
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


def _space_hint(err: OSError, target: Path) -> OSError:
    if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        try:
            free = shutil.disk_usage(target.parent).free
            where = f"; {free / 2**20:.1f} MiB free there"
        except OSError:
            where = ""
        return OSError(err.errno, f"cannot write {str(target)!r}: {os.strerror(err.errno)}{where}; the previous "
                                  f"file (if any) is intact; free some space or write elsewhere")
    return err


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """A temporary path to write ``path`` through; renamed over ``path`` when the block ends without error.

    The caller writes the whole file at the yielded path (closing it before the block ends); this then
    fsyncs it, renames it and fsyncs the directory. The parent directory is created if missing.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(target)
    tmp = _temp_name(target)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to {str(tmp)!r} for {str(target)!r}")
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, target)
    except OSError as err:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise _space_hint(err, target) from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_directory(target.parent)


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "w", encoding: str | None = None) -> Iterator[IO]:
    """``open(path, mode)`` written atomically (``mode`` is ``w`` or ``wb``; text is UTF-8 by default)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open mode {mode!r}: use 'w' or 'wb'")
    if mode == "w" and encoding is None:
        encoding = "utf-8"
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()


def write_text(path: PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_open(path, "w") as handle:
        handle.write(text)
    return Path(path)


def write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def atomic_copy(src: PathLike, dst: PathLike) -> Path:
    """Make ``dst`` an atomic replica of the complete file ``src``: a hard link where the filesystem allows
    (no bytes written twice for a large checkpoint), else a copy; the old ``dst`` stays until then."""
    src, dst = Path(src), Path(dst)
    with atomic_path(dst) as tmp:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
    return dst
