"""The benchmark suite's measuring and reporting, and a smoke run of the whole suite (no timing thresholds)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

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
    # Kinetics geometry (VP9, GOP 16 and 250): the project's CPU loaders and the peers, per core and all cores;
    # the sweep of clip starts and the 10x3 test path on the GOPs the suite names
    sets = bench.SUITES["smoke"].kinetics
    assert set(sets.gops) == {16, 250} and sets.start_gops and sets.test_gops
    for gop in sets.gops:
        kinetics = [r for r in rows if f"-gop{gop} " in r["group"]]
        ours = [r for r in kinetics if r["variant"] == "this project: PyAV loader" and "train" in r["group"]]
        assert len(ours) == 2 and all(r["median"] and r["extra"]["decoded_frames_per_clip"] > 0 for r in ours)
        peers = [r for r in kinetics if r["variant"] in ("decord get_batch (MMAction2)", "PyAV as PySlowFast",
                                                        "torchcodec")]
        assert all(r["median"] or r["skipped"] for r in peers) and any(r["median"] for r in peers)
        for row in ours:  # every contender of a group timed in the same number of windows
            group = [r for r in kinetics if r["group"] == row["group"] and r["median"]]
            assert {r["measurement"]["repeats"] for r in group} == {sets.rounds}, group
        by_start = {r["variant"] for r in kinetics if "by start frame" in r["group"]}
        assert {"this project: PyAV loader", "PyAV as PySlowFast"} <= by_start if gop in sets.start_gops \
            else not by_start
        tested = any(r["variant"] == "this project: PyAV loader (decode once)" and r["median"] for r in kinetics)
        assert tested == (gop in sets.test_gops)


# ---------------------------------------------------------------------------------------------------------
# the plan: even sizes, NVDEC-decodable data, per-dataset failures, where results go

from benchmarks import run as bench  # noqa: E402
from pipelines.codecs import why_not_decodable  # noqa: E402


def test_every_planned_size_is_even_and_odd_sizes_are_refused():
    for suite in bench.SUITES.values():
        for name, spec in suite.videos.items():
            assert spec["width"] % 2 == 0 and spec["height"] % 2 == 0, (suite.name, name)
    with pytest.raises(ValueError, match="'k400-455x256' is 455x256; 4:2:0 video needs an even width and height"):
        bench.Suite(**{**bench.SUITES["full"].__dict__, "videos": {"k400-455x256": bench._kinetics(455, 16)},
                       "loader_sets": ("k400-455x256",), "e2e_set": None})


@pytest.mark.parametrize("suite", sorted(bench.SUITES))
@pytest.mark.parametrize("arch", ["hopper", "ga100"])
def test_planned_datasets_decode_on_nvdec(suite, arch):
    # NVIDIA's NVDEC tables (see tests/test_codecs.py): H.264 High 4:2:0 8-bit from 48x16, VP9 Profile 0 from
    # 128x128, both on Hopper (H100/H200) and on the A100 (GA100)
    for row in bench.plan(bench.SUITES[suite]):
        assert why_not_decodable(row, "gpu", arch) is None, row


def test_smoke_data_also_decodes_on_dalis_cpu_decoder():
    for row in bench.plan(bench.SUITES["smoke"]):
        assert row["codec"] == "vp9" and why_not_decodable(row, "cpu") is None


def test_dry_run_lists_the_plan_and_runs_nothing(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--suite", "full", "--dry-run",
                           "--data", str(tmp_path / "d"), "--out", str(tmp_path / "r")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    for name, spec in bench.SUITES["full"].videos.items():
        row = next(line for line in lines if line.startswith(f"| {name} |"))
        gop, size = spec["keyframe_interval"], f"{spec['width']}x{spec['height']}"
        assert f"| h264 | High | yuv420p | {size} | {gop} |" in row and row.endswith("| ok | ok |"), row
    assert "| k400-340x256-gop250 | h264 | High | yuv420p | 340x256 | 250 | 300 | 40 | 8,16,32 |" in proc.stdout
    assert "DALI GPU fn.readers.video" in proc.stdout
    assert not (tmp_path / "d").exists() and not (tmp_path / "r").exists()


def test_results_go_to_scratch_unless_saved(monkeypatch):
    seen = []
    monkeypatch.setattr(bench, "run", lambda suite, out, data, only: seen.append(out) or {})
    bench.main(["--suite", "smoke"])
    bench.main(["--suite", "smoke", "--save"])
    assert seen == [bench.SCRATCH_DIR / "smoke", bench.RESULTS_DIR]
    assert bench.SCRATCH_DIR != bench.RESULTS_DIR


@pytest.mark.dali
def test_a_failing_dataset_is_reported_and_the_others_still_run(tmp_path, monkeypatch):
    import pipelines.synthetic as synthetic

    generate = synthetic.generate_dataset

    def generate_or_fail(out_dir, **kwargs):
        if "broken" in str(out_dir):
            raise RuntimeError("encoder exploded")
        return generate(out_dir, **kwargs)

    monkeypatch.setattr(synthetic, "generate_dataset", generate_or_fail)
    small = dict(mode="motion", width=64, height=48, fps=30, num_frames=24, codec="vp9", keyframe_interval=8,
                 num_train_per_class=1, num_val_per_class=1)
    suite = bench.Suite(**{**bench.SUITES["smoke"].__dict__, "name": "unit",
                           "videos": {"broken-64x48": small, "good-64x48": small},
                           "loader_sets": ("broken-64x48", "good-64x48"), "scaling_batches": (2,),
                           "warmup": 1, "repeats": 1, "iters": 1, "kinetics": None})
    bench.run(suite, tmp_path / "out", tmp_path / "data", only={"loader"})
    rows = json.loads((tmp_path / "out" / "latest-unit.json").read_text())["rows"]
    data = [r for r in rows if r["stage"] == "0 data"]
    assert data == [dict(data[0], group="broken-64x48", variant="generate",
                         skipped="failed: RuntimeError: encoder exploded")]
    broken = [r for r in rows if r["stage"] == "1 loader" and r["group"].startswith("broken")]
    assert broken and all(r["skipped"] == "dataset failed: RuntimeError: encoder exploded" for r in broken)
    good = {r["variant"]: r for r in rows if r["stage"] == "1 loader" and r["group"] == "good-64x48 b2"}
    assert good["PyAV + DataLoader"]["median"] > 0 and good["DALI CPU"]["median"] > 0
    if not torch.cuda.is_available():
        assert good["DALI GPU"]["skipped"] == good["DALI GPU fn.readers.video"]["skipped"] == \
            "no CUDA GPU on this machine"


def test_gpu_check_without_cuda_says_it_needs_one():
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("gpu-check needs a CUDA GPU: torch ")
    assert not list((ROOT / "benchmarks" / "results").glob("gpu-check-summary-*"))


def test_gpu_check_summary_names_the_device_and_every_step(tmp_path, monkeypatch, capsys):
    from benchmarks import gpu_check

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    steps = [gpu_check.StepResult("preflight", "pass", 3.0, "NVIDIA H200 (compute 9.0)"),
             gpu_check.StepResult("gpu-tests", "fail", 80.0, "exit 1: 1 failed, 20 passed"),
             gpu_check.StepResult("demo", "skipped", 0.0, "--skip"),
             gpu_check.StepResult("benchmark", "pass", 150.0, "wrote ...")]
    monkeypatch.setattr(gpu_check, "run_steps", lambda skip, out, data: steps)
    assert gpu_check.main(["--out", str(tmp_path)]) == 1
    text = capsys.readouterr().out
    assert text.startswith("gpu-check on NVIDIA H200: FAIL\n")
    assert "FAIL    gpu-tests" in text and "SKIPPED demo" in text and "PASS    benchmark" in text
    (summary,) = tmp_path.glob("gpu-check-summary-*-NVIDIA-H200.json")
    data = json.loads(summary.read_text())
    assert data["device"] == "NVIDIA H200" and data["passed"] is False
    assert [s["status"] for s in data["steps"]] == ["pass", "fail", "skipped", "pass"]
    assert sum(gpu_check.BUDGET_S.values()) < 600


def test_peers_deliver_the_planned_frames_and_crop(numbered_video):
    """The peers do the project's work: the planned frames (numbers drawn in the pixels), resized, cropped."""
    from benchmarks.peers import PeerLoader, TRAIN_PEERS, peer_status
    from pipelines.sampling import SpatialParams
    from pipelines.video_io import frame_number

    path = numbered_video("vp9", num_frames=50)
    clip = np.arange(21, 37, 2)
    params = SpatialParams(48, 64, 0, 8, 48)
    status = peer_status()
    ran = 0
    for label, (module, fn) in TRAIN_PEERS.items():
        if module and status.get(module):
            continue
        # in a DataLoader worker, as the suite runs it (decord's FFmpeg stays out of this process)
        (batch,) = list(PeerLoader([(str(path), None)], _PeerClip(fn, clip, params), 1, 1))
        assert batch.shape == (1, 3, len(clip), 48, 48), label
        out = batch[0]
        pixels = ((out.permute(1, 2, 3, 0).numpy() * 0.225 + 0.45) * 255).round().clip(0, 255).astype(np.uint8)
        assert [frame_number(f) for f in pixels] == clip.tolist(), label
        ran += 1
    assert ran >= 1  # PyAV as PySlowFast needs nothing optional


class _PeerClip:
    """A picklable ``(path, plan) -> clip`` for the DataLoader worker."""

    def __init__(self, fn, clip, params):
        self.fn, self.clip, self.params = fn, clip, params

    def __call__(self, path, _plan):
        return self.fn(path, self.clip, self.params, (0.45,) * 3, (0.225,) * 3)


# ---------------------------------------------------------------------------------------------------------
# the Kinetics windows: warm-up per worker, clock from the mean arrivals, trailing batches abandoned


def test_window_batches_are_whole_rounds_over_the_workers():
    assert bench.window_batches(1, 1) == (1, 1, 0)   # one worker: nothing trailing
    assert bench.window_batches(2, 1) == (2, 2, 2)   # a batch per worker warm-up, timed, trailing
    assert bench.window_batches(2, 3) == (2, 4, 2)   # timed rounded up to whole rounds
    assert bench.window_batches(0, 2) == (1, 2, 0)   # in this process: one lane


class _Epoch:
    """An epoch of numbered batches whose arrival times are scripted (the clock reads them)."""

    def __init__(self, clock, arrivals):
        self.clock, self.arrivals, self.given, self.closed = clock, list(arrivals), 0, False

    def __iter__(self):
        try:
            for i, t in enumerate(self.arrivals):
                self.clock.now = t
                self.given = i + 1
                yield [0] * 2
        finally:
            self.closed = True


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_window_times_each_worker_from_its_warmup_batch(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(bench.time, "perf_counter", clock)
    # 2 workers: warm-up batches at 1.0 and 3.0 (the second worker started late), timed ones at 4.0 and 5.0,
    # then a trailing round that must not be waited for
    epoch = _Epoch(clock, [1.0, 3.0, 4.0, 5.0, 9.0, 9.5])
    rate, seconds = bench._window(lambda: epoch, len, 2, 2, 2)
    assert seconds == pytest.approx(2.5)            # mean(4, 5) - mean(1, 3): each worker's own 3 s and 2 s
    assert rate == pytest.approx(4 / 2.5)           # the timed batches' items only
    assert epoch.given == 4 and epoch.closed        # the trailing round abandoned, the iterator closed
    # one worker, nothing trailing: the epoch is run to its end (a DALI loader keeps its pipeline)
    epoch = _Epoch(clock, [2.0, 2.5, 3.5])
    rate, seconds = bench._window(lambda: epoch, len, 1, 2, 0)
    assert seconds == pytest.approx(1.5) and rate == pytest.approx(4 / 1.5) and epoch.given == 3


def test_rounds_rotate_the_order_and_report_failures(monkeypatch):
    order = []

    def window(make_iter, items_of, *batches):
        order.append(make_iter())
        if order[-1] == "c":
            raise RuntimeError("no decoder")
        return 2.0, 1.0

    monkeypatch.setattr(bench, "_window", window)
    figures = bench._rounds({"a": lambda: "a", "b": lambda: "b", "c": lambda: "c"}, 3, (1, 1, 0), len, "clips/s")
    assert order == ["a", "b", "c", "b", "a", "a", "b"]   # rotated: a b c | b (c failed) a | (c) a b
    assert figures["a"].values == [2.0] * 3 and figures["a"].seconds == [1.0] * 3
    assert figures["c"] == "failed: RuntimeError: no decoder"


def test_forked_children_do_not_finalize_what_they_inherit(tmp_path):
    """The suite's fork guard: a child's garbage collection leaves the parent's garbage alone (a DALI pipeline
    finalized in a DataLoader worker hung the suite)."""
    import gc
    import os

    bench._guard_forks()
    marks = tmp_path / "finalized"

    class Cycle:
        def __del__(self):
            with open(marks, "a") as f:
                f.write(f"{os.getpid()}\n")

    gc.disable()
    try:
        a, b = Cycle(), Cycle()
        a.other, b.other = b, a
        del a, b                         # cyclic garbage, not yet collected
        pid = os.fork()
        if pid == 0:                     # the child collects: nothing it inherited may be finalized
            gc.collect()
            os._exit(0)
        os.waitpid(pid, 0)
    finally:
        gc.enable()
    gc.collect()                         # the parent's own collection finalizes them, here
    pids = marks.read_text().split()
    assert pids and set(pids) == {str(os.getpid())}


def test_decoder_threads_share_the_cores_among_workers(monkeypatch):
    import pipelines.pyav_loader as pyav_loader
    import utils.cpus

    monkeypatch.setattr(utils.cpus, "available_cores", lambda: 8)
    monkeypatch.setattr(utils.cpus, "cores_per_rank", lambda: 8)
    info = []
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: info[0] if info else None)
    assert pyav_loader._decoder_threads() == 0          # the main process: FFmpeg's own choice
    for workers, threads in ((1, 0), (2, 4), (8, 1), (16, 1)):
        info[:] = [type("Info", (), {"num_workers": workers})()]
        assert pyav_loader._decoder_threads() == threads, workers
    monkeypatch.setattr(utils.cpus, "cores_per_rank", lambda: 2)  # 4 ranks on the node
    info[:] = [type("Info", (), {"num_workers": 1})()]
    assert pyav_loader._decoder_threads() == 2
    monkeypatch.setattr(pyav_loader, "DECODER_THREADS", 1)
    assert pyav_loader._decoder_threads() == 1


def test_cpu_model_rows_decide_the_memory_format(monkeypatch):
    from benchmarks import model_step
    from benchmarks.timing import Measurement

    speeds = {"fp32 NCDHW eager": 10.0, "fp32 channels-last": 9.0}
    seen = []

    def fake_step(model_name, variant, batch, device, **kwargs):
        seen.append((model_name, variant.name, batch, device.type))
        return Measurement("clips/s", [speeds[variant.name]] * 3, 1.0)

    monkeypatch.setattr(model_step, "measure_step", fake_step)
    suite = bench.Suite(**{**bench.SUITES["smoke"].__dict__, "name": "unit", "models": (),
                           "cpu_models": (("slowfast_r50_4x16", 1),)})
    results = Results("unit", {})
    bench.stage_model(suite, results)
    assert seen == [("slowfast_r50_4x16", "fp32 NCDHW eager", 1, "cpu"),
                    ("slowfast_r50_4x16", "fp32 channels-last", 1, "cpu")]
    row = next(r for r in results.rows if r.variant == "fp32 channels-last")
    assert row.group == "slowfast_r50_4x16 b1 cpu"
    assert row.extra["memory_format"].startswith("cpu: channels-last is 0.90x NCDHW here -> NCDHW for cpu")
    assert bench.SUITES["full"].cpu_models and not bench.SUITES["smoke"].cpu_models
