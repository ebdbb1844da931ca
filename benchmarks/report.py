"""Results of one suite run: rows of figures, ratios against each group's baseline, JSON + Markdown + PNG."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from benchmarks.timing import Measurement
from utils.atomic import atomic_path, write_text


@dataclass
class Row:
    """One measured variant. Rows with the same ``stage`` and ``group`` are compared with the group's
    ``baseline`` row (the variant named ``baseline`` in :meth:`Results.add`)."""

    stage: str
    group: str
    variant: str
    unit: str
    median: Optional[float]
    spread: tuple[Optional[float], Optional[float]] = (None, None)
    extra: dict = field(default_factory=dict)
    is_baseline: bool = False
    ratio: Optional[float] = None
    skipped: Optional[str] = None
    measurement: Optional[dict] = None


class Results:
    def __init__(self, suite: str, env: dict) -> None:
        self.suite = suite
        self.env = env
        self.rows: list[Row] = []

    def add(self, stage: str, group: str, variant: str, measurement: Measurement, *, baseline: bool = False,
            **extra) -> Row:
        row = Row(stage, group, variant, measurement.unit, measurement.median, measurement.spread,
                  {**measurement.extra, **extra}, baseline, measurement=measurement.to_dict())
        self.rows.append(row)
        self._ratios()
        return row

    def skip(self, stage: str, group: str, variant: str, reason: str, unit: str = "") -> Row:
        row = Row(stage, group, variant, unit, None, skipped=reason)
        self.rows.append(row)
        return row

    def _ratios(self) -> None:
        baselines = {(r.stage, r.group): r for r in self.rows if r.is_baseline and r.median}
        for row in self.rows:
            base = baselines.get((row.stage, row.group))
            row.ratio = row.median / base.median if base and row.median else None

    def to_dict(self) -> dict:
        return {
            "suite": self.suite,
            "environment": self.env,
            "rows": [
                {"stage": r.stage, "group": r.group, "variant": r.variant, "unit": r.unit, "median": r.median,
                 "min": r.spread[0], "max": r.spread[1], "ratio_vs_baseline": r.ratio, "baseline": r.is_baseline,
                 "skipped": r.skipped, "extra": r.extra, "measurement": r.measurement}
                for r in self.rows
            ],
        }

    def markdown(self) -> str:
        env = self.env
        device = env.get("gpu") or f"CPU ({env.get('cpu_cores')} cores)"
        lines = [
            f"# Benchmark results: suite `{self.suite}`, {env.get('date', '')}",
            "",
            f"Device: {device}; torch {env.get('torch')}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, "
            f"DALI {env.get('dali')}, PyAV {env.get('pyav')}, driver {env.get('driver')}, "
            f"{env.get('cpu_cores')} CPU cores.",
            "",
            "Medians over repeated windows (warm-up excluded); spread = min-max over the windows; ratio = median / the "
            "group's baseline median."
            + (" Contenders compared with peers run their windows interleaved, in rounds; other_load = cores' worth "
               "of CPU that other processes took while the group ran (a figure beside other work is suspect)."
               if any("other_load" in r.extra for r in self.rows) else ""),
            "",
            "| stage | group | variant | median | spread | unit | ratio | notes |",
            "| --- | --- | --- | ---: | --- | --- | ---: | --- |",
        ]
        for r in self.rows:
            if r.skipped:
                lines.append(f"| {r.stage} | {r.group} | {r.variant} | - | - | {r.unit} | - | skipped: {r.skipped} |")
                continue
            notes = ", ".join(f"{k}={_fmt(v)}" for k, v in r.extra.items())
            base = " (baseline)" if r.is_baseline else ""
            lines.append(
                f"| {r.stage} | {r.group} | {r.variant}{base} | {_fmt(r.median)} "
                f"| {_fmt(r.spread[0])}-{_fmt(r.spread[1])} "
                f"| {r.unit} | {_fmt(r.ratio, 2) + 'x' if r.ratio else '-'} | {notes} |")
        return "\n".join(lines) + "\n"

    def chart(self, path: Path) -> Optional[Path]:
        """A bar chart of every non-baseline ratio; None when matplotlib is missing or nothing to plot."""
        points = [(f"{r.stage}: {r.group}\n{r.variant}", r.ratio) for r in self.rows
                  if r.ratio and not r.is_baseline]
        if not points:
            return None
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return None
        height = max(3.0, 0.45 * len(points) + 1.5)
        fig, ax = plt.subplots(figsize=(10, height))
        labels, ratios = zip(*points)
        bars = ax.barh(range(len(points)), ratios, color=["#2a7" if v >= 1 else "#c44" for v in ratios])
        ax.set_yticks(range(len(points)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("speed-up vs the group's baseline (log scale)")
        device = self.env.get("gpu") or f"CPU, {self.env.get('cpu_cores')} cores"
        ax.set_title(f"SlowFast benchmark ({self.suite}), {device}, {self.env.get('date', '')}")
        for bar, value in zip(bars, ratios):
            ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {value:.2f}x", va="center", fontsize=7)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)
        return path

    def write(self, directory: Path, stem: str) -> dict[str, Path]:
        directory.mkdir(parents=True, exist_ok=True)
        paths = {"json": directory / f"{stem}.json", "markdown": directory / f"{stem}.md"}
        _atomic_write(paths["json"], json.dumps(self.to_dict(), indent=2, default=_json_default))
        _atomic_write(paths["markdown"], self.markdown())
        chart = self.chart(directory / f"{stem}.png")
        if chart:
            paths["chart"] = chart
        return paths


def _json_default(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)


def _atomic_write(path: Path, text: str) -> None:
    write_text(path, text)


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 100 or digits == 0:
            return f"{value:,.0f}"
        return f"{value:.{max(digits, 2) if abs(value) < 10 else digits}f}"
    return str(value)
