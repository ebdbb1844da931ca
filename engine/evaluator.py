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

``python test.py`` is the command-line driver; it calls :func:`run_test`. Precision: ``test.precision``
under the project's one policy (:mod:`engine.precision`).
"""
from __future__ import annotations

import copy
import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch

from configs import save_config
from engine import distributed as dist_utils
from engine.meters import setup_logging, topk_correct
from engine.model import build_model, check_data_fits_model, place_model
from engine.precision import Precision, precision_for, to_model_inputs
from pipelines import build_loader
from pipelines.codecs import why_not_decodable
from pipelines.dataset import VideoRecord, read_class_names
from pipelines.preflight import current_arch, preflight_run
from pipelines.probe import ProbeError, probe_video
from utils.atomic import write_text
from utils.progress import Progress

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

@torch.inference_mode()
def collect_scores(
    model: torch.nn.Module,
    loader: Iterable,
    *,
    num_views: int,
    device: torch.device,
    precision: Precision,
    channels_last: bool = True,
    progress: Optional[Progress] = None,
) -> dict[int, np.ndarray]:
    """This rank's ``{video_index: summed softmax scores (K,)}`` over ``loader`` (padding dropped).

    Args:
        model: in eval mode, on ``device``; called as ``model([slow, fast])``.
        loader: yields ``([slow, fast], labels, video_index)`` with ``N * num_views`` views per batch.
        num_views: views per video.
        device: where the model runs.
        precision: the autocast policy (:func:`engine.precision.precision_for` with ``"test"``).
        channels_last: hand the inputs over in ``torch.channels_last_3d``.
        progress: optional progress meter (videos over all ranks), updated after every batch and closed.
    """
    world_size = dist_utils.get_world_size()
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
        inputs = to_model_inputs(inputs, device, channels_last, precision)
        with precision.autocast():
            logits = model(inputs)
        video_scores = aggregate_views(logits, num_views).cpu().numpy()
        for index, row in zip(video_index.tolist(), video_scores):
            if index in scores:
                raise RuntimeError(f"video {index} appeared twice in this rank's test loader")
            scores[index] = row
        if progress is not None:
            # This rank's count times the world size: shards are equal to within one video.
            progress.set(min(local_videos * world_size, progress.total))
    if progress is not None:
        progress.close()
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
    precision: Precision,
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
        precision: the autocast policy (:func:`engine.precision.precision_for` with ``"test"``).
        channels_last: hand the inputs over in ``torch.channels_last_3d``.
        progress: print videos/s and ETA to stderr (on the primary rank).
    """
    start = time.perf_counter()
    records = loader.records
    meter = Progress(len(records), "[TEST]", unit="videos", enabled=progress and dist_utils.is_primary())
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

def prepare_model(model: torch.nn.Module, device: torch.device, channels_last: bool) -> torch.nn.Module:
    """``model`` on ``device`` in eval mode, in ``torch.channels_last_3d`` if asked (as in training)."""
    return place_model(model, device, channels_last).eval()


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
    write_text(output_dir / "metrics.json", json.dumps(summary, indent=2) + "\n")
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
    write_text(output_dir / "predictions.jsonl", "".join(line + "\n" for line in lines))
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

def backend_for(record: VideoRecord, cfg: Any, arch: Optional[str]) -> tuple[str, str]:
    """``(data.backend, data.device)`` that can decode ``record`` here: the configured DALI where its decoder
    reads it (NVDEC on this GPU's generation, per :func:`pipelines.codecs.why_not_decodable`, else DALI's CPU
    decoder: VP8/VP9/MJPEG), PyAV otherwise.

    Args:
        record: the probed file (codec, size, and profile / bit depth / chroma in ``extra``).
        cfg: resolved configuration (``data.backend``, ``data.device``).
        arch: this GPU's NVDEC generation (:func:`pipelines.preflight.current_arch`), None without a GPU.
    """
    if cfg.data.backend == "dali":
        try:
            import pipelines.dali_loader  # noqa: F401  (DALI importable)
        except ImportError:  # DALI missing: PyAV decodes everything
            return "pyav", cfg.data.device
        if arch is not None and cfg.data.device == "gpu" and why_not_decodable(record, "gpu", arch) is None:
            return "dali", "gpu"
        if why_not_decodable(record, "cpu") is None:
            return "dali", "cpu"
    return "pyav", cfg.data.device


@dataclass
class Prediction:
    """One file's top classes, or why it has none."""

    path: str
    top: list = field(default_factory=list)      # [(class index, name, mean probability)]
    error: Optional[str] = None


def predict_files(model: torch.nn.Module, cfg: Any, paths: Sequence[str], *, device: torch.device,
                  precision: Precision, class_names: Sequence[str], progress: bool = False) -> list[Prediction]:
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
        precision: the autocast policy.
        class_names: names of the model's classes.
        progress: print videos/s and ETA.
    """
    predictions = [Prediction(str(p)) for p in paths]
    groups: dict[tuple[str, str], list[tuple[int, VideoRecord]]] = {}
    arch = current_arch(device.index) if device.type == "cuda" else None
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
            duration=float(info.get("duration") or 0.0), keyframe_interval=info.get("keyframe_interval"),
            extra={k: info.get(k) for k in ("profile", "pix_fmt", "bit_depth", "chroma")})
        groups.setdefault(backend_for(record, cfg, arch), []).append((slot, record))

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
        result = evaluate(model, loader, num_views=num_views, device=device, precision=precision,
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
# A whole test run
# --------------------------------------------------------------------------------------------------

def run_test_list(cfg: Any, model: torch.nn.Module, weights: str, device: torch.device, precision: Precision,
                  output_dir: Path, progress: bool) -> EvalResult:
    """Evaluate ``cfg.data.test_list`` on every rank; the primary rank logs and writes the outputs.

    Args:
        cfg: resolved configuration.
        model: prepared (eval mode, on ``device``).
        weights: the weights file (recorded in metrics.json).
        device: where the model runs.
        precision: the autocast policy.
        output_dir: where metrics.json, predictions.jsonl and config.yaml go.
        progress: print videos/s and ETA.
    """
    class_names = read_class_names(cfg.data.class_names, cfg.model.num_classes)
    loader = build_loader(cfg, "test", rank=dist_utils.get_rank(), world_size=dist_utils.get_world_size(),
                          alpha=model.arch.alpha)
    num_views = int(cfg.test.num_clips) * int(cfg.test.num_crops)
    LOG.info("[TEST] %s on %d videos of %s: %d clips x %d crops, %d videos per batch, %d process(es), %s",
             cfg.model.name, len(loader.records), cfg.data.test_list, cfg.test.num_clips, cfg.test.num_crops,
             cfg.test.batch_size, dist_utils.get_world_size(), precision.name)
    result = evaluate(model, loader, num_views=num_views, device=device, precision=precision,
                      channels_last=bool(cfg.model.channels_last), progress=progress)
    if dist_utils.is_primary():
        log_result(result)
        write_outputs(result, loader.records, class_names, cfg, weights, output_dir,
                      dist_utils.get_world_size())
        LOG.info("[TEST] wrote %s and %s", output_dir / "metrics.json", output_dir / "predictions.jsonl")
    return result


def run_test(cfg: Any, weights: str, *, videos: Optional[Sequence[str]] = None,
             output_dir: Optional[str | os.PathLike] = None, progress: bool = True,
             explicit_keys: Iterable[str] = frozenset()) -> int:
    """One process's test run: the multi-view evaluation of ``data.test_list``, or top-5 predictions for
    ``videos``. Every rank of a torchrun job calls it.

    Args:
        cfg: resolved configuration (its ``model`` section is updated to a checkpoint's own model).
        weights: the weights file (``-w``), any format :func:`models.load_weights` reads.
        videos: files to predict instead of the test list (``--video``).
        output_dir: where the list evaluation's outputs go (default ``test.output_dir``).
        progress: print videos/s and ETA to stderr.
        explicit_keys: configuration keys given on the command line (for the precision policy).

    Returns:
        The exit status: 0, or 1 when no video could be evaluated (or predicted).
    """
    info = dist_utils.init_distributed()
    try:
        output_dir = Path(output_dir or cfg.test.output_dir)
        setup_logging(info.is_primary, None if videos else output_dir, name="test")
        if not videos:  # --video picks a decoder per file (backend_for)
            preflight_run(cfg, info.device.index, decode_check=info.local_rank == 0)
        model = build_model(cfg, info.device, weights, arch_from_checkpoint=True).eval()
        check_data_fits_model(cfg, model)
        precision = precision_for(cfg, "test", info.device, explicit_keys)
        if videos:
            class_names = read_class_names(cfg.data.class_names, cfg.model.num_classes)
            predictions = predict_files(model, cfg, videos, device=info.device, precision=precision,
                                        class_names=class_names, progress=progress)
            if info.is_primary:
                print_predictions(predictions)
            if not any(p.top for p in predictions):
                print(f"error: none of the {len(predictions)} file(s) could be predicted (see the ERROR lines "
                      f"above)", file=sys.stderr)
                return 1
            return 0
        result = run_test_list(cfg, model, str(weights), info.device, precision, output_dir, progress)
        return 0 if result.num_evaluated else 1
    finally:
        dist_utils.cleanup()
