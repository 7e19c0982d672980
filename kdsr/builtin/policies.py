"""Builtin inference policies: full, fixed, difficulty-aware (Dynamic-CSD) and budget-calibrated."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch

from kdsr.errors import KdsrError, did_you_mean
from kdsr.hookspecs import hookimpl
from kdsr.inference import MEASURES, Choice, Policy, Router
from kdsr.metrics import psnr, quantize


class Full(Policy):
    def select(self, lr: torch.Tensor, choices: Sequence[Choice]) -> str:
        return max(choices, key=lambda c: c.macs_per_pixel).name


class Fixed(Policy):
    def __init__(self, branch: str | None, width: float | None) -> None:
        self.branch, self.width = branch, width

    def select(self, lr: torch.Tensor, choices: Sequence[Choice]) -> str:
        names = [c.name for c in choices]
        if self.branch is not None:
            if self.branch not in names:
                raise KdsrError(f"policy fixed: no branch '{self.branch}'{did_you_mean(self.branch, names)}; branches: {', '.join(names)}")
            return self.branch
        for c in choices:
            if c.width is not None and abs(c.width - self.width) < 1e-9:
                return c.name
        widths = sorted(c.width for c in choices if c.width is not None)
        raise KdsrError(f"policy fixed: no branch of width {self.width}; widths available: {widths or 'none'}")


class Difficulty(Policy):
    """Thresholds on an ease score pick the branch: score > t[0] -> cheapest, > t[1] -> next, ... else full."""

    def __init__(self, thresholds: list[float], measure: str, per: str) -> None:
        if measure not in MEASURES:
            raise ValueError(f"unknown measure '{measure}'{did_you_mean(measure, MEASURES)}; measures: {', '.join(MEASURES)}")
        if per not in ("image", "patch"):
            raise ValueError(f"per must be 'image' or 'patch', got '{per}'")
        if any(a < b for a, b in zip(thresholds, thresholds[1:])):
            raise ValueError(f"thresholds must be descending (easiest first), got {thresholds}")
        self.thresholds, self.measure, self.per_patch = list(thresholds), MEASURES[measure], per == "patch"
        self.scale = 2

    def prepare(self, router: Router) -> None:
        self.scale = router.scale
        if len(self.thresholds) != len(router.choices) - 1:
            raise KdsrError(
                f"policy difficulty: {len(self.thresholds)} thresholds for {len(router.choices)} branches; give one fewer than branches"
            )

    def score(self, lr: torch.Tensor) -> float:
        return self.measure(lr, self.scale)

    def select(self, lr: torch.Tensor, choices: Sequence[Choice]) -> str:
        ordered = sorted(choices, key=lambda c: c.macs_per_pixel)  # cheapest first
        s = self.score(lr)
        for t, choice in zip(self.thresholds, ordered):
            if s > t:
                return choice.name
        return ordered[-1].name


class Budget(Difficulty):
    """Difficulty routing whose thresholds are calibrated so the expected Multi-Adds are a fraction
    of the full model's, maximising mean PSNR on a calibration folder (the ARM idea over kdsr branches)."""

    def __init__(self, budget: float, calibration: str, measure: str, per: str, grid: int) -> None:
        super().__init__([], measure, per)
        self.budget, self.calibration, self.grid = budget, calibration, grid
        self.expected: dict[str, Any] = {}

    def prepare(self, router: Router) -> None:
        self.scale = router.scale
        table = calibration_table(router, self.calibration, self.score)
        self.thresholds, self.expected = fit_thresholds(table, router.choices, self.budget, self.grid)


def calibration_table(router: Router, folder: str, score) -> list[dict[str, Any]]:
    """Per calibration tile: ease score, pixels, and each branch's PSNR on it."""
    from kdsr.data import ImageFolder, SRPairs, to_float
    from kdsr.tiling import run_windows, window_pixels

    rows = []
    for _, lr_u8, hr_u8 in SRPairs(ImageFolder(folder), router.scale):
        lr, hr = to_float(lr_u8).unsqueeze(0), to_float(hr_u8)
        tiles = router._tiles(*lr.shape[-2:])
        outs = {}
        for c in router.choices:
            out = torch.empty(1, 3, hr.shape[-2], hr.shape[-1])
            run_windows(router.branches[c.name], lr, router.scale, tiles, out, router.batch, router.device)
            outs[c.name] = quantize(out[0])
        units = tiles if router.policy.per_patch else [None]
        for t in units:
            if t is None:
                y0, y1, x0, x1 = 0, lr.shape[-2], 0, lr.shape[-1]
            else:
                y0, y1, x0, x1 = t.core
            s = router.scale
            ref = hr[:, y0 * s : y1 * s, x0 * s : x1 * s]
            pixels = window_pixels(t) if t is not None else sum(window_pixels(u) for u in tiles)
            row = {"score": score(lr[..., y0:y1, x0:x1]), "pixels": pixels, "psnr": {}}
            for name, sr in outs.items():
                row["psnr"][name] = min(psnr(sr[:, y0 * s : y1 * s, x0 * s : x1 * s], ref, 0), 100.0)
            rows.append(row)
    if not rows:
        raise KdsrError(f"policy budget: calibration folder '{folder}' gave no images")
    return rows


def fit_thresholds(rows: list[dict[str, Any]], choices: Sequence[Choice], budget: float, grid: int) -> tuple[list[float], dict[str, Any]]:
    """Cut the ease-sorted tiles into contiguous groups (hardest -> most expensive branch) on a
    quantile grid; keep the cut with the best mean PSNR whose Multi-Adds fraction is within budget."""
    ordered = sorted(choices, key=lambda c: c.macs_per_pixel)  # cheapest first
    full = ordered[-1].macs_per_pixel
    rows = sorted(rows, key=lambda r: -r["score"])  # easiest first
    n = len(rows)
    total_px = sum(r["pixels"] for r in rows)
    cuts = sorted({round(i * n / grid) for i in range(grid + 1)})
    best: tuple[float, list[int]] | None = None
    best_frac = None
    for split in itertools.combinations_with_replacement(cuts, len(ordered) - 1):
        bounds = [0, *split, n]
        cost = quality = 0.0
        for b, choice in enumerate(ordered):
            for r in rows[bounds[b] : bounds[b + 1]]:
                cost += choice.macs_per_pixel * r["pixels"]
                quality += r["psnr"][choice.name]
        frac = cost / (full * total_px)
        if frac <= budget + 1e-9 and (best is None or quality > best[0]):
            best, best_frac = (quality, bounds), frac
    if best is None:
        raise KdsrError(f"policy budget: no routing reaches budget {budget}; the cheapest branch alone costs more")
    bounds = best[1]
    # threshold between groups: the score of the first tile *after* each group (score > t -> that group)
    thresholds = [rows[b]["score"] if b < n else float("-inf") for b in bounds[1:-1]]
    return thresholds, {"fraction": best_frac, "psnr": best[0] / n, "tiles": n}


def full() -> Policy:
    """Always run the most expensive branch (the full model)."""
    return Full()


def fixed(branch: str | None = None, width: float | None = None) -> Policy:
    """Always run one branch, named or by width."""
    if (branch is None) == (width is None):
        raise ValueError("policy fixed needs exactly one of 'branch' or 'width'")
    return Fixed(branch, width)


def difficulty(thresholds: list[float], measure: str = "redegradation", per: str = "image") -> Policy:
    """Dynamic-CSD routing: descending thresholds on an ease score (re-degradation PSNR by default)."""
    return Difficulty(thresholds, measure, per)


def budget(budget: float, calibration: str, measure: str = "redegradation", per: str = "patch", grid: int = 20) -> Policy:
    """Per-patch routing calibrated on a folder to spend a target fraction of the full Multi-Adds."""
    if not 0 < budget <= 1:
        raise ValueError(f"budget must be a fraction in (0, 1], got {budget}")
    return Budget(budget, calibration, measure, per, grid)


@hookimpl
def register_policies(register) -> None:
    register("full", full)
    register("fixed", fixed)
    register("difficulty", difficulty)
    register("budget", budget)
