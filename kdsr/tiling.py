"""Tiled super-resolution of any image size with bounded memory.

The LR image is cut into core tiles, each axis split evenly (cores of at most ``tile`` pixels whose
sizes differ by at most one, so no thin last tile pays for a whole window); each is run inside a
window that adds ``overlap`` LR pixels of context on every side (windows are shifted inwards at the
borders, so all windows share one shape and are batched). Only each window's core is kept (or, with ``blend``, its core widened by a
cross-fade band). For a CNN whose receptive-field radius is at most ``overlap`` (``overlap - blend``
when blending) the stitched result equals whole-image inference; for windowed transformers and
networks that pool over the whole input (RCAN's channel attention, IMDN's contrast-aware attention)
it is only an approximation, and :func:`tiles_change_output` says which networks those are.
Per-patch routing joins neighbouring tiles served by one branch into one window (:func:`merge`), so a
branch pays the context only around its region, not around every patch of it.
Only the window batch lives on the device, and only the rows that unfinished windows reach are held in
float: :func:`stitch` hands each finished band of HR rows to its caller (the router quantises it into a
uint8 image), so the memory of a huge output is its 8-bit image plus a strip.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode


@dataclass(frozen=True)
class Window:
    """One tile: its core (what it contributes) and the window it is computed in, in LR pixels."""

    core: tuple[int, int, int, int]  # y0, y1, x0, x1
    window: tuple[int, int, int, int]


def _split(size: int, tile: int) -> tuple[int, int]:
    """(number of cores, largest core) of an axis of ``size`` split evenly into cores of at most ``tile``."""
    n = -(-size // tile)
    return n, -(-size // n)


def _axis(size: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """(core0, core1, win0, win1) along one axis: ``ceil(size / tile)`` cores of ``size / n`` (rounded
    either way), all in windows of one length, min(size, largest core + 2*overlap)."""
    n, core = _split(size, tile)
    win = min(size, core + 2 * overlap)
    out = []
    for i in range(n):
        c0, c1 = i * size // n, (i + 1) * size // n
        w0 = min(max(c0 - overlap, 0), size - win)
        out.append((c0, c1, w0, w0 + win))
    return out


def windows(h: int, w: int, tile: int | tuple[int, int], overlap: int) -> list[Window]:
    """The tiling of an h x w LR image into even cores of at most ``tile`` (one side, or (height, width)), row by row."""
    th, tw = (tile, tile) if isinstance(tile, int) else tile
    if min(th, tw) < 1 or overlap < 0:
        raise ValueError(f"tile must be >= 1 and overlap >= 0, got tile={tile}, overlap={overlap}")
    return [
        Window((y0, y1, x0, x1), (wy0, wy1, wx0, wx1))
        for (y0, y1, wy0, wy1) in _axis(h, th, overlap)
        for (x0, x1, wx0, wx1) in _axis(w, tw, overlap)
    ]


WINDOW_PIXELS = 1 << 17  # LR pixels per forward pass when kdsr picks the tiles: ~1.3 GB of EDSR-baseline x4 activations
# HR pixels of an output :func:`stitch` holds in float at once (24 MiB of RGB, 8 of blend weights): a smaller
# one is stitched as one band, so each branch's windows run batched across tile rows (fewer passes)
STITCH_BAND_PIXELS = 1 << 21


def stitched_by_row(lr_pixels: int, scale: int) -> bool:
    """Whether :func:`stitch` runs the tiles of an image of ``lr_pixels`` one row of tiles at a time (a large output)."""
    return lr_pixels * scale**2 > STITCH_BAND_PIXELS


def plan_tile(h: int, w: int, overlap: int, max_pixels: int = WINDOW_PIXELS) -> tuple[int, int]:
    """The (height, width) of core tiles whose windows hold at most ``max_pixels`` LR pixels and that
    compute the fewest pixels in all.

    Each axis is split evenly, as :func:`windows` splits it, so the overlap's extra compute is as small
    as the memory bound allows: an image that fits is one window (tiled == whole at no cost); 960x540
    at overlap 16 becomes two 480-wide tiles (+7%).
    """
    best: tuple[int, int, int] | None = None
    for rows in range(1, h + 1):
        ny, th = _split(h, -(-h // rows))  # the rows' cores as windows() cuts them
        wh = min(h, th + 2 * overlap)
        cap = max_pixels // wh  # widest window that fits
        if cap < 1:
            continue
        nx, tw = _split(w, w if w <= cap else max(cap - 2 * overlap, 1))
        ww = min(w, tw + 2 * overlap)
        cost = ny * wh * nx * ww
        if wh * ww <= max_pixels and (best is None or cost < best[0]):
            best = (cost, th, tw)
        if th <= overlap:  # from here on the context outweighs the cores
            break
    return (best[1], best[2]) if best else (1, 1)  # nothing fits: the smallest tiles


def window_pixels(t: Window) -> int:
    """LR pixels a window computes (its core plus context)."""
    return (t.window[1] - t.window[0]) * (t.window[3] - t.window[2])


MERGE_HEIGHT = 256  # LR rows a merged window's core spans at most: bounds the float strip stitch holds


def merge(
    cells: dict[str, list[Window]], h: int, w: int, overlap: int, max_pixels: int = WINDOW_PIXELS, max_height: int = MERGE_HEIGHT
) -> dict[str, list[Window]]:
    """Join neighbouring cells of one tiling (:func:`windows`) that the same key (a branch) serves into
    rectangles, each computed as one window: its core plus ``overlap`` context, clamped to the image.

    Cells are taken row by row; each unclaimed cell grows right, then down, over unclaimed cells of its
    key, while the window holds at most ``max_pixels`` LR pixels and the core at most ``max_height``
    rows. A cell that stays alone keeps its own window (one shape with its like, so they batch). One
    key everywhere gives the fewest windows the bounds allow: an image that fits is one window.
    """
    ys = sorted({t.core[:2] for ts in cells.values() for t in ts})
    xs = sorted({t.core[2:] for ts in cells.values() for t in ts})
    row, col = {y: i for i, y in enumerate(ys)}, {x: j for j, x in enumerate(xs)}
    grid: dict[tuple[int, int], tuple[str, Window]] = {
        (row[t.core[:2]], col[t.core[2:]]): (key, t) for key, ts in cells.items() for t in ts
    }

    def fits(i0: int, i1: int, j0: int, j1: int) -> bool:
        y0, y1, x0, x1 = ys[i0][0], ys[i1][1], xs[j0][0], xs[j1][1]
        wy = min(y1 + overlap, h) - max(y0 - overlap, 0)
        wx = min(x1 + overlap, w) - max(x0 - overlap, 0)
        return wy * wx <= max_pixels and y1 - y0 <= max_height

    def free(i: int, j: int, key: str) -> bool:
        return (i, j) in grid and (i, j) not in claimed and grid[i, j][0] == key

    claimed: set[tuple[int, int]] = set()
    out: dict[str, list[Window]] = {key: [] for key in cells}
    for i, j in sorted(grid):
        if (i, j) in claimed:
            continue
        key, cell = grid[i, j]
        j1 = j
        while free(i, j1 + 1, key) and fits(i, i, j, j1 + 1):
            j1 += 1
        i1 = i
        while all(free(i1 + 1, jj, key) for jj in range(j, j1 + 1)) and fits(i, i1 + 1, j, j1):
            i1 += 1
        claimed.update((ii, jj) for ii in range(i, i1 + 1) for jj in range(j, j1 + 1))
        if (i1, j1) == (i, j):
            out[key].append(cell)
            continue
        y0, y1, x0, x1 = ys[i][0], ys[i1][1], xs[j][0], xs[j1][1]
        window = (max(y0 - overlap, 0), min(y1 + overlap, h), max(x0 - overlap, 0), min(x1 + overlap, w))
        out[key].append(Window((y0, y1, x0, x1), window))
    return out


def _batches(items: list[Window], size: int, pixels: int | None) -> Iterator[list[Window]]:
    """Windows of one shape together (in order of first appearance), ``size`` per batch, fewer where a batch
    would hold more than ``pixels`` LR pixels (at least one)."""
    shapes: dict[tuple[int, int], list[Window]] = {}
    for t in items:
        shapes.setdefault((t.window[1] - t.window[0], t.window[3] - t.window[2]), []).append(t)
    for (wh, ww), group in shapes.items():
        n = size if pixels is None else max(1, min(size, pixels // (wh * ww)))
        for i in range(0, len(group), n):
            yield group[i : i + n]


def forward_passes(tiles: list[Window], batch: int, pixels: int | None, by_row: bool = False) -> int:
    """How many forward passes :func:`run_windows` makes over ``tiles`` (``by_row``: as :func:`stitch`
    runs them, the tiles starting on one row at a time): what a per-pass cost is counted on."""
    if not by_row:
        return sum(1 for _ in _batches(tiles, batch, pixels))
    rows: dict[int, list[Window]] = {}
    for t in tiles:
        rows.setdefault(t.core[0], []).append(t)
    return sum(sum(1 for _ in _batches(group, batch, pixels)) for group in rows.values())


@functools.lru_cache(maxsize=4096)  # a tiling has few distinct cores per axis; the weights are only read
def _ramp(c0: int, c1: int, size: int, band: int, scale: int) -> tuple[int, torch.Tensor]:
    """Blend weights along one axis for the core [c0, c1) (LR) of an axis of ``size``: a linear ramp
    over ``2 * band`` LR pixels centred on each interior core edge, so neighbours' weights sum to 1.
    Returns the first HR index covered and the HR weights (below 1 only on the ``2 * band * scale``
    ramped HR pixels at each interior edge)."""
    lo = max(c0 - band, 0) if c0 > 0 else 0
    hi = min(c1 + band, size) if c1 < size else size
    p = torch.arange(lo * scale, hi * scale, dtype=torch.float32) + 0.5
    w = torch.ones_like(p)
    width = 2 * band * scale
    if c0 > 0:
        w = w * ((p - (c0 - band) * scale) / width).clamp(0, 1)
    if c1 < size:
        w = w * (((c1 + band) * scale - p) / width).clamp(0, 1)
    return lo * scale, w


@torch.no_grad()
def run_windows(
    fn: Callable[[torch.Tensor], torch.Tensor],
    lr: torch.Tensor,
    scale: int,
    tiles: list[Window],
    out: torch.Tensor,
    batch: int = 4,
    device: torch.device | str = "cpu",
    blend: int = 0,
    weights: torch.Tensor | None = None,
    row0: int = 0,
    pixels: int | None = None,
) -> None:
    """Super-resolve ``tiles`` of ``lr`` (1x3xhxw, CPU) with ``fn`` into ``out``: windows of one shape
    ``batch`` at a time, fewer where a pass would hold more than ``pixels`` LR pixels.

    ``blend == 0`` pastes each core. ``blend > 0`` (at most the overlap) instead accumulates each tile
    over its core widened by ``blend`` LR pixels, weighted by linear ramps, into ``out`` (zeros where
    ramps fall) and the weight sum into ``weights`` (1x1xHxW): divide once every tile is in; with
    ``weights=None`` the ramps must sum to 1 (:func:`unit_ramps`) and ``out`` is the result. Seams between tiles served
    by different branches are then cross-faded instead of cut. ``out`` starts at HR row ``row0``
    (a strip of the output, see :func:`stitch`). A uint8 ``out`` (no blending) gets each core
    quantised as it is pasted, so no float copy of the whole output is ever made.
    """
    h, w = lr.shape[-2:]
    for group in _batches(tiles, batch, pixels):
        x = torch.cat([lr[..., t.window[0] : t.window[1], t.window[2] : t.window[3]] for t in group]).to(device)
        y = fn(x).float().cpu()
        for t, sr in zip(group, y):
            (y0, y1, x0, x1), (wy0, _, wx0, _) = t.core, t.window
            if blend == 0:
                oy, ox = (y0 - wy0) * scale, (x0 - wx0) * scale
                core = sr[:, oy : oy + (y1 - y0) * scale, ox : ox + (x1 - x0) * scale]
                if out.dtype == torch.uint8:
                    core = core.clamp(0, 1).mul_(255).round_().to(torch.uint8)
                out[0, :, y0 * scale - row0 : y1 * scale - row0, x0 * scale : x1 * scale] = core
                continue
            ty, wy = _ramp(y0, y1, h, blend, scale)
            tx, wx = _ramp(x0, x1, w, blend, scale)
            oy, ox = ty - wy0 * scale, tx - wx0 * scale
            patch = sr[:, oy : oy + len(wy), ox : ox + len(wx)]
            target = out[0, :, ty - row0 : ty - row0 + len(wy), tx : tx + len(wx)]
            if weights is None:
                ramp = 2 * blend * scale  # HR pixels of each interior edge's ramp
                _add_faded(target, patch, wy, wx, ramp * (y0 > 0), ramp * (y1 < h), ramp * (x0 > 0), ramp * (x1 < w))
                continue
            weight = wy[:, None] * wx[None, :]
            target += patch * weight
            weights[0, 0, ty - row0 : ty - row0 + len(wy), tx : tx + len(wx)] += weight


def unit_ramps(tiles: Sequence[Window], blend: int) -> bool:
    """Whether cross-fading ``tiles`` (cores tiling an image, e.g. merged cells of one tiling) with ``blend``
    needs no weight sum: every core is at least ``2 * blend`` LR pixels on each side, so the ramps of its
    two edges do not overlap and neighbours' ramps sum to 1 everywhere (at corners and T-junctions too:
    the weights are products of per-axis ramps)."""
    return all(min(t.core[1] - t.core[0], t.core[3] - t.core[2]) >= 2 * blend for t in tiles)


def _add_faded(dst: torch.Tensor, src: torch.Tensor, wy: torch.Tensor, wx: torch.Tensor, top: int, bottom: int, left: int, right: int) -> None:
    """``dst += src * wy[:, None] * wx[None, :]`` for ramps of ones but for ``top``/``bottom`` rows and
    ``left``/``right`` columns: where both weights are 1 no other tile reaches (``dst`` is still 0), so
    the pixels are copied, and only the ramps are multiplied (a cross-faded image costs about a pasted one)."""
    rows, cols = dst.shape[-2:]
    if top:
        dst[:, :top].addcmul_(src[:, :top], wy[:top, None] * wx)
    if bottom:
        dst[:, rows - bottom :].addcmul_(src[:, rows - bottom :], wy[rows - bottom :, None] * wx)
    mid_d, mid_s = dst[:, top : rows - bottom], src[:, top : rows - bottom]
    if left:
        mid_d[:, :, :left].addcmul_(mid_s[:, :, :left], wx[:left])
    if right:
        mid_d[:, :, cols - right :].addcmul_(mid_s[:, :, cols - right :], wx[cols - right :])
    mid_d[:, :, left : cols - right].copy_(mid_s[:, :, left : cols - right])


Emit = Callable[[int, torch.Tensor], None]


def stitch(
    runs: Sequence[tuple[Callable[[torch.Tensor], torch.Tensor], list[Window]]],
    lr: torch.Tensor,
    scale: int,
    emit: Emit,
    batch: int = 4,
    device: torch.device | str = "cpu",
    blend: int = 0,
    pixels: int | None = None,
) -> None:
    """Run every ``(fn, tiles)`` of ``runs`` over ``lr`` (1x3xhxw, CPU), tiles in order of their core's
    first row, and pass each finished band of HR rows, top to bottom, to ``emit(first_row, rows)``
    (1x3xRxW float).

    Only the rows between the last band emitted and the lowest row a started tile reaches are held in
    float (one tile row, or the height of a merged window, see :func:`merge`), so the output can be kept in 8
    bits by ``emit``; tiles of one shape that start on one row run batched. An output of at most
    ``STITCH_BAND_PIXELS`` is one band (:func:`stitched_by_row`): tiles of one shape run batched whatever row.
    """
    _, c, h, w = lr.shape
    starts = sorted({t.core[0] for _, tiles in runs for t in tiles})
    bands = [[y0] for y0 in starts] if stitched_by_row(h * w, scale) else [starts]
    top = 0  # HR row of the strip's first row: everything above it was emitted
    # channels_last, as the engine's runners return SR: accumulating and quantising into the HxWx3 image run contiguous
    out = torch.empty(1, c, 0, w * scale, memory_format=torch.channels_last)
    # a weight sum to divide by only where ramps may overlap (cores thinner than the cross-fade)
    weights = torch.zeros(1, 1, 0, w * scale) if blend and not unit_ramps([t for _, ts in runs for t in ts], blend) else None
    for k, band in enumerate(bands):
        row = [(fn, [t for t in tiles if t.core[0] in band]) for fn, tiles in runs]
        # the lowest HR row these tiles' widened cores reach (see _ramp)
        bottom = max((min(t.core[1] + blend, h) if t.core[1] < h else h) * scale for _, ts in row for t in ts)
        if bottom - top > out.shape[2]:
            grow = bottom - top - out.shape[2]
            out, weights = _grown(out, grow), None if weights is None else _grown(weights, grow)
        for fn, tiles in row:
            if tiles:
                run_windows(fn, lr, scale, tiles, out, batch, device, blend, weights, top, pixels)
        following = bands[k + 1][0] if k + 1 < len(bands) else h
        done = ((following - blend) if following < h else h) * scale - top  # rows no later tile reaches
        if done > 0:
            emit(top, out[:, :, :done] if weights is None else out[:, :, :done] / weights[:, :, :done])
            # only the rows later tiles still reach outlive the band
            out = out[:, :, done:].clone()
            weights = None if weights is None else weights[:, :, done:].clone()
            top += done


def _grown(strip: torch.Tensor, rows: int) -> torch.Tensor:
    """``strip`` (1xCxRxW) with ``rows`` zero rows added below, in its memory layout (``torch.cat`` makes
    an empty channels_last strip contiguous)."""
    n, c, h, w = strip.shape
    layout = torch.channels_last if c > 1 else torch.contiguous_format
    grown = torch.empty(n, c, h + rows, w, dtype=strip.dtype, memory_format=layout).zero_()
    grown[:, :, :h] = strip
    return grown


def tiled_sr(
    fn: Callable[[torch.Tensor], torch.Tensor],
    lr: torch.Tensor,
    scale: int,
    tile: int | tuple[int, int] = 128,
    overlap: int = 16,
    batch: int = 4,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """SR of ``lr`` (1x3xhxw) tile by tile; returns the 1x3x(h*s)x(w*s) float result on the CPU (a
    reference path: ``kdsr infer`` runs the router, which writes 8 bits)."""
    _, c, h, w = lr.shape
    out = torch.empty(1, c, h * scale, w * scale)
    run_windows(fn, lr.cpu(), scale, windows(h, w, tile, overlap), out, batch, device)
    return out


# ---------------------------------------------------------------- networks that tiles change


_POOLING = (
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)
_REDUCTIONS = {
    *("mean", "sum", "std", "var", "std_mean", "var_mean", "amax", "amin", "max", "min", "aminmax"),
    *("norm", "logsumexp", "nansum", "nanmean", "median", "nanmedian", "prod"),
}


def tiles_change_output(model: nn.Module, forward: Callable[[torch.Tensor], object] | None = None) -> str | None:
    """Why tiled inference changes ``model``'s output even with ample overlap, or ``None`` if nothing
    was found: a network whose output depends on statistics of the whole input (global pooling, as in
    RCAN's and IMDN's channel attention) computes them per tile instead.

    Checked in order: a backbone's own declaration (a ``tiles_change_output`` attribute holding the
    reason, e.g. SwinIR's windows follow the tile's corner), adaptive pooling layers, and reductions
    over H or W (``mean``/``std``/``sum``/``amax``..., any pooling ``F.adaptive_*``) seen during one
    probe forward on a 16x16 input (``forward``, default ``model``; e.g. a branch with its width).
    The check is advisory: a network that cannot run on the probe input is reported as ``None``.
    """
    for name, module in model.named_modules():
        declared = getattr(module, "tiles_change_output", None)
        if isinstance(declared, str) and declared:
            return declared
        if isinstance(module, _POOLING):
            return f"global pooling ({type(module).__name__} at '{name or type(model).__name__}')"
    probe = next((t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()), None)
    x = torch.zeros(1, 3, 16, 16, device=probe.device if probe is not None else "cpu",
                    dtype=probe.dtype if probe is not None else torch.float32)
    with torch.no_grad(), _SpatialReductions() as seen:
        try:
            (forward or model)(x)
        except (RuntimeError, ValueError):
            return None
    return f"a reduction over the whole image ({seen.found})" if seen.found else None


class _SpatialReductions(TorchFunctionMode):
    """Records the first reduction over a 4-D tensor's H or W axis (or all axes) made inside the block."""

    def __init__(self) -> None:
        super().__init__()
        self.found: str | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch protocol
        kwargs = kwargs or {}
        if self.found is None and args and isinstance(args[0], torch.Tensor) and args[0].dim() == 4:
            name = getattr(func, "__name__", "")
            if name.startswith("adaptive_"):
                self.found = name
            elif name in _REDUCTIONS:
                dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
                if dim is None or (isinstance(dim, (int, tuple, list)) and _spatial(dim)):
                    self.found = f"{name} over dim {dim}" if dim is not None else f"{name} over all axes"
        return func(*args, **kwargs)


def _spatial(dim: int | tuple | list) -> bool:
    dims = dim if isinstance(dim, (tuple, list)) else (dim,)
    return any(isinstance(d, int) and d % 4 in (2, 3) for d in dims)
