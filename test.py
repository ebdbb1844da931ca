"""Multi-view evaluation and prediction: the thin driver over :mod:`engine.evaluate`.

    python test.py -c configs/recognition/slowfast/slowfast.yaml -w output/SlowFast/checkpoint_best.pt
    torchrun --nproc_per_node=8 test.py -c CONFIG -w WEIGHTS
    python test.py -c CONFIG -w WEIGHTS -o test.num_clips=1 -o test.num_crops=1     # quick check
    python test.py -c CONFIG -w WEIGHTS --video a.mp4 b.webm                         # top-5 per file

NOTE: keep the logic in engine/evaluate.py: importing a top-level module named ``test`` would shadow
Python's standard-library ``test`` package, so nothing should import this file.
"""
import sys

from engine.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
