"""`kdsr plugins new`: the package it writes installs from a wheel, passes its own tests and trains."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kdsr.errors import KdsrError
from kdsr.scaffold import new_plugin, plugin_names
from kdsr.testing import make_image_folder
from tests.conftest import run_kdsr


def run(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=cwd, env={**os.environ, **(env or {})}, timeout=300
    )
    assert out.returncode == 0, f"{' '.join(args)}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def test_names() -> None:
    assert plugin_names("kdsr-Edge-KD") == {"name": "edge_kd", "dist": "kdsr-edge-kd", "module": "kdsr_edge_kd", "Class": "EdgeKd"}
    for bad in ("1x", "edge kd", "torch", "import", "kdsr"):
        with pytest.raises(KdsrError, match=f"plugin name '{bad}'"):
            plugin_names(bad)


def test_refuses_an_existing_folder_and_an_unknown_hook(tmp_path: Path) -> None:
    new_plugin("edge", parent=tmp_path)
    with pytest.raises(KdsrError, match="already exists"):
        new_plugin("edge", parent=tmp_path)
    out = run_kdsr("plugins", "new", "edge2", "--hook", "metrics", "--dir", str(tmp_path))
    assert out.returncode == 2 and out.stderr.strip() == (
        "kdsr: error: --hook 'metrics' is not supported by `kdsr plugins new`; choose one of: losses, backbones"
    )


def test_backbone_scaffold_passes_its_own_tests(tmp_path: Path) -> None:
    root = new_plugin("tiny_net", "backbones", tmp_path)
    out = run("-m", "pytest", "-q", "-p", "no:cacheprovider", str(root / "tests"), cwd=tmp_path, env={"PYTHONPATH": str(root)})
    assert "3 passed" in out.stdout
    example = yaml.safe_load((root / "configs" / "example.yaml").read_text())
    assert example["stages"][0]["student"]["backbone"] == "tiny_net"


@pytest.mark.slow
def test_new_loss_plugin_builds_installs_passes_its_tests_and_trains(tmp_path: Path) -> None:
    """The must-show: scaffold, wheel, install beside kdsr, its tests, a 5-step run with the new loss."""
    out = run_kdsr("plugins", "new", "edge_kd", "--dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    source = tmp_path / "kdsr-edge-kd"
    assert (source / "kdsr_edge_kd" / "__init__.py").exists()

    run("-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(tmp_path / "dist"), str(source), cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("kdsr_edge_kd-0.1.0-*.whl")
    site = tmp_path / "site"
    run("-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheel), cwd=tmp_path)
    env = {"PYTHONPATH": str(site)}

    # its own tests, importing the installed copy (cwd is not the source folder)
    where = run("-c", "import kdsr_edge_kd; print(kdsr_edge_kd.__file__)", cwd=tmp_path, env=env).stdout
    assert where.startswith(str(site))
    tests = run("-m", "pytest", "-q", "-p", "no:cacheprovider", str(source / "tests"), cwd=tmp_path, env=env)
    assert "3 passed" in tests.stdout

    listed = run_kdsr("plugins", "list", "--requirements", env=env)
    assert "kdsr-edge-kd==0.1.0" in listed.stdout.splitlines()

    # the scaffolded example config, shrunk to 5 steps on a tiny image folder
    train = make_image_folder(tmp_path / "train", n=4, seed=1)
    val = make_image_folder(tmp_path / "val", n=2, seed=2)
    overrides = [
        f"out_dir={tmp_path / 'run'}",
        f"data.train={{name: folder, options: {{root: {train}}}}}",
        f"data.eval=[{{name: folder, options: {{root: {val}}}}}]",
        "data.patch_size=12",
        "data.batch_size=2",
        "stages.0.steps=5",
        "stages.0.student.options={n_feats: 8, n_resblocks: 1}",
        "stages.1.steps=5",
        "stages.1.student.options={n_feats: 4, n_resblocks: 1}",
        "stages.1.log_every=1",
        "profile={hr_size: [32, 32], latency: false}",
    ]
    trained = run_kdsr("run", str(source / "configs" / "example.yaml"), *overrides, "--quiet", env=env)
    assert trained.returncode == 0, trained.stderr[-3000:]
    run_dir = tmp_path / "run"
    resolved = yaml.safe_load((run_dir / "config.resolved.yaml").read_text())
    assert resolved["plugins"]["edge_kd"] == "0.1.0"
    assert resolved["stages"][1]["losses"][1]["name"] == "edge_kd"
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    terms = [r for r in logged if r.get("stage") == "student" and "edge_kd" in r]
    assert len(terms) == 5 and all(r["edge_kd"] > 0 for r in terms), logged[-3:]
