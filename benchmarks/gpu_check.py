"""``make gpu-check``: the GPU path, end to end, in under ten minutes on one CUDA GPU.

    python -m benchmarks.gpu_check                 # what `make gpu-check` runs
    python -m benchmarks.gpu_check --skip demo     # leave steps out (preflight, tests, demo, benchmark)

Steps, each with its own time limit (together under 10 minutes), each reported pass / fail / skipped:

1. preflight: :func:`pipelines.preflight.preflight_gpu_environment` (DALI with CUDA, the driver's
   ``libnvcuvid.so.1``, one small H.264 video decoded on the GPU and compared with PyAV) and the NVDEC table
   against every dataset the ``gpu-check`` benchmark plans.
2. gpu tests: ``pytest -m gpu`` (the tests that skip without CUDA).
3. demo: ``python -m engine.demo --retrain`` (DALI on the GPU, bf16; trains and tests ``slowfast_tiny``).
4. benchmark: ``python -m benchmarks.run --suite gpu-check`` (340x256 H.264, GOP 16 and 250, R50 4x16 at
   224, bf16 channels-last vs the PyAV + fp32 baseline), results in ``benchmarks/results/``.

Writes ``benchmarks/results/gpu-check-summary-<date>-<device>.{json,md}`` and prints a one-screen summary
with the device name. Exit status 0 when every step that ran passed, 1 otherwise, 2 without a CUDA GPU.
"""
from __future__ import annotations

import argparse
import datetime
import json
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "benchmarks" / "results"
# seconds per step; the sum stays under the 10 minutes the check promises
BUDGET_S = {"preflight": 60, "gpu-tests": 200, "demo": 150, "benchmark": 180}
STEPS = tuple(BUDGET_S)


@dataclass
class StepResult:
    name: str
    status: str          # pass | fail | skipped
    seconds: float
    detail: str


def _tail(text: str, lines: int = 3) -> str:
    kept = [line for line in (text or "").strip().splitlines() if line.strip()]
    return " | ".join(kept[-lines:])[-400:]


def _subprocess_step(name: str, argv: list[str]) -> StepResult:
    start = time.perf_counter()
    try:
        proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=BUDGET_S[name])
    except subprocess.TimeoutExpired as err:
        out = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        return StepResult(name, "fail", time.perf_counter() - start,
                          f"over its {BUDGET_S[name]} s limit; last output: {_tail(out)}")
    status = "pass" if proc.returncode == 0 else "fail"
    detail = _tail(proc.stdout) if status == "pass" else f"exit {proc.returncode}: {_tail(proc.stderr or proc.stdout)}"
    return StepResult(name, status, time.perf_counter() - start, detail)


def _preflight() -> StepResult:
    from benchmarks.run import SUITES, dataset_format
    from pipelines.preflight import PreflightError, preflight_gpu_data, preflight_gpu_environment

    start = time.perf_counter()
    try:
        info = preflight_gpu_environment()
        planned = [{"path": name, **dataset_format(spec)} for name, spec in SUITES["gpu-check"].videos.items()]
        preflight_gpu_data(planned, "data/benchmarks", "the gpu-check suite's datasets", info["arch"])
    except PreflightError as err:
        return StepResult("preflight", "fail", time.perf_counter() - start, str(err))
    return StepResult("preflight", "pass", time.perf_counter() - start,
                      f"{info['device']} (compute {info['capability'][0]}.{info['capability'][1]}, NVDEC table: "
                      f"{info['arch']}), DALI {info['dali']}, libnvcuvid loaded, H.264 test video decoded")


def run_steps(skip: set[str], out_dir: Path, data_dir: Path) -> list[StepResult]:
    py = sys.executable
    actions: dict[str, Callable[[], StepResult]] = {
        "preflight": _preflight,
        "gpu-tests": lambda: _subprocess_step("gpu-tests", [py, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"]),
        "demo": lambda: _subprocess_step("demo", [py, "-m", "engine.demo", "--retrain"]),
        "benchmark": lambda: _subprocess_step("benchmark", [py, "-m", "benchmarks.run", "--suite", "gpu-check",
                                                            "--out", str(out_dir), "--data", str(data_dir)]),
    }
    results = []
    for name in STEPS:
        if name in skip:
            results.append(StepResult(name, "skipped", 0.0, "--skip"))
            continue
        print(f"gpu-check: {name} (limit {BUDGET_S[name]} s) ...", file=sys.stderr, flush=True)
        results.append(actions[name]())
    return results


def summary(device: str, steps: list[StepResult]) -> str:
    ok = all(s.status != "fail" for s in steps)
    lines = [f"gpu-check on {device}: {'PASS' if ok else 'FAIL'}", ""]
    for s in steps:
        lines.append(f"  {s.status.upper():7s} {s.name:10s} {s.seconds:6.1f} s  {s.detail}")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip", default="", help=f"comma-separated steps to leave out, among {list(STEPS)}")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="where the summary and benchmark results go")
    parser.add_argument("--data", type=Path, default=Path("data/benchmarks"), help="generated videos (reused)")
    args = parser.parse_args(argv)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if not skip <= set(STEPS):
        parser.error(f"--skip {args.skip!r}: unknown step(s) {sorted(skip - set(STEPS))}; choose from {list(STEPS)}")

    import torch

    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        print(f"gpu-check needs a CUDA GPU: torch {torch.__version__} ({build}) sees none. Run it on a machine "
              f"with an NVIDIA GPU and driver (`nvidia-smi` lists it); CPU checks: `make test`.", file=sys.stderr)
        return 2
    device = torch.cuda.get_device_name(0)
    started = time.perf_counter()
    steps = run_steps(skip, args.out, args.data)
    text = summary(device, steps)
    date = datetime.date.today().isoformat()
    stem = f"gpu-check-summary-{date}-{re.sub(r'[^A-Za-z0-9_.-]+', '-', device)}"
    from utils.atomic import write_text

    args.out.mkdir(parents=True, exist_ok=True)
    write_text(args.out / f"{stem}.json", json.dumps(
        {"device": device, "date": date, "seconds": round(time.perf_counter() - started, 1),
         "passed": all(s.status != "fail" for s in steps), "steps": [asdict(s) for s in steps]}, indent=2) + "\n")
    write_text(args.out / f"{stem}.md", f"# {date}\n\n```\n{text}```\n")
    print(text, end="")
    print(f"wrote {args.out / (stem + '.json')}, {args.out / (stem + '.md')}")
    return 0 if all(s.status != "fail" for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
