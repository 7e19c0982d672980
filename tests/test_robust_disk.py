"""A full disk or a file-size limit while checkpointing: one line naming the file and the room it
needs; the previous checkpoint and latest.json stay valid and no temporary file is left (issue 19.2).
The same for the logs (metrics.jsonl, TensorBoard) written mid-run."""

from __future__ import annotations

import errno
import os
import resource
import subprocess
import sys
import threading

import pytest

from kdsr import files, hookimpl
from kdsr.cli import main
from kdsr.errors import KdsrError
from kdsr.rundir import read_records
from tests.robust_kit import extra_plugin, fails, latest_step, one_stage


class _DiskFillsAt:
    """Makes every later fsync fail with ENOSPC once step ``at`` has run (the disk is full)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, at: int) -> None:
        self.monkeypatch, self.at = monkeypatch, at

    @hookimpl
    def after_step(self, run, step, losses):
        if step == self.at:
            def full(fd: int) -> None:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            self.monkeypatch.setattr(files.os, "fsync", full)


def _no_temporaries(run_dir) -> None:
    left = [p for p in run_dir.rglob("*") if p.name.endswith(".tmp")]
    assert not left, left


def test_full_disk_while_checkpointing(tmp_path, capsys, monkeypatch):
    cfg = one_stage(tmp_path, steps=6, checkpoint_every=2)
    folder = tmp_path / "run" / "checkpoints" / "teacher"
    with extra_plugin(_DiskFillsAt(monkeypatch, at=3), "disk"):
        fails(capsys, ["run", str(cfg), "--quiet"], str(folder / "step-4.safetensors"), "no space left", "free", "step 2 is kept")
    assert latest_step(folder) == 2
    assert sorted(p.name for p in folder.iterdir()) == ["latest.json", "step-2.safetensors", "step-2.state.pt"]
    _no_temporaries(tmp_path / "run")
    monkeypatch.undo()  # room again: the run continues from step 2
    assert main(["run", str(cfg), "--resume", "--quiet"]) == 0


def test_file_size_limit_in_a_subprocess(tmp_path, capsys):
    cfg = one_stage(tmp_path, steps=6, checkpoint_every=2)
    folder = tmp_path / "run" / "checkpoints" / "teacher"

    class Stop:
        @hookimpl
        def after_step(self, run, step, losses):
            if step == 2:
                raise KdsrError("stop")

    with extra_plugin(Stop(), "stop"):
        fails(capsys, ["run", str(cfg), "--quiet"], "stop")
    assert latest_step(folder) == 2
    limit = 8 * 1024  # below one checkpoint (~16 KB of weights), above the logs and the config

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    out = subprocess.run(
        [sys.executable, "-m", "kdsr", "run", str(cfg), "--resume", "--quiet"],
        capture_output=True, text=True, preexec_fn=cap, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300,
    )
    assert out.returncode == 2, out.stderr
    line = out.stderr.strip().splitlines()[-1]
    assert "Traceback" not in out.stderr and "step-4.safetensors" in line and "file-size limit" in line, line
    assert "the limit allows 8.0 KB" in line and "step 2 is kept" in line
    assert latest_step(folder) == 2
    _no_temporaries(tmp_path / "run")


def test_write_atomic_keeps_the_old_file_and_removes_its_temporary(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    files.write_atomic(target, b"old")

    def too_big(fd: int) -> None:
        raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))

    monkeypatch.setattr(files.os, "fsync", too_big)
    with pytest.raises(KdsrError, match=r"could not write '.*f\.bin': file-size limit reached \(it needs 3 B"):
        files.write_atomic(target, b"new")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


# ---------------------------------------------------------------- the logs: metrics.jsonl and TensorBoard


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class _LogsFillAt:
    """Once step ``at`` has run, appending to ``metrics.jsonl`` (``what="metrics"``) or to TensorBoard's
    event file (``what="tensorboard"``) fails with ENOSPC."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, at: int, what: str) -> None:
        self.monkeypatch, self.at, self.what = monkeypatch, at, what

    @hookimpl
    def after_step(self, run, step, losses):
        if step != self.at:
            return
        if self.what == "metrics":
            from kdsr.engine import logger

            def full(path, *args, **kwargs):
                if str(path).endswith("metrics.jsonl"):
                    _enospc()
                return open(path, *args, **kwargs)

            self.monkeypatch.setattr(logger, "open", full, raising=False)
        else:
            from tensorboard.compat.tensorflow_stub.io import gfile

            self.monkeypatch.setattr(gfile.LocalFileSystem, "append", _enospc)


def test_full_disk_while_logging_metrics(tmp_path, capsys, monkeypatch):
    cfg = one_stage(tmp_path, steps=6, checkpoint_every=2)  # logs at steps 2, 4, 6: step 4's record fails
    folder = tmp_path / "run" / "checkpoints" / "teacher"
    with extra_plugin(_LogsFillAt(monkeypatch, at=3, what="metrics"), "disk"):
        fails(capsys, ["run", str(cfg), "--quiet"], str(tmp_path / "run" / "metrics.jsonl"), "no space left", "it needs", "--resume")
    assert latest_step(folder) == 2
    monkeypatch.undo()
    assert main(["run", str(cfg), "--resume", "--quiet"]) == 0
    steps = [r["step"] for r in read_records(tmp_path / "run") if r["kind"] == "train"]
    assert steps == [2, 4, 6]


def test_full_disk_while_writing_tensorboard(tmp_path, capsys, monkeypatch):
    cfg = one_stage(tmp_path, steps=6, checkpoint_every=2)
    folder = tmp_path / "run" / "checkpoints" / "teacher"
    unhandled: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", unhandled.append)  # what would print a thread's traceback
    with extra_plugin(_LogsFillAt(monkeypatch, at=3, what="tensorboard"), "disk"):
        # TensorBoard writes on its own thread: the failure surfaces at a later record or when the run closes it
        fails(capsys, ["run", str(cfg), "--quiet"], str(tmp_path / "run" / "tensorboard"), "no space left", "free some space")
    assert not unhandled, [a.exc_value for a in unhandled]
    assert latest_step(folder) in (2, 4, 6)
    _no_temporaries(tmp_path / "run")
    monkeypatch.undo()
    assert main(["run", str(cfg), "--resume", "--quiet"]) == 0
