"""Labelled synthetic videos, no download: 8 classes that only motion tells apart.

Each video shows a textured, not rotationally symmetric shape on a textured, noisy background. The class
is how the shape moves over time: left, right, up, down, clockwise, counter-clockwise, growing,
shrinking. Shape, colours, textures, background, speed, start position, size and noise are random per
video, so no single frame reveals the class; a model must use time.

Modes:

- ``motion`` (default): demo-sized videos (128x96, 64 frames at 30 fps, VP9 so DALI's CPU decoder reads
  them) that a tiny SlowFast learns on a CPU in minutes.
- ``kinetics``: Kinetics geometry for benchmarks (340x256, 10 s at 30 fps, H.264, keyframe every 250
  frames like raw web video, or ``--keyframe-interval 16`` like prepared data), with a panning textured
  background, several moving objects and noise, so that bitrates are realistic (~0.5-2 Mbit/s).

Usage::

    python -m pipelines.synthetic --out data/synthetic                  # demo data
    python -m pipelines.synthetic --out data/kinetics_like --mode kinetics --train-per-class 8

Writes ``<out>/videos/<split>/<class>/<split>_<n>.<ext>``, ``<out>/train.list``, ``<out>/val.list``
(paths relative to ``<out>``), ``<out>/classes.txt``, the probed indexes beside the lists,
``<out>/<split>.meta.jsonl`` (each video's drawn motion) and ``<out>/manifest.json``. A complete dataset
with the same parameters is reused.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from pipelines.dataset import DatasetError, index_path_for
from pipelines.codecs import WRITERS, codec_suffix
from pipelines.video_io import write_video
from utils.atomic import write_text

CLASSES = ("moving_left", "moving_right", "moving_up", "moving_down",
           "rotating_clockwise", "rotating_counterclockwise", "growing", "shrinking")
SHAPES = ("L", "T", "F", "triangle", "key")
MODES = ("motion", "kinetics")
# bump when rendering changes, so that datasets made by an older generator are regenerated
GENERATOR_VERSION = 4
MANIFEST = "manifest.json"
_SPLIT_IDS = {"train": 0, "val": 1}

# How motion mode draws its videos (kinetics mode keeps its own, fixed draw). Fractions of the frame:
# size_range of the short side (the shape's extent), travel_range of the free run for moving shapes;
# turn_range in half-turns over the video; scale_factor_range end/start size for growing/shrinking;
# noise_range the per-frame Gaussian noise sigma (0..255); background_contrast scales the textured
# background's deviation from its mean colour (1: the full texture).
# The shape is large and stands out from a low-contrast, lightly noisy background so that a tiny model learns
# its motion within the CPU demo's few minutes (generator 1 used 0.28-0.4, noise 4-10 and full contrast:
# slowfast_tiny stayed at chance). The turn is 0.8-1.1 half-turns over the video: with generator 2's 1-2
# half-turns, a 16-frame demo clip sampled every 2nd frame turned 22-45 degrees per step, where a shape with
# near-symmetry looks the same turned either way, and slowfast_tiny told clockwise from counter-clockwise at
# chance (25 and 50% per class) while the other six classes reached ~90%; 0.5-0.8 half-turns (11-18 degrees
# a step) was too subtle at 40x32 (20 and 75%), 0.8-1.1 (18-25 degrees) is in between.
MOTION_STYLE = {"size_range": (0.35, 0.5), "travel_range": (0.5, 0.85), "turn_range": (0.8, 1.1),
                "scale_factor_range": (1.7, 2.4), "noise_range": (1.0, 3.0), "background_contrast": 0.3}

MODE_DEFAULTS = {
    "motion": {"width": 128, "height": 96, "num_frames": 64, "fps": 30.0, "codec": "vp9", "keyframe_interval": 16,
               "num_train_per_class": 40, "num_val_per_class": 10},
    "kinetics": {"width": 340, "height": 256, "num_frames": 300, "fps": 30.0, "codec": "h264",
                 "keyframe_interval": 250, "num_train_per_class": 2, "num_val_per_class": 1},
}


@dataclass
class ObjectMotion:
    """One object's appearance and its motion from the first frame (t=0) to the last (t=1)."""

    shape: str
    aspect: float                 # horizontal stretch of the canonical shape
    color: tuple                  # RGB 0..255
    stripe_color: tuple
    stripe_freq: float            # stripes across the canonical u axis
    stripe_phase: float
    start_xy: tuple               # centre at t=0, pixels
    end_xy: tuple                 # centre at t=1
    start_angle: float            # radians; increasing angle turns clockwise on screen (y points down)
    end_angle: float
    start_scale: float            # half-size in pixels
    end_scale: float

    def at(self, t: float) -> tuple[float, float, float, float]:
        """(cx, cy, angle, scale) at ``t`` in [0, 1]: linear position and angle, geometric scale."""
        cx = self.start_xy[0] + (self.end_xy[0] - self.start_xy[0]) * t
        cy = self.start_xy[1] + (self.end_xy[1] - self.start_xy[1]) * t
        angle = self.start_angle + (self.end_angle - self.start_angle) * t
        scale = self.start_scale * (self.end_scale / self.start_scale) ** t
        return cx, cy, angle, scale


@dataclass
class VideoSpec:
    """Everything needed to render one video; drawn by :func:`video_spec` from (seed, split, index)."""

    label: int
    width: int
    height: int
    num_frames: int
    mode: str
    objects: list                 # ObjectMotion; objects[0] carries the class
    background_seed: int
    noise_sigma: float
    pan: tuple                    # background displacement (dx, dy) over the video, pixels (kinetics mode)
    background_contrast: float = 1.0  # scales the background texture's deviation from its mean colour


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Membership in a canonical shape spanning about [-1, 1]^2; none is rotationally symmetric."""
    def rect(u0, v0, u1, v1):
        return (u >= u0) & (u <= u1) & (v >= v0) & (v <= v1)
    if shape == "L":
        return rect(-1, -1, -0.4, 1) | rect(-1, 0.4, 1, 1)
    if shape == "T":
        return rect(-1, -1, 1, -0.45) | rect(-0.3, -1, 0.3, 1)
    if shape == "F":
        return rect(-1, -1, -0.45, 1) | rect(-1, -1, 1, -0.5) | rect(-1, -0.15, 0.5, 0.3)
    if shape == "triangle":  # pointing to +u, with a tail
        return ((u >= -0.3) & (u <= 1) & (np.abs(v) <= (1 - u) * 0.77)) | rect(-1, -0.2, -0.3, 0.2)
    if shape == "key":  # a disc with a bar
        return ((u + 0.4) ** 2 + v ** 2 <= 0.36) | rect(-0.1, -0.22, 1, 0.22) | rect(0.6, 0.22, 0.8, 0.6)
    raise ValueError(f"shape {shape!r} is unknown; choose one of {SHAPES}")


def _contrasting_color(rng: np.random.Generator, avoid: np.ndarray, min_distance: float = 110.0) -> tuple:
    for _ in range(100):
        color = rng.integers(0, 256, size=3)
        if np.linalg.norm(color - avoid) >= min_distance:
            return tuple(int(c) for c in color)
    return tuple(int(c) for c in (255 - avoid).clip(0, 255))


def _draw_object(rng: np.random.Generator, label: int, width: int, height: int, background_mean: np.ndarray,
                 size_range: tuple[float, float], travel_range: tuple[float, float] = (0.5, 0.85),
                 turn_range: tuple[float, float] = (1.0, 2.0),
                 scale_factor_range: tuple[float, float] = (1.7, 2.4)) -> ObjectMotion:
    short = min(width, height)
    # half-size so the shape spans size_range of the short side
    scale = float(rng.uniform(*size_range)) * short / 2
    aspect = float(rng.uniform(0.8, 1.2))
    extent = scale * 1.42 * max(aspect, 1.0)  # the canonical corners lie at radius sqrt(2)
    color = _contrasting_color(rng, background_mean)
    stripe = np.array(color) * rng.uniform(0.45, 0.7) + rng.integers(0, 60, size=3)
    name = CLASSES[label]
    start_angle = float(rng.uniform(0, 2 * math.pi))
    end_angle = start_angle + float(rng.normal(0, 0.05))
    start_scale = end_scale = scale
    # static classes drift a little (<= 6% of the frame) so that "still" is not a cue for rotation/scaling
    drift = rng.uniform(-0.06, 0.06, size=2) * (width, height)

    def centre_range(dim: float, travel: float, ext: float) -> tuple[float, float]:
        lo, hi = ext, dim - ext - abs(travel)
        if hi < lo:
            lo = hi = (dim - abs(travel)) / 2
        return lo, hi

    if name.startswith("moving"):
        horizontal = name in ("moving_left", "moving_right")
        dim = width if horizontal else height
        # the shape may leave the frame by up to ~40% of its reach at the ends, as in real footage; a
        # fully kept-in shape of this size would barely move in a 96-pixel-high frame
        reach = 0.6 * extent
        travel = float(rng.uniform(*travel_range)) * max(dim - 2 * reach, 0.4 * dim)
        sign = -1.0 if name in ("moving_left", "moving_up") else 1.0
        lo, hi = centre_range(dim, travel, reach)
        start_along = float(rng.uniform(lo, hi)) + (travel if sign < 0 else 0.0)
        other_dim = height if horizontal else width
        start_other = float(rng.uniform(extent, max(other_dim - extent, extent + 1)))
        wobble = float(rng.uniform(-0.04, 0.04)) * other_dim
        if horizontal:
            start = (start_along, start_other)
            end = (start_along + sign * travel, start_other + wobble)
        else:
            start = (start_other, start_along)
            end = (start_other + wobble, start_along + sign * travel)
    else:
        if name.startswith("rotating"):
            turn = float(rng.uniform(*turn_range)) * math.pi
            end_angle = start_angle + (turn if name == "rotating_clockwise" else -turn)
        else:
            factor = float(rng.uniform(*scale_factor_range))
            grow = name == "growing"
            # sizes overlap between the two classes: both pass through `scale` half-way
            start_scale = scale / math.sqrt(factor) if grow else scale * math.sqrt(factor)
            end_scale = scale * math.sqrt(factor) if grow else scale / math.sqrt(factor)
            extent = max(start_scale, end_scale) * 1.42 * max(aspect, 1.0)
        lo_x, hi_x = centre_range(width, drift[0], extent)
        lo_y, hi_y = centre_range(height, drift[1], extent)
        start = (float(rng.uniform(lo_x, hi_x)) + max(-drift[0], 0), float(rng.uniform(lo_y, hi_y)) + max(-drift[1], 0))
        end = (start[0] + drift[0], start[1] + drift[1])
    return ObjectMotion(
        shape=SHAPES[int(rng.integers(len(SHAPES)))], aspect=aspect, color=color,
        stripe_color=tuple(int(c) for c in np.clip(stripe, 0, 255)), stripe_freq=float(rng.uniform(4, 9)),
        stripe_phase=float(rng.uniform(0, 2 * math.pi)), start_xy=tuple(start), end_xy=tuple(end),
        start_angle=start_angle, end_angle=end_angle, start_scale=start_scale, end_scale=end_scale)


def video_spec(seed: int, split: str, index: int, label: int, width: int, height: int, num_frames: int,
               mode: str = "motion") -> VideoSpec:
    """The random draw of one video, a function of ``(seed, split, index)`` only.

    Args:
        seed: dataset seed.
        split: ``train`` or ``val`` (the two splits draw from different streams).
        index: the video's number within its split.
        label: its class (position in :data:`CLASSES`).
        width, height: frame size in pixels; num_frames: length.
        mode: ``motion`` (one object) or ``kinetics`` (several objects, panning background).
    """
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is unknown; choose one of {MODES}")
    rng = np.random.default_rng([int(seed), _SPLIT_IDS[split], int(index)])
    background_seed = int(rng.integers(2**31))
    background_mean = _background(background_seed, 8, 8).reshape(-1, 3).mean(0)
    if mode == "motion":
        style = MOTION_STYLE
        objects = [_draw_object(rng, label, width, height, background_mean, style["size_range"],
                                style["travel_range"], style["turn_range"], style["scale_factor_range"])]
        noise, pan = float(rng.uniform(*style["noise_range"])), (0.0, 0.0)
    else:
        objects = [_draw_object(rng, label, width, height, background_mean, (0.25, 0.35))]
        for _ in range(int(rng.integers(2, 5))):
            objects.append(_draw_object(rng, int(rng.integers(len(CLASSES))), width, height, background_mean,
                                        (0.08, 0.18)))
        # per-frame noise is what x264 cannot predict: sets the bitrate (measured 1.3-1.8 Mbit/s at 340x256, keyint 250)
        noise = float(rng.uniform(11, 14))
        pan = tuple(float(p) for p in rng.uniform(-0.15, 0.15, size=2) * (width, height))
    contrast = float(MOTION_STYLE["background_contrast"]) if mode == "motion" else 1.0
    return VideoSpec(label=label, width=width, height=height, num_frames=num_frames, mode=mode, objects=objects,
                     background_seed=background_seed, noise_sigma=noise, pan=pan, background_contrast=contrast)


def _background(seed: int, height: int, width: int) -> np.ndarray:
    """A smooth two-colour texture with fine grain, float32 (height, width, 3), 0..255."""
    rng = np.random.default_rng(seed)
    colors = rng.integers(0, 256, size=(2, 3)).astype(np.float32)
    cells = int(rng.integers(3, 8))
    coarse = rng.random((cells + 1, cells + 1)).astype(np.float32)
    ys = np.linspace(0, cells, height, dtype=np.float32)
    xs = np.linspace(0, cells, width, dtype=np.float32)
    y0, x0 = np.minimum(ys.astype(int), cells - 1), np.minimum(xs.astype(int), cells - 1)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    smooth = (coarse[y0][:, x0] * (1 - fy) * (1 - fx) + coarse[y0 + 1][:, x0] * fy * (1 - fx)
              + coarse[y0][:, x0 + 1] * (1 - fy) * fx + coarse[y0 + 1][:, x0 + 1] * fy * fx)
    weight = smooth[..., None]
    image = colors[0] * (1 - weight) + colors[1] * weight
    image += rng.normal(0, 12, size=(height, width, 1)).astype(np.float32)  # fixed grain
    return image


def render_video(spec: VideoSpec, with_masks: bool = False):
    """Render a spec to RGB frames.

    Args:
        spec: from :func:`video_spec`.
        with_masks: also return each frame's mask of the class-carrying object (``objects[0]``).

    Returns:
        uint8 (T, H, W, 3) frames, and with ``with_masks`` a bool (T, H, W) array too.
    """
    width, height, frames_n = spec.width, spec.height, spec.num_frames
    pan_x, pan_y = abs(spec.pan[0]), abs(spec.pan[1])
    margin_x, margin_y = int(math.ceil(pan_x)) + 1, int(math.ceil(pan_y)) + 1
    background = _background(spec.background_seed, height + margin_y, width + margin_x)
    if spec.background_contrast != 1.0:
        mean = background.mean(axis=(0, 1), keepdims=True)
        background = mean + np.float32(spec.background_contrast) * (background - mean)
    noise_rng = np.random.default_rng(spec.background_seed + 1)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = np.empty((frames_n, height, width, 3), dtype=np.uint8)
    masks = np.zeros((frames_n, height, width), dtype=bool) if with_masks else None
    for f in range(frames_n):
        t = f / max(frames_n - 1, 1)
        ox = int(round(pan_x * (t if spec.pan[0] >= 0 else 1 - t)))
        oy = int(round(pan_y * (t if spec.pan[1] >= 0 else 1 - t)))
        image = background[oy: oy + height, ox: ox + width].copy()
        # draw the small objects first: the class-carrying object stays on top
        for number, obj in reversed(list(enumerate(spec.objects))):
            cx, cy, angle, scale = obj.at(t)
            ext = scale * 1.42 * max(obj.aspect, 1.0) + 1
            x0, x1 = max(int(cx - ext), 0), min(int(cx + ext) + 1, width)
            y0, y1 = max(int(cy - ext), 0), min(int(cy + ext) + 1, height)
            if x0 >= x1 or y0 >= y1:
                continue
            dx, dy = xs[y0:y1, x0:x1] - cx, ys[y0:y1, x0:x1] - cy
            cos, sin = math.cos(angle), math.sin(angle)
            u = (dx * cos + dy * sin) / (scale * obj.aspect)
            v = (-dx * sin + dy * cos) / scale
            inside = _shape_mask(obj.shape, u, v)
            stripes = np.sin(obj.stripe_freq * u + obj.stripe_phase) > 0
            patch = np.where(stripes[..., None], np.array(obj.stripe_color, np.float32),
                             np.array(obj.color, np.float32))
            region = image[y0:y1, x0:x1]
            region[inside] = patch[inside]
            if number == 0 and masks is not None:
                masks[f, y0:y1, x0:x1] = inside
        image += noise_rng.standard_normal(size=image.shape, dtype=np.float32) * np.float32(spec.noise_sigma)
        frames[f] = np.clip(image, 0, 255).astype(np.uint8)
    return (frames, masks) if with_masks else frames


def _render_job(job: dict[str, Any]) -> None:
    spec = video_spec(job["seed"], job["split"], job["index"], job["label"], job["width"], job["height"],
                      job["num_frames"], job["mode"])
    path = Path(job["out"]) / job["path"]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, render_video(spec), fps=job["fps"], codec=job["codec"],
                keyframe_interval=job["keyframe_interval"], quality=job["quality"])


def _video_path(split: str, index: int, label: int, codec: str) -> str:
    return f"videos/{split}/{CLASSES[label]}/{split}_{index:05d}{codec_suffix(codec)}"


def _is_reusable(out: Path, params: dict[str, Any]) -> bool:
    manifest = out / MANIFEST
    if not manifest.is_file():
        return False
    try:
        if json.loads(manifest.read_text()) != params:
            return False
    except (json.JSONDecodeError, OSError):
        return False
    for split in ("train", "val"):
        list_path = out / f"{split}.list"
        if not list_path.is_file() or not index_path_for(list_path).is_file():
            return False
        for line in list_path.read_text().splitlines():
            if line.strip() and not (out / line.rsplit(maxsplit=1)[0]).is_file():
                return False
    return (out / "classes.txt").is_file()


def generate_dataset(
    out_dir: str | os.PathLike,
    num_train_per_class: Optional[int] = None,
    num_val_per_class: Optional[int] = None,
    width: Optional[int] = None,
    height: Optional[int] = None,
    num_frames: Optional[int] = None,
    fps: Optional[float] = None,
    codec: Optional[str] = None,
    seed: int = 0,
    keyframe_interval: Optional[int] = None,
    workers: Optional[int] = None,
    mode: str = "motion",
    quality: Optional[int] = None,
    progress: bool = True,
) -> dict[str, Path]:
    """Generate (or reuse) a synthetic dataset under ``out_dir``.

    Args:
        out_dir: output folder (created).
        num_train_per_class, num_val_per_class: videos per class in each split (classes stay balanced).
        width, height: frame size (even numbers).
        num_frames: frames per video; fps: frame rate.
        codec: ``vp9`` (DALI CPU-decodable), ``vp8``, ``h264`` or ``mjpeg``.
        seed: every video is a function of (seed, split, index).
        keyframe_interval: frames between keyframes.
        workers: rendering processes (default: available cores).
        mode: ``motion`` (demo data) or ``kinetics`` (benchmark geometry); unset arguments take the mode's
            defaults (:data:`MODE_DEFAULTS`).
        quality: encoder CRF/qscale (None: 20 for VP9 in motion mode, else the encoder's default).
        progress: print progress lines on stderr.

    Returns:
        ``{"root", "train_list", "val_list", "classes"}`` paths.
    """
    from pipelines.prepare import _parallel_map, default_workers, index_list

    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is unknown; choose one of {MODES}")
    given = {"num_train_per_class": num_train_per_class, "num_val_per_class": num_val_per_class, "width": width,
             "height": height, "num_frames": num_frames, "fps": fps, "codec": codec,
             "keyframe_interval": keyframe_interval}
    params = {k: (v if v is not None else MODE_DEFAULTS[mode][k]) for k, v in given.items()}
    if quality is None and mode == "motion" and params["codec"] in ("vp9", "vp8"):
        quality = 20
    params.update({"mode": mode, "seed": int(seed), "quality": quality, "generator": GENERATOR_VERSION,
                   "fps": float(params["fps"])})
    if params["codec"] not in WRITERS:
        raise ValueError(f"codec {params['codec']!r} is unknown; choose one of {sorted(WRITERS)}")
    for key in ("width", "height"):
        if params[key] < 16 or params[key] % 2:
            raise ValueError(f"{key} {params[key]} must be an even number >= 16")
    for key in ("num_train_per_class", "num_val_per_class", "num_frames", "keyframe_interval"):
        if params[key] < 1:
            raise ValueError(f"{key} {params[key]} must be >= 1")
    if not params["fps"] > 0:
        raise ValueError(f"fps {params['fps']} must be > 0")
    out = Path(out_dir)
    paths = {"root": out, "train_list": out / "train.list", "val_list": out / "val.list",
             "classes": out / "classes.txt"}
    if _is_reusable(out, params):
        return paths
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # an interrupted run must not look complete
    jobs, entries = [], {"train": [], "val": []}
    for split, per_class in (("train", params["num_train_per_class"]), ("val", params["num_val_per_class"])):
        for index in range(per_class * len(CLASSES)):
            label = index % len(CLASSES)
            rel = _video_path(split, index, label, params["codec"])
            entries[split].append((rel, label, index))
            jobs.append({"out": str(out), "path": rel, "split": split, "index": index, "label": label,
                         "seed": params["seed"], "width": params["width"], "height": params["height"],
                         "num_frames": params["num_frames"], "mode": mode, "fps": params["fps"],
                         "codec": params["codec"], "keyframe_interval": params["keyframe_interval"],
                         "quality": quality})
    list(_parallel_map(_render_job, jobs, workers or default_workers(), "rendering", progress))
    _write(out / "classes.txt", "".join(f"{name}\n" for name in CLASSES))
    for split, items in entries.items():
        list_path = out / f"{split}.list"
        _write(list_path, "".join(f"{rel} {label}\n" for rel, label, _ in items))
        meta = []
        for rel, label, index in items:
            spec = video_spec(params["seed"], split, index, label, params["width"], params["height"],
                              params["num_frames"], mode)
            meta.append(json.dumps({"path": rel, "label": label, "class": CLASSES[label],
                                    "objects": [asdict(o) for o in spec.objects], "pan": spec.pan}))
        _write(out / f"{split}.meta.jsonl", "\n".join(meta) + "\n")
        index_list(list_path, out, len(CLASSES), workers, progress)
    _write(out / MANIFEST, json.dumps(params, indent=1, sort_keys=True) + "\n")
    return paths


def _write(path: Path, text: str) -> None:
    write_text(path, text)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.synthetic", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--mode", default="motion", choices=MODES)
    parser.add_argument("--train-per-class", type=int, default=None, help="default: 40 (motion), 2 (kinetics)")
    parser.add_argument("--val-per-class", type=int, default=None, help="default: 10 (motion), 1 (kinetics)")
    parser.add_argument("--width", type=int, default=None, help="default: 128 (motion), 340 (kinetics; or 456)")
    parser.add_argument("--height", type=int, default=None, help="default: 96 (motion), 256 (kinetics)")
    parser.add_argument("--num-frames", type=int, default=None, help="default: 64 (motion), 300 (kinetics)")
    parser.add_argument("--fps", type=float, default=None, help="default: 30")
    parser.add_argument("--codec", default=None, choices=sorted(WRITERS), help="default: vp9 (motion), h264 (kinetics)")
    parser.add_argument("--keyframe-interval", type=int, default=None, help="default: 16 (motion), 250 (kinetics)")
    parser.add_argument("--quality", type=int, default=None, help="encoder CRF / qscale")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: available cores)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    try:
        paths = generate_dataset(args.out, args.train_per_class, args.val_per_class, args.width, args.height,
                                 args.num_frames, args.fps, args.codec, args.seed, args.keyframe_interval,
                                 args.workers, args.mode, args.quality, not args.quiet)
    except (DatasetError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"dataset ready: {paths['train_list']}, {paths['val_list']}, {paths['classes']} "
          f"(root {paths['root']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
