"""Multi-view evaluation and prediction: the thin driver over :mod:`engine.evaluator`.

    python test.py -w output/SlowFast/best.pt                                       # the run's own config
    python test.py -c configs/recognition/slowfast/slowfast.yaml -w SLOWFAST_4x16_R50.pkl
    torchrun --nproc_per_node=8 test.py -w RUN/best.pt
    python test.py -w RUN/best.pt -o test.num_clips=1 -o test.num_crops=1          # quick check
    python test.py -w RUN/best.pt --video a.mp4 clips/ "more/**/*.webm" --top-k 3  # predict files
    python test.py -w RUN/best.pt --save-features RUN/test/features.npz            # pooled features too

Without ``-c``, one of this project's checkpoints brings its saved configuration; ``-o`` still applies
(:func:`engine.evaluator.load_test_config`). Where results go: :func:`engine.evaluator.resolve_output_dir`.
Precision (``test.precision``): :mod:`engine.precision`.

NOTE: nothing should import this file: a top-level module named ``test`` shadows Python's standard-library
``test`` package. The logic lives in engine/evaluator.py.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from configs import add_config_args
from engine.evaluator import TOP_K, check_top_k, load_test_config, run_test
from engine.precision import overridden_keys
from utils.errors import run_cli


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="test.py",
        description="Multi-view evaluation (test.num_clips x test.num_crops views per video) of a SlowFast "
                    "model on data.test_list, or top-k predictions for video files (--video).")
    add_config_args(parser)
    parser.add_argument("-w", "--weights", required=True,
                        help="weights: our checkpoint (without -c, its saved configuration is used), PySlowFast "
                             ".pyth, pytorchvideo, Caffe2 .pkl or PaddleVideo .pdparams")
    parser.add_argument("--output-dir", default=None,
                        help="where results go (default: -o test.output_dir, else RUN/test beside one of our "
                             "checkpoints, else test.output_dir; --video adds videos/ to the defaults)")
    parser.add_argument("--video", nargs="+", default=None, metavar="PATH",
                        help="predict these instead of evaluating the test list: files, folders (every video "
                             "inside, recursively) or quoted glob patterns ('clips/**/*.mp4')")
    parser.add_argument("--top-k", type=int, default=TOP_K, metavar="K",
                        help=f"classes shown per --video file (default {TOP_K}; capped at the class count)")
    parser.add_argument("--save-scores", default=None, metavar="FILE.npz",
                        help="also write the per-video mean softmax scores, labels and paths as a numpy .npz "
                             "(engine.evaluator.combine_scores ensembles two such files)")
    parser.add_argument("--save-features", default=None, metavar="FILE.npz",
                        help="also write the per-video pooled pre-classifier features (the concatenated per-pathway "
                             "global average pools, 2304 for R50, averaged over the views), labels and paths as a "
                             "numpy .npz, from the same forward passes as the scores")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="do not print videos/s and ETA to stderr")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Evaluate (or predict) as the command line ``argv`` says; returns the exit status."""
    args = parse_args(argv)
    top_k = check_top_k(args.top_k)
    cfg, source = load_test_config(args.config, args.override, args.weights)
    keys = overridden_keys(args.override)
    return run_test(cfg, args.weights, videos=args.video, output_dir=args.output_dir, progress=args.progress,
                    explicit_keys=keys, top_k=top_k, save_scores_to=args.save_scores, config_source=source,
                    infer_arch=args.config is None and "model.name" not in keys,
                    save_features_to=args.save_features)


if __name__ == "__main__":
    sys.exit(run_cli(main))
