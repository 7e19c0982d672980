"""Engine behaviour that needs whole processes: exact resume after SIGKILL, torchrun data parallelism."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.conftest import install_fake, run_kdsr, tiny_config, write_config

# A lifecycle plugin used only by these tests: SIGKILLs the process at a chosen step, or dumps
# each rank's trained weights at the end of the run.
PROBE = '''
import os, signal
from kdsr import hookimpl

@hookimpl
def after_step(run, step, losses):
    if os.environ.get("KDSR_TEST_KILL_AT") == f"{run.stage.config.name}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)

@hookimpl
def end_run(run, report):
    out = os.environ.get("KDSR_TEST_DUMP")
    if out:
        from safetensors.torch import save_file
        from kdsr.branches import unique_modules
        state = {f"{n}.{k}": v.contiguous() for n, m in unique_modules(run.stage.branches).items() for k, v in m.state_dict().items()}
        save_file(state, os.path.join(out, f"rank{run.rank}.safetensors"))
'''


@pytest.fixture
def probe(tmp_path: Path) -> dict:
    site = tmp_path / "site"
    install_fake(site, "kdsr-probe", "kdsr_probe", PROBE, entry="probe")
    return {"PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}


def one_stage(tmp_path: Path, out: str, steps: int = 16) -> Path:
    cfg = tiny_config(tmp_path, steps=steps, out_dir=str(tmp_path / out), threads=1)
    cfg["stages"][0].update(checkpoint_every=5, ema=0.9)
    cfg["stages"][1].update(checkpoint_every=5)
    return write_config(tmp_path / f"{out}.yaml", cfg)


def test_sigkill_then_resume_gives_identical_weights(tmp_path, probe):
    ref = run_kdsr("run", str(one_stage(tmp_path, "ref")), "--quiet", env=probe)
    assert ref.returncode == 0, ref.stderr
    cfg = one_stage(tmp_path, "killed")
    # killed in the second stage, 3 steps after its last checkpoint
    killed = run_kdsr("run", str(cfg), "--quiet", env={**probe, "KDSR_TEST_KILL_AT": "student:12"})
    assert killed.returncode == -9
    assert not (tmp_path / "killed" / "report.json").exists()
    again = run_kdsr("run", str(cfg), "--quiet", env=probe)
    assert again.returncode == 2 and "--resume" in again.stderr  # never overwrites a run
    resumed = run_kdsr("run", str(cfg), "--resume", "--quiet", env=probe)
    assert resumed.returncode == 0, resumed.stderr
    for stage in ("teacher", "student"):
        a = load_file(tmp_path / "ref" / "checkpoints" / stage / "final.safetensors")
        b = load_file(tmp_path / "killed" / "checkpoints" / stage / "final.safetensors")
        assert a.keys() == b.keys()
        for k in a:
            assert (a[k] == b[k]).all(), f"{stage}:{k} differs after resume"
    steps = [r for r in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines() if '"train"' in r]
    ref_steps = [r for r in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines() if '"train"' in r]
    assert len(steps) == len(ref_steps)  # records written after the checkpoint were dropped on resume


def test_torchrun_two_ranks_end_identical(tmp_path, probe):
    cfg = tiny_config(tmp_path, steps=4, threads=1)
    cfg["stages"] = cfg["stages"][:1]
    path = write_config(tmp_path / "ddp.yaml", cfg)
    dump = tmp_path / "dump"
    dump.mkdir()
    env = {**probe, "KDSR_TEST_DUMP": str(dump)}
    import os

    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "kdsr", "run", str(path), "--quiet"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    r0, r1 = load_file(dump / "rank0.safetensors"), load_file(dump / "rank1.safetensors")
    assert r0.keys() == r1.keys() and len(r0) > 0
    for k in r0:
        assert (r0[k] == r1[k]).all(), k
    single = load_file(tmp_path / "run" / "checkpoints" / "teacher" / "final.safetensors")
    assert all((single[k] == r0[k]).all() for k in single)  # rank 0 wrote what the ranks hold
