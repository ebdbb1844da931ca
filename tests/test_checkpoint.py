"""Checkpoint files: atomic writes survive interruption, pruning, naming, RNG round trip, format checks."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from engine import checkpoint as ckpt


def _state(value: float) -> dict:
    return {
        "format": ckpt.CHECKPOINT_FORMAT,
        "model": {"w": torch.full((64, 64), value)},
        "epoch": int(value),
    }


def test_interrupted_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    target = tmp_path / "latest.pt"
    ckpt.atomic_save(_state(1.0), target)
    real_save = torch.save

    def save_half_then_die(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 partial bytes of a zip archive")  # what a killed writer leaves behind
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", save_half_then_die)
    with pytest.raises(OSError, match="simulated"):
        ckpt.atomic_save(_state(2.0), target)
    monkeypatch.setattr(torch, "save", real_save)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pt"]  # no partial file, no temp left over
    state = ckpt.load_checkpoint(target)
    assert state["epoch"] == 1 and torch.equal(state["model"]["w"], torch.full((64, 64), 1.0))


def test_interrupted_copy_leaves_best_intact(tmp_path, monkeypatch):
    first, second = tmp_path / "a.pt", tmp_path / "b.pt"
    ckpt.atomic_save(_state(1.0), first)
    ckpt.atomic_save(_state(2.0), second)
    best = ckpt.atomic_copy(first, tmp_path / "best.pt")
    assert ckpt.load_checkpoint(best)["epoch"] == 1

    def fail(*args, **kwargs):
        raise OSError("killed (simulated)")

    monkeypatch.setattr(ckpt.os, "replace", fail)
    with pytest.raises(OSError, match="simulated"):
        ckpt.atomic_copy(second, best)
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
        ckpt.atomic_save(_state(epoch), run / ckpt.epoch_checkpoint_name("SlowFast", epoch))
    (run / "other_epoch_000001.pt").write_bytes(b"not ours")
    assert ckpt.find_latest(run) == run / "SlowFast_epoch_000020.pt"  # no latest.pt: the newest epoch file
    removed = ckpt.prune_epoch_checkpoints(run, "SlowFast", keep_last=2)
    assert sorted(p.name for p in removed) == ["SlowFast_epoch_000005.pt", "SlowFast_epoch_000010.pt"]
    assert sorted(p.name for p in run.iterdir()) == [
        "SlowFast_epoch_000015.pt",
        "SlowFast_epoch_000020.pt",
        "other_epoch_000001.pt",
    ]
    ckpt.atomic_copy(run / "SlowFast_epoch_000015.pt", run / "latest.pt")
    assert ckpt.find_latest(run) == run / "latest.pt"


def test_rng_state_round_trip_through_a_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.random(), np.random.rand(), torch.rand(1)  # move every stream off its seed
    ckpt.atomic_save({"format": ckpt.CHECKPOINT_FORMAT, "rng": ckpt.rng_state()}, tmp_path / "r.pt")
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
