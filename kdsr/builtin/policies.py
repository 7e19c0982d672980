"""Builtin inference policies: full, fixed, difficulty-aware (Dynamic-CSD) and budget-calibrated (ARM, ClassSR)."""

from __future__ import annotations

import collections
import functools
import heapq
import itertools
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from kdsr.errors import KdsrError, did_you_mean
from kdsr.hookspecs import hookimpl
from kdsr.inference import Choice, Policy, Router
from kdsr.metrics import PEAK, psnr, quantize
from kdsr.scoring import BATCHED, LEARNED, MEASURES, LearnedScorer, patch_features, patches_features
from kdsr.tiling import Window


class Full(Policy):
    looks = False

    def select(self, lr: torch.Tensor, choices: Sequence[Choice]) -> str:
        return max(choices, key=lambda c: c.macs_per_pixel).name


class Fixed(Policy):
    looks = False

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


AUTO_MIN_PATCHES = 4  # per="auto": an image of at least this many patches is routed patch by patch
COSTS = ("macs", "time")
HOLDS = ("image", "calibration")
DEFAULT_GRID = 20
SEARCH_MEMORY = 16  # time budgets: images whose search seconds price the next one's


class Difficulty(Policy):
    """Thresholds on an ease score pick the branch: score > t[0] -> cheapest, > t[1] -> next, ... else full.

    ``per``: ``image`` (one branch per image, Dynamic-CSD), ``patch`` (one per tile, ClassSR / ARM) or
    ``auto``: per patch on images of at least ``AUTO_MIN_PATCHES`` patches, else per image (a small
    image is one patch of content, and its seams would cost more than routing saves)."""

    def __init__(self, thresholds: list[float], measure: str, per: str, benchmark: bool = True) -> None:
        if measure not in MEASURES and measure != LEARNED:
            names = [*MEASURES, LEARNED]
            raise ValueError(f"unknown measure '{measure}'{did_you_mean(measure, names)}; measures: {', '.join(names)}")
        if not benchmark and measure != "redegradation":
            raise ValueError(f"benchmark: false is the redegradation measure's RGB mode; measure '{measure}' has none")
        if per not in ("image", "patch", "auto"):
            raise ValueError(f"per must be 'image', 'patch' or 'auto', got '{per}'")
        if any(a < b for a, b in zip(thresholds, thresholds[1:])):
            raise ValueError(f"thresholds must be descending (easiest first), got {thresholds}")
        self.thresholds, self.per, self.per_patch = list(thresholds), per, per != "image"
        # scores a batch of patches of one shape (kdsr.scoring.BATCHED); None: the learned scorer, fitted in prepare
        self.measure = None if measure == LEARNED else BATCHED[measure]
        if not benchmark:
            self.measure = functools.partial(BATCHED[measure], benchmark=False)
        self.scorer: LearnedScorer | None = None
        self.scale = 2

    def routes_patches(self, tiles: int) -> bool:
        return self.per == "patch" or (self.per == "auto" and tiles >= AUTO_MIN_PATCHES)

    def prepare(self, router: Router) -> None:
        self.scale = router.scale
        if self.measure is None:
            raise KdsrError("policy difficulty: measure 'learned' is fitted on a calibration folder; use --policy budget with calibration=DIR")
        if len(self.thresholds) != len(router.choices) - 1:
            raise KdsrError(
                f"policy difficulty: {len(self.thresholds)} thresholds for {len(router.choices)} branches; give one fewer than branches"
            )

    def score(self, lr: torch.Tensor) -> float:
        """The ease score of one patch (1x3xhxw)."""
        return self.batch_scores(lr)[0]

    def batch_scores(self, patches: torch.Tensor) -> list[float]:
        """The ease score of each patch of an Nx3xhxw batch (patches of one shape)."""
        if self.scorer is not None:
            return self.scorer.eases(patches_features(patches, self.scale))
        return self.measure(patches, self.scale)

    def level(self, score: float, offset: float = 0.0) -> int:
        """The branch (0: cheapest) of a patch of ``score``: the first threshold it exceeds (after ``offset``)."""
        return next((k for k, t in enumerate(self.thresholds) if score + offset > t), len(self.thresholds))

    def select(self, lr: torch.Tensor, choices: Sequence[Choice]) -> str:
        ordered = sorted(choices, key=lambda c: c.macs_per_pixel)  # cheapest first
        return ordered[self.level(self.score(lr))].name

    def route(self, lr: torch.Tensor, tiles: list[Window], router: Router) -> dict[str, list[Window]]:
        return self.assign(tiles, self.scores(lr, tiles), router.choices)

    def scores(self, lr: torch.Tensor, tiles: list[Window]) -> list[float]:
        """The ease score of each tile's core: cores of one shape (an even tiling has at most four) scored
        as one batch, so an image's scores cost a few calls, not a few per patch."""
        return per_core(lr, tiles, self.batch_scores)

    def assign(self, tiles: list[Window], scores: list[float], choices: Sequence[Choice], offset: float = 0.0) -> dict[str, list[Window]]:
        """Branch -> tiles, each tile by :meth:`level` of its score."""
        ordered = sorted(choices, key=lambda c: c.macs_per_pixel)
        groups: dict[str, list[Window]] = {}
        for t, s in zip(tiles, scores):
            groups.setdefault(ordered[self.level(s, offset)].name, []).append(t)
        return groups


def per_core(lr: torch.Tensor, tiles: list[Window], fn: Callable[[torch.Tensor], Sequence[Any]]) -> list[Any]:
    """``fn`` (one value per patch of an Nx3xhxw batch) of each tile's core, the cores of one shape as one batch."""
    shapes: dict[tuple[int, int], list[int]] = {}
    for i, t in enumerate(tiles):
        shapes.setdefault((t.core[1] - t.core[0], t.core[3] - t.core[2]), []).append(i)
    out: list[Any] = [None] * len(tiles)
    for group in shapes.values():
        cores = torch.cat([lr[..., tiles[i].core[0] : tiles[i].core[1], tiles[i].core[2] : tiles[i].core[3]] for i in group])
        for i, value in zip(group, fn(cores)):
            out[i] = value
    return out


class Budget(Difficulty):
    """Difficulty routing whose thresholds are calibrated so the expected cost is a fraction of the full
    branch's, maximising mean PSNR on a calibration folder (ARM's calibrated lookup over kdsr branches).

    ``cost``: ``macs`` (Multi-Adds) or ``time``, priced by the router's measured branch latencies. The
    thresholds are per-patch score quantiles of the whole calibration folder. ``hold``: ``image`` (default)
    holds the budget on every image routed patch by patch: the thresholds are shifted by the one offset
    (in score units) whose spend on that image's own windows, priced after merging (:meth:`Router.spend`),
    is nearest the budget (just over it where that is nearer than just under, so images' misses cancel),
    so the budget holds on images unlike the calibration's.
    ``calibration`` keeps the thresholds as calibrated: a patch of given content gets the same branch
    whatever image it is in, and harder images spend more (the budget holds only on similar images).
    ``measure: learned`` first fits :class:`kdsr.scoring.LearnedScorer` on the same calibration patches and
    then routes by what it predicts instead of by one ease order: each patch's moves to wider branches are
    ranked by the squared error they are predicted to remove per unit of cost (:func:`gain_moves`), and an
    image takes the steepest moves its budget pays for (``hold: image``; the context of the seams a move
    opens or closes counted in its cost) or every move steeper than the one gain
    calibrated on the folder (``hold: calibration``, :func:`fit_gain_threshold`). A patch whose middle
    branch buys little over the narrow one but whose full branch buys much then skips to the full one,
    which no threshold on a single score can do.
    ``grid``: score quantiles tried per branch boundary; ``None`` (the report's few training images) takes
    ``DEFAULT_GRID`` or as many as the calibration has patches."""

    def __init__(
        self,
        budget: float,
        calibration: Any,
        measure: str,
        per: str,
        grid: int | None,
        benchmark: bool = True,
        cost: str = "macs",
        hold: str = "image",
    ) -> None:
        super().__init__([], measure, per, benchmark)
        if hold not in HOLDS:
            raise ValueError(f"hold must be one of {', '.join(HOLDS)}, got '{hold}'")
        self.hold = hold
        if not 0 < budget <= 1:
            raise ValueError(f"budget must be a fraction in (0, 1], got {budget}")
        if cost not in COSTS:
            raise ValueError(f"cost must be one of {', '.join(COSTS)}, got '{cost}'")
        if grid is not None and grid < 1:
            raise ValueError(f"grid must be >= 1, got {grid}")
        self.budget, self.calibration, self.grid, self.cost = budget, calibration, grid, cost
        self.target = (cost, budget)
        self.expected: dict[str, Any] = {}
        self.ordered: list[Choice] = []  # the router's branches, cheapest first (prepare)
        self.gain = math.inf  # measure learned: the least gain a move needs under hold: calibration (prepare)

    def prepare(self, router: Router) -> None:
        self.scale = router.scale
        learned = self.measure is None
        table = calibration_table(router, self.calibration, None if learned else self.score, features=learned)
        grid = self.grid or min(DEFAULT_GRID, len(table))  # None: as fine as the calibration allows
        if not learned and len(table) < grid:  # the learned scorer has no grid; it checks its own minimum
            unit = "patch(es)" if any(r["patch"] for r in table) else "image(s)"
            raise KdsrError(
                f"policy budget: the calibration gave {len(table)} {unit}, fewer than the budget grid of {self.grid}; "
                f"add images to the calibration folder or lower --policy-option grid"
            )
        if self.cost == "macs":
            self.prices = {c.name: c.macs_per_pixel for c in router.choices}
        else:  # measured now, not inside the first image's search, whose seconds the spend counts
            self.prices = router.latencies()
            router.blend_price()
        self.ordered = sorted(router.choices, key=lambda c: c.macs_per_pixel)  # cheapest first
        if learned:
            self.scorer = fit_scorer(table, router.choices)
            losses = added_losses(self.scorer, np.stack([r["features"] for r in table]), len(self.ordered))
            self.gain, self.expected = fit_gain_threshold(losses, table, router.choices, self.budget, self.prices)
        else:
            self.thresholds, self.expected = fit_thresholds(table, router.choices, self.budget, grid, self.prices)
        # time: the search's seconds per tile on recent images; their median prices the next image's search
        # (a mean let one slow search, a pause of the machine, starve the images after it)
        self._search_seconds: collections.deque[float] = collections.deque(maxlen=SEARCH_MEMORY)

    def select(self, lr: torch.Tensor, choices: Sequence[Choice]) -> str:
        if self.scorer is None:
            return super().select(lr, choices)
        losses = added_losses(self.scorer, patch_features(lr, self.scale)[None], len(self.ordered))
        return self.ordered[self._levels(*self._moves(losses), 1, gain=self.gain)[0]].name

    def _moves(self, losses: np.ndarray) -> tuple[list[tuple[float, int, int]], int]:
        return gain_moves(losses, [self.prices[c.name] for c in self.ordered])

    @staticmethod
    def _levels(moves: list[tuple[float, int, int]], start: int, n: int, count: int | None = None, gain: float = -math.inf) -> list[int]:
        """Each of ``n`` patches' branch (index, cheapest first) after the first ``count`` moves (all if
        None) that are at least as steep as ``gain``."""
        level = [start] * n
        for g, i, k in moves[:count]:
            if g < gain:
                break
            level[i] = k
        return level

    def _by_level(self, tiles: list[Window], levels: list[int]) -> dict[str, list[Window]]:
        groups: dict[str, list[Window]] = {}
        for t, k in zip(tiles, levels):
            groups.setdefault(self.ordered[k].name, []).append(t)
        return groups

    def losses(self, lr: torch.Tensor, tiles: list[Window]) -> np.ndarray:
        """The learned scorer's predicted loss of each branch on each tile's core (:func:`added_losses`)."""
        rows = per_core(lr, tiles, lambda cores: added_losses(self.scorer, patches_features(cores, self.scale), len(self.ordered)))
        return np.stack(rows)

    def route(self, lr: torch.Tensor, tiles: list[Window], router: Router) -> dict[str, list[Window]]:
        learned = self.scorer is not None
        if self.hold == "calibration":
            if learned:
                return self._by_level(tiles, self._levels(*self._moves(self.losses(lr, tiles)), len(tiles), gain=self.gain))
            return super().route(lr, tiles, router)
        t0 = time.perf_counter()
        # candidate plans, most spent first; the spend falls from one to the next (up to merging): bisect
        # for where it crosses the budget, keep the nearer side
        if learned:  # the steepest moves, their seams' context counted: all of them, all but the last, ...
            seams = router.overlap if router.merge else 0
            prices = [self.prices[c.name] for c in self.ordered]
            moves, start = gain_moves(self.losses(lr, tiles), prices, tiles, seams)
            candidates = len(moves) + 1
            plan: Callable[[int], dict[str, list[Window]]] = lambda j: self._by_level(tiles, self._levels(moves, start, len(tiles), len(moves) - j))
        else:  # the thresholds shifted by offsets between the points where a patch changes branch
            scores = self.scores(lr, tiles)
            points = sorted({t - s for t in self.thresholds if math.isfinite(t) for s in scores if math.isfinite(s)})
            offsets = [points[0] - 1, *((a + b) / 2 for a, b in zip(points, points[1:])), points[-1] + 1] if points else [0.0]
            candidates = len(offsets)
            plan = lambda j: self.assign(tiles, scores, router.choices, offsets[j])
        h, w = lr.shape[-2:]
        timed = self.cost == "time"
        t1 = time.perf_counter()
        # a time budget pays for this policy's own work too: the scores, and the search as it ran on earlier images
        own = 0.0
        if timed:
            search = statistics.median(self._search_seconds) if self._search_seconds else 0.0
            own = (t1 - t0) + search * len(tiles)
        spend = functools.lru_cache(maxsize=None)(lambda j: router.spend(plan(j), h, w, timed, own))
        lo, hi = 0, candidates - 1  # the first plan within budget is in [lo, hi] (the last if none is)
        while lo < hi:
            mid = (lo + hi) // 2
            if spend(mid) <= self.budget:
                hi = mid
            else:
                lo = mid + 1
        if lo > 0 and abs(spend(lo - 1) - self.budget) < abs(spend(lo) - self.budget):
            lo -= 1  # just over the budget is nearer it than just under: images' misses then cancel
        groups = plan(lo)
        if timed:
            self._search_seconds.append((time.perf_counter() - t1) / len(tiles))
        return groups


def fit_scorer(rows: list[dict[str, Any]], choices: Sequence[Choice]) -> LearnedScorer:
    """The learned scorer fitted on calibration rows: features -> the squared error each cheaper branch adds
    to the full one's on a patch (MSE, 8-bit units).

    An image's PSNR is its mean squared error in dB, so a patch's share of the image's PSNR loss is the
    error it adds, not its own dB: a flat patch can lose 1 dB and add almost nothing. Fitted to the patches'
    dB losses instead, the scorer fell under the fixed widths at 5 of 12 budgets on Set5/Set14/B100 (B100
    0.6: +0.008 dB above them); fitted to the added error, at 2, both by under 0.005 dB (B100 0.6: +0.025)."""
    ordered = sorted(choices, key=lambda c: c.macs_per_pixel)
    full, cheaper = ordered[-1].name, [c.name for c in ordered[:-1]] or [ordered[-1].name]
    features = np.stack([r["features"] for r in rows])
    losses = np.array([[mse_of(r["psnr"][b]) - mse_of(r["psnr"][full]) for b in cheaper] for r in rows])
    return LearnedScorer().fit(features, losses, cheaper)


def added_losses(scorer: LearnedScorer, features: np.ndarray, branches: int) -> np.ndarray:
    """The squared error per pixel each of ``branches`` (cheapest first) is predicted to add over the full
    one's on each patch (N x branches, the full one's column 0): the scorer's prediction made
    non-increasing with cost and non-negative, as a wider branch of one network does not add more."""
    predicted = np.atleast_2d(scorer.predict(np.atleast_2d(features)))[:, : branches - 1]
    losses = np.hstack([predicted, np.zeros((predicted.shape[0], 1))])
    return np.maximum(np.minimum.accumulate(losses, axis=1), 0.0)


def gain_moves(
    losses: np.ndarray, prices: Sequence[float], tiles: Sequence[Window] | None = None, overlap: int = 0
) -> tuple[list[tuple[float, int, int]], int]:
    """Every patch's moves to wider branches, steepest first, and the branch every patch starts on.

    ``losses``: N x B, the squared error per pixel each branch adds on each patch; ``prices``: each branch's
    price per pixel (Multi-Adds or seconds). A patch starts on the cheapest branch; each move takes it to the
    wider branch that removes the most error per unit of price from where it stands, so it moves along the
    lower convex hull of its (price, loss) points, passing over branches that buy less than their neighbours.
    A move is ``(error removed per unit of price, patch, branch)``. Taking moves in this order while the
    budget lasts is the greedy solution of the multiple-choice knapsack (exact for its LP relaxation): the
    image's squared error, and so its PSNR, bought where it is cheapest. Of branches at one price the first
    listed is kept; moves that would add error are left out.

    ``tiles`` (the patches of one image, as routed) with ``overlap``: the context their seams cost counts in
    each move. Merged routing (:func:`kdsr.tiling.merge`) computes ``overlap`` LR pixels of context on both
    sides of every edge where neighbouring patches are served by different branches, each side at its own
    branch's price: ``overlap * edge * (price_a + price_b)``. A move that opens seams costs that much more,
    one that joins its neighbours' branch saves it, so the greedy grows regions instead of scattering
    patches (on Set5's small images the context was 12-17% of the Multi-Adds spent). Taking a move re-prices
    its neighbours' next moves (a heap of every patch's steepest move, kept current); every prefix of the
    order is a plan."""
    order = sorted(range(len(prices)), key=lambda k: (prices[k], k))
    ladder = [order[0]]
    for k in order[1:]:  # of branches at one price the first listed
        if prices[k] > prices[ladder[-1]]:
            ladder.append(k)
    tiles = tiles or []
    cells = {(t.core[0], t.core[2]): i for i, t in enumerate(tiles)}
    ys, xs = sorted({t.core[:2] for t in tiles}), sorted({t.core[2:] for t in tiles})
    below, right = {a[0]: b[0] for a, b in zip(ys, ys[1:])}, {a[0]: b[0] for a, b in zip(xs, xs[1:])}
    edges: list[list[tuple[int, int]]] = [[] for _ in losses]  # each patch's (neighbour, shared edge in LR pixels)
    for i, t in enumerate(tiles):
        for j, edge in ((cells.get((below.get(t.core[0]), t.core[2])), t.core[3] - t.core[2]),
                        (cells.get((t.core[0], right.get(t.core[2]))), t.core[1] - t.core[0])):
            if j is not None:
                edges[i].append((j, edge))
                edges[j].append((i, edge))
    pixels = [(t.core[1] - t.core[0]) * (t.core[3] - t.core[2]) for t in tiles] or [1] * len(losses)
    level = [order[0]] * len(losses)

    def seams(i: int, k: int) -> float:
        return sum(overlap * e * (prices[k] + prices[level[j]]) for j, e in edges[i] if level[j] != k)

    def best(i: int) -> tuple[float, int] | None:
        """Patch i's steepest move from where it stands (the wider branch on ties), or None."""
        a, found = level[i], None
        for b in ladder[ladder.index(a) + 1 :]:
            removed = float(losses[i][a] - losses[i][b]) * pixels[i]
            if removed < 0:
                continue
            cost = (prices[b] - prices[a]) * pixels[i] + seams(i, b) - seams(i, a)
            gain = removed / cost if cost > 0 else math.inf
            if found is None or (gain, prices[b]) >= (found[0], prices[found[1]]):
                found = (gain, b)
        return found

    version = [0] * len(losses)  # a patch's heap entry is current while its version is
    heap = [(-m[0], i, prices[m[1]], m[1], 0) for i in range(len(losses)) if (m := best(i))]
    heapq.heapify(heap)
    moves: list[tuple[float, int, int]] = []
    while heap:
        gain, i, _, k, v = heapq.heappop(heap)
        if v != version[i]:
            continue
        level[i] = k
        moves.append((-gain, i, k))
        for p in (i, *(j for j, _ in edges[i])):  # the move re-prices its neighbours' seams
            version[p] += 1
            if (m := best(p)) is not None:
                heapq.heappush(heap, (-m[0], p, prices[m[1]], m[1], version[p]))
    return moves, order[0]


def fit_gain_threshold(
    losses: np.ndarray, rows: list[dict[str, Any]], choices: Sequence[Choice], budget: float, cost: dict[str, float]
) -> tuple[float, dict[str, Any]]:
    """The least gain a move needs (squared error removed per unit of price) for the calibration's patches,
    moved in :func:`gain_moves` order, to spend the budget: the learned policy's one calibrated number. It
    is positive: where the budget outlasts every move predicted to gain, the calibration spends less.
    ``losses``: the predicted :func:`added_losses` of ``rows`` (:func:`calibration_table`'s); returns it with
    what the calibration expects (as :func:`fit_thresholds`: fraction, mean patch PSNR, shares)."""
    ordered = sorted(choices, key=lambda c: c.macs_per_pixel)
    prices = [cost[c.name] for c in ordered]
    pixels = [r["pixels"] for r in rows]
    moves, start = gain_moves(losses, prices)
    cap, spent = budget * prices[-1] * sum(pixels), prices[start] * sum(pixels)
    if spent > cap * (1 + 1e-9):
        raise unreachable(budget, prices[start] / prices[-1])
    level, threshold = [start] * len(rows), math.inf
    for g, i, k in moves:
        extra = (prices[k] - prices[level[i]]) * pixels[i]
        if g <= 0 or spent + extra > cap * (1 + 1e-9):  # a gain of 0 would move every patch predicted to gain nothing
            break
        spent, level[i], threshold = spent + extra, k, g
    shares = {c.name: sum(1 for k in level if k == b) / len(rows) for b, c in enumerate(ordered)}
    psnr_ = sum(r["psnr"][ordered[k].name] for r, k in zip(rows, level)) / len(rows)
    return threshold, {"fraction": spent / (prices[-1] * sum(pixels)), "psnr": psnr_, "tiles": len(rows), "shares": shares}


def unreachable(budget: float, cheapest: float) -> KdsrError:
    return KdsrError(f"policy budget: no routing reaches budget {budget}; the cheapest branch alone costs {cheapest:.2f} of the full one, raise the budget")


def mse_of(psnr_db: float) -> float:
    """The mean squared error (8-bit units) a PSNR against peak 255 stands for."""
    return PEAK**2 * 10 ** (-psnr_db / 10)


def calibration_table(router: Router, source: Any, score: Callable[[torch.Tensor], float] | None, features: bool = False) -> list[dict[str, Any]]:
    """Per calibration patch (or image, where the policy routes it whole): ease score, pixels, and each
    branch's PSNR on it; with ``features``, the learned scorer's features too (``score`` may then be None).

    ``source``: an HR image folder, or ``(name, lr_uint8, hr_uint8)`` pairs already made (the
    report calibrates on a run's training pairs, which need not be a folder)."""
    from kdsr.data import ImageFolder, SRPairs, to_float
    from kdsr.tiling import WINDOW_PIXELS, run_windows, window_pixels

    is_folder = isinstance(source, (str, os.PathLike))
    rows = []
    for _, lr_u8, hr_u8 in SRPairs(ImageFolder(source), router.scale) if is_folder else source:
        lr, hr = to_float(lr_u8).unsqueeze(0), to_float(hr_u8)
        tiles = router._tiles(*lr.shape[-2:])
        per_patch = router.policy.routes_patches(len(tiles))
        outs = {}
        for c in router.choices:  # through the engine's prepared runners, each over the whole image as routing runs it
            out = torch.empty(1, 3, hr.shape[-2], hr.shape[-1])
            plan = router.plan({c.name: tiles}, *lr.shape[-2:])[c.name] if per_patch else tiles
            run_windows(router.runners[c.name], lr, router.scale, plan, out, router.batch or len(plan), router.device, pixels=WINDOW_PIXELS)
            outs[c.name] = quantize(out[0])
        units = tiles if per_patch else [None]
        for t in units:
            if t is None:
                y0, y1, x0, x1 = 0, lr.shape[-2], 0, lr.shape[-1]
            else:
                y0, y1, x0, x1 = t.core
            s = router.scale
            ref = hr[:, y0 * s : y1 * s, x0 * s : x1 * s]
            if t is None:
                pixels = sum(window_pixels(u) for u in tiles)
            else:  # merged routing pays a patch's context only where branches meet: price its core
                pixels = (y1 - y0) * (x1 - x0) if router.merge else window_pixels(t)
            patch = lr[..., y0:y1, x0:x1]
            row: dict[str, Any] = {"score": score(patch) if score else 0.0, "pixels": pixels, "patch": per_patch, "psnr": {}}
            if features:
                row["features"] = patch_features(patch, s)
            for name, sr in outs.items():
                row["psnr"][name] = min(psnr(sr[:, y0 * s : y1 * s, x0 * s : x1 * s], ref, 0), 100.0)
            rows.append(row)
    if not rows:
        where = f"folder '{source}'" if is_folder else "set"
        raise KdsrError(f"policy budget: calibration {where} gave no images; give a folder of HR images")
    return rows


def fit_thresholds(
    rows: list[dict[str, Any]], choices: Sequence[Choice], budget: float, grid: int, cost: dict[str, float] | None = None
) -> tuple[list[float], dict[str, Any]]:
    """Cut the ease-sorted tiles into contiguous groups (hardest -> most expensive branch) on a
    quantile grid; keep the cut with the best mean PSNR whose cost fraction is within budget.

    ``cost``: per-pixel cost of each branch (default its Multi-Adds; a time budget passes latencies)."""
    cost = cost or {c.name: c.macs_per_pixel for c in choices}
    ordered = sorted(choices, key=lambda c: c.macs_per_pixel)  # cheapest first
    full = cost[ordered[-1].name]
    rows = sorted(rows, key=lambda r: -r["score"])  # easiest first
    n = len(rows)
    total_px = sum(r["pixels"] for r in rows)
    cuts = sorted({round(i * n / grid) for i in range(grid + 1)})
    best: tuple[float, list[int]] | None = None
    best_frac = None
    for split in itertools.combinations_with_replacement(cuts, len(ordered) - 1):
        bounds = [0, *split, n]
        spent = quality = 0.0
        for b, choice in enumerate(ordered):
            for r in rows[bounds[b] : bounds[b + 1]]:
                spent += cost[choice.name] * r["pixels"]
                quality += r["psnr"][choice.name]
        frac = spent / (full * total_px)
        if frac <= budget + 1e-9 and (best is None or quality > best[0]):
            best, best_frac = (quality, bounds), frac
    if best is None:
        raise unreachable(budget, cost[ordered[0].name] / full)
    bounds = best[1]
    # threshold between groups: the score of the first tile *after* each group (score > t -> that group)
    thresholds = [rows[b]["score"] if b < n else float("-inf") for b in bounds[1:-1]]
    shares = {c.name: (bounds[b + 1] - bounds[b]) / n for b, c in enumerate(ordered)}
    return thresholds, {"fraction": best_frac, "psnr": best[0] / n, "tiles": n, "shares": shares}


def full() -> Policy:
    """Always run the most expensive branch (the full model)."""
    return Full()


def fixed(branch: str | None = None, width: float | None = None) -> Policy:
    """Always run one branch, named or by width."""
    if (branch is None) == (width is None):
        raise ValueError("policy fixed needs exactly one of 'branch' or 'width'")
    return Fixed(branch, width)


def difficulty(thresholds: list[float], measure: str = "redegradation", per: str = "auto", benchmark: bool = True) -> Policy:
    """Dynamic-CSD routing: descending thresholds on an ease score (re-degradation PSNR by default), per
    patch on images of several patches (``per``: auto, patch or image).

    ``benchmark``: the official score's benchmark mode (Y, shave = scale); false is its other mode (RGB,
    shave = scale + 6), which the official code uses on non-benchmark sets such as DIV2K validation.
    """
    return Difficulty(thresholds, measure, per, benchmark)


def budget(
    budget: float,
    calibration: str,
    measure: str = LEARNED,
    per: str = "auto",
    grid: int = DEFAULT_GRID,
    benchmark: bool = True,
    cost: str = "macs",
    hold: str = "image",
) -> Policy:
    """Routing calibrated on a folder to spend a fraction of the full branch's Multi-Adds (``cost: macs``)
    or measured time (``cost: time``). ``measure``: ``learned`` (default: a scorer fitted on the folder,
    routing by the error it predicts each wider branch removes per unit of cost; on the bench's Pro-CSD
    network the one measure above the fixed widths at every budget, bench/README.md) or a fixed measure
    whose score quantiles are calibrated (``redegradation``: Dynamic-CSD's rule; ``edge``: ARM's; ``gradient``,
    ``variance``); ``per``, ``benchmark`` as in difficulty; ``grid``: score quantiles tried per branch
    boundary (fixed measures); ``hold``: ``image`` (each image routed by patches spends the budget) or
    ``calibration`` (the calibrated thresholds as they are)."""
    return Budget(budget, calibration, measure, per, grid, benchmark, cost, hold)


@hookimpl
def register_policies(register) -> None:
    register("full", full)
    register("fixed", fixed)
    register("difficulty", difficulty)
    register("budget", budget)
