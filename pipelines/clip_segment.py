"""The part of an encoded video that decoding some frames needs: a packet-copy remux from the keyframe on.

NOTE: DALI 2.4's ``fn.decoders.video`` decodes every in-memory sample from its first frame, whatever the
container or arguments (measured: /work/shared/notes/dali-seeking.md, cost linear in the start frame and the
same at GOP 16 and 250). In DALI's source, ``dali/operators/video/decoder/video_decoder_base.h``
``CreateDecoder`` ignores ``build_index`` for memory input, and ``frames_decoder_base.cc`` ``SeekFrame``
without an index walks forward from frame 0; the operator makes a fresh decoder per sample per iteration.
Handing DALI the GOP-aligned segment instead (the keyframe at or before the first wanted frame, up to the
last packet a wanted frame depends on; packets copied, nothing re-encoded) bounds its work by one keyframe
interval plus the clip's span. Frame ``i`` of the video is frame ``i - k`` of the segment, ``k`` the
keyframe's number. Measured on the prototype (340x256 VP9, 32 frames at stride 2, 2-core CPU): a demux
pass and remux take a few milliseconds, the decoding saved grows with the clip's start.

The segment is NOT cut (the whole file is returned, frames unchanged) when the keyframe is frame 0 (DALI
starts there anyway and stops after the last wanted frame), when the GOP is open (a packet decoded after
the keyframe is shown before it: leading pictures that need the previous GOP), when a packet has no
timestamp, or for a container this module does not remux; and when anything about the file surprises the
demuxer (the decoder then reports the file as it would have).
"""
from __future__ import annotations

import io
from typing import NamedTuple

import numpy as np

# demuxer name (the first of PyAV's ``format.name``) -> the muxer that writes the segment
_MUXERS = {"matroska": "matroska", "webm": "webm", "mov": "mp4", "mp4": "mp4", "ivf": "ivf"}


class Segment(NamedTuple):
    """What to hand the decoder: ``encoded`` bytes, ``frames`` renumbered for them, ``first`` (= k, the
    segment's frame 0 in the video's numbering) and ``packets`` (the segment's frame count)."""

    encoded: np.ndarray
    frames: np.ndarray
    first: int
    packets: int


def clip_segment(encoded: np.ndarray, frames: np.ndarray | list) -> Segment:
    """The part of ``encoded`` that decoding ``frames`` needs, and ``frames`` renumbered for it.

    Args:
        encoded: the whole file's bytes (uint8).
        frames: wanted frame numbers (the contract's numbering: decoder output order from the first frame);
            numbers past the end are kept and shifted like the others (the decoder's ``pad_mode="edge"``
            repeats the last frame, which the segment ends with).

    Returns:
        a :class:`Segment`; ``first == 0`` and the original bytes when nothing is cut (see the module
        docstring for when).
    """
    wanted = np.asarray(frames, dtype=np.int64).reshape(-1)
    whole = Segment(encoded, wanted.astype(np.int32), 0, -1)
    if wanted.size == 0 or wanted.min() < 0:
        return whole
    try:
        return _cut(encoded, wanted) or whole
    except Exception:  # noqa: BLE001 - any surprise: hand over the whole file, the decoder judges it
        return whole


def _cut(encoded: np.ndarray, wanted: np.ndarray):
    import av

    with av.open(io.BytesIO(memoryview(np.ascontiguousarray(encoded)))) as src:
        muxer = _MUXERS.get(src.format.name.split(",")[0])
        if muxer is None or not src.streams.video:
            return None
        stream = src.streams.video[0]
        packets = [p for p in src.demux(stream) if p.size]
        if not packets or any(p.pts is None for p in packets):
            return None
        decode_pts = np.array([p.pts for p in packets], dtype=np.int64)   # decode order
        order = np.argsort(decode_pts, kind="stable")                      # -> presentation order
        if len(np.unique(decode_pts)) != len(decode_pts):
            return None                       # repeated timestamps: frames cannot be ranked
        keys = np.array([p.is_keyframe for p in packets], dtype=bool)[order]
        pts = decode_pts[order]
        count = len(pts)
        first, last = int(min(wanted.min(), count - 1)), int(min(wanted.max(), count - 1))
        before = np.flatnonzero(keys[: first + 1])
        k = int(before[-1]) if before.size else 0
        if k == 0:
            return None                       # the decoder starts at frame 0 anyway
        start = int(order[k])                 # the keyframe's packet, in decode order
        stop = int(np.flatnonzero(decode_pts <= pts[last]).max())
        if (decode_pts[start: stop + 1] < pts[k]).any():
            return None                       # open GOP: leading pictures reference the previous GOP
        if stop < start:
            return None
        out = io.BytesIO()
        with av.open(out, "w", format=muxer) as dst:
            copy = dst.add_stream_from_template(stream)
            for packet in packets[start: stop + 1]:
                packet.stream = copy
                dst.mux(packet)
    return Segment(np.frombuffer(out.getvalue(), dtype=np.uint8), (wanted - k).astype(np.int32), k,
                   stop + 1 - start)
