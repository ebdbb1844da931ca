"""Training (engine.trainer, driven as train.py drives it) end to end on CPU with an in-memory loader (no
decoding): resume, DDP, non-finite losses, precise BN, the precision policy, torch.compile and SyncBatchNorm.

The in-memory loader follows the :mod:`pipelines` contract (``([slow, fast], labels, video_index)``,
``len``, ``set_epoch``, ``records``, ``failures``) with the shared sharding rule, and records which videos
it delivered, so the tests can compare sample orders.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

import models
import train
from configs import ConfigError, config_from_args, load_config
from engine import checkpoint as ckpt
from engine import distributed
from engine import trainer as tr
from engine.precise_bn import update_bn_stats
from engine.precision import Precision, overridden_keys, precision_for, resolve_precision, to_model_inputs
from pipelines import sampling
from pipelines.dataset import VideoRecord
from utils.errors import run_cli

NUM_VIDEOS = 12
NUM_CLASSES = 3
FRAMES, SIZE = 8, 32  # fast frames (alpha 4: 2 slow frames), crop size


class MemoryLoader:
    """A contract-following loader over synthetic clips: class k is a bright blob moving k-dependent ways."""

    def __init__(self, split: str, rank: int, world_size: int, alpha: int, batch_size: int, seed: int = 0):
        self.split, self.rank, self.world_size, self.alpha = split, rank, world_size, alpha
        self.batch_size, self.seed = batch_size, seed
        self.records = [VideoRecord(path=f"video{i}.webm", label=i % NUM_CLASSES) for i in range(NUM_VIDEOS)]
        self.failures: list = []
        self.delivered: list[tuple[int, list[int]]] = []  # (epoch, video indices) per batch
        self.set_epoch(0)

    def close(self) -> None:  # the contract's release (pipelines.base.VideoLoader.close): nothing held here
        self.closed = True

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        train_split = self.split == "train"
        self.order = sampling.shard_indices(
            NUM_VIDEOS,
            self.rank,
            self.world_size,
            shuffle=train_split,
            seed=self.seed,
            epoch=epoch,
            pad=not train_split,
        )

    def __len__(self) -> int:
        n = len(self.order)
        return n // self.batch_size if self.split == "train" else -(-n // self.batch_size)

    def _clip(self, video_index: int) -> torch.Tensor:
        label = self.records[video_index].label
        rng = sampling.clip_rng(self.seed, self.epoch if self.split == "train" else 0, video_index)
        clip = torch.from_numpy(rng.normal(0.0, 0.3, (3, FRAMES, SIZE, SIZE)).astype(np.float32))
        for t in range(FRAMES):  # class 0 still, 1 right, 2 down
            y = 8 + (t if label == 2 else 0)
            x = 8 + (t if label == 1 else 0)
            clip[:, t, y : y + 6, x : x + 6] += 2.0
        return clip

    def __iter__(self):
        n = len(self) * self.batch_size if self.split == "train" else len(self.order)
        for start in range(0, n, self.batch_size):
            chunk = [int(v) for v in self.order[start : start + self.batch_size]]
            self.delivered.append((self.epoch, chunk))
            fast = torch.stack([self._clip(v if v >= 0 else 0) for v in chunk])
            slow = fast[:, :, sampling.slow_indices(FRAMES, self.alpha)]
            labels = torch.tensor([self.records[v if v >= 0 else 0].label for v in chunk])
            yield [slow, fast], labels, torch.tensor(chunk)


LOADERS: list[MemoryLoader] = []


def memory_build_loader(cfg, split, *, rank=0, world_size=1, alpha=8, slow_sampling="linspace"):
    assert slow_sampling == "linspace"  # the models these tests train take PySlowFast's Slow frames
    loader = MemoryLoader(split, rank, world_size, alpha, int(cfg.data.batch_size), int(cfg.data.seed))
    LOADERS.append(loader)
    return loader


def run_train(argv: list[str]) -> dict:
    """What ``python train.py ARGV`` runs, returning the engine's summary (train.main returns the exit status)."""
    args = train.parse_args(argv)
    cfg = tr.resolve_config(args.config, args.override, resume_arg=args.resume, output_dir=args.output_dir)
    return tr.run_training(cfg, validate=args.validate, resume_from=args.resume, weights=args.weights,
                           explicit_keys=overridden_keys(args.override), progress=args.progress,
                           overwrite=args.overwrite)


def _argv(output_dir: Path, *extra: str, epochs: int = 3) -> list[str]:
    return [
        "--validate",
        "--output-dir",
        str(output_dir),
        "-o",
        "model.name=slowfast_tiny",
        "-o",
        f"model.num_classes={NUM_CLASSES}",
        "-o",
        "data.batch_size=2",
        "-o",
        f"data.num_frames={FRAMES}",
        "-o",
        f"train.epochs={epochs}",
        "-o",
        "train.warmup_epochs=1",
        "-o",
        "train.base_lr=0.8",
        "-o",
        "train.base_batch=16",
        "-o",
        "train.warmup_start_lr=0.08",
        "-o",
        "train.precise_bn_batches=2",
        "-o",
        "train.validate_every=1",
        "-o",
        "train.save_every=2",
        "-o",
        "train.keep_last=1",
        "-o",
        "train.log_every=1",
        "-o",
        "train.precision=fp32",
        *extra,
    ]


@pytest.fixture
def memory_data(monkeypatch):
    LOADERS.clear()
    monkeypatch.setattr(tr, "build_loader", memory_build_loader)
    # One thread: on a small, shared CPU, OpenMP threads competing with other processes run these tiny
    # tensors over ten times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield LOADERS
    torch.set_num_threads(threads)


def _iter_records(output_dir: Path) -> list[dict]:
    lines = (output_dir / "train_log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "iter"]


def _train_order(loaders: list[MemoryLoader]) -> list[tuple[int, list[int]]]:
    return [batch for loader in loaders if loader.split == "train" for batch in loader.delivered]


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path, memory_data, monkeypatch):
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    full = run_train(_argv(full_dir))
    full_state = torch.load(full_dir / "latest.pt", weights_only=True)
    full_lrs = [(r["step"], r["lr"]) for r in _iter_records(full_dir)]
    memory_data.clear()

    # The same run, killed after its first epoch's checkpoint ...
    real_end = tr.end_of_epoch

    def end_then_crash(trainer, epoch, summary):
        real_end(trainer, epoch, summary)
        if epoch == 0:
            raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(tr, "end_of_epoch", end_then_crash)
    with pytest.raises(KeyboardInterrupt):
        run_train(_argv(cut_dir))
    monkeypatch.setattr(tr, "end_of_epoch", real_end)
    first_part = _train_order(memory_data)
    memory_data.clear()
    # ... then resumed: the torchrun restart path (no --resume flag needed after a crash under torchrun).
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    resumed = run_train(_argv(cut_dir))
    resumed_state = torch.load(cut_dir / "latest.pt", weights_only=True)

    # Same LR at every step (the log holds one line per step).
    cut_lrs = [(r["step"], r["lr"]) for r in _iter_records(cut_dir)]
    assert [s for s, _ in cut_lrs] == [s for s, _ in full_lrs]
    assert np.allclose([lr for _, lr in cut_lrs], [lr for _, lr in full_lrs], rtol=0, atol=1e-12)
    # Same training samples in the same order: the first epoch before the crash, the rest after. Each
    # epoch reads its 6 batches (a seeded permutation of the 12 videos), then precise BN re-reads the first 2.
    expected = []
    for epoch in range(3):
        order = sampling.shard_indices(NUM_VIDEOS, shuffle=True, seed=0, epoch=epoch, pad=False).tolist()
        batches = [(epoch, order[i : i + 2]) for i in range(0, NUM_VIDEOS, 2)]
        expected.extend(batches + batches[:2])
    assert first_part == expected[:8]
    assert _train_order(memory_data) == expected[8:]
    # Same weights, BN statistics and optimizer momentum.
    assert resumed_state["epoch"] == full_state["epoch"] == 3
    assert resumed_state["iteration"] == full_state["iteration"] == 18
    for key, value in full_state["model"].items():
        torch.testing.assert_close(resumed_state["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    for key, value in full_state["optimizer"]["state"].items():
        torch.testing.assert_close(
            resumed_state["optimizer"]["state"][key]["momentum_buffer"],
            value["momentum_buffer"],
            rtol=1e-5,
            atol=1e-6,
        )
    assert resumed["best_top1"] == pytest.approx(full["best_top1"])


def test_checkpoint_files_and_content(tmp_path, memory_data):
    out = tmp_path / "SlowFast"
    summary = run_train(_argv(out))
    names = sorted(p.name for p in out.iterdir() if p.suffix == ".pt")
    # save_every=2 over 3 epochs: epochs 2 and 3 (the last), keep_last=1 keeps only epoch 3.
    assert names == ["SlowFast_epoch_000003.pt", "best.pt", "latest.pt"]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    state = ckpt.load_checkpoint(out / "latest.pt")
    assert state["format"] == "slowfast-dali/1"
    assert state["model_name"] == "slowfast_tiny" and state["model_args"]["num_classes"] == NUM_CLASSES
    assert state["epoch"] == 3 and state["iteration"] == 3 * 6
    assert state["config"]["train"]["epochs"] == 3
    assert set(state["rng"]["ranks"][0]) == {"python", "numpy", "torch", "cuda"}
    assert state["scheduler"]["iters_per_epoch"] == 6
    best = ckpt.load_checkpoint(out / "best.pt")
    assert best["metrics"]["val"]["top1"] == pytest.approx(summary["best_top1"])
    assert best["epoch"] == summary["best_epoch"]
    # The checkpoint rebuilds its network from model_name/model_args alone.
    import models

    rebuilt = models.model_from_arch(state["model_name"], state["model_args"])
    rebuilt.load_state_dict(state["model"])
    assert (out / "config.yaml").is_file()
    assert load_config(out / "config.yaml").train.epochs == 3
    # -w fine-tunes from it with another class count: everything but the classifier is loaded.
    five = load_config(out / "config.yaml", ["model.num_classes=5"])
    tuned = tr.build_model(five, torch.device("cpu"), weights=str(out / "best.pt")).state_dict()
    for key, value in best["model"].items():
        if key.startswith("head."):
            assert tuned[key].shape[0] == 5
        else:
            torch.testing.assert_close(tuned[key], value.to(tuned[key].dtype), rtol=0, atol=0, msg=key)
    # A second start in the same directory without --resume would overwrite the run: refused, with the fix.
    with pytest.raises(ckpt.CheckpointError, match="--resume"):
        run_train(_argv(out))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, output_dir: str, result_dir: str) -> None:
    os.environ.update(
        CUDA_VISIBLE_DEVICES="",  # gloo on the CPU, also on a GPU host
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    tr.build_loader = memory_build_loader
    real_epoch, real_end = tr.train_one_epoch, tr.end_of_epoch
    result: dict = {}

    def spy_epoch(trainer, epoch):
        result["initial"] = {k: v.clone() for k, v in trainer.bare_model.state_dict().items()}
        summary = real_epoch(trainer, epoch)
        result["after_steps"] = {k: v.clone() for k, v in trainer.bare_model.state_dict().items()}
        return summary

    def spy_end(trainer, epoch, summary):
        real_end(trainer, epoch, summary)
        result["final"] = trainer.bare_model.state_dict()
        result["seen"] = [
            v for loader in LOADERS if loader.split == "train" for _, b in loader.delivered for v in b
        ]
        torch.save(result, Path(result_dir) / f"rank{rank}.pt")

    tr.train_one_epoch, tr.end_of_epoch = spy_epoch, spy_end
    run_train(
        _argv(Path(output_dir), "-o", "train.save_every=1", "-o", "train.precise_bn_batches=0", epochs=1)
    )


def test_ddp_two_processes_on_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # the spawned ranks inherit it: gloo on the CPU
    out, results = tmp_path / "ddp", tmp_path / "results"
    results.mkdir()
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(out), str(results)), nprocs=2, join=True)
    rank0, rank1 = (torch.load(results / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    # Disjoint shards covering the dataset (12 videos, 2 ranks x 3 steps x 2 clips).
    assert set(rank0["seen"]).isdisjoint(rank1["seen"])
    assert sorted(rank0["seen"] + rank1["seen"]) == list(range(NUM_VIDEOS))
    # Same start, different data, yet the same parameters after the steps: gradients were averaged.
    params = dict(models.create_model("slowfast_tiny", num_classes=NUM_CLASSES).named_parameters())
    changed = 0
    for key in params:
        torch.testing.assert_close(rank1["initial"][key], rank0["initial"][key], rtol=0, atol=0)
        torch.testing.assert_close(
            rank1["after_steps"][key], rank0["after_steps"][key], rtol=1e-6, atol=1e-7, msg=key
        )
        changed += int(not torch.equal(rank0["after_steps"][key], rank0["initial"][key]))
    assert changed >= 0.9 * len(params)  # a few may get no gradient (e.g. behind a zero-initialised BN)
    # BN running statistics follow each rank's own batches during the epoch; before validation and saving
    # every rank takes rank 0's, so all ranks evaluate (and rank 0 saves) one model.
    assert any(
        not torch.equal(rank0["after_steps"][k], rank1["after_steps"][k])
        for k in rank0["final"]
        if "running_mean" in k
    )
    for key, value in rank0["final"].items():
        torch.testing.assert_close(rank1["final"][key], value, rtol=1e-6, atol=1e-7, msg=key)
    # Rank 0 alone wrote: one epoch checkpoint, plus latest/best pointing at it.
    files = sorted(p.name for p in out.iterdir() if p.suffix == ".pt")
    assert files == ["best.pt", "ddp_epoch_000001.pt", "latest.pt"]
    saved = ckpt.load_checkpoint(out / "latest.pt")
    for key, value in rank0["final"].items():
        torch.testing.assert_close(saved["model"][key], value, rtol=0, atol=0)
    assert saved["rng"]["world_size"] == 2 and len(saved["rng"]["ranks"]) == 2
    assert len(_iter_records(out)) == 3  # one log line per step, from one rank


class NaNAfter(nn.Module):
    """Wraps a model; turns its output to NaN on the calls listed in ``bad_calls``."""

    def __init__(self, model: nn.Module, bad_calls: set[int]):
        super().__init__()
        self.model, self.bad_calls, self.calls = model, bad_calls, 0

    def forward(self, inputs):
        out = self.model(inputs)
        self.calls += 1
        return out * float("nan") if self.calls in self.bad_calls else out


def _trainer(tmp_path, *extra: str) -> tr.Trainer:
    args = train.parse_args(_argv(tmp_path / "run", *extra))
    cfg = config_from_args(args)
    cfg.train.output_dir = str(tmp_path / "run")
    return tr.build_trainer(cfg, distributed.DistInfo(), validate=False)


def test_nonfinite_loss_skips_the_step_and_counts(tmp_path, memory_data):
    trainer = _trainer(tmp_path)
    trainer.model = NaNAfter(trainer.model, bad_calls={1, 2, 3, 4, 5, 6})
    before = {k: v.clone() for k, v in trainer.bare_model.state_dict().items()}
    summary = tr.train_one_epoch(trainer, 0)
    assert summary["skipped_steps"] == 6 and trainer.nonfinite_total == 6
    for key, value in trainer.bare_model.state_dict().items():
        assert torch.equal(value, before[key]), key  # no step: weights and BN stats untouched...
    assert not trainer.optimizer.state  # ...and no momentum buffer was created
    assert all(p.grad is None for p in trainer.bare_model.parameters())

    # One bad step among good ones: skipped, counted, the streak resets, training goes on.
    trainer = _trainer(tmp_path)
    trainer.model = NaNAfter(trainer.model, bad_calls={2})
    summary = tr.train_one_epoch(trainer, 0)
    assert summary["skipped_steps"] == 1 and trainer.nonfinite_streak == 0
    assert math.isfinite(summary["loss"])


def test_persistent_nonfinite_loss_stops_with_a_clear_message(tmp_path, memory_data, capsys):
    trainer = _trainer(tmp_path, "-o", "train.max_nonfinite=3")
    trainer.model = NaNAfter(trainer.model, bad_calls=set(range(1, 100)))
    with pytest.raises(tr.NonFiniteLossError, match=r"non-finite for 3 consecutive steps.*base_lr"):
        tr.train_one_epoch(trainer, 0)
    assert trainer.iteration == 3

    # Through the command line: one error line, exit status 2, no traceback.
    real_build = tr.build_trainer

    def nan_trainer(*args, **kwargs):
        built = real_build(*args, **kwargs)
        built.model = NaNAfter(built.model, bad_calls=set(range(1, 100)))
        return built

    tr.build_trainer = nan_trainer
    try:
        status = run_cli(train.main, _argv(tmp_path / "cli", "-o", "train.max_nonfinite=2"))
    finally:
        tr.build_trainer = real_build
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("error: the loss was non-finite for 2 consecutive steps") and "Traceback" not in err


def test_cli_rejects_bad_values_with_the_fix(tmp_path, memory_data, capsys):
    assert run_cli(train.main, _argv(tmp_path / "a", "-o", "train.precision=fp8")) == 2
    assert "train.precision='fp8'" in capsys.readouterr().err
    assert run_cli(train.main, _argv(tmp_path / "b", "-o", "train.lr=0.1")) == 2
    assert "did you mean 'train.base_lr'" in capsys.readouterr().err
    assert run_cli(train.main, _argv(tmp_path / "c", "--resume", str(tmp_path / "missing.pt"))) == 2
    assert "missing.pt: no such file" in capsys.readouterr().err
    assert run_cli(train.main, _argv(tmp_path / "d", "-o", "model.name=slowfast_huge")) == 2
    assert "model.name='slowfast_huge'" in capsys.readouterr().err


def test_optimizer_option_selects_adamw_and_rejects_unknown_names(tmp_path, memory_data, capsys):
    cfg = load_config(None, ["model.name=slowfast_tiny", "model.num_classes=3"])
    model = nn.Sequential(nn.Conv3d(3, 4, 1), nn.BatchNorm3d(4))
    assert cfg.train.optimizer == "sgd"
    assert type(tr.build_optimizer(model, cfg, torch.device("cpu"))) is torch.optim.SGD
    cfg = load_config(None, ["train.optimizer=adamw", "train.weight_decay=0.01"])
    optimizer = tr.build_optimizer(model, cfg, torch.device("cpu"))
    assert type(optimizer) is torch.optim.AdamW
    # the same groups as SGD: no decay on BN parameters and biases
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.01, 0.0]
    # a short AdamW run goes through the trainer (schedule, checkpoint with the AdamW state) and learns
    summary = run_train(_argv(tmp_path / "adamw", "-o", "train.optimizer=adamw", "-o", "train.base_lr=0.01",
                               "-o", "train.warmup_start_lr=0.001"))
    assert summary["best_top1"] is not None
    state = torch.load(tmp_path / "adamw" / "latest.pt", map_location="cpu", weights_only=False)
    assert any("exp_avg" in v for v in state["optimizer"]["state"].values())
    assert run_cli(train.main, _argv(tmp_path / "bad", "-o", "train.optimizer=lamb")) == 2
    assert "train.optimizer='lamb'" in capsys.readouterr().err


def test_precise_bn_sets_running_stats_to_the_batch_average_and_keeps_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(2, 3, 1), nn.BatchNorm3d(3), nn.ReLU(), nn.Dropout(0.5))
    model[1].running_mean.fill_(5.0)  # stale statistics the update must replace
    batches = [torch.randn(4, 2, 3, 5, 5) * (i + 1) + i for i in range(3)]
    weights = {
        k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k
    }
    model.eval()

    used = update_bn_stats(
        model,
        [(b,) for b in batches] + [(batches[0] * 100,)],
        num_batches=3,
        forward=lambda m, batch: m(batch[0]),
    )

    assert used == 3
    # Reference: per batch, the mean and unbiased variance of the conv output per channel (numpy), averaged.
    conv_w = model[0].weight.detach().numpy()[:, :, 0, 0, 0]
    conv_b = model[0].bias.detach().numpy()
    means, variances = [], []
    for batch in batches:
        x = np.einsum("oc,nctyx->notyx", conv_w, batch.numpy()) + conv_b[None, :, None, None, None]
        flat = x.transpose(1, 0, 2, 3, 4).reshape(3, -1)
        means.append(flat.mean(axis=1))
        variances.append(flat.var(axis=1, ddof=1))
    np.testing.assert_allclose(model[1].running_mean.numpy(), np.mean(means, axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model[1].running_var.numpy(), np.mean(variances, axis=0), rtol=1e-5, atol=1e-5)
    for key, value in model.state_dict().items():
        if key in weights:
            assert torch.equal(value, weights[key]), key
    assert model[1].momentum == 0.1 and not model.training  # settings restored
    assert int(model[1].num_batches_tracked) == 0  # the training counter is not the precise-BN count


# ---------------------------------------------------------------------------------------------- precision


CPU = torch.device("cpu")


def test_precision_policy_on_the_cpu():
    # The recipe's bf16 runs fp32 on the CPU unless asked for on the command line; fp16 needs a GPU.
    assert resolve_precision("bf16", CPU, explicit=False).dtype is None
    explicit = resolve_precision("bf16", CPU, explicit=True)
    assert (explicit.name, explicit.dtype) == ("bf16", torch.bfloat16)
    assert resolve_precision("fp16", CPU, explicit=False).name == "fp32"
    with pytest.raises(ConfigError, match=r"train.precision=fp16 needs a CUDA GPU"):
        resolve_precision("fp16", CPU, explicit=True)
    with pytest.raises(ConfigError, match=r"test.precision='fp8' is unknown"):
        resolve_precision("fp8", CPU, explicit=True, key="test.precision")
    # only fp16 needs a gradient scaler
    assert not explicit.needs_scaler and explicit.make_scaler() is None
    assert Precision("fp16", "cuda", torch.float16).needs_scaler
    # autocast really is bf16 when asked for, and nothing when fp32
    layer = nn.Linear(4, 2)
    with explicit.autocast():
        assert layer(torch.randn(1, 4)).dtype == torch.bfloat16
    with resolve_precision("bf16", CPU, explicit=False).autocast():
        assert layer(torch.randn(1, 4)).dtype == torch.float32


def test_training_and_test_read_their_own_keys_with_the_same_rule():
    cfg = load_config(None, ["train.precision=bf16"])
    # a command-line train.precision makes training bf16 on the CPU; the test keeps its own key's rule
    assert precision_for(cfg, "train", CPU, {"train.precision"}).name == "bf16"
    assert precision_for(cfg, "train", CPU, set()).name == "fp32"
    assert precision_for(cfg, "test", CPU, {"train.precision"}).name == "fp32"
    assert precision_for(cfg, "test", CPU, {"test.precision"}).name == cfg.test.precision
    # a configuration without test.precision falls back to train.precision, explicit on its key
    del cfg.test["precision"]
    assert precision_for(cfg, "test", CPU, {"train.precision"}).name == "bf16"
    assert overridden_keys(["train.precision=bf16", "data.root = x", "junk"]) == {"train.precision", "data.root"}


def test_fp32_runs_get_fp32_inputs_and_autocast_runs_get_them_as_delivered():
    fast = torch.randn(2, 3, 8, 6, 6).to(torch.bfloat16)  # what DALI delivers with data.dtype=bf16
    slow = fast[:, :, ::4]
    fp32 = resolve_precision("fp32", CPU, explicit=False)
    bf16 = resolve_precision("bf16", CPU, explicit=True)
    out = to_model_inputs([slow, fast], CPU, channels_last=True, precision=fp32)
    assert [x.dtype for x in out] == [torch.float32, torch.float32]
    assert all(x.is_contiguous(memory_format=torch.channels_last_3d) for x in out)
    torch.testing.assert_close(out[1], fast.float(), rtol=0, atol=0)
    kept = to_model_inputs([slow, fast], CPU, channels_last=False, precision=bf16)
    assert [x.dtype for x in kept] == [torch.bfloat16, torch.bfloat16] and kept[1].is_contiguous()


# ---------------------------------------------------------------------------------------------- the step


def test_train_step_is_one_sgd_step_on_the_cross_entropy():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    inputs, labels = torch.randn(4, 12), torch.tensor([0, 2, 1, 2])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    result = tr.train_step(lambda x: model(x[0]), optimizer, [inputs], labels,
                           resolve_precision("fp32", CPU, explicit=False))
    # by hand: softmax cross-entropy gradient (p - onehot) / N, then w -= lr * grad
    w, b = reference["1.weight"].numpy(), reference["1.bias"].numpy()
    logits = inputs.numpy() @ w.T + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    onehot = np.eye(3)[labels.numpy()]
    loss = -np.mean(np.log(p[np.arange(4), labels.numpy()]))
    grad_logits = (p - onehot) / 4
    assert result.applied and result.loss == pytest.approx(loss, rel=1e-5)
    np.testing.assert_allclose(model[1].weight.detach().numpy(), w - 0.5 * grad_logits.T @ inputs.numpy(),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model[1].bias.detach().numpy(), b - 0.5 * grad_logits.sum(0), rtol=1e-5, atol=1e-6)
    assert all(p.grad is None for p in model.parameters())


def test_data_frames_must_fit_the_models_alpha(tmp_path, memory_data):
    with pytest.raises(ConfigError, match=r"data.num_frames=6 is not a multiple of the model's alpha=4"):
        _trainer(tmp_path, "-o", "data.num_frames=6")


@pytest.mark.slow  # torch.compile's first CPU compilation: ~250 s on the project's shared 2-core machine
def test_compiled_training_step_matches_eager_on_cpu():
    cfg = load_config(None, ["model.name=slowfast_tiny", f"model.num_classes={NUM_CLASSES}",
                             f"data.num_frames={FRAMES}", "train.compile=true"])
    cfg.model.args = {"dropout": 0.0}  # compiled code draws dropout masks from another RNG stream than eager
    precision = resolve_precision("fp32", CPU, explicit=False)
    torch.manual_seed(0)
    fast = torch.randn(2, 3, FRAMES, SIZE, SIZE)
    inputs = to_model_inputs([fast[:, :, sampling.slow_indices(FRAMES, 4)], fast], CPU, True, precision)
    labels = torch.tensor([0, 2])
    results = {}
    for compiled in (False, True):
        cfg.train.compile = compiled
        torch.manual_seed(1)
        model = tr.build_model(cfg, CPU)
        optimizer = tr.build_optimizer(model, cfg, CPU)
        step = tr.train_step(tr.wrap_model(model, cfg, distributed.DistInfo()), optimizer, inputs, labels,
                             precision, None, tr.BufferSnapshot(model))
        results[compiled] = (step.loss, {k: v.clone() for k, v in model.state_dict().items()})
    assert results[True][0] == pytest.approx(results[False][0], rel=1e-4)
    for key, value in results[False][1].items():
        torch.testing.assert_close(results[True][1][key], value, rtol=1e-4, atol=1e-5, msg=key)


# NOTE: no CPU SyncBatchNorm test: torch's SyncBatchNorm refuses CPU tensors ("SyncBatchNorm expected input
# tensor to be on GPU", and DDP: "SyncBatchNorm layers only work with GPU modules"; torch 2.13). The gloo
# SyncBatchNorm step is in tests/test_train_gpu.py.


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


# ------------------------------------------------------------- warm-up cap, progress, summary, curves


def test_a_warmup_longer_than_the_run_is_capped_with_one_warning(tmp_path, memory_data):
    out = tmp_path / "short"
    run_train(_argv(out, "-o", "train.warmup_epochs=34", epochs=1))
    log_text = (out / "train.log").read_text()
    assert log_text.count("train.warmup_epochs=34 is longer than 0.5 of train.epochs=1: warming up over 0.5 "
                          "epochs instead") == 1
    # base 0.8 * 2 / 16 = 0.1, start 0.08 * 2 / 16 = 0.01; 6 steps at epochs 0, 1/6, ..., 5/6. Warm-up to
    # cosine(0.5) = 0.05 over 0.5 epoch, then 0.1 * (1 + cos(pi * e)) / 2.
    expected = [0.01, 0.01 + 0.04 / 3, 0.01 + 0.08 / 3, 0.05, 0.025, 0.1 * (1 - math.sqrt(3) / 2) / 2]
    assert [r["lr"] for r in _iter_records(out)] == pytest.approx(expected, rel=1e-9)


def test_progress_on_stderr_and_no_progress_silences_it(tmp_path, memory_data, capsys):
    assert run_cli(train.main, _argv(tmp_path / "shown", epochs=1)) == 0
    err = capsys.readouterr().err.splitlines()
    # stderr is no terminal here: each meter prints its final line (intermediate ones at most every 30 s)
    assert [line.split(" batches")[0] for line in err] == [
        "[TRAIN] epoch 1/1 6/6", "[precise BN] epoch 1 2/2", "[VAL] epoch 1 6/6"]
    assert run_cli(train.main, _argv(tmp_path / "quiet", "--no-progress", epochs=1)) == 0
    assert capsys.readouterr().err == ""


def test_the_run_ends_with_a_summary_block(tmp_path, memory_data):
    out = tmp_path / "run"
    summary = run_train(_argv(out))
    best = ckpt.load_checkpoint(out / "best.pt")["metrics"]
    last = ckpt.load_checkpoint(out / "latest.pt")["metrics"]["val"]
    lines = (out / "train.log").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if "training finished:" in line)
    block = [line.split(" INFO ", 1)[1] for line in lines[start:start + 5]]
    assert block[0].startswith("training finished: 3 epoch(s), 18 iterations in 0:0")
    assert block[0].endswith(f"wall time, {summary['clips_per_s']:.1f} training clips/s")
    # 3 epochs x 12 clips over the summed epoch times
    epochs = [r for r in map(json.loads, (out / "train_log.jsonl").read_text().splitlines()) if r["kind"] == "epoch"]
    assert summary["clips_per_s"] == pytest.approx(36 / sum(r["time_s"] for r in epochs))
    assert block[1] == (f"  best val top-1 {100 * best['best_top1']:.2f}% at epoch {best['best_epoch']}; final val "
                        f"top-1 {100 * last['top1']:.2f}%, top-5 {100 * last['top5']:.2f}% (epoch 3)")
    assert block[2] == f"  checkpoints: {out / 'latest.pt'}, {out / 'best.pt'}, {out / 'run_epoch_000003.pt'}"
    assert block[3] == f"  logs: {out / 'train.log'}, {out / 'train_log.jsonl'}"
    assert block[4] == f"  curves: {out / 'curves.png'}"


def test_curves_png_is_written_after_every_epoch_with_every_epoch_on_it(tmp_path, memory_data, monkeypatch):
    from matplotlib.image import imread

    from engine import plots

    drawn = []
    real_write = plots.write_curves
    monkeypatch.setattr(plots, "write_curves", lambda *a, **k: drawn.append(real_write(*a, **k)) or drawn[-1])
    out = tmp_path / "run"
    run_train(_argv(out))
    png = (out / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert imread(out / "curves.png").shape == (380, 1300, 4)  # figsize 13 x 3.8 at 100 dpi, RGBA
    assert [series.epochs for _, series in drawn] == [[1], [1, 2], [1, 2, 3]]  # redrawn after each epoch
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    series = drawn[-1][1]
    assert series.train_loss == [r["loss"] for r in records if r["kind"] == "epoch"]
    assert series.val_epochs == [1, 2, 3] and series.val_top1 == [r["top1"] for r in records if r["kind"] == "val"]
    assert len(series.lr) == 18 and series.lr_x[:2] == pytest.approx([1 / 6, 2 / 6])
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_curves_read_a_resumed_log_once_per_epoch(tmp_path):
    from engine.plots import read_series

    log_file = tmp_path / "train_log.jsonl"
    lines = [
        {"kind": "start", "epoch": 0},
        {"kind": "epoch", "epoch": 1, "loss": 2.0, "top1": 0.1},
        {"kind": "val", "epoch": 1, "loss": 2.1, "top1": 0.2, "top5": 0.5},
        {"kind": "epoch", "epoch": 2, "loss": 1.5, "top1": 0.3},  # logged, then the process died before its save
        {"kind": "start", "epoch": 1},  # resumed from epoch 1's checkpoint: epoch 2 is trained again
        {"kind": "epoch", "epoch": 2, "loss": 1.4, "top1": 0.35},
        {"kind": "epoch", "epoch": 3, "loss": 1.0, "top1": 0.5},
    ]
    log_file.write_text("\n".join(json.dumps(r) for r in lines) + "\n{\"kind\": \"ep")  # a line cut by a crash
    series = read_series(log_file)
    assert series.epochs == [1, 2, 3] and series.train_loss == [2.0, 1.4, 1.0]
    assert series.val_epochs == [1] and series.val_top1 == [0.2]
    # a fresh run (--overwrite) in the same folder starts the curves anew
    with log_file.open("a") as handle:
        handle.write("\n" + json.dumps({"kind": "start", "epoch": 0}) + "\n"
                     + json.dumps({"kind": "epoch", "epoch": 1, "loss": 9.0, "top1": 0.0}) + "\n")
    assert read_series(log_file).train_loss == [9.0]


def test_without_matplotlib_the_curves_are_skipped_with_one_line(tmp_path, memory_data, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)  # import fails
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    out = tmp_path / "run"
    summary = run_train(_argv(out, epochs=2))
    assert not (out / "curves.png").exists() and summary["curves"] is None
    assert (out / "train.log").read_text().count("curves: skipped, matplotlib is not installed") == 1


# ------------------------------------------------------------- the CPU recipe on a folder of your own videos


def test_cpu_recipe_trains_on_a_folder_tree_with_two_commands(tmp_path):
    """The two commands of the README's "Train on your own videos": prepare --from-tree, then train.py with the
    CPU recipe and data.root alone; the class count comes from the generated classes.txt (3), not a config."""
    import subprocess

    from pipelines.synthetic import render_video, video_spec
    from pipelines.video_io import write_video

    root = tmp_path / "my videos"
    for split, per_class in (("train", 2), ("val", 1)):
        for label, name in enumerate(("cat", "dog", "fish")):
            for i in range(per_class):
                spec = video_spec(0, split, label * 10 + i, label, 48, 32, 12)
                write_video(root / split / name / f"{name}_{i}.webm", render_video(spec), fps=30)
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    repo = Path(__file__).resolve().parents[1]
    prepare = subprocess.run([sys.executable, "-m", "pipelines.prepare", "--root", str(root), "--from-tree",
                              "--quiet"], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert prepare.returncode == 0, prepare.stderr
    assert (root / "classes.txt").read_text().split() == ["cat", "dog", "fish"]
    out = tmp_path / "run"
    trained = subprocess.run(
        [sys.executable, "train.py", "--validate", "--no-progress", "-c",
         "configs/recognition/slowfast/slowfast_tiny_cpu.yaml", "-o", f"data.root={root}", "-o", "train.epochs=1",
         "-o", "data.batch_size=2", "-o", "data.num_workers=0", "-o", "train.precise_bn_batches=1",
         "--output-dir", str(out)], cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    state = ckpt.load_checkpoint(out / "latest.pt")
    assert state["model_name"] == "slowfast_tiny" and state["model_args"]["num_classes"] == 3
    assert state["config"]["data"]["train_list"] == str(root / "train.list")
    assert state["config"]["data"]["backend"] == "pyav" and state["epoch"] == 1
    assert (out / "best.pt").is_file() and (out / "curves.png").is_file()
