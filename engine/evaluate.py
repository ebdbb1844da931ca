"""Multi-view evaluation (num_clips x num_crops views per video) on one process or many, and prediction.

The protocol is the reference one (PySlowFast / PaddleVideo): every video is cut into
``cfg.test.num_clips`` uniformly spaced temporal clips x ``cfg.test.num_crops`` spatial crops (short side
``data.test_short_side``, square crop ``data.test_crop``); the model's per-view softmax scores are summed
per video, and the sum is ranked to give top-1 / top-5 accuracy and mean per-class accuracy.

Speed comes from the loader (``pipelines.build_loader(cfg, "test", ...)`` decodes each video once and
cuts all its views), from batching several videos' views into one forward pass, and from bf16 autocast
and channels-last on the GPU, as in training.

Exactness across processes: each rank evaluates its shard (padding samples carry ``video_index == -1``
and are dropped), the per-video scores ``{video_index: scores}`` are gathered on every rank, and the
metrics are computed from the gathered scores in video order, so they do not depend on the number of
ranks. A video evaluated twice is an error; a video that failed to decode is reported with its path,
and the metrics say over how many of the list's videos they were computed.

``python test.py`` is the command-line driver (:func:`main`).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import math
import os
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch

from configs import ConfigError, add_config_args, config_from_args, save_config
from engine import distributed as dist_utils
from engine.checkpoint import CHECKPOINT_FORMAT
from engine.meters import format_duration, setup_logging, topk_correct
from models import create_model, load_weights, model_from_arch
from pipelines import BackendUnavailable, build_loader
from pipelines.dataset import DatasetError, VideoRecord, read_class_names
from pipelines.probe import ProbeError, probe_video
from pipelines.codecs import DALI_CPU_CODECS, DALI_GPU_CODECS

LOG = logging.getLogger("slowfast.test")
TOP_K = 5


# --------------------------------------------------------------------------------------------------
# Pure functions: aggregation and metrics
# --------------------------------------------------------------------------------------------------

def aggregate_views(view_logits: torch.Tensor, num_views: int) -> torch.Tensor:
    """Per-video sum of the per-view softmax scores (the reference ensemble).

    Args:
        view_logits: (N * V, K) logits, video-major (the V views of video 0 first), as the test loader
            lays them out.
        num_views: V, views per video (``num_clips * num_crops``).

    Returns:
        (N, K) float32 scores; each row sums to V.
    """
    if num_views < 1:
        raise ValueError(f"num_views={num_views} must be >= 1")
    if view_logits.dim() != 2 or view_logits.shape[0] % num_views:
        raise ValueError(f"view_logits of shape {tuple(view_logits.shape)} is not (N * {num_views}, K): "
                         f"the batch must hold whole videos of num_views={num_views} views each")
    probs = torch.softmax(view_logits.float(), dim=1)
    return probs.view(-1, num_views, probs.shape[1]).sum(dim=1)


def ranked_classes(scores: np.ndarray, k: Optional[int] = None) -> np.ndarray:
    """Class indices by decreasing score, (N, k); equal scores keep the lower class index first."""
    scores = np.asarray(scores)
    order = np.argsort(-scores, axis=1, kind="stable")
    return order if k is None else order[:, :k]


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Fraction of videos whose label is among their ``k`` highest-scoring classes, for each k.

    Args:
        scores: (N, K) per-video scores (any monotone function of the class probability).
        labels: (N,) integer labels.
        ks: the k values; a k above K counts every video as correct, as PySlowFast does.

    Returns:
        ``{k: accuracy}``; NaN for every k when N == 0.
    """
    scores, labels = np.asarray(scores), np.asarray(labels)
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} score rows but {len(labels)} labels")
    if len(labels) == 0:
        return {k: float("nan") for k in ks}
    hits = topk_correct(torch.from_numpy(scores), torch.from_numpy(labels.astype(np.int64)), ks)
    return {k: float(hits[k].double().mean()) for k in ks}


def mean_class_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean over the classes present in ``labels`` of each class's top-1 accuracy (NaN when empty)."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    if len(labels) == 0:
        return float("nan")
    correct = ranked_classes(scores, 1)[:, 0] == labels
    return float(np.mean([correct[labels == c].mean() for c in np.unique(labels)]))


# --------------------------------------------------------------------------------------------------
# Running the model over a loader
# --------------------------------------------------------------------------------------------------

def autocast_context(device: torch.device, precision: str):
    """bf16/fp16 autocast on CUDA; on the CPU fp32 (CPU bf16 convolutions are slow and buy no accuracy)."""
    if precision not in ("bf16", "fp16", "fp32"):
        raise ValueError(f"precision {precision!r} is unknown; choose bf16, fp16 or fp32")
    if device.type == "cuda" and precision != "fp32":
        return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    return contextlib.nullcontext()


def _to_model_input(tensor: torch.Tensor, device: torch.device, channels_last: bool, autocast: bool):
    tensor = tensor.to(device, non_blocking=True)
    if not autocast and tensor.dtype != torch.float32:
        tensor = tensor.float()  # a bf16 DALI batch evaluated in fp32
    if channels_last and tensor.dim() == 5:
        # NOTE: a no-op for DALI's NTHWC batches, which already are channels_last_3d views.
        tensor = tensor.contiguous(memory_format=torch.channels_last_3d)
    return tensor


class Progress:
    """Videos/s and ETA on stderr: one line every ``interval`` seconds (overwritten in a terminal)."""

    def __init__(self, total_videos: int, world_size: int, enabled: bool, interval: float = 10.0) -> None:
        self.total = total_videos
        self.world_size = world_size
        self.enabled = enabled
        self.interval = interval
        self.start = time.perf_counter()
        self.last = self.start
        self.tty = sys.stderr.isatty()

    def update(self, local_videos: int, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not final and now - self.last < self.interval:
            return
        self.last = now
        # This rank's count times the world size: shards are equal to within one video.
        done = min(local_videos * self.world_size, self.total)
        elapsed = max(now - self.start, 1e-9)
        rate = done / elapsed
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        line = (f"[TEST] {done}/{self.total} videos, {rate:.2f} videos/s, "
                f"elapsed {format_duration(elapsed)}, ETA {format_duration(eta)}")
        end = "\n" if final or not self.tty else ""
        print(("\r" if self.tty else "") + line, end=end, file=sys.stderr, flush=True)


@torch.inference_mode()
def collect_scores(
    model: torch.nn.Module,
    loader: Iterable,
    *,
    num_views: int,
    device: torch.device,
    precision: str = "bf16",
    channels_last: bool = True,
    progress: Optional[Progress] = None,
) -> dict[int, np.ndarray]:
    """This rank's ``{video_index: summed softmax scores (K,)}`` over ``loader`` (padding dropped).

    Args:
        model: in eval mode, on ``device``; called as ``model([slow, fast])``.
        loader: yields ``([slow, fast], labels, video_index)`` with ``N * num_views`` views per batch.
        num_views: views per video.
        device: where the model runs.
        precision: bf16 | fp16 | fp32 (autocast on CUDA only).
        channels_last: hand the inputs over in ``torch.channels_last_3d``.
        progress: optional progress meter, updated after every batch.
    """
    use_autocast = device.type == "cuda" and precision != "fp32"
    scores: dict[int, np.ndarray] = {}
    local_videos = 0
    for inputs, _labels, video_index in loader:
        video_index = torch.as_tensor(video_index).reshape(-1).cpu()
        num_videos = len(video_index)
        if inputs[1].shape[0] != num_videos * num_views:
            raise RuntimeError(f"test batch has {inputs[1].shape[0]} views for {num_videos} videos; expected "
                               f"{num_views} per video (test.num_clips x test.num_crops) from the loader")
        keep = video_index >= 0
        if not bool(keep.any()):
            continue  # padding only: present to keep ranks in step
        if not bool(keep.all()):
            # Drop the padding videos' views before the forward pass instead of computing and discarding them.
            view_keep = keep.repeat_interleave(num_views).to(inputs[1].device)
            inputs = [x[view_keep] for x in inputs]
            video_index = video_index[keep]
        local_videos += len(video_index)
        inputs = [_to_model_input(x, device, channels_last, use_autocast) for x in inputs]
        with autocast_context(device, precision):
            logits = model(inputs)
        video_scores = aggregate_views(logits, num_views).cpu().numpy()
        for index, row in zip(video_index.tolist(), video_scores):
            if index in scores:
                raise RuntimeError(f"video {index} appeared twice in this rank's test loader")
            scores[index] = row
        if progress is not None:
            progress.update(local_videos)
    if progress is not None:
        progress.update(local_videos, final=True)
    return scores


def gather_scores(local_scores: Mapping[int, np.ndarray], local_failures: Sequence[Mapping]
                  ) -> tuple[dict[int, np.ndarray], list[dict]]:
    """Every rank's scores and decode failures, merged (same on every rank); a video scored twice raises.

    Args:
        local_scores: this rank's ``{video_index: scores}``.
        local_failures: this rank's loader failures (``index``, ``path``, ``error``).
    """
    merged: dict[int, np.ndarray] = {}
    for rank, part in enumerate(dist_utils.all_gather_object(dict(local_scores))):
        for index, row in part.items():
            if index in merged:
                raise RuntimeError(f"video {index} was evaluated on more than one rank (again on rank "
                                   f"{rank}); the test loader's sharding must be disjoint")
            merged[index] = row
    failures: dict[int, dict] = {}
    for part in dist_utils.all_gather_object([dict(f) for f in local_failures]):
        for failure in part:
            failures.setdefault(int(failure.get("index", -1)), failure)
    return merged, [failures[i] for i in sorted(failures)]


@dataclass
class EvalResult:
    """What one evaluation produced: per-video scores in video order, the metrics and the counts.

    ``scores[i]`` belongs to ``records[video_indices[i]]``; ``scores`` are summed softmax scores over
    ``num_views`` views (divide by ``num_views`` for probabilities).
    """

    video_indices: np.ndarray          # (M,) evaluated videos, ascending
    scores: np.ndarray                 # (M, K) float32
    labels: np.ndarray                 # (M,)
    num_views: int
    num_videos: int                    # videos in the list
    failures: list[dict] = field(default_factory=list)   # {"index", "path", "error"}
    missing: list[int] = field(default_factory=list)     # neither evaluated nor reported as failed
    seconds: float = 0.0

    @property
    def num_evaluated(self) -> int:
        return len(self.video_indices)

    @property
    def acc1(self) -> float:
        return topk_accuracy(self.scores, self.labels, (1,))[1]

    @property
    def acc5(self) -> float:
        return topk_accuracy(self.scores, self.labels, (TOP_K,))[TOP_K]

    @property
    def mean_class_acc(self) -> float:
        return mean_class_accuracy(self.scores, self.labels)

    def metrics(self) -> dict:
        return {"acc1": self.acc1, "acc5": self.acc5, "mean_class_acc": self.mean_class_acc}

    def coverage_text(self) -> str:
        return f"over {self.num_evaluated} of {self.num_videos} videos"


def evaluate(
    model: torch.nn.Module,
    loader: Any,
    *,
    num_views: int,
    device: torch.device,
    precision: str = "bf16",
    channels_last: bool = True,
    progress: bool = False,
) -> EvalResult:
    """Multi-view evaluation of ``model`` over a test ``loader`` on this rank, gathered over all ranks.

    Every rank must call it (it gathers); every rank gets the same result.

    Args:
        model: the network, in eval mode, on ``device``.
        loader: a test-split loader (``pipelines.build_loader(cfg, "test", rank=..., world_size=...)``),
            exposing ``records`` and ``failures``.
        num_views: ``cfg.test.num_clips * cfg.test.num_crops``.
        device: where the model runs.
        precision: bf16 | fp16 | fp32 (autocast on CUDA; fp32 on the CPU).
        channels_last: hand the inputs over in ``torch.channels_last_3d``.
        progress: print videos/s and ETA to stderr (on the primary rank).
    """
    start = time.perf_counter()
    records = loader.records
    meter = Progress(len(records), dist_utils.get_world_size(), progress and dist_utils.is_primary())
    local = collect_scores(model, loader, num_views=num_views, device=device, precision=precision,
                           channels_last=channels_last, progress=meter)
    scores, failures = gather_scores(local, getattr(loader, "failures", []))
    indices = np.array(sorted(scores), dtype=np.int64)
    failed = {int(f.get("index", -1)) for f in failures}
    missing = sorted(set(range(len(records))) - set(scores) - failed)
    if indices.size:
        stacked = np.stack([scores[i] for i in indices]).astype(np.float32)
    else:
        stacked = np.zeros((0, 0), np.float32)
    labels = np.array([records[i].label for i in indices], dtype=np.int64)
    return EvalResult(indices, stacked, labels, num_views, len(records), failures, missing,
                      time.perf_counter() - start)


# --------------------------------------------------------------------------------------------------
# Model, weights and outputs
# --------------------------------------------------------------------------------------------------

def own_checkpoint_spec(path: str | os.PathLike) -> Optional[tuple[str, dict]]:
    """``(model_name, model_args)`` when ``path`` is one of this project's checkpoints, else None.

    Other formats (PySlowFast .pyth, pytorchvideo, Caffe2 .pkl, PaddleVideo .pdparams) carry no
    architecture record; the model is then built from ``cfg.model``.
    """
    # torch.save writes a zip archive; Caffe2 .pkl and PaddleVideo .pdparams are bare pickles, and need
    # not be read twice.
    if not zipfile.is_zipfile(path):
        return None
    try:
        # mmap: only the small metadata is read; the tensors stay on disk until load_weights reads them.
        ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception:  # not a torch file this can read: load_weights reports what the file is
        return None
    if isinstance(ckpt, Mapping) and ckpt.get("format") == CHECKPOINT_FORMAT and ckpt.get("model_name"):
        return str(ckpt["model_name"]), dict(ckpt.get("model_args") or {})
    return None


def build_model(cfg: Any, weights: str | os.PathLike) -> tuple[torch.nn.Module, Any]:
    """The network with ``weights`` loaded (strictly), and the :class:`models.LoadReport`.

    Built from the checkpoint's own architecture record when it is one of ours, else from
    ``cfg.model`` (``name``, ``num_classes``, ``args``). ``cfg.model`` is updated to what was built, so the
    saved configuration names the evaluated model.

    Args:
        cfg: resolved configuration (its ``model`` section is read and updated).
        weights: any file :func:`models.load_weights` reads.
    """
    weights = Path(weights)
    if not weights.is_file():
        raise FileNotFoundError(f"weights file {str(weights)!r} does not exist; pass -w with a checkpoint "
                                f"(ours, PySlowFast .pyth, pytorchvideo, Caffe2 .pkl or "
                                f"PaddleVideo .pdparams)")
    spec = own_checkpoint_spec(weights)
    if spec is not None:
        name, arch = spec
        model = model_from_arch(name, arch)
        if name != cfg.model.name or model.arch.num_classes != cfg.model.num_classes:
            LOG.info("[TEST] the checkpoint records model %s with %d classes; using it (config said %s, %d)",
                     name, model.arch.num_classes, cfg.model.name, cfg.model.num_classes)
    else:
        model = create_model(cfg.model.name, num_classes=cfg.model.num_classes, **dict(cfg.model.args or {}))
    report = load_weights(model, str(weights), strict=True)
    cfg.model.name = model.model_name
    cfg.model.num_classes = model.arch.num_classes
    return model, report


def prepare_model(model: torch.nn.Module, device: torch.device, channels_last: bool) -> torch.nn.Module:
    """``model`` on ``device`` in eval mode, in ``torch.channels_last_3d`` if asked (as in training)."""
    model = model.to(device).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    return model


def _atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _finite_or_none(value: float) -> Optional[float]:
    return value if math.isfinite(value) else None


def top_predictions(scores: np.ndarray, num_views: int, class_names: Sequence[str], k: int = TOP_K
                    ) -> list[list[tuple[int, str, float]]]:
    """Per video, the ``k`` best ``(class index, name, mean probability over views)``.

    Args:
        scores: (N, K) summed softmax scores.
        num_views: views summed into each row (the divisor giving mean probabilities).
        class_names: K names.
        k: how many classes per video.
    """
    order = ranked_classes(scores, k)
    return [[(int(c), class_names[c], float(row[c]) / num_views) for c in top]
            for row, top in zip(scores, order)]


def write_outputs(result: EvalResult, records: Sequence, class_names: Sequence[str], cfg: Any,
                  weights: str, output_dir: Path, world_size: int = 1) -> dict:
    """``metrics.json``, ``predictions.jsonl`` and ``config.yaml`` in ``output_dir`` (each atomically).

    Args:
        result: the gathered evaluation.
        records: the loader's records (``result.video_indices`` index them).
        class_names: names of the model's classes.
        cfg: resolved configuration (saved, and copied into metrics.json).
        weights: the weights file evaluated.
        output_dir: where the files go (created if missing).
        world_size: processes that took part.

    Returns:
        The metrics.json content.
    """
    metrics = result.metrics()
    summary = {
        "acc1": _finite_or_none(metrics["acc1"]),
        "acc5": _finite_or_none(metrics["acc5"]),
        "mean_class_acc": _finite_or_none(metrics["mean_class_acc"]),
        "coverage": result.coverage_text(),
        "num_videos": result.num_videos,
        "num_evaluated": result.num_evaluated,
        "num_failed": len(result.failures),
        "failed": [{"path": f.get("path"), "error": f.get("error")} for f in result.failures],
        "num_missing": len(result.missing),
        "missing": [records[i].path for i in result.missing],
        "num_clips": int(cfg.test.num_clips),
        "num_crops": int(cfg.test.num_crops),
        "views_per_video": result.num_views,
        "weights": str(Path(weights).resolve()),
        "model": cfg.model.name,
        "world_size": world_size,
        "seconds": round(result.seconds, 3),
        "videos_per_second": round(result.num_evaluated / result.seconds, 3) if result.seconds > 0 else None,
        "config": cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg),
    }
    _atomic_write(output_dir / "metrics.json", json.dumps(summary, indent=2) + "\n")
    lines = []
    for index, label, top in zip(result.video_indices, result.labels,
                                 top_predictions(result.scores, result.num_views, class_names)):
        lines.append(json.dumps({
            "path": records[index].path,
            "label": int(label),
            "label_name": class_names[label] if 0 <= label < len(class_names) else None,
            "top5": [c for c, _, _ in top],
            "top5_names": [n for _, n, _ in top],
            "top5_scores": [round(s, 6) for _, _, s in top],
        }))
    _atomic_write(output_dir / "predictions.jsonl", "".join(line + "\n" for line in lines))
    save_config(cfg, output_dir)
    return summary


def log_result(result: EvalResult) -> None:
    """The seed's finishing line, then ours: coverage, mean class accuracy, failures, speed."""
    LOG.info("[TEST] finished, avg_acc1= %.4f, avg_acc5= %.4f", result.acc1, result.acc5)
    LOG.info("[TEST] %d views per video: acc1 %.4f, acc5 %.4f, mean class acc %.4f, %s (%d failed to decode, "
             "%d missing); %.1f s, %.2f videos/s", result.num_views, result.acc1, result.acc5,
             result.mean_class_acc, result.coverage_text(), len(result.failures), len(result.missing),
             result.seconds, result.num_evaluated / result.seconds if result.seconds > 0 else 0.0)
    for failure in result.failures:
        LOG.warning("[TEST] could not decode %s: %s", failure.get("path"), failure.get("error"))


# --------------------------------------------------------------------------------------------------
# Prediction on files given on the command line
# --------------------------------------------------------------------------------------------------

def backend_for(codec: str, cfg: Any, cuda: bool) -> tuple[str, str]:
    """``(data.backend, data.device)`` that can decode ``codec`` here: the configured DALI where its decoder
    reads the codec (NVDEC with a GPU, else DALI's CPU decoder: VP8/VP9/MJPEG), PyAV otherwise.

    Args:
        codec: the probed codec name (``pipelines.prepare.probe_video``).
        cfg: resolved configuration (``data.backend``, ``data.device``).
        cuda: whether a CUDA GPU is usable.
    """
    if cfg.data.backend == "dali":
        try:
            import pipelines.dali_loader  # noqa: F401  (DALI importable)
        except ImportError:  # DALI missing: PyAV decodes everything
            return "pyav", cfg.data.device
        if cuda and cfg.data.device == "gpu" and codec in DALI_GPU_CODECS:
            return "dali", "gpu"
        if codec in DALI_CPU_CODECS:
            return "dali", "cpu"
    return "pyav", cfg.data.device


@dataclass
class Prediction:
    """One file's top classes, or why it has none."""

    path: str
    top: list = field(default_factory=list)      # [(class index, name, mean probability)]
    error: Optional[str] = None


def predict_files(model: torch.nn.Module, cfg: Any, paths: Sequence[str], *, device: torch.device,
                  class_names: Sequence[str], progress: bool = False) -> list[Prediction]:
    """Top-5 predictions for video files, with the same multi-view protocol as the evaluation.

    Each file is probed; files are grouped by the backend that can decode their codec here (DALI where
    it can, PyAV otherwise) and run through that backend's test loader. A file that cannot be probed or
    decoded gets an ``error`` instead of predictions; the others are still predicted. Every rank must
    call it; the files are shared out between ranks.

    Args:
        model: prepared (eval mode, on ``device``).
        cfg: resolved configuration (test.*, data.* decide views and preprocessing).
        paths: the video files.
        device: where the model runs.
        class_names: names of the model's classes.
        progress: print videos/s and ETA.
    """
    predictions = [Prediction(str(p)) for p in paths]
    groups: dict[tuple[str, str], list[tuple[int, VideoRecord]]] = {}
    cuda = torch.cuda.is_available()
    for slot, path in enumerate(paths):
        try:
            info = probe_video(path)
        except ProbeError as err:
            predictions[slot].error = str(err)
            continue
        record = VideoRecord(
            path=str(Path(path).resolve()), label=0, num_frames=int(info.get("num_frames") or 0),
            fps=float(info.get("fps") or 0.0), width=int(info.get("width") or 0),
            height=int(info.get("height") or 0), codec=str(info.get("codec") or ""),
            duration=float(info.get("duration") or 0.0), keyframe_interval=info.get("keyframe_interval"))
        groups.setdefault(backend_for(record.codec, cfg, cuda), []).append((slot, record))

    num_views = int(cfg.test.num_clips) * int(cfg.test.num_crops)
    for (backend, data_device), members in sorted(groups.items()):
        group_cfg = copy.deepcopy(cfg)
        group_cfg.data.backend, group_cfg.data.device = backend, data_device
        # Records relative to a common root, so every backend joins root and path the same way.
        root = os.path.commonpath([str(Path(r.path).parent) for _, r in members])
        group_cfg.data.root = root
        records = [VideoRecord(**{**asdict(r), "path": os.path.relpath(r.path, root)}) for _, r in members]
        LOG.info("[TEST] %d file(s) decoded by %s", len(records),
                 "pyav" if backend == "pyav" else f"dali on the {data_device}")
        loader = build_loader(group_cfg, "test", rank=dist_utils.get_rank(),
                              world_size=dist_utils.get_world_size(), alpha=model.arch.alpha, records=records)
        result = evaluate(model, loader, num_views=num_views, device=device, precision=cfg.train.precision,
                          channels_last=bool(cfg.model.channels_last), progress=progress)
        tops = top_predictions(result.scores, num_views, class_names) if result.num_evaluated else []
        for index, top in zip(result.video_indices, tops):
            predictions[members[index][0]].top = top
        for failure in result.failures:
            slot = members[int(failure["index"])][0]
            predictions[slot].error = f"cannot be decoded: {failure.get('error')}"
        for index in result.missing:
            predictions[members[index][0]].error = "was not evaluated (the loader returned no views for it)"
    return predictions


def print_predictions(predictions: Sequence[Prediction], stream=None) -> None:
    stream = stream or sys.stdout
    for prediction in predictions:
        if prediction.error:
            print(f"{prediction.path}: ERROR {prediction.error}", file=stream)
            continue
        print(f"{prediction.path}:", file=stream)
        for rank, (index, name, score) in enumerate(prediction.top, 1):
            print(f"  {rank}. {name} ({index}) {score:.4f}", file=stream)
    stream.flush()


# --------------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="test.py",
        description="Multi-view evaluation (test.num_clips x test.num_crops views per video) of a SlowFast "
                    "model on data.test_list, or top-5 predictions for video files (--video).")
    add_config_args(parser)
    parser.add_argument("-w", "--weights", required=True,
                        help="weights: our checkpoint, PySlowFast .pyth, pytorchvideo, Caffe2 .pkl or "
                             "PaddleVideo .pdparams")
    parser.add_argument("--output-dir", default=None, help="where results go (default: test.output_dir)")
    parser.add_argument("--video", nargs="+", default=None, metavar="FILE",
                        help="predict these files (top-5 classes) instead of evaluating the test list")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="do not print videos/s and ETA to stderr")
    return parser


# Errors in what the user gave (config, list, weights, data); their messages say what to fix, so they are
# printed without a traceback. ValueError also covers models.WeightsError and unknown model names.
USER_ERRORS = (ConfigError, DatasetError, BackendUnavailable, FileNotFoundError, ValueError)


def run_test_list(cfg: Any, model: torch.nn.Module, weights: str, device: torch.device,
                  output_dir: Path, progress: bool) -> EvalResult:
    """Evaluate ``cfg.data.test_list`` on every rank; the primary rank logs and writes the outputs.

    Args:
        cfg: resolved configuration.
        model: prepared (eval mode, on ``device``).
        weights: the weights file (recorded in metrics.json).
        device: where the model runs.
        output_dir: where metrics.json, predictions.jsonl and config.yaml go.
        progress: print videos/s and ETA.
    """
    class_names = read_class_names(cfg.data.class_names, cfg.model.num_classes)
    loader = build_loader(cfg, "test", rank=dist_utils.get_rank(), world_size=dist_utils.get_world_size(),
                          alpha=model.arch.alpha)
    num_views = int(cfg.test.num_clips) * int(cfg.test.num_crops)
    LOG.info("[TEST] %s on %d videos of %s: %d clips x %d crops, %d videos per batch, %d process(es)",
             cfg.model.name, len(loader.records), cfg.data.test_list, cfg.test.num_clips, cfg.test.num_crops,
             cfg.test.batch_size, dist_utils.get_world_size())
    result = evaluate(model, loader, num_views=num_views, device=device, precision=cfg.train.precision,
                      channels_last=bool(cfg.model.channels_last), progress=progress)
    if dist_utils.is_primary():
        log_result(result)
        write_outputs(result, loader.records, class_names, cfg, weights, output_dir,
                      dist_utils.get_world_size())
        LOG.info("[TEST] wrote %s and %s", output_dir / "metrics.json", output_dir / "predictions.jsonl")
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python test.py -c CONFIG -w WEIGHTS [--video FILE ...]``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    info = dist_utils.init_distributed()
    try:
        try:
            cfg = config_from_args(args)
            output_dir = Path(args.output_dir or cfg.test.output_dir)
            setup_logging(info.is_primary, None if args.video else output_dir, name="test")
            for key in ("num_clips", "num_crops", "batch_size"):
                if int(cfg.test[key]) < 1:
                    raise ValueError(f"test.{key}={cfg.test[key]} must be >= 1")
            model, report = build_model(cfg, args.weights)
            LOG.info("[TEST] %s: %s", cfg.model.name, report.summary())
            model = prepare_model(model, info.device, bool(cfg.model.channels_last))
            if args.video:
                class_names = read_class_names(cfg.data.class_names, cfg.model.num_classes)
                predictions = predict_files(model, cfg, args.video, device=info.device,
                                            class_names=class_names, progress=args.progress)
                if info.is_primary:
                    print_predictions(predictions)
                if not any(p.top for p in predictions):
                    print(f"test.py: error: none of the {len(predictions)} file(s) could be predicted "
                          f"(see the ERROR lines above)", file=sys.stderr)
                    return 1
                return 0
            result = run_test_list(cfg, model, args.weights, info.device, output_dir, args.progress)
            return 0 if result.num_evaluated else 1
        except USER_ERRORS as err:
            print(f"test.py: error: {err}", file=sys.stderr)
            return 2
    finally:
        dist_utils.cleanup()
