"""The benchmark suite: every stage's throughput against its baseline, side by side, in one run.

    python -m benchmarks.run --suite full     # on a GPU machine: the figures the README quotes
    python -m benchmarks.run --suite smoke    # on any machine, tiny sizes, a few minutes: the suite works

Stages (each figure is a ratio against a baseline measured in the same run):
1. loader: clips/s with no model: DALI GPU vs DALI CPU vs PyAV + DataLoader (workers = cores), on
   Kinetics-geometry synthetic video with a long (250) and a short (16) keyframe interval.
2. model: training-step clips/s and peak memory: fp32 NCDHW eager vs bf16 channels-last [+ compile],
   at batch 8 and at the largest batch that fits.
3. e2e: end-to-end training clips/s: PyAV + fp32 NCDHW vs DALI GPU + bf16 channels-last, with the
   share of time the step waits for data, against the model-step bound from stage 2.
4. multicrop: 10x3-view evaluation videos/s: decode once vs decode per view.
5. scaling: stages 1-2 at two batch sizes and two video sizes, so the cost curve shows.

Results: ``benchmarks/results/<suite>-<date>-<device>.{json,md,png}`` and ``latest-<suite>.*`` copies.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import logging
import os
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from benchmarks.environment import NvdecMonitor, environment
from benchmarks.report import Results
from benchmarks.timing import measure_iterable, synchronize
from configs import load_config

RESULTS_DIR = Path(__file__).resolve().parent / "results"
log = logging.getLogger("benchmarks")


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


def _kinetics(width: int, gop: int, seconds: float = 10.0, count: int = 4) -> dict:
    return dict(mode="kinetics", width=width, height=256, fps=30, num_frames=int(30 * seconds), codec="h264",
                keyframe_interval=gop, num_train_per_class=count, num_val_per_class=1)


SUITES = {
    "full": Suite(
        name="full", model="slowfast_r50_4x16", models=("slowfast_r50_4x16", "slowfast_r50_8x8"),
        frames=32, sampling_rate=2, crop=224, short_side=(256, 320), test_short_side=256, test_crop=256, batch=8,
        videos={
            "k400-340x256-gop250": _kinetics(340, 250),
            "k400-340x256-gop16": _kinetics(340, 16),
            "k400-455x256-gop16": _kinetics(455, 16),
            "k400-340x256-gop16-5s": _kinetics(340, 16, seconds=5.0),
        },
        loader_sets=("k400-340x256-gop250", "k400-340x256-gop16", "k400-455x256-gop16", "k400-340x256-gop16-5s"),
        scaling_batches=(8, 16, 32), repeats=5, iters=10,
    ),
    "smoke": Suite(
        name="smoke", model="slowfast_tiny", models=("slowfast_tiny",),
        frames=8, sampling_rate=4, crop=48, short_side=(48, 56), test_short_side=48, test_crop=48, batch=2,
        videos={
            "tiny-96x64-vp9": dict(mode="motion", width=96, height=64, fps=30, num_frames=48, codec="vp9",
                                   keyframe_interval=16, num_train_per_class=1, num_val_per_class=1),
            "tiny-128x96-vp9": dict(mode="motion", width=128, height=96, fps=30, num_frames=48, codec="vp9",
                                    keyframe_interval=16, num_train_per_class=1, num_val_per_class=1),
        },
        loader_sets=("tiny-96x64-vp9", "tiny-128x96-vp9"),
        scaling_batches=(2, 4), warmup=1, repeats=3, iters=2, num_clips=2, num_crops=3, eval_videos=4,
        compile=False, largest_batch=False,
    ),
}


def _device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def prepare_data(suite: Suite, data_dir: Path) -> dict[str, Path]:
    """Generate (or reuse) each dataset of the suite; returns name -> dataset folder."""
    from pipelines.synthetic import generate_dataset

    roots = {}
    for name, spec in suite.videos.items():
        root = data_dir / name
        spec = dict(spec)
        codec = spec.pop("codec")
        if codec == "h264" and not torch.cuda.is_available():
            continue  # CPU-only machine: H.264 is read only by PyAV; the smoke suite uses VP9
        log.info("data: %s", name)
        generate_dataset(root, codec=codec, seed=0, workers=os.cpu_count() or 1, **spec)
        roots[name] = root
    return roots


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
        f"data.num_workers={len(os.sched_getaffinity(0))}",
        "model.num_classes=400" if suite.name == "full" else "model.num_classes=8",
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
    return float(batch[1].shape[0])


def _codec_ok(backend: str, device: str, codec: str) -> Optional[str]:
    """Why this placement cannot run here, or None."""
    if device == "gpu" and not torch.cuda.is_available():
        return "no CUDA GPU on this machine"
    if backend == "dali" and device == "cpu" and codec not in ("vp8", "vp9", "mjpeg"):
        return f"DALI's CPU decoder cannot read {codec}"
    if backend == "dali":
        try:
            import nvidia.dali  # noqa: F401
        except ImportError as err:
            return f"DALI unavailable ({err})"
    return None


def stage_loader(suite: Suite, roots: dict[str, Path], results: Results) -> None:
    from pipelines import build_loader

    alpha = _alpha(suite.model)
    for name in suite.loader_sets:
        if name not in roots:
            results.skip("1 loader", name, "all", "dataset needs a GPU to be useful (H.264)", "clips/s")
            continue
        codec = suite.videos[name]["codec"]
        batches = [suite.batch] if name != suite.loader_sets[0] else list(suite.scaling_batches)
        for batch in batches:
            group = f"{name} b{batch}"
            for i, (label, backend, device) in enumerate(LOADER_VARIANTS):
                reason = _codec_ok(backend, device, codec)
                if reason:
                    results.skip("1 loader", group, label, reason, "clips/s")
                    continue
                cfg = loader_config(suite, roots[name], backend, device, batch=batch)
                loader = build_loader(cfg, "train", alpha=alpha)
                with NvdecMonitor() as mon:
                    m = measure_iterable(lambda: loader, _clips, warmup=suite.warmup, repeats=suite.repeats,
                                         iters=suite.iters, unit="clips/s", device=_device())
                m.extra["frames_per_s"] = round(m.median * suite.frames)
                if mon.mean is not None:
                    m.extra["nvdec_util_pct"] = round(mon.mean, 1)
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
                    m = measure_step(model_name, variant, batch, device, frames=suite.frames, size=suite.crop,
                                     warmup=suite.warmup, repeats=suite.repeats, iters=suite.iters,
                                     model_args=suite.model_args)
                except torch.cuda.OutOfMemoryError:
                    results.skip("2 model", group, variant.name, "out of memory", "clips/s")
                    continue
                results.add("2 model", group, variant.name, m, baseline=(variant is BASELINE))
                if batch == suite.batch and variant is not BASELINE:
                    bounds[model_name] = max(bounds.get(model_name, 0.0), m.median)
        if not suite.compile:
            results.skip("2 model", f"{model_name} b{suite.batch}", ours_compiled.name,
                         "compile left out of this suite (compilation dominates a short CPU run)", "clips/s")
    return bounds


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
    name = suite.loader_sets[-1] if suite.name == "smoke" else "k400-340x256-gop16"
    if name not in roots:
        results.skip("3 e2e", suite.model, "all", "dataset needs a GPU (H.264)", "clips/s")
        return
    codec = suite.videos[name]["codec"]
    alpha = _alpha(suite.model)
    ours_device = "gpu" if device.type == "cuda" else "cpu"
    stacks = [("PyAV + fp32 NCDHW", "pyav", "cpu", BASELINE), (f"DALI {ours_device.upper()} + {ours.name}",
                                                               "dali", ours_device, ours)]
    if suite.compile:
        stacks.append((f"DALI {ours_device.upper()} + {ours_compiled.name}", "dali", ours_device, ours_compiled))
    group = f"{suite.model} b{suite.batch} {name}"
    for i, (label, backend, placement, variant) in enumerate(stacks):
        reason = _codec_ok(backend, placement, codec)
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
            # as delivered: fp32 from PyAV, bf16 (GPU) from DALI; autocast casts where the variant asks
            (slow, fast), labels = batch[0], batch[1]
            memory = torch.channels_last_3d if variant.channels_last else torch.contiguous_format
            step.inputs = [slow.to(device, non_blocking=True, memory_format=memory),
                           fast.to(device, non_blocking=True, memory_format=memory)]
            step.labels = labels.to(device, non_blocking=True) % cfg.model.num_classes
            step()

        def reset_wait(loader=loader):
            loader.wait = 0.0

        m = measure_iterable(lambda: loader, _clips, warmup=suite.warmup, repeats=suite.repeats, iters=suite.iters,
                             unit="clips/s", device=device, on_batch=consume, after_warmup=reset_wait)
        timed = sum(m.seconds)
        m.extra["data_wait_share"] = round(min(loader.wait / timed, 1.0), 3) if timed else None
        bound = bounds.get(suite.model)
        if bound:
            m.extra["of_model_bound"] = round(m.median / bound, 3)
        results.add("3 e2e", group, label, m, baseline=(i == 0))


def stage_multicrop(suite: Suite, roots: dict[str, Path], results: Results) -> None:
    from models import create_model
    from pipelines import build_loader

    device = _device()
    name = suite.loader_sets[-1] if suite.name == "smoke" else "k400-340x256-gop16"
    if name not in roots:
        results.skip("4 multicrop", suite.model, "all", "dataset needs a GPU (H.264)", "videos/s")
        return
    codec = suite.videos[name]["codec"]
    placement = "gpu" if device.type == "cuda" else "cpu"
    model = create_model(suite.model, num_classes=400 if suite.name == "full" else 8, **suite.model_args)
    model = model.to(device).to(memory_format=torch.channels_last_3d).eval()
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if device.type == "cuda"
                else contextlib.nullcontext())
    group = f"{suite.model} {suite.num_clips}x{suite.num_crops} views {name}"
    variants = [("DALI decode per view", True), ("DALI decode once", False)]
    for i, (label, per_view) in enumerate(variants):
        reason = _codec_ok("dali", placement, codec)
        if reason:
            results.skip("4 multicrop", group, label, reason, "videos/s")
            continue
        cfg = loader_config(suite, roots[name], "dali", placement,
                            extra=("test.batch_size=1",))
        loader = build_loader(cfg, "test", alpha=model.arch.alpha, decode_per_view=per_view)

        def forward(batch):
            (slow, fast) = batch[0]
            with torch.inference_mode(), autocast:
                model([slow.to(device), fast.to(device)])

        m = measure_iterable(lambda: loader, lambda b: float(b[1].shape[0]), warmup=1, repeats=suite.repeats,
                             iters=max(2, suite.eval_videos // suite.repeats), unit="videos/s", device=device,
                             on_batch=forward)
        results.add("4 multicrop", group, label, m, baseline=(i == 0))


STAGES = ("loader", "model", "e2e", "multicrop")


def run(suite_name: str, out_dir: Path, data_dir: Path, only: Optional[set[str]] = None) -> dict[str, Path]:
    suite = SUITES[suite_name]
    env = environment()
    env["date"] = datetime.date.today().isoformat()
    results = Results(suite_name, env)
    stages = only or set(STAGES)
    roots = prepare_data(suite, data_dir) if stages & {"loader", "e2e", "multicrop"} else {}
    bounds: dict = {}
    for stage in STAGES:
        if stage not in stages:
            continue
        log.info("stage: %s", stage)
        started = time.perf_counter()
        try:
            if stage == "loader":
                stage_loader(suite, roots, results)
            elif stage == "model":
                bounds = stage_model(suite, results)
            elif stage == "e2e":
                stage_e2e(suite, roots, results, bounds)
            else:
                stage_multicrop(suite, roots, results)
        except Exception as err:  # a broken stage is reported in the results, the others still run
            log.error("stage %s failed: %s\n%s", stage, err, traceback.format_exc())
            results.skip(stage, "all", "all", f"failed: {type(err).__name__}: {err}")
        log.info("stage %s took %.1f s", stage, time.perf_counter() - started)
        synchronize()
    device = (env.get("gpu") or "cpu").replace(" ", "-")
    stem = f"{suite_name}-{env['date']}-{device}"
    paths = results.write(out_dir, stem)
    for kind, path in list(paths.items()):
        latest = out_dir / f"latest-{suite_name}{path.suffix}"
        shutil.copyfile(path, latest)
    print(results.markdown())
    return paths


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=sorted(SUITES), default="smoke")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="where results are written")
    parser.add_argument("--data", type=Path, default=Path("data/benchmarks"), help="generated videos (reused)")
    parser.add_argument("--only", default=None, help=f"comma-separated stages among {sorted(STAGES)}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    only = set(args.only.split(",")) if args.only else None
    if only and not only <= set(STAGES):
        parser.error(f"--only {args.only!r}: unknown stage(s) {sorted(only - set(STAGES))}; "
                     f"choose from {sorted(STAGES)}")
    paths = run(args.suite, args.out, args.data, only)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
