"""The baseline loader: PyAV decoding with seeking in torch DataLoader workers, CPU transforms.

This is the reference implementation of the sampling semantics of :mod:`pipelines.sampling` (in the
style of PySlowFast's loader) and the fallback for codecs that DALI's CPU decoder cannot read (H.264 on
a machine without a GPU). It follows the loader contract in :mod:`pipelines` (read its docstring).

Per split:

- train: this rank's shard of a seeded per-epoch permutation (``shard_indices(shuffle=True, pad=False)``),
  one random clip and one random crop/flip per video from ``clip_rng(seed, epoch, video_index)``;
  batches of ``data.batch_size`` clips, the last incomplete batch dropped (as PySlowFast does).
- val: ``shard_indices(pad=True)``, the centred clip and the centred crop; padding samples carry the first
  video's frames with ``video_index == -1``.
- test: ``test.num_clips`` x ``test.num_crops`` views per video, the video decoded once (the union of the
  needed frames), ``test.batch_size`` videos per batch.

A video that fails to decode is recorded in ``loader.failures`` and logged; training delivers another
video in its place (chosen deterministically, with that video's label and index), validation delivers
another video's frames as a padding sample (``video_index == -1``), testing leaves the video out of its
batch.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch

from pipelines import sampling
from pipelines.dataset import VideoRecord, load_records
from pipelines.transforms import apply_spatial

logger = logging.getLogger(__name__)

# tries before a training sample gives up finding a decodable replacement
_MAX_REPLACEMENTS = 10


class DecodeError(RuntimeError):
    """A video that cannot be decoded; the message names the file."""


def _frame_index(pts: int, start_pts: int, time_base: float, fps: float) -> int:
    # round, not floor: container timestamps are rounded to the time base (webm: 1 ms)
    return int(round((pts - start_pts) * time_base * fps))


def decode_frames(path: str | os.PathLike, indices: Sequence[int] | np.ndarray) -> np.ndarray:
    """Decode the frames at the given source-frame indices.

    Seeks to the keyframe before ``min(indices)`` (by presentation timestamp, using the stream's time
    base and average frame rate), decodes forward, and picks frames by the index computed from their
    timestamp (relative to the stream's first timestamp, which need not be 0). Indices beyond the last
    decodable frame are clamped to it.

    Args:
        path: a video file PyAV can open.
        indices: source-frame indices (any order, repeats allowed).

    Returns:
        uint8 array (len(indices), H, W, 3), RGB, in the order of ``indices``.

    Raises:
        DecodeError: the file cannot be opened, holds no video stream, or no frame decodes.
    """
    import av

    wanted = np.asarray(indices, dtype=np.int64).reshape(-1)
    if wanted.size == 0:
        raise ValueError("indices is empty; ask for at least one frame")
    if wanted.min() < 0:
        raise ValueError(f"frame index {int(wanted.min())} is negative; indices start at 0")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, UnicodeDecodeError) as err:
        raise DecodeError(f"cannot open video {str(path)!r}: {err}") from None
    try:
        if not container.streams.video:
            raise DecodeError(f"{str(path)!r} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        frames = _decode_wanted(container, stream, sorted(set(wanted.tolist())), str(path))
    except av.FFmpegError as err:
        raise DecodeError(f"decoding {str(path)!r} failed: {err}") from None
    finally:
        container.close()
    return np.stack([frames[i] for i in wanted.tolist()])


def _decode_wanted(container: Any, stream: Any, wanted: list[int], path: str) -> dict[int, np.ndarray]:
    """Frames for the sorted unique ``wanted`` indices; seeks once, falls back to the start."""
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else 30.0
    time_base = float(stream.time_base)
    start_pts = stream.start_time if stream.start_time is not None else 0
    first = wanted[0]
    seek_pts = start_pts + int(first / fps / time_base)
    if seek_pts > start_pts:
        container.seek(seek_pts, stream=stream, backward=True, any_frame=False)
        got = _decode_forward(container, stream, wanted, start_pts, time_base, fps)
        if got is not None:
            return got
        # NOTE: a seek can land after the wanted frame (an inexact or missing keyframe index, e.g. a
        # webm without cues); decoding from the start is slow but right.
        container.seek(start_pts, stream=stream, backward=True, any_frame=False)
    got = _decode_forward(container, stream, wanted, start_pts, time_base, fps, from_start=True)
    if not got:
        raise DecodeError(f"no frame of {path!r} could be decoded")
    return got


def _decode_forward(container: Any, stream: Any, wanted: list[int], start_pts: int, time_base: float,
                    fps: float, from_start: bool = False) -> Optional[dict[int, np.ndarray]]:
    """Decode from the current position; ``None`` if the first frame is already past ``wanted[0]``."""
    got: dict[int, np.ndarray] = {}
    pending = 0  # position in wanted of the next index to fill
    last_image = None
    for frame in container.decode(stream):
        pts = frame.pts if frame.pts is not None else frame.dts
        if pts is None:
            continue
        index = _frame_index(pts, start_pts, time_base, fps)
        if last_image is None and index > wanted[0] and not from_start:
            return None
        if index < wanted[pending]:
            last_image = frame  # keep the reference, convert only when needed
            continue
        image = frame.to_ndarray(format="rgb24")
        last_image = image
        # each wanted index takes the first frame at or after it (a variable-rate gap repeats nothing
        # backwards: the later frame is the one shown at that time)
        while pending < len(wanted) and wanted[pending] <= index:
            got[wanted[pending]] = image
            pending += 1
        if pending == len(wanted):
            return got
    if last_image is None:
        return got
    if not isinstance(last_image, np.ndarray):
        last_image = last_image.to_ndarray(format="rgb24")
    for i in wanted[pending:]:  # past the end: clamp to the last frame
        got[i] = last_image
    return got


# ----------------------------------------------------------------------------------------------
# the loader

def _default_workers(num_workers: Optional[int]) -> int:
    if num_workers is not None:
        return int(num_workers)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _probe(path: str) -> tuple[int, float, int, int]:
    """(num_frames, fps, height, width) for a record without an index entry."""
    from pipelines.probe import ProbeError, probe_video

    try:
        info = probe_video(path)
    except ProbeError as err:
        raise DecodeError(str(err)) from None
    return int(info["num_frames"]), float(info["fps"]), int(info["height"]), int(info["width"])


class _VideoClips(torch.utils.data.Dataset):
    """Item ``i`` of an epoch: the clip(s) of this rank's ``i``-th video, transformed."""

    def __init__(self, records: list[VideoRecord], root: Path, split: str, settings: dict[str, Any]):
        self.records = records
        self.root = root
        self.split = split
        self.s = settings
        self.epoch = 0
        self.order = np.zeros(0, dtype=np.int64)
        self._probed: dict[int, tuple[int, float, int, int]] = {}

    def __len__(self) -> int:
        return len(self.order)

    def _geometry(self, video_index: int) -> tuple[int, float, int, int]:
        record = self.records[video_index]
        if record.num_frames > 0 and record.height > 0 and record.width > 0:
            return record.num_frames, record.fps, record.height, record.width
        if video_index not in self._probed:
            self._probed[video_index] = _probe(str(self.root / record.path))
        return self._probed[video_index]

    def _clip(self, video_index: int) -> torch.Tensor:
        """One transformed train/val clip (3, T, crop, crop) of a video."""
        s = self.s
        num_frames, fps, height, width = self._geometry(video_index)
        if self.split == "train":
            rng = sampling.clip_rng(s["seed"], self.epoch, video_index)
            indices = sampling.train_clip_indices(num_frames, fps, rng, s["num_frames"], s["sampling_rate"],
                                                  s["target_fps"])
            params = sampling.train_spatial_params(height, width, rng, s["train_short_side"], s["train_crop"],
                                                   s["train_flip"])
        else:
            indices = sampling.val_clip_indices(num_frames, fps, s["num_frames"], s["sampling_rate"],
                                                s["target_fps"])
            params = sampling.val_spatial_params(height, width, s["test_short_side"], s["val_crop"])
        frames = decode_frames(self.root / self.records[video_index].path, indices)
        return apply_spatial(frames, params, s["mean"], s["std"])

    def _views(self, video_index: int) -> torch.Tensor:
        """All test views (V, 3, T, crop, crop) of a video, clip-major, decoded once."""
        s = self.s
        num_frames, fps, height, width = self._geometry(video_index)
        clips = sampling.test_clip_indices(num_frames, fps, s["num_clips"], s["num_frames"], s["sampling_rate"],
                                           s["target_fps"])
        crops = sampling.test_spatial_params(height, width, s["test_short_side"], s["test_crop"], s["num_crops"])
        union, inverse = np.unique(clips.reshape(-1), return_inverse=True)
        decoded = decode_frames(self.root / self.records[video_index].path, union)
        frames = decoded[inverse.reshape(clips.shape)]  # (num_clips, T, H, W, 3)
        return torch.stack([apply_spatial(clip, params, s["mean"], s["std"])
                            for clip in frames for params in crops])

    def _failure(self, video_index: int, err: Exception) -> dict[str, Any]:
        return {"index": int(video_index), "path": self.records[video_index].path, "error": str(err)}

    def __getitem__(self, position: int) -> dict[str, Any]:
        video_index = int(self.order[position])
        failures: list[dict[str, Any]] = []
        if self.split == "test":
            source = video_index if video_index >= 0 else 0
            try:
                views = self._views(source)
            except DecodeError as err:
                if video_index >= 0:
                    failures.append(self._failure(source, err))
                views = None
            return {"views": views, "label": self.records[source].label, "video_index": video_index,
                    "failures": failures}
        candidates = self._candidates(video_index)
        for attempt, source in enumerate(candidates):
            try:
                clip = self._clip(source)
            except DecodeError as err:
                failures.append(self._failure(source, err))
                continue
            # train: a replacement stands for the failed video with its own label and index;
            # val: a replacement is a padding sample, dropped from the metrics
            if video_index < 0 or (self.split == "val" and attempt > 0):
                delivered = -1
            else:
                delivered = source
            return {"clip": clip, "label": self.records[source].label, "video_index": delivered,
                    "failures": failures}
        raise DecodeError(f"{len(candidates)} videos in a row failed to decode, the last "
                          f"{failures[-1]['path']!r}: {failures[-1]['error']}; check the data "
                          f"(`python -m pipelines.prepare` lists bad files)")

    def _candidates(self, video_index: int) -> list[int]:
        """The video itself, then a deterministic sequence of replacements (padding: video 0 first)."""
        n = len(self.records)
        first = video_index if video_index >= 0 else 0
        rng = np.random.default_rng([int(self.s["seed"]), int(self.epoch), int(first), 1])
        others = [int(i) for i in rng.permutation(n) if i != first]
        return [first] + others[:_MAX_REPLACEMENTS - 1]


def _collate(split: str, alpha: int, channels_last: bool):
    def collate(items: list[dict[str, Any]]):
        failures = [f for item in items for f in item["failures"]]
        if split == "test":
            items = [item for item in items if item["views"] is not None]
            if not items:
                return None, failures
            fast = torch.cat([item["views"] for item in items])  # (N * V, 3, T, H, W)
        else:
            fast = torch.stack([item["clip"] for item in items])  # (N, 3, T, H, W)
        slow = fast[:, :, torch.from_numpy(sampling.slow_indices(fast.shape[2], alpha))]
        if channels_last:
            fast = fast.contiguous(memory_format=torch.channels_last_3d)
            slow = slow.contiguous(memory_format=torch.channels_last_3d)
        labels = torch.tensor([item["label"] for item in items], dtype=torch.int64)
        video_index = torch.tensor([item["video_index"] for item in items], dtype=torch.int64)
        return ([slow, fast], labels, video_index), failures
    return collate


class PyAVLoader:
    """Iterable loader following the :mod:`pipelines` contract; see the module docstring."""

    def __init__(self, records: list[VideoRecord], root: Path, split: str, *, rank: int, world_size: int,
                 alpha: int, settings: dict[str, Any], batch_size: int, num_workers: int, prefetch: int,
                 channels_last: bool):
        if split not in ("train", "val", "test"):
            raise ValueError(f"split={split!r} is unknown; choose train, val or test")
        if settings["num_frames"] % alpha:
            raise ValueError(f"data.num_frames={settings['num_frames']} must be a multiple of alpha={alpha}")
        if batch_size < 1:
            raise ValueError(f"batch size {batch_size} must be >= 1")
        self.records = records
        self.split = split
        self.rank, self.world_size, self.alpha = rank, world_size, alpha
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.prefetch = prefetch
        self.failures: list[dict[str, Any]] = []
        self._dataset = _VideoClips(records, root, split, settings)
        self._collate = _collate(split, alpha, channels_last)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle (train) and redraw clips for ``epoch``."""
        self.epoch = int(epoch)
        self._dataset.epoch = self.epoch
        train = self.split == "train"
        self._dataset.order = sampling.shard_indices(
            len(self.records), self.rank, self.world_size, shuffle=train, seed=self._dataset.s["seed"],
            epoch=self.epoch, pad=not train)

    def __len__(self) -> int:
        n = len(self._dataset)
        return n // self.batch_size if self.split == "train" else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]]:
        workers = min(self.num_workers, max(len(self._dataset), 1))
        loader = torch.utils.data.DataLoader(
            self._dataset, batch_size=self.batch_size, shuffle=False, num_workers=workers,
            collate_fn=self._collate, pin_memory=torch.cuda.is_available(),
            drop_last=self.split == "train", prefetch_factor=max(self.prefetch, 1) if workers > 0 else None,
            persistent_workers=False)
        for batch, failures in loader:
            for failure in failures:
                logger.warning("video %s (index %d) failed to decode: %s", failure["path"], failure["index"],
                               failure["error"])
            self.failures.extend(failures)
            if batch is None:  # every video of this test batch failed; they are in self.failures
                continue
            yield batch


def build_pyav_loader(cfg: Any, split: str, *, rank: int = 0, world_size: int = 1, alpha: int = 8,
                      records: Optional[list[VideoRecord]] = None) -> PyAVLoader:
    """The PyAV loader for ``split`` under ``cfg`` (contract: :mod:`pipelines`).

    Args:
        cfg: the resolved configuration (``cfg.data.*``, ``cfg.test.*``, ``cfg.model.channels_last``).
        split: ``train``, ``val`` or ``test``.
        rank: this process's rank; ``world_size``: the number of ranks.
        alpha: the SlowFast speed ratio (slow pathway = every alpha-th fast frame, linspace rule).
        records: use these records instead of reading ``cfg.data.<split>_list``.
    """
    data = cfg.data
    root = Path(data.root)
    if records is None:
        list_path = {"train": data.train_list, "val": data.val_list, "test": data.test_list}.get(split)
        if list_path is None:
            raise ValueError(f"split={split!r} is unknown; choose train, val or test")
        records = load_records(list_path, root, cfg.model.num_classes)
    if not records:
        raise ValueError(f"the {split} list holds no videos")
    short = data.train_short_side
    settings = {
        "seed": int(data.seed), "num_frames": int(data.num_frames), "sampling_rate": int(data.sampling_rate),
        "target_fps": float(data.target_fps),
        "train_short_side": (int(short[0]), int(short[1])) if isinstance(short, Iterable) else (int(short),) * 2,
        "train_crop": int(data.train_crop), "val_crop": int(data.val_crop), "train_flip": bool(data.train_flip),
        "test_short_side": int(data.test_short_side), "test_crop": int(data.test_crop),
        "num_clips": int(cfg.test.num_clips), "num_crops": int(cfg.test.num_crops),
        "mean": [float(m) for m in data.mean], "std": [float(s) for s in data.std],
    }
    batch_size = int(cfg.test.batch_size if split == "test" else data.batch_size)
    return PyAVLoader(records, root, split, rank=rank, world_size=world_size, alpha=alpha, settings=settings,
                      batch_size=batch_size, num_workers=_default_workers(data.num_workers),
                      prefetch=int(data.prefetch or 2), channels_last=bool(cfg.model.channels_last))
