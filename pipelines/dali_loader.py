"""DALI loader: clips decoded on the GPU (NVDEC) or by DALI's CPU decoder, straight into a SlowFast batch.

The contract (what a batch holds, shards, epochs, clip planning, padding, the replacement of an undecodable
video, failures, probing of unindexed lists) is :class:`pipelines.base.VideoLoader`'s; this module decodes
and transforms the planned clips with the graphs of :mod:`pipelines.dali_pipelines`.

How the parameters flow:

1. The base plans the epoch (``epoch_batches``: this rank's shard, each video's frame indices and crops from
   ``pipelines.sampling``), exactly as for the PyAV baseline, so both backends deliver the same clips.
2. Per batch, the external source's callback resolves each slot (``resolve``: known-bad videos replaced or
   left out), reads the encoded files (``numpy.fromfile``, on a thread pool), cuts each clip's GOP-aligned
   segment on the same pool (:mod:`pipelines.clip_segment`; test decode once: the file from the keyframe
   before the first clip) and hands DALI one sample per clip: segment bytes, frame indices shifted into
   it, resized size, crop corner, flip. NOTE: without the segment DALI 2.4 decodes every clip from frame 0
   (see :mod:`pipelines.clip_segment`). DALI calls the callback in the training thread, so the reading and
   cutting of each batch is started one call early in a read-ahead thread (:class:`_Feeder`): it overlaps
   the training step instead of holding it up.
3. DALI decodes all samples of the batch concurrently, resizes, crops, flips and normalises on the
   device, and emits (N, T, H, W, C). That buffer is taken by torch through DLPack without a copy and
   handed out as ``permute(0, 4, 1, 2, 3)``: an (N, C, T, H, W) view in ``torch.channels_last_3d``.

Why a threaded (not ``parallel=True``) external source: the callback only reads bytes, which releases
the GIL; worker processes would add a copy of every encoded file through shared memory and a fork of
the training process, for no gain. The expensive part, decoding, already runs concurrently inside DALI.

Faults: an unreadable file is caught when its bytes are read (a path that is not a regular file, such as a
FIFO, before it is opened); a file DALI cannot decode makes the whole
batch fail, so the batch's videos are then decoded one by one in a fresh pipeline to find the bad ones, and
the pipeline restarts at that batch, where ``resolve`` now replaces them. DALI decodes from memory, so its
error never names the file, and a corrupt file and a decoder that cannot run (no libnvcuvid, an unsupported
codec, profile or size) give the same kind of message. A video that fails alone is therefore checked with
PyAV (:func:`pipelines.probe.probe_video`): if PyAV cannot read it, the file is bad; if PyAV reads it, the
failure counts towards :class:`DaliDecoderUnavailable`, raised at once for a message that names the decoder's
environment or limits, or when the same message (paths stripped) comes from ``_SAME_ERROR_LIMIT`` sound
videos in a row within an epoch. The run then stops with that one error instead of condemning the dataset.
"""
from __future__ import annotations

import collections
import io
import logging
import re
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
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
from pipelines.base import SPLITS, ClipPlan, LoaderSettings, VideoLoader, regular_file_error, video_rotation
from pipelines.clip_segment import clip_segment
from pipelines.codecs import DALI_CPU_CODECS
from pipelines.dataset import DatasetError, VideoRecord, load_records
from pipelines.preflight import PreflightError, preflight_data
from pipelines.probe import ProbeError, probe_video
from utils.cpus import worker_count

log = logging.getLogger(__name__)

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
LIST_KEYS = {split: f"{split}_list" for split in SPLITS}

# sound videos (PyAV reads them) failing in DALI with the same message, in a row, before the run stops
_SAME_ERROR_LIMIT = 3
# messages about the decoder's environment or limits rather than a file's content
_ENVIRONMENT_ERRORS = re.compile(
    r"nvcuvid|libcuda|cuda[ _]?(driver|error)|cudaerror|nvml|no cuda|out of memory|not supported|unsupported|"
    r"(below|smaller than|less than) the minimum|minimum (supported )?(size|width|height)", re.IGNORECASE)


class DaliCodecError(DatasetError):
    """Videos whose codec the chosen DALI placement cannot decode."""


class DaliDecoderUnavailable(BackendUnavailable):
    """DALI's decoder fails on sound videos: its environment or limits are at fault, not the files."""


def error_signature(message: str) -> str:
    """A DALI error message without what varies from file to file (paths, quoted names, addresses)."""
    message = re.sub(r"(['\"]).*?\1", "<name>", message)
    message = re.sub(r"\S*/\S*", "<path>", message)
    return re.sub(r"0x[0-9a-fA-F]+", "<addr>", message).strip()


@dataclass
class _Sample:
    """One slot of a batch, resolved, with its encoded bytes and what DALI is handed for it.

    ``segments``: per clip (decode once: one, for the union of the clips' frames), the GOP-aligned part of
    the file and the frame numbers shifted for it (:func:`pipelines.clip_segment.clip_segment`).
    """

    plan: ClipPlan
    encoded: np.ndarray = field(repr=False)
    segments: list = field(default_factory=list, repr=False)


class _Feeder:
    """The external source's callback: the planned batches from a position on, one per call.

    DALI calls it in the thread that runs the pipeline, the training thread. So that reading files does not hold
    training up, each call first starts reading the NEXT batch in the loader's read-ahead thread (the files'
    bytes, their rotation check and their GOP-aligned segments: :meth:`DaliVideoLoader._read_batch`), and the
    batch it prepares now was read during the previous call's wait. Only the bookkeeping (replacements, failures)
    stays in the training thread.
    """

    def __init__(self, loader: "DaliVideoLoader") -> None:
        self.loader = loader
        self.batches: list[list[ClipPlan]] = []
        self.position = 0
        self.in_flight: collections.deque = collections.deque()  # prepared samples, oldest first
        self.ahead: dict[int, Future] = {}  # batch position -> its reads, started a call early

    def start(self, batches: list[list[ClipPlan]], position: int) -> None:
        self.batches, self.position = batches, position
        self.in_flight.clear()
        self.ahead = {}  # reads of an abandoned order finish unobserved

    def read_ahead(self, position: int) -> None:
        if position < len(self.batches) and position not in self.ahead:
            self.ahead[position] = self.loader._read_ahead.submit(self.loader._read_batch, self.batches[position])

    def __call__(self) -> tuple:
        while self.position < len(self.batches):
            reads = self.ahead.pop(self.position, None)
            self.read_ahead(self.position + 1)
            samples = self.loader._prepare(self.batches[self.position], reads.result() if reads else None)
            self.position += 1
            self.in_flight.append(samples)
            if samples:  # a test batch whose every video is known bad comes out empty, DALI never sees it
                return self.loader._dali_inputs(samples)
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


class DaliVideoLoader(VideoLoader):
    """Batches of SlowFast clips decoded and augmented by DALI (see the module docstring).

    Args:
        cfg: resolved configuration (``data.*``, ``test.*``, ``model.channels_last``).
        split: ``train``, ``val`` or ``test``.
        rank, world_size, alpha: as :class:`pipelines.base.VideoLoader`.
        records: the split's videos.
        decode_per_view: test only; decode every (clip, crop) view separately instead of each video once.
        imported_weights: the weights come from another project (resolves ``data.resize_antialias: auto``,
            see :meth:`pipelines.base.LoaderSettings.from_config`).
    """

    needs_codec = True

    def __init__(self, cfg: Any, split: str, *, rank: int, world_size: int, alpha: int,
                 records: list[VideoRecord], decode_per_view: bool = False, imported_weights: bool = False,
                 slow_sampling: str = "linspace") -> None:
        data = cfg.data
        self.placement = str(data.device)
        if self.placement not in ("gpu", "cpu"):
            raise ValueError(f"data.device={self.placement!r} is unknown; "
                             f"choose gpu (NVDEC) or cpu (DALI CPU decoder)")
        if self.placement == "gpu" and not torch.cuda.is_available():
            raise BackendUnavailable(
                "data.device=gpu needs a CUDA GPU, and torch sees none; "
                "use -o data.device=cpu (DALI's CPU decoder, "
                "VP8/VP9/MJPEG data: `python -m pipelines.prepare --root ROOT --list LIST --transcode-to NEW_ROOT "
                "--codec vp9`) or -o data.backend=pyav")
        # CPU placement always emits float32 (the model runs on the CPU in fp32 or autocasts itself)
        self._dtype_name = str(data.dtype) if self.placement == "gpu" else "fp32"
        if self._dtype_name not in TORCH_DTYPES:
            raise ValueError(f"data.dtype={self._dtype_name!r} is unknown; choose one of {sorted(TORCH_DTYPES)}")
        settings = LoaderSettings.from_config(cfg, imported_weights=imported_weights, slow_sampling=slow_sampling,
                                              alpha=alpha)
        super().__init__(records, data.root, split, settings=settings, rank=rank,
                         world_size=world_size, alpha=alpha)
        list_path = data.get(f"{split}_list") or "the given files"
        _check_codecs([r for i, r in enumerate(self.records) if not self.is_bad(i)], self.root, self.placement,
                      list_path)
        self.dtype = TORCH_DTYPES[self._dtype_name]
        self.decode_once = split == "test" and not decode_per_view
        if self.placement == "gpu":
            self.device_id = torch.cuda.current_device()
            self.device = torch.device("cuda", self.device_id)
        else:
            self.device_id, self.device = None, torch.device("cpu")
        self.num_threads = max(worker_count(self.settings.num_workers), 1)
        self.prefetch = self.settings.prefetch
        self._readers = ThreadPoolExecutor(max_workers=min(8, self.num_threads), thread_name_prefix="dali-read")
        self._read_ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dali-read-ahead")
        self._feeder = _Feeder(self)
        self._pipe = None               # reused across epochs while it ends each epoch cleanly
        self._previous_output = None    # see _to_torch: keeps the last batch's DALI buffers alive
        self._streak: list[int] = []    # sound videos failing in DALI in a row with the same message
        self._streak_signature: Optional[str] = None
        # NOTE: a DALI pipeline destroyed during interpreter teardown, after CUDA's own teardown has begun, can
        # crash in the NVDEC decoder cache's destructor (a known DALI shutdown problem); so every loader
        # releases its pipeline at the latest at exit, while CUDA is still whole (close() does it earlier).
        self._finalizer = weakref.finalize(self, _release, self.__dict__)

    def close(self) -> None:
        """Release the DALI pipeline (and with it its decoders and device memory) and the reader threads now;
        the loader cannot be iterated afterwards. Called by the engine when a run ends; idempotent."""
        self._finalizer()

    # ---------------------------------------------------------------- iteration
    def __iter__(self) -> Iterator[tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]]:
        if getattr(self, "_closed", False):
            raise RuntimeError("this DALI loader was closed (close()); build a new one to iterate again")
        self.begin_epoch()
        self._streak, self._streak_signature = [], None  # counts within an epoch
        batches = self.epoch_batches()
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
                self._streak, self._streak_signature = [], None  # DALI decodes: it is not the environment
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

    def _max_samples(self) -> int:
        # one pipeline for the whole run: multigrid batches change size and shape per step and stage, which
        # DALI's per-sample inputs carry, so no pipeline (and no decoder) is rebuilt when they do
        return self.max_batch_size * (1 if self.decode_once else self.views)

    # ---------------------------------------------------------------- feeding DALI
    def _read(self, record_index: int) -> np.ndarray:
        path = self.path(record_index)
        not_regular = regular_file_error(path)  # before opening: reading a FIFO would block
        if not_regular:
            raise OSError(not_regular)
        encoded = np.fromfile(path, dtype=np.uint8)
        if encoded.size == 0:
            raise OSError("the file is empty")
        return encoded

    def _read_or_error(self, record_index: int) -> tuple[Optional[np.ndarray], Optional[str], Optional[int]]:
        """``(bytes, error, rotation)``; the display rotation is looked for once per file (None after that)."""
        try:
            encoded = self._read(record_index)
        except OSError as err:
            return None, str(err), None
        if self.rotation_checked(record_index):
            return encoded, None, None
        # NOTE: DALI's decoder exposes no container metadata, so PyAV opens the bytes already in memory and
        # decodes one frame, once per file and loader
        return encoded, None, video_rotation(io.BytesIO(encoded.tobytes()))

    def _read_batch(self, planned: list[ClipPlan]) -> dict[int, tuple]:
        """The read-ahead thread's work for a planned batch: per plan (by ``id``) whose video is not known bad,
        ``(bytes, error, rotation, segments)`` (segments None when unread). Touches no loader state but reads."""
        plans = [p for p in planned if not self.is_bad(p.record_index)]
        results = list(self._readers.map(self._read_or_error, [p.record_index for p in plans]))
        readable = [(p, r) for p, r in zip(plans, results) if r[1] is None]
        segments = list(self._readers.map(self._segments, [_Sample(p, r[0]) for p, r in readable]))
        out = {id(p): (*r, None) for p, r in zip(plans, results)}
        out.update({id(p): (*r, seg) for (p, r), seg in zip(readable, segments)})
        return out

    def _prepare(self, planned: list[ClipPlan], ahead: Optional[dict[int, tuple]] = None) -> list[_Sample]:
        """A planned batch resolved (known-bad videos replaced or left out) with its bytes read; ``ahead``: what
        :meth:`_read_batch` read for it already (a replacement, and anything else, is read here)."""
        ahead = ahead or {}
        while True:
            met: list[int] = []
            plans = [plan for plan in (self.resolve(p, met=met) for p in planned) if plan is not None]
            self.note_met(met)
            missing = [p for p in plans if id(p) not in ahead]
            read = dict(zip(map(id, missing), self._readers.map(self._read_or_error, [p.record_index for p in missing])))
            results = [ahead[id(p)][:3] if id(p) in ahead else read[id(p)] for p in plans]
            for plan, (_, _, rotation) in zip(plans, results):
                if rotation is not None:
                    self.note_rotation(plan.record_index, rotation)
            unreadable = [(p, error) for p, (_, error, _) in zip(plans, results) if error is not None]
            for plan, error in unreadable:
                self.mark_bad(plan.record_index, f"cannot read: {error}")
            if not unreadable:  # else resolve again: the unreadable ones are now known bad
                samples = [_Sample(plan, encoded) for plan, (encoded, _, _) in zip(plans, results)]
                cut = [s for s in samples if id(s.plan) not in ahead or ahead[id(s.plan)][3] is None]
                for sample, segments in zip(cut, self._readers.map(self._segments, cut)):
                    sample.segments = segments
                fresh = {id(s) for s in cut}
                for sample in samples:
                    if id(sample) not in fresh:
                        sample.segments = ahead[id(sample.plan)][3]
                return samples

    def _segments(self, sample: _Sample) -> list:
        """What DALI decodes for a sample: per clip (decode once: for the union of the clips' frames) the
        segment from the keyframe at or before its first frame (see :mod:`pipelines.clip_segment`: DALI 2.4
        decodes every in-memory sample from frame 0, so this bounds its work by the span plus one GOP)."""
        if self.decode_once:
            return [clip_segment(sample.encoded, np.unique(sample.plan.clips))]
        return [clip_segment(sample.encoded, clip) for clip in sample.plan.clips]

    def _dali_inputs(self, samples: list[_Sample]) -> tuple:
        """Per-sample lists in the order of dali_pipelines.CLIP_INPUTS / VIDEO_INPUTS."""
        if self.decode_once:
            columns = {name: [] for name in VIDEO_INPUTS}
            for sample in samples:
                params = sample.plan.crops[0]  # test crops share one resized size
                (segment,) = sample.segments  # the union of the clips' frames, np.unique order
                columns["encoded"].append(segment.encoded)
                columns["frames"].append(segment.frames)
                columns["resize_h"].append(np.float32(params.resize_h))
                columns["resize_w"].append(np.float32(params.resize_w))
            return tuple(columns[name] for name in VIDEO_INPUTS)
        columns = {name: [] for name in CLIP_INPUTS}
        for sample in samples:
            for segment in sample.segments:         # clip-major: view = clip * num_crops + crop
                for params in sample.plan.crops:
                    columns["encoded"].append(segment.encoded)
                    columns["frames"].append(segment.frames)
                    columns["resize_h"].append(np.float32(params.resize_h))
                    columns["resize_w"].append(np.float32(params.resize_w))
                    columns["crop_start"].append(np.array([params.y, params.x], dtype=np.int32))
                    columns["crop_shape"].append(np.array([params.crop, params.crop], dtype=np.int32))
                    columns["flip"].append(np.int32(params.flip))
        return tuple(columns[name] for name in CLIP_INPUTS)

    def _new_pipeline(self, source, max_samples: int):
        return build_video_pipeline(
            source, placement=self.placement, batch_size=max_samples, num_threads=self.num_threads,
            device_id=self.device_id, prefetch=self.prefetch, mean=self.settings.mean, std=self.settings.std,
            output_type=DALI_OUTPUT_TYPES[self._dtype_name], cut_clips=not self.decode_once,
            antialias=self.settings.antialias)

    # ---------------------------------------------------------------- faults
    def _recover(self, err: RuntimeError, batches: list[list[ClipPlan]]) -> None:
        """A batch failed inside DALI: find its bad videos, then restart the pipeline at that batch."""
        feeder = self._feeder
        failed_position = feeder.position - len(feeder.in_flight)
        in_flight = [samples for samples in feeder.in_flight if samples]
        self._pipe = None  # its queued iterations are lost; restart from the failed batch
        found = False
        # NOTE: the error comes out with the oldest batch's outputs; should DALI ever attribute it to a
        # later iteration, the other in-flight batches are searched too before giving up.
        for samples in in_flight:
            found = self._isolate(samples) or found
            if found:
                break
        if not found:
            raise RuntimeError(f"DALI failed on a batch, but each of its videos decodes on its own, "
                               f"so this is not a bad file: {err}") from err
        # restart at the oldest batch not yet handed out; the bad videos are now known, so preparing the
        # failed batch again replaces or drops them
        feeder.start(batches, failed_position)
        self._pipe = self._new_pipeline(feeder, self._max_samples())

    def _isolate(self, samples: list[_Sample]) -> bool:
        """Decode each video alone; judge those that fail. Returns whether any did."""
        found = False
        for sample in samples:
            if self.is_bad(sample.plan.record_index):
                continue
            one_video = _OneBatch(self._dali_inputs([sample]))
            views = 1 if self.decode_once else len(sample.plan.clips) * len(sample.plan.crops)
            pipe = self._new_pipeline(one_video, views)
            try:
                pipe.run()
            except RuntimeError as err:
                self._judge(sample.plan.record_index, _first_line(err))
                found = True
            else:
                self._streak, self._streak_signature = [], None
            finally:
                del pipe
        return found

    def _judge(self, record_index: int, message: str) -> None:
        """A video failed alone in DALI: a bad file, or (raised) a decoder that cannot run here."""
        if not self._pyav_reads(record_index):
            self.mark_bad(record_index, message)  # PyAV cannot read it either: the file is bad
            return
        signature = error_signature(message)
        if signature != self._streak_signature:
            self._streak, self._streak_signature = [], signature
        self._streak.append(record_index)
        if _ENVIRONMENT_ERRORS.search(message) or len(self._streak) >= _SAME_ERROR_LIMIT:
            self.unmark_bad(self._streak)  # not the files' fault: withdraw what this streak condemned
            raise DaliDecoderUnavailable(self._environment_message(record_index, message, len(self._streak)))
        self.mark_bad(record_index, message)

    def _pyav_reads(self, record_index: int) -> bool:
        try:
            probe_video(self.path(record_index))
        except ProbeError:
            return False
        return True

    def _environment_message(self, record_index: int, message: str, count: int) -> str:
        if self.placement == "gpu":
            fix = ("check that the NVIDIA driver provides libnvcuvid (NVDEC) and that the videos are in a format "
                   "NVDEC decodes (e.g. H.264 8-bit 4:2:0, at least 48x16 pixels: `python -m pipelines.prepare "
                   "--transcode-to DIR --codec h264`), or use -o data.backend=pyav")
        else:
            fix = (f"DALI's CPU decoder reads only {sorted(DALI_CPU_CODECS)}: transcode with `python -m "
                   f"pipelines.prepare --transcode-to DIR --codec vp9`, or use -o data.backend=pyav")
        return (f"DALI's {self.placement} video decoder fails on {count} video(s) in a row that PyAV decodes "
                f"(the last {str(self.path(record_index))!r}, codec {self.records[record_index].codec!r}) with "
                f"{message!r}; this is the decoder's environment or limits, not bad files: {fix}")

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

    def _finish(self, fast: torch.Tensor, samples: list[_Sample]) -> tuple:
        """(N, T, H, W, C) fast clips -> the contract's ([slow, fast], labels, video_index)."""
        if fast.dtype != self.dtype:
            # NOTE: DALI 2.4 has no bfloat16 output; it emits float16 and this is the one conversion
            fast = fast.to(self.dtype)
        # (N, C, T, H, W) view of the NTHWC buffer: channels_last_3d memory, no copy
        return self.assemble(fast.permute(0, 4, 1, 2, 3), [sample.plan for sample in samples])

    def _to_batch(self, samples: list[_Sample], output) -> tuple:
        self._previous_output = output
        if not self.decode_once:
            return self._finish(self._batch_tensor(output), samples)
        # decode once: cut every (clip, crop) view out of each video's resized, normalised frames
        crop, num_clips, num_crops = self.crop, self.num_clips, self.num_crops
        fast = torch.empty((len(samples) * self.views, self.settings.num_frames, crop, crop, 3),
                           dtype=self.dtype, device=self.device)
        for i, sample in enumerate(samples):
            frames = self._to_torch(output[i])  # (U, resize_h, resize_w, 3)
            decoded = np.unique(sample.plan.clips)
            for c, clip in enumerate(sample.plan.clips):
                positions = torch.as_tensor(np.searchsorted(decoded, clip), device=self.device)
                for k, params in enumerate(sample.plan.crops):
                    window = frames[:, params.y: params.y + crop, params.x: params.x + crop]
                    fast[(i * num_clips + c) * num_crops + k] = window.index_select(0, positions)
        return self._finish(fast, samples)


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    # DALI's message starts with "Critical error in pipeline:" and a traceback of the graph's definition;
    # the cause is the line after "encountered:" (else the first other line)
    if "encountered:" in lines:
        after = lines[lines.index("encountered:") + 1:]
        if after:
            return after[0][:300]
    useful = [line for line in lines if not line.startswith("Critical error")]
    return (useful or lines or [type(err).__name__])[0][:300]


def _release(state: dict) -> None:
    """Free what a :class:`DaliVideoLoader` holds (its ``__dict__``): last outputs, pipeline, reader threads."""
    state["_previous_output"] = None
    pipe, state["_pipe"] = state.get("_pipe"), None
    del pipe  # the pipeline's own destructor frees its decoders and buffers, here and now
    state["_closed"] = True
    for name in ("_read_ahead", "_readers"):  # the read-ahead thread submits to the readers: stop it first
        pool = state.get(name)
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _check_codecs(records: list[VideoRecord], root: Path, placement: str, list_path: str | Path) -> None:
    """Refuse, at build time, videos DALI cannot decode in ``placement``: the capability table's check
    (:func:`pipelines.preflight.preflight_data`: codec, and on the GPU profile, bit depth, chroma and size for
    this GPU's generation), whose message names the videos and the exact transcoding command."""
    try:
        preflight_data(records, root, list_path, placement)
    except PreflightError as err:
        alternative = ("decode on the GPU (-o data.device=gpu) or use the PyAV loader (-o data.backend=pyav)"
                       if placement == "cpu" else "or use the PyAV loader (-o data.backend=pyav)")
        raise DaliCodecError(f"data.device={placement}: {err}; or {alternative}") from None


def build_dali_loader(cfg: Any, split: str, *, rank: int = 0, world_size: int = 1, alpha: int = 8,
                      records: Optional[list[VideoRecord]] = None,
                      decode_per_view: bool = False, imported_weights: bool = False,
                      slow_sampling: str = "linspace") -> DaliVideoLoader:
    """The DALI loader for ``split`` (contract: :class:`pipelines.base.VideoLoader`).

    Args:
        cfg: resolved configuration; uses ``data.*`` (``device`` = gpu | cpu picks the placement),
            ``test.*`` for the test split and ``model.channels_last``, ``model.num_classes``.
        split: ``train``, ``val`` or ``test``.
        rank, world_size: this process's shard of the videos (one pipeline per rank).
        alpha: SlowFast's frame-rate ratio; the slow pathway takes ``sampling.slow_indices(T, alpha)``.
        records: the videos (default: read from the split's list, with its index when present).
        decode_per_view: test only; decode every (clip, crop) view separately, as PySlowFast and
            PaddleVideo do, instead of decoding each video once (for benchmarks and equality tests).
        imported_weights: the weights come from another project (resolves ``data.resize_antialias: auto``).
    """
    if split not in LIST_KEYS:
        raise ValueError(f"split={split!r} is unknown; choose one of {sorted(LIST_KEYS)}")
    if records is None:
        records = load_records(cfg.data[LIST_KEYS[split]], Path(cfg.data.root), int(cfg.model.num_classes))
    return DaliVideoLoader(cfg, split, rank=rank, world_size=world_size, alpha=alpha, records=records,
                           decode_per_view=decode_per_view, imported_weights=imported_weights,
                           slow_sampling=slow_sampling)
