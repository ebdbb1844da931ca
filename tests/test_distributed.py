"""Which device each torchrun rank gets: one GPU per local rank, never two ranks on one GPU.

CUDA is faked (torch.cuda.is_available / device_count / set_device), so this runs on a CPU machine.
"""
from __future__ import annotations

import pytest
import torch

from engine import distributed
from engine.distributed import DistributedSetupError, cuda_device_index, init_distributed
from utils.errors import UserError


@pytest.fixture
def fake_gpus(monkeypatch):
    """``fake_gpus(n)``: n visible CUDA devices; returns the list set_device was called with."""
    chosen = []

    def make(count: int) -> list:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
        return chosen

    return make


def torchrun_env(monkeypatch, rank, world, local_rank, local_world):
    for key, value in (("RANK", rank), ("WORLD_SIZE", world), ("LOCAL_RANK", local_rank),
                       ("LOCAL_WORLD_SIZE", local_world)):
        monkeypatch.setenv(key, str(value))


@pytest.mark.parametrize("local_rank", [0, 1])
def test_more_local_ranks_than_gpus_is_a_user_error(monkeypatch, fake_gpus, local_rank):
    chosen = fake_gpus(1)
    torchrun_env(monkeypatch, local_rank, 2, local_rank, 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(distributed.dist, "init_process_group",
                        lambda *a, **k: pytest.fail("the process group must not be joined"))
    with pytest.raises(DistributedSetupError) as info:
        init_distributed()
    message = str(info.value)
    assert isinstance(info.value, UserError) and "\n" not in message
    # every rank fails the same way (rank 0 too), before touching a GPU
    assert f"LOCAL_RANK={local_rank} with LOCAL_WORLD_SIZE=2" in message
    assert "this node has 1 visible GPU(s)" in message
    assert "torchrun --nproc_per_node=1" in message and 'CUDA_VISIBLE_DEVICES=""' in message
    assert chosen == []


def test_the_message_shows_cuda_visible_devices(monkeypatch, fake_gpus):
    fake_gpus(2)
    torchrun_env(monkeypatch, 3, 4, 3, 4)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with pytest.raises(DistributedSetupError, match=r"2 visible GPU\(s\) \(CUDA_VISIBLE_DEVICES='0,1'\)"):
        cuda_device_index(3)


def test_each_local_rank_gets_its_own_gpu(monkeypatch, fake_gpus):
    fake_gpus(4)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert [cuda_device_index(r) for r in range(4)] == [0, 1, 2, 3]


def test_single_process_on_one_gpu(monkeypatch, fake_gpus):
    chosen = fake_gpus(1)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    info = init_distributed()
    assert info.device == torch.device("cuda", 0) and chosen == [torch.device("cuda", 0)]
    assert not info.distributed


def test_no_visible_gpu_runs_on_the_cpu(monkeypatch, fake_gpus):
    # CUDA_VISIBLE_DEVICES="" hides every GPU: torch reports none, the ranks use the CPU (gloo)
    fake_gpus(0)
    torchrun_env(monkeypatch, 0, 1, 0, 2)
    info = init_distributed()
    assert info.device == torch.device("cpu")
