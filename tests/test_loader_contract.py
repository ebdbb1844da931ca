"""The loader contract (pipelines.base.VideoLoader), the same assertions for every backend.

Backends: ``pyav``; ``dali-cpu`` (DALI's CPU decoder, VP9); ``dali-gpu`` (NVDEC; H.264 4:2:0 8-bit written
with a CRF, never lossless: lossless H.264 is High 4:4:4, which NVDEC cannot decode).

References are independent of the loaders: frame numbers written into the pixels
(``pipelines.video_io.numbered_frames``), ``pipelines.sampling`` called here, the replacement rule's
permutation drawn here with numpy, and for pixel parity the PyAV baseline.
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from configs import load_config
from pipelines import build_loader, sampling
from pipelines.codecs import codec_suffix
from pipelines.dataset import VideoRecord, index_path_for
from pipelines.video_io import numbered_frames, write_video

T, ALPHA, SEED = 8, 4, 7
MEAN, STD = 0.45, 0.225
LEVEL = 1 / 255 / STD
# the decoders' measured RGB difference (tests/test_dali_cpu.py: mean ~5 levels, max ~24 at colour edges)
DECODER_MAX_LEVELS, DECODER_MEAN_LEVELS = 24, 6
# numbered videos 48x64, fewer than 64 frames (so the right half stays black), one shorter than a clip (16)
FRAMES = [40, 56, 12, 63, 48, 32, 44]
HEIGHT, WIDTH = 48, 64

HAS_DALI = importlib.util.find_spec("nvidia.dali") is not None

BACKENDS = [
    pytest.param(("pyav", "cpu", "vp9"), id="pyav"),
    pytest.param(("dali", "cpu", "vp9"), id="dali-cpu",
                 marks=[pytest.mark.dali, pytest.mark.skipif(not HAS_DALI, reason="NVIDIA DALI is not installed")]),
    pytest.param(("dali", "gpu", "h264"), id="dali-gpu",
                 marks=[pytest.mark.dali, pytest.mark.gpu,
                        pytest.mark.skipif(not HAS_DALI, reason="NVIDIA DALI is not installed"),
                        pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (NVDEC)")]),
]


def _write(path: Path, num_frames: int, codec: str) -> Path:
    # VP9 lossless; H.264 lossy 4:2:0 (NVDEC's format), near-exact on these flat grey frames
    return write_video(path, numbered_frames(num_frames, HEIGHT, WIDTH), fps=30, codec=codec,
                       keyframe_interval=8, lossless=codec == "vp9", quality=None if codec == "vp9" else 12)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Factory: ``videos(codec)`` -> (root, records) of the numbered set, written once per codec."""
    cache = {}

    def make(codec: str):
        if codec not in cache:
            root = tmp_path_factory.mktemp(f"contract_{codec}")
            records = []
            for i, n in enumerate(FRAMES):
                path = _write(root / f"v{i}{codec_suffix(codec)}", n, codec)
                records.append(VideoRecord(path.name, i % 3, n, 30.0, WIDTH, HEIGHT, codec))
            good = (root / records[0].path).read_bytes()
            (root / f"corrupt{codec_suffix(codec)}").write_bytes(good[:150] + bytes(range(256)) * 8)
            cache[codec] = (root, records)
        return cache[codec]

    return make


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


def config(backend, root, *overrides: str):
    name, device, _ = backend
    return load_config(None, [
        f"data.backend={name}", f"data.device={device}", f"data.root={root}", f"data.num_frames={T}",
        "data.sampling_rate=2", "data.target_fps=30", "data.train_short_side=[40,44]", "data.train_crop=40",
        "data.val_crop=40", "data.test_short_side=40", "data.test_crop=40", "data.batch_size=2",
        "data.num_workers=0", "data.dtype=fp32", "test.batch_size=2", "test.num_clips=2", "test.num_crops=3",
        "model.num_classes=3", f"data.seed={SEED}", "model.channels_last=true", *overrides])


def make_loader(backend, data, split, *overrides, records=None, rank=0, world_size=1):
    root, default = data
    records = [VideoRecord(**vars(r)) for r in (default if records is None else records)]
    return build_loader(config(backend, root, *overrides), split, rank=rank, world_size=world_size, alpha=ALPHA,
                        records=records)


def frame_numbers(clip: torch.Tensor) -> list[int]:
    """Frame numbers of a numbered (C, T, H, W) clip: the brightest column mean is 4 i (any crop, any flip;
    every crop here covers part of the frame's left half)."""
    pixels = (clip.float().cpu().permute(1, 2, 3, 0).numpy() * STD + MEAN) * 255.0
    return [int(round(pixels[t, ..., 0].mean(axis=0).max() / 4)) for t in range(pixels.shape[0])]


def expected_clips(split, record, video_index, epoch, val_sampling="centred", clip_rule="reference"):
    timing = dict(num_frames=T, sampling_rate=2, target_fps=30.0)
    if split == "train" or (split == "val" and val_sampling == "reference"):
        stream = sampling.TRAIN_STREAM if split == "train" else sampling.VAL_STREAM
        rng = sampling.clip_rng(SEED, epoch, video_index, stream)
        return sampling.train_clip_indices(record.num_frames, record.fps, rng, **timing)[None]
    if split == "val":
        return sampling.val_clip_indices(record.num_frames, record.fps, **timing)[None]
    return sampling.test_clip_indices(record.num_frames, record.fps, 2, **timing, rule=clip_rule)


def expected_replacement(num_videos, epoch, video_index, bad):
    """The rule, drawn here: the first of permutation(seed, epoch, video, 1) other than itself, not bad."""
    order = np.random.default_rng([SEED, epoch, video_index, 1]).permutation(num_videos)
    return next(int(i) for i in order if i != video_index and i not in bad)


def collect(loader):
    return [(slow, fast, labels, vi) for (slow, fast), labels, vi in loader]


# ------------------------------------------------------------------------------------------ frames and layout

@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_frames_layout_and_length(backend, videos, split):
    data = videos(backend[2])
    records = data[1]
    loader = make_loader(backend, data, split)
    epoch = 3
    loader.set_epoch(epoch)
    batches = collect(loader)
    assert len(batches) == len(loader)
    views = 6 if split == "test" else 1
    seen = []
    for slow, fast, labels, video_index in batches:
        n = len(video_index)
        assert fast.shape == (n * views, 3, T, 40, 40) and slow.shape == (n * views, 3, T // ALPHA, 40, 40)
        assert fast.dtype == slow.dtype == torch.float32
        assert fast.is_contiguous(memory_format=torch.channels_last_3d)
        assert slow.is_contiguous(memory_format=torch.channels_last_3d)
        assert torch.equal(slow, fast[:, :, [0, 7]])  # linspace(0, 7, 2)
        assert labels.dtype == video_index.dtype == torch.int64 and labels.shape == video_index.shape == (n,)
        for j, vi in enumerate(video_index.tolist()):
            assert labels[j].item() == records[vi].label
            clips = expected_clips(split, records[vi], vi, epoch)
            for v in range(views):  # video-major, clip-major: view = clip * num_crops + crop
                assert frame_numbers(fast[j * views + v]) == clips[v // 3 if split == "test" else 0].tolist()
            seen.append(vi)
    if split == "train":
        assert len(seen) == len(loader) * 2 and len(set(seen)) == len(seen)
    else:
        assert sorted(seen) == list(range(len(records)))
    assert loader.failures == []


def test_val_reference_sampling_draws_like_training(backend, videos):
    """train.val_sampling=reference: a random clip, scale, train_crop and flip per video and epoch, the same
    for every backend (its own per-clip stream, VAL_STREAM)."""
    data = videos(backend[2])
    records = data[1]
    # val_crop 32 would be the centred crop's size; the reference validates with the training crop (40)
    loader = make_loader(backend, data, "val", "train.val_sampling=reference", "data.val_crop=32")
    delivered = {}
    for epoch in (1, 2):
        loader.set_epoch(epoch)
        for _, fast, labels, video_index in collect(loader):
            assert fast.shape[-3:] == (T, 40, 40)
            for j, vi in enumerate(video_index.tolist()):
                clip = expected_clips("val", records[vi], vi, epoch, val_sampling="reference")[0].tolist()
                assert frame_numbers(fast[j]) == clip
                rng = sampling.clip_rng(SEED, epoch, vi, sampling.VAL_STREAM)
                sampling.train_clip_indices(records[vi].num_frames, records[vi].fps, rng, T, 2, 30.0)
                crop = sampling.train_spatial_params(HEIGHT, WIDTH, rng, (40, 44), 40)
                assert loader.plan(vi, epoch).crops == [crop]
                delivered[epoch, vi] = clip
    assert sorted(vi for (e, vi) in delivered if e == 1) == list(range(len(records)))
    assert any(delivered[1, vi] != delivered[2, vi] for vi in range(len(records))), "epochs draw anew"


def test_test_clip_rule_spread(backend, videos):
    data = videos(backend[2])
    records = data[1]
    loader = make_loader(backend, data, "test", "test.clip_rule=spread")
    for _, fast, _, video_index in collect(loader):
        for j, vi in enumerate(video_index.tolist()):
            clips = expected_clips("test", records[vi], vi, 0, clip_rule="spread")
            for v in range(6):
                assert frame_numbers(fast[j * 6 + v]) == clips[v // 3].tolist()


def test_channels_last_off_gives_contiguous_ncthw(backend, videos):
    loader = make_loader(backend, videos(backend[2]), "val", "model.channels_last=false")
    (slow, fast), _, _ = next(iter(loader))
    assert fast.is_contiguous() and slow.is_contiguous()


# ------------------------------------------------------------------------------------------ shards

@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_train_shards_are_disjoint(backend, videos, world_size):
    data = videos(backend[2])
    shards = []
    for rank in range(world_size):
        loader = make_loader(backend, data, "train", "data.batch_size=1", rank=rank, world_size=world_size)
        loader.set_epoch(2)
        shard = [vi for *_, video_index in collect(loader) for vi in video_index.tolist()]
        assert len(shard) == len(loader) == len(FRAMES) // world_size
        shards.append(shard)
    flat = [vi for shard in shards for vi in shard]
    assert len(set(flat)) == len(flat) and set(flat) <= set(range(len(FRAMES)))
    if world_size == 1:
        assert sorted(flat) == list(range(len(FRAMES)))


@pytest.mark.parametrize("split", ["val", "test"])
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_eval_shards_cover_every_video_once(backend, videos, split, world_size):
    data = videos(backend[2])
    seen, padding, steps = [], 0, []
    for rank in range(world_size):
        loader = make_loader(backend, data, split, rank=rank, world_size=world_size)
        batches = collect(loader)
        assert len(batches) == len(loader)
        steps.append(len(batches))
        for *_, video_index in batches:
            seen += [vi for vi in video_index.tolist() if vi >= 0]
            padding += sum(vi < 0 for vi in video_index.tolist())
    assert sorted(seen) == list(range(len(FRAMES)))
    assert padding == world_size * -(-len(FRAMES) // world_size) - len(FRAMES)
    assert len(set(steps)) == 1, "every rank must run the same number of steps"


# ------------------------------------------------------------------------------------------ bad videos

def _with_corrupt(data, codec):
    root, records = data
    bad = VideoRecord(f"corrupt{codec_suffix(codec)}", 1, 40, 30.0, WIDTH, HEIGHT, codec)
    return records[:3] + [bad] + records[3:]  # the corrupt video is index 3


def test_train_replaces_a_bad_video_by_the_rule(backend, videos, caplog):
    data = videos(backend[2])
    records = _with_corrupt(data, backend[2])
    loader = make_loader(backend, data, "train", "data.batch_size=1", records=records)
    with caplog.at_level(logging.WARNING):
        for epoch in (0, 1):
            loader.set_epoch(epoch)
            batches = collect(loader)
            assert len(batches) == len(loader) == len(records)
            delivered = [vi for *_, video_index in batches for vi in video_index.tolist()]
            shard = sampling.shard_indices(len(records), 0, 1, shuffle=True, seed=SEED, epoch=epoch, pad=False)
            replacement = expected_replacement(len(records), epoch, 3, {3})
            assert delivered == [replacement if vi == 3 else int(vi) for vi in shard]
            for _, fast, labels, video_index in batches:  # the replacement's own label and clip
                vi = video_index.item()
                assert labels.item() == records[vi].label
                assert frame_numbers(fast[0]) == expected_clips("train", records[vi], vi, epoch)[0].tolist()
            assert [f["index"] for f in loader.epoch_failures] == [3]
    assert [(f["index"], f["path"]) for f in loader.failures] == [(3, records[3].path)]
    assert loader.failures[0]["error"]
    logged = [r for r in caplog.records if records[3].path in r.getMessage()]
    assert len(logged) == 1, "a failure is logged once"


def test_val_shows_the_replacement_as_padding(backend, videos):
    data = videos(backend[2])
    records = _with_corrupt(data, backend[2])
    loader = make_loader(backend, data, "val", records=records)
    batches = collect(loader)
    assert len(batches) == len(loader)
    rows = [(fast[j], vi) for _, fast, _, video_index in batches for j, vi in enumerate(video_index.tolist())]
    assert [vi for _, vi in rows] == [0, 1, 2, -1, 4, 5, 6, 7]
    replacement = expected_replacement(len(records), 0, 3, {3})
    assert frame_numbers(rows[3][0]) == expected_clips("val", records[replacement], replacement, 0)[0].tolist()
    assert [f["index"] for f in loader.failures] == [3]


def test_test_leaves_a_bad_video_out(backend, videos):
    data = videos(backend[2])
    records = _with_corrupt(data, backend[2])
    loader = make_loader(backend, data, "test", records=records)
    batches = collect(loader)
    assert len(batches) == len(loader)  # batch [2, 3] still holds video 2
    delivered = [vi for *_, video_index in batches for vi in video_index.tolist()]
    assert delivered == [0, 1, 2, 4, 5, 6, 7]
    assert batches[1][1].shape[0] == 1 * 6
    assert [f["index"] for f in loader.failures] == [3]


# ------------------------------------------------------------------------------------------ unindexed lists

@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_unindexed_list_with_a_corrupt_file_behaves_like_an_indexed_one(backend, videos, tmp_path, split):
    codec = backend[2]
    root, indexed = videos(codec)
    list_path = tmp_path / f"{split}.list"
    corrupt = f"corrupt{codec_suffix(codec)}"
    paths = [r.path for r in indexed[:3]] + [corrupt] + [r.path for r in indexed[3:]]
    labels = [r.label for r in indexed[:3]] + [1] + [r.label for r in indexed[3:]]
    list_path.write_text("".join(f"{p} {label}\n" for p, label in zip(paths, labels)))
    assert not index_path_for(list_path).exists()
    cfg = config(backend, root, f"data.{split}_list={list_path}", "data.batch_size=1")
    loader = build_loader(cfg, split, alpha=ALPHA)
    # geometry probed: what the index would say
    for record, n in zip(loader.records, FRAMES[:3] + [None] + FRAMES[3:]):
        if n is not None:
            assert (record.num_frames, record.width, record.height, record.codec) == (n, WIDTH, HEIGHT, codec)
            assert record.fps == pytest.approx(30.0)
    assert [f["index"] for f in loader.failures] == [3] and corrupt in loader.failures[0]["error"]
    batches = collect(loader)
    assert len(batches) == len(loader)
    delivered = [vi for *_, video_index in batches for vi in video_index.tolist()]
    if split == "train":
        shard = sampling.shard_indices(len(paths), 0, 1, shuffle=True, seed=SEED, epoch=0, pad=False)
        replacement = expected_replacement(len(paths), 0, 3, {3})
        assert delivered == [replacement if vi == 3 else int(vi) for vi in shard]
    elif split == "val":
        assert delivered == [0, 1, 2, -1, 4, 5, 6, 7]
    else:
        assert delivered == [0, 1, 2, 4, 5, 6, 7]
    views = 6 if split == "test" else 1
    for _, fast, _, video_index in batches:
        for j, vi in enumerate(video_index.tolist()):
            if vi >= 0:
                clips = expected_clips(split, loader.records[vi], vi, 0)
                assert frame_numbers(fast[j * views]) == clips[0].tolist()
    assert [f["index"] for f in loader.failures] == [3]


# ------------------------------------------------------------------------------------------ pixel parity

@pytest.mark.parametrize("backend", BACKENDS[1:])  # every backend but the baseline itself
@pytest.mark.parametrize("protocol", [(), ("train.val_sampling=reference", "data.resize_antialias=false")],
                         ids=["default", "reference-val-no-antialias"])
@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_pixels_match_the_pyav_baseline(backend, videos, split, protocol):
    data = videos(backend[2])
    ours = collect(make_loader(backend, data, split, *protocol))
    theirs = collect(make_loader(("pyav", "cpu", backend[2]), data, split, *protocol))
    assert len(ours) == len(theirs) > 0
    for (os_, of, ol, ov), (ps, pf, pl, pv) in zip(ours, theirs):
        assert torch.equal(ov.cpu(), pv) and torch.equal(ol.cpu(), pl)
        assert of.shape == pf.shape and os_.shape == ps.shape
        diff = (of.float().cpu() - pf).abs()
        assert diff.max().item() < DECODER_MAX_LEVELS * LEVEL
        assert diff.mean().item() < DECODER_MEAN_LEVELS * LEVEL


# ------------------------------------------------------------------------------------------ multigrid

# Long cycle (4 frames at the full 40-pixel crop, then the full 8 frames) and a short cycle of one smaller crop,
# at 1 clip per micro-batch, over 2 x 1.5 = 3 epochs: hand-computed from pipelines/multigrid.py's rules,
# batch factor round(T S^2 / (T' S'^2)): stage 1 (4 frames, 40 px) x2, epochs [0, 2); stage 2 (8, 40) x1, [2, 3);
# short-cycle crop round(0.7071 * 40) = 28 with round((40 / 28.28)^2) = 2 clips per micro-batch.
MULTIGRID = ("train.multigrid.long_cycle=true", "train.multigrid.short_cycle=true",
             "train.multigrid.long_cycle_factors=[[0.5,1.0],[1.0,1.0]]", "train.multigrid.short_cycle_factors=0.7071",
             "train.epochs=2", "data.batch_size=1")
# (frames, crop, clips per micro-batch, micro-batches per step) of each step, for the 7 videos
MULTIGRID_STEPS = {0: [(4, 28, 2, 2), (4, 40, 1, 2)],
                   2: [(8, 28, 2, 1), (8, 40, 1, 1), (8, 28, 2, 1), (8, 40, 1, 1)]}


def test_multigrid_batches_follow_the_schedule_with_the_planned_frames(backend, videos):
    """Every backend delivers each multigrid micro-batch at its step's frames, crop and size, with the frames the
    rule draws (the stride in [2, 2 * 8 // 4] first); one DALI pipeline serves every shape; full_shape() gives
    data.batch_size clips at the full shape."""
    loader = make_loader(backend, videos(backend[2]), "train", *MULTIGRID)
    assert loader.max_batch_size == 2
    pipelines = set()
    for epoch, steps in MULTIGRID_STEPS.items():
        loader.set_epoch(epoch)
        expected = [(frames, crop, clips) for frames, crop, clips, micro in steps for _ in range(micro)]
        batches = collect(loader)
        assert len(loader) == len(batches) == len(expected)
        shard = iter(loader.shard(epoch).tolist())
        for (slow, fast, labels, video_index), (frames, crop, clips) in zip(batches, expected):
            assert tuple(fast.shape) == (clips, 3, frames, crop, crop)
            assert tuple(slow.shape) == (clips, 3, frames // ALPHA, crop, crop)
            for j, vi in enumerate(video_index.tolist()):
                assert vi == next(shard)
                record = loader.records[vi]
                rng = sampling.clip_rng(SEED, epoch, vi, sampling.TRAIN_STREAM)
                rate = int(rng.integers(2, 2 * (T // frames) + 1)) if frames < T else 2
                clip = sampling.train_clip_indices(record.num_frames, record.fps, rng, num_frames=frames,
                                                   sampling_rate=rate, target_fps=30.0)
                assert frame_numbers(fast[j]) == clip.tolist()
                assert frame_numbers(slow[j]) == clip[sampling.slow_indices(frames, ALPHA)].tolist()
        pipelines.add(id(getattr(loader, "_pipe", None)))
    assert len(pipelines) == 1  # DALI: the pipeline built in epoch 0 is the one of epoch 2
    with loader.full_shape():
        full = collect(loader)
    assert len(full) == 7 and all(tuple(f.shape) == (1, 3, T, 40, 40) for _, f, _, _ in full)
