"""The figures README.md quotes, generated from the results files the project writes.

README.md holds blocks between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->``; this module
rewrites each from its source under ``benchmarks/results/``, so no figure in the README is typed by hand:

- ``demo``: ``latest-demo.json``, written by ``python -m engine.demo --save`` (``make demo`` measures it);
- ``smoke``: ``latest-smoke.md``, written by ``python -m benchmarks.run --suite smoke --save``;
- ``multigrid``: ``latest-multigrid.json``, written by ``python -m benchmarks.multigrid --save``.

    python -m benchmarks.readme            # rewrite the blocks
    python -m benchmarks.readme --check    # exit 1 when README.md differs from what the files say
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from utils.atomic import write_text

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
README = REPO / "README.md"


def _minutes(seconds: float) -> str:
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes} min {rest:02d} s"


def demo_block(record: dict) -> str:
    """The demo's sentence from a ``demo.json`` record (see :func:`engine.demo.demo_record`)."""
    seconds = record["seconds"]
    parts = ", ".join(f"{name} {value:.0f} s" for name, value in seconds.items())
    trained = "" if record.get("trained_in_this_run", True) else " (training reused from an earlier run)"
    return (f"Measured by `python -m engine.demo --save` on {record['date']} ({record['device']}): "
            f"{_minutes(record['total_seconds'])} in all ({parts}){trained}; validation top-1 "
            f"{100 * record['val_top1']:.1f}% (best, epoch {record['best_epoch']}), multi-view test "
            f"({record['test_views']} views, {record['test_videos']} videos) Acc1 {100 * record['test_acc1']:.2f}% / "
            f"Acc5 {100 * record['test_acc5']:.2f}% (chance: 12.5%). Source: `benchmarks/results/latest-demo.json`.")


def smoke_block(markdown: str) -> str:
    """The smoke suite's own Markdown report, as ``benchmarks.run`` wrote it."""
    return markdown.strip() + "\n\nSource: `benchmarks/results/latest-smoke.md`."


def multigrid_block(record: dict) -> str:
    """The multigrid comparison's table from a ``multigrid.json`` record (see :mod:`benchmarks.multigrid`)."""
    rows = ["| schedule | epochs | optimizer steps | training time | training clips/s | val top-1 best (epoch) | "
            "val top-1 final |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, run in record["runs"].items():
        rows.append(f"| {name} (`{Path(run['config']).name}`) | {run['epochs']} | {run['optimizer_steps']} | "
                    f"{_minutes(run['train_seconds'])} | {run['train_clips_per_s']:.1f} | "
                    f"{100 * run['best_val_top1']:.1f}% ({run['best_epoch']}) | {100 * run['final_val_top1']:.1f}% |")
    overrides = f" with `{' '.join('-o ' + o for o in record['overrides'])}`" if record.get("overrides") else ""
    return (f"Measured by `python -m benchmarks.multigrid --save`{overrides} on {record['date']} ({record['device']}, "
            f"torch {record['torch']}): multigrid trained {record['speedup']:.2f}x as fast as the plain schedule.\n\n"
            + "\n".join(rows) + "\n\nSource: `benchmarks/results/latest-multigrid.json`.")


BLOCKS: dict[str, tuple[str, Callable[[str], str]]] = {
    "demo": ("latest-demo.json", lambda text: demo_block(json.loads(text))),
    "smoke": ("latest-smoke.md", smoke_block),
    "multigrid": ("latest-multigrid.json", lambda text: multigrid_block(json.loads(text))),
}


def render(readme: str, results: Path = RESULTS) -> str:
    """``readme`` with every generated block rewritten from its file under ``results`` (a block whose file is
    missing is left as it is)."""
    for name, (filename, make) in BLOCKS.items():
        source = results / filename
        if not source.is_file():
            continue
        # the body may be empty (a block not generated yet)
        pattern = re.compile(rf"(<!-- generated:{name} -->\n)(.*?\n)?(<!-- /generated:{name} -->)", re.S)
        body = make(source.read_text(encoding="utf-8"))
        readme = pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(3), readme)
    return readme


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.readme", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check; exit 1 when README.md is out of date")
    args = parser.parse_args(argv)
    current = README.read_text(encoding="utf-8")
    updated = render(current)
    if args.check:
        if updated != current:
            print("README.md is out of date with benchmarks/results/; run `python -m benchmarks.readme`",
                  file=sys.stderr)
            return 1
        return 0
    if updated != current:
        write_text(README, updated)
        print("README.md: generated blocks rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
