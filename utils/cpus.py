"""How many CPU cores this process may use: the one place that counts them.

On a node running several ranks (torchrun sets ``LOCAL_WORLD_SIZE``), the cores are divided among them, so
that e.g. 8 ranks x all-cores decoder threads do not oversubscribe the machine.
"""
from __future__ import annotations

import os
from typing import Optional


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the platform tells it)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def local_world_size() -> int:
    """Processes of this job on this node (torchrun's ``LOCAL_WORLD_SIZE``; 1 without torchrun)."""
    try:
        return max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)
    except ValueError:
        return 1


def cores_per_rank() -> int:
    """This rank's share of the node's cores (at least 1)."""
    return max(available_cores() // local_world_size(), 1)


def worker_count(configured: Optional[int] = None) -> int:
    """Worker processes or threads to use: ``configured`` when given (``data.num_workers``), else this
    rank's share of the cores."""
    if configured is not None:
        return int(configured)
    return cores_per_rank()
