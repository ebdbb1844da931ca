"""DALI loader: clips decoded on the GPU (NVDEC) or by DALI's CPU decoder, straight into a SlowFast batch.

Implements the loader contract of :mod:`pipelines` (``([slow, fast], labels, video_index)``, ``len``,
``set_epoch``, ``records``, ``failures``) with the graphs of :mod:`pipelines.dali_pipelines`.

How the parameters flow:

1. Python plans the epoch: :func:`pipelines.sampling.shard_indices` gives this rank's videos, and for each
   video :func:`~pipelines.sampling.clip_rng` (seed, epoch, video index) draws the frame indices first and
   then the spatial parameters (``train_clip_indices`` then ``train_spatial_params`` on the same stream),
   exactly as the PyAV baseline does, so both backends deliver the same clips for the same seed.
2. Per batch, the external source's callback reads the encoded files (``numpy.fromfile``, on a thread
   pool) and hands DALI one sample per clip: bytes, frame indices, resized size, crop corner, flip.
3. DALI decodes all samples of the batch concurrently, resizes, crops, flips and normalises on the
   device, and emits (N, T, H, W, C). That buffer is taken by torch through DLPack without a copy and
   handed out as ``permute(0, 4, 1, 2, 3)``: an (N, C, T, H, W) view in ``torch.channels_last_3d``.

Why a threaded (not ``parallel=True``) external source: the callback only reads bytes, which releases
the GIL; worker processes would add a copy of every encoded file through shared memory and a fork of
the training process, for no gain. The expensive part, decoding, already runs concurrently inside DALI.

Faults: an unreadable file is caught when its bytes are read; a file DALI cannot decode makes the whole
batch fail, so the batch's videos are then decoded one by one in a fresh pipeline to find the bad ones.
Bad videos are recorded in ``failures`` (index, path, error) and logged; training replaces each by the
next good video of the epoch's order (with that video's label and its own random clip),
validation shows another video's frames as a padding sample (``video_index == -1``), test leaves it
out of the batch (a test batch may be smaller; one whose every video failed is skipped), as the PyAV
loader does. The run goes on.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch

try:
    from nvidia.dali.plugin.pytorch import feed_ndarray  # noqa: F401  (checks the torch plugin loads)

    from pipelines.dali_pipelines import CLIP_INPUTS, DALI_OUTPUT_TYPES, VIDEO_INPUTS, build_video_pipeline
except ImportError as err:  # pipelines.build_loader turns this into BackendUnavailable
    raise ImportError(f"NVIDIA DALI cannot be imported ({err}); install it with "
                      f"`pip install nvidia-dali-cuda120` "
                      f"(nvidia-dali-cuda130 on CUDA 13), or use -o data.backend=pyav") from err

from pipelines import BackendUnavailable
from pipelines import sampling
from pipelines.dataset import DatasetError, VideoRecord, load_records
from pipelines.codecs import DALI_CPU_CODECS, DALI_GPU_CODECS

log = logging.getLogger(__name__)

# codecs fn.decoders.video(device="mixed") reads (its documentation: VP8, VP9, MJPEG, AV1, MPEG-4, H.264,
# H.265), under the names PyAV's probe reports

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
LIST_KEYS = {"train": "train_list", "val": "val_list", "test": "test_list"}


class DaliCodecError(DatasetError):
    """Videos whose codec the chosen DALI placement cannot decode."""


@dataclass
class _Unit:
    """One video of a batch: what is reported and what is decoded."""

    video_index: int                 # reported; -1 for a padding sample
    record_index: int                # decoded (the video itself, a replacement or a padding source)
    label: int
    clips: np.ndarray                # (num_clips, T) source frame indices
    crops: list                      # SpatialParams, one per crop
    encoded: Optional[np.ndarray] = field(default=None, repr=False)


class _Feeder:
    """The external source's callback: the planned batches from a position on, one per call."""

    def __init__(self, loader: "DaliVideoLoader") -> None:
        self.loader = loader
        self.batches: list[list[_Unit]] = []
        self.position = 0
        self.in_flight: collections.deque = collections.deque()  # prepared units, oldest first

    def start(self, batches: list[list[_Unit]], position: int) -> None:
        self.batches, self.position = batches, position
        self.in_flight.clear()

    def __call__(self) -> tuple:
        while self.position < len(self.batches):
            units = self.loader._prepare(self.batches[self.position])
            self.position += 1
            self.in_flight.append(units)
            if units:  # a batch whose every video is known bad comes out empty, DALI never sees it
                return self.loader._dali_inputs(units)
        raise StopIteration


class _OneBatch:
    """A source that yields one batch, then ends."""

    def __init__(self, inputs: tuple) -> None:
        self.inputs = inputs

    def __call__(self) -> tuple:
        if self.inputs is None:
            raise StopIteration
        inputs, self.inputs = self.inputs, None
        return inputs


class DaliVideoLoader:
    """Batches of SlowFast clips decoded and augmented by DALI (see the module docstring)."""

    def __init__(self, cfg: Any, split: str, *, rank: int, world_size: int, alpha: int,
                 records: list[VideoRecord], decode_per_view: bool = False) -> None:
        data = cfg.data
        self.split = split
        self.records = records
        self.failures: list[dict] = []
        self.rank, self.world_size, self.alpha = int(rank), int(world_size), int(alpha)
        self.root = Path(data.root)
        self.placement = str(data.device)
        self.seed = int(data.seed)
        self.num_frames = int(data.num_frames)
        self.sampling_rate = int(data.sampling_rate)
        self.target_fps = float(data.target_fps)
        self.channels_last = bool(cfg.model.channels_last)
        self.decode_once = split == "test" and not decode_per_view
        self.slow_positions = sampling.slow_indices(self.num_frames, self.alpha)
        if split == "test":
            self.num_clips, self.num_crops = int(cfg.test.num_clips), int(cfg.test.num_crops)
            self.videos_per_batch, self.crop = int(cfg.test.batch_size), int(data.test_crop)
        else:
            self.num_clips, self.num_crops = 1, 1
            self.videos_per_batch = int(data.batch_size)
            self.crop = int(data.train_crop if split == "train" else data.val_crop)
        if self.videos_per_batch < 1:
            raise ValueError(f"batch size {self.videos_per_batch} must be >= 1")
        self.views = self.num_clips * self.num_crops
        self._short_side_range = tuple(int(v) for v in data.train_short_side)
        self._train_flip = bool(data.train_flip)
        self._test_short_side = int(data.test_short_side)
        self._mean, self._std = [float(m) for m in data.mean], [float(s) for s in data.std]
        # CPU placement always emits float32 (the model runs on the CPU in fp32 or autocasts itself)
        self._dtype_name = str(data.dtype) if self.placement == "gpu" else "fp32"
        if self._dtype_name not in TORCH_DTYPES:
            raise ValueError(f"data.dtype={self._dtype_name!r} is unknown; "
                             f"choose one of {sorted(TORCH_DTYPES)}")
        self.dtype = TORCH_DTYPES[self._dtype_name]
        if self.placement == "gpu":
            self.device_id = torch.cuda.current_device()
            self.device = torch.device("cuda", self.device_id)
        else:
            self.device_id, self.device = None, torch.device("cpu")
        self.num_threads = int(data.num_workers or len(os.sched_getaffinity(0)))
        self.prefetch = max(int(data.prefetch), 1)
        self._bad: set[int] = set()
        self._epoch = 0
        self._planned_epoch = 0
        self._order: list[int] = []
        self._readers = ThreadPoolExecutor(max_workers=min(8, self.num_threads),
                                           thread_name_prefix="dali-read")
        self._feeder = _Feeder(self)
        self._pipe = None               # reused across epochs while it ends each epoch cleanly
        self._previous_output = None    # see _to_torch: keeps the last batch's DALI buffers alive

    # ---------------------------------------------------------------- contract
    def __len__(self) -> int:
        shard = len(self._shard(0))
        if self.split == "train":
            return shard // self.videos_per_batch  # full batches only (PySlowFast's drop_last)
        return -(-shard // self.videos_per_batch)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose shard order and random clips the next iteration delivers."""
        self._epoch = int(epoch)

    def __iter__(self) -> Iterator[tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]]:
        batches = self._plan(self._epoch)
        feeder = self._feeder
        feeder.start(batches, 0)
        if self._pipe is None:
            self._pipe = self._new_pipeline(feeder, self._max_samples())
        finished = False
        try:
            while True:
                try:
                    (output,) = self._pipe.run()
                except StopIteration:
                    break
                except RuntimeError as err:
                    self._recover(err, batches)
                    continue
                while not feeder.in_flight[0]:  # test batches whose every video failed: skipped
                    feeder.in_flight.popleft()
                yield self._to_batch(feeder.in_flight.popleft(), output)
            finished = True
        finally:
            self._previous_output = None
            if finished:
                self._pipe.reset()
            else:  # abandoned mid-epoch (or an error): batches are in flight, start afresh next time
                self._pipe = None

    # ---------------------------------------------------------------- planning
    def _shard(self, epoch: int) -> np.ndarray:
        train = self.split == "train"
        return sampling.shard_indices(len(self.records), self.rank, self.world_size, shuffle=train,
                                      seed=self.seed, epoch=epoch, pad=not train)

    def _plan(self, epoch: int) -> list[list[_Unit]]:
        shard = self._shard(epoch)
        self._planned_epoch = epoch
        self._order = [int(i) for i in shard if i >= 0]  # replacement candidates, in epoch order
        # a padding sample shows video 0, as in the PyAV loader
        units = [self._plan_unit(int(i), epoch) for i in shard]
        size = self.videos_per_batch
        batches = [units[i:i + size] for i in range(0, len(units), size)]
        return batches[: len(self)]

    def _plan_unit(self, video_index: int, epoch: int) -> _Unit:
        record_index = video_index if video_index >= 0 else 0
        record = self.records[record_index]
        timing = dict(num_frames=self.num_frames, sampling_rate=self.sampling_rate,
                      target_fps=self.target_fps)
        if self.split == "train":
            rng = sampling.clip_rng(self.seed, epoch, record_index)
            clips = sampling.train_clip_indices(record.num_frames, record.fps, rng, **timing)[None]
            crops = [sampling.train_spatial_params(record.height, record.width, rng,
                                                   self._short_side_range, self.crop, self._train_flip)]
        elif self.split == "val":
            clips = sampling.val_clip_indices(record.num_frames, record.fps, **timing)[None]
            crops = [sampling.val_spatial_params(record.height, record.width, self._test_short_side,
                                                 self.crop)]
        else:
            clips = sampling.test_clip_indices(record.num_frames, record.fps, self.num_clips, **timing)
            crops = sampling.test_spatial_params(record.height, record.width, self._test_short_side,
                                                 self.crop, self.num_crops)
        return _Unit(video_index, record_index, int(record.label), clips, crops)

    def _max_samples(self) -> int:
        return self.videos_per_batch * (1 if self.decode_once else self.views)

    # ---------------------------------------------------------------- feeding DALI
    def _path(self, record_index: int) -> Path:
        return self.root / self.records[record_index].path

    def _read(self, record_index: int) -> np.ndarray:
        encoded = np.fromfile(self._path(record_index), dtype=np.uint8)
        if encoded.size == 0:
            raise OSError("the file is empty")
        return encoded

    def _prepare(self, units: list[_Unit]) -> list[_Unit]:
        """The batch with its bytes read; known-bad videos replaced (train, padding) or dropped."""
        # copies: the plan keeps no encoded bytes, so an epoch's files are not all held in memory
        units = [dataclasses.replace(u) for u in units]
        while True:
            units = [self._substitute(u) for u in units]
            units = [u for u in units if u is not None]
            pending = [u for u in units if u.encoded is None]
            results = list(self._readers.map(self._read_or_error, [u.record_index for u in pending]))
            unreadable = False
            for unit, (encoded, error) in zip(pending, results):
                if error is None:
                    unit.encoded = encoded
                else:
                    self._mark_bad(unit.record_index, f"cannot read: {error}")
                    unreadable = True
            if not unreadable:
                return units

    def _read_or_error(self, record_index: int) -> tuple[Optional[np.ndarray], Optional[str]]:
        try:
            return self._read(record_index), None
        except OSError as err:
            return None, str(err)

    def _substitute(self, unit: _Unit) -> Optional[_Unit]:
        if unit.record_index not in self._bad:
            return unit
        if self.split == "test" and unit.video_index >= 0:
            return None  # test leaves a failed video out (it is in failures)
        start = self._order.index(unit.record_index) if unit.record_index in self._order else -1
        for step in range(1, len(self._order) + 1):
            candidate = self._order[(start + step) % len(self._order)]
            if candidate not in self._bad:
                replacement = self._plan_unit(candidate, self._planned_epoch)
                if self.split != "train":
                    # validation keeps its batch shape: another video's frames stand in as a padding
                    # sample, which the metrics drop (as in the PyAV loader)
                    replacement.video_index = -1
                return replacement
        raise DatasetError(f"every video of this rank's shard failed to decode (first failure: "
                           f"{self.failures[0] if self.failures else 'none'}); check data.root and the files")

    def _dali_inputs(self, units: list[_Unit]) -> tuple:
        """Per-sample lists in the order of dali_pipelines.CLIP_INPUTS / VIDEO_INPUTS."""
        if self.decode_once:
            columns = {name: [] for name in VIDEO_INPUTS}
            for unit in units:
                params = unit.crops[0]  # test crops share one resized size
                columns["encoded"].append(unit.encoded)
                columns["frames"].append(np.unique(unit.clips).astype(np.int32))
                columns["resize_h"].append(np.float32(params.resize_h))
                columns["resize_w"].append(np.float32(params.resize_w))
            return tuple(columns[name] for name in VIDEO_INPUTS)
        columns = {name: [] for name in CLIP_INPUTS}
        for unit in units:
            for clip in unit.clips:           # clip-major: view = clip * num_crops + crop
                for params in unit.crops:
                    columns["encoded"].append(unit.encoded)
                    columns["frames"].append(clip.astype(np.int32))
                    columns["resize_h"].append(np.float32(params.resize_h))
                    columns["resize_w"].append(np.float32(params.resize_w))
                    columns["crop_start"].append(np.array([params.y, params.x], dtype=np.int32))
                    columns["crop_shape"].append(np.array([params.crop, params.crop], dtype=np.int32))
                    columns["flip"].append(np.int32(params.flip))
        return tuple(columns[name] for name in CLIP_INPUTS)

    def _new_pipeline(self, source, max_samples: int):
        return build_video_pipeline(
            source, placement=self.placement, batch_size=max_samples, num_threads=self.num_threads,
            device_id=self.device_id, prefetch=self.prefetch, mean=self._mean, std=self._std,
            output_type=DALI_OUTPUT_TYPES[self._dtype_name], cut_clips=not self.decode_once)

    # ---------------------------------------------------------------- faults
    def _mark_bad(self, record_index: int, error: str) -> None:
        if record_index in self._bad:
            return
        self._bad.add(record_index)
        self.failures.append({"index": record_index, "path": self.records[record_index].path, "error": error})
        action = {"train": "replaced by another video", "val": "replaced by a padding sample",
                  "test": "left out of the evaluation"}[self.split]
        log.warning("video %s failed to decode (%s); %s [%d failure(s) so far]",
                    self._path(record_index), error, action, len(self.failures))

    def _recover(self, err: RuntimeError, batches: list[list[_Unit]]) -> None:
        """A batch failed inside DALI: find its bad videos, then restart the pipeline at that batch."""
        feeder = self._feeder
        failed_position = feeder.position - len(feeder.in_flight)
        in_flight = [u for u in feeder.in_flight if u]
        self._pipe = None  # its queued iterations are lost; restart from the failed batch
        found = False
        # NOTE: the error comes out with the oldest batch's outputs; should DALI ever attribute it to a
        # later iteration, the other in-flight batches are searched too before giving up.
        for units in in_flight:
            found = self._isolate(units) or found
            if found:
                break
        if not found:
            raise RuntimeError(f"DALI failed on a batch, but each of its videos decodes on its own, "
                               f"so this is not a bad file: {err}") from err
        # restart at the oldest batch not yet handed out (test batches emptied by earlier failures, still
        # queued, are skipped again); the bad videos are now known, so preparing the failed batch again
        # replaces or drops them
        feeder.start(batches, failed_position)
        self._pipe = self._new_pipeline(feeder, self._max_samples())

    def _isolate(self, units: list[_Unit]) -> bool:
        """Decode each video alone; mark those that fail. Returns whether any did."""
        found = False
        for unit in units:
            if unit.record_index in self._bad:
                continue
            one_video = _OneBatch(self._dali_inputs([unit]))
            samples = 1 if self.decode_once else len(unit.clips) * len(unit.crops)
            pipe = self._new_pipeline(one_video, samples)
            try:
                pipe.run()
            except RuntimeError as err:
                self._mark_bad(unit.record_index, _first_line(err))
                found = True
            finally:
                del pipe
        return found

    # ---------------------------------------------------------------- DALI -> torch
    def _to_torch(self, dali_tensor) -> torch.Tensor:
        """A DALI tensor as a torch tensor on the same memory (DLPack, no copy).

        NOTE: lifetime. The DLPack capsule holds a reference to DALI's buffer, and with DALI's default
        (dynamic) executor an output buffer is not reused while referenced, so the torch tensor stays
        valid after later pipeline runs (tests/test_dali_cpu.py checks this). It is the path
        DALIGenericIterator takes for that executor. The memory belongs to DALI's pool, not torch's
        caching allocator: it does not show in torch.cuda.memory_allocated.
        """
        if self.placement == "gpu":
            with torch.cuda.device(self.device):
                return torch.from_dlpack(dali_tensor)
        return torch.from_dlpack(dali_tensor)

    def _batch_tensor(self, tensor_list) -> torch.Tensor:
        try:
            dali_tensor = tensor_list.as_tensor()  # a view when DALI's batch is contiguous
        except RuntimeError:
            # NOTE: a non-contiguous DALI batch cannot be one tensor; stacking its samples is a copy
            return torch.stack([self._to_torch(tensor_list[i]) for i in range(len(tensor_list))])
        return self._to_torch(dali_tensor)

    def _finish(self, fast: torch.Tensor, units: list[_Unit]) -> tuple:
        """(N, T, H, W, C) fast clips -> the contract's ([slow, fast], labels, video_index)."""
        if fast.dtype != self.dtype:
            # NOTE: DALI 2.4 has no bfloat16 output; it emits float16 and this is the one conversion
            fast = fast.to(self.dtype)
        slow_positions = torch.as_tensor(self.slow_positions, device=fast.device)
        slow = fast.index_select(1, slow_positions)  # (N, T // alpha, H, W, C), channels-last memory
        pathways = [slow.permute(0, 4, 1, 2, 3), fast.permute(0, 4, 1, 2, 3)]  # (N, C, T, H, W) views
        if not self.channels_last:
            pathways = [p.contiguous() for p in pathways]
        labels = torch.tensor([u.label for u in units], dtype=torch.int64, device=fast.device)
        video_index = torch.tensor([u.video_index for u in units], dtype=torch.int64, device=fast.device)
        return pathways, labels, video_index

    def _to_batch(self, units: list[_Unit], output) -> tuple:
        self._previous_output = output
        if not self.decode_once:
            return self._finish(self._batch_tensor(output), units)
        # decode once: cut every (clip, crop) view out of each video's resized, normalised frames
        crop = self.crop
        fast = torch.empty((len(units) * self.views, self.num_frames, crop, crop, 3), dtype=self.dtype,
                           device=self.device)
        for i, unit in enumerate(units):
            frames = self._to_torch(output[i])  # (U, resize_h, resize_w, 3)
            decoded = np.unique(unit.clips)
            for c, clip in enumerate(unit.clips):
                positions = torch.as_tensor(np.searchsorted(decoded, clip), device=self.device)
                for k, params in enumerate(unit.crops):
                    window = frames[:, params.y: params.y + crop, params.x: params.x + crop]
                    fast[(i * self.num_clips + c) * self.num_crops + k] = window.index_select(0, positions)
        return self._finish(fast, units)


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    # DALI's message starts with "Critical error in pipeline:"; the cause is on the following lines
    useful = [line for line in lines if not line.startswith("Critical error")]
    return (useful or lines or [type(err).__name__])[0][:300]


def _complete_records(records: list[VideoRecord], root: Path) -> None:
    """Probe the records the index does not describe (codec, size, length), in place."""
    missing = [r for r in records if not (r.codec and r.num_frames > 0 and r.width > 0 and r.height > 0)]
    if not missing:
        return
    try:
        from pipelines.probe import ProbeError, probe_video
    except ImportError as err:
        raise DatasetError(f"{len(missing)} video(s) have no index entry (codec, size, frame count) and "
                           f"pipelines.prepare cannot be imported to probe them ({err}); "
                           f"write the index with "
                           f"`python -m pipelines.prepare`") from err
    log.info("probing %d video(s) missing from the index; `python -m pipelines.prepare` saves this step",
             len(missing))
    for record in missing:
        try:
            info = probe_video(root / record.path)
        except ProbeError:
            continue  # unreadable: the loader reports it as a failure when it gets to it
        record.codec = record.codec or str(info.get("codec") or "")
        record.num_frames = record.num_frames or int(info.get("num_frames") or 0)
        record.width = record.width or int(info.get("width") or 0)
        record.height = record.height or int(info.get("height") or 0)
        record.fps = record.fps or float(info.get("fps") or 0.0)


def _check_codecs(records: list[VideoRecord], root: Path, placement: str) -> None:
    readable = DALI_CPU_CODECS if placement == "cpu" else DALI_GPU_CODECS
    bad = [r for r in records if r.codec and r.codec.lower() not in readable]
    if not bad:
        return
    examples = ", ".join(f"{str(root / r.path)!r} ({r.codec})" for r in bad[:3])
    if placement == "cpu":
        raise DaliCodecError(
            f"data.device=cpu: DALI's CPU decoder reads only {sorted(DALI_CPU_CODECS)}, but {len(bad)} of "
            f"{len(records)} video(s) are in other codecs, e.g. {examples}. Transcode them with "
            f"`python -m pipelines.prepare --codec vp9`, or decode on the GPU (-o data.device=gpu), "
            f"or use the PyAV loader (-o data.backend=pyav)")
    raise DaliCodecError(
        f"data.device=gpu: DALI's video decoder reads {sorted(DALI_GPU_CODECS)}, but {len(bad)} video(s) are in "
        f"other codecs, e.g. {examples}. Transcode them with `python -m pipelines.prepare --codec vp9` "
        f"or use -o data.backend=pyav")


def build_dali_loader(cfg: Any, split: str, *, rank: int = 0, world_size: int = 1, alpha: int = 8,
                      records: Optional[list[VideoRecord]] = None,
                      decode_per_view: bool = False) -> DaliVideoLoader:
    """The DALI loader for ``split`` (contract: :mod:`pipelines`).

    Args:
        cfg: resolved configuration; uses ``data.*`` (``device`` = gpu | cpu picks the placement),
            ``test.*`` for the test split and ``model.channels_last``, ``model.num_classes``.
        split: ``train``, ``val`` or ``test``.
        rank, world_size: this process's shard of the videos (one pipeline per rank).
        alpha: SlowFast's frame-rate ratio; the slow pathway takes ``sampling.slow_indices(T, alpha)``.
        records: the videos (default: read from the split's list, with its index when present).
        decode_per_view: test only; decode every (clip, crop) view separately, as PySlowFast and
            PaddleVideo do, instead of decoding each video once (for benchmarks and equality tests).
    """
    if split not in LIST_KEYS:
        raise ValueError(f"split={split!r} is unknown; choose one of {sorted(LIST_KEYS)}")
    placement = str(cfg.data.device)
    if placement not in ("gpu", "cpu"):
        raise ValueError(f"data.device={placement!r} is unknown; "
                         f"choose gpu (NVDEC) or cpu (DALI CPU decoder)")
    if placement == "gpu" and not torch.cuda.is_available():
        raise BackendUnavailable(
            "data.device=gpu needs a CUDA GPU, and torch sees none; "
            "use -o data.device=cpu (DALI's CPU decoder, "
            "VP8/VP9/MJPEG data: `python -m pipelines.prepare --codec vp9`) or -o data.backend=pyav")
    root = Path(cfg.data.root)
    if records is None:
        records = load_records(cfg.data[LIST_KEYS[split]], root, int(cfg.model.num_classes))
    if not records:
        raise DatasetError(f"the {split} split has no videos; check data.{LIST_KEYS[split]}")
    _complete_records(records, root)
    _check_codecs(records, root, placement)
    return DaliVideoLoader(cfg, split, rank=rank, world_size=world_size, alpha=alpha, records=records,
                           decode_per_view=decode_per_view)
