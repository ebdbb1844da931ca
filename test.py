"""Multi-view evaluation and prediction: the thin driver over :mod:`engine.evaluator`.

    python test.py -c configs/recognition/slowfast/slowfast.yaml -w output/SlowFast/best.pt
    torchrun --nproc_per_node=8 test.py -c CONFIG -w WEIGHTS
    python test.py -c CONFIG -w WEIGHTS -o test.num_clips=1 -o test.num_crops=1     # quick check
    python test.py -c CONFIG -w WEIGHTS --video a.mp4 b.webm                         # top-5 per file

Precision (``test.precision``): :mod:`engine.precision`.

NOTE: nothing should import this file: a top-level module named ``test`` shadows Python's standard-library
``test`` package. The logic lives in engine/evaluator.py.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from configs import add_config_args, config_from_args
from engine.evaluator import run_test
from engine.precision import overridden_keys
from utils.errors import run_cli


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="test.py",
        description="Multi-view evaluation (test.num_clips x test.num_crops views per video) of a SlowFast "
                    "model on data.test_list, or top-5 predictions for video files (--video).")
    add_config_args(parser)
    parser.add_argument("-w", "--weights", required=True,
                        help="weights: our checkpoint, PySlowFast .pyth, pytorchvideo, Caffe2 .pkl or "
                             "PaddleVideo .pdparams")
    parser.add_argument("--output-dir", default=None, help="where results go (default: test.output_dir)")
    parser.add_argument("--video", nargs="+", default=None, metavar="FILE",
                        help="predict these files (top-5 classes) instead of evaluating the test list")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="do not print videos/s and ETA to stderr")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Evaluate (or predict) as the command line ``argv`` says; returns the exit status."""
    args = parse_args(argv)
    cfg = config_from_args(args)
    return run_test(cfg, args.weights, videos=args.video, output_dir=args.output_dir, progress=args.progress,
                    explicit_keys=overridden_keys(args.override))


if __name__ == "__main__":
    sys.exit(run_cli(main))
