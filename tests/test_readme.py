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


def test_multigrid_block_is_a_table_of_both_runs_and_fills_an_empty_block(tmp_path):
    run = {"config": "configs/demo.yaml", "epochs": 17, "optimizer_steps": 1700, "train_seconds": 347.5,
           "train_clips_per_s": 85.7, "best_val_top1": 0.9875, "best_epoch": 14, "final_val_top1": 0.98125}
    grid = dict(run, config="configs/demo_multigrid.yaml", epochs=26, optimizer_steps=618, train_seconds=252.0,
                train_clips_per_s=191.5, best_val_top1=0.475, best_epoch=26, final_val_top1=0.475)
    record = {"date": "2026-11-30", "device": "cpu-2-cores", "torch": "2.13.0+cpu", "overrides": [],
              "runs": {"plain": run, "multigrid": grid}, "speedup": 1.38}
    (tmp_path / "latest-multigrid.json").write_text(json.dumps(record))
    out = readme.render("<!-- generated:multigrid -->\n<!-- /generated:multigrid -->\n", tmp_path)
    assert out == (
        "<!-- generated:multigrid -->\n"
        "Measured by `python -m benchmarks.multigrid --save` on 2026-11-30 (cpu-2-cores, torch 2.13.0+cpu): "
        "multigrid trained 1.38x as fast as the plain schedule.\n\n"
        "| schedule | epochs | optimizer steps | training time | training clips/s | val top-1 best (epoch) | "
        "val top-1 final |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n"
        "| plain (`demo.yaml`) | 17 | 1700 | 5 min 48 s | 85.7 | 98.8% (14) | 98.1% |\n"
        "| multigrid (`demo_multigrid.yaml`) | 26 | 618 | 4 min 12 s | 191.5 | 47.5% (26) | 47.5% |\n\n"
        "Source: `benchmarks/results/latest-multigrid.json`.\n<!-- /generated:multigrid -->\n")
