"""Video lists and the probed index: what a loader knows about each video without opening it.

List format (PaddleVideo / PySlowFast): one ``path label`` line per video, space separated, the path
relative to the data root (the path may itself contain spaces: the label is the last field).

Index format (written by ``python -m pipelines.prepare`` beside the list as ``<list>.index.jsonl``):
one JSON object per line, at least::

    {"path": "abseiling/abc.mp4", "label": 0, "num_frames": 300, "fps": 29.97, "width": 340,
     "height": 256, "codec": "h264"}

``path`` is relative to the data root, as in the list.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from utils.atomic import atomic_open
from utils.errors import UserError


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


def read_list(list_path: str | os.PathLike) -> list[tuple[str, int]]:
    """Parse a ``path label`` list; raises DatasetError naming the file and line on any bad line."""
    list_path = Path(list_path)
    if not list_path.is_file():
        raise DatasetError(f"video list {str(list_path)!r} does not exist; create it or generate it with "
                           f"`python -m pipelines.prepare --root DIR` from a folder-per-class tree")
    try:
        text = list_path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"video list {str(list_path)!r} cannot be read: {err}") from None
    entries, seen = [], {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2:
            raise DatasetError(f"{list_path}:{lineno}: expected 'path label', got {raw!r}")
        path, label_text = parts
        try:
            label = int(label_text)
        except ValueError:
            raise DatasetError(f"{list_path}:{lineno}: label {label_text!r} is not an integer "
                               f"(lines are 'path label', e.g. 'abseiling/x.mp4 0')") from None
        if label < 0:
            raise DatasetError(f"{list_path}:{lineno}: label {label} is negative; labels are 0..num_classes-1")
        if path in seen:
            raise DatasetError(f"{list_path}:{lineno}: duplicate entry {path!r} (first on line {seen[path]}); "
                               f"remove one of them")
        seen[path] = lineno
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
    """The records a loader uses: the index beside the list when present, else the bare list.

    Without an index the records carry only path and label (``num_frames == 0``); a loader probes them
    once when it is built (:func:`pipelines.base.probe_geometry`).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"data root {str(root)!r} is not a directory; set data.root to the folder "
                           f"that the list's paths are relative to")
    index = index_path_for(list_path)
    if index.is_file() and (not Path(list_path).is_file()
                            or index.stat().st_mtime >= Path(list_path).stat().st_mtime):
        records = read_index(index)
    else:
        records = [VideoRecord(path, label) for path, label in read_list(list_path)]
    if num_classes is not None:
        for record in records:
            if not 0 <= record.label < num_classes:
                raise DatasetError(f"label {record.label} of {record.path!r} is outside [0, {num_classes}); "
                                   f"set model.num_classes or fix the list {str(list_path)!r}")
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
