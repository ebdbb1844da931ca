"""Peers: other projects' loaders doing the same work as this project's, as their own projects do it.

Stage ``1 loader`` (Kinetics-geometry groups) and ``4 multicrop`` (test path) of :mod:`benchmarks.run`
time these side by side with the project's PyAV and DALI CPU loaders, on the very clips the project plans
(:meth:`pipelines.base.VideoLoader.epoch_batches`): same frames, same resized size, crop and flip.

Training clip (T frames of one video, resize, crop, flip, normalise):

- ``decord get_batch`` (MMAction2's ``DecordInit`` + ``DecordDecode``: ``VideoReader.get_batch(indices)``),
  then its transforms in uint8 (MMAction2 resizes and crops uint8 frames with cv2; here torch's uint8
  bilinear resize, the same filter) and a float normalisation last (its ``data_preprocessor``), in one pass
  as the project's loader normalises (no float temporaries the project does not make either).
- ``PyAV as PySlowFast`` (``slowfast/datasets/decoder.py`` ``pyav_decode``): seek to the clip's start
  timestamp (keyframe before it), decode forward to its end, convert every frame of the span to RGB, pick
  the T frames, normalise the whole frames in float, then ``random_short_side_scale_jitter`` (float bilinear,
  no antialias), the crop and the flip (``utils.spatial_sampling``).
- ``torchcodec`` (``VideoDecoder(...).get_frames_at``) with its own torch resize/crop, where it imports
  (its PyPI wheel needs a CUDA-enabled torch); skipped with the reason otherwise.

Test path (10 x 3 views): ``decord decode once`` (MMAction2's test pipeline: one ``get_batch`` of every clip's
frames, ``ThreeCrop``, float views, each normalised straight into the video's batch).

Each peer runs as a torch DataLoader over the planned clips (``batch`` clips per batch) with 1 worker (per
core) or one per core (all cores); decoders keep the threading their projects give them (``threads``: the
one-thread sweep of :func:`benchmarks.run._cost_by_start` sets one thread for every decoder).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.base import ClipPlan
from pipelines.sampling import SpatialParams


def peer_status() -> dict[str, Optional[str]]:
    """Each optional peer mapped to None (installed) or the reason it is skipped.

    NOTE: looked up without importing. decord 0.6.0's wheel brings its own FFmpeg libraries, and once it is
    imported, PyAV in the same process fails to open the libvpx-vp9 encoder ("avcodec_open2(libvpx-vp9)
    returned 22", measured here); decoding still works. So the suite generates its videos first and decord
    is imported only where a peer runs.
    """
    import importlib.util

    status: dict[str, Optional[str]] = {}
    status["decord"] = (None if importlib.util.find_spec("decord") else
                        "decord is not installed (an optional extra: `pip install decord` to measure it)")
    status["torchcodec"] = (None if importlib.util.find_spec("torchcodec") else
                            "torchcodec is not installed (its PyPI build needs a CUDA-enabled torch; this torch is "
                            f"{torch.__version__})")
    return status


def _normalise(frames_u8: torch.Tensor, mean, std, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (3, T, H, W) float, ``(pixel / 255 - mean) / std``, in one pass (into ``out``
    when given), as the project normalises: the peers are not held up by temporaries the project avoids."""
    scale = (1.0 / (torch.tensor(std, dtype=torch.float32) * 255.0)).view(3, 1, 1, 1)
    offset = (-torch.tensor(mean, dtype=torch.float32) / torch.tensor(std, dtype=torch.float32)).view(3, 1, 1, 1)
    if out is None:
        out = torch.empty((3, *frames_u8.shape[:3]), dtype=torch.float32)
    return torch.addcmul(offset, frames_u8.permute(3, 0, 1, 2), scale, out=out)


def _resize_crop_u8(frames: torch.Tensor, params: SpatialParams, antialias: bool = True) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> resized, cropped, flipped uint8 (T, crop, crop, 3) (the cv2-style uint8 path)."""
    if tuple(frames.shape[1:3]) != (params.resize_h, params.resize_w):
        frames = F.interpolate(frames.permute(0, 3, 1, 2), size=(params.resize_h, params.resize_w),
                               mode="bilinear", align_corners=False, antialias=antialias).permute(0, 2, 3, 1)
    c = params.crop
    frames = frames[:, params.y: params.y + c, params.x: params.x + c]
    return frames.flip(2) if params.flip else frames


# ---------------------------------------------------------------------------------------------- clips

def keyframe_numbers(path: str) -> list[int]:
    """Frame numbers of the keyframes (packets ranked by timestamp; one demux pass)."""
    import av

    with av.open(str(path)) as container:
        rows = [(int(p.pts), bool(p.is_keyframe)) for p in container.demux(video=0) if p.size and p.pts is not None]
    rank = {pts: i for i, pts in enumerate(sorted(pts for pts, _ in rows))}
    return sorted(rank[pts] for pts, key in rows if key)


def frames_from_keyframe(keyframes: list[int], clip: np.ndarray) -> int:
    """Frames a decoder that seeks to the keyframe at or before the clip decodes for it."""
    first, last = int(np.min(clip)), int(np.max(clip))
    before = [k for k in keyframes if k <= first]
    return last - (before[-1] if before else 0) + 1


def decord_clip(path: str, clip: np.ndarray, params: SpatialParams, mean, std, threads: int = 1) -> torch.Tensor:
    """MMAction2's ``DecordInit`` (``num_threads=1``, its default) + ``DecordDecode`` and transforms."""
    import decord

    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=threads)
    frames = torch.from_numpy(reader.get_batch(np.asarray(clip, dtype=np.int64).tolist()).asnumpy())
    return _normalise(_resize_crop_u8(frames, params), mean, std)


def pyslowfast_clip(path: str, clip: np.ndarray, params: SpatialParams, mean, std,
                    counter: Optional[list] = None, threads: Optional[int] = None) -> torch.Tensor:
    """PySlowFast's ``pyav_decode`` + ``temporal_sampling`` + ``tensor_normalize`` + ``spatial_sampling``.
    ``threads``: FFmpeg threads (None: PySlowFast's ``thread_type = "AUTO"`` with FFmpeg's own count)."""
    import av

    first, last = int(np.min(clip)), int(np.max(clip))
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if threads is not None:
            stream.codec_context.thread_count = threads
        # PySlowFast seeks by timestamp: frame number -> pts at the stream's average rate
        step = 1.0 / (float(stream.average_rate) * float(stream.time_base))
        start_pts, end_pts = int(first * step), int(last * step)
        container.seek(max(start_pts - 1024, 0), any_frame=False, backward=True, stream=stream)
        decoded, frames = 0, {}
        for frame in container.decode(stream):
            decoded += 1
            if frame.pts < start_pts - step / 2:
                continue
            frames[frame.pts] = frame
            if frame.pts >= end_pts - step / 2:
                break
        ordered = [frames[k] for k in sorted(frames)]
        rgb = torch.as_tensor(np.stack([f.to_rgb().to_ndarray() for f in ordered]))   # every frame of the span
    if counter is not None:
        counter.append(decoded)
    positions = torch.as_tensor(np.clip(np.asarray(clip) - first, 0, len(ordered) - 1))
    rgb = rgb.index_select(0, positions)
    m = torch.tensor(mean, dtype=torch.float32)
    s = torch.tensor(std, dtype=torch.float32)
    x = ((rgb.float() / 255.0) - m) / s                                            # (T, H, W, C) float
    x = x.permute(3, 0, 1, 2)                                                      # (C, T, H, W)
    x = F.interpolate(x, size=(params.resize_h, params.resize_w), mode="bilinear", align_corners=False)
    c = params.crop
    x = x[:, :, params.y: params.y + c, params.x: params.x + c]
    return (x.flip(-1) if params.flip else x).contiguous()


def torchcodec_clip(path: str, clip: np.ndarray, params: SpatialParams, mean, std, threads: int = 1) -> torch.Tensor:
    from torchcodec.decoders import VideoDecoder

    decoder = VideoDecoder(str(path), seek_mode="exact", num_ffmpeg_threads=threads, dimension_order="NHWC")
    frames = decoder.get_frames_at(indices=np.asarray(clip, dtype=np.int64).tolist()).data
    return _normalise(_resize_crop_u8(frames, params), mean, std)


TRAIN_PEERS: dict[str, tuple[str, Callable]] = {
    "decord get_batch (MMAction2)": ("decord", decord_clip),
    "PyAV as PySlowFast": ("", pyslowfast_clip),
    "torchcodec": ("torchcodec", torchcodec_clip),
}


def decord_test_views(path: str, plan: ClipPlan, mean, std) -> torch.Tensor:
    """MMAction2's test pipeline for one video: one ``get_batch`` of every clip's frames, resize once, then
    every (clip, crop) view as a float array (``ThreeCrop``, ``FormatShape``, normalised)."""
    import decord

    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    union, inverse = np.unique(plan.clips.reshape(-1), return_inverse=True)
    frames = torch.from_numpy(reader.get_batch(union.tolist()).asnumpy())
    params = plan.crops[0]
    if tuple(frames.shape[1:3]) != (params.resize_h, params.resize_w):
        frames = F.interpolate(frames.permute(0, 3, 1, 2), size=(params.resize_h, params.resize_w),
                               mode="bilinear", align_corners=False, antialias=True).permute(0, 2, 3, 1)
    positions = inverse.reshape(plan.clips.shape)
    crop = params.crop  # the crops share one size
    views = torch.empty((len(positions) * len(plan.crops), 3, positions.shape[1], crop, crop), dtype=torch.float32)
    v = 0
    for clip_positions in positions:
        clip = frames[torch.as_tensor(clip_positions)]
        for p in plan.crops:  # each view normalised straight into the batch (no stacked copy)
            _normalise(clip[:, p.y: p.y + p.crop, p.x: p.x + p.crop], mean, std, out=views[v])
            v += 1
    return views


# ---------------------------------------------------------------------------------------------- loaders

class _PlannedClips(torch.utils.data.Dataset):
    def __init__(self, items: list[tuple[str, Any]], work: Callable) -> None:
        self.items, self.work = items, work

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.work(*self.items[i])


class PeerLoader:
    """A peer's clips as batches: a DataLoader over ``(path, plan)`` items with ``workers`` workers.

    Args:
        items: ``(path, ClipPlan)`` per sample (the project's plans, so the work is the same).
        work: ``(path, plan) -> tensor`` (a view (3, T, c, c), or a test video's views (V, 3, T, c, c)).
        batch: samples per batch; workers: DataLoader workers (0: in this process).
    """

    def __init__(self, items: list[tuple[str, ClipPlan]], work: Callable, batch: int, workers: int) -> None:
        self.dataset = _PlannedClips(items, work)
        self.batch, self.workers = batch, workers

    def __iter__(self):
        loader = torch.utils.data.DataLoader(self.dataset, batch_size=self.batch, shuffle=False,
                                             num_workers=self.workers, collate_fn=_cat,
                                             prefetch_factor=2 if self.workers else None)
        iterator = iter(loader)
        try:
            yield from iterator
        finally:
            _stop_workers(iterator)


def _stop_workers(iterator) -> None:
    """Stop an abandoned DataLoader iterator's workers at once, instead of waiting for the batches they are
    still making (a benchmark window abandons its trailing batches; nothing they make is used, and waiting
    cost the smoke suite about 10 s). Only wall time outside the timed windows changes; an iterator that
    ran to its end, or one of another kind, is left to its own shutdown."""
    workers = getattr(iterator, "_workers", None)
    if not workers or getattr(iterator, "_shutdown", True):
        return
    try:
        from torch.utils.data._utils import signal_handling

        if getattr(iterator, "_worker_pids_set", False):  # their exit is expected: no "worker killed" error
            signal_handling._remove_worker_pids(id(iterator))
            iterator._worker_pids_set = False
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
    finally:
        iterator._shutdown_workers()


def _cat(items: list[torch.Tensor]) -> torch.Tensor:
    if len(items) == 1 and items[0].ndim == 5:  # a test video's views: already the batch, no second copy
        return items[0]
    return torch.cat([t if t.ndim == 5 else t[None] for t in items])

