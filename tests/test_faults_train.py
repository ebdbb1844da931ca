"""Training faults end to end, through the command line where a user meets them: a run resumed with its own
configuration (and a model change refused), a locked or already used output directory, a full disk while a
checkpoint is written, a process killed inside a checkpoint write. Every test also checks that the files
written before are byte-identical afterwards.

The runs use the in-memory loader of ``tests/test_train.py`` (no decoding); the faults that need their own
process (a file-size limit, SIGKILL, a second lock holder) run in a subprocess that installs the same loader.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import train
from engine import checkpoint as ckpt
from test_train import NUM_CLASSES, _argv, memory_data, run_train  # noqa: F401  (memory_data: a fixture)
from utils.errors import run_cli

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

# A training process with the in-memory loader; FAULT picks what goes wrong in it.
CHILD = textwrap.dedent(f"""
    import os, resource, signal, sys
    sys.path[:0] = [{str(REPO)!r}, {str(TESTS)!r}]
    import torch
    torch.set_num_threads(1)
    import test_train, train
    from engine import trainer
    from utils.errors import run_cli
    trainer.build_loader = test_train.memory_build_loader
    fault = os.environ.get("FAULT", "")
    if fault.startswith("fsize:"):  # a file-size limit: writes beyond it fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        limit = int(fault.split(":")[1])
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    elif fault.startswith("kill-in-save:"):  # SIGKILL in the middle of the N-th checkpoint write
        nth, real_save, calls = int(fault.split(":")[1]), torch.save, [0]
        def save(obj, handle, *args, **kwargs):
            calls[0] += 1
            if calls[0] == nth:
                handle.write(b"half a checkpoint" * 4096)
                handle.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            return real_save(obj, handle, *args, **kwargs)
        torch.save = save
    sys.exit(run_cli(train.main, sys.argv[1:]))
""")


def run_child(argv: list[str], fault: str = "") -> subprocess.CompletedProcess:
    env = dict(os.environ, FAULT=fault, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, "-c", CHILD, *argv], env=env, capture_output=True, text=True,
                          timeout=300, cwd=REPO)


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every regular file's bytes (logs excluded: a later run appends to them by design)."""
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())
            if p.is_file() and p.name not in ("train.log", "train_log.jsonl", ".lock")}


def temps(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


# ------------------------------------------------------------------------- A: runs carry their configuration


def test_resume_without_c_takes_the_checkpoints_configuration(tmp_path, memory_data):
    run = tmp_path / "run"
    run_train(_argv(run, epochs=1))
    # No -c and no model/data overrides: without the saved configuration this would build the default
    # slowfast_r50_4x16 with 400 classes and be refused; with it the run continues, in the checkpoint's folder.
    summary = run_train(["--validate", "--resume", str(run / "latest.pt"), "-o", "train.epochs=2"])
    assert summary["output_dir"] == str(run) and summary["epochs"] == 2
    state = ckpt.load_checkpoint(run / "latest.pt")
    assert state["config"]["model"]["name"] == "slowfast_tiny"
    assert state["config"]["model"]["num_classes"] == NUM_CLASSES
    assert state["config"]["train"]["epochs"] == 2 and state["config"]["train"]["base_lr"] == 0.8
    # --resume without a value + --output-dir: the same, from RUN/latest.pt
    summary = run_train(["--validate", "--resume", "--output-dir", str(run), "-o", "train.epochs=3"])
    assert summary["epochs"] == 3 and summary["iteration"] == 3 * 6


def test_resume_refuses_another_class_count_naming_both_values(tmp_path, memory_data, capsys):
    run = tmp_path / "run"
    run_train(_argv(run, epochs=1))
    before = snapshot(run)
    latest = run / "latest.pt"
    capsys.readouterr()  # the first run's progress lines
    status = run_cli(train.main, ["--resume", str(latest), "-o", "model.num_classes=5", "-o", "train.epochs=2"])
    err = capsys.readouterr().err
    assert status == 2
    assert err == (f"error: --resume {latest}: model.num_classes=3 in the checkpoint, 5 now; a resumed run keeps "
                   f"its model: drop the change (without -c, --resume starts from the checkpoint's own "
                   f"configuration), or start a new run from its weights with -w {latest} --output-dir NEW_DIR\n")
    status = run_cli(train.main, ["--resume", str(latest), "-o", "model.name=slowfast_r50_4x16"])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith(
        f"error: --resume {latest}: model.name='slowfast_tiny' in the checkpoint, 'slowfast_r50_4x16' now;")
    assert snapshot(run) == before


# ------------------------------------------------------------------------------- E: the output directory


def test_a_second_run_into_a_locked_directory_fails_at_once_naming_the_holder(tmp_path, memory_data, capsys):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[2]); "
         "from engine.checkpoint import lock_output_dir; lock = lock_output_dir(sys.argv[1], 'train.py holder'); "
         "print('locked', flush=True); time.sleep(300)", str(run), str(REPO)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        start = time.monotonic()
        status = run_cli(train.main, _argv(run, epochs=1))
        err = capsys.readouterr().err
        assert status == 2 and time.monotonic() - start < 10
        assert err.startswith(f"error: {str(run)!r} is in use by another training run (pid {holder.pid} on "
                              f"{socket.gethostname()}, started ")
        assert err.endswith(": train.py holder); wait for it to finish or stop it, or choose another directory "
                            "with --output-dir DIR\n")
        assert not [p for p in run.iterdir() if p.name != ".lock"]  # nothing written: no log, no config
    finally:
        holder.kill()  # a dead holder's lock is free: flock dies with the process
        holder.wait()
    summary = run_train(_argv(run, epochs=1))
    assert summary["epochs"] == 1
    assert "pid" in (run / ".lock").read_text()


def test_a_fresh_run_refuses_a_directory_with_only_best_pt(tmp_path, memory_data, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes(b"an earlier run's best checkpoint")
    status = run_cli(train.main, _argv(run, epochs=1))
    err = capsys.readouterr().err
    assert status == 2
    assert err == (f"error: {run} already holds a run (best.pt); pass --resume to continue it, --overwrite to start "
                   f"a new run that writes over it, or choose another directory with --output-dir (or "
                   f"-o train.output_dir=...) to start a new one\n")
    # --resume has nothing to continue there (no latest.pt): refused too, not a silent fresh start over best.pt
    status = run_cli(train.main, _argv(run, "--resume", epochs=1))
    err = capsys.readouterr().err
    assert status == 2
    assert err == (f"error: --resume: {run} holds best.pt but no latest.pt or epoch file of this directory to "
                   f"continue from; resume from one of them with --resume {run / 'best.pt'}, or pass --overwrite "
                   f"to start a new run there\n")
    assert (run / "best.pt").read_bytes() == b"an earlier run's best checkpoint"
    assert sorted(p.name for p in run.iterdir()) == [".lock", "best.pt", "train.log"]


def test_overwrite_writes_over_but_never_prunes_the_earlier_runs_epoch_files(tmp_path, memory_data):
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes(b"old best")
    (run / "run_epoch_000009.pt").write_bytes(b"old epoch 9")
    summary = run_train(_argv(run, "--overwrite"))  # 3 epochs, save_every=2, keep_last=1
    assert summary["epochs"] == 3
    # keep_last=1 among this run's files (epoch 2 removed, epoch 3 kept); the old epoch 9 would have been the
    # "newest" by number and kept in their place, had it been counted.
    assert sorted(p.name for p in run.glob("*.pt")) == ["best.pt", "latest.pt", "run_epoch_000003.pt",
                                                       "run_epoch_000009.pt"]
    assert (run / "run_epoch_000009.pt").read_bytes() == b"old epoch 9"
    assert ckpt.load_checkpoint(run / "best.pt")["epoch"] >= 1  # written over, as --overwrite allows


def test_output_dir_naming_a_file_is_one_line(tmp_path, memory_data, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    status = run_cli(train.main, _argv(target, epochs=1))
    assert status == 2
    assert capsys.readouterr().err == (
        f"error: {str(target)!r} (the output directory) is an existing file, not a directory; choose a directory "
        f"with --output-dir DIR (or -o train.output_dir=DIR)\n")
    assert target.read_text() == "keep me"


# ------------------------------------------------------------------------------------ F: disk full


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint_and_stops_in_one_line(tmp_path, memory_data):
    run = tmp_path / "run"
    run_train(_argv(run, epochs=1))
    before = snapshot(run)
    assert (run / "latest.pt").stat().st_size > 1_000_000  # slowfast_tiny + momentum: well above the limit
    # The resumed run (its configuration from the checkpoint, A) trains epoch 2, then cannot write its checkpoint:
    # every file is limited to 256 KiB (the logs and config.yaml stay far below).
    result = run_child(["--validate", "--no-progress", "--resume", str(run / "latest.pt"), "-o", "train.epochs=2"],
                       fault=f"fsize:{256 * 1024}")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    epoch_file = run / "run_epoch_000002.pt"
    assert lines[0].startswith(f"error: checkpoint of epoch 2 not saved: cannot write {str(epoch_file)!r}: "
                               f"File too large; ")
    assert " MiB free there; the previous file (if any) is intact; free some space or write elsewhere; " \
           f"resume later with --resume (from {run / 'latest.pt'})" in lines[0]
    after = snapshot(run)
    assert after["latest.pt"] == before["latest.pt"] and after["best.pt"] == before["best.pt"]
    assert "run_epoch_000002.pt" not in after and temps(run) == []


# ---------------------------------------------------------------------------- G: killed inside a save


def test_a_process_killed_inside_a_save_leaves_no_orphan_and_resumes_exactly(tmp_path, memory_data):
    full, cut = tmp_path / "full", tmp_path / "cut"
    run_train(_argv(full))  # the uninterrupted 3-epoch run
    reference = torch.load(full / "latest.pt", weights_only=True)
    # The same run, killed (SIGKILL) halfway through its second checkpoint write (epoch 2's numbered file).
    result = run_child(_argv(cut, "--no-progress"), fault="kill-in-save:2")
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    orphans = temps(cut)
    assert len(orphans) == 1 and orphans[0].startswith(".cut_epoch_000002.pt.")
    assert ckpt.load_checkpoint(cut / "latest.pt")["epoch"] == 1  # the previous checkpoint is whole
    resumed = run_train(_argv(cut, "--resume"))
    assert resumed["epochs"] == 3 and temps(cut) == []
    state = torch.load(cut / "latest.pt", weights_only=True)
    assert (state["epoch"], state["iteration"]) == (reference["epoch"], reference["iteration"]) == (3, 18)
    for key, value in reference["model"].items():
        torch.testing.assert_close(state["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)
