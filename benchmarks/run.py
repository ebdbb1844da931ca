"""The benchmark suite: every stage's throughput against its baseline, side by side, in one run.

    python -m benchmarks.run --suite full --save  # on a GPU machine: the figures the README quotes
    python -m benchmarks.run --suite smoke        # on any machine, tiny sizes, a few minutes: the suite works
    python -m benchmarks.run --suite gpu-check    # a few minutes on a GPU: real Kinetics geometry, R50 4x16
    python -m benchmarks.run --suite full --dry-run  # list every planned dataset and variant, run nothing

Stages (each figure is a ratio against a baseline measured in the same run):
1. loader: clips/s with no model: DALI GPU (this project's loader, and DALI's own ``fn.readers.video`` as a
   second contender) vs DALI CPU vs PyAV + DataLoader (workers = cores), on Kinetics-geometry synthetic
   video with a long (250) and a short (16) keyframe interval; on a GPU also the device memory DALI holds.
2. model: training-step clips/s and peak memory: fp32 NCDHW eager vs bf16 channels-last [+ compile],
   at batch 8 and at the largest batch that fits.
3. e2e: end-to-end training clips/s: PyAV + fp32 NCDHW vs DALI GPU + bf16 channels-last, with the
   share of time the step waits for data, against the model-step bound from stage 2.
4. multicrop: 10x3-view evaluation videos/s: decode once vs decode per view.
5. scaling: stages 1-2 at two batch sizes and two video sizes, so the cost curve shows.

Data: each dataset is generated (or reused) on its own, inside the error handling: one that fails is
reported as failed in the results and the others still run.

Results: ``<out>/<suite>-<date>-<device>.{json,md,png}`` and ``latest-<suite>.*`` copies, where ``<out>`` is a
scratch folder (``$TMPDIR/slowfast-benchmarks``) unless ``--save`` (``benchmarks/results/``, committed) or
``--out DIR`` is given.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import gc
import logging
import os
import resource
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from benchmarks.environment import NvdecMonitor, environment
from benchmarks.report import Results
from benchmarks.timing import Measurement, measure_iterable, synchronize
from configs import load_config
from pipelines.codecs import ARCH_NAMES, WRITTEN_FORMAT, why_not_decodable
from utils.atomic import atomic_copy, write_text
from utils.cpus import available_cores

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SCRATCH_DIR = Path(tempfile.gettempdir()) / "slowfast-benchmarks"
STAGES = ("loader", "model", "e2e", "multicrop")
# GPU generations every planned dataset must decode on (tests/test_benchmarks.py checks the plan)
PLANNED_ARCHS = ("hopper", "ga100")
log = logging.getLogger("benchmarks")


@dataclass
class KineticsSets:
    """Short Kinetics-geometry VP9 sets (DALI's CPU decoder reads VP9) on which the project's CPU loaders and
    the peers (:mod:`benchmarks.peers`) do the same work: training clips of ``frames`` frames ``stride`` apart,
    short side in ``short_side``, ``crop`` crop; test ``num_clips`` x ``num_crops`` views at ``test_short_side``."""

    width: int = 340
    height: int = 256
    seconds: float = 4.0
    gops: tuple[int, ...] = (16, 250)
    videos: int = 2
    frames: int = 32
    stride: int = 2
    short_side: tuple[int, int] = (256, 320)
    crop: int = 224
    test_short_side: int = 256
    test_crop: int = 256
    num_clips: int = 10
    num_crops: int = 3
    batch: int = 2
    # windows (benchmarks.run._window): each contender's epoch is one window, one warm-up batch per worker, then
    # `iters` timed batches rounded up to a whole round over the workers (1: one timed batch per worker);
    # `rounds` windows per contender, interleaved, the median reported
    rounds: int = 3
    iters: int = 1
    test_rounds: int = 3
    test_iters: int = 1             # timed videos per test window (likewise)
    test_workers: tuple[str, ...] = ("all",)   # the test path with all cores only (the smoke run's time budget)
    test_gops: tuple[int, ...] = (16, 250)     # which of ``gops`` the test path runs on
    starts: int = 3                 # clip start positions of the cost-by-start sweep
    start_rounds: int = 2           # after one untimed call per contender
    start_gops: tuple[int, ...] = (16, 250)    # which of ``gops`` the sweep runs on

    def name(self, gop: int) -> str:
        return f"k400-{self.width}x{self.height}-vp9-{self.seconds:g}s-gop{gop}"


@dataclass
class Suite:
    """Sizes of one suite. ``smoke`` fits a 2-core CPU in minutes; ``full`` is the GPU measurement."""

    name: str
    model: str
    models: tuple[str, ...]
    frames: int
    sampling_rate: int
    crop: int
    short_side: tuple[int, int]
    test_short_side: int
    test_crop: int
    batch: int
    videos: dict                   # dataset name -> generate_dataset kwargs
    loader_sets: tuple[str, ...]   # which datasets stage 1 runs on
    scaling_batches: tuple[int, ...]
    warmup: int = 3
    repeats: int = 5
    iters: int = 5
    num_clips: int = 10
    num_crops: int = 3
    eval_videos: int = 16
    model_args: dict = field(default_factory=dict)
    compile: bool = True
    largest_batch: bool = True
    num_classes: int = 400
    e2e_set: Optional[str] = None  # dataset of stages 3-4 (default: the last loader set)
    # (model, batch): a CPU training-step pair (fp32 NCDHW vs channels-last) on any device, for the per-device
    # memory-format decision (R50 4x16 at batch 1: ~4 s a step on 2 cores, so not in the smoke suite)
    cpu_models: tuple[tuple[str, int], ...] = ()
    kinetics: Optional["KineticsSets"] = None  # Kinetics-geometry VP9 sets: CPU loaders vs peers
    stages: tuple[str, ...] = STAGES

    def __post_init__(self) -> None:
        # NOTE: 4:2:0 encoders (libx264, libvpx) need even frame sizes: a 455-pixel-wide set crashed the run
        for name, spec in self.videos.items():
            if spec["width"] % 2 or spec["height"] % 2:
                raise ValueError(f"suite {self.name!r}: dataset {name!r} is {spec['width']}x{spec['height']}; "
                                 f"4:2:0 video needs an even width and height")
        unknown = [n for n in self.loader_sets + ((self.e2e_set,) if self.e2e_set else ()) if n not in self.videos]
        if unknown:
            raise ValueError(f"suite {self.name!r}: loader/e2e sets {unknown} are not among its videos "
                             f"{sorted(self.videos)}")

    @property
    def e2e_dataset(self) -> str:
        return self.e2e_set or self.loader_sets[-1]


def _kinetics(width: int, gop: int, seconds: float = 10.0, count: int = 4) -> dict:
    return dict(mode="kinetics", width=width, height=256, fps=30, num_frames=int(30 * seconds), codec="h264",
                keyframe_interval=gop, num_train_per_class=count, num_val_per_class=1)


def _tiny(width: int, height: int) -> dict:
    return dict(mode="motion", width=width, height=height, fps=30, num_frames=48, codec="vp9",
                keyframe_interval=16, num_train_per_class=1, num_val_per_class=1)


SUITES = {
    "full": Suite(
        name="full", model="slowfast_r50_4x16", models=("slowfast_r50_4x16", "slowfast_r50_8x8"),
        frames=32, sampling_rate=2, crop=224, short_side=(256, 320), test_short_side=256, test_crop=256, batch=8,
        videos={
            "k400-340x256-gop250": _kinetics(340, 250),
            "k400-340x256-gop16": _kinetics(340, 16),
            "k400-456x256-gop16": _kinetics(456, 16),  # 16:9 at short side 256 (455.1 rounded to even)
            "k400-340x256-gop16-5s": _kinetics(340, 16, seconds=5.0),
        },
        loader_sets=("k400-340x256-gop250", "k400-340x256-gop16", "k400-456x256-gop16", "k400-340x256-gop16-5s"),
        scaling_batches=(8, 16, 32), repeats=5, iters=10, e2e_set="k400-340x256-gop16",
        cpu_models=(("slowfast_r50_4x16", 1),),
    ),
    "smoke": Suite(
        name="smoke", model="slowfast_tiny", models=("slowfast_tiny",),
        frames=8, sampling_rate=4, crop=48, short_side=(48, 56), test_short_side=48, test_crop=48, batch=2,
        # VP9, which both DALI's CPU decoder and NVDEC read, at NVDEC's VP9 minimum of 128x128 and above (the
        # earlier 96x64 and 128x96 sets failed on a GPU host: "Video is too small in at least one dimension")
        # one tiny set and batch: the stages run end to end (the scaling over sizes and batches is the full
        # suite's; a second tiny size and batch 4 added 4 s and no comparison the Kinetics groups lack)
        videos={"tiny-160x128-vp9": _tiny(160, 128)},
        loader_sets=("tiny-160x128-vp9",),
        scaling_batches=(2,), warmup=1, repeats=3, iters=2, num_clips=2, num_crops=3, eval_videos=4,
        compile=False, largest_batch=False, num_classes=8,
        # real Kinetics geometry on the CPU: the project's CPU loaders against the peers (benchmarks/peers.py);
        # 3 s videos keep the smoke run to a few minutes on 2 cores. The test path on GOP 16 only: decoding
        # once for 10 clips over a 3 s video decodes every frame from frame 0 whatever the GOP; the sweep of
        # clip starts on GOP 16 only: with one keyframe (GOP 250) every decoder starts at frame 0 anyway.
        kinetics=KineticsSets(seconds=3.0, test_gops=(16,), start_gops=(16,), test_rounds=2),
    ),
    # make gpu-check: a few minutes on one GPU with the real geometry (340x256 H.264, GOP 16 and 250, R50 4x16
    # at 224, bf16 channels-last vs the PyAV + fp32 baseline); small dataset, short windows, no compile
    "gpu-check": Suite(
        name="gpu-check", model="slowfast_r50_4x16", models=("slowfast_r50_4x16",),
        frames=32, sampling_rate=2, crop=224, short_side=(256, 320), test_short_side=256, test_crop=256, batch=8,
        videos={"k400-340x256-gop250": _kinetics(340, 250, count=1), "k400-340x256-gop16": _kinetics(340, 16, count=1)},
        loader_sets=("k400-340x256-gop250", "k400-340x256-gop16"), scaling_batches=(8,), warmup=2, repeats=3,
        iters=5, compile=False, largest_batch=False, e2e_set="k400-340x256-gop16", stages=("loader", "model", "e2e"),
    ),
}


_FORK_GUARD: list[bool] = []


def _guard_forks() -> None:
    """Keep DataLoader workers from finalizing this process's objects: freeze the garbage collector's view
    at each fork, so a child never collects what it inherited.

    NOTE: measured here: a DALI loader's abandoned iterator, left as cyclic garbage in this process, was
    collected inside a later forked DataLoader worker; its pipeline's ``Shutdown`` then joined DALI threads
    that do not exist in the child, and the worker hung for good (the suite stopped in the GOP 250 groups),
    or at exit, where the DataLoader waits 5 s per worker before terminating it (20 s of a tiny group's 22 s).
    Python's own advice for fork without exec is ``gc.freeze()`` before the fork."""
    if not _FORK_GUARD and hasattr(os, "register_at_fork"):
        os.register_at_fork(before=gc.freeze, after_in_parent=gc.unfreeze)
        _FORK_GUARD.append(True)


def _close(iterator) -> None:
    """End an iterator here and now, in this process, outside any timed window: a generator runs its
    ``finally`` (a DALI loader keeps or drops its pipeline), DataLoader workers stop. (No ``gc.collect()``:
    0.2 s a window here, and :func:`_guard_forks` already keeps garbage out of the workers.)"""
    close = getattr(iterator, "close", None)
    if close is not None:
        close()


def _cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (DataLoader workers): a cost that other work on
    a shared machine inflates far less than the wall clock."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _machine_cpu() -> Optional[tuple[float, float]]:
    """``(busy, stolen)`` CPU seconds of the whole machine since boot (``/proc/stat``: busy = user, nice,
    system, irq, softirq; stolen = the hypervisor's steal); None where there is no ``/proc/stat``."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        ticks = float(os.sysconf("SC_CLK_TCK"))
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
    except (OSError, ValueError, IndexError):
        return None
    return (user + nice + system + irq + softirq) / ticks, steal / ticks


class _Took:
    """What :func:`_took` measured: ``other_load``, the cores' worth of CPU that other processes and the
    hypervisor (steal) took meanwhile (None where the machine does not tell)."""

    other_load: Optional[float] = None


@contextlib.contextmanager
def _took(what: str):
    """Log how long a part of the run took (wall and CPU seconds) and how busy the rest of the machine was, so
    the suite's time budget can be read off and a figure taken beside other work is recognised."""
    took = _Took()
    wall, cpu, machine = time.perf_counter(), _cpu_seconds(), _machine_cpu()
    try:
        yield took
    finally:
        seconds, used, after = time.perf_counter() - wall, _cpu_seconds() - cpu, _machine_cpu()
        others = ""
        if machine and after and seconds > 0.5:
            took.other_load = max(0.0, after[0] - machine[0] - used + after[1] - machine[1]) / seconds
            others = f"; other processes {took.other_load:.2f} cores"
        log.info("%s took %.1f s (%.1f CPU s%s)", what, seconds, used, others)


def _device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def dataset_format(spec: dict) -> dict:
    """What a planned dataset's videos will probe as: codec, size and the writer's stream format."""
    return {"codec": spec["codec"], "width": spec["width"], "height": spec["height"], **WRITTEN_FORMAT[spec["codec"]]}


def plan(suite: Suite) -> list[dict]:
    """Every dataset of the suite with its format, and the loader variants and batches it is measured with."""
    rows = []
    for name, spec in suite.videos.items():
        batches = (list(suite.scaling_batches) if suite.loader_sets and name == suite.loader_sets[0]
                   else [suite.batch])
        stages = [st for st in ("loader",) if name in suite.loader_sets]
        stages += [st for st in ("e2e", "multicrop") if st in suite.stages and name == suite.e2e_dataset]
        rows.append({"dataset": name, **dataset_format(spec), "gop": spec["keyframe_interval"],
                     "frames": spec["num_frames"], "fps": spec["fps"],
                     "videos": 8 * (spec["num_train_per_class"] + spec["num_val_per_class"]),
                     "batches": batches if "loader" in stages else [suite.batch], "stages": stages,
                     "loaders": [label for label, _, _ in LOADER_VARIANTS] + [READERS_VIDEO_LABEL]})
    return rows


def dry_run(suite: Suite) -> str:
    """The plan as a table (``--dry-run``), with whether NVDEC decodes each dataset on PLANNED_ARCHS."""
    lines = [f"suite {suite.name}: model {suite.model} ({', '.join(suite.models)}), {suite.frames} frames every "
             f"{suite.sampling_rate}, crop {suite.crop}, stages {', '.join(s for s in STAGES if s in suite.stages)}",
             "", "| dataset | codec | profile | pix_fmt | size | GOP | frames | videos | batches | stages | "
             + " | ".join(f"NVDEC {a}" for a in PLANNED_ARCHS) + " |",
             "| --- " * (10 + len(PLANNED_ARCHS)) + "|"]
    for row in plan(suite):
        nvdec = [why_not_decodable(row, "gpu", arch) or "ok" for arch in PLANNED_ARCHS]
        lines.append(f"| {row['dataset']} | {row['codec']} | {row['profile'] or '-'} | {row['pix_fmt']} | "
                     f"{row['width']}x{row['height']} | {row['gop']} | {row['frames']} | {row['videos']} | "
                     f"{','.join(map(str, row['batches']))} | {','.join(row['stages'])} | " + " | ".join(nvdec) + " |")
    lines += ["", "loader variants: " + "; ".join(plan(suite)[0]["loaders"]) if suite.videos else "",
              "model variants: fp32 NCDHW eager (baseline), bf16 channels-last (CPU: fp32 channels-last)"
              + (", + compile" if suite.compile else "") + f", batches {list(suite.scaling_batches)}"
              + (" + the largest that fits" if suite.largest_batch else "")
              + "".join(f"; on the CPU: {m} b{b} fp32 NCDHW vs fp32 channels-last" for m, b in suite.cpu_models)]
    return "\n".join(lines) + "\n"


def prepare_data(suite: Suite, data_dir: Path, results: Optional[Results] = None) -> dict[str, Path]:
    """Generate (or reuse) each dataset of the suite; returns name -> dataset folder.

    Each dataset is generated inside its own error handling: one that fails (or cannot be useful here) is
    recorded in ``results`` (stage ``0 data``) and left out of the returned dict, the others go on.
    """
    from pipelines.synthetic import generate_dataset

    roots = {}
    for name, spec in suite.videos.items():
        root = data_dir / name
        spec = dict(spec)
        codec = spec.pop("codec")
        if codec == "h264" and not torch.cuda.is_available():
            # CPU-only machine: H.264 is read only by PyAV, the comparison needs NVDEC
            if results is not None:
                results.skip("0 data", name, "generate", "H.264 data is only useful with a CUDA GPU (NVDEC)")
            continue
        log.info("data: %s", name)
        try:
            with _took(f"data {name}"):
                generate_dataset(root, codec=codec, seed=0, workers=available_cores(), progress=False, **spec)
        except Exception as err:  # noqa: BLE001 - one bad dataset is reported, the others still run
            log.error("data %s failed: %s\n%s", name, err, traceback.format_exc())
            if results is not None:
                results.skip("0 data", name, "generate", f"failed: {type(err).__name__}: {err}")
            continue
        roots[name] = root
    return roots


def _missing_data(name: str, results: Results) -> str:
    """Why a dataset is absent: its row in stage ``0 data`` (failed or skipped), for the dependent rows."""
    for row in results.rows:
        if row.stage == "0 data" and row.group == name and row.skipped:
            return ("dataset failed: " + row.skipped[len("failed: "):] if row.skipped.startswith("failed")
                    else row.skipped)
    return "dataset not generated"


def loader_config(suite: Suite, root: Path, backend: str, device: str, *, batch: Optional[int] = None,
                  extra: tuple[str, ...] = ()) -> object:
    overrides = [
        f"model.name={suite.model}", f"data.root={root}", f"data.train_list={root / 'train.list'}",
        f"data.val_list={root / 'train.list'}", f"data.test_list={root / 'train.list'}",
        f"data.backend={backend}", f"data.device={device}", f"data.batch_size={batch or suite.batch}",
        f"data.num_frames={suite.frames}", f"data.sampling_rate={suite.sampling_rate}",
        f"data.train_crop={suite.crop}", f"data.val_crop={suite.crop}",
        f"data.train_short_side=[{suite.short_side[0]}, {suite.short_side[1]}]",
        f"data.test_short_side={suite.test_short_side}", f"data.test_crop={suite.test_crop}",
        f"test.num_clips={suite.num_clips}", f"test.num_crops={suite.num_crops}",
        f"data.num_workers={available_cores()}",
        f"model.num_classes={suite.num_classes}",
        "data.class_names=null",  # a classifier of suite.num_classes outputs over the synthetic labels
        "data.dtype=bf16",
    ]
    return load_config(None, overrides + list(extra))


LOADER_VARIANTS = (  # (label, backend, device); the first is the baseline
    ("PyAV + DataLoader", "pyav", "cpu"),
    ("DALI CPU", "dali", "cpu"),
    ("DALI GPU", "dali", "gpu"),
)


def _alpha(model_name: str) -> int:
    from models import create_model

    return create_model(model_name, num_classes=8).arch.alpha


def _clips(batch) -> float:
    return float(len(batch[1]))  # the labels: a tensor, or a DALI TensorList for fn.readers.video


def _gpu_arch() -> Optional[str]:
    from pipelines.codecs import gpu_arch

    return gpu_arch(tuple(torch.cuda.get_device_capability())) if torch.cuda.is_available() else None


@functools.lru_cache(maxsize=None)
def _gpu_environment_problem() -> Optional[str]:
    """The GPU preflight's message (DALI with CUDA, libnvcuvid, one H.264 decode) or None; run once."""
    from pipelines.preflight import PreflightError, preflight_gpu_environment

    try:
        preflight_gpu_environment()
    except PreflightError as err:
        return str(err)
    return None


def _codec_ok(backend: str, device: str, video: dict) -> Optional[str]:
    """Why this placement cannot run on this dataset here, or None. ``video``: :func:`dataset_format`."""
    if device == "gpu" and not torch.cuda.is_available():
        return "no CUDA GPU on this machine"
    if backend == "dali":
        try:
            import nvidia.dali  # noqa: F401
        except ImportError as err:
            return f"DALI unavailable ({err})"
        if device == "gpu" and _gpu_environment_problem():
            return _gpu_environment_problem()
        arch = _gpu_arch() if device == "gpu" else None
        reason = why_not_decodable(video, device, arch)
        if reason:
            return reason + (f" ({ARCH_NAMES[arch]})" if arch and ARCH_NAMES[arch] not in reason else "")
    return None


def _memory_outside_torch(device: torch.device) -> Optional[int]:
    """Bytes in use on ``device`` that torch's allocator does not hold: DALI's memory pool, NVDEC's decode
    surfaces and the CUDA contexts. DALI does not count its pool in torch's figures, so this is how its
    footprint shows; None off CUDA."""
    if device.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(device)
    return total - free - torch.cuda.memory_reserved(device)


def _dali_pipeline_memory(loader) -> Optional[int]:
    """Bytes DALI's own executor statistics report for the loader's pipeline (the peak reserved per
    operator, summed), where the pipeline was built with ``enable_memory_stats=True``; else None."""
    pipe = getattr(loader, "_pipe", None) or getattr(loader, "pipe", None)
    stats = getattr(pipe, "executor_statistics", None)
    if stats is None:
        return None
    try:
        per_op = stats()
    except Exception:  # noqa: BLE001 - statistics are optional; a DALI without them reports nothing
        return None
    sizes = [sum(v) if isinstance(v, (list, tuple)) else v
             for op in per_op.values() for k, v in op.items() if k == "max_reserved_memory_size"]
    return int(sum(sizes)) if sizes else None


def _release_dali_memory() -> None:
    """Hand DALI's unused pooled device memory back (``nvidia.dali.backend.ReleaseUnusedMemory``)."""
    import gc

    gc.collect()
    try:
        from nvidia.dali.backend import ReleaseUnusedMemory
    except ImportError:
        return
    ReleaseUnusedMemory()


READERS_VIDEO_LABEL = "DALI GPU fn.readers.video"


class ReadersVideoLoader:
    """DALI's own reader-decoder ``fn.readers.video`` (GPU only) with this project's training augmentation
    (random short side, random crop, flip, mean/std, fp16 FHWC): the second GPU contender of stage 1.

    It reads files and picks clips itself (``sequence_length`` frames ``stride`` apart, shuffled), so it
    delivers the same amount of work per clip as the project's loader, not the same clips. One epoch per
    ``iter``. See https://docs.nvidia.com/deeplearning/dali/user-guide/docs/operations/nvidia.dali.fn.readers.video.html
    """

    def __init__(self, suite: Suite, root: Path, batch: int) -> None:
        from nvidia.dali import fn, pipeline_def, types

        from pipelines.dataset import read_list

        entries = read_list(root / "train.list")
        files, labels = [str(root / path) for path, _ in entries], [label for _, label in entries]
        self.batch = batch

        @pipeline_def(batch_size=batch, num_threads=max(1, min(4, available_cores())),
                      device_id=torch.cuda.current_device(), seed=0)
        def readers_video():
            frames, label = fn.readers.video(device="gpu", filenames=files, labels=labels, name="Reader",
                                             sequence_length=suite.frames, stride=suite.sampling_rate,
                                             random_shuffle=True, initial_fill=len(files), pad_last_batch=True)
            short = fn.random.uniform(range=[float(suite.short_side[0]), float(suite.short_side[1])])
            frames = fn.resize(frames, resize_shorter=short)
            frames = fn.crop_mirror_normalize(
                frames, crop=(suite.crop, suite.crop), crop_pos_x=fn.random.uniform(range=[0.0, 1.0]),
                crop_pos_y=fn.random.uniform(range=[0.0, 1.0]), mirror=fn.random.coin_flip(),
                mean=[0.45 * 255] * 3, std=[0.225 * 255] * 3, dtype=types.FLOAT16, output_layout="FHWC")
            return frames, label

        self.pipe = readers_video()
        self.pipe.build()
        self.batches_per_epoch = max(1, self.pipe.epoch_size("Reader") // batch)

    def __iter__(self):
        for _ in range(self.batches_per_epoch):
            frames, labels = self.pipe.run()
            yield frames, labels


def _measure_loader(suite: Suite, loader, device: torch.device) -> Measurement:
    with NvdecMonitor() as mon:
        m = measure_iterable(lambda: loader, _clips, warmup=suite.warmup, repeats=suite.repeats,
                             iters=suite.iters, unit="clips/s", device=device)
    m.extra["frames_per_s"] = round(m.median * suite.frames)
    if mon.mean is not None:
        m.extra["nvdec_util_pct"] = round(mon.mean, 1)
    return m


def stage_loader(suite: Suite, roots: dict[str, Path], results: Results) -> None:
    alpha = _alpha(suite.model)
    device = _device()
    for name in suite.loader_sets:
        if name not in roots:
            results.skip("1 loader", name, "all", _missing_data(name, results), "clips/s")
            continue
        video = dataset_format(suite.videos[name])
        batches = [suite.batch] if name != suite.loader_sets[0] else list(suite.scaling_batches)
        for batch in batches:
            group = f"{name} b{batch}"
            with _took(f"loader {group}"):
                _loader_group(suite, roots[name], video, group, batch, alpha, device, results)


def _loader_group(suite: Suite, root: Path, video: dict, group: str, batch: int, alpha: int,
                  device: torch.device, results: Results) -> None:
    """Stage 1 on one dataset and batch: every loader variant (PyAV, DALI CPU, DALI GPU, fn.readers.video)."""
    from pipelines import build_loader

    for i, (label, backend, placement) in enumerate(LOADER_VARIANTS + (("", "readers", "gpu"),)):
        label = label or READERS_VIDEO_LABEL
        reason = _codec_ok("dali" if backend == "readers" else backend, placement, video)
        if reason:
            results.skip("1 loader", group, label, reason, "clips/s")
            continue
        try:
            before = _memory_outside_torch(device) if placement == "gpu" else None
            if backend == "readers":
                loader = ReadersVideoLoader(suite, root, batch)
            else:
                loader = build_loader(loader_config(suite, root, backend, placement, batch=batch),
                                      "train", alpha=alpha)
            m = _measure_loader(suite, loader, device)
        except Exception as err:  # noqa: BLE001 - one failing variant is reported, the others run
            log.error("loader %s %s failed: %s\n%s", group, label, err, traceback.format_exc())
            results.skip("1 loader", group, label, f"failed: {type(err).__name__}: {err}", "clips/s")
            continue
        if before is not None:
            after = _memory_outside_torch(device)
            m.extra["dali_gpu_mem_mb"] = round(max(after - before, 0) / 2**20)
            own = _dali_pipeline_memory(loader)
            if own is not None:
                m.extra["dali_reported_mem_mb"] = round(own / 2**20)
        del loader
        if before is not None:
            _release_dali_memory()  # so the next variant's figure starts from an empty DALI pool
        results.add("1 loader", group, label, m, baseline=(i == 0))


def stage_model(suite: Suite, results: Results) -> dict:
    """Returns the model-step bound (clips/s of our best variant at suite.batch) per model."""
    from benchmarks.model_step import BASELINE, largest_batch, measure_step, our_variants

    device = _device()
    ours, ours_compiled = our_variants(device)
    bounds = {}
    variants = [BASELINE, ours] + ([ours_compiled] if suite.compile else [])
    for model_name in suite.models:
        batches = list(suite.scaling_batches)
        if suite.largest_batch and device.type == "cuda":
            for variant in (BASELINE, ours):
                biggest = largest_batch(model_name, variant, device, suite.frames, suite.crop)
                log.info("model: %s %s largest batch %d", model_name, variant.name, biggest)
                if biggest and biggest not in batches:
                    batches.append(biggest)
        for batch in sorted(set(batches)):
            group = f"{model_name} b{batch}"
            for variant in variants:
                try:
                    with _took(f"model {group} {variant.name}"):
                        m = measure_step(model_name, variant, batch, device, frames=suite.frames, size=suite.crop,
                                         warmup=suite.warmup, repeats=suite.repeats, iters=suite.iters,
                                         model_args=suite.model_args)
                except torch.cuda.OutOfMemoryError:
                    results.skip("2 model", group, variant.name, "out of memory", "clips/s")
                    continue
                row = results.add("2 model", group, variant.name, m, baseline=(variant is BASELINE))
                if variant is ours and device.type == "cpu" and row.ratio:
                    row.extra["memory_format"] = _memory_format_note(row.ratio)
                if batch == suite.batch and variant is not BASELINE:
                    bounds[model_name] = max(bounds.get(model_name, 0.0), m.median)
        if not suite.compile:
            results.skip("2 model", f"{model_name} b{suite.batch}", ours_compiled.name,
                         "compile left out of this suite (compilation dominates a short CPU run)", "clips/s")
    _cpu_model_rows(suite, results)
    return bounds


def _memory_format_note(ratio: float) -> str:
    """The memory format is chosen per device by the model stage's measurement: channels-last on CUDA (cuDNN's
    NDHWC kernels); on the CPU whichever measures faster in fp32 (channels-last 3D was reported 8-15% slower
    for R50 there, which ``Suite.cpu_models`` measures)."""
    return (f"cpu: channels-last is {ratio:.2f}x NCDHW here -> " + ("NCDHW" if ratio < 1 else "channels-last")
            + " for cpu; cuda: channels-last")


def _cpu_model_rows(suite: Suite, results: Results) -> None:
    """``suite.cpu_models``: fp32 NCDHW vs fp32 channels-last training steps on the CPU, whatever the suite's
    device, so the per-device memory-format decision is measured for these models too (one step per window)."""
    from benchmarks.model_step import BASELINE, measure_step, our_variants

    cpu = torch.device("cpu")
    ours = our_variants(cpu)[0]
    for model_name, batch in suite.cpu_models:
        group = f"{model_name} b{batch} cpu"
        for variant in (BASELINE, ours):
            with _took(f"model {group} {variant.name}"):
                m = measure_step(model_name, variant, batch, cpu, frames=suite.frames, size=suite.crop, warmup=1,
                                 repeats=3, iters=1, model_args=suite.model_args)
            row = results.add("2 model", group, variant.name, m, baseline=(variant is BASELINE))
            if variant is ours and row.ratio:
                row.extra["memory_format"] = _memory_format_note(row.ratio)


class _TimedLoader:
    """Wraps a loader to add up the time spent waiting for the next batch (the GPU's data wait)."""

    def __init__(self, loader, device: torch.device):
        self.loader, self.device, self.wait = loader, device, 0.0

    def __iter__(self):
        iterator = iter(self.loader)
        while True:
            start = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            self.wait += time.perf_counter() - start
            yield batch


def stage_e2e(suite: Suite, roots: dict[str, Path], results: Results, bounds: dict) -> None:
    from benchmarks.model_step import BASELINE, TrainStep, our_variants
    from pipelines import build_loader

    device = _device()
    ours, ours_compiled = our_variants(device)
    name = suite.e2e_dataset
    if name not in roots:
        results.skip("3 e2e", suite.model, "all", _missing_data(name, results), "clips/s")
        return
    video = dataset_format(suite.videos[name])
    alpha = _alpha(suite.model)
    ours_device = "gpu" if device.type == "cuda" else "cpu"
    stacks = [("PyAV + fp32 NCDHW", "pyav", "cpu", BASELINE), (f"DALI {ours_device.upper()} + {ours.name}",
                                                               "dali", ours_device, ours)]
    if suite.compile:
        stacks.append((f"DALI {ours_device.upper()} + {ours_compiled.name}", "dali", ours_device, ours_compiled))
    group = f"{suite.model} b{suite.batch} {name}"
    for i, (label, backend, placement, variant) in enumerate(stacks):
        reason = _codec_ok(backend, placement, video)
        if reason:
            results.skip("3 e2e", group, label, reason, "clips/s")
            continue
        cfg = loader_config(suite, roots[name], backend, placement,
                            extra=(f"model.channels_last={str(variant.channels_last).lower()}",
                                   "data.dtype=fp32" if variant.precision == "fp32" else "data.dtype=bf16"))
        loader = _TimedLoader(build_loader(cfg, "train", alpha=alpha), device)
        step = TrainStep(suite.model, variant, suite.batch, device, suite.frames, suite.crop,
                         num_classes=cfg.model.num_classes, model_args=suite.model_args)

        def consume(batch, step=step):
            # as delivered (fp32 from PyAV, bf16 from DALI on the GPU): the engine's step moves, lays out and
            # casts them as training does
            step.inputs = list(batch[0])
            step.labels = batch[1].to(device, non_blocking=True) % cfg.model.num_classes
            step()

        def reset_wait(loader=loader):
            loader.wait = 0.0

        with _took(f"e2e {group} {label}"):
            m = measure_iterable(lambda: loader, _clips, warmup=suite.warmup, repeats=suite.repeats,
                                 iters=suite.iters, unit="clips/s", device=device, on_batch=consume,
                                 after_warmup=reset_wait)
        timed = sum(m.seconds)
        m.extra["data_wait_share"] = round(min(loader.wait / timed, 1.0), 3) if timed else None
        bound = bounds.get(suite.model)
        if bound:
            m.extra["of_model_bound"] = round(m.median / bound, 3)
        results.add("3 e2e", group, label, m, baseline=(i == 0))


def stage_multicrop(suite: Suite, roots: dict[str, Path], results: Results) -> None:
    from engine.model import build_model
    from engine.precision import precision_for, to_model_inputs
    from pipelines import build_loader

    device = _device()
    name = suite.e2e_dataset
    if name not in roots:
        results.skip("4 multicrop", suite.model, "all", _missing_data(name, results), "videos/s")
        return
    video = dataset_format(suite.videos[name])
    placement = "gpu" if device.type == "cuda" else "cpu"
    # the evaluator's model and precision, as test.py builds them
    model_cfg = loader_config(suite, roots[name], "dali", placement)
    model_cfg.model.args = dict(suite.model_args)
    model = build_model(model_cfg, device).eval()
    precision = precision_for(model_cfg, "test", device)
    group = f"{suite.model} {suite.num_clips}x{suite.num_crops} views {name}"
    variants = [("DALI decode per view", True), ("DALI decode once", False)]
    for i, (label, per_view) in enumerate(variants):
        reason = _codec_ok("dali", placement, video)
        if reason:
            results.skip("4 multicrop", group, label, reason, "videos/s")
            continue
        cfg = loader_config(suite, roots[name], "dali", placement,
                            extra=("test.batch_size=1",))
        loader = build_loader(cfg, "test", alpha=model.arch.alpha, decode_per_view=per_view)

        def forward(batch):
            with torch.inference_mode(), precision.autocast():
                model(to_model_inputs(batch[0], device, bool(model_cfg.model.channels_last), precision))

        with _took(f"multicrop {group} {label}"):
            m = measure_iterable(lambda: loader, lambda b: float(b[1].shape[0]), warmup=1, repeats=suite.repeats,
                                 iters=max(2, suite.eval_videos // suite.repeats), unit="videos/s", device=device,
                                 on_batch=forward)
        results.add("4 multicrop", group, label, m, baseline=(i == 0))


# ---------------------------------------------------------------------------------------------- Kinetics geometry vs peers

def prepare_kinetics(sets: KineticsSets, data_dir: Path, gop: int) -> tuple[Path, list]:
    """Render (or reuse) ``sets.videos`` Kinetics-geometry VP9 videos with keyframes every ``gop`` frames."""
    import json

    from pipelines.dataset import VideoRecord
    from pipelines.synthetic import CLASSES, render_video, video_spec
    from pipelines.video_io import write_video

    root = data_dir / sets.name(gop)
    num_frames = int(round(30 * sets.seconds))
    manifest = {"width": sets.width, "height": sets.height, "frames": num_frames, "gop": gop, "videos": sets.videos,
                "codec": "vp9", "version": 1}
    records = []
    done = root / "manifest.json"
    reuse = done.is_file() and json.loads(done.read_text()) == manifest
    root.mkdir(parents=True, exist_ok=True)
    for i in range(sets.videos):
        label = i % len(CLASSES)
        path = root / f"video_{i:02d}.webm"
        if not reuse:
            spec = video_spec(0, "train", i, label, sets.width, sets.height, num_frames, mode="kinetics")
            write_video(path, render_video(spec), fps=30, codec="vp9", keyframe_interval=gop)
        records.append(VideoRecord(path.name, label, num_frames=num_frames, fps=30.0, width=sets.width,
                                   height=sets.height, codec="vp9", keyframe_interval=gop))
    if not reuse:
        write_text(done, json.dumps(manifest))
    return root, records


def _kinetics_config(sets: KineticsSets, root: Path, backend: str, workers: int) -> object:
    return load_config(None, [
        "model.name=slowfast_r50_4x16", f"data.root={root}", f"data.backend={backend}", "data.device=cpu",
        f"data.num_frames={sets.frames}", f"data.sampling_rate={sets.stride}", "data.target_fps=30",
        f"data.train_short_side=[{sets.short_side[0]},{sets.short_side[1]}]", f"data.train_crop={sets.crop}",
        f"data.val_crop={sets.crop}", f"data.test_short_side={sets.test_short_side}", f"data.test_crop={sets.test_crop}",
        f"data.batch_size={sets.batch}", f"data.num_workers={workers}", "data.prefetch=2", "test.batch_size=1",
        f"test.num_clips={sets.num_clips}", f"test.num_crops={sets.num_crops}", "model.num_classes=8",
        "model.channels_last=true", "data.seed=0"])


def window_batches(workers: int, measured: int) -> tuple[int, int, int]:
    """``(warm-up, timed, trailing)`` batches of one window with ``workers`` DataLoader workers (0: this
    process), see :func:`_window`: one warm-up and one trailing batch per worker (none trailing for one
    worker), and whole rounds over the workers timed, at least ``measured`` batches."""
    lanes = max(int(workers), 1)
    return lanes, lanes * -(-max(int(measured), 1) // lanes), lanes if lanes > 1 else 0


def _window(make_iter, items_of, warmup: int, iters: int, trailing: int = 0) -> tuple[float, float]:
    """One timed window: a fresh iterator over an epoch of ``warmup + iters + trailing`` batches; returns
    ``(items/s, seconds)`` of the ``iters`` timed batches.

    - warm-up: one batch per worker (``warmup`` = the workers): each worker's first batch carries its start
      (fork, imports, decoder set-up, first allocations) and is not timed;
    - timed: whole rounds over the workers; the clock runs from the mean arrival time of the warm-up round to
      the mean arrival time of the last timed round, i.e. each worker's own time for its timed batches,
      averaged. (Timing from the last warm-up batch instead counted work done before the clock started: the
      workers do not start together, each goes on with its next batch as soon as its warm-up batch is made,
      and batches are delivered in order. Measured, 2 workers, one timed round: 6.6-10.2 clips/s for the
      project's loader, whose rate over 24-batch epochs was 6.3-6.8.)
    - trailing (with several workers): one more round, abandoned once the timed batches are in (workers
      finish the batch they are making, a peer's are stopped at once): it keeps every worker busy until the
      last timed batch is delivered, as in a long run. Without it the last round runs with the cores to
      itself and reads fast: the last round of 24-batch epochs read 6.8-7.3 clips/s (project) and 6.4-8.8
      (decord) against 6.3-6.8 and 6.1-6.2 over the epochs.

    The contenders are given epochs of exactly this many batches, so every contender times the same clips.
    """
    lanes = warmup
    arrivals, items = [], 0.0
    opened = time.perf_counter()
    iterator = iter(make_iter())
    for i in range(warmup + iters):
        batch = next(iterator)
        arrivals.append(time.perf_counter())
        if i >= warmup:
            items += items_of(batch)
        del batch
    if not trailing:
        for _ in iterator:  # normally nothing is left: the epoch ends here (a DALI loader keeps its pipeline)
            pass
    _close(iterator)
    elapsed = float(np.mean(arrivals[-lanes:]) - np.mean(arrivals[:lanes]))
    log.debug("window: warm-up %.2f s, timed %.2f s (arrivals %s), close %.2f s", arrivals[lanes - 1] - opened,
              elapsed, ", ".join(f"{t - opened:.2f}" for t in arrivals), time.perf_counter() - arrivals[-1])
    return items / elapsed, elapsed


def _rounds(contenders: dict, rounds: int, batches: tuple[int, int, int], items_of,
            unit: str) -> dict[str, Measurement]:
    """Every contender's windows, interleaved in rounds (contention from other work hits all alike), the order
    rotated each round (no contender always follows the same one or always opens a round)."""
    names = list(contenders)
    values: dict[str, list[float]] = {name: [] for name in names}
    seconds: dict[str, list[float]] = {name: [] for name in names}
    failed: dict[str, str] = {}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            if name in failed:
                continue
            try:
                rate, elapsed = _window(contenders[name], items_of, *batches)
            except Exception as err:  # noqa: BLE001 - one failing contender is reported, the others run
                log.error("contender %s failed: %s\n%s", name, err, traceback.format_exc())
                failed[name] = f"failed: {type(err).__name__}: {err}"
                continue
            values[name].append(rate)
            seconds[name].append(elapsed)
            log.debug("%s: %.3g %s (%.2f s)", name, rate, unit, elapsed)
    out = {}
    for name in names:
        out[name] = failed.get(name) or Measurement(unit=unit, values=values[name],
                                                    items_per_window=float(batches[1]), seconds=seconds[name])
    return out


PROJECT_PYAV, PROJECT_DALI = "this project: PyAV loader", "this project: DALI CPU loader"


def stage_kinetics_loaders(sets: KineticsSets, data_dir: Path, results: Results,
                           parts: tuple[str, ...] = ("train", "test")) -> None:
    """Kinetics geometry, GOP 16 and 250: the project's CPU loaders against the peers (training clips and the
    10x3-view test path), per core and with all cores, decoded frames per clip, and cost by clip start."""
    from benchmarks.peers import TRAIN_PEERS, PeerLoader, decord_test_views, frames_from_keyframe, keyframe_numbers
    from benchmarks.peers import peer_status
    from pipelines import build_loader

    status = peer_status()
    cores = max(available_cores(), 1)
    prepared = {}
    for gop in sets.gops:  # every video first: see benchmarks.peers.peer_status on decord and PyAV's encoder
        try:
            with _took(f"data {sets.name(gop)}"):
                prepared[gop] = prepare_kinetics(sets, data_dir, gop)
        except Exception as err:  # noqa: BLE001
            results.skip("1 loader", sets.name(gop), "all", f"dataset failed: {type(err).__name__}: {err}",
                         "clips/s")
    for gop, (root, records) in prepared.items():
        name = sets.name(gop)
        dali_reason = _codec_ok("dali", "cpu", {"codec": "vp9", "width": sets.width, "height": sets.height,
                                                **WRITTEN_FORMAT["vp9"]})
        keyframes = {r.path: keyframe_numbers(str(root / r.path)) for r in records}
        planner = build_loader(_kinetics_config(sets, root, "pyav", 0), "train", alpha=8, records=records)
        s = planner.settings
        mean, std = s.mean, s.std

        def window_epoch(workers: int, split: str):
            """The records of one window's epoch (the videos in turn), its warm-up and its timed batches, and
            the planned batches every contender is given (the project's plans: same clips, sizes, crops)."""
            window = window_batches(workers, sets.iters if split == "train" else sets.test_iters)
            per_batch = sets.batch if split == "train" else 1
            listed = [records[i % len(records)] for i in range(sum(window) * per_batch)]
            epoch = build_loader(_kinetics_config(sets, root, "pyav", 0), split, alpha=8, records=listed)
            batches = epoch.epoch_batches()
            if len(batches) != sum(window):
                raise RuntimeError(f"{name} {split}: an epoch of {len(listed)} videos planned {len(batches)} "
                                   f"batches, not {sum(window)}")
            return listed, window, [[(epoch.records[p.record_index].path, p) for p in b] for b in batches]

        def peer_work(fn):
            return lambda path, plan: fn(path, plan.clips[0], plan.crops[0], mean, std)

        # ---- training clips: clips/s per core and with all cores
        for workers in (sorted({1, cores}) if "train" in parts else ()):
            group = f"{name} train b{sets.batch} {workers} worker{'s' if workers > 1 else ''}"
            listed, window, batches = window_epoch(workers, "train")
            items = [(str(root / path), p) for batch in batches for path, p in batch]
            contenders, skipped = {}, {}
            for label, backend in ((PROJECT_PYAV, "pyav"), (PROJECT_DALI, "dali")):
                if backend == "dali" and dali_reason:
                    skipped[label] = dali_reason
                    continue
                loader = build_loader(_kinetics_config(sets, root, backend, workers), "train", alpha=8, records=listed)
                contenders[label] = (lambda loader=loader: loader)
            for label, (module, fn) in TRAIN_PEERS.items():
                if module and status.get(module):
                    skipped[label] = status[module]
                    continue
                contenders[label] = (lambda fn=fn, w=workers: PeerLoader(items, peer_work(fn), sets.batch, w))
            with _took(group) as took:
                figures = _rounds(contenders, sets.rounds, window, lambda b: float(sets.batch), "clips/s")
            _report_against_peers(results, "1 loader", group, figures, skipped, took.other_load)
            # frames a keyframe-seeking decoder decodes for the timed clips
            decoded = [frames_from_keyframe(keyframes[path], p.clips[0])
                       for batch in batches[window[0]:window[0] + window[1]] for path, p in batch]
            for row in results.rows:
                if row.group == group and row.median:
                    row.extra["decoded_frames_per_clip"] = (
                        "seek to the span's timestamp - 1024 pts, then forward" if row.variant == "PyAV as PySlowFast"
                        else round(float(np.mean(decoded)), 1))
        # ---- cost by clip start (one thread, this process): from-frame-0 decoding shows as a rising cost
        if "train" in parts and gop in sets.start_gops:
            with _took(f"{name} cost by start"):
                _cost_by_start(sets, root, records, planner, keyframes, status, results, name, mean, std)
        # ---- test path: 10x3 views per video, decode once
        test_workers = sorted({1 if w == "1" else cores for w in sets.test_workers})
        for workers in (test_workers if "test" in parts and gop in sets.test_gops else ()):
            group = f"{name} test {sets.num_clips}x{sets.num_crops} views {workers} worker{'s' if workers > 1 else ''}"
            listed, window, batches = window_epoch(workers, "test")
            test_items = [(str(root / path), p) for batch in batches for path, p in batch]
            contenders, skipped = {}, {}
            for label, backend in ((PROJECT_PYAV, "pyav"), (PROJECT_DALI, "dali")):
                if backend == "dali" and dali_reason:
                    skipped[label] = dali_reason
                    continue
                loader = build_loader(_kinetics_config(sets, root, backend, workers), "test", alpha=8,
                                      records=listed)
                contenders[label + " (decode once)"] = (lambda loader=loader: loader)
            if status.get("decord"):
                skipped["decord decode once (MMAction2)"] = status["decord"]
            else:
                contenders["decord decode once (MMAction2)"] = (
                    lambda w=workers: PeerLoader(test_items, lambda path, plan: decord_test_views(path, plan, mean, std),
                                                 1, w))
            with _took(group) as took:
                figures = _rounds(contenders, sets.test_rounds, window, lambda b: 1.0, "videos/s")
            _report_against_peers(results, "4 multicrop", group, figures, skipped, took.other_load)


def _report_against_peers(results: Results, stage: str, group: str, figures: dict, skipped: dict,
                          other_load: Optional[float] = None) -> None:
    """Rows of one group; the project's rows carry their ratio against the best peer (``vs_best_peer``) and
    the CPU other processes took meanwhile (``other_load``, cores)."""
    peers = {k: v for k, v in figures.items() if not k.startswith("this project") and isinstance(v, Measurement)}
    best = max(peers.items(), key=lambda kv: kv[1].median, default=None)
    for label, figure in figures.items():
        if not isinstance(figure, Measurement):
            results.skip(stage, group, label, figure, "clips/s" if stage.startswith("1") else "videos/s")
            continue
        extra = {}
        if label.startswith("this project") and best:
            extra = {"vs_best_peer": round(figure.median / best[1].median, 2), "best_peer": best[0]}
            if other_load is not None:
                extra["other_load"] = round(other_load, 2)
        results.add(stage, group, label, figure, baseline=bool(best) and label == best[0], **extra)
    for label, reason in skipped.items():
        results.skip(stage, group, label, reason, "clips/s" if stage.startswith("1") else "videos/s")


def _cost_by_start(sets, root, records, planner, keyframes, status, results, name, mean, std) -> None:
    """ms per clip at a few start frames, one thread each (torch, FFmpeg, DALI, decord), in this process, each
    contender on the same clip geometry; one untimed call per contender first, then rounds over the starts,
    the contenders' order rotated each round."""
    import pipelines.pyav_loader as pyav_module
    from benchmarks.peers import TRAIN_PEERS, frames_from_keyframe
    from pipelines.base import ClipPlan
    from pipelines.clip_segment import Segment

    record = records[0]
    path = str(root / record.path)
    span = (sets.frames - 1) * sets.stride + 1
    starts = np.linspace(0, record.num_frames - span, sets.starts).astype(int).tolist()
    params = planner.plan(0).crops[0]
    contenders: dict[str, Callable] = {}
    from pipelines import build_loader

    pyav = build_loader(_kinetics_config(sets, root, "pyav", 0), "train", alpha=8, records=records)

    def project_pyav(clip):
        plan = ClipPlan(0, 0, 0, 0, clip[None], [params])
        return pyav.normalise(pyav.decode_views(plan))

    contenders[PROJECT_PYAV] = project_pyav
    if not _codec_ok("dali", "cpu", {"codec": "vp9", "width": sets.width, "height": sets.height,
                                     **WRITTEN_FORMAT["vp9"]}):
        from pipelines.dali_loader import _Sample

        dali = build_loader(_kinetics_config(sets, root, "dali", 1), "train", alpha=8, records=records)
        encoded = dali._read(0)

        def dali_clip(clip, whole=False):
            sample = _Sample(ClipPlan(0, 0, 0, 0, clip[None], [params]), encoded)
            sample.segments = ([Segment(encoded, clip.astype(np.int32), 0, -1)] if whole
                               else dali._segments(sample))
            inputs = [dali._dali_inputs([sample])]

            def once():  # one batch, then the end: DALI's prefetch decodes no second clip beside the timed one
                if not inputs:
                    raise StopIteration
                return inputs.pop()

            pipe = dali._new_pipeline(once, 1)
            start = time.perf_counter()
            pipe.run()
            return time.perf_counter() - start

        contenders[PROJECT_DALI] = dali_clip
        if any(k > 0 for k in keyframes[record.path]):  # else the segment is the whole file: the same row twice
            contenders["DALI CPU given the whole file (before the segment fix)"] = lambda c: dali_clip(c, whole=True)
    for label, (module, fn) in TRAIN_PEERS.items():
        if module and status.get(module):
            continue
        contenders[label] = lambda clip, fn=fn: fn(path, clip, params, mean, std, threads=1)
    names = list(contenders)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    pyav_module.DECODER_THREADS = 1
    try:
        costs: dict[str, dict[int, list[float]]] = {k: {s: [] for s in starts} for k in names}
        for r in range(-1, sets.start_rounds):  # round -1: one untimed call per contender
            for label in names[r % len(names):] + names[:r % len(names)]:
                for s0 in (starts[len(starts) // 2:][:1] if r < 0 else starts):
                    clip = np.arange(s0, s0 + span, sets.stride, dtype=np.int64)
                    start = time.perf_counter()
                    timed = contenders[label](clip)
                    elapsed = timed if isinstance(timed, float) else time.perf_counter() - start
                    if r >= 0:
                        costs[label][s0].append(elapsed * 1000)
    finally:
        torch.set_num_threads(threads)
        pyav_module.DECODER_THREADS = None
    group = f"{name} ms per clip by start frame (1 thread)"
    for label, by_start in costs.items():
        medians = {s0: float(np.median(v)) for s0, v in by_start.items()}
        m = Measurement(unit="ms/clip", values=by_start[starts[-1]], items_per_window=1.0)
        decoded = {s0: (s0 + span if "whole file" in label
                        else frames_from_keyframe(keyframes[record.path], np.arange(s0, s0 + span, sets.stride)))
                   for s0 in starts}
        results.add("1 loader", group, label, m,
                    ms_by_start=", ".join(f"{s0}: {medians[s0]:.0f}" for s0 in starts),
                    decoded_frames_by_start=", ".join(f"{s0}: {decoded[s0]}" for s0 in starts))


def run(suite_name, out_dir: Path, data_dir: Path, only: Optional[set[str]] = None) -> dict[str, Path]:
    """Run a suite (a name of SUITES, or a :class:`Suite`) and write its results under ``out_dir``."""
    suite = suite_name if isinstance(suite_name, Suite) else SUITES[suite_name]
    _guard_forks()
    env = environment()
    env["date"] = datetime.date.today().isoformat()
    results = Results(suite.name, env)
    stages = (only or set(STAGES)) & set(suite.stages)
    roots = prepare_data(suite, data_dir, results) if stages & {"loader", "e2e", "multicrop"} else {}
    bounds: dict = {}
    for stage in STAGES:
        if stage not in stages:
            continue
        log.info("stage: %s", stage)
        with _took(f"stage {stage}"):
            try:
                if stage == "loader":
                    stage_loader(suite, roots, results)
                    if suite.kinetics:
                        stage_kinetics_loaders(suite.kinetics, data_dir, results, parts=("train",))
                elif stage == "model":
                    bounds = stage_model(suite, results)
                elif stage == "e2e":
                    stage_e2e(suite, roots, results, bounds)
                else:
                    stage_multicrop(suite, roots, results)
                    if suite.kinetics:
                        stage_kinetics_loaders(suite.kinetics, data_dir, results, parts=("test",))
            except Exception as err:  # a broken stage is reported in the results, the others still run
                log.error("stage %s failed: %s\n%s", stage, err, traceback.format_exc())
                results.skip(stage, "all", "all", f"failed: {type(err).__name__}: {err}")
        synchronize()
    device = (env.get("gpu") or "cpu").replace(" ", "-")
    stem = f"{suite.name}-{env['date']}-{device}"
    paths = results.write(out_dir, stem)
    for kind, path in list(paths.items()):
        atomic_copy(path, out_dir / f"latest-{suite.name}{path.suffix}")
    print(results.markdown())
    return paths


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=sorted(SUITES), default="smoke")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"where results are written (default: {SCRATCH_DIR}/<suite>; with --save: {RESULTS_DIR})")
    parser.add_argument("--save", action="store_true",
                        help="write the results into benchmarks/results/ (the committed figures)")
    parser.add_argument("--dry-run", action="store_true", help="list the planned datasets and variants, run nothing")
    parser.add_argument("--data", type=Path, default=Path("data/benchmarks"), help="generated videos (reused)")
    parser.add_argument("--only", default=None, help=f"comma-separated stages among {sorted(STAGES)}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    only = set(args.only.split(",")) if args.only else None
    if only and not only <= set(STAGES):
        parser.error(f"--only {args.only!r}: unknown stage(s) {sorted(only - set(STAGES))}; "
                     f"choose from {sorted(STAGES)}")
    if args.dry_run:
        print(dry_run(SUITES[args.suite]), end="")
        return 0
    out = args.out or (RESULTS_DIR if args.save else SCRATCH_DIR / args.suite)
    paths = run(args.suite, out, args.data, only)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
