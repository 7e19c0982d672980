"""kdsr.rundir: the one home of a run directory's file names and readers, below the engine.

Loading a run (``kdsr.models``, ``kdsr eval`` / ``infer`` / ``export``, ``kdsr.load``) must not pull in
the training engine's orchestration, and the readers must not import the engine at all."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from kdsr import rundir
from kdsr.branches import Branch
from kdsr.errors import KdsrError
from kdsr.weights import save_weights


def test_imports_flow_one_way():
    code = (
        "import sys, kdsr.rundir\n"
        "below = sorted(m for m in sys.modules if m.startswith('kdsr.engine'))\n"
        "import kdsr.models\n"
        "loading = sorted(m for m in sys.modules if m in ('kdsr.engine.run', 'kdsr.engine.trainer', 'kdsr.engine.logger'))\n"
        "print(below, loading)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[] []", out.stdout


def test_readers_of_an_empty_directory(tmp_path):
    assert rundir.read_progress(tmp_path) == {"done": [], "results": {}}
    assert rundir.read_records(tmp_path) == []


def test_readers(tmp_path):
    (tmp_path / rundir.PROGRESS).write_text(json.dumps({"done": ["a"], "steps": {"a": 3}, "results": {}}))
    (tmp_path / rundir.METRICS).write_text('{"kind": "train", "step": 1}\n\n{"kind": "eval", "step": 2}\n')
    assert rundir.read_progress(tmp_path)["done"] == ["a"]
    assert [r["step"] for r in rundir.read_records(tmp_path)] == [1, 2]
    assert rundir.final_weights_path(tmp_path, "a") == tmp_path / "checkpoints" / "a" / "final.safetensors"


def test_load_final_restores_the_trained_branches_strictly(tmp_path):
    trained, other = torch.nn.Conv2d(3, 3, 1), torch.nn.Conv2d(3, 3, 1)
    save_weights({f"student.{k}": v for k, v in trained.state_dict().items()}, rundir.final_weights_path(tmp_path, "s"))
    rundir.load_final(tmp_path, "s", {"student": Branch(other)})
    assert torch.equal(other.weight, trained.weight)
    with pytest.raises(KdsrError, match=r"does not match 'student' of this run .*was the config changed"):
        rundir.load_final(tmp_path, "s", {"student": Branch(torch.nn.Conv2d(3, 4, 1))})
