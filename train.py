"""Train a SlowFast video classifier: the thin driver over :mod:`engine.trainer`.

    python train.py --validate -c configs/recognition/slowfast/slowfast.yaml                 # one device
    torchrun --nproc_per_node=8 train.py --validate -c configs/recognition/slowfast/slowfast.yaml

Several nodes: the same command on every node, with ``--nnodes=2 --rdzv_backend=c10d
--rdzv_endpoint=HOST:29500 --rdzv_id=JOB``; with ``--max-restarts=3`` a restarted run resumes from its
``latest.pt`` by itself. ``-o key=value`` overrides any config key, ``--resume [CKPT]`` continues a run
(without ``-c``, with the configuration the checkpoint carries), ``-w PATH`` starts from weights in any format
:func:`models.load_weights` reads, ``--output-dir DIR`` replaces ``train.output_dir``, ``--overwrite`` lets a new
run write over the checkpoints of an earlier one. Precision (``train.precision``): :mod:`engine.precision`.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from configs import add_config_args
from engine.model import pin_model_from_weights
from engine.precision import overridden_keys
from engine.trainer import resolve_config, run_training
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
                             "(starts from scratch, with a log line, when there is none yet); without -c the "
                             "configuration saved in the checkpoint is used (-o still applies) and the run stays "
                             "in the checkpoint's directory")
    parser.add_argument("-w", "--weights", metavar="PATH",
                        help="initial weights in any format models.load_weights reads (this project, PySlowFast "
                             ".pyth, pytorchvideo, Caffe2 .pkl, PaddleVideo .pdparams); a head of another class "
                             "count is re-initialised")
    parser.add_argument("--output-dir", metavar="DIR", help="where checkpoints and logs go (train.output_dir)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start a new run in an output directory that holds checkpoints of an earlier run, "
                             "writing over them (nothing is deleted beforehand; without it such a start is refused)")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="do not print progress (training epochs, validation, precise BN) to stderr")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Train as the command line ``argv`` says; returns the exit status (user errors: see run_cli)."""
    args = parse_args(argv)
    cfg = resolve_config(args.config, args.override, resume_arg=args.resume, output_dir=args.output_dir)
    keys = overridden_keys(args.override)
    if args.weights and args.resume is None and args.config is None and "model.name" not in keys:
        pin_model_from_weights(cfg, args.weights)  # nothing pins the model: the weights file says what it is
    command = " ".join(["train.py", *(sys.argv[1:] if argv is None else argv)])
    run_training(cfg, validate=args.validate, resume_from=args.resume, weights=args.weights,
                 explicit_keys=keys, progress=args.progress, overwrite=args.overwrite,
                 command=command)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, interrupted_hint="resume with --resume"))
