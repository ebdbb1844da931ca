"""Distributed helpers in one place: torchrun environment, ranks, reductions, unwrapping DDP.

Launch with ``torchrun`` (it sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT); a plain
``python train.py`` runs as a single process with world size 1 and no process group.

Hangs and failed ranks: a collective (all-reduce, barrier, ...) that another rank never joins fails after the
process group's timeout (``train.dist_timeout_s``, default 600 s, passed to ``init_process_group`` by training;
torch's own default, kept when no timeout is given, is 30 minutes). :func:`rank_errors` then reports which rank failed and how: a user error keeps its
one line, prefixed with ``rank R of N``; a timed-out or broken collective becomes :class:`CollectiveError`
(one line, exit status 2), and any other exception gets the rank as a note under its traceback.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
import torch.distributed as dist

from utils.errors import UserError


# Without a value: torch's own 30 minutes, as before (test.py's evaluator passes none yet); training passes
# train.dist_timeout_s (600 s by default, configs/defaults.yaml).
DEFAULT_TIMEOUT_S = 1800.0


class DistributedSetupError(UserError, RuntimeError):
    """A launch this machine cannot serve (e.g. more local ranks than GPUs); the message says how to fix it."""


class CollectiveError(UserError, RuntimeError):
    """A collective operation (or the rendezvous) failed or timed out: another rank stopped or hangs."""


# What gloo, NCCL and the c10d store say when a peer is gone or late (torch 2.x; newer versions raise
# torch.distributed.DistError subclasses, older ones a plain RuntimeError with these words).
_COLLECTIVE_WORDS = ("timed out", "timeout", "connection closed", "connection reset", "broken pipe",
                     "nccl", "gloo", "socket", "peer")


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_primary(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(prefer_cuda: bool = True, timeout_s: Optional[float] = None) -> DistInfo:
    """Join the process group torchrun describes (NCCL on GPUs, gloo on CPU), pick this rank's device.

    Args:
        prefer_cuda: use this rank's GPU when CUDA is available.
        timeout_s: how long a collective (and the rendezvous) may wait for the other ranks before it fails
            (``train.dist_timeout_s`` for training); None: :data:`DEFAULT_TIMEOUT_S` (30 minutes).

    Raises:
        CollectiveError: the process group could not be formed in time (a rank never arrived).
    """
    timeout_s = DEFAULT_TIMEOUT_S if timeout_s is None else float(timeout_s)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = prefer_cuda and torch.cuda.is_available()
    if use_cuda:
        device = torch.device("cuda", cuda_device_index(local_rank))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    info = DistInfo(rank, world_size, local_rank, device)
    if world_size > 1 and not dist.is_initialized():
        with rank_errors(info, timeout_s):
            dist.init_process_group(
                backend="nccl" if use_cuda else "gloo",
                timeout=datetime.timedelta(seconds=timeout_s),
                **({"device_id": device} if use_cuda else {}),
            )
    return info


def _is_collective_failure(err: BaseException) -> bool:
    dist_error = getattr(dist, "DistError", None)
    if dist_error is not None and isinstance(err, dist_error):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and any(word in text for word in _COLLECTIVE_WORDS)


@contextlib.contextmanager
def rank_errors(info: DistInfo, timeout_s: float) -> Iterator[None]:
    """Name this rank in whatever stops it (a no-op on a single process).

    - a :class:`utils.errors.UserError`: the same error, its message prefixed with ``rank R of N:``;
    - a failed or timed-out collective: :class:`CollectiveError`, one line with the rank, the timeout and the fix;
    - anything else (a bug): unchanged, with the rank added as a note under the traceback.

    Args:
        info: this process's rank and world size.
        timeout_s: the process group's timeout (``train.dist_timeout_s``), for the message.
    """
    if info.world_size <= 1:
        yield
        return
    where = f"rank {info.rank} of {info.world_size}"
    try:
        yield
    except UserError as err:
        if not str(err).startswith("rank "):
            err.args = (f"{where}: {err}",) + tuple(err.args[1:])
        raise
    except Exception as err:
        if not _is_collective_failure(err):
            err.add_note(f"(on {where})")
            raise
        first_line = " ".join(str(err).split("\n")[0].split())[:300]
        raise CollectiveError(
            f"{where}: a collective operation with the other ranks failed or waited longer than "
            f"train.dist_timeout_s={timeout_s:g} s ({type(err).__name__}: {first_line}); another rank stopped or "
            f"hangs: its own error line (or torchrun's exit report) says why; raise -o train.dist_timeout_s=... "
            f"only if a step legitimately takes that long") from None


def cuda_device_index(local_rank: int) -> int:
    """The GPU of local rank ``local_rank``: one GPU per rank, never shared.

    NOTE: ``local_rank % device_count`` would put two ranks on one GPU, which NCCL refuses or hangs on
    ("Duplicate GPU detected"), and which halves every rank's memory and NVDEC share even where it runs.

    Raises:
        DistributedSetupError: more local ranks than visible GPUs.
    """
    count = torch.cuda.device_count()
    local_world = os.environ.get("LOCAL_WORLD_SIZE")
    ranks_here = int(local_world) if local_world else local_rank + 1
    if local_rank >= count or ranks_here > count:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        shown = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
        raise DistributedSetupError(
            f"LOCAL_RANK={local_rank} with LOCAL_WORLD_SIZE={local_world or 'unset'} needs one GPU per local rank, "
            f"but this node has {count} visible GPU(s){shown}; launch at most {count} process(es) per node "
            f"(torchrun --nproc_per_node={count}), or run on the CPU with gloo: CUDA_VISIBLE_DEVICES=\"\"")
    return local_rank


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_primary() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_dist():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place; returns the tensor (unchanged on a single process)."""
    if is_dist():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    if is_dist():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= dist.get_world_size()
    return tensor


def all_gather_object(obj: Any) -> list:
    """Every rank's ``obj``, in rank order (a one-element list on a single process)."""
    if not is_dist():
        return [obj]
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()
