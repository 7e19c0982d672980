"""Inference policies and the router that applies them: which branch serves each image or patch.

A policy sees an LR image (or one tile of it) and the candidate branches with their cost and
names one. The router runs the choice tile by tile (``kdsr.tiling``), batching the tiles routed to
the same branch, and accounts the Multi-Adds spent against running the full branch everywhere.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from kdsr.branches import Branch
from kdsr.metrics import psnr, quantize
from kdsr.tiling import Window, run_windows, window_pixels, windows


@dataclass(frozen=True)
class Choice:
    """A branch a policy may pick: its name, Multi-Adds per LR pixel, and width (if it has one)."""

    name: str
    macs_per_pixel: float
    width: float | None = None


class Policy:
    """Base class. ``per_patch`` policies are asked once per tile, the others once per image."""

    per_patch: bool = False

    def select(self, lr: torch.Tensor, choices: Sequence[Choice]) -> str:  # pragma: no cover
        raise NotImplementedError

    def prepare(self, router: Router) -> None:
        """Called once before inference, e.g. to calibrate on data with the router's branches."""


# ------------------------------------------------------------------ difficulty measures
# Each returns an *ease* score for a 1x3xhxw LR tensor in [0, 1]: higher means easier content.


def redegradation_psnr(lr: torch.Tensor, scale: int) -> float:
    """Dynamic-CSD's score: Y-PSNR between the LR image and its bicubic down-up re-degradation.

    As in the official ``dynamic_test.py``: torch bicubic (no antialias) down by 1/s, clamp, up by s,
    quantise, compare on the common centre crop with ``scale`` pixels shaved. Smooth content
    survives re-degradation (high PSNR, easy); texture does not.
    """
    h, w = lr.shape[-2:]
    down = F.interpolate(lr, scale_factor=1 / scale, mode="bicubic", align_corners=False).clamp(0, 1)
    up = quantize(F.interpolate(down, scale_factor=scale, mode="bicubic", align_corners=False))
    uh, uw = up.shape[-2:]
    top, left = (h - uh) // 2, (w - uw) // 2
    ref = lr[..., top : top + uh, left : left + uw]
    shave = scale if min(uh, uw) > 2 * scale + 1 else 0
    value = psnr(up[0], ref[0], shave)
    return min(value, 100.0)


def gradient_energy(lr: torch.Tensor, scale: int = 1) -> float:
    """Negated mean absolute gradient (x255): flat content scores high (easy)."""
    gy = (lr[..., 1:, :] - lr[..., :-1, :]).abs().mean()
    gx = (lr[..., :, 1:] - lr[..., :, :-1]).abs().mean()
    return -float(gx + gy) * 255.0


def local_variance(lr: torch.Tensor, scale: int = 1, window: int = 7) -> float:
    """Negated mean local variance (in 8-bit units²) over ``window``-sized neighbourhoods."""
    gray = lr.mean(1, keepdim=True) * 255.0
    k = min(window, *gray.shape[-2:])
    mean = F.avg_pool2d(gray, k, 1)
    sq = F.avg_pool2d(gray * gray, k, 1)
    return -float((sq - mean * mean).clamp_min(0).mean())


MEASURES = {"redegradation": redegradation_psnr, "gradient": gradient_energy, "variance": local_variance}


# ------------------------------------------------------------------ routing


@dataclass
class Routed:
    """The result of routing one image: SR output and what it cost."""

    sr: torch.Tensor
    tiles: Counter = field(default_factory=Counter)  # branch -> number of tiles (or 1 for a whole image)
    macs: float = 0.0
    full_macs: float = 0.0  # the full branch on the same tiles: the fraction compares like with like
    overhead: float = 0.0  # extra compute of the tile overlaps over one whole-image pass

    @property
    def fraction(self) -> float:
        return self.macs / self.full_macs if self.full_macs else 1.0


class Router:
    """Runs ``policy`` over ``branches`` on LR images, tile by tile."""

    def __init__(
        self,
        branches: dict[str, Branch],
        choices: Sequence[Choice],
        policy: Policy,
        scale: int,
        tile: int | None = 128,
        overlap: int = 16,
        batch: int = 4,
        device: torch.device | str = "cpu",
    ) -> None:
        self.branches, self.choices, self.policy = branches, list(choices), policy
        self.scale, self.tile, self.overlap, self.batch, self.device = scale, tile, overlap, batch, device
        self.full = max(self.choices, key=lambda c: c.macs_per_pixel)
        self.cost = {c.name: c.macs_per_pixel for c in self.choices}
        policy.prepare(self)

    def _tiles(self, h: int, w: int) -> list[Window]:
        if self.tile is None:
            return [Window((0, h, 0, w), (0, h, 0, w))]
        return windows(h, w, self.tile, self.overlap)

    def select_tiles(self, lr: torch.Tensor) -> dict[str, list[Window]]:
        """Which tiles of ``lr`` each branch serves."""
        tiles = self._tiles(*lr.shape[-2:])
        if not self.policy.per_patch:
            return {self.policy.select(lr, self.choices): tiles}
        groups: dict[str, list[Window]] = {}
        for t in tiles:
            y0, y1, x0, x1 = t.core
            groups.setdefault(self.policy.select(lr[..., y0:y1, x0:x1], self.choices), []).append(t)
        return groups

    @torch.no_grad()
    def __call__(self, lr: torch.Tensor) -> Routed:
        """Route one LR image (1x3xhxw or 3xhxw, CPU)."""
        lr = lr.unsqueeze(0) if lr.dim() == 3 else lr
        _, c, h, w = lr.shape
        groups = self.select_tiles(lr)
        # tiles of different branches meet: cross-fade the seams over half the overlap
        blend = min(self.overlap, self.tile) // 2 if len(groups) > 1 and self.tile is not None else 0
        out = torch.zeros(1, c, h * self.scale, w * self.scale)
        weights = torch.zeros(1, 1, h * self.scale, w * self.scale) if blend else None
        result = Routed(out)
        for name, tiles in groups.items():
            run_windows(self.branches[name], lr, self.scale, tiles, out, self.batch, self.device, blend, weights)
            pixels = sum(window_pixels(t) for t in tiles)
            result.tiles[name] += len(tiles)
            result.macs += self.cost[name] * pixels
            result.full_macs += self.cost[self.full.name] * pixels
        if weights is not None:
            out /= weights
        result.overhead = result.full_macs / (self.cost[self.full.name] * h * w) - 1.0
        return result

    def describe(self) -> dict[str, Any]:
        return {"tile": self.tile, "overlap": self.overlap, "branches": [c.__dict__ for c in self.choices]}
