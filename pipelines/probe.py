"""Probing a video file: what a loader needs to know about it, read from its container and packets.

Used at preparation time (``python -m pipelines.prepare`` writes the results into the list's index) and at
run time for videos the index does not describe (an unindexed list, ``test.py --video``).
"""
from __future__ import annotations

import os
import stat
from fractions import Fraction
from typing import Any, Optional

from pipelines.codecs import canonical_codec


class ProbeError(RuntimeError):
    """A file that is not a usable video; the message names the file and the reason."""


def regular_file_error(path: str | os.PathLike) -> Optional[str]:
    """Why ``path`` cannot be a video file, from ``os.stat`` alone (nothing is opened), or None if it is a
    regular file. A FIFO must never be opened: reading one blocks until another process writes to it."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return f"{str(path)!r} does not exist"
    except OSError as err:
        return f"{str(path)!r} cannot be read: {err.strerror or err}"
    if stat.S_ISREG(mode):
        return None
    kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a directory" if stat.S_ISDIR(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a special file")
    return f"{str(path)!r} is not a regular file (it is {kind}); list video files only"


def _rate_of(stream: Any) -> Optional[Fraction]:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return Fraction(rate)
    return None


def pixel_format_info(pix_fmt: Optional[str]) -> dict[str, Any]:
    """Bit depth and chroma subsampling of an FFmpeg pixel format: ``yuv420p`` -> 8, ``"420"``;
    ``yuv422p10le`` -> 10, ``"422"``; ``gray`` -> 8, ``"400"``. Unknown formats give None for both."""
    import av

    if not pix_fmt:
        return {"bit_depth": None, "chroma": None}
    try:
        fmt = av.VideoFormat(pix_fmt)
    except (ValueError, av.FFmpegError):
        return {"bit_depth": None, "chroma": None}
    components = list(fmt.components)
    depth = max(c.bits for c in components) if components else None
    colour = [c for c in components if not c.is_alpha]
    if len(colour) < 3:
        chroma = "400"
    else:
        # chroma plane size for a 64x64 luma plane: 32x32 -> 4:2:0, 32x64 -> 4:2:2, 64x64 -> 4:4:4
        ratio = (64 // max(fmt.chroma_width(64), 1), 64 // max(fmt.chroma_height(64), 1))
        chroma = {(1, 1): "444", (2, 1): "422", (2, 2): "420", (4, 1): "411", (4, 4): "410"}.get(ratio)
    return {"bit_depth": depth, "chroma": chroma}


def probe_video(path: str | os.PathLike) -> dict[str, Any]:
    """What a loader needs to know about a video, read from its container and packets.

    The frame count is the number of video packets (one per frame for the codecs used here), found by
    demuxing without decoding: webm/mkv store no frame count, and the count an mp4 header claims is
    wrong for a truncated file. The keyframe interval is the longest run of frames between two
    keyframes (the whole video if it has one keyframe). One frame is decoded to check the codec works.

    Args:
        path: the video file.

    Returns:
        dict with ``codec``, ``width``, ``height``, ``fps`` (float, exact for rational rates such as
        30000/1001), ``num_frames``, ``duration`` (seconds), ``keyframe_interval``, and what decides whether
        a hardware decoder takes the stream: ``profile`` (FFmpeg's name, e.g. ``"High"``, or None),
        ``pix_fmt`` (e.g. ``"yuv420p"``), ``bit_depth`` (8, 10, 12) and ``chroma`` (``"420"``, ``"422"``,
        ``"444"``, ``"400"``); see :mod:`pipelines.codecs` for what NVDEC decodes.

    Raises:
        ProbeError: unreadable, corrupt, empty or audio-only files, or files with no decodable frame.
    """
    import av

    path = str(path)
    not_regular = regular_file_error(path)  # before opening: reading a FIFO would block
    if not_regular:
        raise ProbeError(not_regular)
    if os.path.getsize(path) == 0:
        raise ProbeError(f"{path!r} is empty (0 bytes)")
    try:
        container = av.open(path)
    except (av.FFmpegError, OSError, UnicodeDecodeError, ValueError) as err:
        raise ProbeError(f"{path!r} cannot be opened as a video: {err}") from None
    try:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["no streams"]
            raise ProbeError(f"{path!r} has no video stream (found: {', '.join(kinds)})")
        stream = container.streams.video[0]
        codec = canonical_codec(stream.codec_context.name)
        width, height = int(stream.codec_context.width), int(stream.codec_context.height)
        profile = stream.codec_context.profile or None
        pix_fmt = stream.codec_context.pix_fmt or None
        rate = _rate_of(stream)
        start_pts = stream.start_time
        num_frames, keyframes, last_pts, last_duration = 0, [], None, 0
        try:
            for packet in container.demux(stream):
                if packet.size == 0 or (packet.pts is None and packet.dts is None):
                    continue  # the demuxer's flush packet
                if packet.is_keyframe:
                    keyframes.append(num_frames)
                num_frames += 1
                pts = packet.pts if packet.pts is not None else packet.dts
                if last_pts is None or pts >= last_pts:
                    last_pts, last_duration = pts, packet.duration or 0
        except av.FFmpegError:
            pass  # a truncated file: keep the packets read so far, the decode check below decides
        if num_frames == 0:
            raise ProbeError(f"{path!r} holds no video frames")
        try:
            container.seek(start_pts if start_pts is not None else 0, stream=stream, backward=True)
            first = next(iter(container.decode(stream)), None)
        except av.FFmpegError as err:
            raise ProbeError(f"{path!r}: {codec} video cannot be decoded: {err}") from None
        if first is None:
            raise ProbeError(f"{path!r}: no frame of the {codec} stream decodes")
        if not width or not height:
            width, height = first.width, first.height
        if not pix_fmt and first.format is not None:
            pix_fmt = first.format.name
    finally:
        container.close()
    time_base = float(stream.time_base) if stream.time_base else 0.0
    duration = 0.0
    if last_pts is not None and time_base:
        duration = (last_pts - (start_pts or 0) + last_duration) * time_base
    if rate is None or rate <= 0:
        rate = Fraction(num_frames / duration).limit_denominator(1001) if duration > 0 else Fraction(30)
    if duration <= 0:
        duration = num_frames / float(rate)
    starts = keyframes + [num_frames]
    keyframe_interval = max(b - a for a, b in zip(starts[:-1], starts[1:])) if keyframes else num_frames
    return {"codec": codec, "width": width, "height": height, "fps": float(rate), "num_frames": num_frames,
            "duration": round(duration, 6), "keyframe_interval": int(keyframe_interval),
            "profile": str(profile) if profile else None, "pix_fmt": pix_fmt, **pixel_format_info(pix_fmt)}
