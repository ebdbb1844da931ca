"""Soak benchmark: does memory stay flat over many epochs? (A measurement, not a test.)

Trains ``slowfast_tiny`` through the engine's own loop (:func:`engine.trainer.train_one_epoch`) for ``--epochs``
(20+) epochs of small generated videos, once per loader backend, each in its own process so the backends do not
share a heap: PyAV + DataLoader, DALI CPU, and DALI GPU where CUDA is. After every epoch it records the host RSS of
the training process (and of its loader worker processes alive at that moment) and, on CUDA, the allocated and
reserved device memory. The result is a curve per backend plus the least-squares slope over the epochs after
``--warmup`` (allocators and caches fill during the first epochs); a leak shows as a steady positive slope.

    python -m benchmarks.soak                       # JSON + PNG under $TMPDIR/slowfast-benchmarks/soak
    python -m benchmarks.soak --epochs 30 --save    # benchmarks/results/soak-<date>-<device>.{json,png}
    python -m benchmarks.soak --backends pyav       # one backend
    python -m benchmarks.soak --multigrid --train-per-class 8   # through multigrid's shape changes

``--multigrid`` trains with both multigrid cycles over the soak's epochs (``epoch_factor`` 1: with the default 20 epochs
the stages change after epochs 9 and 16): every loader must go through the shape changes without growing (DALI keeps its one
pipeline, see ``pipelines/dali_loader.py``); each sample records the stage's frames and crop.

Verdict per series: ``flat`` when the fitted growth over the measured epochs is below 8 MiB or 2% of the mean,
whichever is larger, else ``growing``; the figures are reported either way.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SCRATCH_DIR = Path(tempfile.gettempdir()) / "slowfast-benchmarks" / "soak"
BACKENDS = {"pyav": ("pyav", "cpu"), "dali-cpu": ("dali", "cpu"), "dali-gpu": ("dali", "gpu")}
FLAT_MIB, FLAT_SHARE = 8.0, 0.02


def _rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _children(pid: int) -> list[int]:
    found = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text().split()
            found.extend(int(c) for c in text)
    except OSError:
        return found
    return found + [g for c in found for g in _children(c)]


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ``ys`` over ``xs`` (0 for fewer than two points)."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0


MULTIGRID = ["train.multigrid.long_cycle=true", "train.multigrid.short_cycle=true", "train.multigrid.epoch_factor=1.0",
             "train.multigrid.long_cycle_factors=[[0.5,0.7071067811865476],[0.5,1.0],[1.0,1.0]]"]


def worker(backend: str, data: Path, epochs: int, out_json: Path, scratch: Path, multigrid: bool = False) -> None:
    """One backend's soak, in this process: the engine's trainer on ``data``, memory after every epoch."""
    import torch

    from configs import load_config
    from engine import distributed
    from engine import trainer as tr
    from utils.atomic import write_text

    logging.basicConfig(level=logging.WARNING)
    name, device = BACKENDS[backend]
    cfg = load_config(None, [
        "model.name=slowfast_tiny", f"data.root={data}", f"data.backend={name}", f"data.device={device}",
        "data.batch_size=4", "data.num_frames=8", "data.sampling_rate=2", "data.train_short_side=[48, 56]",
        "data.train_crop=48", "data.val_crop=48", "data.test_short_side=48", "data.test_crop=48",
        "data.dtype=fp32", f"train.epochs={epochs}", "train.optimizer=adamw", "train.base_lr=0.003",
        "train.base_batch=8", "train.warmup_epochs=1", "train.precision=fp32", "train.log_every=1000",
        f"train.output_dir={scratch / backend}", *(MULTIGRID if multigrid else []),
    ])
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    info = distributed.init_distributed(prefer_cuda=device == "gpu")
    trainer = tr.build_trainer(cfg, info, progress=False)
    cuda = info.device.type == "cuda"
    samples = []
    start = time.perf_counter()
    for epoch in range(epochs):
        summary = tr.train_one_epoch(trainer, epoch)
        pid = os.getpid()
        kids = _children(pid)
        sample = {"epoch": epoch + 1, "rss_mib": _rss_mib(pid), "workers": len(kids),
                  "rss_with_workers_mib": _rss_mib(pid) + sum(_rss_mib(k) for k in kids),
                  "clips_per_s": summary["clips_per_s"], "elapsed_s": time.perf_counter() - start}
        if trainer.multigrid is not None:
            stage = trainer.multigrid.stage_at(epoch)
            sample["stage"] = f"{stage.num_frames} frames x {stage.crop} px"
        if cuda:
            sample["cuda_allocated_mib"] = torch.cuda.memory_allocated(info.device) / 2**20
            sample["cuda_reserved_mib"] = torch.cuda.memory_reserved(info.device) / 2**20
        samples.append(sample)
        print(json.dumps({"backend": backend, **sample}), flush=True)
    trainer.run_log.close()
    write_text(out_json, json.dumps({"backend": backend, "samples": samples}))


def analyse(samples: list[dict], warmup: int) -> dict:
    """Slope (MiB/epoch), fitted growth over the measured epochs and the verdict, per memory series."""
    measured = [s for s in samples if s["epoch"] > warmup] or samples
    result = {}
    for key in ("rss_mib", "rss_with_workers_mib", "cuda_allocated_mib", "cuda_reserved_mib"):
        if key not in measured[0]:
            continue
        xs, ys = [s["epoch"] for s in measured], [s[key] for s in measured]
        per_epoch = slope(xs, ys)
        growth = per_epoch * (xs[-1] - xs[0])
        mean = sum(ys) / len(ys)
        result[key] = {"slope_mib_per_epoch": per_epoch, "fitted_growth_mib": growth, "mean_mib": mean,
                       "first_mib": ys[0], "last_mib": ys[-1], "epochs": [xs[0], xs[-1]],
                       "verdict": "flat" if abs(growth) < max(FLAT_MIB, FLAT_SHARE * mean) else "growing"}
    return result


def plot(results: dict, path: Path) -> Optional[Path]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    import io

    from utils.atomic import write_bytes

    cuda = any("cuda_reserved_mib" in r["samples"][0] for r in results.values() if r.get("samples"))
    figure = Figure(figsize=(11 if cuda else 6, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2 if cuda else 1)
    axes = list(axes) if cuda else [axes]
    for backend, result in results.items():
        if not result.get("samples"):
            continue
        epochs = [s["epoch"] for s in result["samples"]]
        fit = result["analysis"]["rss_mib"]
        axes[0].plot(epochs, [s["rss_mib"] for s in result["samples"]], marker="o", markersize=3,
                     label=f"{backend} ({fit['slope_mib_per_epoch']:+.2f} MiB/epoch)")
        if cuda and "cuda_reserved_mib" in result["samples"][0]:
            axes[1].plot(epochs, [s["cuda_reserved_mib"] for s in result["samples"]], label=f"{backend} reserved")
    axes[0].set(title="host RSS of the training process", xlabel="epoch", ylabel="MiB")
    axes[0].legend(loc="best")
    if cuda:
        axes[1].set(title="CUDA memory", xlabel="epoch", ylabel="MiB")
        axes[1].legend(loc="best")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return write_bytes(path, buffer.getvalue())


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3, help="epochs left out of the slope")
    parser.add_argument("--backends", default=None,
                        help="comma-separated: pyav, dali-cpu, dali-gpu (default: all this machine runs)")
    parser.add_argument("--train-per-class", type=int, default=2, help="videos per class (8 classes)")
    parser.add_argument("--save", action="store_true", help="write into benchmarks/results/ instead of scratch")
    parser.add_argument("--multigrid", action="store_true", help="train with both multigrid cycles")
    parser.add_argument("--out", default=None, help="output folder")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else (RESULTS_DIR if args.save else SCRATCH_DIR)
    if args.worker:
        worker(args.worker, Path(args.data), args.epochs, Path(args.result), out / "runs", args.multigrid)
        return 0

    import torch

    from benchmarks.environment import environment
    from pipelines.synthetic import generate_dataset
    from utils.cpus import available_cores

    cuda = torch.cuda.is_available()
    backends = args.backends.split(",") if args.backends else ["pyav", "dali-cpu"] + (["dali-gpu"] if cuda else [])
    # VP9 at 128x128: DALI's CPU decoder and NVDEC (VP9 minimum 128x128) both read it
    data = SCRATCH_DIR / f"data-128x128-{args.train_per_class}"
    generate_dataset(data, mode="motion", width=128, height=128, num_frames=24, fps=30, codec="vp9",
                     num_train_per_class=args.train_per_class, num_val_per_class=1, seed=0,
                     workers=available_cores(), progress=False)
    results: dict = {}
    for backend in backends:
        result_file = SCRATCH_DIR / f"result-{backend}.json"
        result_file.unlink(missing_ok=True)
        print(f"soak: {backend}, {args.epochs} epochs", flush=True)
        proc = subprocess.run([sys.executable, "-m", "benchmarks.soak", "--worker", backend, "--data", str(data),
                               "--epochs", str(args.epochs), "--result", str(result_file), "--out", str(SCRATCH_DIR)]
                              + (["--multigrid"] if args.multigrid else []),
                              cwd=Path(__file__).resolve().parents[1])
        if proc.returncode != 0 or not result_file.is_file():
            results[backend] = {"error": f"worker exited with status {proc.returncode}"}
            continue
        samples = json.loads(result_file.read_text())["samples"]
        results[backend] = {"samples": samples, "analysis": analyse(samples, args.warmup)}
    stamp = time.strftime("%Y-%m-%d")
    device = (torch.cuda.get_device_name(0).replace(" ", "-") if cuda else "cpu")
    stem = out / f"soak-{stamp}-{device}{'-multigrid' if args.multigrid else ''}"
    report = {"epochs": args.epochs, "multigrid": args.multigrid, "warmup": args.warmup, "videos": 8 * args.train_per_class,
              "criterion": f"flat: |fitted growth| < max({FLAT_MIB} MiB, {FLAT_SHARE:.0%} of the mean)",
              "environment": environment(), "results": results}
    from utils.atomic import write_text

    write_text(stem.with_suffix(".json"), json.dumps(report, indent=2))
    png = plot(results, stem.with_suffix(".png"))
    print("soak: backend      RSS first -> last (MiB)   slope (MiB/epoch)   growth   verdict")
    for backend, result in results.items():
        if "error" in result:
            print(f"soak: {backend:10s} {result['error']}")
            continue
        for key, fit in result["analysis"].items():
            print(f"soak: {backend:10s} {key:22s} {fit['first_mib']:8.1f} -> {fit['last_mib']:8.1f}   "
                  f"{fit['slope_mib_per_epoch']:+8.3f}   {fit['fitted_growth_mib']:+7.1f}   {fit['verdict']}")
    print(f"soak: {stem.with_suffix('.json')}" + (f", {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
