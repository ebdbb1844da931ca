"""The benchmark suite's measuring and reporting, and a smoke run of the whole suite (no timing thresholds)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import timing
from benchmarks.report import Results
from benchmarks.timing import Measurement, measure, measure_iterable

ROOT = Path(__file__).resolve().parents[1]


class FakeClock:
    """perf_counter that advances by a scripted amount at each call."""

    def __init__(self, steps):
        self.now, self.steps = 0.0, list(steps)

    def __call__(self):
        value = self.now
        if self.steps:
            self.now += self.steps.pop(0)
        return value


def test_measure_excludes_warmup_and_computes_throughput(monkeypatch):
    calls = []
    # each window reads the clock twice: start (advance 2 s / 4 s ...), end
    monkeypatch.setattr(timing.time, "perf_counter", FakeClock([2.0, 0.0, 4.0, 0.0, 1.0, 0.0]))
    m = measure(lambda: calls.append(1), items_per_call=8, warmup=3, repeats=3, iters=5)
    assert len(calls) == 3 + 3 * 5
    # 8 items x 5 calls = 40 items per window, in 2 s, 4 s and 1 s
    assert m.values == [20.0, 10.0, 40.0]
    assert m.median == 20.0 and m.spread == (10.0, 40.0)
    assert m.seconds == [2.0, 4.0, 1.0]


def test_measure_iterable_restarts_exhausted_iterators_and_counts_items(monkeypatch):
    monkeypatch.setattr(timing.time, "perf_counter", FakeClock([1.0, 0.0, 1.0, 0.0]))
    made = []

    def make():
        made.append(1)
        return iter([[0] * 3, [0] * 3])  # an epoch of two batches of 3 items

    seen = []
    m = measure_iterable(make, len, warmup=1, repeats=2, iters=3, on_batch=seen.append)
    assert len(seen) == 1 + 2 * 3
    assert m.values == [9.0, 9.0]
    assert len(made) == 4  # 7 batches from epochs of 2


def test_results_ratios_against_group_baseline(tmp_path):
    results = Results("unit", {"date": "2026-01-01", "cpu_cores": 2})
    results.add("s", "g", "base", Measurement("clips/s", [10.0, 10.0, 12.0], 1), baseline=True)
    results.add("s", "g", "fast", Measurement("clips/s", [40.0, 30.0, 50.0], 1))
    results.add("s", "other", "alone", Measurement("clips/s", [5.0], 1))
    results.skip("s", "g", "gpu", "no CUDA GPU on this machine", "clips/s")
    ratio = {r.variant: r.ratio for r in results.rows}
    assert ratio["fast"] == pytest.approx(4.0)   # medians 40 / 10
    assert ratio["base"] == pytest.approx(1.0)
    assert ratio["alone"] is None and ratio["gpu"] is None
    paths = results.write(tmp_path, "unit")
    data = json.loads(paths["json"].read_text())
    assert [r["variant"] for r in data["rows"]] == ["base", "fast", "alone", "gpu"]
    assert "skipped: no CUDA GPU" in paths["markdown"].read_text()
    assert "4.00x" in paths["markdown"].read_text()


@pytest.mark.dali
def test_smoke_suite_runs_and_reports_sane_figures(tmp_path):
    """The whole smoke suite on this machine: every stage ran, every measured figure is positive."""
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--suite", "smoke", "--out", str(out), "--data", str(tmp_path / "d")],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "latest-smoke.json").read_text())
    rows = data["rows"]
    stages = {r["stage"] for r in rows if r["median"]}
    assert stages == {"1 loader", "2 model", "3 e2e", "4 multicrop"}, rows
    failed = [r for r in rows if r["skipped"] and r["skipped"].startswith("failed")]
    assert not failed, failed
    for row in rows:
        if row["median"] is not None:
            assert row["median"] > 0 and row["min"] > 0 and row["max"] >= row["median"] >= row["min"]
    assert data["environment"]["torch"]
    assert (out / "latest-smoke.md").is_file()
