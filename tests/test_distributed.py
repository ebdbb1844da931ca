"""Which device each torchrun rank gets: one GPU per local rank, never two ranks on one GPU; the process
group's timeout (``train.dist_timeout_s``) and the rank named in a failure, with a real 2-process gloo group in
which one rank never joins a barrier.

CUDA is faked (torch.cuda.is_available / device_count / set_device), so this runs on a CPU machine.
"""
from __future__ import annotations

import datetime
import json
import multiprocessing
import os
import socket
import time
from pathlib import Path

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


# ------------------------------------------------------------------------------ timeout and failing ranks


def test_the_process_group_timeout_is_passed_in_seconds(monkeypatch, fake_gpus):
    fake_gpus(0)
    torchrun_env(monkeypatch, 1, 2, 1, 2)
    seen = {}
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **kwargs: seen.update(kwargs))
    info = init_distributed(timeout_s=42)
    assert seen["backend"] == "gloo" and seen["timeout"] == datetime.timedelta(seconds=42)
    assert (info.rank, info.world_size) == (1, 2)
    init_distributed()  # no value: torch's 30 minutes, as before (training always passes train.dist_timeout_s)
    assert seen["timeout"] == datetime.timedelta(minutes=30)
    from configs import load_config

    assert load_config(None).train.dist_timeout_s == 600  # training's default (configs/defaults.yaml)


def test_run_training_passes_train_dist_timeout_s(monkeypatch):
    from configs import load_config
    from engine import trainer

    seen = {}

    def fake_init(prefer_cuda=True, timeout_s=None):
        seen["timeout_s"] = timeout_s
        raise KeyboardInterrupt  # stop before anything else is built

    monkeypatch.setattr(distributed, "init_distributed", fake_init)
    cfg = load_config(None, ["train.dist_timeout_s=75"])
    with pytest.raises(KeyboardInterrupt):
        trainer.run_training(cfg)
    assert seen["timeout_s"] == 75


def test_rank_errors_names_the_rank():
    info = distributed.DistInfo(rank=3, world_size=4)
    with pytest.raises(UserError, match=r"^rank 3 of 4: bad value; fix it$"):
        with distributed.rank_errors(info, 600):
            raise UserError("bad value; fix it")
    with pytest.raises(distributed.CollectiveError) as caught:
        with distributed.rank_errors(info, 5):
            raise RuntimeError("[gloo/unbound_buffer.cc:78] Timed out waiting 5000ms for recv operation to complete")
    message = str(caught.value)
    assert message.startswith("rank 3 of 4: a collective operation") and "train.dist_timeout_s=5 s" in message
    assert "Timed out waiting 5000ms" in message and "\n" not in message
    with pytest.raises(ZeroDivisionError) as bug:  # a bug keeps its type and traceback, with the rank as a note
        with distributed.rank_errors(info, 600):
            1 / 0
    assert bug.value.__notes__ == ["(on rank 3 of 4)"]
    with pytest.raises(UserError, match=r"^plain$"):  # one process: nothing added
        with distributed.rank_errors(distributed.DistInfo(), 600):
            raise UserError("plain")


def _barrier_rank(rank: int, port: int, result_file: str) -> None:
    os.environ.update(CUDA_VISIBLE_DEVICES="", RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    info = init_distributed(prefer_cuda=False, timeout_s=5)
    if rank == 1:
        time.sleep(120)  # never joins the barrier (the test terminates this process)
        return
    start = time.monotonic()
    try:
        with distributed.rank_errors(info, 5):
            distributed.barrier()
        outcome = {"error": None}
    except distributed.CollectiveError as err:
        outcome = {"error": str(err)}
    outcome["elapsed"] = time.monotonic() - start
    Path(result_file).write_text(json.dumps(outcome))


def test_a_rank_that_never_joins_fails_the_others_within_the_timeout(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = tmp_path / "rank0.json"
    context = multiprocessing.get_context("spawn")
    ranks = [context.Process(target=_barrier_rank, args=(r, port, str(result))) for r in (0, 1)]
    for process in ranks:
        process.start()
    try:
        ranks[0].join(timeout=90)
        assert ranks[0].exitcode == 0, "rank 0 did not finish"
    finally:
        ranks[1].terminate()
        ranks[1].join(timeout=30)
    outcome = json.loads(result.read_text())
    assert outcome["error"] is not None, "the barrier returned although rank 1 never joined"
    assert outcome["error"].startswith("rank 0 of 2: a collective operation")
    assert "train.dist_timeout_s=5 s" in outcome["error"]
    assert 4.5 <= outcome["elapsed"] <= 30  # the 5 s timeout, not torch's default 30 minutes
