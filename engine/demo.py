"""``make demo``: synthetic motion data, SlowFast training with validation, then the multi-view test.

    python -m engine.demo                  # what `make demo` runs
    python -m engine.demo --retrain        # train again in a new output directory

Steps:

1. ``pipelines.synthetic.generate_dataset`` writes (or reuses) ``data/synthetic_motion``: 8 classes that
   only motion tells apart (left, right, up, down, clockwise, counter-clockwise, growing, shrinking).
2. ``engine.trainer.run_training`` trains ``slowfast_tiny`` with ``configs/demo.yaml``, validating (what
   ``python train.py --validate -c configs/demo.yaml`` runs). A finished earlier demo run in ``output/demo`` is
   reused (resumed), so a second ``make demo`` only tests.
3. ``python test.py -c configs/demo.yaml -w output/demo/best.pt``: ``test.num_clips`` x ``test.num_crops``
   views per validation video; Acc1/Acc5 come from its ``metrics.json``. (A process of its own: its thread
   count is set before torch starts.)

With CUDA the data goes through DALI on the GPU (``-o data.backend=dali -o data.device=gpu``) in bf16. NVDEC
decodes nothing smaller than 128x128 in VP9 (48x16 in H.264), so the CPU dataset's 40x32 VP9 videos cannot
be decoded there: with CUDA the demo generates the same motion classes as H.264 at 60x48 (the 5:4 aspect,
even sizes) in ``data/synthetic_motion_h264``, points ``data.root``, the lists and ``data.class_names`` at it,
and trains into ``output/demo_gpu``. Without CUDA everything is as in ``configs/demo.yaml``.

NOTE: a random horizontal flip turns "moving left" into "moving right" and "clockwise" into
"counter-clockwise" without changing the label, so the demo trains without flips (``data.train_flip: false``
in configs/demo.yaml).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from configs import load_config
from engine.precision import overridden_keys
from engine.trainer import run_training
from pipelines.synthetic import generate_dataset
from utils.cpus import available_cores
from utils.atomic import write_text
from utils.errors import run_cli

REPO = Path(__file__).resolve().parent.parent
CONFIG = "configs/demo.yaml"
# The dataset engine.demo generates; configs/demo.yaml points at the same folder.
DATA_DIR = "data/synthetic_motion"
DATASET = {"width": 40, "height": 32, "num_frames": 16, "fps": 30.0, "codec": "vp9",
           "num_train_per_class": 200, "num_val_per_class": 20, "seed": 0}
# NVDEC-decodable twin of DATASET for CUDA machines (see the module docstring).
GPU_DATA_DIR = "data/synthetic_motion_h264"
GPU_DATASET = {**DATASET, "width": 60, "height": 48, "codec": "h264"}
TARGET_TOP1 = 0.90
RESULTS_DIR = REPO / "benchmarks" / "results"


def dataset_for_device(cuda: bool) -> tuple[str, dict]:
    """``(folder, generate_dataset kwargs)`` of the demo's data: VP9 40x32 on the CPU, H.264 60x48 with CUDA."""
    return (GPU_DATA_DIR, GPU_DATASET) if cuda else (DATA_DIR, DATASET)


def device_overrides(cuda: bool) -> list[str]:
    """The ``-o`` overrides of ``configs/demo.yaml`` for this machine (none on the CPU)."""
    if not cuda:
        return []
    root = GPU_DATA_DIR
    # Its own output directory: a CPU run in output/demo was trained on the other videos.
    return ["train.output_dir=output/demo_gpu", "test.output_dir=output/demo_gpu/test",
            "data.backend=dali", "data.device=gpu", "train.precision=bf16", "test.precision=bf16",
            "data.dtype=bf16", f"data.root={root}", f"data.train_list={root}/train.list",
            f"data.val_list={root}/val.list", f"data.test_list={root}/val.list",
            f"data.class_names={root}/classes.txt"]


def _cpu_threads(num_workers: int) -> int:
    """Compute threads for the training process: the cores the decoding workers leave free (at least 1)."""
    return max(1, available_cores() - num_workers)


def _new_output_dir(base: Path) -> Path:
    if not base.exists():
        return base
    for n in range(2, 1000):
        candidate = base.with_name(f"{base.name}_{n}")
        if not candidate.exists():
            return candidate
    raise SystemExit(f"demo: too many runs next to {base}; remove some")


def demo(argv: Optional[Sequence[str]] = None) -> int:
    """The demo (see the module docstring); returns the exit status. User errors propagate (see :func:`main`)."""
    parser = argparse.ArgumentParser(
        prog="python -m engine.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--retrain",
        action="store_true",
        help="train from scratch in a new output directory instead of reusing output/demo",
    )
    parser.add_argument("--skip-test", action="store_true", help="stop after training")
    parser.add_argument("--save", action="store_true",
                        help="also record the run in benchmarks/results/demo-<date>-<device>.json and "
                             "latest-demo.json (the figures README.md quotes: python -m benchmarks.readme)")
    args = parser.parse_args(argv)
    os.chdir(REPO)  # the config's relative paths (data/, output/) are the repository's

    cuda = torch.cuda.is_available()
    overrides = device_overrides(cuda)
    cfg = load_config(CONFIG, overrides)
    output_dir = Path(cfg.train.output_dir)
    if args.retrain:
        output_dir = _new_output_dir(output_dir)
    cfg.train.output_dir = str(output_dir)
    overrides_argv = [arg for o in overrides for arg in ("-o", o)]
    timings = {}

    start = time.perf_counter()
    data_dir, dataset = dataset_for_device(cuda)
    print(f"demo: [1/3] synthetic motion videos in {data_dir} (reused when complete)", flush=True)
    generate_dataset(data_dir, mode="motion", progress=True, **dataset)
    timings["data"] = time.perf_counter() - start

    start = time.perf_counter()
    print(
        f"demo: [2/3] training {cfg.model.name} on {cfg.data.backend}/{cfg.data.device}, output {output_dir}",
        flush=True,
    )
    if not cuda:
        torch.set_num_threads(_cpu_threads(int(cfg.data.num_workers or 0)))
    resume_from = None
    if (output_dir / "latest.pt").is_file():
        print(
            f"demo: reusing the training run in {output_dir} "
            "(python -m engine.demo --retrain to train again)",
            flush=True,
        )
        resume_from = "latest"
    summary = run_training(cfg, validate=True, resume_from=resume_from, explicit_keys=overridden_keys(overrides))
    timings["train"] = time.perf_counter() - start
    best = summary.get("best_checkpoint")
    top1 = summary.get("best_top1")
    if best is None or top1 is None:
        print("demo: error: training ended without a validated checkpoint (best.pt)", file=sys.stderr)
        return 1

    acc = None
    if not args.skip_test:
        start = time.perf_counter()
        test_dir = output_dir / "test"
        command = [
            sys.executable,
            "test.py",
            "-c",
            CONFIG,
            "-w",
            best,
            "--output-dir",
            str(test_dir),
            "--no-progress",
            *overrides_argv,
        ]
        print(f"demo: [3/3] multi-view test: {' '.join(command[1:])}", flush=True)
        env = dict(os.environ)
        if not cuda:
            env.setdefault("OMP_NUM_THREADS", str(_cpu_threads(int(cfg.data.num_workers or 0))))
        status = subprocess.run(command, env=env).returncode
        timings["test"] = time.perf_counter() - start
        if status != 0:
            print(f"demo: error: test.py exited with status {status}", file=sys.stderr)
            return status
        acc = json.loads((test_dir / "metrics.json").read_text())

    print("demo: ---------------------------------------------------------------")
    print(
        f"demo: validation top-1 {100 * top1:.1f}% (best, epoch {summary['best_epoch']}), checkpoint {best}"
    )
    if acc is not None:
        print(
            f"demo: multi-view test ({acc['num_clips']} clips x {acc['num_crops']} crops, "
            f"{acc['num_evaluated']} videos): Acc1 {100 * acc['acc1']:.2f}%  Acc5 {100 * acc['acc5']:.2f}%"
        )
    print(
        "demo: time "
        + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
        + f", total {sum(timings.values()):.0f} s"
    )
    record = demo_record(summary, acc, timings, trained=resume_from is None, cuda=cuda, model=cfg.model.name)
    written = [write_text(output_dir / "demo.json", json.dumps(record, indent=2) + "\n")]
    if args.save:
        stem = f"demo-{record['date']}-{record['device'].replace(' ', '-')}"
        for name in (f"{stem}.json", "latest-demo.json"):
            written.append(write_text(RESULTS_DIR / name, json.dumps(record, indent=2) + "\n"))
    print("demo: wrote " + ", ".join(str(p) for p in written))
    if top1 < TARGET_TOP1:
        print(
            f"demo: validation top-1 is below the demo's target of {100 * TARGET_TOP1:.0f}%", file=sys.stderr
        )
    return 0


def demo_record(summary: dict, acc: Optional[dict], timings: dict, *, trained: bool, cuda: bool,
                model: str = "slowfast_tiny") -> dict:
    """What one demo run measured, as written to ``<output>/demo.json`` (and, with ``--save``, to
    ``benchmarks/results/``): the figures README.md quotes come from this file, never from prose."""
    if cuda:
        device = torch.cuda.get_device_name(0)
    else:
        device = f"cpu-{available_cores()}-cores"
    return {
        "date": datetime.date.today().isoformat(),
        "device": device,
        "trained_in_this_run": trained,  # False: a finished earlier run was reused, only the test ran
        "model": model,
        "val_top1": summary.get("best_top1"),
        "best_epoch": summary.get("best_epoch"),
        "epochs": summary.get("epochs"),
        "test_acc1": None if acc is None else acc.get("acc1"),
        "test_acc5": None if acc is None else acc.get("acc5"),
        "test_videos": None if acc is None else acc.get("num_evaluated"),
        "test_views": None if acc is None else f"{acc.get('num_clips')}x{acc.get('num_crops')}",
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        "total_seconds": round(sum(timings.values()), 1),
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m engine.demo``: a user error (e.g. a broken dataset) is one ``error:`` line and status 2."""
    return run_cli(demo, argv, interrupted_hint="run `make demo` again to continue")


if __name__ == "__main__":
    sys.exit(main())
