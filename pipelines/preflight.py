"""Before a GPU run: is this machine able to decode on NVDEC, and can NVDEC decode these videos?

Two checks, each failing with ONE :class:`PreflightError` (a :class:`utils.errors.UserError`: printed as
``error: ...``, exit status 2) that names what is wrong and the command that fixes it:

- :func:`preflight_gpu_environment`: a CUDA GPU torch can see; DALI importable, built for the same CUDA
  major version as torch, and seeing the GPU; the driver's NVDEC library ``libnvcuvid.so.1`` loadable
  (in containers it is mounted only with ``NVIDIA_DRIVER_CAPABILITIES`` including ``video``); optionally one
  small generated H.264 video decoded on the GPU and compared with PyAV's decode of the same file.
- :func:`preflight_gpu_data`: every indexed video (codec, H.264 profile, bit depth, chroma, size) against
  the NVDEC capability table of :mod:`pipelines.codecs` for this GPU's generation.

Train, test, the demo and the benchmarks call both before they build a GPU loader::

    info = preflight_gpu_environment()                   # once per process, before building DALI pipelines
    preflight_gpu_data(records, root, list_path, info["arch"])
"""
from __future__ import annotations

import ctypes
import shlex
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable, Optional, Union

from pipelines.codecs import ARCH_NAMES, gpu_arch, why_not_decodable
from utils.errors import UserError

NVCUVID = "libnvcuvid.so.1"
# how many paths an error message lists per reason
SHOWN_PATHS = 3


class PreflightError(UserError, RuntimeError):
    """This machine or these videos cannot run the GPU path; the message says why and how to fix it."""


def _torch_cuda_error() -> Optional[str]:
    import torch

    if not torch.cuda.is_available():
        build = f"torch {torch.__version__} (CUDA {torch.version.cuda})" if torch.version.cuda else \
            f"torch {torch.__version__}, a CPU-only build"
        return (f"no CUDA GPU is visible to {build}; run on a machine with an NVIDIA GPU and driver (check "
                f"`nvidia-smi` and CUDA_VISIBLE_DEVICES), or use data.device=cpu")
    return None


def dali_error(torch_cuda: Optional[str] = None) -> Optional[str]:
    """Why DALI cannot run on the GPU here (not installed, built for another CUDA major than torch, sees no
    GPU), or None."""
    try:
        import nvidia.dali as dali
        import nvidia.dali.backend as backend
    except ImportError as err:
        return (f"NVIDIA DALI cannot be imported ({err}); install the wheel matching torch's CUDA: "
                f"`make install` picks it, or `pip install {dali_package_for(torch_cuda)}`")
    built = getattr(dali, "__cuda_version__", None)  # e.g. 12090 for CUDA 12.9
    if built and torch_cuda:
        dali_major, torch_major = int(built) // 1000, int(str(torch_cuda).split(".")[0])
        if dali_major != torch_major:
            return (f"DALI {dali.__version__} is built for CUDA {dali_major} but torch for CUDA {torch_cuda}; "
                    f"install the matching wheel: `pip uninstall -y nvidia-dali-cuda{dali_major}0 && "
                    f"pip install {dali_package_for(torch_cuda)}` (or `make clean-venv install`)")
    try:
        count = backend.GetCUDADeviceCount()
    except Exception as err:  # noqa: BLE001 - DALI raises its own error types when the driver is missing
        return f"DALI {dali.__version__} cannot use CUDA ({type(err).__name__}: {err}); check the NVIDIA driver"
    if count < 1:
        return f"DALI {dali.__version__} sees no CUDA device; check the NVIDIA driver and CUDA_VISIBLE_DEVICES"
    return None


def dali_package_for(torch_cuda: Optional[str]) -> str:
    """The DALI wheel for torch's CUDA version: ``"13.0"`` -> ``nvidia-dali-cuda130``; CUDA 12 and CPU-only
    torch -> ``nvidia-dali-cuda120`` (DALI publishes one wheel per CUDA major version)."""
    major = int(str(torch_cuda).split(".")[0]) if torch_cuda else 12
    return f"nvidia-dali-cuda{max(major, 12)}0"


def nvdec_library_error() -> Optional[str]:
    """Why the driver's NVDEC library cannot be loaded, or None."""
    try:
        ctypes.CDLL(NVCUVID)
    except OSError as err:
        return (f"the NVIDIA driver's NVDEC library {NVCUVID} cannot be loaded ({err}); install the full "
                f"driver (it ships with it), and in a container start it with "
                f"NVIDIA_DRIVER_CAPABILITIES=compute,utility,video (without 'video' the NVIDIA container "
                f"toolkit does not mount {NVCUVID})")
    return None


def decode_check_error(device_id: int = 0, workdir: Optional[Union[str, Path]] = None) -> Optional[str]:
    """Decode one small generated H.264 video (High profile, 4:2:0 8-bit, 160x128, 24 frames) with
    ``fn.decoders.video(device="mixed")`` and compare it with PyAV's decode; why it failed, or None."""
    import numpy as np
    from nvidia.dali import fn, pipeline_def

    from pipelines.pyav_loader import decode_frames
    from pipelines.video_io import numbered_frames, write_video

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = write_video(Path(tmp) / "preflight.mp4", numbered_frames(24, 128, 160), fps=30, codec="h264",
                           keyframe_interval=8, lossless=True)

        @pipeline_def(batch_size=1, num_threads=1, device_id=device_id, prefetch_queue_depth=1)
        def decode_all():
            encoded = fn.external_source(name="encoded", device="cpu")
            return fn.decoders.video(encoded, device="mixed")

        try:
            pipe = decode_all()
            pipe.build()
            (out,) = pipe.run(encoded=[np.fromfile(path, dtype=np.uint8)])
            frames = np.array(out.as_cpu()[0])
        except Exception as err:  # noqa: BLE001 - any DALI failure here is the answer
            return f"DALI could not decode a small H.264 test video on GPU {device_id} ({type(err).__name__}: {err})"
        reference = decode_frames(path, range(24))
    if frames.shape != reference.shape:
        return (f"DALI decoded the H.264 test video to shape {frames.shape}, PyAV to {reference.shape}; "
                f"the GPU decoder is not working")
    diff = float(np.abs(frames.astype(np.float32) - reference.astype(np.float32)).mean())
    # consecutive test frames differ by 4 grey levels: a mean difference under 2.5 means the right frames
    if diff >= 2.5:
        return (f"DALI's GPU decode of the H.264 test video differs from PyAV's by {diff:.1f} grey levels on "
                f"average (expected < 2.5); the GPU decoder is returning wrong frames")
    return None


def preflight_gpu_environment(device_id: Optional[int] = None, decode_check: bool = True) -> dict[str, Any]:
    """Check that this machine can run the GPU path (see the module docstring).

    Args:
        device_id: the CUDA device to check (default: the current device).
        decode_check: also decode one small generated H.264 video on the GPU (a few seconds).

    Returns:
        ``{"device": name, "capability": (major, minor), "arch": generation key, "dali": version}``.

    Raises:
        PreflightError: every problem found, in one message.
    """
    import torch

    problem = _torch_cuda_error()
    if problem:
        raise PreflightError(f"GPU preflight: {problem}")
    device_id = torch.cuda.current_device() if device_id is None else int(device_id)
    capability = tuple(torch.cuda.get_device_capability(device_id))
    name = torch.cuda.get_device_name(device_id)
    problems = [p for p in (dali_error(torch.version.cuda), nvdec_library_error()) if p]
    if not problems and decode_check:
        problem = decode_check_error(device_id)
        if problem:
            problems.append(problem)
    if problems:
        raise PreflightError(f"GPU preflight on {name} (GPU {device_id}): " + "; ".join(problems))
    import nvidia.dali as dali

    return {"device": name, "capability": capability, "arch": gpu_arch(capability), "dali": dali.__version__}


def preflight_run(cfg: Any, device_id: Optional[int] = None, decode_check: bool = True) -> Optional[dict[str, Any]]:
    """The environment preflight of a train or test run, when it decodes on the GPU; None otherwise.

    A run decodes on the GPU when ``data.backend == "dali"`` and ``data.device == "gpu"`` and torch sees CUDA
    (without CUDA, building the loader says so and names the alternatives).

    Args:
        cfg: the resolved configuration.
        device_id: this rank's CUDA device.
        decode_check: also decode a small generated video (do it on one rank per node: a few seconds).
    """
    import torch

    if str(cfg.data.backend) != "dali" or str(cfg.data.device) != "gpu" or not torch.cuda.is_available():
        return None
    return preflight_gpu_environment(device_id, decode_check=decode_check)


def current_arch(device_id: Optional[int] = None) -> str:
    """The NVDEC generation of the current (or given) CUDA device; PreflightError without one."""
    import torch

    problem = _torch_cuda_error()
    if problem:
        raise PreflightError(f"GPU preflight: {problem}")
    device_id = torch.cuda.current_device() if device_id is None else int(device_id)
    return gpu_arch(tuple(torch.cuda.get_device_capability(device_id)))


def undecodable(records: Iterable[Any], placement: str, arch: Optional[str]) -> "OrderedDict[str, list[str]]":
    """reason -> paths of the videos DALI cannot decode in ``placement`` (first-seen order)."""
    found: OrderedDict[str, list[str]] = OrderedDict()
    for record in records:
        reason = why_not_decodable(record, placement, arch)
        if reason:
            path = record.get("path") if isinstance(record, dict) else getattr(record, "path", "?")
            found.setdefault(reason, []).append(str(path))
    return found


def transcode_command(root: Union[str, Path], list_path: Union[str, Path], codec: str = "h264",
                      out_root: Optional[Union[str, Path]] = None) -> str:
    """The ``python -m pipelines.prepare`` command that re-encodes a list into ``codec`` (in a new root)."""
    root = Path(root)
    out_root = Path(out_root) if out_root else root.with_name(f"{root.name}_{codec}")
    args = ["python", "-m", "pipelines.prepare", "--root", str(root), "--list", str(list_path),
            "--transcode-to", str(out_root), "--codec", codec]
    return " ".join(shlex.quote(a) for a in args)


def preflight_data(records: Iterable[Any], root: Union[str, Path], list_path: Union[str, Path], placement: str,
                   arch: Optional[Union[str, tuple[int, int]]] = None) -> None:
    """Check that DALI in ``placement`` (``cpu`` or ``gpu``) decodes every record; one PreflightError naming
    the videos (count and first few paths per reason), the reasons and the transcoding command otherwise.

    Args:
        records: :class:`pipelines.dataset.VideoRecord` objects (or probe dicts with ``path``).
        root: the data root the paths are relative to (for the fix command).
        list_path: the list the records come from (for the message and the fix command).
        placement: ``gpu`` (NVDEC) or ``cpu`` (DALI's CPU decoder).
        arch: the GPU generation for ``gpu`` (default: the current CUDA device's).
    """
    records = list(records)
    if placement == "gpu":
        arch = gpu_arch(arch) if arch is not None else current_arch()
    found = undecodable(records, placement, arch)
    if not found:
        return
    count = sum(len(paths) for paths in found.values())
    where = f"NVDEC on {ARCH_NAMES[arch]}" if placement == "gpu" else "DALI's CPU decoder"
    details = []
    for reason, paths in found.items():
        shown = ", ".join(repr(p) for p in paths[:SHOWN_PATHS]) + (", ..." if len(paths) > SHOWN_PATHS else "")
        details.append(f"{len(paths)} x {reason} (e.g. {shown})")
    codec = "h264" if placement == "gpu" else "vp9"
    target = "8-bit 4:2:0 H.264 (High profile) with short side 256" if placement == "gpu" else \
        "VP9 with short side 256"
    raise PreflightError(
        f"{count} of {len(records)} videos in {str(list_path)!r} cannot be decoded by {where}: "
        f"{'; '.join(details)}. Transcode them to {target}: `{transcode_command(root, list_path, codec)}`, "
        f"then point data.root and the lists at the new root")


def preflight_gpu_data(records: Iterable[Any], root: Union[str, Path], list_path: Union[str, Path],
                       arch: Optional[Union[str, tuple[int, int]]] = None) -> None:
    """Check every record against NVDEC's capabilities on ``arch`` (default: this machine's GPU); see
    :func:`preflight_data`."""
    preflight_data(records, root, list_path, "gpu", arch)
