"""The baseline loader: PyAV decoding with seeking in torch DataLoader workers, CPU transforms.

This is the reference implementation of the sampling semantics of :mod:`pipelines.sampling` (in the
style of PySlowFast's loader) and the fallback for codecs that DALI's CPU decoder cannot read (H.264 on
a machine without a GPU). The contract (what a batch holds, shards, epochs, padding, the replacement of
an undecodable video, failures, probing of unindexed lists) is :class:`pipelines.base.VideoLoader`'s;
this module only decodes (:func:`decode_frames`) and transforms (:func:`pipelines.transforms.apply_spatial`)
the planned clips. Each worker decodes a video once per slot (the union of its clips' frames) and cuts
every view of it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch

from pipelines.base import SPLITS, ClipPlan, LoaderSettings, VideoLoader
from pipelines.dataset import VideoRecord, load_records
from pipelines.transforms import apply_spatial
from utils.cpus import worker_count


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

class _EpochClips(torch.utils.data.Dataset):
    """Item ``i`` of an epoch: the decoded, transformed views of this rank's ``i``-th planned slot.

    Runs in DataLoader workers: failures found here are returned with the item (the main process records
    them once); ``bad`` is this process's copy of the videos known to fail.
    """

    def __init__(self, loader: "PyAVLoader") -> None:
        self.loader = loader
        self.plans: list[ClipPlan] = []
        self.bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.plans)

    def __getitem__(self, position: int) -> dict[str, Any]:
        loader, planned = self.loader, self.plans[position]
        failures: list[dict[str, Any]] = []
        met: list[int] = []
        while True:
            plan = loader.resolve(planned, self.bad, met)
            if plan is None:  # test: the video is left out
                return {"views": None, "plan": planned, "failures": failures, "met": met}
            try:
                views = loader.decode_views(plan)
            except DecodeError as err:
                self.bad.add(plan.record_index)
                failures.append({"index": plan.record_index, "error": str(err)})
                continue
            return {"views": views, "plan": plan, "failures": failures, "met": met}


class PyAVLoader(VideoLoader):
    """PyAV decoding in DataLoader workers, CPU transforms; the contract of :class:`pipelines.base.VideoLoader`."""

    def __init__(self, records: list[VideoRecord], root: str | Path, split: str, *, settings: LoaderSettings,
                 rank: int = 0, world_size: int = 1, alpha: int = 8) -> None:
        super().__init__(records, root, split, settings=settings, rank=rank, world_size=world_size, alpha=alpha)
        self._dataset = _EpochClips(self)

    def decode_views(self, plan: ClipPlan) -> torch.Tensor:
        """All views (V, 3, T, crop, crop) of a plan, clip-major; the video is decoded once (union of frames)."""
        s = self.settings
        union, inverse = np.unique(plan.clips.reshape(-1), return_inverse=True)
        decoded = decode_frames(self.path(plan.record_index), union)
        frames = decoded[inverse.reshape(plan.clips.shape)]  # (num_clips, T, H, W, 3)
        return torch.stack([apply_spatial(clip, params, s.mean, s.std) for clip in frames for params in plan.crops])

    def _collate(self, items: list[dict[str, Any]]):
        failures = [f for item in items for f in item["failures"]]
        met = [i for item in items for i in item["met"]]
        kept = [item for item in items if item["views"] is not None]
        if not kept:
            return None, failures, met
        fast = torch.cat([item["views"] for item in kept])  # (N * V, 3, T, H, W)
        return self.assemble(fast, [item["plan"] for item in kept]), failures, met

    def __iter__(self) -> Iterator[tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]]:
        self.begin_epoch()
        dataset = self._dataset
        dataset.plans = [plan for batch in self.epoch_batches() for plan in batch]
        dataset.bad = set(self._bad)  # workers start from what is known (fork or pickle copies it)
        workers = min(worker_count(self.settings.num_workers), len(dataset))
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=self.batch_size, shuffle=False, num_workers=workers, collate_fn=self._collate,
            pin_memory=torch.cuda.is_available(), drop_last=False,
            prefetch_factor=self.settings.prefetch if workers > 0 else None, persistent_workers=False)
        for batch, failures, met in loader:
            for failure in failures:
                self.mark_bad(failure["index"], failure["error"])
            self.note_met(met)
            if batch is None:  # every video of this test batch failed; they are in self.failures
                continue
            yield batch


def build_pyav_loader(cfg: Any, split: str, *, rank: int = 0, world_size: int = 1, alpha: int = 8,
                      records: Optional[list[VideoRecord]] = None) -> PyAVLoader:
    """The PyAV loader for ``split`` under ``cfg`` (contract: :class:`pipelines.base.VideoLoader`).

    Args:
        cfg: the resolved configuration (``cfg.data.*``, ``cfg.test.*``, ``cfg.model.channels_last``).
        split: ``train``, ``val`` or ``test``.
        rank: this process's rank; ``world_size``: the number of ranks.
        alpha: the SlowFast speed ratio (slow pathway = every alpha-th fast frame, linspace rule).
        records: use these records instead of reading ``cfg.data.<split>_list``.
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is unknown; choose one of {SPLITS}")
    root = Path(cfg.data.root)
    if records is None:
        records = load_records(cfg.data[f"{split}_list"], root, int(cfg.model.num_classes))
    return PyAVLoader(records, root, split, settings=LoaderSettings.from_config(cfg), rank=rank,
                      world_size=world_size, alpha=alpha)
