"""DALI pipelines on DALI's CPU decoder (data.device=cpu), on small generated VP9 videos.

References: pipelines.sampling (which frames, which crop), frame numbers encoded in the pixels
(pipelines.video_io.numbered_frames), and the PyAV baseline (decode_frames + apply_spatial).
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed")

from configs import load_config  # noqa: E402
from pipelines import BackendUnavailable, build_loader, sampling  # noqa: E402
from pipelines import dali_loader  # noqa: E402
from pipelines.dali_loader import DaliCodecError, DaliDecoderUnavailable, build_dali_loader  # noqa: E402
from pipelines.dataset import VideoRecord  # noqa: E402
from pipelines.codecs import codec_suffix  # noqa: E402
from pipelines.video_io import numbered_frames, write_video  # noqa: E402
from utils.errors import UserError  # noqa: E402

pytestmark = pytest.mark.dali

ALPHA = 4
T = 8
MEAN, STD = 0.45, 0.225
LEVEL = 1 / 255 / STD  # one 8-bit pixel level in normalised units
# (height, width, frames): landscape, portrait, a video shorter than one clip's span (8 x 2 = 16 frames)
SHAPES = [(48, 64, 40), (64, 48, 56), (48, 64, 12), (48, 80, 64), (64, 64, 48), (48, 64, 32), (48, 64, 44)]


def smooth_frames(num_frames: int, height: int, width: int):
    """Smooth colour gradients that move: content like a real video's, without single-pixel detail."""
    yy, xx = np.mgrid[0:height, 0:width]
    for i in range(num_frames):
        frame = np.empty((height, width, 3), dtype=np.uint8)
        frame[..., 0] = 128 + 100 * np.sin(xx / 5.0 + i / 3)
        frame[..., 1] = 128 + 100 * np.cos(yy / 4.0 - i / 4)
        frame[..., 2] = 128 + 60 * np.sin((xx + yy) / 7.0 + i / 5)
        yield frame


def _write_set(root: Path, content, codec: str = "vp9") -> list[VideoRecord]:
    """One lossless video per entry of SHAPES, with known geometry (the records need no probe)."""
    root.mkdir(parents=True, exist_ok=True)
    records = []
    for i, (height, width, frames) in enumerate(SHAPES):
        # NOTE: H.264 is written lossy (CRF 12, 4:2:0 8-bit): lossless H.264 is High 4:4:4, which NVDEC
        # cannot decode (tests/test_dali_gpu.py uses this writer)
        lossless = codec != "h264"
        path = write_video(root / f"video_{i}{codec_suffix(codec)}", content(frames, height, width), fps=30,
                           codec=codec, keyframe_interval=8, lossless=lossless,
                           quality=None if lossless else 12)
        records.append(VideoRecord(path.name, label=i % 3, num_frames=frames, fps=30.0, width=width,
                                   height=height, codec=codec))
    return records


@pytest.fixture(scope="module")
def numbered(tmp_path_factory):
    root = tmp_path_factory.mktemp("numbered")
    return root, _write_set(root, lambda n, h, w: numbered_frames(n, h, w))


@pytest.fixture(scope="module")
def smooth(tmp_path_factory):
    root = tmp_path_factory.mktemp("smooth")
    return root, _write_set(root, smooth_frames)


def make_cfg(root: Path, *overrides: str):
    return load_config(None, [
        "data.backend=dali", "data.device=cpu", f"data.root={root}", f"data.num_frames={T}",
        "data.sampling_rate=2", "data.target_fps=30", "data.train_short_side=[40,56]", "data.train_crop=32",
        "data.test_short_side=40",
        "data.val_crop=32", "data.test_crop=40", "data.batch_size=2", "data.num_workers=2", "data.prefetch=2",
        "test.batch_size=2", "test.num_clips=3", "test.num_crops=3", "model.num_classes=3", "data.seed=7",
        *overrides])


def copies(records):
    return [VideoRecord(**{k: v for k, v in vars(r).items()}) for r in records]


def loader_for(data, split, *overrides, rank=0, world_size=1, **kwargs):
    root, records = data
    return build_dali_loader(make_cfg(root, *overrides), split, rank=rank, world_size=world_size, alpha=ALPHA,
                             records=copies(records), **kwargs)


def pixels(clip: torch.Tensor) -> np.ndarray:
    """Normalised (C, T, H, W) -> 0..255 pixel values (T, H, W, C)."""
    return (clip.float().permute(1, 2, 3, 0).numpy() * STD + MEAN) * 255.0


def frame_numbers(clip: torch.Tensor) -> list[int]:
    """Frame numbers of a numbered clip (any crop, flipped or not).

    numbered_frames: the left half of frame i is at level 4 i, the right half at 0 (i < 64), so the
    brightest column mean is 4 i (a crop always covers part of the left half here).
    """
    values = pixels(clip)[..., 0]                    # (T, H, W)
    return [int(round(values[t].mean(axis=0).max() / 4)) for t in range(values.shape[0])]


# ------------------------------------------------------------------------------------------ batches

def test_train_batch_shapes_dtype_layout_labels(numbered):
    loader = loader_for(numbered, "train")
    assert len(loader) == len(SHAPES) // 2
    batches = list(loader)
    assert len(batches) == len(loader)
    for (slow, fast), labels, video_index in batches:
        assert fast.shape == (2, 3, T, 32, 32) and slow.shape == (2, 3, T // ALPHA, 32, 32)
        assert fast.dtype == slow.dtype == torch.float32 and fast.device.type == "cpu"
        assert fast.is_contiguous(memory_format=torch.channels_last_3d)
        assert slow.is_contiguous(memory_format=torch.channels_last_3d)
        # slow pathway = the fast frames at linspace(0, T - 1, T // alpha) = [0, 7] for T=8, alpha=4
        assert torch.equal(slow, fast[:, :, [0, 7]])
        assert labels.dtype == video_index.dtype == torch.int64
        assert labels.tolist() == [numbered[1][i].label for i in video_index.tolist()]


def test_channels_last_off_gives_contiguous_ncthw(numbered):
    (slow, fast), _, _ = next(iter(loader_for(numbered, "val", "model.channels_last=false")))
    assert fast.is_contiguous() and slow.is_contiguous()


def test_frames_are_the_sampled_indices(numbered):
    root, records = numbered
    seed, epoch = 7, 3
    # a crop of 40 out of a short side in [40, 44] keeps >= 4 columns of the numbered left half on every shape
    # here (with 32 of up to 74 columns a crop can miss it, and frame_numbers reads the blurred edge)
    loader = loader_for(numbered, "train", "data.train_short_side=[40,44]", "data.train_crop=40")
    loader.set_epoch(epoch)
    seen = 0
    for (_, fast), _, video_index in loader:
        for clip, vi in zip(fast, video_index.tolist()):
            record = records[vi]
            rng = sampling.clip_rng(seed, epoch, vi)
            expected = sampling.train_clip_indices(record.num_frames, record.fps, rng, T, 2, 30.0)
            assert frame_numbers(clip) == expected.tolist()
            seen += 1
    assert seen == len(loader) * 2
    for (_, fast), _, video_index in loader_for(numbered, "val"):
        for clip, vi in zip(fast, video_index.tolist()):
            record = records[vi]
            expected = sampling.val_clip_indices(record.num_frames, 30.0, T, 2, 30.0)
            assert frame_numbers(clip) == expected.tolist()


ANTIALIAS = pytest.mark.parametrize("antialias", [True, False], ids=["antialias", "no-antialias"])


@ANTIALIAS
def test_train_crop_and_flip_follow_sampling(smooth, antialias):
    """Each clip is the baseline transform (apply_spatial with train_spatial_params) of its frames, with the
    resize that data.resize_antialias picks (both backends honour it)."""
    transforms = pytest.importorskip("pipelines.transforms")
    root, records = smooth
    loader = loader_for(smooth, "train", f"data.resize_antialias={str(antialias).lower()}")
    assert loader.settings.antialias is antialias
    raw = RawDecoder()
    flips = set()
    for (_, fast), _, video_index in loader:
        for clip, vi in zip(fast, video_index.tolist()):
            record = records[vi]
            rng = sampling.clip_rng(7, 0, vi)
            indices = sampling.train_clip_indices(record.num_frames, record.fps, rng, T, 2, 30.0)
            params = sampling.train_spatial_params(record.height, record.width, rng, (40, 56), 32)
            flips.add(params.flip)
            frames = raw(root / record.path, indices)
            reference = transforms.apply_spatial(frames, params, [MEAN] * 3, [STD] * 3, antialias=antialias)
            # NOTE: same decoded frames on both sides, so this measures resize/crop/flip/normalise only.
            # Measured over 4 epochs of these videos: max 0.83 level, mean 0.25 level (1 level = 1/255/0.225
            # = 0.0174 normalised) with antialiasing; max 0.50, mean 0.25 without (DALI's plain linear resize is
            # torch's interpolate(antialias=False) up to the uint8 rounding). The mean is the rounding of DALI's
            # uint8 resize output (uniform error, mean 0.25); a wrong crop offset, flip or scale would give tens
            # of levels, and the other resize (antialiased against plain or back) up to 2.9 levels.
            assert (clip - reference).abs().max().item() < LEVEL
            assert (clip - reference).abs().mean().item() < 0.35 * LEVEL
    assert flips == {True, False}, "the seed should give both flipped and unflipped clips"


class RawDecoder:
    """Frames exactly as DALI's CPU decoder produces them (no resize), for transform-only comparisons."""

    def __init__(self):
        from nvidia.dali import fn, pipeline_def

        @pipeline_def(batch_size=1, num_threads=1, device_id=None, prefetch_queue_depth=1)
        def decode_only():
            encoded = fn.external_source(name="encoded")
            frames = fn.external_source(name="frames")
            return fn.decoders.video(encoded, device="cpu", frames=frames)

        self.pipe = decode_only()
        self.pipe.build()

    def __call__(self, path, indices) -> np.ndarray:
        (out,) = self.pipe.run(encoded=[np.fromfile(path, dtype=np.uint8)],
                               frames=[np.asarray(indices, dtype=np.int32)])
        return np.array(out[0])


# ------------------------------------------------------------------------------------------ determinism

def _collect(loader):
    return [(fast.clone(), labels.clone(), vi.clone()) for (_, fast), labels, vi in loader]


def test_same_seed_same_batches_other_epoch_differs(numbered):
    first, second = loader_for(numbered, "train"), loader_for(numbered, "train")
    a, b = _collect(first), _collect(second)
    for (fa, la, va), (fb, lb, vb) in zip(a, b):
        assert torch.equal(fa, fb) and torch.equal(la, lb) and torch.equal(va, vb)
    second.set_epoch(1)
    c = _collect(second)
    assert any(not torch.equal(va, vc) or not torch.equal(fa, fc) for (fa, _, va), (fc, _, vc) in zip(a, c))
    # and epoch 0 again reproduces epoch 0 on a loader that has run another epoch
    second.set_epoch(0)
    assert all(torch.equal(fa, fd) for (fa, _, _), (fd, _, _) in zip(a, _collect(second)))


# ------------------------------------------------------------------------------------------ distribution

def test_train_shards_are_disjoint(numbered):
    shards = []
    for rank in range(3):
        loader = loader_for(numbered, "train", "data.batch_size=1", rank=rank, world_size=3)
        loader.set_epoch(2)
        shards.append([vi for _, _, video_index in loader for vi in video_index.tolist()])
    assert [len(s) for s in shards] == [len(SHAPES) // 3] * 3
    flat = [vi for shard in shards for vi in shard]
    assert len(set(flat)) == len(flat)


@pytest.mark.parametrize("split", ["val", "test"])
def test_eval_shards_cover_every_video_once(numbered, split):
    seen, padding, steps = [], 0, []
    for rank in range(3):
        loader = loader_for(numbered, split, rank=rank, world_size=3)
        batches = list(loader)
        steps.append(len(batches))
        for _, _, video_index in batches:
            seen += [vi for vi in video_index.tolist() if vi >= 0]
            padding += sum(vi < 0 for vi in video_index.tolist())
    assert sorted(seen) == list(range(len(SHAPES)))
    assert padding == 3 * -(-len(SHAPES) // 3) - len(SHAPES)
    assert len(set(steps)) == 1, "every rank must run the same number of steps"


# ------------------------------------------------------------------------------------------ test views

def test_test_views_layout_and_frames(numbered):
    root, records = numbered
    loader = loader_for(numbered, "test")
    views = 3 * 3
    total = 0
    for (slow, fast), labels, video_index in loader:
        n = len(video_index)
        assert fast.shape == (n * views, 3, T, 40, 40) and slow.shape == (n * views, 3, T // ALPHA, 40, 40)
        assert fast.is_contiguous(memory_format=torch.channels_last_3d)
        assert labels.tolist() == [records[i].label for i in video_index.tolist()]
        for j, vi in enumerate(video_index.tolist()):
            record = records[vi]
            clips = sampling.test_clip_indices(record.num_frames, record.fps, 3, T, 2, 30.0)
            for clip in range(3):
                for crop in range(3):
                    view = fast[j * views + clip * 3 + crop]   # video-major, clip-major
                    assert frame_numbers(view) == clips[clip].tolist()
        total += n
    assert total == len(SHAPES)


def test_test_decode_once_equals_decode_per_view(smooth):
    once = _collect(loader_for(smooth, "test"))
    per_view = _collect(loader_for(smooth, "test", decode_per_view=True))
    assert len(once) == len(per_view)
    for (fa, la, va), (fb, lb, vb) in zip(once, per_view):
        assert torch.equal(la, lb) and torch.equal(va, vb)
        # the same decoded frames through the same resize; crop and normalise commute exactly
        assert torch.equal(fa, fb)


@ANTIALIAS
def test_test_crops_follow_sampling(smooth, antialias):
    """The three crops of a view are the baseline transform of the same decoded frames."""
    transforms = pytest.importorskip("pipelines.transforms")
    root, records = smooth
    raw = RawDecoder()
    loader = loader_for(smooth, "test", f"data.resize_antialias={str(antialias).lower()}")
    (_, fast), _, video_index = next(iter(loader))
    for j, vi in enumerate(video_index.tolist()):
        record = records[vi]
        clips = sampling.test_clip_indices(record.num_frames, record.fps, 3, T, 2, 30.0)
        crops = sampling.test_spatial_params(record.height, record.width, 40, 40, 3)
        assert len({(p.y, p.x) for p in crops}) == 3
        for clip in range(3):
            frames = raw(root / record.path, clips[clip])
            for crop, params in enumerate(crops):
                reference = transforms.apply_spatial(frames, params, [MEAN] * 3, [STD] * 3, antialias=antialias)
                diff = (fast[j * 9 + clip * 3 + crop] - reference).abs()
                # as in test_train_crop_and_flip_follow_sampling (measured on this first batch: max 0.82, mean
                # 0.25 level with antialiasing; max 0.50, mean 0.25 without)
                assert diff.max().item() < LEVEL and diff.mean().item() < 0.35 * LEVEL


# ------------------------------------------------------------------------------------------ baseline parity

# NOTE: measured on these lossless VP9 videos (smooth colour gradients), DALI's CPU decoder and PyAV
# (libavcodec + libswscale) give RGB frames that differ by up to 19-23 levels, mean 4.9 levels per clip:
# flat colours agree within 2 levels, so the difference is chroma upsampling on colour edges plus YUV->RGB
# rounding. End to end (test below, 4 epochs) the worst is max 19.0 levels and a per-clip mean of 4.94
# levels (train, upscaled clips) and 10.0 / 2.14 levels (val); without antialiasing (data.resize_antialias=false)
# 19.0 / 4.99 (train) and 15.8 / 3.07 levels (val: the plain resize passes more of the decoders' colour-edge
# difference through). The bounds are those decoder differences
# with a small margin. A one-frame shift of this content moves a clip's mean by >= 11 levels (measured);
# crop offsets and flips are checked to 1 level by the transform-only tests above.
DECODER_MAX_LEVELS, DECODER_MEAN_LEVELS = 24, 6


def test_decoders_agree_within_the_stated_tolerance(smooth):
    pyav_loader = pytest.importorskip("pipelines.pyav_loader")
    root, records = smooth
    raw = RawDecoder()
    for record in records:
        indices = np.linspace(0, record.num_frames - 1, 6).astype(np.int64)
        ours = raw(root / record.path, indices).astype(np.int64)
        theirs = pyav_loader.decode_frames(root / record.path, indices).astype(np.int64)
        assert ours.shape == theirs.shape
        assert np.abs(ours - theirs).max() <= DECODER_MAX_LEVELS
        assert np.abs(ours - theirs).mean() <= DECODER_MEAN_LEVELS


@ANTIALIAS
@pytest.mark.parametrize("split", ["train", "val"])
def test_parity_with_pyav_baseline(smooth, split, antialias):
    pyav_loader = pytest.importorskip("pipelines.pyav_loader")
    root, records = smooth
    cfg = make_cfg(root, "data.num_workers=0", f"data.resize_antialias={str(antialias).lower()}")
    dali_batches = list(build_dali_loader(cfg, split, alpha=ALPHA, records=copies(records)))
    pyav_batches = list(pyav_loader.build_pyav_loader(cfg, split, alpha=ALPHA, records=copies(records)))
    assert len(dali_batches) == len(pyav_batches) > 0
    for ((ds, df), dl, dv), ((ps, pf), pl, pv) in zip(dali_batches, pyav_batches):
        # the same videos, labels and order: both loaders follow pipelines.sampling
        assert torch.equal(dv, pv) and torch.equal(dl, pl)
        assert ds.shape == ps.shape and df.shape == pf.shape
        for ours, theirs in zip(df, pf):
            diff = (ours - theirs).abs()
            assert diff.max().item() < DECODER_MAX_LEVELS * LEVEL
            assert diff.mean().item() < DECODER_MEAN_LEVELS * LEVEL


# ------------------------------------------------------------------------------------------ zero copy

def test_handoff_is_a_view_of_dali_memory(numbered):
    loader = loader_for(numbered, "train")
    batches = iter(loader)
    (slow, fast), _, _ = next(batches)
    dali_batch = loader._previous_output.as_tensor()
    nthwc = fast.permute(0, 2, 3, 4, 1)
    assert nthwc.is_contiguous() and tuple(nthwc.shape) == tuple(dali_batch.shape())
    assert fast.data_ptr() == nthwc.data_ptr() == dali_batch.data_ptr()
    assert fast.is_contiguous(memory_format=torch.channels_last_3d)
    kept = fast.clone()
    for _ in batches:  # later runs must not overwrite the buffer the first batch still uses
        pass
    assert torch.equal(fast, kept)


# ------------------------------------------------------------------------------------------ errors and faults

def test_h264_on_cpu_is_refused_at_build_time(tmp_path):
    path = write_video(tmp_path / "clip.mp4", numbered_frames(8, 48, 64), codec="h264")
    records = [VideoRecord(path.name, 0)]  # no codec in the record: the loader probes it
    with pytest.raises(DaliCodecError, match=r"python -m pipelines.prepare --root \S+ --list \S+ --transcode-to "
                                              r"\S+ --codec vp9") as info:
        build_dali_loader(make_cfg(tmp_path), "train", alpha=ALPHA, records=records)
    assert "clip.mp4" in str(info.value) and "h264" in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_gpu_placement_without_gpu_names_the_alternatives(numbered):
    with pytest.raises(BackendUnavailable, match=r"-o data.device=cpu.*-o data.backend=pyav"):
        loader_for(numbered, "train", "data.device=gpu")


def test_build_loader_dispatches_to_dali(numbered):
    root, records = numbered
    loader = build_loader(make_cfg(root), "val", alpha=ALPHA, records=copies(records))
    assert type(loader).__module__ == "pipelines.dali_loader"
    assert sum(len(vi) for _, _, vi in loader) == len(SHAPES)


@pytest.fixture()
def with_bad_files(numbered, tmp_path):
    root, records = numbered
    for record in records:
        os.symlink(root / record.path, tmp_path / record.path)
    good = (root / records[0].path).read_bytes()
    (tmp_path / "corrupt.webm").write_bytes(good[:150] + bytes(range(256)) * 8)  # a header, then junk
    bad = [VideoRecord("corrupt.webm", 1, num_frames=40, fps=30.0, width=64, height=48, codec="vp9"),
           VideoRecord("missing.webm", 2, num_frames=40, fps=30.0, width=64, height=48, codec="vp9")]
    return tmp_path, copies(records) + bad


def test_train_replaces_a_bad_video_and_goes_on(with_bad_files):
    root, records = with_bad_files
    bad = {len(records) - 2, len(records) - 1}
    loader = build_dali_loader(make_cfg(root, "data.batch_size=3"), "train", alpha=ALPHA, records=records)
    delivered = []
    for (_, fast), labels, video_index in loader:
        assert fast.shape[0] == 3  # full batches: the bad videos were replaced
        assert labels.tolist() == [records[i].label for i in video_index.tolist()]
        delivered += video_index.tolist()
    assert not bad & set(delivered)
    assert {f["path"] for f in loader.failures} == {"corrupt.webm", "missing.webm"}
    assert all(f["error"] for f in loader.failures)


def test_test_leaves_a_bad_video_out(with_bad_files):
    root, records = with_bad_files
    loader = build_dali_loader(make_cfg(root, "test.batch_size=3"), "test", alpha=ALPHA, records=records)
    delivered = [vi for _, _, video_index in loader for vi in video_index.tolist()]
    assert sorted(delivered) == list(range(len(records) - 2))
    assert sorted(f["index"] for f in loader.failures) == [len(records) - 2, len(records) - 1]


def test_val_shows_a_padding_sample_for_a_bad_video(with_bad_files):
    root, records = with_bad_files
    loader = build_dali_loader(make_cfg(root, "data.batch_size=3"), "val", alpha=ALPHA, records=records)
    delivered = [vi for _, _, video_index in loader for vi in video_index.tolist()]
    assert len(delivered) == len(records)
    assert sorted(vi for vi in delivered if vi >= 0) == list(range(len(records) - 2))
    assert delivered.count(-1) == 2


# ------------------------------------------------------------------------------------------ decoder vs files

# what DALI 2.4 raises for a file its CPU decoder cannot open (measured: the same text for a corrupt file, a
# junk file and an H.264 file; the reason only goes to stderr, and no path: DALI decodes from memory)
DALI_OPEN_FAILURE = ('Critical error in pipeline:\nError in CPU operator `nvidia.dali.fn.decoders.video`,\n'
                     'which was used in the pipeline definition with the following traceback:\n\n  File "/x/y.py", '
                     'line 9, in video_pipeline\n\nencountered:\n\nAssert on "frames_decoders_[s]->IsValid()" '
                     'failed: Failed to create video decoder for "memory file"\nC++ context: [/opt/dali/dali/'
                     'operators/video/decoder/video_decoder_base.h:246]\nCurrent pipeline object is no longer valid.')


class FailingPipeline:
    """Stands in for a built DALI pipeline whose every run fails with ``message`` (after taking its input)."""

    def __init__(self, source, message):
        self.source, self.message = source, message

    def run(self):
        self.source()
        raise RuntimeError(self.message)

    def reset(self):
        pass


def _every_decode_fails(monkeypatch, message):
    monkeypatch.setattr(dali_loader, "build_video_pipeline",
                        lambda source, **kwargs: FailingPipeline(source, message))


def test_the_same_error_on_sound_videos_stops_with_one_error(numbered, monkeypatch):
    _every_decode_fails(monkeypatch, DALI_OPEN_FAILURE)
    loader = loader_for(numbered, "train")
    with pytest.raises(DaliDecoderUnavailable, match=r"3 video\(s\) in a row that PyAV decodes") as info:
        list(loader)
    message = str(info.value)
    assert "Failed to create video decoder" in message and "-o data.backend=pyav" in message
    assert "--codec vp9" in message and "\n" not in message
    assert isinstance(info.value, UserError)
    assert loader.failures == [], "the videos are not condemned"


@pytest.mark.parametrize("message", ["Failed to load libnvcuvid.so.1: cannot open shared object file",
                                     "Codec h264 profile High 4:4:4 is not supported by NVDEC",
                                     "Video size 32x8 is below the minimum supported size 48x16"])
def test_an_environment_error_stops_at_once(numbered, monkeypatch, message):
    _every_decode_fails(monkeypatch, f"Critical error in pipeline:\n{message}")
    loader = loader_for(numbered, "val")
    with pytest.raises(DaliDecoderUnavailable, match=r"fails on 1 video\(s\)") as info:
        list(loader)
    assert message in str(info.value)
    assert loader.failures == []


def test_a_sound_video_failing_alone_is_replaced(numbered, monkeypatch):
    """A file PyAV reads but DALI rejects, once: counted as that video's failure, the run goes on."""
    root, records = numbered
    loader = loader_for(numbered, "train", "data.batch_size=1")
    read = loader._read
    monkeypatch.setattr(loader, "_read", lambda index: np.frombuffer(bytes(range(256)) * 8, np.uint8)
                        if index == 4 else read(index))
    delivered = [vi for _, _, video_index in loader for vi in video_index.tolist()]
    assert len(delivered) == len(loader) == len(records) and 4 not in delivered
    assert [f["index"] for f in loader.failures] == [4]


def test_a_corrupt_file_among_good_ones_is_isolated(with_bad_files):
    root, records = with_bad_files
    loader = build_dali_loader(make_cfg(root, "data.batch_size=4"), "val", alpha=ALPHA, records=records[:-1])
    delivered = [vi for _, _, video_index in loader for vi in video_index.tolist()]
    assert delivered == list(range(len(records) - 2)) + [-1]
    assert [f["path"] for f in loader.failures] == ["corrupt.webm"]


def test_error_signature_ignores_paths_and_names():
    a = dali_loader.error_signature('Failed to open "/data/a/x.mp4" at 0x7f3c7c004d00 (/opt/dali/y.cc:3)')
    b = dali_loader.error_signature('Failed to open "/data/b/z.mp4" at 0x7f00aa (/opt/dali/y.cc:3)')
    assert a == b and "x.mp4" not in a
    assert dali_loader.error_signature("Failed to open") != dali_loader.error_signature("Out of frames")


# ------------------------------------------------------------------------------------------ memory

def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads RSS from /proc")
def test_memory_stays_flat_over_many_iterations(numbered):
    loader = loader_for(numbered, "train", "data.batch_size=3")
    iterations, epoch = 0, 0

    def run(count):
        nonlocal iterations, epoch
        target = iterations + count
        while iterations < target:
            loader.set_epoch(epoch)
            for _ in loader:
                iterations += 1
            epoch += 1

    run(30)  # warm-up: DALI's pools and the decoders reach their working size
    before = _rss_bytes()
    run(150)
    growth = _rss_bytes() - before
    # one batch is ~100 KB and the encoded set ~200 KB: a leak of a batch or a file per step would add
    # > 15 MB over 150 steps; allocator noise stays well below that
    assert growth < 12 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB over 150 iterations"


def test_close_releases_the_pipeline_and_the_reader_threads(numbered):
    """close() (the engine calls it when a run ends; a finalizer does it at exit at the latest) frees the DALI
    pipeline and the reader pool while the process is whole; the loader then refuses to iterate."""
    loader = loader_for(numbered, "val")
    for _ in loader:  # a whole epoch: the pipeline is kept for the next one
        pass
    assert loader._pipe is not None
    loader.close()
    loader.close()  # idempotent
    assert loader._pipe is None and loader._readers._shutdown and loader._read_ahead._shutdown
    with pytest.raises(RuntimeError, match="closed"):
        next(iter(loader))


def test_files_are_read_ahead_outside_the_training_thread(numbered, monkeypatch):
    """The external source runs in the training thread; the files of the batch after the one it prepares are read
    by the read-ahead thread meanwhile (as bytes, rotation check and segments), and the batches are unchanged."""
    expected = [(f.clone(), vi.clone()) for (_, f), _, vi in loader_for(numbered, "train")]
    loader = loader_for(numbered, "train", "data.prefetch=1")
    readers: dict[int, set] = {}
    real_read = type(loader)._read

    def spy(self, record_index):
        readers.setdefault(int(record_index), set()).add(threading.current_thread().name)
        return real_read(self, record_index)

    monkeypatch.setattr(type(loader), "_read", spy)
    batches = loader.epoch_batches()
    it = iter(loader)
    first = next(it)  # DALI has asked for batch 0 (and, with prefetch 1, maybe batch 1): batch 2 is not needed yet
    for future in list(loader._feeder.ahead.values()):
        future.result()
    ahead = max(loader._feeder.ahead) if loader._feeder.ahead else None
    assert ahead is not None and ahead >= 1
    # batch `ahead` is beyond what DALI asked for, yet its files are read already, by the reader threads
    for plan in batches[ahead]:
        assert plan.record_index in readers, (ahead, readers)
        assert all(name.startswith("dali-read") for name in readers[plan.record_index]), readers
    got = [first] + list(it)
    assert len(got) == len(expected)
    for ((_, fast), _, vi), (want_fast, want_vi) in zip(got, expected):
        assert torch.equal(vi, want_vi) and torch.equal(fast, want_fast)
