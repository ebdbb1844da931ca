"""Multigrid training (pipelines/multigrid.py, engine.lr_schedule, engine.trainer): the schedule of PySlowFast's
multigrid recipe, the LR it implies, the short cycle alone, the errors, and a training run that follows it.

The reference figures come from running PySlowFast's own ``slowfast/utils/multigrid.py`` (``MultigridSchedule.
init_multigrid`` on ``configs/Kinetics/SLOWFAST_8x8_R50_stepwise_multigrid.yaml``: 32 frames, crop 224,
``SOLVER.STEPS [0, 94, 154, 196]``, ``MAX_EPOCH 239``, ``EPOCH_FACTOR 1.5``, both cycles, default factors); the
other expected values are computed by hand in the comments.
"""
from __future__ import annotations

import json
import math

import pytest
import torch

import train
from configs import load_config
from configs.schema import ConfigError
from engine import trainer as tr
from engine.lr_schedule import lr_at
from pipelines.codecs import codec_suffix
from pipelines.dataset import VideoRecord, index_path_for, write_index
from pipelines.multigrid import Multigrid, MultigridError
from pipelines.video_io import numbered_frames, write_video
from utils.errors import run_cli

SQRT_HALF = 0.5 ** 0.5
# PySlowFast's schedule: (LR step, [batch factor, frames, crop], end epoch) per stage
PYSLOWFAST_SCHEDULE = [
    (0, [8, 8, 158], 73), (0, [4, 16, 158], 110), (0, [2, 16, 224], 142), (0, [1, 32, 224], 158),
    (1, [8, 8, 158], 205), (1, [4, 16, 158], 228), (1, [2, 16, 224], 248), (1, [1, 32, 224], 259),
    (2, [8, 8, 158], 291), (2, [4, 16, 158], 308), (2, [2, 16, 224], 322), (2, [1, 32, 224], 329),
    (3, [1, 32, 224], 358)]
# and the SOLVER.STEPS / SOLVER.LRS init_multigrid writes (LR = BASE_LR x LRS[i] from STEPS[i] on)
PYSLOWFAST_STEPS = [0, 73, 110, 142, 158, 205, 228, 248, 259, 291, 308, 322, 329, 343]
PYSLOWFAST_LRS = [8.0, 4.0, 2.0, 1.0, 0.8, 0.4, 0.2, 0.1, 0.08, 0.04, 0.02, 0.01, 0.01, 0.001]


def reference_grid(**changes) -> Multigrid:
    args = dict(num_frames=32, crop=224, sampling_rate=2, short_side=(256, 320), batch_size=8, accumulate=1,
                epochs=239, lr_policy="steps", lr_steps=[0, 94, 154, 196], long_cycle=True, short_cycle=True,
                epoch_factor=1.5, long_cycle_factors=[(0.25, SQRT_HALF), (0.5, SQRT_HALF), (0.5, 1), (1, 1)],
                short_cycle_factors=[0.5, SQRT_HALF], alpha=4)
    args.update(changes)
    return Multigrid(**args)


def test_long_cycle_schedule_is_pyslowfasts():
    grid = reference_grid()
    assert [(s.lr_index, [s.batch_factor, s.num_frames, s.crop], s.end_epoch) for s in grid.stages] \
        == PYSLOWFAST_SCHEDULE
    assert grid.epochs == 358  # MAX_EPOCH = round(239 x 1.5)
    assert [s.start_epoch for s in grid.stages] == [0] + [end for _, _, end in PYSLOWFAST_SCHEDULE[:-1]]


@pytest.mark.parametrize("index", range(len(PYSLOWFAST_STEPS)))
def test_step_lr_is_pyslowfasts_relative_lr(index):
    """At the first epoch, the middle and the last moment of each of PySlowFast's LR steps."""
    grid = reference_grid()
    start = PYSLOWFAST_STEPS[index]
    end = PYSLOWFAST_STEPS[index + 1] if index + 1 < len(PYSLOWFAST_STEPS) else 358
    for epoch in (start, (start + end) / 2, end - 1e-6):
        assert grid.step_lr_factor(epoch, 0.1) == pytest.approx(PYSLOWFAST_LRS[index], rel=1e-12)


def test_short_cycle_shapes_and_batches():
    """Stage 1 (8 frames, crop 158): crops round(0.5 x 224) = 112 and round(0.7071 x 224) = 158, clips per
    micro-batch 8 x round((158 / 112)^2) = 16 and 8 x round((158 / 158.4)^2) = 8, then the stage's own 158 with 8;
    8 micro-batches per step (the stage's batch factor); the stride drawn in [2, 2 x 32 // 8]; the short side's
    lower end scaled with the crop (256 x 112 / 224 = 128, 256 x 158 / 224 = 180.6 -> 181)."""
    shapes = reference_grid().step_shapes(0)
    assert [(s.num_frames, s.crop, s.micro_batch, s.micro_batches) for s in shapes] \
        == [(8, 112, 16, 8), (8, 158, 8, 8), (8, 158, 8, 8)]
    assert {s.sampling_rates for s in shapes} == {(2, 8)}
    assert [s.short_side for s in shapes] == [(128, 320), (181, 320), (181, 320)]
    # the full shape's stage: crop 224 -> 112 x4 clips, 158 x2, 224 x1; the stride fixed at 2
    full = reference_grid().step_shapes(150)
    assert [(s.crop, s.micro_batch, s.micro_batches, s.sampling_rates) for s in full] \
        == [(112, 32, 1, (2, 2)), (158, 16, 1, (2, 2)), (224, 8, 1, (2, 2))]


def test_layout_drops_the_step_the_shard_cannot_fill():
    grid = reference_grid()
    # stage 1 steps take 8 x 16 = 128, 64 and 64 clips
    assert [s.clips for s in grid.layout(128 + 64 + 63, 0)] == [128, 64]
    assert grid.layout(127, 0) == []


def test_short_cycle_alone_stretches_the_run_and_its_steps():
    """PySlowFast's init_multigrid without the long cycle: MAX_EPOCH and STEPS times EPOCH_FACTOR, truncated."""
    grid = reference_grid(long_cycle=False, epochs=196, lr_steps=[0, 94, 154])
    assert grid.epochs == 294 and grid.lr_steps == [0, 141, 231]
    assert grid.step_lr_factor(140.9, 0.1) == 1.0 and grid.step_lr_factor(141, 0.1) == pytest.approx(0.1)
    assert [(s.crop, s.micro_batch, s.micro_batches) for s in grid.step_shapes(0)] \
        == [(112, 32, 1), (158, 16, 1), (224, 8, 1)]


def test_cosine_policy_runs_one_long_cycle_over_the_run():
    """steps = [0, epochs]: the cycle's stages share 239 x 1.5 epochs by mean batch factor; no fine-tuning phase
    (the run ends at the last LR step)."""
    grid = reference_grid(lr_policy="cosine", lr_steps=[])
    assert [s.num_frames for s in grid.stages] == [8, 16, 16, 32]
    assert grid.epochs == 358 and all(s.lr_index == 0 for s in grid.stages)
    cfg = load_config(None, ["train.epochs=239", "train.warmup_epochs=0", "train.base_lr=0.1", "train.base_batch=8",
                             "data.batch_size=8"])
    # the cosine over 358 epochs times the stage's batch factor: epoch 0 x8, the last stage x1
    assert lr_at(0, cfg, 1, grid) == pytest.approx(0.8)
    last = grid.stages[-1].start_epoch
    assert lr_at(last, cfg, 1, grid) == pytest.approx(0.1 * (1 + math.cos(math.pi * last / 358)) / 2)


def test_steps_policy_without_multigrid():
    cfg = load_config(None, ["train.lr_policy=steps", "train.lr_steps=0,10,20", "train.epochs=30",
                             "train.warmup_epochs=2", "train.warmup_start_lr=0.01", "train.base_lr=0.1",
                             "train.base_batch=8", "data.batch_size=8", "train.lr_gamma=0.5"])
    assert lr_at(0, cfg) == pytest.approx(0.01)
    assert lr_at(1, cfg) == pytest.approx(0.055)       # halfway up the line 0.01 -> 0.1
    assert lr_at(9.99, cfg) == pytest.approx(0.1)
    assert lr_at(10, cfg) == pytest.approx(0.05) and lr_at(25, cfg) == pytest.approx(0.025)


def test_bad_settings_are_refused_with_the_fix():
    with pytest.raises(MultigridError, match="8 frames.*not a positive multiple of the model's alpha=16"):
        reference_grid(alpha=16)
    with pytest.raises(ConfigError, match="train.lr_steps=.*must start at 0"):
        load_config(None, ["train.lr_policy=steps", "train.lr_steps=5,10"])
    with pytest.raises(ConfigError, match="long_cycle_factors"):
        load_config(None, ["train.multigrid.long_cycle_factors=[[0.5,2.0]]"])


# ------------------------------------------------------------------------------------------ a training run

FRAMES_PER_VIDEO = [40, 56, 44, 63, 48, 32, 44]


@pytest.fixture(scope="module")
def numbered_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("multigrid_videos")
    records = []
    for i, n in enumerate(FRAMES_PER_VIDEO):
        path = write_video(root / f"v{i}{codec_suffix('vp9')}", numbered_frames(n, 48, 64), fps=30, codec="vp9",
                           keyframe_interval=8, lossless=True)
        records.append(VideoRecord(path.name, i % 3, n, 30.0, 64, 48, "vp9"))
    (root / "train.list").write_text("".join(f"{r.path} {r.label}\n" for r in records))
    write_index(records, index_path_for(root / "train.list"))
    return root


def test_training_follows_the_schedule_and_recomputes_bn_at_the_full_shape(tmp_path, numbered_set, monkeypatch):
    """3 epochs (2 x 1.5) on 7 videos, PyAV: the steps per epoch, the LR of every step and precise BN's batches.

    Stage 1 (epochs 1-2): 4 frames, steps of 2 micro-batches of 2 clips (crop 28), then of 1 clip (crop 40);
    7 videos hold 2 steps. Stage 2 (epoch 3): 8 frames, 1 micro-batch per step, 2/1/2/1 clips: 4 steps.
    LR (no warm-up, cosine over 3 epochs, base 0.8 for 1 clip): stage 1 x2, stage 2 x1.
    """
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    precise_shapes = []
    real_update = tr.update_bn_stats

    def spy(model, loader, count, forward, autocast):
        precise_shapes.extend(tuple(batch[0][1].shape) for _, batch in zip(range(count), loader))
        return real_update(model, loader, count, forward, autocast)

    monkeypatch.setattr(tr, "update_bn_stats", spy)
    out = tmp_path / "run"
    assert run_cli(train.main, _multigrid_argv(out, numbered_set)) == 0
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    steps = [(r["epoch"], r["iter"], r["iters"], r["lr"]) for r in records if r["kind"] == "iter"]

    def cosine(e):
        return 0.8 * (1 + math.cos(math.pi * e / 3)) / 2

    expected = [(1, 1, 2, 2 * cosine(0)), (1, 2, 2, 2 * cosine(0.5)), (2, 1, 2, 2 * cosine(1)),
                (2, 2, 2, 2 * cosine(1.5))] + [(3, k + 1, 4, cosine(2 + k / 4)) for k in range(4)]
    assert [s[:3] for s in steps] == [e[:3] for e in expected]
    assert [s[3] for s in steps] == pytest.approx([e[3] for e in expected], rel=1e-9)
    # precise BN before the epoch-3 checkpoint: 3 batches of data.batch_size clips at 8 frames x 40 pixels
    assert precise_shapes == [(1, 3, 8, 40, 40)] * 3
    assert torch.load(out / "latest.pt", weights_only=False)["epoch"] == 3


def test_a_multigrid_run_resumed_across_a_stage_change_ends_as_an_uninterrupted_one(tmp_path, numbered_set,
                                                                                      monkeypatch):
    """Killed after epoch 2 (the last of stage 1), resumed into stage 2: the same steps, LRs and weights."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert run_cli(train.main, _multigrid_argv(full, numbered_set)) == 0
    real_end = tr.end_of_epoch

    def end_then_crash(trainer, epoch, summary):
        real_end(trainer, epoch, summary)
        if epoch == 1:
            raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(tr, "end_of_epoch", end_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train.main(_multigrid_argv(cut, numbered_set))
    monkeypatch.setattr(tr, "end_of_epoch", real_end)
    assert run_cli(train.main, _multigrid_argv(cut, numbered_set) + ["--resume"]) == 0

    def steps(out):
        rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
        return [(r["step"], r["lr"]) for r in rows if r["kind"] == "iter"]

    assert steps(cut) == steps(full)
    a, b = (torch.load(d / "latest.pt", weights_only=True) for d in (full, cut))
    assert a["epoch"] == b["epoch"] == 3 and a["iteration"] == b["iteration"] == 8
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)


def _multigrid_argv(out, root) -> list[str]:
    return ["--output-dir", str(out), "--no-progress",
            "-o", "model.name=slowfast_tiny", "-o", "model.num_classes=3", "-o", "model.args={dropout: 0.0}",
            "-o", f"data.root={root}", "-o", f"data.train_list={root / 'train.list'}",
            "-o", "data.backend=pyav", "-o", "data.device=cpu", "-o", "data.num_workers=0",
            "-o", "data.num_frames=8", "-o", "data.sampling_rate=2", "-o", "data.train_short_side=40",
            "-o", "data.train_crop=40", "-o", "data.batch_size=1", "-o", "train.optimizer=sgd",
            "-o", "train.epochs=2", "-o", "train.warmup_epochs=0", "-o", "train.base_lr=0.8",
            "-o", "train.base_batch=1", "-o", "train.precision=fp32", "-o", "train.log_every=1",
            "-o", "train.precise_bn_batches=3", "-o", "train.save_every=3",
            "-o", "train.multigrid.long_cycle=true", "-o", "train.multigrid.short_cycle=true",
            "-o", "train.multigrid.long_cycle_factors=[[0.5,1.0],[1.0,1.0]]",
            "-o", "train.multigrid.short_cycle_factors=0.7071"]


def test_epoch_cost_weights_the_eta():
    """The training test's schedule on 7 videos: epoch 1's steps are 4 clips of 4 frames at 28 px and 2 clips of 4 at
    40 (4*4*28^2 + 2*4*40^2 = 25344 pixels); epoch 3's are twice 2 clips of 8 at 28 and 1 clip of 8 at 40 (50688)."""
    grid = Multigrid(num_frames=8, crop=40, sampling_rate=2, short_side=(40, 40), batch_size=1, accumulate=1,
                     epochs=2, lr_policy="cosine", lr_steps=[], long_cycle=True, short_cycle=True, epoch_factor=1.5,
                     long_cycle_factors=[(0.5, 1.0), (1.0, 1.0)], short_cycle_factors=[0.7071], alpha=4)
    assert [grid.epoch_cost(7, e) for e in range(3)] == [25344, 25344, 50688]
