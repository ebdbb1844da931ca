"""Loader throughput: clips per second from DALI on the GPU, DALI on the CPU and the PyAV baseline.

Measures the loader alone (no model): each placement iterates ``--batches`` batches after ``--warmup``
batches, ``--repeats`` times, synchronising the GPU before reading the clock; prints the median and the
spread. A placement that cannot run here (no GPU, no DALI, a codec its decoder cannot read) is listed as
skipped with the reason.

    python -m benchmarks.loader_throughput -o data.root=DATA -o data.train_list=DATA/train.list
    python -m benchmarks.loader_throughput --synthetic /tmp/bench_data   # generates small VP9 videos
"""
from __future__ import annotations

import argparse
import statistics
import sys

from benchmarks.timing import measure_iterable
from configs import add_config_args, config_from_args
from pipelines import BackendUnavailable, build_loader
from pipelines.dataset import DatasetError
from utils.errors import UserError, run_cli

PLACEMENTS = {"dali-gpu": ("dali", "gpu"), "dali-cpu": ("dali", "cpu"), "pyav": ("pyav", "cpu")}


def measure(cfg, split: str, batches: int, warmup: int, repeats: int, alpha: int) -> list[float]:
    """Clips per second of ``repeats`` timed runs of ``batches`` batches each (see benchmarks.timing).

    Args:
        cfg: configuration; ``data.backend`` and ``data.device`` choose the loader.
        split: ``train``, ``val`` or ``test`` (test counts every view as a clip).
        batches: timed batches per run; warmup: untimed batches first (decoders and pools start up).
        repeats: timed runs.
        alpha: SlowFast's alpha (the slow pathway is cut by the loader).
    """
    loader = build_loader(cfg, split, alpha=alpha)
    epochs = iter(range(1 << 30))

    def next_epoch():  # a small dataset: go on with the next epoch
        loader.set_epoch(next(epochs))
        return loader

    result = measure_iterable(next_epoch, lambda batch: batch[0][1].shape[0], warmup=warmup, repeats=repeats,
                              iters=batches, unit="clips/s")
    return result.values


def main(argv=None) -> int:
    parser = add_config_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--placements", default=",".join(PLACEMENTS),
                        help=f"comma-separated, from {sorted(PLACEMENTS)}")
    parser.add_argument("--split", default="train", choices=["train", "val", "test"])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--alpha", type=int, default=4)
    parser.add_argument("--synthetic", metavar="DIR",
                        help="generate a small VP9 dataset in DIR (or reuse it) and measure on it")
    args = parser.parse_args(argv)
    unknown = [p for p in args.placements.split(",") if p not in PLACEMENTS]
    if unknown:
        raise UserError(f"--placements: unknown placement(s) {unknown}; choose from {sorted(PLACEMENTS)}")
    cfg = config_from_args(args)  # a bad config is a UserError: one `error:` line, status 2 (run_cli)
    if args.synthetic:
        from pipelines.synthetic import generate_dataset

        paths = generate_dataset(args.synthetic, codec="vp9", progress=False)
        cfg.data.root, cfg.data.train_list = str(paths["root"]), str(paths["train_list"])
        cfg.data.val_list = cfg.data.test_list = str(paths["val_list"])
        cfg.model.num_classes = sum(1 for line in open(paths["classes"]) if line.strip())
    print(f"split={args.split} batch_size={cfg.data.batch_size} num_frames={cfg.data.num_frames} "
          f"batches={args.batches} x {args.repeats} repeats")
    for name in args.placements.split(","):
        cfg.data.backend, cfg.data.device = PLACEMENTS[name]
        try:
            rates = measure(cfg, args.split, args.batches, args.warmup, args.repeats, args.alpha)
        except (BackendUnavailable, DatasetError) as err:  # this placement cannot run here; the others may
            print(f"{name:9s} skipped: {err}")
            continue
        spread = f"min {min(rates):.1f} max {max(rates):.1f}"
        print(f"{name:9s} {statistics.median(rates):8.1f} clips/s  ({spread})")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
