"""Train a SlowFast video classifier: the thin driver over :mod:`engine.trainer`.

    python train.py --validate -c configs/recognition/slowfast/slowfast.yaml                 # one device
    torchrun --nproc_per_node=8 train.py --validate -c configs/recognition/slowfast/slowfast.yaml

Several nodes: the same command on every node, with ``--nnodes=2 --rdzv_backend=c10d
--rdzv_endpoint=HOST:29500 --rdzv_id=JOB``; with ``--max-restarts=3`` a restarted run resumes from its
``latest.pt`` by itself. ``-o key=value`` overrides any config key, ``--resume [CKPT]`` continues a run,
``-w PATH`` starts from weights in any format :func:`models.load_weights` reads, ``--output-dir DIR``
replaces ``train.output_dir``. Precision (``train.precision``): :mod:`engine.precision`.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from configs import add_config_args, config_from_args
from engine.precision import overridden_keys
from engine.trainer import run_training
from utils.errors import run_cli


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="train.py",
        description="Train a SlowFast video classifier (single process, or one process per GPU via torchrun).")
    add_config_args(parser)
    parser.add_argument("--validate", action="store_true",
                        help="validate (single centred clip) every train.validate_every epochs and at the end; "
                             "keeps best.pt")
    parser.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                        help="continue a run: from CHECKPOINT, or without a value from <output_dir>/latest.pt "
                             "(starts from scratch, with a log line, when there is none yet)")
    parser.add_argument("-w", "--weights", metavar="PATH",
                        help="initial weights in any format models.load_weights reads (this project, PySlowFast "
                             ".pyth, pytorchvideo, Caffe2 .pkl, PaddleVideo .pdparams); a head of another class "
                             "count is re-initialised")
    parser.add_argument("--output-dir", metavar="DIR", help="where checkpoints and logs go (train.output_dir)")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="do not print validation and precise-BN progress to stderr")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Train as the command line ``argv`` says; returns the exit status (user errors: see run_cli)."""
    args = parse_args(argv)
    cfg = config_from_args(args)
    if args.output_dir:
        cfg.train.output_dir = args.output_dir
    run_training(cfg, validate=args.validate, resume_from=args.resume, weights=args.weights,
                 explicit_keys=overridden_keys(args.override), progress=args.progress)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, interrupted_hint="resume with --resume"))
