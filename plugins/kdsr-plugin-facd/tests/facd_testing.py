"""Helpers for the facd plugin's tests: random student/teacher outputs, tiny image folders, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from kdsr import Batch, Outputs

REPO = Path(__file__).resolve().parents[3]
TAPS = ("body.0", "body.1", "body")


def outputs(n: int = 4, c: int = 8, hw: tuple[int, int] = (6, 5), scale: int = 2, seed: int = 0, taps=TAPS, grad: bool = False) -> Outputs:
    """A branch's outputs with random SR and random features at ``taps`` (N x c x h x w)."""
    g = torch.Generator().manual_seed(seed)
    h, w = hw
    feats = {t: torch.randn(n, c, h, w, generator=g).requires_grad_(grad) for t in taps}
    sr = torch.rand(n, 3, h * scale, w * scale, generator=g).requires_grad_(grad)
    return Outputs(sr, feats)


def batch(n: int = 4, hw: tuple[int, int] = (6, 5), scale: int = 2, seed: int = 9) -> Batch:
    g = torch.Generator().manual_seed(seed)
    h, w = hw
    return Batch(torch.rand(n, 3, h, w, generator=g), torch.rand(n, 3, h * scale, w * scale, generator=g))


def permuted(out: Outputs, perm: torch.Tensor) -> Outputs:
    return Outputs(out.sr[perm], {k: v[perm] for k, v in out.taps.items()})


def permuted_batch(b: Batch, perm: torch.Tensor) -> Batch:
    return Batch(b.lr[perm], b.hr[perm])


def make_images(folder: Path, n: int, size: tuple[int, int] = (40, 48), seed: int = 0) -> Path:
    """Smooth random RGB images (sums of sinusoids), so SR has something learnable."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = size
    y, x = np.mgrid[0:h, 0:w]
    for i in range(n):
        img = np.zeros((h, w, 3))
        for c in range(3):
            for _ in range(3):
                fx, fy, ph = rng.uniform(0.02, 0.3), rng.uniform(0.02, 0.3), rng.uniform(0, 6.28)
                img[..., c] += np.sin(fx * x + fy * y + ph)
        img = (img - img.min()) / (img.max() - img.min() + 1e-9)
        Image.fromarray((img * 255).round().astype(np.uint8)).save(folder / f"img{i}.png")
    return folder


def run_kdsr(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """The CLI in a subprocess, as a user runs it (one thread: the machine is shared)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "kdsr", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
