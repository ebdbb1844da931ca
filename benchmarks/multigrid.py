"""Multigrid against the plain schedule on the demo's data: training wall time and accuracy of each.

    python -m benchmarks.multigrid            # both runs, into output/multigrid-compare/<time>/{plain,multigrid}
    python -m benchmarks.multigrid --save     # also benchmarks/results/multigrid-<date>-<device>.json and
                                              # latest-multigrid.json (README.md quotes it: python -m benchmarks.readme)

Both runs train ``slowfast_tiny`` from scratch on ``data/synthetic_motion`` (generated as ``make demo`` does) from
``train.epochs`` of ``configs/demo.yaml``: the plain schedule with ``configs/demo.yaml``, multigrid with
``configs/demo_multigrid.yaml`` (the same, with ``train.multigrid``: ``epoch_factor`` times as many, mostly cheaper
epochs). The same seed, data, model and optimizer; one after the other, never at the same time. Accuracy is the
validation top-1 over the 160 validation videos (centred clip, after precise BN at the full shape), best and final.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from configs import load_config
from engine.demo import REPO, dataset_for_device
from engine.trainer import run_training
from pipelines.multigrid import Multigrid
from pipelines.synthetic import generate_dataset
from utils.atomic import write_text
from utils.cpus import available_cores
from utils.errors import run_cli

RESULTS = REPO / "benchmarks" / "results"
SCHEDULES = {"plain": "configs/demo.yaml", "multigrid": "configs/demo_multigrid.yaml"}


def train_once(config: str, output_dir: Path, overrides: Sequence[str]) -> dict:
    """One training run of ``config`` into ``output_dir``: what it took and what it reached."""
    cfg = load_config(config, [f"train.output_dir={output_dir}", *overrides])
    # as the demo: the compute threads the decoding workers leave free
    torch.set_num_threads(max(1, available_cores() - int(cfg.data.num_workers or 0)))
    grid = Multigrid.from_config(cfg, alpha=4)  # slowfast_tiny: alpha 4
    start = time.perf_counter()
    summary = run_training(cfg, validate=True, progress=False)
    seconds = time.perf_counter() - start
    last = summary["last_val"] or {}
    return {"config": str(Path(config).relative_to(REPO)), "epochs": summary["epochs"], "optimizer_steps": summary["iteration"],
            "train_seconds": round(seconds, 1), "train_clips_per_s": round(summary["clips_per_s"] or 0.0, 1),
            "best_val_top1": summary["best_top1"], "best_epoch": summary["best_epoch"],
            "final_val_top1": last.get("top1"), "stages": grid.describe() if grid is not None else []}


def compare(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.multigrid", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--save", action="store_true", help="record the comparison under benchmarks/results/")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                        help="a configuration override for both runs (e.g. train.epochs=5 for a quick look)")
    args = parser.parse_args(argv)
    if torch.cuda.is_available():
        raise SystemExit("benchmarks.multigrid: this comparison is the CPU demo's; on a GPU train the recipes "
                         "(configs/recognition/slowfast/slowfast_8x8{,_multigrid}.yaml) instead")
    os.chdir(REPO)  # the configurations' relative paths (data/, output/) are the repository's
    data_dir, dataset = dataset_for_device(False)
    generate_dataset(data_dir, mode="motion", progress=True, **dataset)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = REPO / "output" / "multigrid-compare" / stamp
    runs = {}
    for name, config in SCHEDULES.items():
        print(f"multigrid: training {name} ({config}) into {base / name}", flush=True)
        runs[name] = train_once(str(REPO / config), base / name, args.override)
        run = runs[name]
        print(f"multigrid: {name}: {run['epochs']} epochs, {run['optimizer_steps']} steps in {run['train_seconds']:.0f} s; "
              f"val top-1 best {100 * run['best_val_top1']:.1f}% final {100 * run['final_val_top1']:.1f}%", flush=True)
    record = {"date": datetime.date.today().isoformat(), "device": f"cpu-{available_cores()}-cores",
              "torch": torch.__version__, "overrides": args.override, "runs": runs,
              "speedup": round(runs["plain"]["train_seconds"] / runs["multigrid"]["train_seconds"], 2)}
    write_text(base / "multigrid.json", json.dumps(record, indent=2) + "\n")
    written = [base / "multigrid.json"]
    if args.save:
        for filename in (f"multigrid-{record['date']}-{record['device']}.json", "latest-multigrid.json"):
            written.append(write_text(RESULTS / filename, json.dumps(record, indent=2) + "\n"))
    print(f"multigrid: {record['speedup']:.2f}x faster training; wrote " + ", ".join(map(str, written)))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli(compare, argv)


if __name__ == "__main__":
    sys.exit(main())
