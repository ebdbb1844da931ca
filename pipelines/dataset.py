"""Video lists and the probed index: what a loader knows about each video without opening it.

List format (PaddleVideo / PySlowFast): one ``path label`` line per video, space separated, the path
relative to the data root (the path may itself contain spaces: the label is the last field).

Index format (written by ``python -m pipelines.prepare`` beside the list as ``<list>.index.jsonl``):
one JSON object per line, at least::

    {"path": "abseiling/abc.mp4", "label": 0, "num_frames": 300, "fps": 29.97, "width": 340,
     "height": 256, "codec": "h264"}

``path`` is relative to the data root, as in the list.

The list is the truth, the index a cache of what probing found: :func:`load_records` reads the list every
time and takes a video's geometry from the index only when the index holds the same path with the same
label. A list edited after preparation (a label changed, lines added or removed) therefore never loses or
mislabels a video; entries the index lacks (new ones, and those preparation left out as unusable and listed
in ``<list>.bad.jsonl``) come back as bare records, which the loader probes when it is built (an unusable
one is then a failure with the probe's reason, counted against the whole list), and index rows for videos
no longer listed are ignored. The comparison is by content, never by modification time.

Paths are normalised relative to the data root, so ``a.mp4``, ``./a.mp4`` and ``/data/root/a.mp4`` are the
same entry (a duplicate); a path leading outside the root (``../x.mp4``, or an absolute path elsewhere)
is refused. A UTF-8 byte-order mark and CRLF line endings are accepted.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional

from utils.atomic import atomic_open
from utils.errors import UserError

log = logging.getLogger(__name__)


class DatasetError(UserError, ValueError):
    """A list, index or data root that cannot be used; the message names the value and the fix."""


@dataclass
class VideoRecord:
    path: str                      # relative to the data root
    label: int
    num_frames: int = 0
    fps: float = 0.0
    width: int = 0
    height: int = 0
    codec: str = ""
    duration: float = 0.0
    keyframe_interval: Optional[int] = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        data = asdict(self)
        extra = data.pop("extra")
        data.update(extra)
        return json.dumps(data, sort_keys=False)

    @classmethod
    def from_json(cls, line: str) -> "VideoRecord":
        data = json.loads(line)
        known = {k: data.pop(k) for k in list(data) if k in cls.__dataclass_fields__ and k != "extra"}
        return cls(**known, extra=data)


def index_path_for(list_path: str | os.PathLike) -> Path:
    """Where the probed index of a list lives: ``train.list`` -> ``train.list.index.jsonl``."""
    return Path(str(list_path) + ".index.jsonl")


def normalise_path(path: str, root: str | os.PathLike | None = None) -> str:
    """A list path as the index and the loaders name it: relative to the data root, POSIX, normalised.

    ``./a.mp4`` and ``x/../a.mp4`` become ``a.mp4``; an absolute path inside ``root`` becomes relative to it.

    Args:
        path: the path as written in the list.
        root: the data root; without it an absolute path is kept as it is.

    Raises:
        ValueError: the path leads outside the data root (its message says why; callers add where).
    """
    if os.path.isabs(path):
        if root is None:
            return os.path.normpath(path)
        base = os.path.abspath(os.fspath(root))
        relative = os.path.relpath(os.path.normpath(path), base)
        if relative == os.pardir or relative.startswith(os.pardir + os.sep):
            raise ValueError(f"the absolute path {path!r} is outside the data root {base!r}")
    else:
        relative = os.path.normpath(path)
        if relative == os.pardir or relative.startswith(os.pardir + os.sep):
            raise ValueError(f"the path {path!r} leads outside the data root (it climbs above it with '..')")
    if relative == os.curdir:
        raise ValueError(f"the path {path!r} names the data root itself, not a video")
    return Path(relative).as_posix()


def bad_report_path_for(list_path: str | os.PathLike) -> Path:
    """Where preparation lists a list's unusable videos: ``train.list`` -> ``train.list.bad.jsonl``."""
    return Path(str(list_path) + ".bad.jsonl")


def _reported_unusable(list_path: str | os.PathLike, root: Path) -> set[str]:
    """The normalised paths of ``<list>.bad.jsonl`` (empty if there is none or it cannot be read)."""
    report = bad_report_path_for(list_path)
    paths: set[str] = set()
    try:
        lines = report.read_text(encoding="utf-8").splitlines() if report.is_file() else []
    except (OSError, UnicodeDecodeError):
        return paths
    for line in lines:
        try:
            paths.add(normalise_path(str(json.loads(line)["path"]), root))
        except (ValueError, KeyError, TypeError):
            continue  # only used to quieten a warning: a bad row is not worth an error
    return paths


def read_list(list_path: str | os.PathLike, root: str | os.PathLike | None = None) -> list[tuple[str, int]]:
    """Parse a ``path label`` list; raises DatasetError naming the file and line on any bad line.

    Args:
        list_path: the list (UTF-8, a byte-order mark and CRLF line endings are accepted).
        root: the data root; paths are normalised relative to it (:func:`normalise_path`), so the same file
            written two ways is a duplicate, and a path outside it is an error. Without it, relative paths
            are normalised and must not climb out with ``..``; absolute paths are kept.

    Returns:
        ``[(path, label), ...]`` in list order, paths normalised.
    """
    list_path = Path(list_path)
    if not list_path.is_file():
        raise DatasetError(f"video list {str(list_path)!r} does not exist; create it or generate it with "
                           f"`python -m pipelines.prepare --root DIR` from a folder-per-class tree")
    try:
        # utf-8-sig: a byte-order mark (Windows editors write one) is not part of the first path
        text = list_path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"video list {str(list_path)!r} cannot be read: {err}") from None
    entries, seen = [], {}
    for lineno, raw in enumerate(text.splitlines(), 1):  # splitlines: LF, CRLF and CR endings
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2:
            raise DatasetError(f"{list_path}:{lineno}: expected 'path label', got {raw!r}")
        written, label_text = parts
        try:
            label = int(label_text)
        except ValueError:
            raise DatasetError(f"{list_path}:{lineno}: label {label_text!r} is not an integer "
                               f"(lines are 'path label', e.g. 'abseiling/x.mp4 0')") from None
        if label < 0:
            raise DatasetError(f"{list_path}:{lineno}: label {label} is negative; labels are 0..num_classes-1")
        try:
            path = normalise_path(written, root)
        except ValueError as err:
            raise DatasetError(f"{list_path}:{lineno}: {err}; write paths relative to the data root "
                               f"(data.root), or set data.root to a folder that holds every video") from None
        if path in seen:
            first_line, first_written = seen[path]
            also = f" as {first_written!r}" if first_written != written else ""
            raise DatasetError(f"{list_path}:{lineno}: duplicate entry {written!r} (first on line {first_line}"
                               f"{also}); remove one of them")
        seen[path] = (lineno, written)
        entries.append((path, label))
    if not entries:
        raise DatasetError(f"video list {str(list_path)!r} holds no entries")
    return entries


def read_index(index_path: str | os.PathLike) -> list[VideoRecord]:
    index_path = Path(index_path)
    if not index_path.is_file():
        raise DatasetError(f"index {str(index_path)!r} does not exist; write it with "
                           f"`python -m pipelines.prepare --list LIST --root ROOT`")
    records = []
    for lineno, line in enumerate(index_path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(VideoRecord.from_json(line))
        except (json.JSONDecodeError, TypeError) as err:
            raise DatasetError(f"{index_path}:{lineno}: not an index record ({err}); "
                               f"re-run `python -m pipelines.prepare`") from None
    return records


def write_index(records: list[VideoRecord], index_path: str | os.PathLike) -> Path:
    """Write an index atomically (``utils.atomic``: a reader sees the old index or the new one)."""
    index_path = Path(index_path)
    with atomic_open(index_path, "w") as handle:
        for record in records:
            handle.write(record.to_json() + "\n")
    return index_path


def load_records(list_path: str | os.PathLike, root: str | os.PathLike,
                 num_classes: Optional[int] = None) -> list[VideoRecord]:
    """The records a loader uses: every entry of the list, in list order, with the index's geometry where it
    describes the same video.

    An entry takes its index row only when the row has the same (normalised) path and the same label;
    other entries get bare records (path and label, ``num_frames == 0``) that the loader probes once when
    it is built (:func:`pipelines.base.probe_geometry`), as for a list without an index. Index rows for
    paths the list does not hold are ignored. A mismatch is logged once, with the fix.

    Args:
        list_path: the ``path label`` list (the truth).
        root: the data root the paths are relative to.
        num_classes: if given, every label must lie in ``[0, num_classes)``.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"data root {str(root)!r} is not a directory; set data.root to the folder "
                           f"that the list's paths are relative to")
    entries = read_list(list_path, root)
    if num_classes is not None:
        for path, label in entries:
            if not 0 <= label < num_classes:
                raise DatasetError(f"label {label} of {path!r} is outside [0, {num_classes}); "
                                   f"set model.num_classes or fix the list {str(list_path)!r}")
    index_path = index_path_for(list_path)
    if not index_path.is_file():
        return [VideoRecord(path, label) for path, label in entries]
    indexed: dict[str, VideoRecord] = {}
    for row in read_index(index_path):
        try:
            indexed[normalise_path(row.path, root)] = row
        except ValueError:
            continue  # a row outside the root cannot describe a listed video
    records, relabelled, unindexed = [], [], []
    for path, label in entries:
        row = indexed.pop(path, None)
        if row is not None and int(row.label) == label:
            records.append(replace(row, path=path, extra=dict(row.extra)))
            continue
        (relabelled if row is not None else unindexed).append(path)
        records.append(VideoRecord(path, label))
    # videos that preparation reported unusable are expected to be missing from the index: the loader probes
    # them again and reports them as failures with the probe's reason
    unusable = _reported_unusable(list_path, root) if unindexed else set()
    new = [path for path in unindexed if path not in unusable]
    if relabelled or indexed or new:
        log.warning(
            "the index %s is out of date with the list %s: %d listed video(s) are not in it%s, %d have another "
            "label there%s, %d of its rows are no longer listed; the list wins (its labels, every listed video, "
            "the videos the index does not describe probed when the loader starts). Refresh the index with "
            "`python -m pipelines.prepare --list %s --root %s`",
            index_path, list_path, len(new), f" (e.g. {new[0]!r})" if new else "", len(relabelled),
            f" (e.g. {relabelled[0]!r})" if relabelled else "", len(indexed), list_path, root)
    return records


def read_class_names(path: str | os.PathLike | None, num_classes: int) -> list[str]:
    """Class names, one per line; without a file, ``class_0 .. class_{n-1}``."""
    if not path:
        return [f"class_{i}" for i in range(num_classes)]
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"class-name file {str(path)!r} does not exist; set data.class_names=null "
                           f"or point it at a file with one name per line")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(names) != num_classes:
        raise DatasetError(f"class-name file {str(path)!r} has {len(names)} names but model.num_classes is "
                           f"{num_classes}")
    return names
