"""Faults and bad input in the data layer: every case ends in the right result or a one-line error, in seconds.

One test per case class (issue "Nothing lost, nothing hangs, every mistake explained"): a stale index, list
parsing, non-regular files, failures counted per epoch, rotation metadata, variable-frame-rate video. Each
test writes its own bad input; references are independent of the code under test (frame numbers written
into the pixels, ``pipelines.sampling`` and the replacement rule drawn here, frame counts chosen here).
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import signal
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from configs import load_config
from pipelines import build_loader, sampling
from pipelines.base import display_rotation
from pipelines.dataset import DatasetError, VideoRecord, index_path_for, load_records, read_list
from pipelines.dataset import bad_report_path_for as bad_report_path
from pipelines.prepare import index_list
from pipelines.pyav_loader import DecodeError, decode_frames
from pipelines.video_io import frame_number, numbered_frames, write_video

T, ALPHA, SEED = 8, 4, 3
MEAN, STD = 0.45, 0.225
HEIGHT, WIDTH = 48, 64
HAS_DALI = importlib.util.find_spec("nvidia.dali") is not None

BACKENDS = [
    pytest.param(("pyav", "cpu"), id="pyav"),
    pytest.param(("dali", "cpu"), id="dali-cpu",
                 marks=[pytest.mark.dali, pytest.mark.skipif(not HAS_DALI, reason="NVIDIA DALI is not installed")]),
]


# ------------------------------------------------------------------------------------------ helpers

def _config(backend, root, *overrides):
    name, device = backend
    return load_config(None, [
        f"data.backend={name}", f"data.device={device}", f"data.root={root}", f"data.num_frames={T}",
        "data.sampling_rate=2", "data.target_fps=30", "data.train_short_side=[40,44]", "data.train_crop=40",
        "data.val_crop=40", "data.test_short_side=40", "data.test_crop=40", "data.batch_size=1",
        "data.num_workers=0", "data.dtype=fp32", "test.batch_size=2", "test.num_clips=2", "test.num_crops=1",
        "model.num_classes=3", f"data.seed={SEED}", "model.channels_last=false", *overrides])


def _numbered(path: Path, num_frames: int) -> Path:
    return write_video(path, numbered_frames(num_frames, HEIGHT, WIDTH), fps=30, codec="vp9", keyframe_interval=8,
                       lossless=True)


def _corrupt(path: Path, good: Path) -> Path:
    path.write_bytes(good.read_bytes()[:150] + bytes(range(256)) * 8)
    return path


def _frame_numbers(clip: torch.Tensor) -> list[int]:
    """Frame numbers of a normalised numbered (C, T, H, W) clip (every crop here covers the left half)."""
    pixels = (clip.float().cpu().permute(1, 2, 3, 0).numpy() * STD + MEAN) * 255.0
    return [int(round(pixels[t, ..., 0].mean(axis=0).max() / 4)) for t in range(pixels.shape[0])]


def _digest(*paths: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


@contextmanager
def _deadline(seconds: int):
    """Fail (instead of hanging the suite) if the block takes longer than ``seconds``."""
    def expired(*_):
        raise TimeoutError(f"still running after {seconds} s: something blocks")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _delivered(loader) -> list[int]:
    return [vi for *_, video_index in loader for vi in video_index.tolist()]


# ------------------------------------------------------------------------------------------ 1. a stale index

def test_a_stale_index_never_overrides_the_list(tmp_path, caplog):
    root = tmp_path / "data"
    root.mkdir()
    frames = {"v0.webm": 20, "v1.webm": 24, "v2.webm": 28, "v3.webm": 32}
    for name, n in frames.items():
        _numbered(root / name, n)
    _corrupt(root / "bad.webm", root / "v0.webm")
    lst = tmp_path / "test.list"
    lst.write_text("v0.webm 0\nv1.webm 1\nbad.webm 2\nv2.webm 2\n")
    index_list(lst, root, num_classes=3, workers=1, progress=False)
    index, report = index_path_for(lst), bad_report_path(lst)
    assert report.is_file() and "bad.webm" in report.read_text()
    # edit the list after preparation: v1 relabelled, v2 removed, v3 added; the index is made NEWER than the
    # list, so only a comparison by content (not by modification time) can find it stale
    lst.write_text("v0.webm 0\nv1.webm 2\nbad.webm 2\nv3.webm 1\n")
    later = lst.stat().st_mtime + 100
    os.utime(index, (later, later))
    before = _digest(lst, index, report)

    with caplog.at_level(logging.WARNING, logger="pipelines.dataset"):
        records = load_records(lst, root, num_classes=3)
    assert [(r.path, r.label) for r in records] == [("v0.webm", 0), ("v1.webm", 2), ("bad.webm", 2), ("v3.webm", 1)]
    # geometry only where path and label match; the others are bare records, probed by the loader
    assert [(r.num_frames, r.width, r.height, r.codec) for r in records] == [
        (20, WIDTH, HEIGHT, "vp9"), (0, 0, 0, ""), (0, 0, 0, ""), (0, 0, 0, "")]
    stale = [r.getMessage() for r in caplog.records if "out of date" in r.getMessage()]
    assert len(stale) == 1 and "1 listed video(s) are not in it (e.g. 'v3.webm')" in stale[0]
    assert "1 have another label there (e.g. 'v1.webm')" in stale[0] and "1 of its rows are no longer" in stale[0]
    assert "python -m pipelines.prepare --list" in stale[0]

    # a test run: every listed video is delivered or reported failed, with the probe's reason
    cfg = _config(BACKENDS[0].values[0], root, f"data.test_list={lst}")
    with _deadline(60):
        loader = build_loader(cfg, "test", alpha=ALPHA)
        delivered = _delivered(loader)
    assert len(loader.records) == 4
    assert [(r.num_frames, r.label) for r in loader.records[:2] + loader.records[3:]] == [(20, 0), (24, 2), (32, 1)]
    assert delivered == [0, 1, 3]
    assert [(f["index"], f["path"]) for f in loader.failures] == [(2, "bad.webm")]
    assert loader.failures[0]["error"].startswith("cannot be probed: ") and "bad.webm" in loader.failures[0]["error"]
    assert _digest(lst, index, report) == before  # nothing written over


# ------------------------------------------------------------------------------------------ 2. list parsing

def test_list_parsing_bom_crlf_duplicates_and_paths_outside_the_root(tmp_path):
    root = tmp_path / "root"
    (root / "cls").mkdir(parents=True)
    lst = tmp_path / "a.list"
    lst.write_bytes("\ufeffcls/a.mp4 0\r\ncls/b c.mp4 1\r\n\r\n# note\r\n".encode("utf-8"))
    assert read_list(lst, root) == [("cls/a.mp4", 0), ("cls/b c.mp4", 1)]
    assert [(r.path, r.label) for r in load_records(lst, root)] == [("cls/a.mp4", 0), ("cls/b c.mp4", 1)]

    inside = f"{root}/cls/a.mp4"
    bad_lists = {
        f"cls/a.mp4 0\n./cls/a.mp4 1\n": "a.list:2: duplicate entry './cls/a.mp4' (first on line 1 as 'cls/a.mp4')",
        f"cls/a.mp4 0\n{inside} 1\n": f"a.list:2: duplicate entry {inside!r} (first on line 1 as 'cls/a.mp4')",
        "cls/a.mp4 0\n../../x.mp4 1\n": "a.list:2: the path '../../x.mp4' leads outside the data root",
        f"cls/a.mp4 0\n{tmp_path}/elsewhere/x.mp4 1\n":
            f"a.list:2: the absolute path '{tmp_path}/elsewhere/x.mp4' is outside the data root '{root}'",
    }
    for text, message in bad_lists.items():
        lst.write_text(text)
        before = _digest(lst)
        with pytest.raises(DatasetError) as caught:
            load_records(lst, root)
        error = str(caught.value)
        assert message in error and "\n" not in error
        if "outside" in message:  # the fix is named
            assert "write paths relative to the data root (data.root)" in error
        assert _digest(lst) == before
    # an absolute path inside the root is the relative path
    lst.write_text(f"{inside} 0\n")
    assert [r.path for r in load_records(lst, root)] == ["cls/a.mp4"]


# ------------------------------------------------------------------------------------------ 3. non-regular files

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("indexed", [False, True], ids=["probed", "indexed"])
def test_a_fifo_or_directory_in_the_list_is_a_bad_video_and_nothing_hangs(tmp_path, backend, indexed):
    root = tmp_path / "data"
    root.mkdir()
    for i in range(3):
        _numbered(root / f"v{i}.webm", 20)
    os.mkfifo(root / "pipe.webm")
    (root / "folder.webm").mkdir()
    names = ["v0.webm", "pipe.webm", "v1.webm", "folder.webm", "v2.webm"]
    # indexed: records that claim geometry, so the loader reads the files without probing them
    geometry = (20, 30.0, WIDTH, HEIGHT, "vp9") if indexed else ()
    records = [VideoRecord(n, i % 3, *geometry) for i, n in enumerate(names)]
    with _deadline(60):
        loader = build_loader(_config(backend, root), "test", alpha=ALPHA, records=records)
        delivered = _delivered(loader)
    assert delivered == [0, 2, 4]
    reasons = {f["path"]: f["error"] for f in loader.failures}
    assert set(reasons) == {"pipe.webm", "folder.webm"}
    assert f"{str(root / 'pipe.webm')!r} is not a regular file (it is a FIFO (named pipe))" in reasons["pipe.webm"]
    assert f"{str(root / 'folder.webm')!r} is not a regular file (it is a directory)" in reasons["folder.webm"]
    if backend[0] == "pyav":
        with _deadline(10), pytest.raises(DecodeError, match="is not a regular file"):
            decode_frames(root / "pipe.webm", [0])


# ------------------------------------------------------------------------------------------ 4. failures per epoch

@pytest.mark.parametrize("backend", BACKENDS)
def test_failures_are_counted_per_epoch_and_the_run_goes_on(tmp_path, backend):
    root = tmp_path / "data"
    root.mkdir()
    names = [f"v{i}.webm" for i in range(7)]
    for name in names:
        _numbered(root / name, 20)
    _corrupt(root / "v2.webm", root / "v0.webm")  # overwrite two with bad content
    (root / "v5.webm").write_bytes(b"")
    bad = {2, 5}
    records = [VideoRecord(n, i % 3, 20, 30.0, WIDTH, HEIGHT, "vp9") for i, n in enumerate(names)]
    loader = build_loader(_config(backend, root), "train", alpha=ALPHA, records=records, rank=0, world_size=2)
    for epoch in range(4):
        loader.set_epoch(epoch)
        with _deadline(60):
            delivered = _delivered(loader)
        shard = sampling.shard_indices(7, 0, 2, shuffle=True, seed=SEED, epoch=epoch, pad=False)
        expected_met, expected = set(), []
        for slot in shard.tolist():  # the replacement rule, drawn here
            if slot not in bad:
                expected.append(slot)
                continue
            expected_met.add(slot)
            order = np.random.default_rng([SEED, epoch, slot, 1]).permutation(7)
            for candidate in (int(c) for c in order if c != slot):
                if candidate in bad:
                    expected_met.add(candidate)
                    continue
                expected.append(candidate)
                break
        assert delivered == expected and len(delivered) == len(loader)
        assert {f["index"] for f in loader.epoch_failures} == expected_met
    assert sorted(f["index"] for f in loader.failures) == [2, 5]  # each recorded once over the four epochs


# ------------------------------------------------------------------------------------------ 5. rotation metadata

def _write_rotated(path: Path, num_frames: int, *, matrix: int = 0, tag: str = "") -> Path:
    """A numbered VP9 file with a display matrix (``matrix`` degrees counter-clockwise) or a ``rotate`` tag."""
    import av

    container = av.open(str(path), "w", format="matroska" if path.suffix == ".mkv" else "webm")
    stream = container.add_stream("libvpx-vp9", rate=30)
    stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    stream.options = {"lossless": "1", "deadline": "realtime", "cpu-used": "8"}
    if matrix:
        stream.set_display_rotation(matrix)
    if tag:
        stream.metadata["rotate"] = tag
    for image in numbered_frames(num_frames, HEIGHT, WIDTH):
        for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


@pytest.mark.parametrize("backend", BACKENDS)
def test_rotation_metadata_warns_once_per_file_per_loader(tmp_path, backend, caplog):
    import av

    root = tmp_path / "data"
    root.mkdir()
    _write_rotated(root / "upright.webm", 20)
    _write_rotated(root / "matrix.webm", 20, matrix=90)
    _write_rotated(root / "tagged.mkv", 20, tag="90")  # an old muxer's tag: 90 clockwise = 270 counter-clockwise
    _numbered(root / "plain.webm", 20)
    with av.open(str(root / "tagged.mkv")) as container:  # the tag survives muxing (the test's premise)
        assert display_rotation(container.streams.video[0]) == 270
    names = ["upright.webm", "matrix.webm", "tagged.mkv", "plain.webm"]
    records = [VideoRecord(n, i % 3, 20, 30.0, WIDTH, HEIGHT, "vp9") for i, n in enumerate(names)]
    for _ in range(2):  # each loader warns on its own, once per file over all its epochs
        caplog.clear()
        loader = build_loader(_config(backend, root), "train", alpha=ALPHA, records=records)
        with caplog.at_level(logging.WARNING, logger="pipelines.base"):
            for epoch in range(3):
                loader.set_epoch(epoch)
                batches = list(loader)
                assert len(batches) == 4
        warned = [r.getMessage() for r in caplog.records if "rotation metadata" in r.getMessage()]
        assert sorted(warned) == sorted([
            f"video {root / 'matrix.webm'} (index 1) carries rotation metadata (90 degrees): its frames are used as "
            f"stored, not rotated for display; re-encode it upright (`ffmpeg -i IN OUT` applies the rotation) if "
            f"its orientation matters",
            f"video {root / 'tagged.mkv'} (index 2) carries rotation metadata (270 degrees): its frames are used as "
            f"stored, not rotated for display; re-encode it upright (`ffmpeg -i IN OUT` applies the rotation) if "
            f"its orientation matters"])
        assert loader.rotated == {1: 90, 2: 270} and loader.failures == []
        # the frames come as stored: 48 x 64 numbered frames, the planned ones
        (_, fast), _, video_index = batches[0]
        vi = video_index.item()
        rng = sampling.clip_rng(SEED, 2, vi)
        planned = sampling.train_clip_indices(20, 30.0, rng, num_frames=T, sampling_rate=2, target_fps=30.0)
        assert _frame_numbers(fast[0]) == planned.tolist()


# ------------------------------------------------------------------------------------------ 6. variable frame rate

def _write_vfr(path: Path, num_frames: int) -> Path:
    """Numbered lossless VP9 frames whose timestamps alternate between 20 ms and 70 ms steps every 10 frames."""
    import av

    container = av.open(str(path), "w", format="webm")
    stream = container.add_stream("libvpx-vp9", rate=30)
    stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
    stream.codec_context.gop_size = 8
    stream.options = {"lossless": "1", "deadline": "realtime", "cpu-used": "8", "kf-min-dist": "8",
                      "kf-max-dist": "8"}
    pts = 0
    for i, image in enumerate(numbered_frames(num_frames, HEIGHT, WIDTH)):
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = pts, Fraction(1, 1000)
        pts += 20 if (i // 10) % 2 == 0 else 70
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


def test_variable_frame_rate_frames_are_numbered_by_position_in_every_backend(tmp_path):
    import av

    root = tmp_path / "data"
    root.mkdir()
    _write_vfr(root / "vfr.webm", 60)
    with av.open(str(root / "vfr.webm")) as container:  # the premise: the timestamps are uneven
        stream = container.streams.video[0]
        steps = np.diff([p.pts for p in container.demux(stream) if p.size])
    assert set(steps.tolist()) == {20, 70}
    # frame i is the i-th frame, whatever its timestamp (by timestamp at 30 fps, 40 would be frame ~26)
    wanted = [0, 5, 11, 25, 40, 59, 33, 80]
    assert [frame_number(f) for f in decode_frames(root / "vfr.webm", wanted)] == [0, 5, 11, 25, 40, 59, 33, 59]

    records = [VideoRecord("vfr.webm", 0, 60, 30.0, WIDTH, HEIGHT, "vp9")]
    planned = sampling.test_clip_indices(60, 30.0, 2, num_frames=T, sampling_rate=2, target_fps=30.0)
    per_backend = {}
    for param in BACKENDS:
        if any(getattr(mark, "name", "") == "skipif" and mark.args and mark.args[0] for mark in param.marks):
            continue
        backend = param.values[0]
        loader = build_loader(_config(backend, root), "test", alpha=ALPHA, records=records)
        ((_, fast), _, video_index), = list(loader)
        assert video_index.tolist() == [0] and loader.failures == []
        per_backend[backend[0]] = [_frame_numbers(fast[c]) for c in range(2)]
        assert per_backend[backend[0]] == planned.tolist()
    if HAS_DALI:
        assert per_backend["dali"] == per_backend["pyav"]
