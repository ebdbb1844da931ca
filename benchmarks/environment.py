"""The environment a benchmark ran in: GPU model and generation, driver, CUDA, cuDNN, torch, DALI, PyAV, CPU cores."""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import threading
import time
from typing import Optional

import torch


def _nvidia_smi(query: str) -> Optional[str]:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def environment() -> dict:
    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "driver": _nvidia_smi("driver_version"),
    }
    if torch.cuda.is_available():
        from pipelines.codecs import gpu_arch

        capability = tuple(torch.cuda.get_device_capability(0))
        env["gpu_capability"] = f"{capability[0]}.{capability[1]}"
        try:
            env["nvdec_arch"] = gpu_arch(capability)
        except ValueError:  # a generation newer than the NVDEC table
            env["nvdec_arch"] = None
    try:
        import nvidia.dali as dali

        env["dali"] = dali.__version__
    except ImportError as err:
        env["dali"] = f"unavailable ({err})"
    try:
        import av

        env["pyav"] = av.__version__
    except ImportError as err:
        env["pyav"] = f"unavailable ({err})"
    return env


class NvdecMonitor:
    """Samples NVDEC (decoder) utilisation with nvidia-smi while a block runs; None where unsupported.

    Usage::

        with NvdecMonitor() as mon:
            run()
        mon.mean  # percent, or None
    """

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.supported = torch.cuda.is_available() and _nvidia_smi("utilization.decoder") not in (None, "[N/A]")

    def _run(self) -> None:
        while not self._stop.is_set():
            value = _nvidia_smi("utilization.decoder")
            try:
                self.samples.append(float(value))
            except (TypeError, ValueError):
                pass
            time.sleep(self.interval)

    def __enter__(self) -> "NvdecMonitor":
        if self.supported:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)

    @property
    def mean(self) -> Optional[float]:
        return sum(self.samples) / len(self.samples) if self.samples else None
