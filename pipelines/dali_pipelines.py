"""The DALI graphs: decode the frames a clip needs, resize, crop, flip, normalise, emit FHWC.

Two graphs, both fed per sample from Python by one external source (see :mod:`pipelines.dali_loader`
for where the inputs come from):

- ``cut_clips=True`` (train, val, test with ``decode_per_view``): one sample = one clip. Inputs: the
  encoded file, its frame indices, the resized size, the crop's top-left corner and size, the flip.
  Output: (T, crop, crop, 3) per sample, a uniform batch (N, T, crop, crop, 3).
- ``cut_clips=False`` (test, decode once): one sample = one video. Inputs: the encoded file, the sorted
  union of all its clips' frame indices, the resized size. Output: every decoded frame resized and
  normalised, (U, resize_h, resize_w, 3); clips and crops are cut from it in torch afterwards.

What runs where (``placement``):

- ``gpu``: ``fn.decoders.video(device="mixed")`` parses the container on the CPU and decodes on NVDEC;
  resize, slice and normalisation run on the GPU. Per-sample parameters are CPU argument inputs.
- ``cpu``: DALI's CPU decoder (libavcodec, VP8/VP9/MJPEG only) and CPU kernels.

The decoder works on all samples of a batch concurrently (a thread per sample on the CPU, NVDEC
sessions on the GPU) and, given ``frames``, stops after the last requested frame.

NOTE: it does NOT seek. DALI 2.4 builds no frame index for in-memory input
(``dali/operators/video/decoder/video_decoder_base.h``: ``CreateDecoder`` ignores ``build_index``) and
``frames_decoder_base.cc``'s ``SeekFrame`` then walks forward from frame 0, with a fresh decoder per sample
per iteration: measured, a clip's cost grows linearly with its start frame, the same at GOP 16 and 250
(/work/shared/notes/dali-seeking.md). So the loader hands the graph the GOP-aligned segment of each clip
(:mod:`pipelines.clip_segment`, frames renumbered), and decoding starts at the keyframe before the clip.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.pipeline import Pipeline

# cfg.data.dtype -> DALI output type. DALI 2.4 has no BFLOAT16 (types.DALIDataType lists FLOAT16, FLOAT,
# FLOAT64 and integers only), so bf16 is produced as FLOAT16 and converted once in torch.
DALI_OUTPUT_TYPES = {"fp32": types.FLOAT, "fp16": types.FLOAT16, "bf16": types.FLOAT16}

# external-source outputs, in order, for each graph
CLIP_INPUTS = ("encoded", "frames", "resize_h", "resize_w", "crop_start", "crop_shape", "flip")
VIDEO_INPUTS = ("encoded", "frames", "resize_h", "resize_w")


def build_video_pipeline(
    source: Callable[[], tuple],
    *,
    placement: str,
    batch_size: int,
    num_threads: int,
    device_id: Optional[int],
    prefetch: int,
    mean: Sequence[float],
    std: Sequence[float],
    output_type: types.DALIDataType,
    cut_clips: bool = True,
    antialias: bool = True,
) -> Pipeline:
    """A built DALI pipeline that decodes and augments what ``source`` describes.

    Args:
        source: called once per batch with no arguments (in the thread that runs the pipeline), returns
            one list per input of ``CLIP_INPUTS`` (``cut_clips``) or ``VIDEO_INPUTS``, each holding one
            numpy array per sample (at most ``batch_size`` samples); raises StopIteration at the end.
        placement: ``gpu`` (NVDEC through the mixed backend, GPU kernels) or ``cpu`` (DALI CPU decoder).
        batch_size: the largest batch the source will return.
        num_threads: DALI's CPU thread pool (CPU decoding runs one sample per thread).
        device_id: the CUDA device for ``gpu``; ignored (None) for ``cpu``.
        prefetch: batches DALI prepares ahead of the one being consumed.
        mean, std: per-channel normalisation on [0, 1] pixels.
        output_type: DALI type of the normalised output (see ``DALI_OUTPUT_TYPES``).
        cut_clips: cut the crop (and flip) in DALI, or emit the whole resized frames.
        antialias: antialias a downscale (``LoaderSettings.antialias``); ``False`` is the references'
            plain bilinear resize.
    """
    if placement not in ("gpu", "cpu"):
        raise ValueError(f"placement {placement!r} is unknown; choose 'gpu' or 'cpu'")
    decoder_device = "mixed" if placement == "gpu" else "cpu"
    # normalisation in DALI works on 0..255 pixel values
    mean_px = [float(m) * 255.0 for m in mean]
    std_px = [float(s) * 255.0 for s in std]
    num_inputs = len(CLIP_INPUTS if cut_clips else VIDEO_INPUTS)

    @pipeline_def(
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id if placement == "gpu" else None,
        prefetch_queue_depth=max(int(prefetch), 1),
    )
    def video_pipeline():
        # not parallel: the callback runs in the thread that schedules the pipeline, so batches come
        # out in the order the loader planned them (see dali_loader for why threads, not processes)
        inputs = fn.external_source(source=source, num_outputs=num_inputs, batch=True)
        encoded, frames, resize_h, resize_w = inputs[:4]
        # pad_mode="edge": a frame index past the real end (an index whose frame count over-estimates
        # the stream) repeats the last frame, as the PyAV baseline's clamping does
        video = fn.decoders.video(encoded, device=decoder_device, frames=frames, pad_mode="edge")
        # the whole frame to (resize_h, resize_w), bilinear at pixel centres, as torch's
        # interpolate(mode="bilinear", align_corners=False, antialias=antialias) in the baseline: with
        # antialias=True a downscale filters over the shrunk footprint, without it samples 2x2 neighbours
        video = fn.resize(video, resize_y=resize_h, resize_x=resize_w,
                          interp_type=types.INTERP_LINEAR, antialias=bool(antialias))
        mirror = 0
        if cut_clips:
            crop_start, crop_shape, flip = inputs[4:]
            # absolute integer start: the crop lands exactly on sampling's (y, x), no rounding of a
            # relative position
            video = fn.slice(video, start=crop_start, shape=crop_shape, axis_names="HW",
                             out_of_bounds_policy="error")
            mirror = flip
        return fn.crop_mirror_normalize(video, mirror=mirror, mean=mean_px, std=std_px,
                                        dtype=output_type, output_layout="FHWC")

    pipe = video_pipeline()
    pipe.build()
    return pipe
