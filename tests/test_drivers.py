"""The two drivers, run as a user runs them: a mistake in the input is one ``error:`` line on stderr and exit
status 2, without a traceback, from ``python train.py`` and ``python test.py`` alike."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SMALL = ["model.name=slowfast_tiny", "model.num_classes=3", "data.backend=pyav", "data.num_workers=0",
         "data.num_frames=8", "train.epochs=1"]


def run_driver(driver: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, driver, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def overrides(*pairs: str) -> list[str]:
    return [arg for pair in pairs for arg in ("-o", pair)]


def assert_one_error_line(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A checkpoint of this project (slowfast_tiny, 3 classes) and a bare state dict of the same model."""
    from models import CHECKPOINT_FORMAT, create_model

    folder = tmp_path_factory.mktemp("driver_weights")
    model = create_model("slowfast_tiny", num_classes=3)
    torch.save({"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "model_name": "slowfast_tiny",
                "model_args": asdict(model.arch)}, folder / "own.pt")
    torch.save(model.state_dict(), folder / "bare.pt")
    return folder


@pytest.mark.parametrize("driver", ["train.py", "test.py"])
def test_unknown_model_name(driver, weights, tmp_path):
    args = overrides(*SMALL, "model.name=slowfast_huge")
    if driver == "test.py":
        args += ["-w", str(weights / "bare.pt")]  # no architecture record: the model comes from model.name
    proc = run_driver(driver, "--output-dir", str(tmp_path / "out"), *args)
    assert_one_error_line(proc, "slowfast_huge")


@pytest.mark.parametrize("driver", ["train.py", "test.py"])
def test_missing_list(driver, weights, tmp_path):
    missing = tmp_path / "nowhere.list"
    key = "data.train_list" if driver == "train.py" else "data.test_list"
    args = overrides(*SMALL, f"{key}={missing}", f"data.root={tmp_path}")
    if driver == "test.py":
        args += ["-w", str(weights / "own.pt")]
    proc = run_driver(driver, "--output-dir", str(tmp_path / "out"), *args)
    assert_one_error_line(proc, str(missing))


@pytest.mark.parametrize("driver", ["train.py", "test.py"])
def test_frames_that_do_not_fit_the_models_alpha(driver, weights, tmp_path):
    args = overrides(*SMALL, "data.num_frames=6")
    if driver == "test.py":
        args += ["-w", str(weights / "own.pt")]
    proc = run_driver(driver, "--output-dir", str(tmp_path / "out"), *args)
    assert_one_error_line(proc, "data.num_frames=6", "alpha=4")


def test_weights_of_unknown_origin_build_the_model_they_fit_when_nothing_pins_it(weights, tmp_path):
    """No -c and no -o model.name: the file's tensors decide the model (load_pretrained): a 3-class
    slowfast_tiny, not the defaults' 400-class R50 (which would refuse the weights)."""
    import json

    from pipelines.video_io import numbered_frames, write_video

    clip = write_video(tmp_path / "clip.webm", numbered_frames(16, 48, 64), fps=30, codec="vp9")
    sizes = overrides("data.backend=pyav", "data.num_workers=0", "data.num_frames=8", "data.train_crop=32",
                      "data.train_short_side=32", "data.val_crop=32", "data.test_short_side=32",
                      "data.test_crop=32", "test.num_clips=1", "test.num_crops=1")
    out = tmp_path / "out"
    proc = run_driver("test.py", "-w", str(weights / "bare.pt"), "--video", str(clip), "--output-dir", str(out),
                      "--no-progress", *sizes)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (row,) = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert row["error"] is None and {c["name"] for c in row["top"]} == {"class_0", "class_1", "class_2"}
    # a pinned model is built as the configuration says, and the weights do not fit it
    proc = run_driver("test.py", "-w", str(weights / "bare.pt"), "--video", str(clip), "--output-dir", str(out),
                      *sizes, "-o", "model.name=slowfast_r50_4x16")
    assert_one_error_line(proc, "bare.pt")
