"""Checkpoint files: atomic writes survive interruption, pruning, naming, RNG round trip, format checks, and
checkpoints written by earlier versions still load."""

from __future__ import annotations

import dataclasses
import os
import random
import tempfile

import numpy as np
import pytest
import torch

import models
from engine import checkpoint as ckpt
from models import checkpoint_format
from utils import atomic
from utils.atomic import atomic_copy


def _state(value: float) -> dict:
    return {
        "format": ckpt.CHECKPOINT_FORMAT,
        "model": {"w": torch.full((64, 64), value)},
        "epoch": int(value),
    }


def test_interrupted_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    target = tmp_path / "latest.pt"
    ckpt.save_checkpoint(_state(1.0), target)
    real_save = torch.save

    def save_half_then_die(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 partial bytes of a zip archive")  # what a killed writer leaves behind
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", save_half_then_die)
    with pytest.raises(OSError, match="simulated"):
        ckpt.save_checkpoint(_state(2.0), target)
    monkeypatch.setattr(torch, "save", real_save)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pt"]  # no partial file, no temp left over
    state = ckpt.load_checkpoint(target)
    assert state["epoch"] == 1 and torch.equal(state["model"]["w"], torch.full((64, 64), 1.0))


def test_interrupted_copy_leaves_best_intact(tmp_path, monkeypatch):
    first, second = tmp_path / "a.pt", tmp_path / "b.pt"
    ckpt.save_checkpoint(_state(1.0), first)
    ckpt.save_checkpoint(_state(2.0), second)
    best = atomic_copy(first, tmp_path / "best.pt")
    assert ckpt.load_checkpoint(best)["epoch"] == 1

    def fail(*args, **kwargs):
        raise OSError("killed (simulated)")

    monkeypatch.setattr(atomic.os, "replace", fail)
    with pytest.raises(OSError, match="simulated"):
        atomic_copy(second, best)
    monkeypatch.undo()
    assert ckpt.load_checkpoint(best)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "b.pt", "best.pt"]
    # A hard-linked best.pt survives its source being pruned.
    first.unlink()
    assert ckpt.load_checkpoint(best)["epoch"] == 1


def test_names_pruning_and_latest_lookup(tmp_path):
    run = tmp_path / "SlowFast"
    run.mkdir()
    assert ckpt.checkpoint_prefix(run) == "SlowFast"
    assert ckpt.checkpoint_prefix(tmp_path / "my run!") == "my_run"
    assert ckpt.epoch_checkpoint_name("SlowFast", 196) == "SlowFast_epoch_000196.pt"
    assert ckpt.find_latest(run) is None
    for epoch in (5, 10, 15, 20):
        ckpt.save_checkpoint(_state(epoch), run / ckpt.epoch_checkpoint_name("SlowFast", epoch))
    (run / "other_epoch_000001.pt").write_bytes(b"not ours")
    assert ckpt.find_latest(run) == run / "SlowFast_epoch_000020.pt"  # no latest.pt: the newest epoch file
    removed = ckpt.prune_epoch_checkpoints(run, "SlowFast", keep_last=2)
    assert sorted(p.name for p in removed) == ["SlowFast_epoch_000005.pt", "SlowFast_epoch_000010.pt"]
    assert sorted(p.name for p in run.iterdir()) == [
        "SlowFast_epoch_000015.pt",
        "SlowFast_epoch_000020.pt",
        "other_epoch_000001.pt",
    ]
    atomic_copy(run / "SlowFast_epoch_000015.pt", run / "latest.pt")
    assert ckpt.find_latest(run) == run / "latest.pt"


def test_rng_state_round_trip_through_a_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.random(), np.random.rand(), torch.rand(1)  # move every stream off its seed
    ckpt.save_checkpoint({"format": ckpt.CHECKPOINT_FORMAT, "rng": ckpt.rng_state()}, tmp_path / "r.pt")
    expected = (random.random(), np.random.rand(), np.random.randn(), torch.rand(3))
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    ckpt.set_rng_state(ckpt.load_checkpoint(tmp_path / "r.pt")["rng"])  # loads with weights_only=True
    again = (random.random(), np.random.rand(), np.random.randn(), torch.rand(3))
    assert again[:3] == expected[:3] and torch.equal(again[3], expected[3])


def test_foreign_or_broken_files_are_refused_with_the_fix(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.load_checkpoint(tmp_path / "missing.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pth")
    with pytest.raises(ckpt.CheckpointError, match=r"not a training checkpoint.*use -w"):
        ckpt.load_checkpoint(tmp_path / "other.pth")
    (tmp_path / "cut.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ckpt.CheckpointError, match="cannot be read"):
        ckpt.load_checkpoint(tmp_path / "cut.pt")


def test_one_definition_of_the_format():
    # engine.checkpoint and models (weights loading) share models.checkpoint_format's constant; the string
    # itself is the on-disk format of every checkpoint written so far and must not change.
    assert ckpt.CHECKPOINT_FORMAT is checkpoint_format.CHECKPOINT_FORMAT is models.CHECKPOINT_FORMAT
    assert checkpoint_format.CHECKPOINT_FORMAT == "slowfast-dali/1"
    assert not hasattr(ckpt, "atomic_save")  # writes go through utils.atomic


def _old_way_checkpoint(path, model) -> dict:
    """A training checkpoint as the previous version wrote it: the dict spelled out by hand (no
    make_checkpoint), saved with a plain torch.save into a mkstemp file, then renamed."""
    state = {
        "format": "slowfast-dali/1",
        "model": model.state_dict(),
        "model_name": model.model_name,
        "model_args": dataclasses.asdict(model.arch),
        "epoch": 4,
        "iteration": 24,
        "optimizer": torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9).state_dict(),
        "scaler": None,
        "scheduler": {"epoch": 4.0, "iters_per_epoch": 6, "lr": 0.05},
        "config": {"train": {"epochs": 10}},
        "rng": {"world_size": 1, "ranks": [ckpt.rng_state()]},
        "metrics": {"train": {}, "val": None, "best_top1": 0.5, "best_epoch": 4},
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as handle:
        torch.save(state, handle)
    os.replace(tmp, path)
    return state


def test_checkpoint_written_by_the_previous_version_loads(tmp_path):
    torch.manual_seed(0)
    source = models.create_model("slowfast_tiny", num_classes=3)
    path = tmp_path / "old.pt"
    written = _old_way_checkpoint(path, source)
    # read back as a training checkpoint (what --resume does) ...
    state = ckpt.load_checkpoint(path)
    assert state["epoch"] == 4 and state["iteration"] == 24 and state["metrics"]["best_epoch"] == 4
    assert set(state) == set(written)
    # ... with the same keys the current writer produces ...
    assert set(checkpoint_format.make_checkpoint(model_state={}, model_name="x", model_args={}, epoch=0,
                                                 iteration=0)) == set(written)
    # ... its architecture record (what test.py rebuilds from) ...
    assert ckpt.read_model_spec(path) == ("slowfast_tiny", dataclasses.asdict(source.arch))
    # ... and its weights, through models.load_weights, equal to the source's
    target = models.model_from_arch(*ckpt.read_model_spec(path))
    report = models.load_weights(target, path)
    assert report.source_format == "slowfast-dali" and report.complete
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_a_future_format_is_refused_by_both_readers(tmp_path):
    model = models.create_model("slowfast_tiny", num_classes=3)
    torch.save({"format": "slowfast-dali/2", "model": model.state_dict()}, tmp_path / "future.pt")
    with pytest.raises(ckpt.CheckpointError, match="slowfast-dali/2"):
        ckpt.load_checkpoint(tmp_path / "future.pt")
    with pytest.raises(models.WeightsError, match=r"'slowfast-dali/2'; this version reads 'slowfast-dali/1'"):
        models.load_weights(model, tmp_path / "future.pt")
    assert ckpt.read_model_spec(tmp_path / "future.pt") is None


def test_saved_config_of_a_checkpoint_and_none_for_other_files(tmp_path):
    from engine.checkpoint import saved_config
    from models.checkpoint_format import CHECKPOINT_FORMAT

    state = {"format": CHECKPOINT_FORMAT, "model": {"w": torch.zeros(1)}, "model_name": "slowfast_tiny",
             "model_args": {"alpha": 4}, "config": {"train": {"epochs": 3}, "model": {"name": "slowfast_tiny"}}}
    torch.save(state, tmp_path / "best.pt")
    assert saved_config(tmp_path / "best.pt") == {"train": {"epochs": 3}, "model": {"name": "slowfast_tiny"}}
    torch.save({"w": torch.zeros(1)}, tmp_path / "bare.pt")  # a bare state dict carries no configuration
    assert saved_config(tmp_path / "bare.pt") is None
    (tmp_path / "x.pdparams").write_bytes(b"\x80\x04N.")
    assert saved_config(tmp_path / "x.pdparams") is None
    assert saved_config(tmp_path / "missing.pt") is None
