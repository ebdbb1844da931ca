"""Multi-view evaluation: aggregation and metrics by hand, decode-once views, exact coverage over ranks,
the test.py driver (list evaluation with a corrupt file, prediction on files).

The end-to-end checks compare against a reference computed here, independently of the loader: every
frame decoded in order with PyAV (no seeking), the views cut per clip and crop, the model run view by
view, and the per-view softmax summed by hand.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import subprocess
import time
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from configs import Config, load_config
from engine import evaluator as ev
from engine.model import build_model
from engine.precision import resolve_precision

CPU = torch.device("cpu")
FP32 = resolve_precision("fp32", CPU, explicit=False)

REPO = Path(__file__).resolve().parents[1]
NUM_CLASSES = 6
CLASS_NAMES = ["archery", "bowling", "cycling", "diving", "eating", "fencing"]
FPS = 30
# name -> (frames, height, width): one shorter than a clip's span (16 frames), one portrait
VIDEOS = {
    "v0.webm": (12, 48, 64),
    "v1.webm": (24, 48, 64),
    "v2.webm": (40, 64, 48),
    "v3.webm": (30, 48, 64),
    "v4.webm": (50, 48, 64),
}
# The reference protocol scaled down: 8 fast frames (alpha 4 -> 2 slow frames), 2 clips x 3 crops.
SMALL = [
    "model.name=slowfast_tiny", f"model.num_classes={NUM_CLASSES}", "data.backend=pyav", "data.num_workers=0",
    "data.num_frames=8", "data.sampling_rate=2", "data.target_fps=30", "data.test_short_side=32",
    "data.test_crop=32", "data.val_crop=32", "test.num_clips=2", "test.num_crops=3", "test.batch_size=2",
    "train.precision=fp32",
]
NUM_VIEWS = 6
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# linspace(0, 7, 8 // 4) truncated: the slow pathway's frames within an 8-frame fast clip, alpha 4
SLOW_POSITIONS = [0, 7]


# ----------------------------------------------------------------------------------------------
# aggregation and metrics, by hand


def test_aggregate_views_sums_softmax_per_video_by_hand():
    # Logits log(p) + c have softmax p exactly (the per-view constant c cancels), so the expected sums
    # below are the hand-added probabilities.
    views = [
        [0.90, 0.09, 0.01], [0.01, 0.49, 0.50],   # video 0
        [0.20, 0.50, 0.30], [0.25, 0.15, 0.60],   # video 1
    ]
    logits = torch.log(torch.tensor(views, dtype=torch.float64)) + torch.tensor([[3.0], [-1.0], [0.5], [7.0]])
    scores = ev.aggregate_views(logits, num_views=2)
    expected = torch.tensor([[0.91, 0.58, 0.51], [0.45, 0.65, 0.90]])
    assert scores.shape == (2, 3)
    torch.testing.assert_close(scores, expected, atol=1e-6, rtol=0)
    # Video 0 ranks class 0 first; summing the logits instead would rank class 1 first
    # (log .09 + log .49 = -3.12 > log .9 + log .01 = -4.71): the ensemble is over probabilities.
    assert ev.ranked_classes(scores.numpy()).tolist() == [[0, 1, 2], [2, 1, 0]]
    accuracy = ev.topk_accuracy(scores.numpy(), np.array([0, 1]), ks=(1, 2))
    assert accuracy == {1: 0.5, 2: 1.0}


def test_aggregate_views_refuses_a_partial_video():
    with pytest.raises(ValueError, match="num_views=3"):
        ev.aggregate_views(torch.zeros(4, 5), num_views=3)


def test_topk_accuracy_by_hand():
    # 7 classes; the label sits at rank 1, 3, 5 and 6 (1 = best) of its video's scores.
    scores = np.array([
        [0.9, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0],   # label 0: rank 1
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],   # label 4: rank 3
        [0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1],   # label 4: rank 5
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],   # label 1: rank 6
    ])
    labels = np.array([0, 4, 4, 1])
    assert ev.topk_accuracy(scores, labels, ks=(1, 3, 5)) == {1: 0.25, 3: 0.5, 5: 0.75}
    assert np.isnan(ev.topk_accuracy(np.zeros((0, 7)), np.zeros(0, np.int64))[1])


def test_mean_class_accuracy_by_hand():
    # top-1 predictions 0,1,1 | 1 | 2,0 for labels 0,0,0 | 1 | 2,2: per class 1/3, 1, 1/2
    # (classes 3 and 4 are absent and do not count)
    predicted = [0, 1, 1, 1, 2, 0]
    labels = np.array([0, 0, 0, 1, 2, 2])
    scores = np.eye(5)[predicted]
    assert ev.mean_class_accuracy(scores, labels) == pytest.approx((1 / 3 + 1 + 1 / 2) / 3)
    assert ev.topk_accuracy(scores, labels, ks=(1,))[1] == 0.5


# ----------------------------------------------------------------------------------------------
# a small data set, a tiny checkpoint and the independent reference


def _frames(seed: int, num_frames: int, height: int, width: int) -> list[np.ndarray]:
    """Smooth moving colour patterns (VP9 keeps them nearly intact), different per video."""
    yy, xx = np.mgrid[0:height, 0:width]
    frames = []
    for t in range(num_frames):
        frame = np.empty((height, width, 3), np.uint8)
        frame[..., 0] = (xx * (3 + seed) + 5 * t) % 256
        frame[..., 1] = (yy * (2 + 2 * seed) + 40 * seed) % 256
        frame[..., 2] = (128 + 100 * np.sin((xx + yy) / (4.0 + seed) + t / 5.0)).astype(np.uint8)
        frames.append(frame)
    return frames


def _decode_all(path: Path) -> np.ndarray:
    """Every frame in decoding order, without seeking: the reference for which frame is which."""
    import av

    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def _reference_views(path: Path, cfg: Config) -> list[torch.Tensor]:
    """[slow, fast] views of one video, clip-major, each view decoded and cut on its own."""
    from pipelines.sampling import test_clip_indices, test_spatial_params
    from pipelines.transforms import apply_spatial

    frames = _decode_all(path)
    clips = test_clip_indices(len(frames), FPS, cfg.test.num_clips, cfg.data.num_frames,
                              cfg.data.sampling_rate, cfg.data.target_fps)
    crops = test_spatial_params(frames.shape[1], frames.shape[2], cfg.data.test_short_side,
                                cfg.data.test_crop, cfg.test.num_crops)
    fast = torch.stack([apply_spatial(frames[clip], params, cfg.data.mean, cfg.data.std)
                        for clip in clips for params in crops])
    return [fast[:, :, SLOW_POSITIONS], fast]


@torch.inference_mode()
def _reference_scores(model: torch.nn.Module, path: Path, cfg: Config) -> np.ndarray:
    """Sum over views of softmax(model(view)), one view at a time."""
    slow, fast = _reference_views(path, cfg)
    total = torch.zeros(NUM_CLASSES, dtype=torch.float64)
    for v in range(len(fast)):
        total += torch.softmax(model([slow[v:v + 1], fast[v:v + 1]]).double(), dim=1)[0]
    return total.numpy()


def _save_checkpoint(model: torch.nn.Module, path: Path) -> Path:
    """The shared checkpoint format (what train.py writes)."""
    torch.save({"format": "slowfast-dali/1", "model": model.state_dict(), "model_name": model.model_name,
                "model_args": asdict(model.arch), "epoch": 1, "iteration": 10, "optimizer": {},
                "scaler": None, "config": {}, "rng": {}, "metrics": {}}, path)
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Five VP9 videos, a tiny checkpoint with decisive outputs, reference scores and a list whose labels
    are chosen from the reference ranking (so the expected accuracies are known by construction)."""
    from models import create_model
    from pipelines.video_io import write_video

    root = tmp_path_factory.mktemp("evaluate_data")
    for seed, (name, (num_frames, height, width)) in enumerate(VIDEOS.items()):
        write_video(root / name, _frames(seed, num_frames, height, width), fps=FPS, codec="vp9")
    cfg = load_config(None, SMALL + [f"data.root={root}"])

    torch.manual_seed(0)
    model = create_model("slowfast_tiny", num_classes=NUM_CLASSES)
    # Give batch norm the data's statistics (momentum 1: one pass sets them) and spread the logits, so the
    # classes are well separated and no ranking hangs on rounding.
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = 1.0
    model.train()
    with torch.no_grad():
        views = [_reference_views(root / name, cfg) for name in VIDEOS]
        model([torch.cat([v[0] for v in views]), torch.cat([v[1] for v in views])])
        head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        head.weight.mul_(50.0)
    model.eval()
    checkpoint = _save_checkpoint(model, root / "tiny.pt")
    reference = np.stack([_reference_scores(model, root / name, cfg) for name in VIDEOS])

    ranking = np.argsort(-reference, axis=1)
    # labels at reference rank 1, 1, 1, 2 and 6 (of 6): top-1 = 3/5, top-5 = 4/5
    labels = [int(ranking[v, rank - 1]) for v, rank in enumerate([1, 1, 1, 2, 6])]
    (root / "test.list").write_text("".join(f"{name} {label}\n" for name, label in zip(VIDEOS, labels)))
    (root / "classes.txt").write_text("\n".join(CLASS_NAMES) + "\n")
    return {"root": root, "cfg": cfg, "model": model, "checkpoint": checkpoint, "reference": reference,
            "labels": np.array(labels), "ranking": ranking}


def _cfg(dataset, *extra: str) -> Config:
    root = dataset["root"]
    return load_config(None, SMALL + [f"data.root={root}", f"data.test_list={root / 'test.list'}",
                                      f"data.class_names={root / 'classes.txt'}", *extra])


def _expected_mean_class_accuracy(labels: np.ndarray, top1: np.ndarray) -> float:
    per_class = {}
    for label, predicted in zip(labels.tolist(), top1.tolist()):
        per_class.setdefault(label, []).append(label == predicted)
    return sum(sum(hits) / len(hits) for hits in per_class.values()) / len(per_class)


# ----------------------------------------------------------------------------------------------
# decode once == decode per view


def test_decode_once_views_equal_per_view_decoding(dataset):
    from pipelines import build_loader

    cfg = _cfg(dataset)
    loader = build_loader(cfg, "test", rank=0, world_size=1, alpha=4)
    seen = []
    for (slow, fast), labels, video_index in loader:
        assert fast.shape[0] == len(video_index) * NUM_VIEWS
        for position, index in enumerate(video_index.tolist()):
            name = list(VIDEOS)[index]
            ref_slow, ref_fast = _reference_views(dataset["root"] / name, cfg)
            views = slice(position * NUM_VIEWS, (position + 1) * NUM_VIEWS)
            torch.testing.assert_close(fast[views], ref_fast, atol=1e-5, rtol=0, msg=f"fast views of {name}")
            torch.testing.assert_close(slow[views], ref_slow, atol=1e-5, rtol=0, msg=f"slow views of {name}")
            assert labels[position] == dataset["labels"][index]
            seen.append(index)
    assert seen == list(range(len(VIDEOS)))


@pytest.mark.dali
def test_dali_cpu_decode_once_views_equal_decode_per_view(dataset):
    pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed")
    from pipelines.dali_loader import build_dali_loader

    cfg = _cfg(dataset, "data.backend=dali", "data.device=cpu")
    once = list(build_dali_loader(cfg, "test", alpha=4))
    per_view = list(build_dali_loader(cfg, "test", alpha=4, decode_per_view=True))
    assert [b[2].tolist() for b in once] == [b[2].tolist() for b in per_view] == [[0, 1], [2, 3], [4]]
    for ((slow, fast), labels, _), ((ref_slow, ref_fast), ref_labels, _) in zip(once, per_view):
        torch.testing.assert_close(fast, ref_fast, atol=1e-5, rtol=0)
        torch.testing.assert_close(slow, ref_slow, atol=1e-5, rtol=0)
        torch.testing.assert_close(labels, ref_labels)
        # the slow pathway is the fast clip's frames 0 and 7 (alpha 4, 8 frames)
        torch.testing.assert_close(slow, fast[:, :, SLOW_POSITIONS], atol=0, rtol=0)


# ----------------------------------------------------------------------------------------------
# exact coverage over 1, 2 and 3 ranks


class _ViewCounter(torch.nn.Module):
    """Counts the views the wrapped model is run on (padding must never reach it)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.views = 0

    def forward(self, inputs):
        self.views += inputs[1].shape[0]
        return self.model(inputs)


def _evaluate_rank(cfg: Config, checkpoint: Path, rank: int, world_size: int) -> dict:
    from pipelines import build_loader

    model = build_model(cfg, CPU, checkpoint, arch_from_checkpoint=True)
    counter = _ViewCounter(ev.prepare_model(model, CPU, channels_last=True))
    loader = build_loader(cfg, "test", rank=rank, world_size=world_size, alpha=model.arch.alpha)
    result = ev.evaluate(counter, loader, num_views=NUM_VIEWS, device=CPU, precision=FP32)
    return {"indices": result.video_indices, "scores": result.scores, "labels": result.labels,
            "metrics": result.metrics(), "views": counter.views, "failures": result.failures,
            "missing": result.missing}


def _coverage_worker(rank: int, world_size: int, init_file: str, cfg_dict: dict, checkpoint: str, out: str):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        part = _evaluate_rank(Config(cfg_dict), Path(checkpoint), rank, world_size)
        torch.save(part, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_every_video_once_and_identical_metrics_over_ranks(dataset, tmp_path, world_size):
    cfg = _cfg(dataset)
    if world_size == 1:  # no process group at all: the plain `python test.py` path
        parts = [_evaluate_rank(cfg, dataset["checkpoint"], 0, 1)]
    else:
        torch.multiprocessing.spawn(
            _coverage_worker, nprocs=world_size, join=True,
            args=(world_size, str(tmp_path / "init"), cfg.to_dict(), str(dataset["checkpoint"]),
                  str(tmp_path)))
        parts = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world_size)]

    # each video run exactly once over all ranks: num_videos x views forwarded, padding never
    assert sum(p["views"] for p in parts) == len(VIDEOS) * NUM_VIEWS
    reference, labels = dataset["reference"], dataset["labels"]
    for part in parts:  # every rank holds the same, complete result
        assert part["indices"].tolist() == list(range(len(VIDEOS)))
        assert part["failures"] == [] and part["missing"] == []
        np.testing.assert_array_equal(part["labels"], labels)
        np.testing.assert_allclose(part["scores"], reference, atol=1e-5, rtol=0)
        np.testing.assert_array_equal(part["scores"], parts[0]["scores"])
        assert part["metrics"]["acc1"] == pytest.approx(3 / 5)
        assert part["metrics"]["acc5"] == pytest.approx(4 / 5)
        assert part["metrics"]["mean_class_acc"] == pytest.approx(
            _expected_mean_class_accuracy(labels, dataset["ranking"][:, 0]))


# ----------------------------------------------------------------------------------------------
# the driver: list evaluation and prediction on files


def _run_test_py(*args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "test.py", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _overrides(cfg_args: list[str]) -> list[str]:
    return [arg for pair in (("-o", a) for a in cfg_args) for arg in pair]


def test_list_evaluation_reports_a_corrupt_video_and_writes_outputs(dataset, tmp_path):
    root = dataset["root"]
    (root / "broken.webm").write_bytes(b"\x1a\x45\xdf\xa3 this is not a video")
    names = list(VIDEOS) + ["broken.webm"]
    labels = dataset["labels"].tolist() + [0]
    listing = tmp_path / "with_broken.list"
    listing.write_text("".join(f"{n} {label}\n" for n, label in zip(names, labels)))
    out = tmp_path / "results"
    overrides = SMALL + [f"data.root={root}", f"data.test_list={listing}",
                         f"data.class_names={root / 'classes.txt'}"]
    scores_file = tmp_path / "dump" / "scores.npz"
    proc = _run_test_py("-w", str(dataset["checkpoint"]), "--output-dir", str(out), "--save-scores",
                        str(scores_file), *_overrides(overrides))
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "[TEST] finished, avg_acc1= 0.6000, avg_acc5= 0.8000" in proc.stdout
    assert "over 5 of 6 videos" in proc.stdout

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_videos"] == 6 and metrics["num_evaluated"] == 5 and metrics["num_failed"] == 1
    assert [f["path"] for f in metrics["failed"]] == ["broken.webm"] and metrics["failed"][0]["error"]
    assert metrics["acc1"] == pytest.approx(3 / 5) and metrics["acc5"] == pytest.approx(4 / 5)
    assert metrics["coverage"] == "over 5 of 6 videos"
    assert metrics["weights"] == str(dataset["checkpoint"].resolve())
    assert (metrics["num_clips"], metrics["num_crops"], metrics["views_per_video"]) == (2, 3, 6)
    assert metrics["config"]["test"]["num_clips"] == 2
    assert (out / "config.yaml").is_file()

    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["path"] for r in rows] == list(VIDEOS)
    expected = zip(dataset["ranking"], dataset["reference"], dataset["labels"])
    for row, (ranking, reference, label) in zip(rows, expected):
        assert row["label"] == label and row["label_name"] == CLASS_NAMES[label]
        assert row["top5"] == ranking[:5].tolist()
        assert row["top5_names"] == [CLASS_NAMES[c] for c in ranking[:5]]
        np.testing.assert_allclose(row["top5_scores"], reference[ranking[:5]] / NUM_VIEWS, atol=1e-5)

    # per-class accuracy and confusion matrix, expected from the labels and the reference's top-1
    top1 = dataset["ranking"][:, 0]
    with open(out / "per_class_accuracy.csv", newline="") as handle:
        per_class = list(csv.reader(handle))
    assert per_class[0] == ["index", "name", "videos", "top1_correct", "accuracy"]
    expected_rows = []
    for c, name in enumerate(CLASS_NAMES):
        videos = int((dataset["labels"] == c).sum())
        correct = int(((dataset["labels"] == c) & (top1 == c)).sum())
        expected_rows.append([str(c), name, str(videos), str(correct), f"{correct / videos:.6f}" if videos else ""])
    assert per_class[1:] == expected_rows
    with open(out / "confusion_matrix.csv", newline="") as handle:
        confusion = list(csv.reader(handle))
    assert confusion[0] == ["true_index", "true_name", *CLASS_NAMES]
    counts = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    for label, predicted in zip(dataset["labels"], top1):
        counts[label, predicted] += 1
    assert confusion[1:] == [[str(i), CLASS_NAMES[i], *map(str, counts[i])] for i in range(NUM_CLASSES)]
    assert (out / "confusion_matrix.png").read_bytes()[:8] == PNG_MAGIC

    # the closing summary (F): accuracy, mean class accuracy, coverage, failures, speed, files written
    summary = proc.stdout[proc.stdout.index("[TEST] summary"):]
    mean_class = _expected_mean_class_accuracy(dataset["labels"], top1)
    assert f"top-1 0.6000, top-5 0.8000, mean class accuracy {mean_class:.4f}" in summary
    assert "coverage: over 5 of 6 videos (1 failed, 0 missing)" in summary
    assert "failed: broken.webm: " in summary
    assert re.search(r"speed: \d+\.\d\d videos/s \(5 videos in ", summary), summary
    files_line = next(line for line in summary.splitlines() if "files: " in line)
    for name in ("metrics.json", "predictions.jsonl", "per_class_accuracy.csv", "confusion_matrix.csv",
                 "confusion_matrix.png", "config.yaml", "test.log"):
        assert str(out / name) in files_line
    assert str(scores_file) in files_line and str(scores_file) in metrics["files"]

    # the score dump (G): mean softmax over the views, readable without pickle
    with np.load(scores_file, allow_pickle=False) as dump:
        assert dump["paths"].dtype.kind == "U" and dump["paths"].tolist() == list(VIDEOS)
        np.testing.assert_allclose(dump["scores"], dataset["reference"] / NUM_VIEWS, atol=1e-5)
        np.testing.assert_array_equal(dump["labels"], dataset["labels"])
        assert dump["class_names"].tolist() == CLASS_NAMES


def _printed_table(stdout: str) -> tuple[dict[str, list[tuple[int, int, str, float]]], dict[str, str]]:
    """test.py --video's table: ``{path: [(rank, class index, name, probability)]}`` and ``{path: error}``.

    Also checks the alignment: every prediction row is as long as the header (the probability column is
    right-aligned at the end) and has its class name where the header's ``class`` starts.
    """
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("file ") and line.endswith("probability"))
    header = lines[start]
    class_at = header.index("class")
    rows, errors, path = {}, {}, None
    for line in lines[start + 1:]:
        if re.match(r"\d\d:\d\d:\d\d ", line):  # a log line: the table has ended
            break
        if "  ERROR: " in line:
            bad, error = line.split("  ERROR: ", 1)
            errors[bad.strip()] = error
            continue
        assert len(line) == len(header), (line, header)
        if not line[0].isspace():
            path = line[:header.index("rank")].strip()
        rank, index, name, probability = line[len(path) if not line[0].isspace() else 0:].split()
        assert line[class_at:].split()[0] == name
        rows.setdefault(path, []).append((int(rank), int(index), name, float(probability)))
    return rows, errors


@torch.inference_mode()
def _dali_per_view_scores(model: torch.nn.Module, cfg: Config) -> np.ndarray:
    """Per video of cfg's test list: the sum over views of softmax(model(view)), views from DALI per view."""
    from pipelines.dali_loader import build_dali_loader

    scores = np.zeros((len(VIDEOS), NUM_CLASSES))
    for (slow, fast), _, video_index in build_dali_loader(cfg, "test", alpha=4, decode_per_view=True):
        for v in range(fast.shape[0]):
            logits = model([slow[v:v + 1], fast[v:v + 1]]).double()
            scores[video_index[v // NUM_VIEWS]] += torch.softmax(logits, dim=1)[0].numpy()
    return scores


@pytest.mark.dali
def test_predict_files_prints_top5_and_reports_unreadable_ones(dataset, tmp_path):
    """VP9 goes through DALI's CPU decoder, H.264 (which it cannot read) through PyAV, a bogus file is
    reported and the others are still predicted."""
    pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed")
    from pipelines.video_io import write_video

    root, cfg, model = dataset["root"], dataset["cfg"], dataset["model"]
    h264 = tmp_path / "clip.mp4"
    write_video(h264, _frames(7, 36, 48, 64), fps=FPS, codec="h264")
    h264_reference = _reference_scores(model, h264, cfg)
    bogus = tmp_path / "notavideo.mp4"
    bogus.write_bytes(os.urandom(2048))
    overrides = SMALL + [f"data.class_names={root / 'classes.txt'}", "data.backend=dali", "data.device=cpu"]
    files = [root / "v2.webm", bogus, h264, root / "v4.webm"]
    proc = _run_test_py("-w", str(dataset["checkpoint"]), "--video", *map(str, files), *_overrides(overrides))
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "[TEST] 2 file(s) decoded by dali on the cpu" in proc.stdout
    assert "[TEST] 1 file(s) decoded by pyav" in proc.stdout
    rows, errors = _printed_table(proc.stdout)
    assert list(errors) == [str(bogus)], proc.stdout

    # PyAV path: the same decoder and resize as the reference, so the same top-5 to the printed digit
    order = np.argsort(-h264_reference)[:5]
    assert rows[str(h264)] == [(rank, int(c), CLASS_NAMES[c], round(h264_reference[c] / NUM_VIEWS, 4))
                               for rank, c in enumerate(order, 1)]
    # DALI path: DALI's own colour conversion and resize give other pixels than PyAV's (a few levels), so the
    # reference here is DALI's decode-per-view loader, each view through the model on its own
    dali_reference = _dali_per_view_scores(model, _cfg(dataset, "data.backend=dali", "data.device=cpu"))
    for name, index in (("v2.webm", 2), ("v4.webm", 4)):
        reference = dali_reference[index]
        order = np.argsort(-reference)[:5]
        printed = rows[str(root / name)]
        assert [c for _, c, _, _ in printed] == order.tolist()
        assert [n for _, _, n, _ in printed] == [CLASS_NAMES[c] for c in order]
        np.testing.assert_allclose([s for *_, s in printed], reference[order] / NUM_VIEWS, atol=2e-4)


def test_predict_files_fails_when_nothing_is_readable(dataset, tmp_path):
    bogus = tmp_path / "empty.webm"
    bogus.write_bytes(b"")
    proc = _run_test_py("-w", str(dataset["checkpoint"]), "--video", str(bogus), *_overrides(SMALL))
    assert proc.returncode == 1
    assert list(_printed_table(proc.stdout)[1]) == [str(bogus)]


# ----------------------------------------------------------------------------------------------
# weights and user errors


def test_own_checkpoint_rebuilds_its_recorded_model(dataset):
    cfg = load_config(None, ["model.name=slowfast_r50_4x16", "model.num_classes=400"])
    model = build_model(cfg, CPU, dataset["checkpoint"], arch_from_checkpoint=True)
    assert model.model_name == "slowfast_tiny" and model.arch.num_classes == NUM_CLASSES
    assert (cfg.model.name, cfg.model.num_classes) == ("slowfast_tiny", NUM_CLASSES)
    for name, tensor in dataset["model"].state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, atol=0, rtol=0, msg=name)


def test_missing_weights_is_a_clear_error(tmp_path):
    proc = _run_test_py("-w", str(tmp_path / "nope.pt"), "--output-dir", str(tmp_path / "out"), *_overrides(SMALL))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "nope.pt" in proc.stderr and "does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_training_builds_the_configured_model_and_fine_tunes_from_a_checkpoint(dataset):
    # The other behaviour of the one build_model: training builds cfg.model, whatever the checkpoint records,
    # and re-initialises a classifier of another class count.
    cfg = load_config(None, ["model.name=slowfast_tiny", "model.num_classes=4"])
    model = build_model(cfg, CPU, dataset["checkpoint"])
    assert model.arch.num_classes == 4 and (cfg.model.name, cfg.model.num_classes) == ("slowfast_tiny", 4)
    for name, tensor in dataset["model"].state_dict().items():
        if not name.startswith("head."):
            torch.testing.assert_close(model.state_dict()[name], tensor, atol=0, rtol=0, msg=name)


def test_progress_goes_to_stderr_and_no_progress_silences_it(dataset, tmp_path):
    overrides = _overrides(SMALL + [f"data.root={dataset['root']}", f"data.test_list={dataset['root'] / 'test.list'}",
                                    f"data.class_names={dataset['root'] / 'classes.txt'}"])
    shown = _run_test_py("-w", str(dataset["checkpoint"]), "--output-dir", str(tmp_path / "a"), *overrides)
    assert shown.returncode == 0, shown.stderr
    # the final line of utils.progress: all 5 videos, on stderr, not in the log on stdout
    assert "[TEST] 5/5 videos" in shown.stderr and "[TEST] 5/5 videos" not in shown.stdout
    quiet = _run_test_py("-w", str(dataset["checkpoint"]), "--output-dir", str(tmp_path / "b"), "--no-progress",
                         *overrides)
    assert quiet.returncode == 0 and "videos/s" not in quiet.stderr


def test_video_prediction_picks_a_decoder_from_the_capability_table():
    """--video: NVDEC where this GPU's generation decodes the file, DALI's CPU decoder for VP8/VP9/MJPEG,
    PyAV for the rest (expectations from NVIDIA's NVDEC table: AV1 is not decoded on Hopper, VP9 needs 128x128)."""
    pytest.importorskip("nvidia.dali")
    from configs import load_config
    from engine.evaluator import backend_for
    from pipelines.dataset import VideoRecord

    cfg = load_config(None, ["data.backend=dali", "data.device=gpu"])

    def record(codec, width=340, height=256, **extra):
        return VideoRecord("x", 0, num_frames=300, fps=30.0, width=width, height=height, codec=codec, extra=extra)

    h264 = record("h264", profile="High", bit_depth=8, chroma="420")
    assert backend_for(h264, cfg, "hopper") == ("dali", "gpu")
    assert backend_for(h264, cfg, None) == ("pyav", "gpu")            # no GPU: DALI's CPU decoder cannot
    assert backend_for(record("h264", profile="High 4:4:4 Predictive", chroma="444"), cfg, "hopper")[0] == "pyav"
    assert backend_for(record("vp9", 96, 64), cfg, "hopper") == ("dali", "cpu")   # below NVDEC's 128x128
    assert backend_for(record("vp9"), cfg, "hopper") == ("dali", "gpu")
    assert backend_for(record("av1"), cfg, "hopper")[0] == "pyav"
    assert backend_for(record("av1"), cfg, "ga10x") == ("dali", "gpu")


# ----------------------------------------------------------------------------------------------
# per-class accuracy and the confusion matrix, by hand

HAND_NAMES = ["alpha", "beta", "gamma", "delta"]
# 7 videos: true labels and the class each video's scores rank first
HAND_LABELS = np.array([0, 0, 0, 1, 1, 2, 0])
HAND_TOP1 = [0, 1, 0, 1, 2, 2, 3]


def _hand_scores() -> np.ndarray:
    scores = np.full((len(HAND_LABELS), len(HAND_NAMES)), 0.1)
    scores[np.arange(len(HAND_LABELS)), HAND_TOP1] = 0.7
    return scores


def test_per_class_accuracy_and_confusion_csv_by_hand(tmp_path, caplog):
    scores = _hand_scores()
    rows = ev.per_class_accuracy(scores, HAND_LABELS, 4)
    ev.write_per_class_csv(tmp_path / "per_class.csv", rows, HAND_NAMES)
    with open(tmp_path / "per_class.csv", newline="") as handle:
        table = list(csv.reader(handle))
    # alpha: videos 0, 1, 2, 6 -> 0 and 2 right (1 predicted beta, 6 delta); beta: 3 right, 4 wrong; gamma: 5
    # right; delta: no video
    assert table == [["index", "name", "videos", "top1_correct", "accuracy"],
                     ["0", "alpha", "4", "2", "0.500000"],
                     ["1", "beta", "2", "1", "0.500000"],
                     ["2", "gamma", "1", "1", "1.000000"],
                     ["3", "delta", "0", "0", ""]]

    ev.write_confusion_csv(tmp_path / "confusion.csv", ev.confusion_matrix(scores, HAND_LABELS, 4), HAND_NAMES)
    with open(tmp_path / "confusion.csv", newline="") as handle:
        table = list(csv.reader(handle))
    assert table == [["true_index", "true_name", "alpha", "beta", "gamma", "delta"],
                     ["0", "alpha", "2", "1", "0", "1"],
                     ["1", "beta", "0", "1", "1", "0"],
                     ["2", "gamma", "0", "0", "1", "0"],
                     ["3", "delta", "0", "0", "0", "0"]]

    # the log shows the worst classes first: alpha and beta tie at 1/2, alpha has more videos; delta has none
    result = ev.EvalResult(np.arange(7), scores.astype(np.float32), HAND_LABELS, 1, 7)
    with caplog.at_level(logging.INFO, logger="slowfast.test"):
        ev.log_result(result, HAND_NAMES)
    line = next(r.getMessage() for r in caplog.records if "worst classes" in r.getMessage())
    assert line.endswith("alpha (0) 2/4 = 50.0%; beta (1) 1/2 = 50.0%; gamma (2) 1/1 = 100.0%")


def _png_shape(path: Path) -> tuple:
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_MAGIC
    return matplotlib.image.imread(str(path)).shape


def test_confusion_png_is_a_valid_image(tmp_path):
    pytest.importorskip("matplotlib")
    matrix = ev.confusion_matrix(_hand_scores(), HAND_LABELS, 4)
    assert ev.plot_confusion_matrix(tmp_path / "cm.png", matrix, HAND_NAMES) == tmp_path / "cm.png"
    height, width, channels = _png_shape(tmp_path / "cm.png")
    assert height >= 300 and width >= 300 and channels in (3, 4)
    assert [p.name for p in tmp_path.iterdir()] == ["cm.png"]  # no temporary file left


def test_confusion_png_at_400_classes_renders_in_reasonable_time(tmp_path):
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 400, 4000)
    scores = rng.random((4000, 400))
    scores[np.arange(4000), labels] += rng.random(4000) > 0.3   # about 70% right
    names = [f"kinetics_class_with_a_long_name_{i:03d}" for i in range(400)]
    start = time.perf_counter()
    ev.plot_confusion_matrix(tmp_path / "cm400.png", ev.confusion_matrix(scores, labels, 400), names)
    seconds = time.perf_counter() - start
    assert seconds < 60, f"{seconds:.1f} s for 400 classes"
    height, width, _ = _png_shape(tmp_path / "cm400.png")
    assert 1000 <= height <= 2600 and 1000 <= width <= 2600


def test_confusion_png_is_skipped_with_one_log_line_without_matplotlib(tmp_path, monkeypatch, caplog):
    for module in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, module, None)  # `import` raises ImportError
    with caplog.at_level(logging.INFO, logger="slowfast.test"):
        assert ev.plot_confusion_matrix(tmp_path / "cm.png", np.eye(3, dtype=np.int64), ["a", "b", "c"]) is None
    assert not (tmp_path / "cm.png").exists()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "matplotlib is not installed" in messages[0] and "skipped" in messages[0]


# ----------------------------------------------------------------------------------------------
# score dumps and their ensemble


def test_combine_scores_by_hand(tmp_path):
    a = ev.save_scores(tmp_path / "a.npz", [[0.6, 0.4], [0.2, 0.8], [0.5, 0.5]], [0, 1, 1],
                       ["x.mp4", "y.mp4", "z.mp4"], ["cat", "dog"])
    # the same videos in another order
    b = ev.save_scores(tmp_path / "b.npz", [[1.0, 0.0], [0.4, 0.6], [0.0, 1.0]], [1, 0, 1],
                       ["z.mp4", "x.mp4", "y.mp4"], ["cat", "dog"])
    combined = ev.combine_scores(a, b, weights=(0.25, 0.75))
    # x: .25*[.6,.4] + .75*[.4,.6] = [.45,.55]; y: .25*[.2,.8] + .75*[0,1] = [.05,.95]; z: .25*[.5,.5] + .75*[1,0]
    np.testing.assert_allclose(combined["scores"], [[0.45, 0.55], [0.05, 0.95], [0.875, 0.125]], atol=1e-7)
    assert combined["paths"].tolist() == ["x.mp4", "y.mp4", "z.mp4"]
    assert combined["labels"].tolist() == [0, 1, 1] and combined["class_names"].tolist() == ["cat", "dog"]
    np.testing.assert_allclose(ev.combine_scores(a, b)["scores"][0], [0.5, 0.5], atol=1e-7)
    with np.load(a, allow_pickle=False) as dump:  # numpy alone reads it, no pickle
        assert sorted(dump.files) == ["class_names", "labels", "paths", "scores"]

    other = ev.save_scores(tmp_path / "c.npz", [[0.6, 0.4], [0.2, 0.8]], [0, 1], ["x.mp4", "w.mp4"])
    with pytest.raises(ev.ScoreDumpError, match="different videos.*'y.mp4' only in the first"):
        ev.combine_scores(a, other)
    relabelled = ev.save_scores(tmp_path / "d.npz", [[0.6, 0.4], [0.2, 0.8], [0.5, 0.5]], [1, 1, 1],
                                ["x.mp4", "y.mp4", "z.mp4"])
    with pytest.raises(ev.ScoreDumpError, match="label 'x.mp4' differently"):
        ev.combine_scores(a, relabelled)


# ----------------------------------------------------------------------------------------------
# --video: files, folders and patterns; the table, predictions.jsonl, --top-k and --save-scores


def test_video_prediction_of_files_folders_and_patterns(dataset, tmp_path):
    import shutil

    root, reference = dataset["root"], dataset["reference"]
    clips = tmp_path / "clips"
    (clips / "sub").mkdir(parents=True)
    shutil.copy(root / "v2.webm", clips / "sub" / "a.webm")
    (clips / "notes.txt").write_text("not a video, not picked from a folder")
    (tmp_path / "empty").mkdir()
    bogus = tmp_path / "bogus.webm"
    bogus.write_bytes(os.urandom(1024))
    pattern, nothing = str(root / "v[34].webm"), str(tmp_path / "nowhere" / "*.mp4")
    scores_file = tmp_path / "video_scores.npz"
    proc = _run_test_py("-w", str(dataset["checkpoint"]), "--video", str(clips), pattern, str(bogus),
                        str(tmp_path / "empty"), nothing, "--top-k", "3", "--save-scores", str(scores_file),
                        *_overrides(SMALL + [f"data.class_names={root / 'classes.txt'}"]))
    assert proc.returncode == 0, proc.stderr + proc.stdout

    # (file, reference row): a.webm is a copy of v2; the pattern gives v3 and v4, sorted
    expected = [(str(clips / "sub" / "a.webm"), 2), (str(root / "v3.webm"), 3), (str(root / "v4.webm"), 4)]
    rows, errors = _printed_table(proc.stdout)
    assert list(rows) == [path for path, _ in expected]
    assert list(errors) == [str(bogus), str(tmp_path / "empty"), nothing]
    assert "holds no video files" in errors[str(tmp_path / "empty")]
    assert "matches no video file" in errors[nothing]
    for path, video in expected:
        top = np.argsort(-reference[video])[:3]
        assert rows[path] == [(rank, int(c), CLASS_NAMES[c], round(reference[video][c] / NUM_VIEWS, 4))
                              for rank, c in enumerate(top, 1)]

    # our checkpoint lies in root: the results go to root/test/videos (never over a list evaluation's files)
    out = root / "test" / "videos"
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["path"] for r in lines] == [p for p, _ in expected] + [str(bogus), str(tmp_path / "empty"), nothing]
    for row, (_, video) in zip(lines, expected):
        top = np.argsort(-reference[video])[:3]
        assert row["error"] is None
        assert [(t["index"], t["name"]) for t in row["top"]] == [(int(c), CLASS_NAMES[c]) for c in top]
        np.testing.assert_allclose([t["probability"] for t in row["top"]], reference[video][top] / NUM_VIEWS,
                                   atol=2e-5)
    assert all(r["error"] and r["top"] == [] for r in lines[3:])
    assert (out / "config.yaml").is_file()

    with np.load(scores_file, allow_pickle=False) as dump:
        assert dump["paths"].tolist() == [p for p, _ in expected]
        assert dump["labels"].tolist() == [-1, -1, -1]
        np.testing.assert_allclose(dump["scores"], reference[[2, 3, 4]] / NUM_VIEWS, atol=1e-5)


def test_max_ensemble_takes_each_classs_largest_view_probability_by_hand():
    """PySlowFast's TEST.ENSEMBLE_METHOD max: per class, the largest softmax over the views (x V in our scores)."""
    logits = torch.tensor([[0.0, math.log(3.0)],    # video 0, view 0: softmax (0.25, 0.75)
                           [math.log(3.0), 0.0],    # video 0, view 1: softmax (0.75, 0.25)
                           [0.0, 0.0],              # video 1, view 0: (0.5, 0.5)
                           [0.0, math.log(4.0)]])   # video 1, view 1: (0.2, 0.8)
    scores = ev.aggregate_views(logits, num_views=2, method="max")
    assert torch.allclose(scores / 2, torch.tensor([[0.75, 0.75], [0.5, 0.8]]), atol=1e-6)
    assert torch.allclose(ev.aggregate_views(logits, 2, "sum") / 2, torch.tensor([[0.5, 0.5], [0.35, 0.65]]),
                          atol=1e-6)
    with pytest.raises(ValueError, match="test.ensemble='mean' is unknown"):
        ev.aggregate_views(logits, 2, "mean")
