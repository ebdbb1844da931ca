"""The bottom layer: atomic writes, the progress meter, core counting, the user-error CLI wrapper."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from utils import atomic, cpus
from utils.errors import UserError, run_cli
from utils.progress import Progress, format_duration

REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------- atomic

def test_write_text_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "metrics.json"
    atomic.write_text(target, "first")
    atomic.write_text(target, "second")
    assert target.read_text() == "second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["metrics.json"]


def test_failed_write_keeps_the_previous_file_and_removes_the_temp(tmp_path):
    target = tmp_path / "latest.pt"
    target.write_bytes(b"old checkpoint")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic.atomic_open(target, "wb") as handle:
            handle.write(b"half of a new one")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]


def test_two_writers_never_share_a_temporary_name(tmp_path):
    target = tmp_path / "index.jsonl"
    with atomic.atomic_path(target) as first, atomic.atomic_path(target) as second:
        assert first != second
        assert first.parent == second.parent == tmp_path
        first.write_text("a")
        second.write_text("b")
    assert target.read_text() in ("a", "b")


def test_stale_temp_of_a_killed_writer_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "best.pt"
    # a writer that dies between creating its temp file and renaming it (as under kill -9)
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(REPO)!r})
        from utils import atomic
        with atomic.atomic_path({str(target)!r}) as tmp:
            tmp.write_bytes(b"x" * 1000)
            os._exit(9)
    """)
    status = subprocess.run([sys.executable, "-c", script]).returncode
    assert status == 9
    orphans = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(orphans) == 1 and orphans[0].name.startswith(".best.pt.")
    # a live writer's temp (this process's pid) must survive a concurrent write
    mine = tmp_path / f".best.pt.{atomic._HOST}.{os.getpid()}.00000000.tmp"
    mine.write_bytes(b"in progress")
    atomic.write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["best.pt", mine.name])


def test_new_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic.write_text(tmp_path / "config.yaml", "a: 1\n")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_atomic_copy_makes_an_identical_file(tmp_path):
    src = atomic.write_bytes(tmp_path / "epoch_5.pt", b"weights")
    dst = atomic.atomic_copy(src, tmp_path / "best.pt")
    assert dst.read_bytes() == b"weights"


def test_full_disk_names_the_path_and_keeps_the_old_file(tmp_path):
    """A file-size limit stands in for a full disk: the write fails with EFBIG, the old file survives."""
    target = tmp_path / "latest.pt"
    target.write_bytes(b"old")
    script = textwrap.dedent(f"""
        import resource, signal, sys
        sys.path.insert(0, {str(REPO)!r})
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        from utils import atomic
        try:
            atomic.write_bytes({str(target)!r}, b"y" * 100000)
        except OSError as err:
            print("ERR", err)
            sys.exit(3)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 3, result.stderr
    assert str(target) in result.stdout and "previous file" in result.stdout
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]


# ---------------------------------------------------------------------------------------------- progress

class _Stream(io.StringIO):
    def isatty(self) -> bool:
        return False


def test_format_duration():
    assert format_duration(3725) == "1:02:05"
    assert format_duration(59.6) == "0:01:00"
    assert format_duration(float("nan")) == "?"
    assert format_duration(-1) == "?"


def test_progress_throttles_in_logs_and_always_prints_the_final_line():
    stream = _Stream()
    progress = Progress(10, "[TEST]", unit="videos", stream=stream, log_interval=3600)
    for _ in range(10):
        progress.update()
    assert stream.getvalue() == ""  # inside the log interval: nothing yet
    progress.close()
    progress.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("[TEST] 10/10 videos")
    assert "ETA" not in lines[0]


def test_progress_eta_from_rate():
    progress = Progress(100, "probing", enabled=False)
    progress.done = 25
    progress.start -= 10.0  # 25 done in 10 s: 2.5/s, 75 left -> 30 s
    assert progress.eta() == pytest.approx(30.0, rel=0.05)


def test_disabled_progress_prints_nothing():
    stream = _Stream()
    with Progress(3, "x", enabled=False, stream=stream, log_interval=0) as progress:
        progress.update(3)
    assert stream.getvalue() == ""


# ---------------------------------------------------------------------------------------------- cpus

def test_cores_are_divided_among_the_local_ranks(monkeypatch):
    monkeypatch.setattr(cpus, "available_cores", lambda: 16)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert cpus.cores_per_rank() == 2
    assert cpus.worker_count(None) == 2
    assert cpus.worker_count(5) == 5
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")
    assert cpus.cores_per_rank() == 1
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert cpus.worker_count(None) == 16


# ---------------------------------------------------------------------------------------------- errors

def test_run_cli_maps_user_errors_to_status_2(capsys):
    def bad(argv):
        raise UserError("data.batch_size=0 must be a positive integer")

    assert run_cli(bad, []) == 2
    assert capsys.readouterr().err == "error: data.batch_size=0 must be a positive integer\n"
    assert run_cli(lambda argv: None, []) == 0
    assert run_cli(lambda argv: 1, []) == 1


def test_run_cli_lets_bugs_keep_their_traceback():
    def buggy(argv):
        raise KeyError("not a user error")

    with pytest.raises(KeyError):
        run_cli(buggy, [])
