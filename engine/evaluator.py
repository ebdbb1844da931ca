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
ranks. A video evaluated twice is an error. Coverage is counted against the whole list
(``loader.records`` holds every listed video): each video is evaluated or reported as failed with its
reason, and the metrics say over how many of the list's videos they were computed.

Non-finite scores (NaN or Inf, e.g. from a checkpoint of a diverged run) stop the run with a
:class:`NonFiniteOutputs` user error before anything is written, so earlier results in the output folder
stay as they were.

Outputs of a list evaluation (:func:`write_outputs`): ``metrics.json``, ``predictions.jsonl``,
``per_class_accuracy.csv``, ``confusion_matrix.csv``, ``confusion_matrix.png`` (when matplotlib is
installed) and ``config.yaml``; optionally a score dump (:func:`save_scores`, ``--save-scores``) that
:func:`combine_scores` ensembles with another, and a feature dump (:func:`save_features`, ``--save-features``):
the pooled pre-classifier features (``SlowFast.features``) averaged over the views, taken in the same forward
pass as the scores. Where they go: :func:`resolve_output_dir`.

``python test.py`` is the command-line driver; it calls :func:`load_test_config` and :func:`run_test`.
Precision: ``test.precision`` under the project's one policy (:mod:`engine.precision`).
"""
from __future__ import annotations

import copy
import csv
import glob
import io
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

from configs import load_config, save_config
from engine import distributed as dist_utils
from engine.checkpoint import read_model_spec, saved_config
from engine.meters import setup_logging, topk_correct
from engine.model import build_model, check_data_fits_model, loader_inputs, place_model
from engine.precision import Precision, precision_for, to_model_inputs
from pipelines import build_loader
from pipelines.base import regular_file_error
from pipelines.codecs import why_not_decodable
from pipelines.dataset import VideoRecord, read_class_names
from pipelines.preflight import current_arch, preflight_run
from pipelines.prepare import VIDEO_SUFFIXES
from pipelines.probe import ProbeError, probe_video
from utils.atomic import atomic_open, atomic_path, write_text
from utils.errors import UserError
from utils.progress import Progress, format_duration

LOG = logging.getLogger("slowfast.test")
TOP_K = 5
WORST_CLASSES_LOGGED = 10
# confusion_matrix.png: every class gets a tick label up to this many classes; beyond, every n-th one
MAX_TICK_LABELS = 50
# ... and each cell shows its count up to this many classes
MAX_CELL_TEXT = 20
VIDEOS_SUBDIR = "videos"  # --video results, inside the default test folder (never over a list evaluation's)


class NonFiniteOutputs(UserError, RuntimeError):
    """The model gave NaN or Inf scores; the message names the weights, a video and the fix.

    ``video_indices`` are the record indices (of the loader's ``records``) whose scores were not finite.
    """

    def __init__(self, message: str, video_indices: Sequence[int] = ()) -> None:
        super().__init__(message)
        self.video_indices = [int(i) for i in video_indices]


class ScoreDumpError(UserError, ValueError):
    """A score dump (``--save-scores``) that cannot be read or combined; the message says which and why."""


# --------------------------------------------------------------------------------------------------
# Pure functions: aggregation and metrics
# --------------------------------------------------------------------------------------------------

ENSEMBLES = ("sum", "max")


def aggregate_views(view_logits: torch.Tensor, num_views: int, method: str = "sum") -> torch.Tensor:
    """Per-video ensemble of the per-view softmax scores (PySlowFast's ``TEST.ENSEMBLE_METHOD``).

    Args:
        view_logits: (N * V, K) logits, video-major (the V views of video 0 first), as the test loader
            lays them out.
        num_views: V, views per video (``num_clips * num_crops``).
        method: ``sum`` (the reference default: the views' softmax summed) or ``max`` (per class, the largest
            softmax over the views; returned times V, so that dividing by V gives it, as for ``sum``).

    Returns:
        (N, K) float32 scores: V times the ensembled per-view probabilities (for ``sum`` each row sums to V).
    """
    if method not in ENSEMBLES:
        raise ValueError(f"test.ensemble={method!r} is unknown; choose one of {ENSEMBLES}")
    if num_views < 1:
        raise ValueError(f"num_views={num_views} must be >= 1")
    if view_logits.dim() != 2 or view_logits.shape[0] % num_views:
        raise ValueError(f"view_logits of shape {tuple(view_logits.shape)} is not (N * {num_views}, K): "
                         f"the batch must hold whole videos of num_views={num_views} views each")
    probs = torch.softmax(view_logits.float(), dim=1).view(-1, num_views, view_logits.shape[1])
    if method == "max":
        return probs.amax(dim=1) * num_views
    return probs.sum(dim=1)


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


def per_class_accuracy(scores: np.ndarray, labels: np.ndarray, num_classes: int) -> list[dict]:
    """Top-1 accuracy of every class, in class order.

    Args:
        scores: (N, K) per-video scores.
        labels: (N,) integer labels.
        num_classes: K (classes without videos get a row too, with ``videos == 0`` and accuracy NaN).

    Returns:
        ``[{"index", "videos", "correct", "accuracy"}, ...]``, one per class.
    """
    scores, labels = np.asarray(scores), np.asarray(labels, dtype=np.int64)
    predicted = ranked_classes(scores, 1)[:, 0] if len(labels) else np.zeros(0, np.int64)
    videos = np.bincount(labels, minlength=num_classes)[:num_classes]
    correct = np.bincount(labels[predicted == labels], minlength=num_classes)[:num_classes]
    return [{"index": c, "videos": int(videos[c]), "correct": int(correct[c]),
             "accuracy": float(correct[c] / videos[c]) if videos[c] else float("nan")}
            for c in range(num_classes)]


def worst_classes(rows: Sequence[Mapping], limit: int = WORST_CLASSES_LOGGED) -> list[Mapping]:
    """The classes with videos, lowest top-1 accuracy first (more videos first among equals, then by index)."""
    present = [r for r in rows if r["videos"]]
    return sorted(present, key=lambda r: (r["accuracy"], -r["videos"], r["index"]))[:limit]


def confusion_matrix(scores: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) int64 counts: row = true class, column = top-1 predicted class."""
    scores, labels = np.asarray(scores), np.asarray(labels, dtype=np.int64)
    matrix = np.zeros((num_classes, num_classes), np.int64)
    if len(labels):
        np.add.at(matrix, (labels, ranked_classes(scores, 1)[:, 0]), 1)
    return matrix


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
    features: Optional[dict[int, np.ndarray]] = None,
    ensemble: str = "sum",
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
        features: when given, filled with ``{video_index: mean over the views of model.features (C,)}`` (float32),
            taken from the same forward pass as the scores (``model.scores_and_features``).

    Raises:
        NonFiniteOutputs: in a single-process run, at the first batch with a non-finite score (a run of
            several processes keeps going, so that no rank waits forever for another: :func:`evaluate`
            checks the gathered scores).
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
            if features is None:
                logits = model(inputs)
            else:
                logits, view_features = model.scores_and_features(inputs)  # (V*N, K), (V*N, C)
        if features is not None:
            pooled = view_features.float().reshape(len(video_index), num_views, -1).mean(dim=1)  # (N, C)
            for index, row in zip(video_index.tolist(), pooled.cpu().numpy()):
                features[index] = row
        video_scores = aggregate_views(logits, num_views, ensemble).cpu().numpy()
        finite = np.isfinite(video_scores).all(axis=1)
        if world_size == 1 and not finite.all():
            raise NonFiniteOutputs("non-finite scores", video_index[~torch.from_numpy(finite)].tolist())
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


def non_finite_error(weights: Optional[str], paths: Sequence[str], precision: Precision,
                     video_indices: Sequence[int] = ()) -> NonFiniteOutputs:
    """The one-line error for non-finite scores: which weights, how many videos (``paths``), which fix."""
    source = f"the weights {str(weights)!r}" if weights else "the model"
    fix = ("use a checkpoint saved before the run diverged (an earlier <run>_epoch_*.pt, or best.pt) or retrain")
    if precision.name != "fp32":
        fix = f"evaluate in fp32 (-o test.precision=fp32) in case {precision.name} overflows, or {fix}"
    return NonFiniteOutputs(
        f"{source} give non-finite scores (NaN or Inf) for {len(paths)} video(s) (first: {paths[0]!r}) under "
        f"{precision.name}; nothing was written: {fix}", video_indices)


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
    features: Optional[np.ndarray] = None                # (M, C) float32, mean over the views (when asked)

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

    @property
    def videos_per_second(self) -> float:
        return self.num_evaluated / self.seconds if self.seconds > 0 else 0.0

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
    weights: Optional[str] = None,
    with_features: bool = False,
    ensemble: str = "sum",
) -> EvalResult:
    """Multi-view evaluation of ``model`` over a test ``loader`` on this rank, gathered over all ranks.

    Every rank must call it (it gathers); every rank gets the same result.

    Args:
        model: the network, in eval mode, on ``device``.
        loader: a test-split loader (``pipelines.build_loader(cfg, "test", rank=..., world_size=...)``),
            exposing ``records`` (every video of the list) and ``failures``.
        num_views: ``cfg.test.num_clips * cfg.test.num_crops``.
        device: where the model runs.
        precision: the autocast policy (:func:`engine.precision.precision_for` with ``"test"``).
        channels_last: hand the inputs over in ``torch.channels_last_3d``.
        progress: print videos/s and ETA to stderr (on the primary rank).
        weights: the weights file, named in the error about non-finite scores.
        with_features: also gather the per-video features (:attr:`EvalResult.features`; the model must have
            ``scores_and_features``, as :class:`models.slowfast.SlowFast` does).
        ensemble: how the views' softmax scores combine (``test.ensemble``; :func:`aggregate_views`).

    Raises:
        NonFiniteOutputs: a video's scores hold NaN or Inf (on every rank alike).
    """
    if with_features and not hasattr(model, "scores_and_features"):
        raise UserError(f"--save-features: the model {type(model).__name__} has no scores_and_features(); "
                        f"features are defined for the SlowFast family (models/slowfast.py)")
    start = time.perf_counter()
    local_features: Optional[dict[int, np.ndarray]] = {} if with_features else None
    records = loader.records
    meter = Progress(len(records), "[TEST]", unit="videos", enabled=progress and dist_utils.is_primary())
    try:
        local = collect_scores(model, loader, num_views=num_views, device=device, precision=precision,
                               channels_last=channels_last, progress=meter, features=local_features,
                               ensemble=ensemble)
    except NonFiniteOutputs as err:
        raise non_finite_error(weights, [records[i].path for i in err.video_indices], precision,
                               err.video_indices) from None
    scores, failures = gather_scores(local, getattr(loader, "failures", []))
    non_finite = [i for i in sorted(scores) if not np.isfinite(scores[i]).all()]
    if non_finite:
        raise non_finite_error(weights, [records[i].path for i in non_finite], precision, non_finite)
    indices = np.array(sorted(scores), dtype=np.int64)
    failed = {int(f.get("index", -1)) for f in failures}
    missing = sorted(set(range(len(records))) - set(scores) - failed)
    if indices.size:
        stacked = np.stack([scores[i] for i in indices]).astype(np.float32)
    else:
        stacked = np.zeros((0, 0), np.float32)
    labels = np.array([records[i].label for i in indices], dtype=np.int64)
    features = None
    if local_features is not None:
        merged: dict[int, np.ndarray] = {}
        for part in dist_utils.all_gather_object(local_features):
            merged.update(part)
        features = (np.stack([merged[i] for i in indices]).astype(np.float32) if indices.size
                    else np.zeros((0, 0), np.float32))
    return EvalResult(indices, stacked, labels, num_views, len(records), failures, missing,
                      time.perf_counter() - start, features)


# --------------------------------------------------------------------------------------------------
# Score dumps (--save-scores) and their ensemble
# --------------------------------------------------------------------------------------------------

def save_scores(path: str | os.PathLike, scores: np.ndarray, labels: Sequence[int], paths: Sequence[str],
                class_names: Sequence[str] = ()) -> Path:
    """Write a score dump: an ``.npz`` readable with numpy alone (``np.load(path)``; no pickle).

    Arrays: ``scores`` (videos x classes, float32: the mean softmax over the views), ``labels`` (int64; -1
    where unknown, as for ``--video``), ``paths`` (unicode strings) and ``class_names`` (unicode strings).

    Args:
        path: the file (written atomically, as given: no suffix is added).
        scores: (N, K) mean probabilities.
        labels: N labels.
        paths: N video paths (as the list names them, or as given to ``--video``).
        class_names: K names (may be empty).
    """
    return _save_per_video(path, "scores", scores, labels, paths,
                           class_names=np.array([str(n) for n in class_names], dtype=str))


def save_features(path: str | os.PathLike, features: np.ndarray, labels: Sequence[int], paths: Sequence[str]
                  ) -> Path:
    """Write a feature dump: an ``.npz`` readable with numpy alone (``np.load(path, allow_pickle=False)``).

    Arrays: ``features`` (videos x C, float32: the pooled pre-classifier features of ``SlowFast.features``, the
    global average pool of each pathway's res5 output concatenated, slow first: C = 2048 + 256 = 2304 for R50;
    averaged over the views), ``labels`` (int64; -1 for ``--video``) and ``paths`` (unicode strings), one row
    per video in the order of ``predictions.jsonl``.

    Args:
        path: the file (written atomically, as given: no suffix is added).
        features: (N, C).
        labels: N labels.
        paths: N video paths.
    """
    return _save_per_video(path, "features", features, labels, paths)


def _save_per_video(path: str | os.PathLike, name: str, rows: np.ndarray, labels: Sequence[int],
                    paths: Sequence[str], **extra: np.ndarray) -> Path:
    """One ``.npz`` of per-video rows (float32 ``name``), ``labels`` (int64), ``paths`` (unicode), no pickle."""
    rows = np.asarray(rows, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    names = np.array([str(p) for p in paths], dtype=str)
    if rows.ndim != 2 or not len(rows) == len(labels) == len(names):
        raise ValueError(f"{name} {rows.shape}, {len(labels)} labels and {len(names)} paths do not match")
    with atomic_open(path, "wb") as handle:
        np.savez(handle, **{name: rows}, labels=labels, paths=names, **extra)
    return Path(path)


def load_scores(source: str | os.PathLike | Mapping) -> dict[str, np.ndarray]:
    """A score dump as ``{"scores", "labels", "paths", "class_names"}`` (a mapping passes through, checked).

    Raises:
        ScoreDumpError: the file cannot be read, or lacks an array.
    """
    if isinstance(source, Mapping):
        data, name = dict(source), "the given scores"
    else:
        name = repr(str(source))
        try:
            with np.load(source, allow_pickle=False) as npz:
                data = {key: npz[key] for key in npz.files}
        except (OSError, ValueError, EOFError) as err:
            raise ScoreDumpError(f"score dump {name} cannot be read ({err}); write one with "
                                 f"`python test.py ... --save-scores FILE.npz`") from None
    lacking = [key for key in ("scores", "labels", "paths") if key not in data]
    if lacking:
        raise ScoreDumpError(f"score dump {name} has no {', '.join(lacking)} array(s); write one with "
                             f"`python test.py ... --save-scores FILE.npz`")
    data.setdefault("class_names", np.array([], dtype=str))
    data["scores"] = np.asarray(data["scores"], dtype=np.float64)
    data["labels"] = np.asarray(data["labels"], dtype=np.int64)
    data["paths"] = np.asarray(data["paths"]).astype(str)
    return data


def combine_scores(a_npz: str | os.PathLike | Mapping, b_npz: str | os.PathLike | Mapping,
                   weights: tuple[float, float] = (0.5, 0.5)) -> dict[str, np.ndarray]:
    """Ensemble two score dumps of the same videos: ``weights[0] * a + weights[1] * b`` per video.

    Videos are matched by path (the dumps may list them in different orders; the result follows ``a``).
    Use it to combine two models, or two test protocols of one model::

        combined = combine_scores("slowfast_4x16.npz", "slowfast_8x8.npz", weights=(0.4, 0.6))
        top1 = (combined["scores"].argmax(1) == combined["labels"]).mean()

    Args:
        a_npz, b_npz: dumps written by ``test.py --save-scores`` (paths, or mappings of their arrays).
        weights: the two dumps' weights (finite, not both zero; they are used as given, not normalised).

    Returns:
        ``{"scores": (N, K) float64, "labels": (N,), "paths": (N,), "class_names": (K,) or empty}``.

    Raises:
        ScoreDumpError: the dumps hold different videos, class counts, labels or class names.
    """
    if len(weights) != 2 or not all(math.isfinite(float(w)) for w in weights) or not any(weights):
        raise ScoreDumpError(f"weights={tuple(weights)!r}: give two finite numbers, not both zero, e.g. (0.5, 0.5)")
    a, b = load_scores(a_npz), load_scores(b_npz)
    a_paths, b_paths = a["paths"].tolist(), b["paths"].tolist()
    for name, paths in (("first", a_paths), ("second", b_paths)):
        if len(set(paths)) != len(paths):
            raise ScoreDumpError(f"the {name} score dump lists a video twice; dumps come from one test run each")
    if set(a_paths) != set(b_paths):
        only_a, only_b = sorted(set(a_paths) - set(b_paths)), sorted(set(b_paths) - set(a_paths))
        example = f"{only_a[0]!r} only in the first" if only_a else f"{only_b[0]!r} only in the second"
        raise ScoreDumpError(
            f"the score dumps hold different videos ({len(a_paths)} and {len(b_paths)} paths, {len(only_a)} only in "
            f"the first and {len(only_b)} only in the second, e.g. {example}); dump the same list with both runs")
    if a["scores"].shape[1:] != b["scores"].shape[1:]:
        raise ScoreDumpError(f"the score dumps have {a['scores'].shape[1:]} and {b['scores'].shape[1:]} classes; "
                             f"only models of the same classes can be combined")
    if len(a["class_names"]) and len(b["class_names"]) and a["class_names"].tolist() != b["class_names"].tolist():
        raise ScoreDumpError("the score dumps name their classes differently; only models of the same classes "
                             "(in the same order) can be combined")
    order = np.array([b_paths.index(p) for p in a_paths], dtype=np.int64) if a_paths else np.zeros(0, np.int64)
    b_labels = b["labels"][order]
    if np.any((a["labels"] != b_labels) & (a["labels"] >= 0) & (b_labels >= 0)):
        first = int(np.flatnonzero(a["labels"] != b_labels)[0])
        raise ScoreDumpError(f"the score dumps label {a_paths[first]!r} differently ({int(a['labels'][first])} and "
                             f"{int(b_labels[first])}); dump the same list with both runs")
    labels = np.where(a["labels"] >= 0, a["labels"], b_labels)
    scores = float(weights[0]) * a["scores"] + float(weights[1]) * b["scores"][order]
    names = a["class_names"] if len(a["class_names"]) else b["class_names"]
    return {"scores": scores, "labels": labels, "paths": a["paths"], "class_names": names}


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


def _csv_text(rows: Iterable[Sequence]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def write_per_class_csv(path: str | os.PathLike, rows: Sequence[Mapping], class_names: Sequence[str]) -> Path:
    """``per_class_accuracy.csv``: ``index,name,videos,top1_correct,accuracy``, one row per class in class order
    (accuracy with 6 decimals; empty for a class without videos)."""
    table = [("index", "name", "videos", "top1_correct", "accuracy")]
    table += [(r["index"], class_names[r["index"]], r["videos"], r["correct"],
               f"{r['accuracy']:.6f}" if r["videos"] else "") for r in rows]
    return write_text(path, _csv_text(table))


def write_confusion_csv(path: str | os.PathLike, matrix: np.ndarray, class_names: Sequence[str]) -> Path:
    """``confusion_matrix.csv``: a header ``true_index,true_name,<name of predicted class 0>,...``, then one row
    per true class: its index, its name and the counts of videos predicted (top-1) as each class."""
    table = [("true_index", "true_name", *class_names)]
    table += [(i, class_names[i], *row.tolist()) for i, row in enumerate(np.asarray(matrix))]
    return write_text(path, _csv_text(table))


def plot_confusion_matrix(path: str | os.PathLike, matrix: np.ndarray, class_names: Sequence[str]
                          ) -> Optional[Path]:
    """``confusion_matrix.png``: the row-normalised matrix (each true class's videos sum to 1), matplotlib Agg.

    Readable from a few classes to Kinetics' 400: every class is labelled up to ``MAX_TICK_LABELS`` classes
    (beyond, every n-th, so that about that many labels show), cells show their counts up to
    ``MAX_CELL_TEXT`` classes, and the figure grows with the class count up to 24 inches.

    Returns:
        The path, or None when matplotlib is not installed (logged once; the CSV has the same numbers).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        LOG.info("[TEST] matplotlib is not installed: confusion_matrix.png skipped (confusion_matrix.csv has the "
                 "counts; `pip install matplotlib` for the picture)")
        return None
    matrix = np.asarray(matrix)
    k = len(matrix)
    totals = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
    side = min(max(7.0, 2.5 + 0.2 * min(k, MAX_TICK_LABELS) + 0.02 * max(k - MAX_TICK_LABELS, 0)), 24.0)
    figure = Figure(figsize=(side + 1.5, side), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest", aspect="equal")
    step = max(1, math.ceil(k / MAX_TICK_LABELS))
    ticks = np.arange(0, k, step)
    font = 8 if k <= 30 else 6
    axes.set_xticks(ticks, [class_names[i] for i in ticks], rotation=90, fontsize=font)
    axes.set_yticks(ticks, [class_names[i] for i in ticks], fontsize=font)
    axes.set_xlabel("predicted class (top-1)" + (f", every {step}th labelled" if step > 1 else ""))
    axes.set_ylabel("true class" + (f", every {step}th labelled" if step > 1 else ""))
    axes.set_title(f"confusion matrix, rows normalised\n{k} classes, {int(matrix.sum())} videos")
    if k <= MAX_CELL_TEXT:
        for (row, col), count in np.ndenumerate(matrix):
            if count:
                axes.text(col, row, str(count), ha="center", va="center", fontsize=font,
                          color="white" if normalised[row, col] > 0.5 else "black")
    figure.colorbar(image, ax=axes, shrink=0.8, label="fraction of the true class's videos")
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    return Path(path)


def write_outputs(result: EvalResult, records: Sequence, class_names: Sequence[str], cfg: Any,
                  weights: str, output_dir: Path, world_size: int = 1,
                  extra_files: Sequence[str | os.PathLike] = ()) -> dict:
    """The list evaluation's files in ``output_dir`` (each atomically; the folder is created if missing):
    ``metrics.json``, ``predictions.jsonl``, ``per_class_accuracy.csv``, ``confusion_matrix.csv``,
    ``confusion_matrix.png`` (without matplotlib: skipped, with a log line) and ``config.yaml``.

    Args:
        result: the gathered evaluation.
        records: the loader's records (``result.video_indices`` index them).
        class_names: names of the model's classes.
        cfg: resolved configuration (saved, and copied into metrics.json).
        weights: the weights file evaluated.
        output_dir: where the files go.
        world_size: processes that took part.
        extra_files: other files this run wrote (a score dump), listed in metrics.json's ``files``.

    Returns:
        The metrics.json content (its ``files`` lists every file written, metrics.json included).
    """
    num_classes = len(class_names)
    metrics = result.metrics()
    per_class = per_class_accuracy(result.scores, result.labels, num_classes)
    matrix = confusion_matrix(result.scores, result.labels, num_classes)
    files = [output_dir / "predictions.jsonl", output_dir / "per_class_accuracy.csv",
             output_dir / "confusion_matrix.csv"]
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
    write_text(files[0], "".join(line + "\n" for line in lines))
    write_per_class_csv(files[1], per_class, class_names)
    write_confusion_csv(files[2], matrix, class_names)
    picture = plot_confusion_matrix(output_dir / "confusion_matrix.png", matrix, class_names)
    if picture is not None:
        files.append(picture)
    files.append(save_config(cfg, output_dir))
    files += [Path(f) for f in extra_files] + [output_dir / "metrics.json"]
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
        "videos_per_second": round(result.videos_per_second, 3) if result.seconds > 0 else None,
        "worst_classes": [{"index": r["index"], "name": class_names[r["index"]], "videos": r["videos"],
                           "top1_correct": r["correct"], "accuracy": r["accuracy"]}
                          for r in worst_classes(per_class)],
        "files": [str(f) for f in files],
        "config": cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg),
    }
    # metrics.json last: its presence says the other files of this run are complete
    write_text(output_dir / "metrics.json", json.dumps(summary, indent=2) + "\n")
    return summary


def log_result(result: EvalResult, class_names: Sequence[str]) -> None:
    """Right after the evaluation: the seed's finishing line, the failures and the worst classes."""
    LOG.info("[TEST] finished, avg_acc1= %.4f, avg_acc5= %.4f", result.acc1, result.acc5)
    for failure in result.failures:
        LOG.warning("[TEST] could not decode %s: %s", failure.get("path"), failure.get("error"))
    worst = worst_classes(per_class_accuracy(result.scores, result.labels, len(class_names)))
    if worst:
        LOG.info("[TEST] worst classes (top-1): %s", "; ".join(
            f"{class_names[r['index']]} ({r['index']}) {r['correct']}/{r['videos']} = {100 * r['accuracy']:.1f}%"
            for r in worst))


def log_summary(result: EvalResult, files: Sequence[str | os.PathLike], records: Sequence) -> None:
    """The end of a list evaluation: accuracy, coverage, failures, speed and the files written."""
    LOG.info("[TEST] summary ------------------------------------------------------------")
    LOG.info("[TEST]   accuracy: top-1 %.4f, top-5 %.4f, mean class accuracy %.4f (%d views per video)",
             result.acc1, result.acc5, result.mean_class_acc, result.num_views)
    LOG.info("[TEST]   coverage: %s (%d failed, %d missing)", result.coverage_text(), len(result.failures),
             len(result.missing))
    for failure in result.failures:
        LOG.info("[TEST]   failed: %s: %s", failure.get("path"), failure.get("error"))
    for index in result.missing:
        LOG.info("[TEST]   missing: %s (the loader returned no views for it)", records[index].path)
    LOG.info("[TEST]   speed: %.2f videos/s (%d videos in %s)", result.videos_per_second, result.num_evaluated,
             format_duration(result.seconds))
    LOG.info("[TEST]   files: %s", ", ".join(str(f) for f in files))


# --------------------------------------------------------------------------------------------------
# Prediction on files given on the command line
# --------------------------------------------------------------------------------------------------

def _videos_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")
                  if p.suffix.lower() in VIDEO_SUFFIXES and not p.name.startswith(".") and p.is_file())


def expand_video_inputs(inputs: Sequence[str]) -> list[tuple[str, Optional[str]]]:
    """``--video`` arguments as ``(path, error)`` pairs in order, each file once (``error`` None for a file
    to predict).

    - a folder: every video file inside it, recursively, chosen by suffix (``pipelines.prepare.VIDEO_SUFFIXES``),
      sorted; a folder without any is one error row;
    - a pattern with ``*``, ``?`` or ``[`` that is not an existing path: expanded here (``**`` spans folders),
      so it works quoted on the shell and on systems whose shell does not expand it; matched folders are
      searched as above, matched files kept when their suffix is a video's; no match is one error row;
    - anything else: that file, whatever its suffix; a missing path or one that is not a regular file (a
      FIFO, a device) is an error row (it is never opened: reading a FIFO would block).

    A file reached twice (named and inside a folder, say) is predicted once, where it first appears.
    """
    suffixes = ", ".join(sorted(VIDEO_SUFFIXES))
    expanded: list[tuple[str, Optional[str]]] = []
    seen: set[str] = set()

    def add(path: str, error: Optional[str] = None) -> None:
        key = os.path.realpath(path) if error is None else f"\0{path}"
        if key not in seen:
            seen.add(key)
            expanded.append((path, error))

    for text in inputs:
        path = Path(text)
        if path.is_dir():
            found = _videos_in(path)
            if not found:
                add(text, f"the folder holds no video files (suffixes {suffixes})")
            for video in found:
                add(str(video))
        elif not os.path.lexists(text) and any(char in text for char in "*?["):
            found = []
            for match in sorted(glob.glob(text, recursive=True)):
                if os.path.isdir(match):
                    found.extend(_videos_in(Path(match)))
                elif Path(match).suffix.lower() in VIDEO_SUFFIXES and os.path.isfile(match):
                    found.append(Path(match))
            if not found:
                add(text, f"the pattern matches no video file (suffixes {suffixes}); check it, and quote it on "
                          f"the shell")
            for video in found:
                add(str(video))
        else:
            add(text, regular_file_error(text))
    return expanded


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
    probabilities: Optional[np.ndarray] = None   # (K,) mean softmax over the views
    features: Optional[np.ndarray] = None        # (C,) mean pooled features over the views (when asked)

    def to_json(self) -> dict:
        if self.error:
            return {"path": self.path, "error": self.error, "top": []}
        return {"path": self.path, "error": None,
                "top": [{"index": c, "name": n, "probability": round(p, 6)} for c, n, p in self.top]}


def predict_files(model: torch.nn.Module, cfg: Any, paths: Sequence[str], *, device: torch.device,
                  precision: Precision, class_names: Sequence[str], progress: bool = False, top_k: int = TOP_K,
                  weights: Optional[str] = None, with_features: bool = False) -> list[Prediction]:
    """Top-k predictions for video files, with the same multi-view protocol as the evaluation.

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
        top_k: classes per file (at most the class count).
        weights: the weights file, named in the error about non-finite scores.
        with_features: also fill each prediction's ``features`` (:func:`evaluate`).
    """
    predictions = [Prediction(str(p)) for p in paths]
    groups: dict[tuple[str, str], list[tuple[int, VideoRecord]]] = {}
    arch = current_arch(device.index) if device.type == "cuda" else None
    for slot, path in enumerate(paths):
        not_regular = regular_file_error(path)
        if not_regular:
            predictions[slot].error = not_regular
            continue
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
                              world_size=dist_utils.get_world_size(), records=records, **loader_inputs(model))
        try:
            result = evaluate(model, loader, num_views=num_views, device=device, precision=precision,
                              channels_last=bool(cfg.model.channels_last), progress=progress, weights=weights,
                              with_features=with_features, ensemble=str(cfg.test.ensemble))
        except NonFiniteOutputs as err:  # name the files as the user gave them, not relative to the group's root
            paths = [predictions[members[i][0]].path for i in err.video_indices]
            raise non_finite_error(weights, paths, precision, err.video_indices) from None
        finally:
            loader.close()  # DALI: this group's pipeline is freed before the next group builds its own
        tops = top_predictions(result.scores, num_views, class_names, top_k) if result.num_evaluated else []
        for index, top, row in zip(result.video_indices, tops, result.scores):
            predictions[members[index][0]].top = top
            predictions[members[index][0]].probabilities = row / num_views
        if result.features is not None:
            for index, row in zip(result.video_indices, result.features):
                predictions[members[index][0]].features = row
        for failure in result.failures:
            slot = members[int(failure["index"])][0]
            predictions[slot].error = f"cannot be decoded: {failure.get('error')}"
        for index in result.missing:
            predictions[members[index][0]].error = "was not evaluated (the loader returned no views for it)"
    return predictions


def format_predictions_table(predictions: Sequence[Prediction]) -> str:
    """An aligned table: a header, then per file its top classes (rank, class index, name, probability; the
    file named on its first row), or one ``ERROR: reason`` row."""
    header = ("file", "rank", "index", "class", "probability")
    rows: list[tuple[str, ...]] = []
    for prediction in predictions:
        for rank, (index, name, probability) in enumerate(prediction.top, 1):
            rows.append((prediction.path if rank == 1 else "", str(rank), str(index), name, f"{probability:.4f}"))
    widths = [max([len(header[i])] + [len(r[i]) for r in rows]) for i in range(len(header))]
    widths[0] = max([widths[0]] + [len(p.path) for p in predictions])

    def line(cells: Sequence[str]) -> str:
        path, rank, index, name, probability = cells
        return (f"{path:<{widths[0]}}  {rank:>{widths[1]}}  {index:>{widths[2]}}  {name:<{widths[3]}}  "
                f"{probability:>{widths[4]}}").rstrip()

    lines = [line(header)]
    for prediction in predictions:
        if prediction.error:
            lines.append(f"{prediction.path:<{widths[0]}}  ERROR: {prediction.error}")
            continue
        lines.extend(line(r) for r in rows[:len(prediction.top)])
        rows = rows[len(prediction.top):]
    return "\n".join(lines) + "\n"


def print_predictions(predictions: Sequence[Prediction], stream=None) -> None:
    """:func:`format_predictions_table` on ``stream`` (stdout)."""
    stream = stream or sys.stdout
    stream.write(format_predictions_table(predictions))
    stream.flush()


# --------------------------------------------------------------------------------------------------
# A whole test run
# --------------------------------------------------------------------------------------------------

def load_test_config(config_path: Optional[str | os.PathLike], overrides: Sequence[str],
                     weights: str | os.PathLike) -> tuple[Any, str]:
    """The configuration of a test run, and a phrase saying where it came from (for the log).

    Without ``-c`` (``config_path`` None), one of this project's checkpoints brings its own resolved
    configuration (``engine.checkpoint.saved_config``): the test runs with the model's own frames, sizes,
    data and class names, and ``-o`` overrides still apply on top. With ``-c``, or weights of another format,
    the configuration is the defaults, the recipe and the overrides, as for training.

    Args:
        config_path: the ``-c`` recipe, or None.
        overrides: the ``-o key=value`` strings.
        weights: the ``-w`` file.
    """
    saved = saved_config(weights) if config_path is None else None
    cfg = load_config(config_path, overrides, base=saved,
                      base_source=f"the configuration saved in {str(weights)!r}")
    if config_path is not None:
        source = f"the recipe {str(config_path)!r}"
    elif saved is not None:
        source = f"the configuration saved in {str(weights)!r}"
    else:
        source = "the defaults (configs/defaults.yaml; the weights carry no configuration)"
    if overrides:
        source += f" with {len(overrides)} override(s)"
    return cfg, source


def resolve_output_dir(cfg: Any, weights: str | os.PathLike, *, output_dir: Optional[str | os.PathLike] = None,
                       explicit_keys: Iterable[str] = (), videos: bool = False) -> Path:
    """Where a test run writes, first match wins:

    1. ``--output-dir DIR`` (``output_dir``): DIR, as given (also for ``--video``);
    2. ``-o test.output_dir=DIR`` on the command line (``"test.output_dir" in explicit_keys``): DIR;
    3. weights that are one of this project's checkpoints: ``test/`` beside them (``RUN/best.pt`` ->
       ``RUN/test``), so a run's test results stay with the run;
    4. ``test.output_dir`` of the configuration (recipe or defaults: ``output/SlowFast/test``).

    With ``--video``, cases 2-4 get a ``videos/`` subfolder, so predicting files never replaces the
    list evaluation's ``predictions.jsonl``.
    """
    if output_dir is not None:
        return Path(output_dir)
    if "test.output_dir" in set(explicit_keys):
        folder = Path(cfg.test.output_dir)
    elif Path(weights).is_file() and read_model_spec(weights) is not None:
        folder = Path(weights).parent / "test"
    else:
        folder = Path(cfg.test.output_dir)
    return folder / VIDEOS_SUBDIR if videos else folder


def check_top_k(top_k: int) -> int:
    """``--top-k``: at least 1 (a value above the class count is capped later, with a log line)."""
    if int(top_k) < 1:
        raise UserError(f"--top-k {top_k}: predictions need at least one class per file; use --top-k 1 or more "
                        f"(default {TOP_K})")
    return int(top_k)


def run_test_list(cfg: Any, model: torch.nn.Module, weights: str, device: torch.device, precision: Precision,
                  output_dir: Path, progress: bool, save_scores_to: Optional[str | os.PathLike] = None,
                  save_features_to: Optional[str | os.PathLike] = None) -> EvalResult:
    """Evaluate ``cfg.data.test_list`` on every rank; the primary rank logs and writes the outputs.

    Args:
        cfg: resolved configuration.
        model: prepared (eval mode, on ``device``).
        weights: the weights file (recorded in metrics.json).
        device: where the model runs.
        precision: the autocast policy.
        output_dir: where the files of :func:`write_outputs` go.
        progress: print videos/s and ETA.
        save_scores_to: also write a score dump there (:func:`save_scores`).
        save_features_to: also write a feature dump there (:func:`save_features`), from the same forward passes.
    """
    class_names = read_class_names(cfg.data.class_names, cfg.model.num_classes)
    loader = build_loader(cfg, "test", rank=dist_utils.get_rank(), world_size=dist_utils.get_world_size(),
                          **loader_inputs(model))
    num_views = int(cfg.test.num_clips) * int(cfg.test.num_crops)
    LOG.info("[TEST] %s on %d videos of %s: %d clips x %d crops, %d videos per batch, %d process(es), %s",
             cfg.model.name, len(loader.records), cfg.data.test_list, cfg.test.num_clips, cfg.test.num_crops,
             cfg.test.batch_size, dist_utils.get_world_size(), precision.name)
    try:
        result = evaluate(model, loader, num_views=num_views, device=device, precision=precision,
                          channels_last=bool(cfg.model.channels_last), progress=progress, weights=weights,
                          with_features=save_features_to is not None, ensemble=str(cfg.test.ensemble))
    finally:
        loader.close()  # DALI: the pipeline is freed now, not in the interpreter's teardown
    if dist_utils.is_primary():
        log_result(result, class_names)
        written = []
        paths = [loader.records[i].path for i in result.video_indices]
        if save_scores_to is not None:
            written.append(save_scores(save_scores_to, result.scores / num_views, result.labels, paths,
                                       class_names))
        if save_features_to is not None:
            features = result.features if result.num_evaluated else np.zeros((0, 0), np.float32)
            written.append(save_features(save_features_to, features, result.labels, paths))
        summary = write_outputs(result, loader.records, class_names, cfg, weights, output_dir,
                                dist_utils.get_world_size(), extra_files=written)
        files = [Path(f) for f in summary["files"]]
        if (output_dir / "test.log").is_file():
            files.append(output_dir / "test.log")
        log_summary(result, files, loader.records)
    return result


def run_predictions(cfg: Any, model: torch.nn.Module, weights: str, videos: Sequence[str], device: torch.device,
                    precision: Precision, output_dir: Path, progress: bool, top_k: int,
                    save_scores_to: Optional[str | os.PathLike] = None,
                    save_features_to: Optional[str | os.PathLike] = None) -> list[Prediction]:
    """``--video``: expand the inputs, predict every file on every rank; the primary rank prints the table and
    writes ``predictions.jsonl`` (and ``config.yaml``, and the score and feature dumps if asked) into
    ``output_dir``. The dumps hold the predicted files (labels -1), in the order of their predictions.jsonl rows."""
    start = time.perf_counter()
    class_names = read_class_names(cfg.data.class_names, cfg.model.num_classes)
    if top_k > len(class_names):
        LOG.info("[TEST] --top-k %d is more than the model's %d classes; showing all %d", top_k, len(class_names),
                 len(class_names))
        top_k = len(class_names)
    expanded = expand_video_inputs(videos)
    files = [path for path, error in expanded if error is None]
    LOG.info("[TEST] --video: %d argument(s) -> %d file(s) to predict", len(videos), len(files))
    predicted = iter(predict_files(model, cfg, files, device=device, precision=precision,
                                   class_names=class_names, progress=progress, top_k=top_k, weights=weights,
                                   with_features=save_features_to is not None)
                     if files else [])
    predictions = [Prediction(path, error=error) if error else next(predicted) for path, error in expanded]
    if dist_utils.is_primary():
        print_predictions(predictions)
        written = [write_text(output_dir / "predictions.jsonl",
                              "".join(json.dumps(p.to_json()) + "\n" for p in predictions))]
        if save_scores_to is not None:
            done = [p for p in predictions if p.probabilities is not None]
            scores = np.stack([p.probabilities for p in done]) if done else np.zeros((0, len(class_names)))
            written.append(save_scores(save_scores_to, scores, [-1] * len(done), [p.path for p in done],
                                       class_names))
        if save_features_to is not None:
            done = [p for p in predictions if p.features is not None]
            features = np.stack([p.features for p in done]) if done else np.zeros((0, 0), np.float32)
            written.append(save_features(save_features_to, features, [-1] * len(done), [p.path for p in done]))
        written.append(save_config(cfg, output_dir))
        if (output_dir / "test.log").is_file():
            written.append(output_dir / "test.log")
        ok = sum(1 for p in predictions if p.top)
        seconds = time.perf_counter() - start
        LOG.info("[TEST] summary: predicted %d of %d file(s), %d failed (ERROR rows above); %.2f files/s "
                 "(%s); files: %s", ok, len(predictions), len(predictions) - ok, ok / seconds if seconds else 0.0,
                 format_duration(seconds), ", ".join(str(f) for f in written))
    return predictions


def run_test(cfg: Any, weights: str, *, videos: Optional[Sequence[str]] = None,
             output_dir: Optional[str | os.PathLike] = None, progress: bool = True,
             explicit_keys: Iterable[str] = frozenset(), top_k: int = TOP_K,
             save_scores_to: Optional[str | os.PathLike] = None, config_source: Optional[str] = None,
             infer_arch: bool = False, save_features_to: Optional[str | os.PathLike] = None) -> int:
    """One process's test run: the multi-view evaluation of ``data.test_list``, or top-k predictions for
    ``videos``. Every rank of a torchrun job calls it.

    Args:
        cfg: resolved configuration (its ``model`` section is updated to a checkpoint's own model); see
            :func:`load_test_config`.
        weights: the weights file (``-w``), any format :func:`models.load_weights` reads.
        videos: files, folders or glob patterns to predict instead of the test list (``--video``;
            :func:`expand_video_inputs`).
        output_dir: ``--output-dir``; where the outputs go otherwise: :func:`resolve_output_dir`.
        progress: print videos/s and ETA to stderr.
        explicit_keys: configuration keys given on the command line (the precision policy, the output folder).
        top_k: classes per file for ``videos`` (``--top-k``; at least 1, capped at the class count).
        save_scores_to: also write a score dump (``--save-scores``; :func:`save_scores`).
        save_features_to: also write a feature dump (``--save-features``; :func:`save_features`).
        config_source: where ``cfg`` came from, for the log (:func:`load_test_config`).
        infer_arch: weights of another project build the architecture their tensors fit
            (:func:`models.load_pretrained`); the driver sets it when the configuration does not pin the model
            (no ``-c``, no ``-o model.name``).

    Returns:
        The exit status: 0, or 1 when no video could be evaluated (or predicted).

    Raises:
        UserError: bad input (one line for the command line), e.g. :class:`NonFiniteOutputs`.
    """
    explicit_keys = frozenset(explicit_keys)
    top_k = check_top_k(top_k)
    info = dist_utils.init_distributed()
    try:
        output_dir = resolve_output_dir(cfg, weights, output_dir=output_dir, explicit_keys=explicit_keys,
                                        videos=bool(videos))
        setup_logging(info.is_primary, output_dir, name="test")
        if config_source:
            LOG.info("[TEST] configuration: %s; outputs in %s", config_source, output_dir)
        if not videos:  # --video picks a decoder per file (backend_for)
            preflight_run(cfg, info.device.index, decode_check=info.local_rank == 0)
        model = build_model(cfg, info.device, weights, arch_from_checkpoint=True, infer_arch=infer_arch).eval()
        check_data_fits_model(cfg, model)
        precision = precision_for(cfg, "test", info.device, explicit_keys)
        if videos:
            predictions = run_predictions(cfg, model, str(weights), videos, info.device, precision, output_dir,
                                          progress, top_k, save_scores_to, save_features_to)
            if not any(p.top for p in predictions):
                print(f"error: none of the {len(predictions)} file(s) could be predicted (see the ERROR rows "
                      f"above)", file=sys.stderr)
                return 1
            return 0
        result = run_test_list(cfg, model, str(weights), info.device, precision, output_dir, progress,
                               save_scores_to, save_features_to)
        return 0 if result.num_evaluated else 1
    finally:
        dist_utils.cleanup()
