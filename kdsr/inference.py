"""Inference policies and the router that applies them: which branch serves each image or patch.

A policy sees an LR image (or one tile of it) and the candidate branches with their cost and
names one. The router runs the choice tile by tile (``kdsr.tiling``), batching the tiles routed to
the same branch, and accounts the Multi-Adds spent against running the full branch everywhere.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
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
    stitched_by_row,
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
    looks: bool = True  # False: chooses without looking at the image (full, fixed): no policy time to count

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
    policy_seconds: float = 0.0  # measured: the policy's own work choosing the branches (scores, search)
    full_only: bool = False  # the plan is the full branch's own: its time fraction is 1 whatever the prices
    # (seconds of the plan, seconds of the full branch's plan), priced by Router.time_prices when first
    # asked for; None with a single branch: nothing to choose, nothing measured (both 0)
    pricing: Callable[[], tuple[float, float]] | None = field(default=None, repr=False)
    _priced: tuple[float, float] | None = field(default=None, init=False, repr=False)

    @property
    def fraction(self) -> float:
        return self.macs / self.full_macs if self.full_macs else 1.0

    def _price(self) -> tuple[float, float]:
        if self._priced is None:
            self._priced = self.pricing() if self.pricing is not None else (0.0, 0.0)
        return self._priced

    @property
    def seconds(self) -> float:
        """Priced seconds of the plan's forward passes and the seams' cross-fade."""
        return self._price()[0]

    @property
    def full_seconds(self) -> float:
        """Priced seconds of the full branch's plan over the same tiles."""
        return self._price()[1]

    @property
    def sr(self) -> torch.Tensor:
        """The image as 1x3xHxW float in [0, 1] (8-bit values, as ``quantize`` gives): made on demand."""
        return torch.from_numpy(self.image).permute(2, 0, 1).unsqueeze(0).float().div_(255)


PATCH_TILE = 128  # LR patch side of per-patch policies when the tile is "auto"


@dataclass(frozen=True)
class TimePrice:
    """Seconds a branch's forward pass takes: ``per_pass`` per call and ``per_pixel`` per LR pixel it
    holds, fitted to measured passes (:meth:`Router.time_prices`)."""

    per_pixel: float
    per_pass: float = 0.0

    def __call__(self, pixels: float, passes: int = 0) -> float:
        return self.per_pixel * pixels + self.per_pass * passes

    def scaled(self, factor: float) -> TimePrice:
        return TimePrice(self.per_pixel * factor, self.per_pass * factor)


class TimeShare:
    """The time fraction of routed images: their priced seconds plus the policy's measured seconds over
    the full branch's priced seconds, summed image by image (what ``kdsr infer`` / ``kdsr eval`` report).
    Images served by the full branch's own plan count without being priced, so a run that never left the
    full branch reports 1 without measuring any branch (seconds of probing, :meth:`Router.time_prices`)."""

    def __init__(self) -> None:
        self.spent = self.full = 0.0
        self._unpriced: list[Callable[[], tuple[float, float]] | None] = []

    def add(self, routed: Routed) -> None:
        if routed.full_only and not routed.policy_seconds:
            self._unpriced.append(routed.pricing)  # not the image: a closure over the plans
            return
        self.spent += routed.seconds + routed.policy_seconds
        self.full += routed.full_seconds

    @property
    def fraction(self) -> float:
        if self.full:  # something else ran: price the full-only images too, as like with like
            for pricing in self._unpriced:
                spent, full = pricing() if pricing is not None else (0.0, 0.0)
                self.spent, self.full = self.spent + spent, self.full + full
            self._unpriced = []
        return time_fraction(self.spent, self.full)


def time_fraction(spent: float, full: float) -> float:
    """Seconds spent (:attr:`Routed.seconds` + :attr:`Routed.policy_seconds`, summed) over the full
    branch's (:attr:`Routed.full_seconds`, summed); 1.0 when nothing was priced (a single branch)."""
    return spent / full if full > 0 else 1.0


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
        self._prices: dict[str, TimePrice] = {}  # measured on demand, see time_prices()
        # each branch's passes timed while routing (CPU): seconds, LR pixels, passes; and the shapes seen
        self._ran: dict[str, list[float]] = {name: [0.0, 0.0, 0.0] for name in branches}
        self._shapes: dict[str, set[tuple[int, ...]]] = {name: set() for name in branches}
        self._blend_price: float | None = None  # seconds per HR pixel of cross-faded output, see blend_price()
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

    def spend(self, groups: dict[str, list[Window]], h: int, w: int, time: bool = False, extra_seconds: float = 0.0) -> float:
        """What computing ``groups`` (branch -> patches of an h x w image) through :meth:`plan` costs, as a
        fraction of the full branch's plan for all of them: in Multi-Adds, or with ``time`` in seconds
        priced as :meth:`__call__` prices them (:meth:`plan_seconds`), ``extra_seconds`` (e.g. the
        policy's own work) added to the spent side."""
        plan, full_plan = self.plan(groups, h, w), self._full_plan(groups, h, w, True)
        if time:
            return (self.plan_seconds(plan, h, w) + extra_seconds) / self.plan_seconds(full_plan, h, w)
        spent = sum(self.cost[b] * sum(window_pixels(t) for t in ts) for b, ts in plan.items())
        return spent / (self.cost[self.full.name] * sum(window_pixels(t) for t in full_plan[self.full.name]))

    def plan_seconds(self, plan: dict[str, list[Window]], h: int, w: int) -> float:
        """Priced seconds of computing ``plan`` (branch -> windows, as :meth:`__call__` runs them) over an
        h x w LR image: each branch's passes and pixels (:meth:`time_prices`), and the cross-fade of the
        seams where several branches meet."""
        used = [b for b, ts in plan.items() if ts]
        prices, passes = self.time_prices(used), self._passes(plan, h, w)
        seconds = sum(prices[b](sum(window_pixels(t) for t in plan[b]), passes[b]) for b in used)
        if len(used) > 1:
            seconds += self.blend_price() * h * w * self.scale**2
        return seconds

    def blend_price(self) -> float:
        """Seconds per HR pixel that cross-fading seams costs (:meth:`_measure_blend`), measured when first
        asked for, then cached. A policy that times its own work asks for it before routing (as for
        :meth:`time_prices`), so the measurement is not mistaken for the policy's seconds on an image."""
        if self._blend_price is None:
            self._blend_price = self._measure_blend(self._patch_side())
        return self._blend_price

    def _pass_batch(self, plan: dict[str, list[Window]]) -> int:
        """Windows per forward pass of ``plan`` (each pass also holds at most ``WINDOW_PIXELS``)."""
        return self.batch or sum(map(len, plan.values()))

    def _passes(self, plan: dict[str, list[Window]], h: int, w: int) -> Counter:
        """Forward passes of each branch in ``plan`` (branch -> windows) over an h x w LR image, batched as
        :meth:`__call__` runs them."""
        # seams to cross-fade: stitched (see _render), a large output one row of tiles at a time
        by_row = self._blend(h, w, len(plan)) > 0 and stitched_by_row(h * w, self.scale)
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
        t0 = time.perf_counter()
        cells, patched = self.select_tiles(lr)
        policy_seconds = time.perf_counter() - t0
        groups = self.plan(cells, h, w) if patched else cells  # a whole-image choice keeps its (memory) tiles
        runs = [(self._timed(name), tiles) for name, tiles in groups.items()]
        result = Routed(self._render(lr, runs, self._blend(h, w, len(groups)), self._pass_batch(groups)))
        for name, tiles in groups.items():
            pixels = sum(window_pixels(t) for t in tiles)
            result.tiles[name] += len(cells.get(name, ()))
            result.pixels[name] += pixels
            result.macs += self.cost[name] * pixels
        result.passes = self._passes(groups, h, w)
        full_plan = self._full_plan(cells, h, w, patched)
        result.full_pixels = sum(window_pixels(t) for t in full_plan[self.full.name])
        result.full_passes = self._passes(full_plan, h, w)[self.full.name]
        result.full_macs = self.cost[self.full.name] * result.full_pixels
        result.overhead = result.full_pixels / (h * w) - 1.0
        result.full_only = groups == full_plan
        if len(self.choices) > 1:
            result.pricing = lambda: (self.plan_seconds(groups, h, w), self.plan_seconds(full_plan, h, w))
            result.policy_seconds = policy_seconds if self.policy.looks else 0.0
        return result

    def _timed(self, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
        """Branch ``name``'s runner, its passes timed (on CPU, where a pass's time is its return) into the
        evidence :meth:`time_prices` corrects the probed price with. A shape's first pass is not counted:
        it pays what a new shape costs once (oneDNN primitives, first-touched buffers), not the rate."""
        fn = self.runners[name]
        if torch.device(self.device).type != "cpu":
            return fn
        ran, shapes = self._ran[name], self._shapes[name]

        def run(x: torch.Tensor) -> torch.Tensor:
            t0 = time.perf_counter()
            y = fn(x)
            seconds = time.perf_counter() - t0
            if x.shape in shapes:
                ran[0] += seconds
                ran[1] += x.shape[0] * x.shape[2] * x.shape[3]
                ran[2] += 1
            elif len(shapes) < 4096:
                shapes.add(tuple(x.shape))
            return y

        return run

    def _blend(self, h: int, w: int, branches: int) -> int:
        """LR pixels each side of a seam cross-faded: half the overlap where tiles of several branches meet."""
        size = self._tile_size(h, w)
        return min(self.overlap, *size) // 2 if branches > 1 and size is not None else 0

    def _render(self, lr: torch.Tensor, runs: list[tuple[Any, list[Window]]], blend: int, batch: int) -> np.ndarray:
        """The HxWx3 uint8 SR image of ``runs`` (``(runner, windows)`` each) over ``lr`` (1x3xhxw)."""
        _, c, h, w = lr.shape
        image = np.empty((h * self.scale, w * self.scale, c), dtype=np.uint8)
        if blend == 0:  # cores pasted straight into the 8-bit image (a 1x3xHxW view of it)
            view = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0)
            for fn, tiles in runs:
                run_windows(fn, lr, self.scale, tiles, view, batch, self.device, pixels=WINDOW_PIXELS)
        else:  # cross-faded seams: one float strip at a time, finished rows quantised into the image

            def emit(row: int, rows: torch.Tensor) -> None:
                # float -> uint8 in the copy (exact: rounded values in [0, 255]), no 8-bit temporary
                torch.from_numpy(image[row : row + rows.shape[2]]).copy_(rows[0].clamp_(0, 1).mul_(255).round_().permute(1, 2, 0))

            stitch(runs, lr, self.scale, emit, batch, self.device, blend, WINDOW_PIXELS)
        return image

    def _batch(self, pixels: int) -> int:
        """Windows of ``pixels`` LR pixels per forward pass: as many as ``WINDOW_PIXELS`` hold, at most ``batch``."""
        fit = max(1, WINDOW_PIXELS // pixels)
        return fit if self.batch is None else max(1, min(self.batch, fit))

    LATENCY_REPEATS = 5
    LATENCY_WARMUP = 2  # rounds not counted: new shapes' oneDNN primitives and first-touched buffers
    LATENCY_PIXELS = 2**14  # LR pixels of the larger probes: about a small image (B100's x4 LR is 9,600)
    correct_prices = True  # False: the probed prices as they are (tests of pricing; comparing machines' probes)

    def _patch_side(self) -> int:
        """LR side of one routing patch; the windows whose time is priced add ``overlap`` on each side."""
        return PATCH_TILE if self.tile in (None, "auto") else self.tile

    def time_prices(self, names: Sequence[str] | None = None) -> dict[str, TimePrice]:
        """The :class:`TimePrice` of each branch in ``names`` (default: all), from measured forward passes of
        the windows routing runs: ``per_pixel`` is the median rate of passes of about ``LATENCY_PIXELS`` - a
        batch of ``tile`` patches with their context, and single windows of three shapes (merged windows,
        and the whole-image pass fractions are measured against) - and ``per_pass`` what one patch window
        takes beyond that rate. Per-pixel time moves between shapes of one size (at full width here:
        6.5-9.4 us, one shape 1.7x another at 0.75 width), so the median of several shapes prices an image
        of unknown shape, not one extrapolated probe. Medians of ``LATENCY_REPEATS`` rounds after
        ``LATENCY_WARMUP``, every branch asked for in every round, so a drift of the machine hits all of
        them; measured when first asked for (a branch no plan uses is never probed), then cached.

        The probe is then corrected by the branch's own passes as routing ran them (:meth:`correction`):
        one probe's prices moved the spend of a time budget 0.6 by 10 points of Multi-Adds between runs,
        and priced the routed windows of 50 B100 images 6% under their measured time."""
        names = list(self.runners if names is None else names)
        missing = [n for n in dict.fromkeys(names) if n not in self._prices]
        if missing:
            side = self._patch_side() + 2 * self.overlap
            n = max(1, min(self._batch(side * side), self.LATENCY_PIXELS // (side * side)))
            shapes = {(1, side, side), (n, side, side)}
            for aspect in (0.6, 0.9, 1.4):  # odd sides: 2^k-wide rows ran up to 1.7x slower per pixel once (cache-set aliasing)
                h = max(side, round(math.sqrt(self.LATENCY_PIXELS * aspect))) | 1
                shapes.add((1, h, max(side, self.LATENCY_PIXELS // h) | 1))
            gen = torch.Generator().manual_seed(0)
            probes = {s: torch.rand(s[0], 3, s[1], s[2], generator=gen).to(self.device) for s in sorted(shapes)}
            cuda = torch.device(self.device).type == "cuda"
            times: dict[tuple[str, tuple[int, int, int]], list[float]] = {(name, s): [] for name in missing for s in probes}
            with torch.no_grad():
                for _ in range(self.LATENCY_REPEATS + self.LATENCY_WARMUP):
                    for name in missing:
                        for s, x in probes.items():
                            t0 = time.perf_counter()
                            self.runners[name](x)
                            if cuda:
                                torch.cuda.synchronize()
                            times[name, s].append(time.perf_counter() - t0)
            med = {key: statistics.median(ts[self.LATENCY_WARMUP :]) for key, ts in times.items()}
            one = (1, side, side)
            for name in missing:
                rate = statistics.median(med[name, s] / (s[0] * s[1] * s[2]) for s in probes if s != one)
                self._prices[name] = TimePrice(rate, max(med[name, one] - rate * side * side, 0.0))
        return {name: self._prices[name].scaled(self.correction(name)) for name in names}

    def correction(self, name: str) -> float:
        """Measured over probed seconds of branch ``name``'s passes while routing (counted as
        :meth:`_timed` says), the probe itself counted as ``LATENCY_REPEATS`` passes of ``LATENCY_PIXELS``
        at its own price: 1 until routing has timed about as much as the probe did, then what the
        branch's windows really cost on this machine's images."""
        price = self._prices.get(name)
        seconds, pixels, passes = self._ran[name]
        if price is None or not passes or not self.correct_prices:
            return 1.0
        prior = self.LATENCY_REPEATS * price(self.LATENCY_PIXELS, 1)
        return (seconds + prior) / (price(pixels, int(passes)) + prior)

    def _measure_blend(self, patch: int) -> float:
        """Seconds per HR pixel that cross-fading seams costs over pasting cores: the same ``patch``
        windows of a stand-in network (nearest upsampling: almost free) rendered both ways, medians of
        interleaved rounds."""
        blend = min(self.overlap, patch) // 2
        if blend == 0:
            return 0.0
        side = max(math.isqrt(self.LATENCY_PIXELS), 2 * patch + 1)
        lr = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(1))
        tiles = windows(side, side, (patch, patch), self.overlap)

        def upsample(x: torch.Tensor) -> torch.Tensor:  # channels_last, as the engine's runners return SR
            return torch.nn.functional.interpolate(x, scale_factor=self.scale, mode="nearest").contiguous(memory_format=torch.channels_last)

        batch = self._pass_batch({"": tiles})
        paste, fade = [], []
        for _ in range(self.LATENCY_REPEATS + 1):
            t0 = time.perf_counter()
            self._render(lr, [(upsample, tiles)], 0, batch)
            t1 = time.perf_counter()
            self._render(lr, [(upsample, tiles[::2]), (upsample, tiles[1::2])], blend, batch)
            paste.append(t1 - t0)
            fade.append(time.perf_counter() - t1)
        return max(statistics.median(fade[1:]) - statistics.median(paste[1:]), 0.0) / (side * side * self.scale**2)

    def latencies(self) -> dict[str, float]:
        """Measured seconds per LR pixel of each branch (:meth:`time_prices`' pixel term): the per-pixel
        price a time budget's thresholds are calibrated with."""
        return {name: price.per_pixel for name, price in self.time_prices().items()}

    def describe(self) -> dict[str, Any]:
        return {
            "tile": self.tile,
            "overlap": self.overlap,
            "batch": self.batch,  # None: as many windows per pass as WINDOW_PIXELS hold
            "merge": self.merge,
            "runtime": self.runtime.label,
            "branches": [c.__dict__ for c in self.choices],
            "tiling_changes_output": self.tiling_changes,
            # the branches priced so far (a time budget, a time fraction): seconds per LR pixel and per pass,
            # corrected by their timed passes (Router.correction)
            "time_prices": {
                name: {**price.scaled(self.correction(name)).__dict__, "correction": self.correction(name)}
                for name, price in self._prices.items()
            },
        }
