"""README.md quotes figures only from the results files the project writes (benchmarks/readme.py)."""
from __future__ import annotations

import json

from benchmarks import readme


def test_demo_block_is_written_from_the_record(tmp_path):
    record = {"date": "2026-11-30", "device": "cpu-2-cores", "trained_in_this_run": True, "val_top1": 0.9875,
              "best_epoch": 14, "test_acc1": 0.975, "test_acc5": 1.0, "test_videos": 160, "test_views": "2x3",
              "seconds": {"data": 22.4, "train": 412.0, "test": 8.2}, "total_seconds": 442.6}
    (tmp_path / "latest-demo.json").write_text(json.dumps(record))
    text = "intro\n<!-- generated:demo -->\nold figures\n<!-- /generated:demo -->\nrest\n"
    out = readme.render(text, tmp_path)
    assert out == (
        "intro\n<!-- generated:demo -->\n"
        "Measured by `python -m engine.demo --save` on 2026-11-30 (cpu-2-cores): 7 min 23 s in all (data 22 s, "
        "train 412 s, test 8 s); validation top-1 98.8% (best, epoch 14), multi-view test (2x3 views, 160 videos) "
        "Acc1 97.50% / Acc5 100.00% (chance: 12.5%). Source: `benchmarks/results/latest-demo.json`."
        "\n<!-- /generated:demo -->\nrest\n")
    assert readme.render(text, tmp_path / "absent") == text  # no results file: the block is left alone


def test_the_committed_readme_matches_the_committed_results():
    assert readme.main(["--check"]) == 0, "run `python -m benchmarks.readme` after saving new results"
