"""Distributed helpers in one place: torchrun environment, ranks, reductions, unwrapping DDP.

Launch with ``torchrun`` (it sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT); a plain
``python train.py`` runs as a single process with world size 1 and no process group.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from utils.errors import UserError


class DistributedSetupError(UserError, RuntimeError):
    """A launch this machine cannot serve (e.g. more local ranks than GPUs); the message says how to fix it."""


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


def init_distributed(prefer_cuda: bool = True, timeout_minutes: int = 30) -> DistInfo:
    """Join the process group torchrun describes (NCCL on GPUs, gloo on CPU), pick this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = prefer_cuda and torch.cuda.is_available()
    if use_cuda:
        device = torch.device("cuda", cuda_device_index(local_rank))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            timeout=datetime.timedelta(minutes=timeout_minutes),
            **({"device_id": device} if use_cuda else {}),
        )
    return DistInfo(rank, world_size, local_rank, device)


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
