"""Inference policies and the router that applies them: which branch serves each image or patch.

A policy sees an LR image (or one tile of it) and the candidate branches with their cost and
names one. The router runs the choice tile by tile (``kdsr.tiling``), batching the tiles routed to
the same branch, and accounts the Multi-Adds spent against running the full branch everywhere.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from kdsr.branches import Branch
from kdsr.runtime import FP32, Runtime, prepare
# the difficulty measures live in kdsr.scoring; re-exported here, where policies have always found them
from kdsr.scoring import (  # noqa: F401
    MEASURES,
    OFFICIAL_Y_WEIGHTS,
    gradient_energy,
    local_variance,
    official_calc_psnr,
    redegradation_psnr,
)
from kdsr.tiling import (
    WINDOW_PIXELS,
    Window,
    forward_passes,
    merge,
    plan_tile,
    run_windows,
    stitch,
    tiles_change_output,
    window_pixels,
    windows,
)

log = logging.getLogger("kdsr")


@dataclass(frozen=True)
class Choice:
    """A branch a policy may pick: its name, Multi-Adds per LR pixel, and width (if it has one)."""

    name: str
    macs_per_pixel: float
    width: float | None = None


class Policy:
    """Base class. ``per_patch`` policies are asked once per tile, the others once per image.

    ``target``: a budget the policy promises, ``("macs" | "time", fraction of the full branch)``; ``kdsr
    eval`` / ``kdsr infer`` report what was achieved against it (:func:`budget_check`)."""

    per_patch: bool = False
    target: tuple[str, float] | None = None

    def select(self, lr: torch.Tensor, choices: Sequence[Choice]) -> str:  # pragma: no cover
        raise NotImplementedError

    def prepare(self, router: Router) -> None:
        """Called once before inference, e.g. to calibrate on data with the router's branches."""

    def routes_patches(self, tiles: int) -> bool:
        """Whether an image cut into ``tiles`` patches is routed patch by patch (else as one image)."""
        return self.per_patch

    def route(self, lr: torch.Tensor, tiles: list[Window], router: Router) -> dict[str, list[Window]]:
        """Which branch serves each of ``tiles`` (patches of ``lr``, 1x3xhxw) when routing patch by patch:
        branch -> its tiles. By default :meth:`select` is asked per patch; a policy that decides for the
        image as a whole (e.g. to hold a budget on it, priced by :meth:`Router.spend`) overrides this."""
        groups: dict[str, list[Window]] = {}
        for t in tiles:
            y0, y1, x0, x1 = t.core
            groups.setdefault(self.select(lr[..., y0:y1, x0:x1], router.choices), []).append(t)
        return groups


BUDGET_TOLERANCE = 0.1  # relative miss of a budget that earns a warning


def budget_held(target: float, achieved: float) -> bool:
    """Whether a budget ``target`` (a fraction of the full branch) was held: ``achieved`` within
    ``BUDGET_TOLERANCE`` of it, relative."""
    return abs(achieved - target) <= BUDGET_TOLERANCE * target


def budget_check(policy: Policy, macs_fraction: float, time_fraction: float) -> dict[str, Any] | None:
    """The policy's budget against what it achieved, warned about in one line when off by more than
    ``BUDGET_TOLERANCE`` (relative); ``None`` for a policy without a budget."""
    if policy.target is None:
        return None
    kind, target = policy.target
    achieved = macs_fraction if kind == "macs" else time_fraction
    within = budget_held(target, achieved)
    if not within:
        log.warning(
            f"budget {target:.2f} of the full branch's {'Multi-Adds' if kind == 'macs' else 'time'} was not held: "
            f"{achieved:.2f} spent (> {BUDGET_TOLERANCE:.0%} off); calibrate on images like these"
        )
    return {"kind": kind, "target": target, "achieved": achieved, "within": within}


# ------------------------------------------------------------------ routing


@dataclass
class Routed:
    """The result of routing one image: the SR image (HxWx3 uint8, quantised tile by tile) and what it cost."""

    image: np.ndarray
    tiles: Counter = field(default_factory=Counter)  # branch -> number of tiles (or 1 for a whole image)
    pixels: Counter = field(default_factory=Counter)  # branch -> LR pixels its windows computed
    macs: float = 0.0
    full_macs: float = 0.0  # the full branch routed over the same tiles (full_pixels): like with like
    full_pixels: int = 0  # LR pixels the full branch's windows compute on this image's tiles
    passes: Counter = field(default_factory=Counter)  # branch -> forward passes its windows took
    full_passes: int = 0  # forward passes of the full branch's plan for this image's tiles
    overhead: float = 0.0  # extra compute of those windows' overlaps over one whole-image pass

    @property
    def fraction(self) -> float:
        return self.macs / self.full_macs if self.full_macs else 1.0

    @property
    def sr(self) -> torch.Tensor:
        """The image as 1x3xHxW float in [0, 1] (8-bit values, as ``quantize`` gives): made on demand."""
        return torch.from_numpy(self.image).permute(2, 0, 1).unsqueeze(0).float().div_(255)


PATCH_TILE = 128  # LR patch side of per-patch policies when the tile is "auto"


class Router:
    """Runs ``policy`` over ``branches`` on LR images, tile by tile, through the inference engine
    (:mod:`kdsr.runtime`).

    ``tile``: an LR side, ``None`` for whole images, or ``"auto"``: per-patch policies get
    ``PATCH_TILE`` patches; others get the fewest-pixel even tiling whose windows hold at most
    ``WINDOW_PIXELS`` LR pixels (a 720p output is one window: tiled == whole). Tiles split each axis
    evenly (:func:`kdsr.tiling.windows`): cores of at most ``tile``, all in windows of one shape.
    ``merge``: neighbouring tiles routed to one branch run as one window (:func:`kdsr.tiling.merge`), so
    the overlaps' context is paid where branches meet, not around every patch. Each forward pass runs
    as many windows of one shape as ``WINDOW_PIXELS`` LR pixels hold, so small patches of a narrow
    branch do not pay per-call overhead; ``batch`` caps that number (less memory, e.g. on a GPU).
    """

    def __init__(
        self,
        branches: dict[str, Branch],
        choices: Sequence[Choice],
        policy: Policy,
        scale: int,
        tile: int | str | None = 128,
        overlap: int = 16,
        batch: int | None = None,
        device: torch.device | str = "cpu",
        runtime: Runtime = FP32,
        merge: bool = True,
    ) -> None:
        self.branches, self.choices, self.policy = branches, list(choices), policy
        self.scale, self.tile, self.overlap, self.batch, self.device = scale, tile, overlap, batch, device
        self.runtime, self.merge = runtime, merge
        copies: dict = {}  # weight-shared branches share one prepared network
        self.runners = {name: prepare(b, runtime, device, copies) for name, b in branches.items()}
        self.full = max(self.choices, key=lambda c: c.macs_per_pixel)
        self.cost = {c.name: c.macs_per_pixel for c in self.choices}
        # branches whose output tiles change (global pooling...): named in infer.json and warned about
        self.tiling_changes: dict[str, str] = {}
        if tile is not None:
            for name, branch in branches.items():
                reason = tiles_change_output(branch.model, branch)
                if reason:
                    self.tiling_changes[name] = reason
                    log.warning(
                        f"tiles (--tile {tile}) change the output of branch '{name}' ({reason}); "
                        f"use --tile 0 for whole-image inference"
                    )
        self._latency: dict[str, float] | None = None  # seconds per LR pixel, see latencies()
        self._per_pass: dict[str, float] = {}  # seconds per forward pass, see pass_latencies()
        policy.prepare(self)

    def _tile_size(self, h: int, w: int) -> tuple[int, int] | None:
        if self.tile is None:
            return None
        if self.tile == "auto":
            return (PATCH_TILE, PATCH_TILE) if self.policy.per_patch else plan_tile(h, w, self.overlap)
        return (self.tile, self.tile)

    def _tiles(self, h: int, w: int) -> list[Window]:
        size = self._tile_size(h, w)
        if size is None:
            return [Window((0, h, 0, w), (0, h, 0, w))]
        return windows(h, w, size, self.overlap)

    def select_tiles(self, lr: torch.Tensor) -> tuple[dict[str, list[Window]], bool]:
        """Which tiles of ``lr`` each branch serves, and whether they were routed patch by patch."""
        tiles = self._tiles(*lr.shape[-2:])
        if not self.policy.routes_patches(len(tiles)):
            return {self.policy.select(lr, self.choices): tiles}, False
        return self.policy.route(lr, tiles, self), True

    def plan(self, groups: dict[str, list[Window]], h: int, w: int) -> dict[str, list[Window]]:
        """The windows each branch computes for the patches it was routed (branch -> tiles of an h x w
        image): neighbours merged (see ``merge``) into windows no larger than a forward pass of the
        patches holds."""
        if not self.merge or sum(map(len, groups.values())) < 2:
            return groups
        tile = next(t for ts in groups.values() for t in ts)
        cap = WINDOW_PIXELS if self.batch is None else min(self.batch * window_pixels(tile), WINDOW_PIXELS)
        return merge(groups, h, w, self.overlap, max_pixels=cap)

    def spend(
        self, groups: dict[str, list[Window]], h: int, w: int, cost: dict[str, float] | None = None, per_pass: dict[str, float] | None = None
    ) -> float:
        """What computing ``groups`` (branch -> patches of an h x w image) through :meth:`plan` costs, as a
        fraction of the full branch's plan for all of them; ``cost``: per-pixel cost of each branch
        (default Multi-Adds; :meth:`latencies` for time), ``per_pass``: a cost per forward pass on top
        (:meth:`pass_latencies` for time; none for Multi-Adds)."""
        cost = cost or self.cost
        plan, full_plan = self.plan(groups, h, w), self._full_plan(groups, h, w, True)
        spent = sum(cost[b] * sum(window_pixels(t) for t in ts) for b, ts in plan.items())
        full = cost[self.full.name] * sum(window_pixels(t) for t in full_plan[self.full.name])
        if per_pass:
            spent += sum(per_pass.get(b, 0.0) * n for b, n in self._passes(plan).items())
            full += per_pass.get(self.full.name, 0.0) * self._passes(full_plan)[self.full.name]
        return spent / full

    def _pass_batch(self, plan: dict[str, list[Window]]) -> int:
        """Windows per forward pass of ``plan`` (each pass also holds at most ``WINDOW_PIXELS``)."""
        return self.batch or sum(map(len, plan.values()))

    def _passes(self, plan: dict[str, list[Window]]) -> Counter:
        """Forward passes of each branch in ``plan`` (branch -> windows), batched as :meth:`__call__` runs them."""
        by_row = len(plan) > 1  # several branches: stitched row by row
        return Counter({b: forward_passes(ts, self._pass_batch(plan), WINDOW_PIXELS, by_row) for b, ts in plan.items() if ts})

    def _full_plan(self, groups: dict[str, list[Window]], h: int, w: int, patched: bool) -> dict[str, list[Window]]:
        """The full branch alone over all of ``groups``' tiles: what fractions are measured against
        (merged like a routed image when ``patched``)."""
        tiles = [t for ts in groups.values() for t in ts]
        return self.plan({self.full.name: tiles}, h, w) if patched else {self.full.name: tiles}

    @torch.no_grad()
    def __call__(self, lr: torch.Tensor) -> Routed:
        """Route one LR image (1x3xhxw or 3xhxw, CPU)."""
        lr = lr.unsqueeze(0) if lr.dim() == 3 else lr
        lr = lr.cpu()
        _, c, h, w = lr.shape
        cells, patched = self.select_tiles(lr)
        groups = self.plan(cells, h, w) if patched else cells  # a whole-image choice keeps its (memory) tiles
        # tiles of different branches meet: cross-fade the seams over half the overlap
        size = self._tile_size(h, w)
        blend = min(self.overlap, *size) // 2 if len(groups) > 1 and size is not None else 0
        image = np.empty((h * self.scale, w * self.scale, c), dtype=np.uint8)
        batch = self._pass_batch(groups)
        if blend == 0:  # cores pasted straight into the 8-bit image (a 1x3xHxW view of it)
            view = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0)
            for name, tiles in groups.items():
                run_windows(self.runners[name], lr, self.scale, tiles, view, batch, self.device, pixels=WINDOW_PIXELS)
        else:  # cross-faded seams: one float strip at a time, finished rows quantised into the image

            def emit(row: int, rows: torch.Tensor) -> None:
                image[row : row + rows.shape[2]] = rows[0].clamp_(0, 1).mul_(255).round_().to(torch.uint8).permute(1, 2, 0).numpy()

            runs = [(self.runners[name], tiles) for name, tiles in groups.items()]
            stitch(runs, lr, self.scale, emit, batch, self.device, blend, WINDOW_PIXELS)
        result = Routed(image)
        for name, tiles in groups.items():
            pixels = sum(window_pixels(t) for t in tiles)
            result.tiles[name] += len(cells.get(name, ()))
            result.pixels[name] += pixels
            result.macs += self.cost[name] * pixels
        result.passes = self._passes(groups)
        full_plan = self._full_plan(cells, h, w, patched)
        result.full_pixels = sum(window_pixels(t) for t in full_plan[self.full.name])
        result.full_passes = self._passes(full_plan)[self.full.name]
        result.full_macs = self.cost[self.full.name] * result.full_pixels
        result.overhead = result.full_pixels / (h * w) - 1.0
        return result

    def _batch(self, pixels: int) -> int:
        """Windows of ``pixels`` LR pixels per forward pass: as many as ``WINDOW_PIXELS`` hold, at most ``batch``."""
        fit = max(1, WINDOW_PIXELS // pixels)
        return fit if self.batch is None else max(1, min(self.batch, fit))

    LATENCY_REPEATS = 5
    LATENCY_PIXELS = 2**14  # LR pixels of the probe: a few routed windows, about a small image (B100's x4 LR is 9,600)

    def latencies(self) -> dict[str, float]:
        """Measured seconds per LR pixel of each branch, on the windows per-patch routing runs (a ``tile``
        patch plus its context): the slope between one window and as many as fill ``LATENCY_PIXELS`` in
        one pass. The rest of a single window's time is the branch's cost per forward pass
        (:meth:`pass_latencies`). Medians of ``LATENCY_REPEATS`` rounds after a warm-up, every branch in
        every round, so a drift of the machine hits all of them; measured once, then cached. Time budgets
        and time fractions are priced with these, as Multi-Adds are with ``macs_per_pixel``. The probe is
        the size of what routing runs per image, not one large batch: at full width a 48-window batch ran
        1.3x slower per pixel than a 120x80 image (its activations leave the cache), which priced the
        narrow branches too cheap against a whole-image pass."""
        if self._latency is None:
            side = (PATCH_TILE if self.tile in (None, "auto") else self.tile) + 2 * self.overlap
            n = max(1, min(self._batch(side * side), self.LATENCY_PIXELS // (side * side)))
            x = torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(0)).to(self.device)
            probes = (x[:1], x) if n > 1 else (x,)
            times: dict[tuple[str, int], list[float]] = {(name, len(p)): [] for name in self.runners for p in probes}
            with torch.no_grad():
                for _ in range(self.LATENCY_REPEATS + 1):
                    for name, run in self.runners.items():
                        for p in probes:
                            t0 = time.perf_counter()
                            run(p)
                            if torch.device(self.device).type == "cuda":
                                torch.cuda.synchronize()
                            times[name, len(p)].append(time.perf_counter() - t0)
            med = {key: statistics.median(ts[1:]) for key, ts in times.items()}
            px = side * side
            self._latency, self._per_pass = {}, {}
            for name in self.runners:
                one, many = med[name, 1], med[name, n]
                slope = (many - one) / ((n - 1) * px) if n > 1 else 0.0
                per_pixel = slope if slope > 0 else many / (n * px)  # noise can invert a small difference
                self._latency[name] = per_pixel
                self._per_pass[name] = max(one - per_pixel * px, 0.0)
        return self._latency

    def pass_latencies(self) -> dict[str, float]:
        """Measured seconds each forward pass of a branch costs beyond its pixels (see :meth:`latencies`):
        Python and kernel-launch work that a few small windows pay and one whole-image pass pays once."""
        self.latencies()
        return self._per_pass

    def time_fraction(
        self, pixels: Counter, full_pixels: int | None = None, passes: Counter | None = None, full_passes: int | None = None
    ) -> float:
        """Estimated compute time of routing that ran ``pixels`` (branch -> LR window pixels, summed
        :attr:`Routed.pixels`) in ``passes`` (branch -> forward passes, summed :attr:`Routed.passes`) over
        the full branch's on ``full_pixels`` in ``full_passes`` (summed :attr:`Routed.full_pixels` /
        :attr:`Routed.full_passes`; default the same pixels, passes not priced), priced by
        :meth:`latencies` and :meth:`pass_latencies` (1.0 without a choice to make: nothing is measured then)."""
        if len(self.choices) == 1 or not pixels:
            return 1.0
        latency = self.latencies()
        spent = sum(latency[name] * px for name, px in pixels.items())
        full = latency[self.full.name] * (full_pixels or sum(pixels.values()))
        if passes is not None and full_passes:
            per_pass = self.pass_latencies()
            spent += sum(per_pass.get(name, 0.0) * n for name, n in passes.items())
            full += per_pass.get(self.full.name, 0.0) * full_passes
        return spent / full

    def describe(self) -> dict[str, Any]:
        return {
            "tile": self.tile,
            "overlap": self.overlap,
            "batch": self.batch,  # None: as many windows per pass as WINDOW_PIXELS hold
            "merge": self.merge,
            "runtime": self.runtime.label,
            "branches": [c.__dict__ for c in self.choices],
            "tiling_changes_output": self.tiling_changes,
        }
