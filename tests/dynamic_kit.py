"""Shared by the dynamic-routing tests: branches that need no training, and images of mixed difficulty."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from kdsr.branches import Branch
from kdsr.inference import Choice


class Upsample(nn.Module):
    """An SR 'network' without weights: bicubic (the good, dear branch) or nearest (the cheap one)."""

    def __init__(self, mode: str, scale: int = 2) -> None:
        super().__init__()
        self.mode, self.scale = mode, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        extra = {} if self.mode == "nearest" else {"align_corners": False}
        return F.interpolate(x, scale_factor=self.scale, mode=self.mode, **extra).clamp(0, 1)


def toy_branches(scale: int = 2) -> tuple[dict[str, Branch], list[Choice]]:
    """Two branches, 'full' (bicubic) and 'cheap' (nearest, a fifth of the cost): nearest loses little on
    flat patches and a lot on textured ones, as a narrow SR branch does."""
    branches = {"full": Branch(Upsample("bicubic", scale)), "cheap": Branch(Upsample("nearest", scale))}
    return branches, [Choice("cheap", 2.0), Choice("full", 10.0)]


def mosaic_folder(folder: Path, n: int, size: int = 64, block: int = 16, seed: int = 0, texture: float = 0.5) -> Path:
    """``n`` HR PNGs of ``size`` px made of ``block``-px cells, each flat or textured (a grating of random
    amplitude, frequency and direction, which bicubic upsampling restores better than nearest);
    ``texture`` is the chance a cell is textured."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:block, 0:block].astype(np.float64)
    for i in range(n):
        img = np.empty((size, size, 3))
        for y in range(0, size, block):
            for x in range(0, size, block):
                base = rng.uniform(0.3, 0.7, 3)
                amp = rng.uniform(0.05, 0.3) if rng.random() < texture else 0.0
                angle, period = rng.uniform(0, np.pi), rng.uniform(5, 12)
                wave = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
                img[y : y + block, x : x + block] = base + amp * wave[..., None]
        Image.fromarray((img.clip(0, 1) * 255).round().astype(np.uint8)).save(folder / f"m{i}.png")
    return folder
