"""Gradient accumulation (``train.accumulate``): one process accumulating micro-batches takes the optimizer step
that DDP ranks with one micro-batch each take; the LR, the iteration count, the dropped trailing group, the
non-finite skip, checkpoints and resume."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from configs import load_config
from engine import checkpoint as ckpt
from engine import distributed
from engine import trainer as tr
from engine.precision import resolve_precision
from pipelines import sampling
from test_train import (FRAMES, NUM_CLASSES, NUM_VIDEOS, SIZE, _argv, _free_port, _iter_records,  # noqa: F401
                        _train_order, memory_data, run_train)

CPU = torch.device("cpu")
FP32 = resolve_precision("fp32", CPU, explicit=False)
STEPS = 3
CLIPS = 2  # per micro-batch


def _tiny_cfg():
    cfg = load_config(None, ["model.name=slowfast_tiny", f"model.num_classes={NUM_CLASSES}",
                             f"data.num_frames={FRAMES}", "train.precision=fp32", "train.weight_decay=0.001"])
    cfg.model.args = {"dropout": 0.0}  # dropout masks come from per-process RNG streams
    return cfg


def _fixed_clips(micro_batches: int) -> list[tuple[list[torch.Tensor], torch.Tensor]]:
    """``STEPS * micro_batches`` fixed micro-batches of ``CLIPS`` clips: the same tensors in every process."""
    gen = torch.Generator().manual_seed(123)
    out = []
    for _ in range(STEPS * micro_batches):
        fast = torch.randn(CLIPS, 3, FRAMES, SIZE, SIZE, generator=gen)
        slow = fast[:, :, sampling.slow_indices(FRAMES, 4)]
        out.append(([slow.contiguous(), fast], torch.randint(0, NUM_CLASSES, (CLIPS,), generator=gen)))
    return out


def _fresh_model(cfg):
    torch.manual_seed(0)
    model = tr.build_model(cfg, CPU)
    return model, tr.build_optimizer(model, cfg, CPU)


def _lr(step: int) -> float:
    return 0.02 + 0.01 * step  # a different LR every step (small: BN over 2 clips amplifies rounding quickly)


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _ddp_worker(rank: int, port: int, micro_per_rank: int, out: str) -> None:
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        calls = {"no_sync": 0}
        real_no_sync = nn.parallel.DistributedDataParallel.no_sync

        def counting_no_sync(self):
            calls["no_sync"] += 1
            return real_no_sync(self)

        nn.parallel.DistributedDataParallel.no_sync = counting_no_sync
        cfg = _tiny_cfg()
        model, optimizer = _fresh_model(cfg)
        wrapped = tr.wrap_model(model, cfg, distributed.DistInfo(rank=rank, world_size=2, local_rank=rank,
                                                                 device=CPU))
        wrapped.train()
        clips = _fixed_clips(2 * micro_per_rank)
        for step in range(STEPS):
            for group in optimizer.param_groups:
                group["lr"] = _lr(step)
            # this rank's micro-batches of the step: rank 0 the first half of the step's clips, rank 1 the second
            first = step * 2 * micro_per_rank + rank * micro_per_rank
            result = tr.accumulation_step(wrapped, optimizer, iter(clips[first:first + micro_per_rank]), FP32,
                                          accumulate=micro_per_rank)
            assert result.applied
        torch.save({"params": _params(model), "no_sync": calls["no_sync"]}, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _single_process(accumulate: int) -> dict[str, torch.Tensor]:
    cfg = _tiny_cfg()
    model, optimizer = _fresh_model(cfg)
    model.train()
    clips = _fixed_clips(accumulate)
    for step in range(STEPS):
        for group in optimizer.param_groups:
            group["lr"] = _lr(step)
        result = tr.accumulation_step(model, optimizer, iter(clips[step * accumulate:(step + 1) * accumulate]), FP32,
                                      accumulate=accumulate)
        assert result.applied
    return _params(model)


@pytest.mark.parametrize("micro_per_rank", [1, 2])
def test_one_process_accumulating_equals_two_gloo_ranks(tmp_path, monkeypatch, micro_per_rank):
    """2 ranks x ``micro_per_rank`` micro-batches (DDP, gloo on the CPU, per-rank BN) take the same steps as one
    process accumulating ``2 * micro_per_rank`` micro-batches of the same clips (slowfast_tiny, SGD, fp32)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    mp.spawn(_ddp_worker, args=(_free_port(), micro_per_rank, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    # DDP's all-reduce runs on the last micro-batch only: no_sync around the others, every step.
    assert [r["no_sync"] for r in ranks] == [STEPS * (micro_per_rank - 1)] * 2
    single = _single_process(2 * micro_per_rank)
    initial = _params(_fresh_model(_tiny_cfg())[0])
    moved = 0
    for name, value in single.items():
        torch.testing.assert_close(ranks[0]["params"][name], ranks[1]["params"][name], rtol=0, atol=0, msg=name)
        # The two runs sum the same gradients in a different order (all-reduce vs local accumulation), and BN over
        # 2 clips amplifies fp32 rounding, so compare against how far the training moved each tensor: rounding
        # stays below 1% of the movement (3e-4 measured), a wrong scale or a missed micro-batch is of its order.
        movement = (value - initial[name]).abs().max().item()
        gap = (ranks[0]["params"][name] - value).abs().max().item()
        assert gap <= 0.01 * movement + 1e-7, f"{name}: DDP and accumulation differ by {gap:.3g}, moved {movement:.3g}"
        moved += not torch.equal(value, initial[name])
    assert moved > len(single) // 2  # the steps really changed the network


def test_accumulating_k_micro_batches_equals_one_step_on_the_whole_batch_without_batchnorm():
    """Without BatchNorm a batch of k*b clips and k micro-batches of b clips have the same mean gradient:
    SGD (momentum, Nesterov, weight decay) ends at the same weights."""
    gen = torch.Generator().manual_seed(5)
    inputs, labels = torch.randn(STEPS, 6, 12, generator=gen), torch.randint(0, 4, (STEPS, 6), generator=gen)
    results = []
    for accumulate in (1, 3):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(12, 7), nn.Tanh(), nn.Linear(7, 4))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9, nesterov=True, weight_decay=0.01)
        for step in range(STEPS):
            micro = [([x], y) for x, y in zip(inputs[step].chunk(accumulate), labels[step].chunk(accumulate))]
            tr.accumulation_step(lambda x: model(x[0]), optimizer, micro, FP32, accumulate=accumulate)
        results.append(_params(model))
    for name, value in results[0].items():
        torch.testing.assert_close(results[1][name], value, rtol=1e-5, atol=1e-7, msg=name)


def test_accumulation_with_batchnorm_is_the_hand_written_loop():
    """slowfast_tiny (BatchNorm per micro-batch): the step is ``sum_i (CE_i / k).backward()``, then one SGD step."""
    cfg = _tiny_cfg()
    clips = _fixed_clips(3)
    engine_model, engine_opt = _fresh_model(cfg)
    hand_model, hand_opt = _fresh_model(cfg)
    engine_model.train(), hand_model.train()
    for step in range(STEPS):
        micro = clips[3 * step:3 * step + 3]
        for opt in (engine_opt, hand_opt):
            for group in opt.param_groups:
                group["lr"] = _lr(step)
        tr.accumulation_step(engine_model, engine_opt, micro, FP32)
        for inputs, labels in micro:
            (F.cross_entropy(hand_model(inputs), labels) / 3).backward()
        hand_opt.step()
        hand_opt.zero_grad()
    for name, value in hand_model.state_dict().items():  # weights and BN running statistics
        torch.testing.assert_close(engine_model.state_dict()[name], value, rtol=1e-5, atol=1e-7, msg=name)


class _NaNOn(nn.Module):
    def __init__(self, model: nn.Module, bad_calls: set[int]):
        super().__init__()
        self.model, self.bad_calls, self.calls = model, bad_calls, 0

    def forward(self, inputs):
        self.calls += 1
        out = self.model(inputs)
        return out * float("nan") if self.calls in self.bad_calls else out


@pytest.mark.parametrize("bad_call", [1, 2])
def test_a_nonfinite_micro_batch_skips_the_whole_step(bad_call):
    cfg = _tiny_cfg()
    model, optimizer = _fresh_model(cfg)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    wrapped = _NaNOn(model, {bad_call})
    pulled = []

    def micro_batches():
        for item in _fixed_clips(3)[:3]:
            pulled.append(item)
            yield item

    result = tr.accumulation_step(wrapped, optimizer, micro_batches(), FP32, snapshot=tr.BufferSnapshot(model),
                                  accumulate=3)
    assert not result.applied
    assert len(pulled) == 3  # the loader stays in step: every micro-batch of the group is pulled ...
    assert wrapped.calls == bad_call  # ... but none runs after the bad one
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key  # weights and BN statistics as before the group
    assert all(p.grad is None for p in model.parameters()) and not optimizer.state


def test_trainer_steps_per_group_with_the_global_batch_lr_and_drops_the_trailing_group(tmp_path, memory_data):
    out = tmp_path / "acc"
    # 12 videos, batch 2: 6 batches per epoch; accumulate 4: 1 optimizer step, the last 2 batches dropped.
    run_train(_argv(out, "-o", "train.accumulate=4", "-o", "train.warmup_epochs=0", epochs=2))
    records = _iter_records(out)
    assert [(r["epoch"], r["iter"], r["iters"], r["step"]) for r in records] == [(1, 1, 1, 1), (2, 1, 1, 2)]
    # global batch 2 x 1 x 4 = 8 clips: base_lr 0.8 * 8 / 16 = 0.4; half-cosine over 2 epochs at epochs 0 and 1
    assert [r["lr"] for r in records] == pytest.approx([0.4, 0.2], rel=1e-12)
    expected = []
    for epoch in range(2):
        order = sampling.shard_indices(NUM_VIDEOS, shuffle=True, seed=0, epoch=epoch, pad=False).tolist()
        batches = [(epoch, order[i:i + 2]) for i in range(0, NUM_VIDEOS, 2)]
        expected += batches[:4] + batches[:2]  # 4 trained batches, then precise BN's 2; batches 5-6 never pulled
    assert _train_order(memory_data) == expected
    state = ckpt.load_checkpoint(out / "latest.pt")
    assert state["iteration"] == 2 and state["config"]["train"]["accumulate"] == 4
    assert state["scheduler"]["accumulate"] == 4 and state["scheduler"]["global_batch"] == 8
    assert state["scheduler"]["iters_per_epoch"] == 1


def test_too_few_batches_for_one_group_is_one_line_naming_the_fix(tmp_path, memory_data):
    with pytest.raises(tr.TrainingError, match=r"train.accumulate=7 needs 7 micro-batches .* yields 6 batch\(es\) "
                                               r".*lower train.accumulate"):
        run_train(_argv(tmp_path / "x", "-o", "train.accumulate=7", epochs=1))


def test_resume_with_accumulation_is_exact(tmp_path, memory_data, monkeypatch):
    extra = ("-o", "train.accumulate=2")
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    run_train(_argv(full_dir, *extra))
    full_state = torch.load(full_dir / "latest.pt", weights_only=True)
    real_end = tr.end_of_epoch

    def end_then_crash(trainer, epoch, summary):
        real_end(trainer, epoch, summary)
        if epoch == 0:
            raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(tr, "end_of_epoch", end_then_crash)
    with pytest.raises(KeyboardInterrupt):
        run_train(_argv(cut_dir, *extra))
    monkeypatch.setattr(tr, "end_of_epoch", real_end)
    run_train(_argv(cut_dir, *extra, "--resume"))
    cut_state = torch.load(cut_dir / "latest.pt", weights_only=True)
    assert cut_state["iteration"] == full_state["iteration"] == 3 * 3  # 6 batches / 2 per step, 3 epochs
    for key, value in full_state["model"].items():
        torch.testing.assert_close(cut_state["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert [r["lr"] for r in _iter_records(cut_dir)] == pytest.approx([r["lr"] for r in _iter_records(full_dir)])


def test_resume_with_another_accumulate_needs_the_same_global_batch(tmp_path, memory_data):
    out = tmp_path / "run"
    run_train(_argv(out, "-o", "train.accumulate=2", epochs=1))
    # 2 clips x 2 micro-batches = 4 clips per step; accumulate 3 would make it 6: refused, naming the fix.
    with pytest.raises(ckpt.CheckpointError, match=r"train.accumulate=2 in the checkpoint \(global batch 4\), 3 now "
                                                   r"\(global batch 6 .*resume with -o train.accumulate=2"):
        run_train(_argv(out, "-o", "train.accumulate=3", "--resume", epochs=2))
    # 4 clips x 1 micro-batch: the same global batch, so the run continues.
    summary = run_train(_argv(out, "-o", "train.accumulate=1", "-o", "data.batch_size=4", "--resume", epochs=2))
    assert summary["epochs"] == 2
    state = ckpt.load_checkpoint(out / "latest.pt")
    assert state["scheduler"]["accumulate"] == 1 and state["scheduler"]["global_batch"] == 4
    assert np.isfinite([v.float().sum().item() for v in state["model"].values()]).all()


def test_the_lr_scales_with_the_global_batch_including_accumulation():
    from engine.lr_schedule import global_batch, lr_at

    # the reference recipe's 8 GPUs x 8 clips (LR 0.1 after warm-up) on 1 GPU x 8 clips x 8 micro-batches
    cfg = load_config(None, ["data.batch_size=8", "train.accumulate=8", "train.warmup_epochs=0"])
    assert global_batch(cfg, 1) == 64 and lr_at(0, cfg, world_size=1) == pytest.approx(0.1)
    cfg = load_config(None, ["data.batch_size=8", "train.accumulate=4", "train.warmup_epochs=0"])
    assert global_batch(cfg, 2) == 64 and lr_at(0, cfg, world_size=2) == pytest.approx(0.1)
    cfg = load_config(None, ["data.batch_size=8", "train.warmup_epochs=0"])
    assert lr_at(0, cfg, world_size=1) == pytest.approx(0.0125)  # accumulate 1: unchanged
