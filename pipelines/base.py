"""The loader contract in code: what every backend yields, and everything the backends share.

A backend (:mod:`pipelines.pyav_loader`, :mod:`pipelines.dali_loader`) subclasses :class:`VideoLoader`
and implements only decoding and transforming (``__iter__``); sharding, ``len()``, epochs, clip planning,
eval padding, the replacement of undecodable videos, failure reporting and the probing of videos the index
does not describe live here, once. ``tests/test_loader_contract.py`` runs every backend through the same
assertions.

What a loader yields, per batch, ``([slow, fast], labels, video_index)``:

- train/val: ``fast`` is (N, C, T, H, W) and ``slow`` (N, C, T // alpha, H, W) with C = 3, normalised
  ``(pixel / 255 - mean) / std``; float32 (DALI on the GPU: ``data.dtype``), in
  ``torch.channels_last_3d`` memory when ``model.channels_last`` is set, contiguous otherwise. ``slow`` is
  ``fast`` at :func:`pipelines.sampling.slow_indices` (T, alpha). ``labels`` and ``video_index`` are (N,)
  int64; ``video_index`` indexes ``loader.records``, and ``-1`` marks a padding sample that metrics drop.
- test: N videos x V views (V = ``test.num_clips`` x ``test.num_crops``), video-major and, within a video,
  clip-major (row ``n * V + clip * num_crops + crop``): ``fast`` is (N * V, C, T, H, W); ``labels`` and
  ``video_index`` are (N,).

Multigrid (``train.multigrid``, training only): batch sizes, frames and crops follow
:mod:`pipelines.multigrid` per epoch and optimizer step (``epoch_batches`` holds each step's micro-batches in
order, ``len()`` counts them); ``full_shape()`` returns to ``data.batch_size`` clips at the full shape.

Epochs and shards: ``set_epoch(e)`` selects the epoch the next iteration delivers. Rank ``r`` of ``w`` gets
:func:`pipelines.sampling.shard_indices`: training a disjoint shard of a seeded per-epoch permutation cut
to ``num_videos // w`` (full batches only, ``len() = shard // batch``); evaluation every video exactly once
over the ranks, padded with ``-1`` slots to ``ceil(num_videos / w)`` per rank (``len() = ceil(shard /
batch)``), a padding slot showing video 0. Each video's frame indices and crops come from
:meth:`VideoLoader.plan` (``pipelines.sampling`` with ``clip_rng(seed, epoch, video_index)``), the same
for every backend, worker and rank. Validation is the centred clip (``train.val_sampling: centred``) or
drawn like training from its own per-clip stream (``reference``, as PySlowFast validates); test views follow
``test.clip_rule``; frames are resized with or without antialiasing as ``LoaderSettings.antialias`` says
(``data.resize_antialias``, ``auto`` resolved by the caller's ``imported_weights``).

Undecodable videos (unreadable, corrupt, or not probeable when the list has no index): recorded once in
``loader.failures`` (dicts ``index``, ``path``, ``error``), logged once, and never decoded again by this
loader. The slot of such a video is filled by :meth:`VideoLoader.resolve`:

- train: THE replacement rule. The candidates are :func:`replacement_order` (seed, epoch, video index): a
  permutation of every other video of the list; the first candidate that decodes takes the slot, with its
  own label, its own ``video_index`` and its own planned clip. The result depends only on the seed, the
  epoch, the slot's video and which files are bad, not on the backend, worker, rank or on what was learnt
  earlier (known-bad candidates are skipped, unknown ones are tried and fail).
- val: the same candidate is shown as a padding sample (``video_index == -1``), so batches keep their shape.
- test: the video is left out of its batch (a batch may hold fewer videos; a batch whose every video failed
  is skipped, the only case where fewer than ``len()`` batches come out) and is reported in ``failures``.

``loader.epoch_failures`` lists the failed videos the current (or last) epoch met, so per-epoch reports and
anything that would stop a run on failures count per epoch; ``failures`` accumulates over the loader's life.
When every video of the list is bad, iteration stops with :class:`NoDecodableVideo` (a ``UserError``).

A path that is not a regular file (a FIFO, a directory, a device) is such a failure, with the reason "not a
regular file": it is checked with ``os.stat`` (:func:`regular_file_error`) before anything opens it, because
opening a FIFO for reading blocks until some other process writes to it.

``loader.records`` holds every entry of the list (:func:`pipelines.dataset.load_records`: the list is the
truth, the index only a cache), so a test run's coverage counts against the whole list, and a video that
preparation left out as unusable is reported as a failure with the probe's reason.

Frame numbers (one rule for every backend): frame ``i`` of a video is the ``i``-th frame its decoder outputs
(presentation order, which is decode order for streams without reordered frames), counted from the stream's
first frame. Timestamps never pick frames: on a variable-frame-rate video, frame 10 is the eleventh frame
whatever its timestamp, as DALI's decoder numbers them; :mod:`pipelines.sampling` plans in these numbers, and
``fps`` (the stream's average rate) only scales a clip's span.

Rotation metadata (phone videos: a display matrix, or an old ``rotate`` tag): every backend delivers the
frames as stored, NOT rotated for display, and warns once per file per loader (:meth:`VideoLoader.note_rotation`,
detected by :func:`display_rotation`). Honouring it would swap width and height for 90/270 degrees, which
the clip planning (crops drawn from the record's width and height) and DALI's graph (one resize per sample,
no per-sample rotation) do not model; re-encode such videos upright (``ffmpeg -i in.mp4 out.mp4`` applies
the rotation) if their orientation matters.
"""
from __future__ import annotations

import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Container, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch

from pipelines import SPLITS, sampling
from pipelines.dataset import DatasetError, VideoRecord
from pipelines.multigrid import Multigrid, StepShape
from pipelines.probe import ProbeError, probe_video, regular_file_error
from utils.cpus import worker_count
from utils.errors import UserError

log = logging.getLogger(__name__)

# the fourth seed word of the replacement stream: clip_rng uses (seed, epoch, video_index), so this stream
# is independent of the clip draws
_REPLACEMENT_STREAM = sampling.REPLACEMENT_STREAM


class NoDecodableVideo(UserError, RuntimeError):
    """Every video a slot could be filled with failed to decode; the message names the last failure."""


class UnsupportedProtocol(UserError, ValueError):
    """A test protocol the chosen rule does not define (e.g. more than 3 crops under ``reference``)."""


@dataclass(frozen=True)
class LoaderSettings:
    """What a loader takes from the configuration (``cfg.data``, ``cfg.test``, ``cfg.train``, ``cfg.model``).

    The test protocol: ``clip_rule`` (``test.clip_rule``: ``reference`` | ``spread``, see
    :mod:`pipelines.sampling`), ``val_sampling`` (``train.val_sampling``: ``centred`` | ``reference``) and
    ``antialias`` (``data.resize_antialias`` resolved to a bool by :meth:`from_config`: whether a downscale
    is antialiased; both backends honour it).
    """

    seed: int = 0
    num_frames: int = 32
    sampling_rate: int = 2
    target_fps: float = 30.0
    train_short_side: tuple = (256, 320)
    train_crop: int = 224
    train_flip: bool = True
    val_crop: int = 224
    test_short_side: int = 256
    test_crop: int = 256
    num_clips: int = 10
    num_crops: int = 3
    mean: tuple = (0.45, 0.45, 0.45)
    std: tuple = (0.225, 0.225, 0.225)
    batch_size: int = 8          # clips per batch (train, val)
    test_batch_size: int = 4     # videos per batch (test)
    channels_last: bool = True
    num_workers: Optional[int] = None
    prefetch: int = 2
    clip_rule: str = "reference"
    val_sampling: str = "centred"
    antialias: bool = True
    slow_sampling: str = "linspace"
    multigrid: Optional[Multigrid] = None  # train.multigrid (training split only; None: every clip at full shape)

    @classmethod
    def from_config(cls, cfg: Any, *, imported_weights: bool = False,
                    slow_sampling: str = "linspace", alpha: int = 1) -> "LoaderSettings":
        """The settings of ``cfg``.

        Args:
            cfg: the resolved configuration.
            imported_weights: the model evaluates weights imported from another project (PySlowFast,
                pytorchvideo, PaddleVideo, Caffe2), not trained here; resolves ``data.resize_antialias:
                auto`` to ``False`` (the references resize bilinear without antialiasing, so their weights
                saw unantialiased frames), else ``True``. Ignored when the key is ``true`` or ``false``.
            slow_sampling: which Fast frames the Slow pathway takes, the model's ``arch.slow_sampling``
                (:func:`pipelines.sampling.slow_indices`): ``linspace`` (PySlowFast) or ``nearest`` (MMAction2).
            alpha: the model's speed ratio (multigrid stages must keep a multiple of it).
        """
        data, test = cfg.data, cfg.test
        short = data.train_short_side
        short = (int(short[0]), int(short[1])) if isinstance(short, (list, tuple)) else (int(short),) * 2
        return cls(
            seed=int(data.seed), num_frames=int(data.num_frames), sampling_rate=int(data.sampling_rate),
            target_fps=float(data.target_fps), train_short_side=short, train_crop=int(data.train_crop),
            train_flip=bool(data.train_flip), val_crop=int(data.val_crop),
            test_short_side=int(data.test_short_side), test_crop=int(data.test_crop),
            num_clips=int(test.num_clips), num_crops=int(test.num_crops),
            mean=tuple(float(m) for m in data.mean), std=tuple(float(s) for s in data.std),
            batch_size=int(data.batch_size), test_batch_size=int(test.batch_size),
            channels_last=bool(cfg.model.channels_last),
            num_workers=None if data.num_workers is None else int(data.num_workers),
            prefetch=max(int(data.prefetch or 1), 1),
            clip_rule=str(test.clip_rule), val_sampling=str(cfg.train.val_sampling), slow_sampling=str(slow_sampling),
            antialias=resolve_antialias(data.resize_antialias, imported_weights),
            multigrid=Multigrid.from_config(cfg, alpha))


def resolve_antialias(setting: Any, imported_weights: bool = False) -> bool:
    """``data.resize_antialias`` as a bool: ``true``/``false`` as set; ``auto`` = off for imported weights.

    Args:
        setting: ``True``, ``False`` or ``"auto"``.
        imported_weights: whether the weights being evaluated come from another project (see
            :meth:`LoaderSettings.from_config`).
    """
    if isinstance(setting, bool):
        return setting
    if setting == "auto":
        return not imported_weights
    raise ValueError(f"data.resize_antialias={setting!r} is not allowed; choose auto, true or false")


@dataclass
class ClipPlan:
    """One slot of a batch: which video is reported, which is decoded, and its frames and crops."""

    video_index: int                 # reported in the batch; -1 for a padding sample
    record_index: int                # decoded: the video itself, its replacement, or a padding source
    label: int
    epoch: int
    clips: np.ndarray                # (num_clips, T) source frame indices, int64
    crops: list = field(default_factory=list)   # sampling.SpatialParams, one per crop
    slot_index: int = -2             # the slot's planned video (before any replacement); -1 = padding
    shape: Optional[StepShape] = None  # multigrid: the step's clip shape (None: the full shape)


def replacement_order(num_videos: int, seed: int, epoch: int, video_index: int) -> np.ndarray:
    """THE replacement rule's candidates for ``video_index``: every other video, in a seeded order.

    A permutation of ``range(num_videos)`` drawn from ``(seed, epoch, video_index)`` (on a stream separate
    from the clip draws), without ``video_index`` itself. The first candidate that decodes replaces it.
    """
    rng = np.random.default_rng([int(seed), int(epoch), int(video_index), _REPLACEMENT_STREAM])
    order = rng.permutation(int(num_videos))
    return order[order != int(video_index)]


def display_rotation(stream: Any, frame: Any = None) -> int:
    """The rotation, in degrees counter-clockwise (0, 90, 180, 270), that a player applies to a PyAV stream.

    Read from the decoded ``frame``'s DISPLAYMATRIX side data (FFmpeg attaches the container's display
    matrix to every frame; PyAV's ``VideoFrame.rotation``) and from the stream's ``rotate`` tag (written by
    older muxers; it counts clockwise).

    Args:
        stream: a PyAV video stream.
        frame: a decoded frame of it, if one is at hand.
    """
    degrees = 0.0
    if frame is not None:
        degrees = float(getattr(frame, "rotation", 0) or 0)
    if not round(degrees) % 360:
        tags = {str(k).lower(): v for k, v in dict(stream.metadata or {}).items()}
        try:
            degrees = -float(tags.get("rotate", 0) or 0)
        except (TypeError, ValueError):
            degrees = 0.0
    return int(round(degrees)) % 360


def video_rotation(source: Any) -> int:
    """:func:`display_rotation` of a video file (a path or a binary file object); 0 if PyAV cannot read it
    (whether it decodes is the loader's business, not this check's)."""
    import av

    try:
        with av.open(source if hasattr(source, "read") else str(source)) as container:
            if not container.streams.video:
                return 0
            stream = container.streams.video[0]
            return display_rotation(stream, next(iter(container.decode(stream)), None))
    except (av.FFmpegError, OSError, UnicodeDecodeError, ValueError):
        return 0


def _has_geometry(record: VideoRecord, need_codec: bool) -> bool:
    return record.num_frames > 0 and record.width > 0 and record.height > 0 and (record.codec or not need_codec)


def probe_geometry(records: Sequence[VideoRecord], root: Path, *, need_codec: bool = False,
                   num_workers: Optional[int] = None) -> tuple[list[VideoRecord], dict[int, str]]:
    """The records completed with what :func:`pipelines.probe.probe_video` reads, for those the index lacks.

    Records that already carry frames, width, height (and the codec, when ``need_codec``) are kept as they
    are; the others are probed in parallel (threads) and returned as completed copies (the caller's objects
    are not changed).

    Args:
        records: the list's records (an unindexed list has no geometry at all).
        root: the data root the records' paths are relative to.
        need_codec: also probe records whose codec is unknown (DALI checks codecs at build time).
        num_workers: probing threads (``utils.cpus.worker_count``).

    Returns:
        ``(records, failed)``: the completed records, and ``{record index: error}`` for files that cannot be
        probed (they are failures like undecodable videos).
    """
    records = list(records)
    missing = [i for i, r in enumerate(records) if not _has_geometry(r, need_codec)]
    if not missing:
        return records, {}
    log.info("probing %d video(s) that the list's index does not describe; `python -m pipelines.prepare` "
             "writes the index and saves this step", len(missing))

    def probe(index: int) -> tuple[int, Optional[dict], Optional[str]]:
        not_regular = regular_file_error(root / records[index].path)
        if not_regular:
            return index, None, not_regular
        try:
            return index, probe_video(root / records[index].path), None
        except ProbeError as err:
            return index, None, str(err)

    failed: dict[int, str] = {}
    threads = max(1, min(worker_count(num_workers), len(missing), 16))
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="probe") as pool:
        for index, info, error in pool.map(probe, missing):
            if info is None:
                failed[index] = f"cannot be probed: {error}"
                continue
            record = records[index]
            records[index] = replace(
                record, num_frames=record.num_frames or int(info["num_frames"]),
                fps=record.fps or float(info["fps"]), width=record.width or int(info["width"]),
                height=record.height or int(info["height"]), codec=record.codec or str(info["codec"]),
                duration=record.duration or float(info.get("duration") or 0.0),
                keyframe_interval=record.keyframe_interval or info.get("keyframe_interval"),
                extra=dict(record.extra))
    return records, failed


class VideoLoader:
    """Base of every loader backend: the contract of the module docstring, minus decoding.

    A backend implements ``__iter__`` (decode and transform :meth:`epoch_batches`' plans, with
    :meth:`resolve` for each slot and :meth:`mark_bad` for each video that fails, then :meth:`assemble`),
    calling :meth:`begin_epoch` first.

    Args:
        records: the split's videos (``pipelines.dataset.load_records``); copies of those without geometry
            are completed by :func:`probe_geometry`.
        root: the data root.
        split: ``train``, ``val`` or ``test``.
        settings: :class:`LoaderSettings`.
        rank, world_size: this process's shard.
        alpha: the SlowFast speed ratio (slow pathway = ``sampling.slow_indices(T, alpha)``).
    """

    #: the backend needs each video's codec before decoding (checked at build time)
    needs_codec = False

    def __init__(self, records: Sequence[VideoRecord], root: str | Path, split: str, *,
                 settings: LoaderSettings, rank: int = 0, world_size: int = 1, alpha: int = 8) -> None:
        if split not in SPLITS:
            raise ValueError(f"split={split!r} is unknown; choose one of {SPLITS}")
        if not records:
            raise DatasetError(f"the {split} split has no videos; check data.{split}_list")
        if not 0 <= int(rank) < int(world_size):
            raise ValueError(f"rank {rank} is outside [0, world_size={world_size})")
        if settings.num_frames % int(alpha):
            raise ValueError(f"data.num_frames={settings.num_frames} must be a multiple of alpha={alpha}")
        if settings.clip_rule not in sampling.CLIP_RULES:
            raise ValueError(f"test.clip_rule={settings.clip_rule!r} is unknown; choose one of {sampling.CLIP_RULES}")
        if settings.val_sampling not in sampling.VAL_SAMPLINGS:
            raise ValueError(f"train.val_sampling={settings.val_sampling!r} is unknown; choose one of "
                             f"{sampling.VAL_SAMPLINGS}")
        if split == "test":
            try:  # before any video is touched: a protocol the reference does not define is refused here
                sampling.crop_positions(settings.num_crops, settings.clip_rule)
            except ValueError as err:
                raise UnsupportedProtocol(str(err)) from None
        self.split = split
        self.root = Path(root)
        self.settings = settings
        self.rank, self.world_size, self.alpha = int(rank), int(world_size), int(alpha)
        self.batch_size = settings.test_batch_size if split == "test" else settings.batch_size
        if self.batch_size < 1:
            raise ValueError(f"the {split} batch size is {self.batch_size}; it must be >= 1")
        self.num_clips = settings.num_clips if split == "test" else 1
        self.num_crops = settings.num_crops if split == "test" else 1
        self.views = self.num_clips * self.num_crops
        # validation drawn like training (train.val_sampling: reference) cuts the training crop, as PySlowFast
        val_crop = settings.train_crop if settings.val_sampling == "reference" else settings.val_crop
        self.crop = {"train": settings.train_crop, "val": val_crop, "test": settings.test_crop}[split]
        self.slow_positions = sampling.slow_indices(settings.num_frames, self.alpha, settings.slow_sampling)
        self.failures: list[dict[str, Any]] = []
        self.rotated: dict[int, int] = {}  # record index -> degrees, for videos delivered unrotated
        self._rotation_checked: set[int] = set()
        self._bad: dict[int, str] = {}
        self._met: dict[int, None] = {}   # failed videos met this epoch, in order
        self.records, unprobed = probe_geometry(records, self.root, need_codec=self.needs_codec,
                                                num_workers=settings.num_workers)
        for index, error in unprobed.items():
            self.mark_bad(index, error)
        self.epoch = 0
        # multigrid (training only): clip shapes and batch sizes follow settings.multigrid per epoch and step,
        # except inside full_shape() (precise BN)
        self.multigrid = settings.multigrid if split == "train" else None
        self._full_shape = False

    # ------------------------------------------------------------------ epochs, shards, length
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose shard order and random clips the next iteration delivers."""
        self.epoch = int(epoch)

    def shard(self, epoch: Optional[int] = None) -> np.ndarray:
        """This rank's video indices for ``epoch`` (``-1``: a padding slot), see ``sampling.shard_indices``."""
        train = self.split == "train"
        return sampling.shard_indices(len(self.records), self.rank, self.world_size, shuffle=train,
                                      seed=self.settings.seed, epoch=self.epoch if epoch is None else epoch,
                                      pad=not train)

    @property
    def multigrid_active(self) -> bool:
        """Whether batches follow the multigrid schedule now (training with train.multigrid, not full_shape())."""
        return self.multigrid is not None and not self._full_shape

    @contextlib.contextmanager
    def full_shape(self) -> Iterator[None]:
        """Inside: every batch is ``data.batch_size`` clips at the full shape, multigrid or not (precise BN)."""
        previous, self._full_shape = self._full_shape, True
        try:
            yield
        finally:
            self._full_shape = previous

    @property
    def max_batch_size(self) -> int:
        """The largest batch this loader can deliver (multigrid's short cycle has larger ones)."""
        return self.multigrid.max_micro_batch() if self.multigrid is not None else self.batch_size

    def step_layout(self, epoch: Optional[int] = None) -> list[StepShape]:
        """Multigrid: the optimizer steps of ``epoch`` on this rank, one shape each (:meth:`Multigrid.layout`)."""
        shard = len(sampling.shard_indices(len(self.records), self.rank, self.world_size))
        return self.multigrid.layout(shard, self.epoch if epoch is None else int(epoch))

    def __len__(self) -> int:
        shard = len(sampling.shard_indices(len(self.records), self.rank, self.world_size,
                                           pad=self.split != "train"))
        if self.multigrid_active:
            return sum(shape.micro_batches for shape in self.step_layout())
        if self.split == "train":
            return shard // self.batch_size   # full batches only (PySlowFast's drop_last)
        return -(-shard // self.batch_size)

    def __iter__(self) -> Iterator[tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]]:
        raise NotImplementedError(f"{type(self).__name__} must implement __iter__ (decode epoch_batches())")

    # ------------------------------------------------------------------ planning
    def plan(self, video_index: int, epoch: Optional[int] = None, shape: Optional[StepShape] = None) -> ClipPlan:
        """The frames and crops of ``video_index`` in ``epoch`` (``-1``: a padding slot, showing video 0).

        Train: ``clip_rng(seed, epoch, video)`` draws the frame indices first, then scale, crop and flip.
        Val: ``train.val_sampling: centred``: the centred clip, centred ``val_crop`` at ``test_short_side``;
        ``reference``: drawn like training (random clip, scale in ``train_short_side``, ``train_crop``,
        flip), from ``clip_rng(seed, epoch, video, VAL_STREAM)``. Test: ``num_clips`` clips x ``num_crops``
        crops under ``test.clip_rule``. A video without geometry (it could not be probed) gets an empty plan;
        :meth:`resolve` never hands such a plan out. A multigrid ``shape`` (train) sets the frames, the crop and
        the short-side range; a frame stride range ``lo < hi`` is drawn first from the same stream.
        """
        s = self.settings
        epoch = self.epoch if epoch is None else int(epoch)
        record_index = int(video_index) if video_index >= 0 else 0
        record = self.records[record_index]
        frames = shape.num_frames if shape is not None else s.num_frames
        plan = ClipPlan(int(video_index), record_index, int(record.label), epoch,
                        np.zeros((0, frames), dtype=np.int64), [], slot_index=int(video_index), shape=shape)
        if not _has_geometry(record, need_codec=False):
            return plan
        timing = dict(num_frames=s.num_frames, sampling_rate=s.sampling_rate, target_fps=s.target_fps)
        if self.split == "train" or (self.split == "val" and s.val_sampling == "reference"):
            stream = sampling.TRAIN_STREAM if self.split == "train" else sampling.VAL_STREAM
            rng = sampling.clip_rng(s.seed, epoch, record_index, stream)
            crop, short_side = self.crop, s.train_short_side
            if shape is not None:
                lo, hi = shape.sampling_rates
                rate = int(rng.integers(lo, hi + 1)) if hi > lo else lo
                timing.update(num_frames=shape.num_frames, sampling_rate=rate)
                crop, short_side = shape.crop, shape.short_side
            plan.clips = sampling.train_clip_indices(record.num_frames, record.fps, rng, **timing)[None]
            plan.crops = [sampling.train_spatial_params(record.height, record.width, rng, short_side,
                                                        crop, s.train_flip)]
        elif self.split == "val":
            plan.clips = sampling.val_clip_indices(record.num_frames, record.fps, **timing)[None]
            plan.crops = [sampling.val_spatial_params(record.height, record.width, s.test_short_side, self.crop)]
        else:
            plan.clips = sampling.test_clip_indices(record.num_frames, record.fps, self.num_clips, **timing,
                                                    rule=s.clip_rule)
            plan.crops = sampling.test_spatial_params(record.height, record.width, s.test_short_side, self.crop,
                                                      self.num_crops, rule=s.clip_rule)
        return plan

    def epoch_batches(self, epoch: Optional[int] = None) -> list[list[ClipPlan]]:
        """The epoch's planned batches for this rank (``len(self)`` of them), before any replacement.

        Multigrid: the micro-batches of :meth:`step_layout`, each step's ``micro_batches`` of ``micro_batch``
        clips at its shape, in order (the trainer groups them into optimizer steps).
        """
        epoch = self.epoch if epoch is None else int(epoch)
        shard = self.shard(epoch)
        if self.multigrid_active:
            batches, used = [], 0
            for shape in self.step_layout(epoch):
                for _ in range(shape.micro_batches):
                    batches.append([self.plan(int(i), epoch, shape) for i in shard[used:used + shape.micro_batch]])
                    used += shape.micro_batch
            return batches
        plans = [self.plan(int(i), epoch) for i in shard]
        size = self.batch_size
        return [plans[i:i + size] for i in range(0, len(plans), size)][: len(self)]

    # ------------------------------------------------------------------ failures and replacement
    def resolve(self, planned: ClipPlan, bad: Optional[Container[int]] = None,
                met: Optional[list[int]] = None) -> Optional[ClipPlan]:
        """The plan to decode for a planned slot, given the videos known to be bad.

        Args:
            planned: a plan from :meth:`epoch_batches` (never a replacement).
            bad: record indices known to fail (default: this loader's); a worker process passes its own.
            met: if given, the known-bad record indices passed over are appended to it.

        Returns:
            ``planned`` if its video is not known bad; else, for test, ``None`` (a real video is left out)
            or, for train/val and padding slots, the plan of the first candidate of
            :func:`replacement_order` not known bad (val and padding slots report it as ``-1``).

        Raises:
            NoDecodableVideo: every video of the list is known bad.
        """
        bad = self._bad if bad is None else bad
        if planned.record_index not in bad:
            return planned
        if met is not None:
            met.append(planned.record_index)
        if self.split == "test" and planned.video_index >= 0:
            return None
        for candidate in replacement_order(len(self.records), self.settings.seed, planned.epoch,
                                           planned.record_index):
            candidate = int(candidate)
            if candidate in bad:
                if met is not None:
                    met.append(candidate)
                continue
            replacement = self.plan(candidate, planned.epoch, planned.shape)
            replacement.slot_index = planned.slot_index
            if self.split != "train" or planned.video_index < 0:
                replacement.video_index = -1  # val keeps its batch shape with a padding sample
            return replacement
        last = self.failures[-1] if self.failures else {"path": "?", "error": "?"}
        raise NoDecodableVideo(
            f"none of the {len(self.records)} videos of the {self.split} list decodes (the last failure: "
            f"{last['path']!r}: {last['error']}); check data.root and the files, e.g. with "
            f"`python -m pipelines.prepare --list LIST --root ROOT`, which lists the bad files")

    def mark_bad(self, record_index: int, error: str) -> None:
        """Record a video that cannot be used: once in ``failures``, logged once, never decoded again."""
        record_index = int(record_index)
        self._met.setdefault(record_index)
        if record_index in self._bad:
            return
        self._bad[record_index] = str(error)
        self.failures.append({"index": record_index, "path": self.records[record_index].path,
                              "error": str(error)})
        action = {"train": "replaced by another video", "val": "replaced by a padding sample",
                  "test": "left out of the evaluation"}[self.split]
        log.warning("video %s (index %d) cannot be used: %s; %s [%d failure(s) so far]",
                    self.path(record_index), record_index, error, action, len(self.failures))

    def unmark_bad(self, record_indices: Iterable[int]) -> None:
        """Withdraw failures that turned out not to be the files' fault (e.g. a decoder that cannot run)."""
        withdrawn = {int(i) for i in record_indices}
        for index in withdrawn:
            self._bad.pop(index, None)
            self._met.pop(index, None)
        self.failures = [f for f in self.failures if f["index"] not in withdrawn]

    def note_met(self, record_indices: Iterable[int]) -> None:
        """Count known-bad videos that this epoch's slots ran into (for ``epoch_failures``)."""
        for index in record_indices:
            self._met.setdefault(int(index))

    def rotation_checked(self, record_index: int) -> bool:
        """Whether :meth:`note_rotation` has seen this video (a backend checks each file once)."""
        return int(record_index) in self._rotation_checked

    def note_rotation(self, record_index: int, degrees: int) -> None:
        """Record a video's display rotation; a non-zero one is warned about once per file and loader (frames
        are delivered as stored, see the module docstring) and kept in ``rotated``."""
        record_index = int(record_index)
        self._rotation_checked.add(record_index)
        degrees = int(degrees) % 360
        if not degrees or record_index in self.rotated:
            return
        self.rotated[record_index] = degrees
        log.warning("video %s (index %d) carries rotation metadata (%d degrees): its frames are used as stored, "
                    "not rotated for display; re-encode it upright (`ffmpeg -i IN OUT` applies the rotation) "
                    "if its orientation matters", self.path(record_index), record_index, degrees)

    def is_bad(self, record_index: int) -> bool:
        return int(record_index) in self._bad

    @property
    def epoch_failures(self) -> list[dict[str, Any]]:
        """The failed videos met by the current (or last) epoch, each once: ``index``, ``path``, ``error``."""
        return [{"index": i, "path": self.records[i].path, "error": self._bad[i]} for i in self._met
                if i in self._bad]

    def begin_epoch(self) -> None:
        """Start counting an epoch's failures afresh (backends call it when an iteration starts)."""
        self._met = {}

    def close(self) -> None:
        """Release what the backend holds between epochs (DALI: its pipeline, decoders and threads). The engine
        calls it when a run ends; a backend that holds nothing (PyAV: its workers live for one epoch) does
        nothing."""

    # ------------------------------------------------------------------ output
    def path(self, record_index: int) -> Path:
        return self.root / self.records[record_index].path

    def assemble(self, fast: torch.Tensor, plans: Sequence[ClipPlan], empty: Callable = torch.empty) -> tuple:
        """``(N * V, C, T, H, W)`` clips of ``plans`` -> the contract's ``([slow, fast], labels, video_index)``.

        ``fast`` may be any strided view (DALI hands over an NTHWC buffer as a permuted view); with
        ``channels_last`` it stays in ``torch.channels_last_3d`` memory (no copy when it already is).
        ``empty(shape)`` allocates the tensors made here (the PyAV loader's workers: in shared memory).
        """
        frames = fast.shape[2]
        slow_positions = self.slow_positions if frames == self.settings.num_frames else \
            sampling.slow_indices(frames, self.alpha, self.settings.slow_sampling)  # a multigrid stage
        positions = torch.as_tensor(slow_positions, device=fast.device)
        n, c, _, h, w = fast.shape
        if self.settings.channels_last:
            if not fast.is_contiguous(memory_format=torch.channels_last_3d):
                fast = empty((n, frames, h, w, c), dtype=fast.dtype, device=fast.device).permute(0, 4, 1, 2, 3) \
                    .copy_(fast)
            # select on the NTHWC view so the slow pathway comes out channels-last too
            slow = empty((n, len(positions), h, w, c), dtype=fast.dtype, device=fast.device)
            torch.index_select(fast.permute(0, 2, 3, 4, 1), 1, positions, out=slow)
            slow = slow.permute(0, 4, 1, 2, 3)
        else:
            if not fast.is_contiguous():
                fast = empty(tuple(fast.shape), dtype=fast.dtype, device=fast.device).copy_(fast)
            slow = empty((n, c, len(positions), h, w), dtype=fast.dtype, device=fast.device)
            torch.index_select(fast, 2, positions, out=slow)
        labels = torch.tensor([p.label for p in plans], dtype=torch.int64, device=fast.device)
        video_index = torch.tensor([p.video_index for p in plans], dtype=torch.int64, device=fast.device)
        return [slow, fast], labels, video_index
