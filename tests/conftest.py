"""Shared fixtures: small generated videos with known content (no network, a few seconds in total).

- ``numbered_video(codec, num_frames=..., fps=..., ...)``: a cached video whose frame ``i`` shows the
  number ``i`` (:func:`pipelines.video_io.numbered_frames`, read back with ``frame_number``), lossless
  for VP9, near-lossless for H.264 (4:2:0, decodable by NVDEC) and MJPEG.
- ``tiny_dataset``: a synthetic motion dataset (8 classes, 1 train + 1 val video per class, 64x48,
  32 frames at 30 fps, VP9), with lists, indexes and ``classes.txt``.
- ``tiny_config(**overrides)``: the default configuration pointed at ``tiny_dataset`` with the PyAV
  backend and small clips (8 frames, 48-pixel crops, alpha 4-compatible).
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

from pipelines.codecs import codec_suffix
from pipelines.video_io import numbered_frames, write_video

NUMBERED_HEIGHT, NUMBERED_WIDTH = 48, 64


@pytest.fixture(scope="session")
def numbered_video(tmp_path_factory):
    """Factory of cached numbered-frame videos: ``numbered_video("vp9", num_frames=50, fps=30)``."""
    folder = tmp_path_factory.mktemp("numbered")
    cache: dict[tuple, Path] = {}

    def make(codec: str = "vp9", num_frames: int = 50, fps: float | Fraction = 30, keyframe_interval: int = 8,
             height: int = NUMBERED_HEIGHT, width: int = NUMBERED_WIDTH) -> Path:
        key = (codec, num_frames, fps, keyframe_interval, height, width)
        if key not in cache:
            name = f"n_{codec}_{num_frames}_{str(fps).replace('/', 'over')}_{keyframe_interval}_{height}x{width}"
            path = folder / (name + codec_suffix(codec))
            # NOTE: H.264 is written lossy (CRF 12, 4:2:0 8-bit; exact on these flat frames), never lossless:
            # lossless H.264 is High 4:4:4, which NVDEC cannot decode
            write_video(path, numbered_frames(num_frames, height, width), fps=fps, codec=codec,
                        keyframe_interval=keyframe_interval, lossless=codec == "vp9",
                        quality={"mjpeg": 2, "h264": 12}.get(codec))
            cache[key] = path
        return cache[key]

    return make


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """``{"root", "train_list", "val_list", "classes"}`` of a tiny synthetic VP9 dataset."""
    from pipelines.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("tiny_dataset")
    return generate_dataset(root, num_train_per_class=1, num_val_per_class=1, width=64, height=48, num_frames=32,
                            fps=30, codec="vp9", seed=0, keyframe_interval=8, workers=2, progress=False)


@pytest.fixture
def tiny_config(tiny_dataset):
    """Factory: the default config on ``tiny_dataset`` (PyAV, small clips) plus ``key=value`` overrides."""
    from configs import load_config

    def make(*overrides: str):
        base = [
            f"data.root={tiny_dataset['root']}", f"data.train_list={tiny_dataset['train_list']}",
            f"data.val_list={tiny_dataset['val_list']}", f"data.test_list={tiny_dataset['val_list']}",
            f"data.class_names={tiny_dataset['classes']}", "model.num_classes=8", "data.backend=pyav",
            "data.device=cpu", "data.num_frames=8", "data.sampling_rate=2", "data.train_short_side=[48, 56]",
            "data.train_crop=48", "data.val_crop=48", "data.test_short_side=48", "data.test_crop=48",
            "data.batch_size=4", "data.num_workers=0", "test.num_clips=2", "test.num_crops=3",
            "test.batch_size=2", "model.channels_last=false",
        ]
        return load_config(None, base + list(overrides))

    return make



@pytest.fixture
def one_cpu_thread():
    """One torch thread for the test (tiny tensors: OpenMP synchronisation would dominate)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

# ---------------------------------------------------------------------------------------------- hygiene
# `make test` must leave the clone as it found it: a test that writes into the repository (e.g. a test.py run
# without --output-dir landing in output/SlowFast/test) fails the session, naming the files.
REPO = Path(__file__).resolve().parent.parent
_NOT_OURS = {".git", ".venv", ".pytest_cache", "__pycache__"}


def _repo_files() -> set[str]:
    found = set()
    for path in REPO.rglob("*"):
        parts = path.relative_to(REPO).parts
        if any(p in _NOT_OURS or p.endswith(".egg-info") for p in parts) or not path.is_file():
            continue
        found.add(str(path.relative_to(REPO)))
    return found


def pytest_sessionstart(session):
    session.config._repo_files_before = _repo_files()


def pytest_sessionfinish(session, exitstatus):
    before = getattr(session.config, "_repo_files_before", None)
    if before is None or getattr(session.config, "workerinput", None) is not None:
        return
    new = sorted(_repo_files() - before)
    if new:
        print(f"\nerror: the tests wrote {len(new)} file(s) into the repository: {', '.join(new[:10])}"
              f"{' ...' if len(new) > 10 else ''}; write into tmp_path instead", flush=True)
        session.exitstatus = 1
