"""Faults and bad input in ``test.py``: every case ends in the right result or a one-line error.

Runs that carry their configuration (a checkpoint without ``-c``), where results go, coverage counted
against the whole list (a list longer than its index, a video that preparation left out as bad), weights or
outputs that are not finite, and the ``--video`` inputs (folders, patterns, FIFOs, ``--top-k``). The drivers
run as a user runs them (``python test.py`` / ``python -m pipelines.prepare`` in a subprocess) on the tiny
generated dataset of ``tests/conftest.py``; the expectations are chosen here (which files are bad, which
videos are listed, the class names the dataset generator writes).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import evaluator as ev
from engine.precision import resolve_precision
from models import create_model
from models.checkpoint_format import make_checkpoint
from utils.errors import UserError

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
NUM_CLASSES = 8
# tiny_config's data settings with 2 clips x 1 crop: 2 views per video (the defaults would give 30)
SMALL_TEST = ("model.name=slowfast_tiny", "test.num_clips=2", "test.num_crops=1", "test.batch_size=4")


def run(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def save_run(folder: Path, cfg, model: torch.nn.Module, name: str = "best.pt") -> Path:
    """A checkpoint as training writes it (with its resolved configuration) in a run folder."""
    folder.mkdir(parents=True, exist_ok=True)
    state = make_checkpoint(model_state=model.state_dict(), model_name=model.model_name,
                            model_args=asdict(model.arch), epoch=1, iteration=2, config=cfg.to_dict(),
                            metrics={"best_top1": 0.5})
    torch.save(state, folder / name)
    return folder / name


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return create_model("slowfast_tiny", num_classes=NUM_CLASSES).eval()


def val_entries(tiny_dataset) -> list[tuple[str, int]]:
    lines = Path(tiny_dataset["val_list"]).read_text().split("\n")
    return [(line.rsplit(maxsplit=1)[0], int(line.rsplit(maxsplit=1)[1])) for line in lines if line.strip()]


# ------------------------------------------------------------------------------------------ A. saved configuration

def test_a_checkpoint_without_c_runs_with_its_saved_config_and_writes_into_its_run(tiny_dataset, tiny_config,
                                                                                    tiny_model, tmp_path):
    run_dir = tmp_path / "run"
    weights = save_run(run_dir, tiny_config(*SMALL_TEST), tiny_model)
    shared = REPO / "output" / "SlowFast" / "test"   # the default test.output_dir: not this run's place
    shared_before = digests(shared) if shared.is_dir() else {}
    proc = run("test.py", "-w", str(weights), "--no-progress")   # no -c, no -o: everything from the checkpoint
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"configuration: the configuration saved in {str(weights)!r}" in proc.stdout
    metrics = json.loads((run_dir / "test" / "metrics.json").read_text())
    assert metrics["views_per_video"] == 2 and metrics["num_videos"] == NUM_CLASSES
    assert metrics["config"]["data"]["num_frames"] == 8 and metrics["config"]["data"]["test_crop"] == 48
    classes = Path(tiny_dataset["classes"]).read_text().split()
    rows = [json.loads(line) for line in (run_dir / "test" / "predictions.jsonl").read_text().splitlines()]
    assert [r["label_name"] for r in rows] == [classes[label] for _, label in val_entries(tiny_dataset)]
    assert (digests(shared) if shared.is_dir() else {}) == shared_before

    # --video with the model's own class names; overrides still apply; a --top-k above the class count is capped
    video = Path(tiny_dataset["root"]) / val_entries(tiny_dataset)[0][0]
    proc = run("test.py", "-w", str(weights), "--video", str(video), "--top-k", "99", "-o", "test.num_crops=3",
               "--no-progress")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "--top-k 99 is more than the model's 8 classes; showing all 8" in proc.stdout
    rows = [json.loads(line) for line in (run_dir / "test" / "videos" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["path"] == str(video)
    assert sorted(t["name"] for t in rows[0]["top"]) == sorted(classes)
    assert sum(t["probability"] for t in rows[0]["top"]) == pytest.approx(1.0, abs=1e-4)
    saved = (run_dir / "test" / "videos" / "config.yaml").read_text()
    assert "num_crops: 3" in saved and "num_frames: 8" in saved


def test_where_results_go(tiny_config, tiny_model, tmp_path):
    cfg = tiny_config("test.output_dir=recipe/test")
    ours = save_run(tmp_path / "run", cfg, tiny_model)
    other = tmp_path / "imported.pth"
    torch.save(tiny_model.state_dict(), other)   # a bare state dict: not one of our checkpoints

    def where(weights, **kwargs):
        return ev.resolve_output_dir(cfg, weights, **kwargs)

    assert where(ours, output_dir="cli", explicit_keys={"test.output_dir"}) == Path("cli")     # 1. --output-dir
    assert where(ours, explicit_keys={"test.output_dir"}) == Path("recipe/test")               # 2. -o test.output_dir
    assert where(ours) == tmp_path / "run" / "test"                                            # 3. beside our checkpoint
    assert where(other) == Path("recipe/test")                                                 # 4. the configuration
    assert where(ours, videos=True) == tmp_path / "run" / "test" / "videos"
    assert where(ours, output_dir="cli", videos=True) == Path("cli")


# ------------------------------------------------------------------------------------------ B. coverage

def test_coverage_counts_the_whole_list_longer_than_its_index_with_a_bad_video(tiny_dataset, tiny_config,
                                                                               tiny_model, tmp_path):
    """7 videos prepared (6 good, 1 corrupt: left out of the index as bad), then 2 more listed without
    re-preparing: 9 listed, 8 evaluated, the corrupt one reported with its reason."""
    source = Path(tiny_dataset["root"])
    entries = val_entries(tiny_dataset)
    root = tmp_path / "data"
    for path, _ in entries:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source / path, root / path)
    (root / "broken.webm").write_bytes(b"\x1a\x45\xdf\xa3 this is not a video")
    listing = tmp_path / "test.list"
    prepared = entries[:6] + [("broken.webm", 0)]
    listing.write_text("".join(f"{p} {label}\n" for p, label in prepared))
    proc = run("-m", "pipelines.prepare", "--root", str(root), "--list", str(listing), "--num-classes", "8",
               "--workers", "1", "--quiet")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    index = [json.loads(line)["path"] for line in Path(f"{listing}.index.jsonl").read_text().splitlines()]
    assert sorted(index) == sorted(p for p, _ in entries[:6])
    assert "broken.webm" in Path(f"{listing}.bad.jsonl").read_text()

    full = prepared + entries[6:]   # the list grows; the index does not
    listing.write_text("".join(f"{p} {label}\n" for p, label in full))
    weights = save_run(tmp_path / "run", tiny_config(*SMALL_TEST), tiny_model)
    proc = run("test.py", "-w", str(weights), "--no-progress", "-o", f"data.root={root}",
               "-o", f"data.test_list={listing}", "-o", f"data.class_names={tiny_dataset['classes']}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "over 8 of 9 videos" in proc.stdout
    metrics = json.loads((tmp_path / "run" / "test" / "metrics.json").read_text())
    assert (metrics["num_videos"], metrics["num_evaluated"], metrics["num_failed"], metrics["num_missing"]) == \
        (9, 8, 1, 0)
    assert metrics["coverage"] == "over 8 of 9 videos"
    assert [f["path"] for f in metrics["failed"]] == ["broken.webm"]
    assert metrics["failed"][0]["error"] and "broken.webm" in metrics["failed"][0]["error"]
    rows = [json.loads(line) for line in (tmp_path / "run" / "test" / "predictions.jsonl").read_text().splitlines()]
    assert [r["path"] for r in rows] == [p for p, _ in full if p != "broken.webm"]


# ------------------------------------------------------------------------------------------ C. non-finite

def _earlier_results(folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True)
    for name in ("metrics.json", "predictions.jsonl", "per_class_accuracy.csv", "confusion_matrix.csv",
                 "config.yaml"):
        (folder / name).write_text(f"earlier {name}\n")
    (folder / "test.log").write_text("earlier log\n")
    return digests(folder)


def test_nan_weights_are_one_error_line_and_earlier_results_stay(tiny_config, tiny_model, tmp_path):
    model = create_model("slowfast_tiny", num_classes=NUM_CLASSES)
    model.load_state_dict(tiny_model.state_dict())
    with torch.no_grad():
        model.head.proj.weight[0, 0] = float("nan")
    weights = save_run(tmp_path / "run", tiny_config(*SMALL_TEST), model)
    out = tmp_path / "earlier"
    before = _earlier_results(out)
    proc = run("test.py", "-w", str(weights), "--output-dir", str(out), "--no-progress")
    line = one_error_line(proc)
    assert str(weights) in line and "NaN or Inf" in line and "head.proj.weight" in line
    assert "earlier" in line and "retrain" in line          # the fix
    after = digests(out)
    assert set(after) == set(before)                         # no new file
    assert {k: v for k, v in after.items() if k != "test.log"} == {k: v for k, v in before.items() if k != "test.log"}
    assert (out / "test.log").read_text().startswith("earlier log\n")   # a log is appended to, never replaced


def test_non_finite_outputs_of_finite_weights_are_one_error_line(tiny_config, tiny_model, tmp_path):
    """Finite but huge classifier weights: the logits overflow to Inf and the softmax gives NaN."""
    model = create_model("slowfast_tiny", num_classes=NUM_CLASSES)
    model.load_state_dict(tiny_model.state_dict())
    with torch.no_grad():
        model.head.proj.weight.fill_(3e38)
    weights = save_run(tmp_path / "run", tiny_config(*SMALL_TEST), model)
    out = tmp_path / "earlier"
    before = _earlier_results(out)
    proc = run("test.py", "-w", str(weights), "--output-dir", str(out), "--no-progress")
    line = one_error_line(proc)
    assert str(weights) in line and "non-finite scores" in line and "nothing was written" in line
    assert {k: v for k, v in digests(out).items() if k != "test.log"} == \
        {k: v for k, v in before.items() if k != "test.log"}


class _Loader:
    """A test loader of 3 videos, one per batch, of 2 views each (what collect_scores reads)."""

    def __init__(self) -> None:
        from pipelines.dataset import VideoRecord

        self.records = [VideoRecord(f"v{i}.mp4", i) for i in range(3)]
        self.failures: list = []

    def __iter__(self):
        for i in range(3):
            fast = torch.full((2, 3, 4, 2, 2), float(i))
            yield [fast[:, :, :1], fast], torch.tensor([i]), torch.tensor([i])


class _NanForSecondVideo(torch.nn.Module):
    def forward(self, inputs):
        slow, fast = inputs
        logits = torch.zeros(fast.shape[0], 3)
        logits[fast[:, 0, 0, 0, 0] == 1.0] = float("nan")
        return logits


def test_evaluate_names_the_weights_and_the_first_video_with_non_finite_scores():
    with pytest.raises(ev.NonFiniteOutputs) as caught:
        ev.evaluate(_NanForSecondVideo(), _Loader(), num_views=2, device=CPU,
                    precision=resolve_precision("fp32", CPU, explicit=False), weights="run/best.pt")
    message = str(caught.value)
    assert isinstance(caught.value, UserError) and "\n" not in message
    assert "'run/best.pt'" in message and "1 video(s) (first: 'v1.mp4')" in message
    assert caught.value.video_indices == [1]


# ------------------------------------------------------------------------------------------ E. --video inputs

def test_video_inputs_expand_folders_and_patterns_and_report_what_cannot_be_read(tmp_path):
    (tmp_path / "a" / "deep").mkdir(parents=True)
    for name in ("a/x.mp4", "a/deep/y.WEBM", "a/deep/z.mkv", "a/readme.txt", "b.avi", "c.mp4"):
        (tmp_path / name).write_bytes(b"\0")
    (tmp_path / "empty").mkdir()
    os.mkfifo(tmp_path / "pipe.mp4")
    inputs = [str(tmp_path / "a"), str(tmp_path / "*.avi"), str(tmp_path / "a" / "x.mp4"),
              str(tmp_path / "**" / "z.mkv"), str(tmp_path / "empty"), str(tmp_path / "none*.mp4"),
              str(tmp_path / "missing.mp4"), str(tmp_path / "pipe.mp4"), str(tmp_path / "a" / "readme.txt")]
    expanded = ev.expand_video_inputs(inputs)
    files = [(os.path.relpath(p, tmp_path), error is None) for p, error in expanded]
    assert files == [
        ("a/deep/y.WEBM", True), ("a/deep/z.mkv", True), ("a/x.mp4", True),   # the folder, recursively, by suffix
        ("b.avi", True),                                                       # the pattern
        # a/x.mp4 named again and z.mkv matched again: predicted once
        ("empty", False), ("none*.mp4", False), ("missing.mp4", False), ("pipe.mp4", False),
        ("a/readme.txt", True),                                                # named: taken whatever its suffix
    ]
    errors = {os.path.relpath(p, tmp_path): error for p, error in expanded if error}
    assert "holds no video files" in errors["empty"] and ".mp4" in errors["empty"]
    assert "matches no video file" in errors["none*.mp4"]
    assert "does not exist" in errors["missing.mp4"]
    assert "FIFO" in errors["pipe.mp4"]


def test_top_k_below_one_is_one_error_line(tmp_path):
    line = one_error_line(run("test.py", "-w", str(tmp_path / "never_read.pt"), "--video", "x.mp4", "--top-k", "0"))
    assert "--top-k 0" in line and "--top-k 1" in line


def test_prediction_table_is_aligned_with_error_rows():
    table = ev.format_predictions_table([
        ev.Prediction("clips/a.mp4", top=[(3, "diving", 0.91), (12, "archery", 0.05)]),
        ev.Prediction("b.webm", error="cannot be probed: empty file"),
        ev.Prediction("longer/path/c.mp4", top=[(0, "abseiling", 1.0)]),
    ])
    assert table.splitlines() == [
        "file               rank  index  class      probability",
        "clips/a.mp4           1      3  diving          0.9100",
        "                      2     12  archery         0.0500",
        "b.webm             ERROR: cannot be probed: empty file",
        "longer/path/c.mp4     1      0  abseiling       1.0000",
    ]


def test_score_dumps_of_other_class_counts_are_refused(tmp_path):
    a = ev.save_scores(tmp_path / "a.npz", np.eye(2), [0, 1], ["x", "y"])
    b = ev.save_scores(tmp_path / "b.npz", np.eye(3)[:2], [0, 1], ["x", "y"])
    with pytest.raises(ev.ScoreDumpError, match="classes"):
        ev.combine_scores(a, b)
    (tmp_path / "junk.npz").write_bytes(b"not numpy")
    with pytest.raises(ev.ScoreDumpError, match="junk.npz.*cannot be read"):
        ev.combine_scores(tmp_path / "junk.npz", b)
