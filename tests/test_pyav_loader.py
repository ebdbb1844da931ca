"""The baseline loader: CPU transforms, PyAV frame-accurate decoding, and the loader contract."""
from __future__ import annotations

import logging
from fractions import Fraction

import numpy as np
import pytest
import torch

from pipelines import build_loader
from pipelines.dataset import VideoRecord
from pipelines.pyav_loader import DecodeError, batch_empty, build_pyav_loader, decode_frames
from pipelines.sampling import SpatialParams
from pipelines.transforms import apply_spatial, transform_clip
from pipelines.video_io import frame_number, write_video

MEAN, STD = (0.45, 0.45, 0.45), (0.225, 0.225, 0.225)


def _normalised(value):
    return (np.asarray(value, dtype=np.float64) / 255.0 - 0.45) / 0.225


def _pixels(tensor):
    """Undo the normalisation: (3, T, H, W) -> uint8-valued (T, H, W, 3) float array."""
    return (tensor.permute(1, 2, 3, 0).numpy().astype(np.float64) * 0.225 + 0.45) * 255.0


# ---------------------------------------------------------------- transforms.apply_spatial

def test_constant_frame_maps_to_its_normalised_value():
    frames = np.full((3, 40, 60, 3), 117, dtype=np.uint8)
    out = apply_spatial(frames, SpatialParams(resize_h=32, resize_w=48, y=0, x=10, crop=32), MEAN, STD)
    assert out.shape == (3, 3, 32, 32) and out.dtype == torch.float32
    assert torch.allclose(out, torch.full_like(out, float(_normalised(117))), atol=1e-5)


def test_crop_offsets_pick_the_expected_region_of_a_gradient():
    # channel 0 holds the row, channel 1 the column: the crop's corner shows where it was cut
    rows, cols = np.mgrid[0:40, 0:60]
    frame = np.stack([rows, cols, np.zeros_like(rows)], axis=-1).astype(np.uint8)
    out = apply_spatial(frame[None], SpatialParams(40, 60, y=7, x=13, crop=16), MEAN, STD)
    pixels = _pixels(out)[0]
    np.testing.assert_allclose(pixels[..., 0], rows[7:23, 13:29], atol=1e-3)
    np.testing.assert_allclose(pixels[..., 1], cols[7:23, 13:29], atol=1e-3)


def test_flip_reverses_columns():
    cols = np.broadcast_to(np.arange(32, dtype=np.uint8)[None, :, None] * 3, (32, 32, 3))
    frames = np.stack([cols, cols])
    out = apply_spatial(frames, SpatialParams(32, 32, 0, 0, 32, flip=True), MEAN, STD)
    np.testing.assert_allclose(_pixels(out)[0, 0, :, 0], (np.arange(32) * 3)[::-1], atol=1e-3)


def test_resize_scales_the_whole_frame_before_cropping():
    # left half black, right half white; halving the width keeps each half, blurred only at the seam
    frame = np.zeros((32, 64, 3), dtype=np.uint8)
    frame[:, 32:] = 255
    out = apply_spatial(torch.from_numpy(frame)[None], SpatialParams(16, 32, 0, 0, 16), MEAN, STD)
    assert out.shape == (3, 1, 16, 16)
    pixels = _pixels(apply_spatial(frame[None], SpatialParams(16, 32, 0, 16, 16), MEAN, STD))
    np.testing.assert_allclose(_pixels(out)[0, :, :12], 0.0, atol=1e-3)
    np.testing.assert_allclose(pixels[0, :, 4:], 255.0, atol=1e-3)


@pytest.mark.parametrize("frames, params, match", [
    (np.zeros((2, 8, 8), np.uint8), SpatialParams(8, 8, 0, 0, 8), "shape"),
    (np.zeros((2, 8, 8, 3), np.float32), SpatialParams(8, 8, 0, 0, 8), "uint8"),
    (np.zeros((2, 8, 8, 3), np.uint8), SpatialParams(8, 8, 2, 0, 8), "does not fit"),
])
def test_apply_spatial_rejects_bad_input(frames, params, match):
    with pytest.raises(ValueError, match=match):
        apply_spatial(frames, params)


# ---------------------------------------------------------------- decode_frames

@pytest.mark.parametrize("codec", ["vp9", "h264", "mjpeg", "vp8"])
def test_decode_frames_returns_the_requested_frames_in_order(numbered_video, codec):
    path = numbered_video(codec, num_frames=50)
    indices = [30, 0, 5, 49, 10, 10, 60]   # unsorted, repeated, past the end
    frames = decode_frames(path, indices)
    assert frames.shape == (7, 48, 64, 3) and frames.dtype == np.uint8
    assert [frame_number(f) for f in frames] == [30, 0, 5, 49, 10, 10, 49]


def test_decode_frames_on_ntsc_rate(numbered_video):
    path = numbered_video("vp9", num_frames=120, fps=Fraction(30000, 1001), keyframe_interval=16)
    wanted = [37, 38, 100, 119, 3]
    assert [frame_number(f) for f in decode_frames(path, wanted)] == wanted


def _remux_with_offset(src, dst, offset_s, fmt):
    import av

    with av.open(str(src)) as source, av.open(str(dst), "w", format=fmt) as target:
        stream_in = source.streams.video[0]
        stream_out = target.add_stream_from_template(stream_in)
        offset = int(offset_s / stream_in.time_base)
        for packet in source.demux(stream_in):
            if packet.dts is None:
                continue
            packet.pts += offset
            packet.dts += offset
            packet.stream = stream_out
            target.mux(packet)


@pytest.mark.parametrize("fmt, suffix", [("mp4", ".mp4"), ("matroska", ".mkv")])
def test_decode_frames_when_first_timestamp_is_not_zero(numbered_video, tmp_path, fmt, suffix):
    src = numbered_video("h264", num_frames=60, keyframe_interval=16)
    shifted = tmp_path / f"shifted{suffix}"
    _remux_with_offset(src, shifted, 1.5, fmt)
    wanted = [0, 1, 33, 17, 59, 80]
    assert [frame_number(f) for f in decode_frames(shifted, wanted)] == [0, 1, 33, 17, 59, 59]


def test_decode_frames_errors_name_the_file(tmp_path):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(DecodeError, match="corrupt.mp4"):
        decode_frames(corrupt, [0])
    with pytest.raises(DecodeError, match="missing.webm"):
        decode_frames(tmp_path / "missing.webm", [0])
    with pytest.raises(ValueError, match="empty"):
        decode_frames(corrupt, [])


# ---------------------------------------------------------------- the loader

def test_train_loader_shapes_labels_and_epoch_coverage(tiny_config):
    cfg = tiny_config()
    loader = build_loader(cfg, "train", alpha=4)
    assert len(loader) == 2  # 8 videos, batch 4
    seen = []
    for (slow, fast), labels, video_index in loader:
        assert fast.shape == (4, 3, 8, 48, 48) and fast.dtype == torch.float32
        assert slow.shape == (4, 3, 2, 48, 48)
        assert torch.equal(slow, fast[:, :, [0, 7]])  # linspace(0, 7, 2)
        assert labels.dtype == torch.int64 and video_index.dtype == torch.int64
        assert labels.tolist() == [loader.records[i].label for i in video_index.tolist()]
        seen += video_index.tolist()
    assert sorted(seen) == list(range(8))
    assert loader.failures == []


def test_train_epochs_are_deterministic_and_differ(tiny_config):
    loader = build_pyav_loader(tiny_config(), "train", rank=0, world_size=1, alpha=4)
    loader.set_epoch(3)
    first = [(fast.clone(), index.clone()) for (_, fast), _, index in loader]
    loader.set_epoch(3)
    again = [(fast, index) for (_, fast), _, index in loader]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    loader.set_epoch(4)
    other = torch.cat([index for _, _, index in loader])
    assert not torch.equal(other, torch.cat([index for _, index in first]))


@pytest.mark.slow
@pytest.mark.parametrize("channels_last", [True, False])
def test_workers_deliver_the_same_batches(tiny_config, channels_last):
    """Batches built in workers (in shared memory, see batch_empty) equal those built in the main process."""
    flag = f"model.channels_last={str(channels_last).lower()}"
    reference = list(build_pyav_loader(tiny_config(flag), "train", alpha=4))
    parallel = list(build_pyav_loader(tiny_config("data.num_workers=2", flag), "train", alpha=4))
    assert len(reference) == len(parallel) > 0
    for ((rs, rf), rl, ri), ((ps, pf), pl, pi) in zip(reference, parallel):
        assert torch.equal(rf, pf) and torch.equal(rs, ps) and torch.equal(rl, pl) and torch.equal(ri, pi)
        assert pf.stride() == rf.stride() and ps.stride() == rs.stride()


class _Allocates(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, index):
        return batch_empty((2, 3)).is_shared()


def test_batch_buffers_are_allocated_in_shared_memory_in_workers():
    """In a worker the batch is allocated in shared memory (it then crosses without a copy); in the main process
    it is ordinary memory."""
    assert not batch_empty((2, 3)).is_shared()
    in_workers = list(torch.utils.data.DataLoader(_Allocates(), batch_size=None, num_workers=1))
    assert in_workers == [True, True]


def test_val_shards_cover_every_video_once_with_padding(tiny_config):
    cfg = tiny_config("data.batch_size=2")
    indices, padded = [], []
    for rank in range(3):
        loader = build_loader(cfg, "val", rank=rank, world_size=3, alpha=4)
        assert len(loader) == 2  # ceil(8 / 3) = 3 samples per rank, batch 2
        for (_, fast), labels, video_index in loader:
            for row, (label, index) in enumerate(zip(labels.tolist(), video_index.tolist())):
                if index < 0:
                    padded.append((fast[row], label))
                else:
                    indices.append(index)
                    assert label == loader.records[index].label
    assert sorted(indices) == list(range(8))
    assert len(padded) == 1
    # a padding sample carries the first video's frames
    (_, fast0), _, index0 = next(iter(build_loader(cfg, "val", rank=0, world_size=1, alpha=4)))
    assert index0[0] == 0 and torch.equal(padded[0][0], fast0[0])


def test_test_loader_views_are_video_major(tiny_config):
    cfg = tiny_config()
    loader = build_loader(cfg, "test", alpha=4)
    assert len(loader) == 4
    (slow, fast), labels, video_index = next(iter(loader))
    assert fast.shape == (2 * 6, 3, 8, 48, 48) and slow.shape == (12, 3, 2, 48, 48)
    assert labels.shape == (2,) and video_index.tolist() == [0, 1]
    # the three crops of one clip are cut from the same frames: their overlap agrees
    # (a 64x48 frame at short side 48 is 64 wide: crops at x = 0, 8, 16 share columns 16..47)
    np.testing.assert_allclose(fast[0, :, :, :, 16:].numpy(), fast[1, :, :, :, 8:40].numpy(), atol=1e-6)
    np.testing.assert_allclose(fast[1, :, :, :, 8:].numpy(), fast[2, :, :, :, 0:40].numpy(), atol=1e-6)


def test_channels_last_output(tiny_config):
    (slow, fast), _, _ = next(iter(build_loader(tiny_config("model.channels_last=true"), "val", alpha=4)))
    assert fast.is_contiguous(memory_format=torch.channels_last_3d)
    assert slow.is_contiguous(memory_format=torch.channels_last_3d)


@pytest.mark.parametrize("probed", [True, False])
def test_loader_frames_are_the_sampled_frames(numbered_video, tiny_config, probed):
    path = numbered_video("vp9", num_frames=50)
    geometry = {"num_frames": 50, "fps": 30.0, "width": 64, "height": 48} if probed else {}
    records = [VideoRecord(path.name, 3, **geometry)]
    cfg = tiny_config(f"data.root={path.parent}", "test.num_crops=1", "data.batch_size=1")
    (_, fast), labels, _ = next(iter(build_pyav_loader(cfg, "val", alpha=4, records=records)))
    # centred clip of 8 frames x 2 at 30 fps in 50 frames: linspace(17, 32, 8) truncated
    assert [frame_number(f) for f in _pixels(fast[0]).round().astype(np.uint8)] == [17, 19, 21, 23, 25, 27, 29, 32]
    assert labels.tolist() == [3]
    (_, fast), _, _ = next(iter(build_pyav_loader(cfg, "test", alpha=4, records=records)))
    # two test clips, span 16, delta 34: the reference rule starts them at 34 * i / 2 = 0 and 17
    numbers = [[frame_number(f) for f in _pixels(view).round().astype(np.uint8)] for view in fast]
    assert numbers == [[0, 2, 4, 6, 8, 10, 12, 15], [17, 19, 21, 23, 25, 27, 29, 32]]
    spread = tiny_config(f"data.root={path.parent}", "test.num_crops=1", "test.clip_rule=spread")
    (_, fast), _, _ = next(iter(build_pyav_loader(spread, "test", alpha=4, records=records)))
    # test.clip_rule=spread: from the first possible start to the last, 0 and 34
    numbers = [[frame_number(f) for f in _pixels(view).round().astype(np.uint8)] for view in fast]
    assert numbers == [[0, 2, 4, 6, 8, 10, 12, 15], [34, 36, 38, 40, 42, 44, 46, 49]]


def test_resize_antialias_setting_reaches_the_transform(numbered_video, tiny_config):
    """``data.resize_antialias`` (auto resolved by ``imported_weights``) picks the resize of every view."""
    path = numbered_video("vp9", num_frames=50)
    records = [VideoRecord(path.name, 0, 50, 30.0, 64, 48)]
    # 64x48 at short side 24: a 2x downscale, where antialiasing matters (at 40 the two resizes of this blocky
    # content differ by less than the uint8 resize's rounding)
    base = [f"data.root={path.parent}", "test.num_crops=1", "data.test_short_side=24", "data.test_crop=24",
            "data.val_crop=24", "data.train_crop=24", "data.train_short_side=24,32"]
    plan = None
    outputs = {}
    for setting, imported in [("auto", False), ("auto", True), ("true", True), ("false", False)]:
        cfg = tiny_config(*base, f"data.resize_antialias={setting}")
        loader = build_pyav_loader(cfg, "val", alpha=4, records=records, imported_weights=imported)
        plan = loader.plan(0)
        (_, fast), _, _ = next(iter(loader))
        outputs[setting, imported] = fast[0]
    frames = decode_frames(path, plan.clips[0])
    with_aa = transform_clip(frames, plan.crops[0], MEAN, STD, antialias=True)
    without = transform_clip(frames, plan.crops[0], MEAN, STD, antialias=False)
    assert not torch.equal(with_aa, without)
    assert torch.equal(outputs["auto", False], with_aa) and torch.equal(outputs["true", True], with_aa)
    assert torch.equal(outputs["auto", True], without) and torch.equal(outputs["false", False], without)
    # and each is the float reference with the same setting, up to the uint8 resize's rounding
    level = 1 / 255 / 0.225
    for ours, antialias in ((with_aa, True), (without, False)):
        reference = apply_spatial(frames, plan.crops[0], MEAN, STD, antialias=antialias)
        assert (ours - reference).abs().max().item() <= 1.01 * level
        other = apply_spatial(frames, plan.crops[0], MEAN, STD, antialias=not antialias)
        assert (ours - other).abs().max().item() > 2 * level   # the setting matters more than the rounding


@pytest.fixture
def mixed_records(numbered_video, tmp_path):
    """Three videos in one folder: numbered (label 0), corrupt (label 1), flat grey 200 (label 2)."""
    numbered = numbered_video("vp9", num_frames=50)
    (tmp_path / "a.webm").write_bytes(numbered.read_bytes())
    (tmp_path / "b_corrupt.webm").write_bytes(b"\x1a\x45\xdf\xa3" + bytes(range(256)) * 8)
    write_video(tmp_path / "c.webm", (np.full((48, 64, 3), 200, np.uint8) for _ in range(40)), fps=30,
                codec="vp9", lossless=True)
    return tmp_path, [VideoRecord("a.webm", 0, 50, 30.0, 64, 48), VideoRecord("b_corrupt.webm", 1, 50, 30.0, 64, 48),
                      VideoRecord("c.webm", 2, 40, 30.0, 64, 48)]


def _check_label_matches_frames(fast, labels):
    for clip, label in zip(fast, labels.tolist()):
        pixels = _pixels(clip)
        if label == 2:  # the flat grey video
            np.testing.assert_allclose(pixels, 200.0, atol=2.0)
        else:  # the numbered video: half of each frame is black for frames < 64
            assert label == 0 and pixels.mean() < 150.0


def test_training_replaces_a_broken_video_with_a_labelled_one(mixed_records, tiny_config, caplog):
    root, records = mixed_records
    cfg = tiny_config(f"data.root={root}", "data.batch_size=3")
    loader = build_pyav_loader(cfg, "train", alpha=4, records=records)
    with caplog.at_level(logging.WARNING):
        batches = list(loader)
    assert len(batches) == 1
    (_, fast), labels, video_index = batches[0]
    assert 1 not in video_index.tolist() and 1 not in labels.tolist()
    assert labels.tolist() == [records[i].label for i in video_index.tolist()]
    _check_label_matches_frames(fast, labels)
    assert [f["path"] for f in loader.failures] == ["b_corrupt.webm"] and loader.failures[0]["index"] == 1
    assert "b_corrupt.webm" in caplog.text


def test_validation_turns_a_broken_video_into_padding(mixed_records, tiny_config):
    root, records = mixed_records
    cfg = tiny_config(f"data.root={root}", "data.batch_size=3")
    (_, fast), labels, video_index = next(iter(build_pyav_loader(cfg, "val", alpha=4, records=records)))
    assert video_index.tolist() == [0, -1, 2]
    _check_label_matches_frames(fast, labels)


def test_testing_leaves_a_broken_video_out(mixed_records, tiny_config):
    root, records = mixed_records
    cfg = tiny_config(f"data.root={root}", "test.batch_size=3", "test.num_crops=1")
    loader = build_pyav_loader(cfg, "test", alpha=4, records=records)
    batches = list(loader)
    assert len(batches) == 1
    (_, fast), labels, video_index = batches[0]
    assert video_index.tolist() == [0, 2] and labels.tolist() == [0, 2]
    assert fast.shape[0] == 2 * 2  # 2 videos x 2 clips x 1 crop
    np.testing.assert_allclose(_pixels(fast[2]), 200.0, atol=2.0)
    assert [f["path"] for f in loader.failures] == ["b_corrupt.webm"]


@pytest.mark.parametrize("rule, expected", [("linspace", [0, 2, 4, 7]), ("nearest", [0, 2, 4, 6])])
def test_the_slow_pathway_takes_the_models_frames(tiny_config, rule, expected):
    """slow_sampling travels from the model to the loader (positions within the 8 Fast frames): PySlowFast's
    linspace(0, 7, 4) = 0, 2.33, 4.67, 7 truncated = 0, 2, 4, 7; MMAction2's nearest by alpha 2 = 0, 2, 4, 6."""
    from pipelines import build_loader

    loader = build_loader(tiny_config(), "val", alpha=2, slow_sampling=rule)
    (slow, fast), _, _ = next(iter(loader))
    assert slow.shape[2] == 4
    assert torch.equal(slow, fast[:, :, expected])


def test_loader_inputs_of_an_imported_model():
    """The engine tells the loader the model's alpha and Slow-frame rule, and whether its weights are imported."""
    from engine.model import loader_inputs
    from models import create_model

    model = create_model("slowfast_tiny", num_classes=3, slow_sampling="nearest")
    assert loader_inputs(model) == {"alpha": 4, "slow_sampling": "nearest", "imported_weights": False}
    model.weights_format = "mmaction2"
    assert loader_inputs(model)["imported_weights"] is True
    model.weights_format = "slowfast-dali"
    assert loader_inputs(model)["imported_weights"] is False
