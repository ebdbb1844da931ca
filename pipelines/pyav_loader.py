"""The baseline loader: PyAV decoding with seeking in torch DataLoader workers, CPU transforms.

This is the reference implementation of the sampling semantics of :mod:`pipelines.sampling` (in the
style of PySlowFast's loader) and the fallback for codecs that DALI's CPU decoder cannot read (H.264 on
a machine without a GPU). The contract (what a batch holds, shards, epochs, padding, the replacement of
an undecodable video, failures, probing of unindexed lists) is :class:`pipelines.base.VideoLoader`'s;
this module only decodes (:func:`decode_frames`) and transforms the planned clips: resized in uint8, cut
as views, normalised last into the batch, only the kept pixels (:mod:`pipelines.transforms`; within one
level's rounding of the float reference ``apply_spatial``). Each worker decodes a video once per slot (the union of its clips' frames) and cuts
every view of it. Frames are picked by frame number (the contract's rule: the i-th frame the decoder
outputs), never by timestamp, so variable-frame-rate videos give the frames DALI gives; the numbers come
from one demux pass per decode (packets ranked by timestamp, no decoding: about 5 % of a clip's decode time
on a 10 s 256p H.264 video).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch

from pipelines.base import SPLITS, ClipPlan, LoaderSettings, VideoLoader, display_rotation, regular_file_error
from pipelines.dataset import VideoRecord, load_records
from pipelines.transforms import cut_view, normalise_into, resize_frames
from utils.cpus import worker_count


class DecodeError(RuntimeError):
    """A video that cannot be decoded; the message names the file."""


def decode_frames(path: str | os.PathLike, indices: Sequence[int] | np.ndarray) -> np.ndarray:
    """Decode the frames with the given frame numbers (the contract's rule, :mod:`pipelines.base`).

    Frame ``i`` is the ``i``-th frame the decoder outputs, counted from the stream's first frame, whatever
    its timestamp (so a variable-frame-rate video gives the frames DALI gives). The numbers are found
    without decoding: the packets are demuxed once and ranked by presentation timestamp. Decoding then
    starts at the last keyframe at or before ``min(indices)`` (from the start if that seek lands late).
    Indices beyond the last decodable frame are clamped to it.

    Args:
        path: a video file PyAV can open (a regular file: anything else is refused before it is opened).
        indices: frame numbers (any order, repeats allowed).

    Returns:
        uint8 array (len(indices), H, W, 3), RGB, in the order of ``indices``.

    Raises:
        DecodeError: the file is not a regular file, cannot be opened, holds no video stream, or no frame
            decodes.
    """
    return decode_clip(path, indices)[0]


def decode_clip(path: str | os.PathLike, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, int]:
    """:func:`decode_frames` and the video's display rotation (:func:`pipelines.base.display_rotation`)."""
    import av

    wanted = np.asarray(indices, dtype=np.int64).reshape(-1)
    if wanted.size == 0:
        raise ValueError("indices is empty; ask for at least one frame")
    if wanted.min() < 0:
        raise ValueError(f"frame index {int(wanted.min())} is negative; indices start at 0")
    not_regular = regular_file_error(path)
    if not_regular:
        raise DecodeError(not_regular)
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, UnicodeDecodeError) as err:
        raise DecodeError(f"cannot open video {str(path)!r}: {err}") from None
    try:
        if not container.streams.video:
            raise DecodeError(f"{str(path)!r} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = _decoder_threads()
        frames, rotation = _decode_wanted(container, stream, sorted(set(wanted.tolist())), str(path))
    except av.FFmpegError as err:
        raise DecodeError(f"decoding {str(path)!r} failed: {err}") from None
    finally:
        container.close()
    return np.stack([frames[i] for i in wanted.tolist()]), rotation


DECODER_THREADS: Optional[int] = None  # set: every decode in this process uses that many FFmpeg threads


def _decoder_threads() -> int:
    """FFmpeg decoder threads for a decode in this process: its share of this rank's cores
    (:func:`utils.cpus.cores_per_rank`) among the DataLoader workers decoding side by side (1 with as many
    workers as cores); 0 (FFmpeg's own choice: a frame thread per core, and one more) where the share is the
    whole machine (the main process, or a lone worker of a lone rank).

    NOTE: measured on 340x256 VP9 clips (32 frames, 2 cores): in one process FFmpeg's frame threads cut a
    clip from 216 to 193-202 ms; but two worker processes each running FFmpeg's three frame threads on the two
    cores spent 235-254 ms of CPU per clip against 231-235 ms with one thread each, and delivered 7.2-7.6
    against 7.9-8.1 clips/s: frame threads beyond the cores only add switching and waiting.
    """
    from utils.cpus import available_cores, cores_per_rank

    if DECODER_THREADS is not None:
        return int(DECODER_THREADS)
    info = torch.utils.data.get_worker_info()
    share = max(1, cores_per_rank() // max(info.num_workers if info is not None else 1, 1))
    return 0 if share >= available_cores() else share


def _frame_table(container: Any, stream: Any) -> tuple[dict[int, int], list[tuple[int, int]]]:
    """``({pts: frame number}, [(frame number, pts) of keyframes])`` from one demux pass, no decoding.

    Packets are ranked by presentation timestamp (the decoder's output order). Empty when a packet has no
    timestamp: the caller then decodes from the start and counts frames.
    """
    timestamps, keyframes = [], []
    for packet in container.demux(stream):
        if packet.size == 0:
            continue  # the demuxer's flush packet
        if packet.pts is None:
            return {}, []
        timestamps.append(int(packet.pts))
        if packet.is_keyframe:
            keyframes.append(int(packet.pts))
    number = {pts: i for i, pts in enumerate(sorted(timestamps))}
    if len(number) != len(timestamps):
        return {}, []  # repeated timestamps cannot be ranked
    return number, sorted((number[pts], pts) for pts in keyframes)


def _decode_wanted(container: Any, stream: Any, wanted: list[int], path: str) -> tuple[dict[int, np.ndarray], int]:
    """Frames for the sorted unique ``wanted`` frame numbers, and the display rotation."""
    number, keyframes = _frame_table(container, stream)
    first = wanted[0]
    start = [(n, pts) for n, pts in keyframes if n <= first]
    if start and start[-1][0] > 0:
        container.seek(start[-1][1], stream=stream, backward=True, any_frame=False)
        got = _decode_forward(container, stream, wanted, number, start[-1][0])
        if got is not None:
            return got
        # NOTE: a seek can land after the wanted frame (an inexact or missing keyframe index, e.g. a
        # webm without cues); decoding from the start is slow but right.
    start_pts = stream.start_time
    container.seek(start_pts if start_pts is not None else 0, stream=stream, backward=True, any_frame=False)
    got = _decode_forward(container, stream, wanted, number, 0, from_start=True)
    if not got or not got[0]:
        raise DecodeError(f"no frame of {path!r} could be decoded")
    return got


def _decode_forward(container: Any, stream: Any, wanted: list[int], number: dict[int, int], first_number: int,
                    from_start: bool = False) -> Optional[tuple[dict[int, np.ndarray], int]]:
    """Decode from the current position; ``None`` if the first frame is already past ``wanted[0]``.

    A frame's number is looked up by its timestamp in ``number``; a frame without one (or without a
    table) follows the previous frame (``first_number`` for the first).
    """
    got: dict[int, np.ndarray] = {}
    pending = 0  # position in wanted of the next index to fill
    last_image = None
    rotation = None
    index = first_number - 1
    for frame in container.decode(stream):
        if rotation is None:
            rotation = display_rotation(stream, frame)
        pts = frame.pts
        index = number[pts] if pts is not None and pts in number else index + 1
        if last_image is None and index > wanted[0] and not from_start:
            return None
        if index < wanted[pending]:
            last_image = frame  # keep the reference, convert only when needed
            continue
        image = frame.to_ndarray(format="rgb24")
        last_image = image
        # each wanted number takes the first frame at or after it (a frame the decoder drops repeats nothing
        # backwards)
        while pending < len(wanted) and wanted[pending] <= index:
            got[wanted[pending]] = image
            pending += 1
        if pending == len(wanted):
            return got, rotation or 0
    if last_image is None:
        return got, rotation or 0
    if not isinstance(last_image, np.ndarray):
        last_image = last_image.to_ndarray(format="rgb24")
    for i in wanted[pending:]:  # past the end: clamp to the last frame
        got[i] = last_image
    return got, rotation or 0


# ----------------------------------------------------------------------------------------------
# the loader

def batch_empty(shape: Sequence[int], dtype: torch.dtype = torch.float32, device: Any = "cpu") -> torch.Tensor:
    """``torch.empty(shape)``, but in shared memory inside a DataLoader worker, as torch's ``default_collate``
    allocates: a batch built there then reaches the main process as a handle, not as a copy (24 MB per Kinetics
    training batch of 8, 944 MB per 10x3-view test video, copied into shared memory otherwise)."""
    if torch.utils.data.get_worker_info() is None or torch.device(device).type != "cpu":
        return torch.empty(tuple(shape), dtype=dtype, device=device)
    storage = torch.empty(0, dtype=dtype)._typed_storage()._new_shared(math.prod(shape), device="cpu")
    return torch.empty(0, dtype=dtype).new(storage).resize_(tuple(shape))


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
                return {"views": None, "plan": planned, "failures": failures, "met": met, "rotation": None}
            try:
                views, rotation = loader.decode_views(plan, with_rotation=True)
            except DecodeError as err:
                self.bad.add(plan.record_index)
                failures.append({"index": plan.record_index, "error": str(err)})
                continue
            return {"views": views, "plan": plan, "failures": failures, "met": met,
                    "rotation": (plan.record_index, rotation)}


class PyAVLoader(VideoLoader):
    """PyAV decoding in DataLoader workers, CPU transforms; the contract of :class:`pipelines.base.VideoLoader`."""

    def __init__(self, records: list[VideoRecord], root: str | Path, split: str, *, settings: LoaderSettings,
                 rank: int = 0, world_size: int = 1, alpha: int = 8) -> None:
        super().__init__(records, root, split, settings=settings, rank=rank, world_size=world_size, alpha=alpha)
        self._dataset = _EpochClips(self)

    def decode_views(self, plan: ClipPlan, with_rotation: bool = False):
        """All views of a plan, clip-major: ``[(frames, positions)]``, one pair per view.

        The video is decoded once (the union of its clips' frames, :func:`decode_clip`) and resized once per
        size (:func:`pipelines.transforms.resize_frames`: train/val in uint8, within one level of the float
        reference; test in float, the reference's values, once per video; the test crops share one size); each view
        is a crop of it (:func:`pipelines.transforms.cut_view`, a view, no copy unless flipped) and the
        positions (T,) of its clip's frames among the decoded ones. :meth:`normalise` turns views into the
        float batch, touching only the kept pixels. With ``with_rotation``, ``(views, degrees)``: the video's
        display rotation (frames are not rotated).
        """
        s = self.settings
        union, inverse = np.unique(plan.clips.reshape(-1), return_inverse=True)
        decoded, rotation = decode_clip(self.path(plan.record_index), union)   # (U, H, W, 3) uint8
        positions = torch.from_numpy(inverse.reshape(plan.clips.shape).astype(np.int64))
        resized: dict[tuple[int, int], torch.Tensor] = {}
        views = []
        for clip_positions in positions:
            for params in plan.crops:
                size = (int(params.resize_h), int(params.resize_w))
                if size not in resized:
                    # test: one resize per video, in float (exactly the reference's values, one float copy
                    # of the decoded frames, none at Kinetics' 256p test scale); train/val: in uint8
                    resized[size] = resize_frames(decoded, *size, antialias=s.antialias,
                                                  exact=self.split == "test")
                views.append((cut_view(resized[size], params), clip_positions))
        return (views, rotation) if with_rotation else views

    def normalise(self, views: list) -> torch.Tensor:
        """uint8 views of :meth:`decode_views` -> the float (N, 3, T, crop, crop) batch, an
        (N, T, crop, crop, 3) buffer seen as ``torch.channels_last_3d`` (normalised in one pass per frame)."""
        s = self.settings
        frames = views[0][1].numel() if views else s.num_frames
        crop = int(views[0][0].shape[1]) if views else self.crop  # a multigrid step's crop may be smaller
        out = batch_empty((len(views), frames, crop, crop, 3))
        normalise_into(out, [v for v, _ in views], s.mean, s.std, positions=[p for _, p in views])
        return out.permute(0, 4, 1, 2, 3)

    def _collate(self, items: list[dict[str, Any]]):
        failures = [f for item in items for f in item["failures"]]
        met = [i for item in items for i in item["met"]]
        rotations = [item["rotation"] for item in items if item["rotation"] is not None]
        kept = [item for item in items if item["views"] is not None]
        if not kept:
            return None, failures, met, rotations
        fast = self.normalise([view for item in kept for view in item["views"]])  # (N * V, 3, T, H, W)
        return self.assemble(fast, [item["plan"] for item in kept], empty=batch_empty), failures, met, rotations

    def __iter__(self) -> Iterator[tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]]:
        self.begin_epoch()
        dataset = self._dataset
        batches = self.epoch_batches()
        dataset.plans = [plan for batch in batches for plan in batch]
        dataset.bad = set(self._bad)  # workers start from what is known (fork or pickle copies it)
        workers = min(worker_count(self.settings.num_workers), len(dataset))
        # the positions of each planned batch (multigrid batches differ in size)
        starts = np.cumsum([0] + [len(batch) for batch in batches])
        positions = [list(range(a, b)) for a, b in zip(starts[:-1], starts[1:])]
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=positions, num_workers=workers, collate_fn=self._collate,
            pin_memory=torch.cuda.is_available(),
            prefetch_factor=self.settings.prefetch if workers > 0 else None, persistent_workers=False)
        for batch, failures, met, rotations in loader:
            for failure in failures:
                self.mark_bad(failure["index"], failure["error"])
            self.note_met(met)
            for record_index, degrees in rotations:  # found in the workers, warned about once, here
                self.note_rotation(record_index, degrees)
            if batch is None:  # every video of this test batch failed; they are in self.failures
                continue
            yield batch


def build_pyav_loader(cfg: Any, split: str, *, rank: int = 0, world_size: int = 1, alpha: int = 8,
                      records: Optional[list[VideoRecord]] = None, imported_weights: bool = False,
                      slow_sampling: str = "linspace") -> PyAVLoader:
    """The PyAV loader for ``split`` under ``cfg`` (contract: :class:`pipelines.base.VideoLoader`).

    Args:
        cfg: the resolved configuration (``cfg.data.*``, ``cfg.test.*``, ``cfg.model.channels_last``).
        split: ``train``, ``val`` or ``test``.
        rank: this process's rank; ``world_size``: the number of ranks.
        alpha: the SlowFast speed ratio (slow pathway = every alpha-th fast frame, linspace rule).
        records: use these records instead of reading ``cfg.data.<split>_list``.
        imported_weights: the weights come from another project (resolves ``data.resize_antialias: auto``,
            see :meth:`pipelines.base.LoaderSettings.from_config`).
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is unknown; choose one of {SPLITS}")
    root = Path(cfg.data.root)
    if records is None:
        records = load_records(cfg.data[f"{split}_list"], root, int(cfg.model.num_classes))
    settings = LoaderSettings.from_config(cfg, imported_weights=imported_weights, slow_sampling=slow_sampling,
                                          alpha=alpha)
    return PyAVLoader(records, root, split, settings=settings, rank=rank,
                      world_size=world_size, alpha=alpha)
