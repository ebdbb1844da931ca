"""The GOP-aligned segment DALI is handed per clip (pipelines.clip_segment), and that DALI then decodes from
the clip's keyframe, not from frame 0.

No timing: the frames before the clip's keyframe are made undecodable (noise payloads, the container kept
valid), so a decoder that starts at frame 0 fails while one that starts at the keyframe returns the right
numbered frames (the numbers are drawn into the pixels: pipelines.video_io.numbered_frames).
"""
from __future__ import annotations

import io

import numpy as np
import pytest

from pipelines import sampling
from pipelines.clip_segment import clip_segment
from pipelines.dataset import VideoRecord
from pipelines.video_io import frame_number, numbered_frames, write_video

GOP, N, CUT = 16, 64, 16          # keyframes 0, 16, 32, 48; frames 0..15 undecodable in the damaged copy
T, STRIDE = 8, 2                  # the loader's clip below: 8 frames 2 apart, span 15


def corrupt_before(data: bytes, upto: int, seed: int = 0) -> bytes:
    """Every packet of frames < ``upto`` gets a noise payload of the same size.

    Its first byte is a plain shown VP9 frame header (0x82 key / 0x86 inter: marker, profile 0, show_frame=1),
    which the muxer's vp9_superframe filter passes on as one frame, and its last byte is no superframe marker;
    so the container, packet count, timestamps and keyframe flags stay as they were, and a keyframe fails
    VP9's sync-code check when decoded.
    """
    import av

    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    with av.open(io.BytesIO(data)) as src, av.open(out, "w", format="webm") as dst:
        stream = src.streams.video[0]
        copy = dst.add_stream_from_template(stream)
        for i, packet in enumerate(q for q in src.demux(stream) if q.size):
            if i < upto:
                body = bytearray(rng.integers(0, 256, packet.size, dtype=np.uint8).tobytes())
                body[0], body[-1] = (0x82 if packet.is_keyframe else 0x86), 0
                noise = av.Packet(bytes(body))
                noise.pts, noise.dts, noise.time_base = packet.pts, packet.dts, packet.time_base
                noise.duration, noise.is_keyframe = packet.duration, packet.is_keyframe
                packet = noise
            packet.stream = copy
            dst.mux(packet)
    return out.getvalue()


def packets_and_numbers(encoded: np.ndarray) -> tuple[int, list[int]]:
    """(packet count, frame numbers drawn in the decoded frames) of encoded bytes, read with PyAV."""
    import av

    with av.open(io.BytesIO(encoded.tobytes())) as container:
        count = sum(1 for p in container.demux(video=0) if p.size)
    with av.open(io.BytesIO(encoded.tobytes())) as container:
        numbers = [frame_number(f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
    return count, numbers


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("segment")
    good = write_video(root / "good.webm", numbered_frames(N, 64, 96), fps=30, codec="vp9",
                       keyframe_interval=GOP, lossless=True)
    (root / "damaged.webm").write_bytes(corrupt_before(good.read_bytes(), CUT))
    long_gop = write_video(root / "gop250.webm", numbered_frames(N, 64, 96), fps=30, codec="vp9",
                           keyframe_interval=250, lossless=True)
    return root, good, root / "damaged.webm", long_gop


def test_the_damage_keeps_the_container_and_breaks_decoding_from_frame_0(videos):
    """Control: the damaged copy has every packet, timestamp and keyframe flag, and PyAV decoding it from the
    first frame fails (else the DALI test below proves nothing)."""
    import av

    _, good, damaged, _ = videos
    with av.open(str(damaged)) as container:
        rows = [(p.pts, p.is_keyframe) for p in container.demux(video=0) if p.size]
    with av.open(str(good)) as container:
        assert rows == [(p.pts, p.is_keyframe) for p in container.demux(video=0) if p.size]
    assert [i for i, (_, key) in enumerate(rows) if key] == list(range(0, N, GOP))
    with pytest.raises(av.error.InvalidDataError):
        with av.open(str(damaged)) as container:
            for _ in container.decode(video=0):
                pass


@pytest.mark.parametrize("start", [0, 5, 16, 17, 31, 40, N - 15])
def test_segment_holds_the_clip_and_at_most_one_gop_more(videos, start):
    """The 'decoded frames per clip <= span + one GOP' property: the segment handed to the decoder (its
    packets counted with PyAV) is at most the clip's span plus one keyframe interval, starts at the keyframe
    at or before the clip, and its shifted frame numbers pick exactly the clip's frames."""
    _, good, _, _ = videos
    clip = np.arange(start, min(start + T * STRIDE, N), STRIDE)
    encoded = np.fromfile(good, dtype=np.uint8)
    segment = clip_segment(encoded, clip)
    keyframe = (start // GOP) * GOP
    assert segment.first == keyframe
    if keyframe == 0:  # nothing to cut: the decoder starts at frame 0 anyway
        assert segment.encoded is encoded and segment.frames.tolist() == clip.tolist()
        return
    count, numbers = packets_and_numbers(segment.encoded)
    span = int(clip[-1] - clip[0] + 1)
    assert count == segment.packets == int(clip[-1]) - keyframe + 1 <= span + GOP
    assert numbers == list(range(keyframe, int(clip[-1]) + 1))
    assert [numbers[i] for i in segment.frames] == clip.tolist()


def test_nothing_is_cut_before_frame_0_or_in_a_long_gop(videos):
    _, _, _, long_gop = videos
    encoded = np.fromfile(long_gop, dtype=np.uint8)
    segment = clip_segment(encoded, np.arange(40, 56, 2))
    assert segment.first == 0 and segment.encoded is encoded  # the only keyframe is frame 0
    assert segment.frames.tolist() == list(range(40, 56, 2))


def test_unreadable_bytes_are_handed_over_whole():
    junk = np.frombuffer(b"\x1a\x45\xdf\xa3" + bytes(range(256)) * 4, dtype=np.uint8)
    segment = clip_segment(junk, [20, 22])
    assert segment.encoded is junk and segment.frames.tolist() == [20, 22]


def test_dali_loader_decodes_from_the_clip_keyframe(videos):
    """Through the DALI loader (CPU decoder): the damaged video's centred clip (frames 24..38, keyframe 16)
    delivers exactly the planned numbered frames and nothing is marked bad; DALI 2.4 given the whole file
    decodes from frame 0 and fails on it."""
    pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed")
    from configs import load_config
    from pipelines.dali_loader import build_dali_loader

    root, _, damaged, _ = videos
    cfg = load_config(None, [
        "data.backend=dali", "data.device=cpu", f"data.root={root}", f"data.num_frames={T}",
        f"data.sampling_rate={STRIDE}", "data.target_fps=30", "data.train_short_side=[64,64]",
        "data.train_crop=64", "data.test_short_side=64", "data.val_crop=64", "data.test_crop=64",
        "data.batch_size=1", "data.num_workers=1", "test.batch_size=1", "model.num_classes=1",
        "model.channels_last=false"])
    records = [VideoRecord(damaged.name, 0, N, 30.0, 96, 64, codec="vp9")]
    loader = build_dali_loader(cfg, "val", alpha=4, records=records)
    planned = sampling.val_clip_indices(N, 30.0, T, STRIDE, 30.0)
    assert planned[0] >= CUT, "the clip must start after the damaged frames"
    batches = list(loader)
    assert loader.failures == [] and len(batches) == 1
    (_, fast), _, video_index = batches[0]
    assert video_index.tolist() == [0]
    clip = ((fast[0].permute(1, 2, 3, 0).numpy() * 0.225 + 0.45) * 255.0).round().clip(0, 255).astype(np.uint8)
    assert [frame_number(frame) for frame in clip] == planned.tolist()
