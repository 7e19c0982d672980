"""Helpers shared by the HKDSR plugin's tests: tiny backbones, image folders and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from kdsr.plugins import registry

TINY_RCAN = {"n_resgroups": 3, "n_resblocks": 1, "n_feats": 16, "reduction": 4}
TINY_EDSR = {"n_resblocks": 3, "n_feats": 8}


@pytest.fixture(autouse=False)
def one_thread():
    """Tiny tensors run far faster on one thread than on two contended ones; restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def backbone(name: str, scale: int, **options: Any) -> nn.Module:
    return registry("backbone").create(name, options, scale=scale)


def make_images(folder: Path, n: int, size: tuple[int, int] = (40, 48), seed: int = 0) -> Path:
    """Smooth random RGB images (sums of sinusoids)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : size[0], 0 : size[1]]
    for i in range(n):
        img = np.zeros((*size, 3))
        for c in range(3):
            for _ in range(3):
                fx, fy, ph = rng.uniform(0.02, 0.3, 3) * (1, 1, 20)
                img[..., c] += np.sin(fx * x + fy * y + ph)
        img = (img - img.min()) / (img.max() - img.min() + 1e-9)
        Image.fromarray((img * 255).round().astype(np.uint8)).save(folder / f"img{i}.png")
    return folder


def run_kdsr(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """The CLI in a subprocess, as a user runs it."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "kdsr", *args], capture_output=True, text=True, env=env, timeout=timeout)
