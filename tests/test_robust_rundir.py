"""Run directories: a run that failed before its first checkpoint restarts in place, trained
checkpoints need --overwrite, and one process at a time owns a directory (issues 15.11, 19.3)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kdsr.cli import main
from kdsr.engine.lock import LOCK_NAME, RunLock
from kdsr.errors import KdsrError
from tests.robust_kit import fails, latest_step, one_stage


def _break_train_image(cfg: Path) -> tuple[Path, bytes]:
    root = Path(yaml.safe_load(cfg.read_text())["data"]["train"]["options"]["root"])
    img = root / "img0.png"
    good = img.read_bytes()
    img.write_bytes(good[:200])
    return img, good


@pytest.mark.parametrize("again", [[], ["--resume", "seed=1"]])
def test_run_failed_before_first_checkpoint_starts_again_in_place(tmp_path, capsys, again):
    cfg = one_stage(tmp_path, steps=2)
    img, good = _break_train_image(cfg)
    fails(capsys, ["run", str(cfg), "--quiet"], "img0.png")  # fails after the run directory was made
    assert (tmp_path / "run" / "config.resolved.yaml").exists()
    img.write_bytes(good)
    # a plain rerun, or a --resume with another config: nothing was trained, so it simply starts again
    assert main(["run", str(cfg), "--quiet", *again]) == 0, capsys.readouterr().err
    assert (tmp_path / "run" / "report.json").exists()
    assert not (tmp_path / "run" / LOCK_NAME).exists()


def test_trained_checkpoints_need_overwrite(tmp_path, capsys):
    cfg = one_stage(tmp_path, steps=2)
    assert main(["run", str(cfg), "--quiet"]) == 0
    final = tmp_path / "run" / "checkpoints" / "teacher" / "final.safetensors"
    before = final.read_bytes()
    fails(capsys, ["run", str(cfg), "--quiet"], "trained checkpoints", "--resume", "--overwrite")
    assert final.read_bytes() == before
    assert main(["run", str(cfg), "--quiet", "--overwrite", "stages.0.steps=3"]) == 0
    assert latest_step(final.parent) == 3


def test_second_process_on_a_locked_run_directory_is_refused_with_the_holders_pid(tmp_path, capsys):
    cfg = one_stage(tmp_path, steps=2)
    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from kdsr.engine.lock import RunLock\n"
         "with RunLock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)", str(run_dir)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        fails(capsys, ["run", str(cfg), "--quiet"], f"in use by another kdsr process (pid {holder.pid})")
        fails(capsys, ["run", str(cfg), "--resume", "--quiet"], f"pid {holder.pid}")
        assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_NAME]  # the refused runs wrote nothing
    finally:
        holder.kill()
        holder.wait()
    assert main(["run", str(cfg), "--quiet"]) == 0  # the kernel dropped the dead holder's lock


def test_lock_excludes_within_one_process_and_leaves_no_trace(tmp_path):
    run_dir = tmp_path / "new" / "run"
    with RunLock(run_dir):
        with pytest.raises(KdsrError, match="in use"):
            RunLock(run_dir).__enter__()
    assert not run_dir.exists()  # created by the lock, nothing written: removed again
