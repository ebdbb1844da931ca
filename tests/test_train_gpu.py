"""Training on a GPU: bf16 autocast, channels-last, the DALI GPU loader on H.264 synthetic videos; a
SyncBatchNorm + DDP step over two processes (gloo) against the same step on one process.

Skipped without CUDA (the DALI test also without DALI).
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import models
from configs import load_config
from engine import checkpoint as ckpt
from engine import distributed
from engine import trainer as tr
from engine.precision import resolve_precision, to_model_inputs
from pipelines import sampling

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture(scope="module")
def h264_dataset(tmp_path_factory):
    pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed")
    from pipelines.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("h264_motion")
    return generate_dataset(
        root,
        num_train_per_class=2,
        num_val_per_class=1,
        width=64,
        height=48,
        num_frames=32,
        fps=30,
        codec="h264",
        seed=0,
        keyframe_interval=8,
        workers=2,
        progress=False,
    )


@pytest.mark.dali
def test_bf16_channels_last_steps_with_the_dali_gpu_loader(h264_dataset, tmp_path):
    root = h264_dataset["root"]
    seen: dict = {}
    real_epoch = tr.train_one_epoch

    def spy(trainer, epoch):
        batch = next(iter(trainer.train_loader))
        (slow, fast), labels, _ = batch
        seen.update(
            device=fast.device.type,
            channels_last=fast.is_contiguous(memory_format=torch.channels_last_3d),
            dtype=fast.dtype,
            precision=trainer.precision.name,
            autocast=trainer.precision.dtype,
            cudnn_benchmark=torch.backends.cudnn.benchmark,
            before={k: v.clone() for k, v in trainer.bare_model.state_dict().items()},
        )
        summary = real_epoch(trainer, epoch)
        seen["after"] = {k: v.clone() for k, v in trainer.bare_model.state_dict().items()}
        return summary

    tr.train_one_epoch = spy
    try:
        overrides = [
            "model.name=slowfast_tiny", "model.num_classes=8", "model.channels_last=true", f"data.root={root}",
            f"data.train_list={h264_dataset['train_list']}", f"data.val_list={h264_dataset['val_list']}",
            "data.backend=dali", "data.device=gpu", "data.dtype=bf16", "data.batch_size=4", "data.num_frames=8",
            "data.sampling_rate=2", "data.train_short_side=[48,56]", "data.train_crop=48", "data.val_crop=48",
            "data.test_short_side=48", "data.test_crop=48", "data.num_workers=2", "train.precision=bf16",
            "train.epochs=2", "train.warmup_epochs=1", "train.precise_bn_batches=2", "train.log_every=1",
        ]
        cfg = load_config(None, overrides)  # what `python train.py --validate -o ...` runs
        cfg.train.output_dir = str(tmp_path / "run")
        summary = tr.run_training(cfg, validate=True, explicit_keys={"train.precision"})
    finally:
        tr.train_one_epoch = real_epoch

    # The loader hands over bf16 channels-last CUDA tensors; training ran bf16 autocast.
    assert seen["device"] == "cuda" and seen["dtype"] == torch.bfloat16 and seen["channels_last"]
    assert seen["precision"] == "bf16" and seen["autocast"] == torch.bfloat16 and seen["cudnn_benchmark"]
    # 16 videos / batch 4 = 4 steps per epoch, 2 epochs, all finite, and the weights moved (in fp32).
    assert summary["iteration"] == 8 and summary["nonfinite_steps"] == 0
    moved = [
        k for k, v in seen["after"].items() if v.is_floating_point() and not torch.equal(v, seen["before"][k])
    ]
    assert len(moved) > 10
    assert all(v.dtype == torch.float32 for v in seen["after"].values() if v.is_floating_point())
    records = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert any(r["kind"] == "iter" and r.get("max_mem_gib", 0) > 0 for r in records)
    state = ckpt.load_checkpoint(tmp_path / "run" / "best.pt")
    assert state["metrics"]["val"]["videos"] == 8


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


SYNC_CFG = ["model.name=slowfast_tiny", "model.num_classes=3", "data.num_frames=8", "train.sync_bn=true",
            "train.precision=fp32", "model.channels_last=true"]


def _sync_bn_batch(batch: int = 4):
    generator = torch.Generator().manual_seed(7)
    fast = torch.randn(batch, 3, 8, 32, 32, generator=generator)
    labels = torch.randint(0, 3, (batch,), generator=generator)
    return [fast[:, :, sampling.slow_indices(8, 4)], fast], labels


def _sync_bn_worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    torch.cuda.set_device(0)
    # NOTE: both ranks share the one GPU: NCCL refuses two ranks on one device, gloo all-gathers CUDA tensors.
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        device = torch.device("cuda", 0)
        cfg = load_config(None, SYNC_CFG)
        torch.manual_seed(0)
        model = tr.build_model(cfg, device)
        optimizer = tr.build_optimizer(model, cfg, device)
        info = distributed.DistInfo(rank=rank, world_size=2, local_rank=0, device=device)
        wrapped = tr.wrap_model(model, cfg, info)
        assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in wrapped.modules())
        pathways, labels = _sync_bn_batch()
        half = slice(2 * rank, 2 * rank + 2)  # each rank takes half of the batch
        precision = resolve_precision("fp32", device, explicit=True)
        inputs = to_model_inputs([p[half] for p in pathways], device, True, precision)
        wrapped.train()
        result = tr.train_step(wrapped, optimizer, inputs, labels[half].to(device), precision)
        assert result.applied
        state = {k: v.detach().cpu() for k, v in models.unwrap_model(wrapped).state_dict().items()}
        torch.save(state, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_sync_bn_ddp_step_over_two_processes_equals_one_process_on_the_whole_batch(tmp_path, monkeypatch):
    """DDP averages the two halves' gradients and SyncBatchNorm normalises with the whole batch's statistics,
    so one step over 2 ranks x 2 clips is one step of plain BN on one process over all 4 clips."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    mp.spawn(_sync_bn_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]

    device = torch.device("cuda", 0)
    cfg = load_config(None, SYNC_CFG)
    torch.manual_seed(0)
    model = tr.build_model(cfg, device)
    optimizer = tr.build_optimizer(model, cfg, device)
    pathways, labels = _sync_bn_batch()
    precision = resolve_precision("fp32", device, explicit=True)
    model.train()
    tr.train_step(model, optimizer, to_model_inputs(pathways, device, True, precision), labels.to(device), precision)
    reference = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    moved = 0
    for key, value in reference.items():
        for rank in ranks:
            torch.testing.assert_close(rank[key], value, rtol=1e-4, atol=1e-5, msg=key)
        moved += int("running_mean" in key)
    assert moved > 5
