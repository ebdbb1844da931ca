"""The synthetic motion dataset: determinism, balance, reuse, and that motion (only) defines the class."""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from pipelines.dataset import index_path_for, read_index, read_list
from pipelines.pyav_loader import decode_frames
from pipelines.synthetic import CLASSES, generate_dataset, render_video, video_spec

SMALL = dict(num_train_per_class=1, num_val_per_class=1, width=64, height=48, num_frames=12, fps=30,
             codec="vp9", keyframe_interval=4, workers=2, progress=False)


def _decoded(root, list_path):
    return [decode_frames(root / path, range(12)) for path, _ in read_list(list_path)]


def test_same_seed_gives_identical_data_and_reuse(tmp_path):
    first = generate_dataset(tmp_path / "a", seed=3, **SMALL)
    second = generate_dataset(tmp_path / "b", seed=3, **SMALL)
    for key in ("train_list", "val_list", "classes"):
        assert first[key].read_text() == second[key].read_text()
    for a, b in zip(_decoded(first["root"], first["train_list"]), _decoded(second["root"], second["train_list"])):
        np.testing.assert_array_equal(a, b)
    # same parameters: nothing is rewritten; other parameters: regenerated
    video = first["root"] / read_list(first["train_list"])[0][0]
    stamp = video.stat().st_mtime_ns
    generate_dataset(tmp_path / "a", seed=3, **SMALL)
    assert video.stat().st_mtime_ns == stamp
    generate_dataset(tmp_path / "a", seed=4, **SMALL)
    assert not np.array_equal(decode_frames(video, [5]), _decoded(second["root"], second["train_list"])[0][5:6])


def test_lists_are_balanced_and_indexed(tiny_dataset):
    root = tiny_dataset["root"]
    assert tiny_dataset["classes"].read_text().split() == list(CLASSES)
    for key, per_class in (("train_list", 1), ("val_list", 1)):
        entries = read_list(tiny_dataset[key])
        assert Counter(label for _, label in entries) == {label: per_class for label in range(8)}
        assert all(path.startswith("videos/") and (root / path).is_file() for path, _ in entries)
        index = read_index(index_path_for(tiny_dataset[key]))
        assert [(r.num_frames, r.width, r.height, r.codec, r.fps) for r in index] == [(32, 64, 48, "vp9", 30.0)] * 8


def test_written_video_is_the_rendered_one(tiny_dataset):
    path, label = read_list(tiny_dataset["train_list"])[5]
    rendered = render_video(video_spec(0, "train", 5, label, 64, 48, 32)).astype(np.int16)
    decoded = decode_frames(tiny_dataset["root"] / path, range(32)).astype(np.int16)
    assert np.abs(decoded - rendered).mean() < 10  # lossy VP9 on noisy frames


def _centroids_and_areas(masks):
    ys, xs = np.mgrid[0:masks.shape[1], 0:masks.shape[2]]
    area = masks.sum(axis=(1, 2)).astype(float)
    return (xs * masks).sum(axis=(1, 2)) / area, (ys * masks).sum(axis=(1, 2)) / area, area


def _best_rotation(mask_a, mask_b):
    """The angle (radians, positive = clockwise on screen) that turns mask_a's shape into mask_b's."""
    ys, xs = np.nonzero(mask_a)
    cy_a, cx_a = ys.mean(), xs.mean()
    yb, xb = np.nonzero(mask_b)
    cy_b, cx_b = yb.mean(), xb.mean()
    best, best_hits = 0.0, -1
    for degrees in range(-180, 180, 3):
        phi = math.radians(degrees)
        # with y pointing down, (x, y) -> (x cos - y sin, x sin + y cos) turns clockwise on screen
        x = (xs - cx_a) * math.cos(phi) - (ys - cy_a) * math.sin(phi) + cx_b
        y = (xs - cx_a) * math.sin(phi) + (ys - cy_a) * math.cos(phi) + cy_b
        xi, yi = np.round(x).astype(int), np.round(y).astype(int)
        ok = (xi >= 0) & (xi < mask_b.shape[1]) & (yi >= 0) & (yi < mask_b.shape[0])
        hits = int(mask_b[yi[ok], xi[ok]].sum())
        if hits > best_hits:
            best, best_hits = phi, hits
    return best


@pytest.mark.parametrize("label", range(8), ids=CLASSES)
def test_motion_defines_the_class(label):
    width, height, frames = 128, 96, 33
    for index in range(3):
        spec = video_spec(7, "train", index * 8 + label, label, width, height, frames)
        _, masks = render_video(spec, with_masks=True)
        assert masks.sum(axis=(1, 2)).min() > 0.01 * width * height  # the object is visible throughout
        cx, cy, area = _centroids_and_areas(masks)
        dx, dy = cx[-1] - cx[0], cy[-1] - cy[0]
        name = CLASSES[label]
        if name == "moving_left":
            assert dx < -0.2 * width and abs(dy) < abs(dx) / 3
        elif name == "moving_right":
            assert dx > 0.2 * width and abs(dy) < abs(dx) / 3
        elif name == "moving_up":
            assert dy < -0.2 * height and abs(dx) < abs(dy) / 3
        elif name == "moving_down":
            assert dy > 0.2 * height and abs(dx) < abs(dy) / 3
        elif name == "growing":
            assert area[-1] > 2.0 * area[0]
        elif name == "shrinking":
            assert area[-1] < 0.5 * area[0]
        if name.startswith("rotating"):
            # a quarter of the video turns the shape by 45..90 degrees
            turn = _best_rotation(masks[0], masks[8])
            assert (turn > math.radians(20)) if name == "rotating_clockwise" else (turn < math.radians(-20))
        if name.startswith("moving") or name.startswith("rotating"):
            assert 0.8 < area[-1] / area[0] < 1.25


@pytest.mark.slow
def test_kinetics_mode_geometry(tmp_path):
    paths = generate_dataset(tmp_path, num_train_per_class=1, num_val_per_class=1, num_frames=6, mode="kinetics",
                             codec="mjpeg", workers=2, progress=False)
    record = read_index(index_path_for(paths["train_list"]))[0]
    assert (record.width, record.height, record.num_frames, record.fps) == (340, 256, 6, 30.0)


def test_h264_data_is_what_nvdec_decodes(tmp_path):
    # H.264 High profile, 4:2:0, 8-bit (NVDEC application note, Video Codec SDK 13.0: every generation decodes
    # Baseline/Main/High 4:2:0 8-bit from 48x16), recorded in the index for the GPU preflight
    paths = generate_dataset(tmp_path, **{**SMALL, "codec": "h264"})
    for record in read_index(index_path_for(paths["train_list"])):
        assert record.codec == "h264"
        assert (record.extra["profile"], record.extra["pix_fmt"], record.extra["bit_depth"],
                record.extra["chroma"]) == ("High", "yuv420p", 8, "420")
