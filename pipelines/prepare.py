"""Dataset preparation: lists from a folder-per-class tree, probing into an index, optional transcoding.

Usage::

    # Kinetics layout (ROOT/train/<class>/*.mp4 and ROOT/val/<class>/*.mp4, or ROOT/<class>/*.mp4 split
    # by --val-fraction): writes ROOT/train.list, ROOT/val.list, ROOT/classes.txt and probes them
    python -m pipelines.prepare --root ROOT --from-tree

    # existing `path label` lists: probe every video and write <list>.index.jsonl beside each list
    python -m pipelines.prepare --root ROOT --list ROOT/train.list --list ROOT/val.list --num-classes 400

    # also transcode (resumable, parallel) to a new root with the same layout, lists and indexes
    python -m pipelines.prepare --root ROOT --list ROOT/train.list --transcode-to ROOT256 \\
        --short-side 256 --fps 30 --keyframe-interval 16 --codec h264

Files that cannot be used (corrupt, truncated beyond repair, empty, audio-only, missing) are left out of
the index and listed with the reason in ``<list>.bad.jsonl``; they never stop the run.
"""
from __future__ import annotations

import argparse
import concurrent.futures as futures
import json
import os
import random
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

from pipelines.probe import ProbeError, _rate_of, probe_video
from pipelines.dataset import DatasetError, VideoRecord, bad_report_path_for, index_path_for, read_list, write_index
from pipelines.codecs import WRITERS, codec_suffix
from pipelines.video_io import write_video
from utils.atomic import atomic_copy, atomic_open, write_text
from utils.cpus import available_cores
from utils.progress import Progress

VIDEO_SUFFIXES = {".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".flv", ".mpg", ".mpeg", ".ts", ".3gp"}
CLASS_NAMES_FILE = "classes.txt"


def _probe_entry(job: tuple[str, str, int]) -> tuple[bool, dict[str, Any]]:
    full_path, rel_path, label = job
    try:
        info = probe_video(full_path)
    except ProbeError as err:
        return False, {"path": rel_path, "label": label, "reason": str(err)}
    except Exception as err:  # noqa: BLE001 - one odd file must never stop a run over 240k videos
        return False, {"path": rel_path, "label": label, "reason": f"{type(err).__name__}: {err}"}
    return True, {"path": rel_path, "label": label, **info}


def _parallel_map(function: Callable, jobs: Sequence[Any], workers: int, what: str,
                  progress: bool = True) -> Iterator[Any]:
    """``map(function, jobs)`` in order over a process pool (in-process for one worker)."""
    bar = Progress(len(jobs), what, unit="videos") if progress and jobs else None
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield function(job)
            if bar:
                bar.update()
        if bar:
            bar.close()
        return
    chunk = max(1, min(64, len(jobs) // (workers * 8)))
    with futures.ProcessPoolExecutor(max_workers=workers) as pool:
        for result in pool.map(function, jobs, chunksize=chunk):
            yield result
            if bar:
                bar.update()
    if bar:
        bar.close()


def default_workers() -> int:
    """Processes for probing and transcoding: every core this process may use."""
    return available_cores()


def probe_entries(entries: Sequence[tuple[str, int]], root: str | os.PathLike, workers: Optional[int] = None,
                  progress: bool = True) -> tuple[list[VideoRecord], list[dict[str, Any]]]:
    """Probe ``(path, label)`` entries (paths relative to ``root``) in a process pool.

    Args:
        entries: the list's entries, e.g. from :func:`pipelines.dataset.read_list`.
        root: the data root the paths are relative to.
        workers: processes (default: available cores).
        progress: print a progress line on stderr.

    Returns:
        ``(records, bad)``: the probed records in list order, and ``{"path", "label", "reason"}`` for
        every file that cannot be used.
    """
    root = Path(root)
    jobs = [(str(root / path), path, label) for path, label in entries]
    records, bad = [], []
    for ok, result in _parallel_map(_probe_entry, jobs, workers or default_workers(), "probing", progress):
        if ok:
            records.append(_record(result))
        else:
            bad.append(result)
    return records, bad


def _record(probed: dict[str, Any]) -> VideoRecord:
    """A VideoRecord from ``{"path", "label", **probe_video(...)}``: keys VideoRecord has no field for
    (``profile``, ``pix_fmt``, ``bit_depth``, ``chroma``) go to ``record.extra``, so the index carries them."""
    fields = VideoRecord.__dataclass_fields__
    known = {k: v for k, v in probed.items() if k in fields and k != "extra"}
    return VideoRecord(**known, extra={k: v for k, v in probed.items() if k not in fields})


def _write_jsonl(rows: Iterable[dict[str, Any]], path: Path) -> None:
    with atomic_open(path, "w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


def _write_text(text: str, path: Path) -> None:
    write_text(path, text)


def index_list(list_path: str | os.PathLike, root: str | os.PathLike, num_classes: Optional[int] = None,
               workers: Optional[int] = None, progress: bool = True) -> tuple[list[VideoRecord], list[dict]]:
    """Probe every video of a list and write its index (``<list>.index.jsonl``) and bad-file report.

    Args:
        list_path: a ``path label`` list.
        root: the data root its paths are relative to.
        num_classes: if given, every label must lie in ``[0, num_classes)``.
        workers: probing processes (default: available cores).
        progress: print a progress line on stderr.

    Returns:
        ``(records, bad)`` as :func:`probe_entries`.

    Raises:
        DatasetError: the list cannot be read, has duplicates or bad labels, or no video is usable.
    """
    entries = read_list(list_path)
    check_labels(entries, list_path, num_classes)
    records, bad = probe_entries(entries, root, workers, progress)
    report = bad_report_path_for(list_path)
    if bad:
        _write_jsonl(bad, report)
    elif report.exists():
        report.unlink()  # a report from an earlier run no longer applies
    if not records:
        raise DatasetError(f"none of the {len(entries)} videos of {str(list_path)!r} is usable (reasons in "
                           f"{str(report)!r}); check that --root {str(root)!r} is the folder the paths are "
                           f"relative to")
    write_index(records, index_path_for(list_path))
    return records, bad


def check_labels(entries: Sequence[tuple[str, int]], list_path: Any, num_classes: Optional[int]) -> None:
    if num_classes is None:
        return
    for path, label in entries:
        if not 0 <= label < num_classes:
            raise DatasetError(f"{list_path}: label {label} of {path!r} is outside [0, {num_classes}); "
                               f"fix the list or pass the right --num-classes")


# ----------------------------------------------------------------------------------------------
# lists from a folder-per-class tree

def _videos_by_class(folder: Path) -> dict[str, list[Path]]:
    classes = {}
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        videos = sorted(p for p in class_dir.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
        if videos:
            classes[class_dir.name] = videos
    return classes


def lists_from_tree(root: str | os.PathLike, out_dir: Optional[str | os.PathLike] = None,
                    val_fraction: float = 0.1, seed: int = 0) -> dict[str, Path]:
    """Write ``train.list``, ``val.list`` and ``classes.txt`` for a folder-per-class tree.

    With ``root/train`` and ``root/val`` folders (the Kinetics layout), each holds one folder per class;
    otherwise ``root`` holds the class folders and ``val_fraction`` of each class (a seeded draw) goes
    to validation. Labels are the sorted class names' positions; paths are relative to ``root``.

    Args:
        root: the data root.
        out_dir: where the lists go (default ``root``).
        val_fraction: share of each class held out for validation (no train/val folders only).
        seed: seed of the validation draw.

    Returns:
        ``{"train": path, "val": path, "classes": path}``.
    """
    root = Path(root)
    out = Path(out_dir) if out_dir else root
    if not root.is_dir():
        raise DatasetError(f"--root {str(root)!r} is not a directory")
    if not 0.0 <= val_fraction < 1.0:
        raise DatasetError(f"--val-fraction {val_fraction} must be in [0, 1)")
    out.mkdir(parents=True, exist_ok=True)
    if (root / "train").is_dir():
        split_trees = {"train": _videos_by_class(root / "train")}
        if (root / "val").is_dir():
            split_trees["val"] = _videos_by_class(root / "val")
        names = sorted(set().union(*[set(tree) for tree in split_trees.values()]))
        splits = {split: [(p, names.index(c)) for c, ps in tree.items() for p in ps]
                  for split, tree in split_trees.items()}
        splits.setdefault("val", [])
    else:
        tree = _videos_by_class(root)
        names = sorted(tree)
        splits = {"train": [], "val": []}
        rng = random.Random(seed)
        for label, name in enumerate(names):
            videos = list(tree[name])
            rng.shuffle(videos)
            n_val = int(round(val_fraction * len(videos)))
            splits["val"].extend((p, label) for p in sorted(videos[:n_val]))
            splits["train"].extend((p, label) for p in sorted(videos[n_val:]))
    if not names:
        raise DatasetError(f"no class folders with videos ({', '.join(sorted(VIDEO_SUFFIXES))}) under "
                           f"{str(root)!r}; expected ROOT/<class>/<video> or ROOT/train/<class>/<video>")
    for name in names:
        if any(ch.isspace() for ch in name[-1:]):
            raise DatasetError(f"class folder {name!r} ends in whitespace; rename it")
    written = {}
    for split, items in splits.items():
        lines = [f"{p.relative_to(root).as_posix()} {label}\n" for p, label in items]
        written[split] = out / f"{split}.list"
        _write_text("".join(lines), written[split])
    written["classes"] = out / CLASS_NAMES_FILE
    _write_text("".join(f"{name}\n" for name in names), written["classes"])
    return written


# ----------------------------------------------------------------------------------------------
# transcoding

def output_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(height, width) with the short side ``short_side`` and the long side scaled, rounded to even."""
    if width <= height:
        return int(round(height * short_side / width / 2)) * 2, short_side
    return short_side, int(round(width * short_side / height / 2)) * 2


def _resampled_frames(path: str, short_side: int, fps: Optional[float]) -> tuple[Iterator, Fraction]:
    """A generator of resized RGB frames at a constant rate, and that rate."""
    import av

    container = av.open(path)
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    src_rate = _rate_of(stream) or Fraction(30)
    out_rate = Fraction(fps).limit_denominator(1001) if fps else src_rate
    height, width = output_size(stream.codec_context.height, stream.codec_context.width, short_side)
    time_base = float(stream.time_base)
    start = stream.start_time or 0

    def frames() -> Iterator:
        # constant frame rate: output frame k shows the source frame nearest to time k / out_rate
        k, previous, previous_t = 0, None, 0.0
        try:
            for frame in container.decode(stream):
                pts = frame.pts if frame.pts is not None else frame.dts
                t = (pts - start) * time_base if pts is not None else previous_t + 1 / float(src_rate)
                if previous is not None:
                    while k / out_rate <= (previous_t + t) / 2:
                        yield previous
                        k += 1
                # NOTE: resize in YUV, then convert: one swscale call doing both lost 1-2 more grey levels
                # (numbered test frames 4, 8, 12 came out 2, 6, 10 instead of 3, 8, 11)
                small = frame.reformat(width=width, height=height, interpolation="BICUBIC")
                previous = small.to_ndarray(format="rgb24")
                previous_t = t
            if previous is not None:
                end = previous_t + 1 / float(src_rate)
                while (k + 0.5) / out_rate <= end:
                    yield previous
                    k += 1
        finally:
            container.close()
    return frames(), out_rate


def transcode_video(src: str | os.PathLike, dst: str | os.PathLike, short_side: int = 256,
                    fps: Optional[float] = None, keyframe_interval: int = 16, codec: str = "h264",
                    quality: Optional[int] = None) -> Path:
    """Re-encode ``src`` to ``dst``: short side ``short_side``, constant ``fps``, fixed keyframe interval.

    Audio is dropped. ``dst`` appears only when complete (written under a temporary name, then renamed).

    Args:
        src: the source video.
        dst: the output file (its folder is created).
        short_side: output short side in pixels (the long side keeps the aspect ratio, rounded to even).
        fps: output frame rate (frames are repeated or dropped, nearest in time); None keeps the source's.
        keyframe_interval: frames between keyframes.
        codec: ``h264``, ``vp9``, ``vp8`` or ``mjpeg``.
        quality: CRF (h264/vp9) or qscale (mjpeg); None = the encoder's default.
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    frames, rate = _resampled_frames(str(src), short_side, fps)
    return write_video(dst, frames, fps=rate, codec=codec, keyframe_interval=keyframe_interval, quality=quality)


def _is_complete(dst: Path, short_side: int, codec: str) -> bool:
    """An existing output of an earlier run with the same short side and codec (resuming)."""
    if not dst.is_file():
        return False
    try:
        info = probe_video(dst)
    except ProbeError:
        return False
    return min(info["width"], info["height"]) == short_side and info["codec"] == codec


def _transcode_job(job: tuple[str, str, int, Optional[float], int, str, Optional[int]]) -> Optional[str]:
    src, dst, short_side, fps, keyframe_interval, codec, quality = job
    try:
        if not _is_complete(Path(dst), short_side, codec):
            transcode_video(src, dst, short_side, fps, keyframe_interval, codec, quality)
    except Exception as err:  # noqa: BLE001 - one bad file must not stop the others
        return f"transcoding failed: {type(err).__name__}: {err}"
    return None


def transcode_lists(list_paths: Sequence[Path], root: Path, out_root: Path, short_side: int = 256,
                    fps: Optional[float] = None, keyframe_interval: int = 16, codec: str = "h264",
                    quality: Optional[int] = None, workers: Optional[int] = None,
                    progress: bool = True) -> list[Path]:
    """Transcode the usable videos of lists into ``out_root`` (same layout), writing new lists there.

    The videos of each list are taken from its index (run :func:`index_list` first); outputs that exist
    with the requested short side and codec are kept (the run resumes). Each list ``X`` becomes
    ``out_root/X.name`` with paths whose suffix follows the codec, and is indexed.

    Returns:
        the new list paths.
    """
    from pipelines.dataset import read_index

    out_root.mkdir(parents=True, exist_ok=True)
    suffix = codec_suffix(codec)
    plans, jobs, targets = [], [], {}
    for list_path in list_paths:
        records = read_index(index_path_for(list_path))
        entries = []
        for record in records:
            rel = Path(record.path).with_suffix(suffix).as_posix()
            if rel in targets and targets[rel] != record.path:
                raise DatasetError(f"{record.path!r} and {targets[rel]!r} would both be transcoded to {rel!r}; "
                                   f"rename one of them")
            if rel not in targets:
                targets[rel] = record.path
                jobs.append((str(root / record.path), str(out_root / rel), short_side, fps, keyframe_interval,
                             codec, quality))
            entries.append((rel, record.label, record.path))
        plans.append((list_path, entries))
    failures = {}
    for job, error in zip(jobs, _parallel_map(_transcode_job, jobs, workers or default_workers(),
                                              "transcoding", progress)):
        if error:
            failures[Path(job[1]).relative_to(out_root).as_posix()] = error
    new_lists = []
    for list_path, entries in plans:
        new_list = out_root / Path(list_path).name
        _write_text("".join(f"{rel} {label}\n" for rel, label, _ in entries if rel not in failures), new_list)
        failed = [{"path": src, "label": label, "reason": failures[rel]}
                  for rel, label, src in entries if rel in failures]
        if failed:
            _write_jsonl(failed, bad_report_path_for(new_list).with_suffix(".transcode.jsonl"))
        new_lists.append(new_list)
        classes = Path(list_path).parent / CLASS_NAMES_FILE
        if classes.is_file() and not (out_root / CLASS_NAMES_FILE).exists():
            atomic_copy(classes, out_root / CLASS_NAMES_FILE)
    return new_lists


# ----------------------------------------------------------------------------------------------
# command line

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipelines.prepare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="data root; list paths are relative to it")
    parser.add_argument("--list", action="append", default=[], metavar="LIST",
                        help="a `path label` list to probe (repeatable)")
    parser.add_argument("--from-tree", action="store_true",
                        help="generate train/val lists and classes.txt from ROOT/<class>/ or ROOT/{train,val}/<class>/")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="with --from-tree and no train/val folders: share of each class for validation")
    parser.add_argument("--out-dir", default=None, help="where --from-tree writes its lists (default: ROOT)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --val-fraction draw")
    parser.add_argument("--num-classes", type=int, default=None, help="check every label is in [0, N)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: available cores)")
    parser.add_argument("--transcode-to", default=None, metavar="NEW_ROOT",
                        help="re-encode the usable videos into NEW_ROOT (same layout) with lists and indexes")
    parser.add_argument("--short-side", type=int, default=256, help="transcoding: output short side (e.g. 256, 320)")
    parser.add_argument("--fps", type=float, default=None,
                        help="transcoding: constant output frame rate (default: the source's)")
    parser.add_argument("--keyframe-interval", type=int, default=16, help="transcoding: frames between keyframes")
    parser.add_argument("--codec", default="h264", choices=sorted(WRITERS), help="transcoding: output codec")
    parser.add_argument("--quality", type=int, default=None, help="transcoding: CRF (h264/vp9) or qscale (mjpeg)")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    return parser


def _summary(list_path: Path, records: list, bad: list) -> str:
    text = f"{list_path}: {len(records)} videos indexed -> {index_path_for(list_path)}"
    if bad:
        text += f"; {len(bad)} unusable, left out (reasons in {bad_report_path_for(list_path)})"
    return text


def run(args: argparse.Namespace) -> int:
    root = Path(args.root)
    if not root.is_dir():
        raise DatasetError(f"--root {str(root)!r} is not a directory; point it at the folder holding the videos")
    for name in ("workers", "short_side", "keyframe_interval", "num_classes"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise DatasetError(f"--{name.replace('_', '-')} {value} must be >= 1")
    if args.fps is not None and not args.fps > 0:
        raise DatasetError(f"--fps {args.fps} must be > 0")
    lists = [Path(p) for p in args.list]
    if args.from_tree:
        written = lists_from_tree(root, args.out_dir, args.val_fraction, args.seed)
        print(f"wrote {written['train']}, {written['val']}, {written['classes']}")
        lists += [written["train"]] + ([written["val"]] if written["val"].stat().st_size else [])
        if args.num_classes is None:
            args.num_classes = len(written["classes"].read_text().splitlines())
    if not lists:
        raise DatasetError("nothing to do: give --list LIST (repeatable) or --from-tree")
    # read every list first, so a bad list fails before hours of probing
    for list_path in lists:
        check_labels(read_list(list_path), list_path, args.num_classes)
    total_bad = 0
    for list_path in lists:
        records, bad = index_list(list_path, root, args.num_classes, args.workers, not args.quiet)
        total_bad += len(bad)
        print(_summary(list_path, records, bad))
    if args.transcode_to:
        out_root = Path(args.transcode_to)
        if out_root.resolve() == root.resolve():
            raise DatasetError("--transcode-to must differ from --root (the sources would be overwritten)")
        new_lists = transcode_lists(lists, root, out_root, args.short_side, args.fps, args.keyframe_interval,
                                    args.codec, args.quality, args.workers, not args.quiet)
        for new_list in new_lists:
            records, bad = index_list(new_list, out_root, args.num_classes, args.workers, not args.quiet)
            total_bad += len(bad)
            print(_summary(new_list, records, bad))
            failed = bad_report_path_for(new_list).with_suffix(".transcode.jsonl")
            if failed.exists():
                print(f"{new_list}: some videos failed to transcode (reasons in {failed})")
    if total_bad:
        print(f"{total_bad} unusable videos in total were left out")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return run(args)
    except (DatasetError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
