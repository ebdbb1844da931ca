"""DALI pipelines on the GPU (data.device=gpu: NVDEC through the mixed backend), on small H.264 videos.

Skipped without CUDA. The same checks as tests/test_dali_cpu.py, plus the zero-copy channels-last handoff,
the fp16/bf16 outputs and the GPU preflight. The videos are what NVDEC decodes on every generation (NVDEC
application note, Video Codec SDK 13.0): H.264 High profile, 4:2:0, 8-bit, lossy (CRF 12), at least 48x16;
never libx264's lossless High 4:4:4 Predictive.
"""
from __future__ import annotations


import numpy as np
import pytest
import torch

pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed")

from pipelines import sampling  # noqa: E402
from pipelines.dali_loader import build_dali_loader  # noqa: E402
from pipelines.dataset import VideoRecord  # noqa: E402
from pipelines.probe import probe_video  # noqa: E402
from pipelines.video_io import numbered_frames, write_video  # noqa: E402
from test_dali_cpu import (ALPHA, DECODER_MAX_LEVELS, DECODER_MEAN_LEVELS, LEVEL, MEAN, SHAPES,  # noqa: E402
                           STD, T, copies, frame_numbers, make_cfg,
                           smooth_frames)

pytestmark = [pytest.mark.gpu, pytest.mark.dali,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (NVDEC)")]


def _write_h264_set(root, content) -> list[VideoRecord]:
    """One H.264 video (High, 4:2:0, 8-bit, CRF 12, keyframe every 8) per entry of SHAPES, probed."""
    records = []
    for i, (height, width, frames) in enumerate(SHAPES):
        path = write_video(root / f"video_{i}.mp4", content(frames, height, width), fps=30, codec="h264",
                           keyframe_interval=8, quality=12)
        info = probe_video(path)
        records.append(VideoRecord(path.name, label=i % 3, num_frames=frames, fps=30.0, width=width, height=height,
                                   codec="h264", extra={k: info[k] for k in ("profile", "pix_fmt", "bit_depth",
                                                                            "chroma")}))
    return records


@pytest.fixture(scope="module")
def numbered(tmp_path_factory):
    root = tmp_path_factory.mktemp("numbered_h264")
    return root, _write_h264_set(root, lambda n, h, w: numbered_frames(n, h, w))


@pytest.fixture(scope="module")
def smooth(tmp_path_factory):
    root = tmp_path_factory.mktemp("smooth_h264")
    return root, _write_h264_set(root, smooth_frames)


def test_fixtures_are_what_nvdec_decodes_and_pass_the_preflight(numbered):
    from pipelines.preflight import preflight_gpu_data, preflight_gpu_environment

    root, records = numbered
    assert {(r.extra["profile"], r.extra["pix_fmt"], r.extra["bit_depth"], r.extra["chroma"]) for r in records} == \
        {("High", "yuv420p", 8, "420")}
    info = preflight_gpu_environment()  # DALI with CUDA, libnvcuvid, one H.264 video decoded on this GPU
    preflight_gpu_data(records, root, root / "train.list", info["arch"])


def gpu_loader(data, split, *overrides, **kwargs):
    root, records = data
    cfg = make_cfg(root, "data.device=gpu", *overrides)
    return build_dali_loader(cfg, split, alpha=ALPHA, records=copies(records), **kwargs)


def cpu(clip: torch.Tensor) -> torch.Tensor:
    return clip.float().cpu()


class RawDecoder:
    """Frames exactly as NVDEC delivers them through DALI (no resize), copied to the host."""

    def __init__(self):
        from nvidia.dali import fn, pipeline_def

        @pipeline_def(batch_size=1, num_threads=1, device_id=torch.cuda.current_device(),
                      prefetch_queue_depth=1)
        def decode_only():
            encoded = fn.external_source(name="encoded")
            frames = fn.external_source(name="frames")
            return fn.decoders.video(encoded, device="mixed", frames=frames)

        self.pipe = decode_only()
        self.pipe.build()

    def __call__(self, path, indices) -> np.ndarray:
        (out,) = self.pipe.run(encoded=[np.fromfile(path, dtype=np.uint8)],
                               frames=[np.asarray(indices, dtype=np.int32)])
        return np.array(out.as_cpu()[0])


@pytest.mark.parametrize("dtype,torch_dtype", [("fp32", torch.float32), ("fp16", torch.float16),
                                               ("bf16", torch.bfloat16)])
def test_batches_on_the_gpu_in_the_configured_dtype(numbered, dtype, torch_dtype):
    loader = gpu_loader(numbered, "train", f"data.dtype={dtype}")
    for (slow, fast), labels, video_index in loader:
        assert fast.device.type == slow.device.type == labels.device.type == "cuda"
        assert fast.dtype == slow.dtype == torch_dtype
        assert fast.shape == (2, 3, T, 32, 32) and slow.shape == (2, 3, T // ALPHA, 32, 32)
        assert fast.is_contiguous(memory_format=torch.channels_last_3d)
        assert slow.is_contiguous(memory_format=torch.channels_last_3d)
        assert torch.equal(slow, fast[:, :, [0, 7]])
        assert labels.tolist() == [numbered[1][i].label for i in video_index.tolist()]


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_zero_copy_channels_last_handoff(numbered, dtype):
    loader = gpu_loader(numbered, "train", f"data.dtype={dtype}")
    batches = iter(loader)
    (_, fast), _, _ = next(batches)
    dali_batch = loader._previous_output.as_tensor()  # DALI's own (N, T, H, W, C) GPU buffer
    nthwc = fast.permute(0, 2, 3, 4, 1)
    assert nthwc.is_contiguous() and tuple(nthwc.shape) == tuple(dali_batch.shape())
    assert fast.data_ptr() == nthwc.data_ptr() == dali_batch.data_ptr()
    kept = fast.clone()
    for _ in batches:
        pass
    torch.cuda.synchronize()
    assert torch.equal(fast, kept), "a later pipeline run overwrote a batch still in use"


def test_bf16_is_the_rounded_fp32_output(numbered):
    (_, full), _, _ = next(iter(gpu_loader(numbered, "val", "data.dtype=fp32")))
    (_, half), _, _ = next(iter(gpu_loader(numbered, "val", "data.dtype=bf16")))
    # bf16 keeps 8 significant bits: relative error <= 2^-8, plus fp16's 2^-11 from the intermediate
    assert torch.allclose(half.float(), full, rtol=2**-8 + 2**-10, atol=1e-3)


def test_frames_are_the_sampled_indices(numbered):
    root, records = numbered
    # a crop as large as the short side keeps the frame-numbered halves whatever the drawn offset
    loader = gpu_loader(numbered, "train", "data.dtype=fp32", "data.train_short_side=[40,44]", "data.train_crop=40")
    loader.set_epoch(2)
    for (_, fast), _, video_index in loader:
        for clip, vi in zip(fast, video_index.tolist()):
            record = records[vi]
            rng = sampling.clip_rng(7, 2, vi)
            expected = sampling.train_clip_indices(record.num_frames, record.fps, rng, T, 2, 30.0)
            assert frame_numbers(cpu(clip)) == expected.tolist()
    for (_, fast), _, video_index in gpu_loader(numbered, "test", "data.dtype=fp32"):
        for j, vi in enumerate(video_index.tolist()):
            record = records[vi]
            clips = sampling.test_clip_indices(record.num_frames, record.fps, 3, T, 2, 30.0)
            for view in range(9):
                assert frame_numbers(cpu(fast[j * 9 + view])) == clips[view // 3].tolist()


def test_transform_matches_the_baseline_on_the_same_frames(smooth):
    transforms = pytest.importorskip("pipelines.transforms")
    root, records = smooth
    raw = RawDecoder()
    for (_, fast), _, video_index in gpu_loader(smooth, "train", "data.dtype=fp32"):
        for clip, vi in zip(fast, video_index.tolist()):
            record = records[vi]
            rng = sampling.clip_rng(7, 0, vi)
            indices = sampling.train_clip_indices(record.num_frames, record.fps, rng, T, 2, 30.0)
            params = sampling.train_spatial_params(record.height, record.width, rng, (40, 56), 32)
            frames = raw(root / record.path, indices)
            reference = transforms.apply_spatial(frames, params, [MEAN] * 3, [STD] * 3)
            diff = (cpu(clip) - reference).abs()
            # the bound measured for DALI's CPU kernels (tests/test_dali_cpu.py); the GPU resize is the same
            # algorithm, not yet measured on a GPU
            assert diff.max().item() < LEVEL and diff.mean().item() < 0.35 * LEVEL


def test_decode_once_equals_decode_per_view(smooth):
    once = list(gpu_loader(smooth, "test", "data.dtype=fp32"))
    per_view = list(gpu_loader(smooth, "test", "data.dtype=fp32", decode_per_view=True))
    assert len(once) == len(per_view)
    for ((_, fa), la, va), ((_, fb), lb, vb) in zip(once, per_view):
        assert torch.equal(va, vb) and torch.equal(la, lb)
        assert torch.equal(fa, fb)


def test_parity_with_pyav_baseline(smooth):
    pyav_loader = pytest.importorskip("pipelines.pyav_loader")
    root, records = smooth
    cfg = make_cfg(root, "data.device=gpu", "data.dtype=fp32", "data.num_workers=0")
    ours = list(build_dali_loader(cfg, "val", alpha=ALPHA, records=copies(records)))
    theirs = list(pyav_loader.build_pyav_loader(cfg, "val", alpha=ALPHA, records=copies(records)))
    for ((_, df), _, dv), ((_, pf), _, pv) in zip(ours, theirs):
        assert torch.equal(dv.cpu(), pv)
        for a, b in zip(df, pf):
            diff = (cpu(a) - b).abs()
            # NOTE: the CPU decoder's measured bound; NVDEC's colour conversion has not been measured against
            # libswscale yet. If this fails on a GPU, measure and restate the bound, do not widen it blindly.
            assert diff.max().item() < DECODER_MAX_LEVELS * LEVEL
            assert diff.mean().item() < DECODER_MEAN_LEVELS * LEVEL


def test_eval_shards_cover_every_video_once(numbered):
    seen = []
    for rank in range(2):
        root, records = numbered
        cfg = make_cfg(root, "data.device=gpu")
        loader = build_dali_loader(cfg, "val", rank=rank, world_size=2, alpha=ALPHA, records=copies(records))
        seen += [vi for _, _, video_index in loader for vi in video_index.tolist() if vi >= 0]
    assert sorted(seen) == list(range(len(SHAPES)))


def test_train_replaces_a_corrupt_video(numbered, tmp_path):
    root, records = numbered
    for record in records:
        (tmp_path / record.path).symlink_to(root / record.path)
    header = (root / records[0].path).read_bytes()[:200]
    (tmp_path / "corrupt.mp4").write_bytes(header + bytes(range(256)) * 8)
    corrupt = VideoRecord("corrupt.mp4", 1, num_frames=40, fps=30.0, width=64, height=48, codec="h264")
    cfg = make_cfg(tmp_path, "data.device=gpu", "data.batch_size=4")
    loader = build_dali_loader(cfg, "train", alpha=ALPHA, records=copies(records) + [corrupt])
    delivered = []
    for (_, fast), _, video_index in loader:
        assert fast.shape[0] == 4
        delivered += video_index.tolist()
    assert len(records) not in delivered
    assert [f["path"] for f in loader.failures] == ["corrupt.mp4"]


def test_readers_video_contender_delivers_augmented_clips(numbered):
    import dataclasses

    from benchmarks.run import SUITES, ReadersVideoLoader

    root, records = numbered
    (root / "train.list").write_text("".join(f"{r.path} {r.label}\n" for r in records))
    suite = dataclasses.replace(SUITES["smoke"], frames=T, sampling_rate=2, crop=32, short_side=(40, 56))
    frames, labels = next(iter(ReadersVideoLoader(suite, root, batch=2)))
    assert tuple(frames.as_tensor().shape()) == (2, T, 32, 32, 3) and len(labels) == 2
