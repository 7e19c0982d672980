"""Shared fixtures: tiny image folders and tiny configs that train in seconds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kdsr.testing import make_image_folder

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(tmp_path: Path, steps: int = 6, **overrides) -> dict:
    train = make_image_folder(tmp_path / "train", n=4, seed=1)
    val = make_image_folder(tmp_path / "val", n=2, seed=2)
    cfg = {
        "name": "tiny",
        "out_dir": str(tmp_path / "run"),
        "scale": 2,
        "seed": 0,
        "data": {
            "train": {"name": "folder", "options": {"root": str(train)}},
            "eval": [{"name": "folder", "options": {"root": str(val)}}],
            "patch_size": 12,
            "batch_size": 2,
        },
        "stages": [
            {
                "name": "teacher",
                "steps": steps,
                "student": {"backbone": "edsr_baseline", "options": {"n_feats": 8, "n_resblocks": 1}},
                "log_every": 2,
                "checkpoint_every": 2,
            },
            {
                "name": "student",
                "steps": steps,
                "teacher": {"from_stage": "teacher"},
                "student": {"backbone": "edsr_baseline", "options": {"n_feats": 4, "n_resblocks": 1}},
                "losses": [{"name": "output_kd"}],
                "log_every": 2,
                "checkpoint_every": 2,
            },
        ],
        "profile": {"hr_size": [32, 32], "latency_hr_size": [32, 32], "latency_repeats": 1},
    }
    cfg.update(overrides)
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_kdsr(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """The CLI in a subprocess, as a user runs it."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "kdsr", *args], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=timeout
    )


def install_fake(site: Path, dist: str, module: str, source: str, entry: str | None = None, version: str = "0.1") -> None:
    """Lay out an installed distribution (dist-info + module) exactly as pip would, without pip."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(source)
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[kdsr]\n{entry or module} = {module}\n")


@pytest.fixture
def tiny(tmp_path: Path) -> dict:
    return tiny_config(tmp_path)
