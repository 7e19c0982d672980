"""Tiled super-resolution of any image size with bounded memory.

The LR image is cut into core tiles, each axis split evenly (cores of at most ``tile`` pixels whose
sizes differ by at most one, so no thin last tile pays for a whole window); each is run inside a
window that adds ``overlap`` LR pixels of context on every side (windows are shifted inwards at the
borders, so all windows share one shape and are batched). Only each window's core is kept (or, with ``blend``, its core widened by a
cross-fade band). For a CNN whose receptive-field radius is at most ``overlap`` (``overlap - blend``
when blending) the stitched result equals whole-image inference; for windowed transformers and
networks that pool over the whole input (RCAN's channel attention, IMDN's contrast-aware attention)
it is only an approximation, and :func:`tiles_change_output` says which networks those are.
Only the window batch lives on the device, and only one row of tiles is held in float: :func:`stitch`
hands each finished band of HR rows to its caller (the router quantises it into a uint8 image), so the
memory of a huge output is its 8-bit image plus one strip.
"""

from __future__ import annotations

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


def _batches(items: list[Window], size: int) -> Iterator[list[Window]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _ramp(c0: int, c1: int, size: int, band: int, scale: int) -> tuple[int, torch.Tensor]:
    """Blend weights along one axis for the core [c0, c1) (LR) of an axis of ``size``: a linear ramp
    over ``2 * band`` LR pixels centred on each interior core edge, so neighbours' weights sum to 1.
    Returns the first HR index covered and the HR weights."""
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
) -> None:
    """Super-resolve ``tiles`` of ``lr`` (1x3xhxw, CPU) with ``fn`` into ``out``.

    ``blend == 0`` pastes each core. ``blend > 0`` (at most the overlap) instead accumulates each tile
    over its core widened by ``blend`` LR pixels, weighted by linear ramps, into ``out`` and the
    weight sum into ``weights`` (1x1xHxW): divide once every tile is in. Seams between tiles served
    by different branches are then cross-faded instead of cut. ``out`` starts at HR row ``row0``
    (a strip of the output, see :func:`stitch`). A uint8 ``out`` (no blending) gets each core
    quantised as it is pasted, so no float copy of the whole output is ever made.
    """
    h, w = lr.shape[-2:]
    for group in _batches(tiles, batch):
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
            weight = wy[:, None] * wx[None, :]
            oy, ox = ty - wy0 * scale, tx - wx0 * scale
            patch = sr[:, oy : oy + len(wy), ox : ox + len(wx)]
            out[0, :, ty - row0 : ty - row0 + len(wy), tx : tx + len(wx)] += patch * weight
            weights[0, 0, ty - row0 : ty - row0 + len(wy), tx : tx + len(wx)] += weight


Emit = Callable[[int, torch.Tensor], None]


def stitch(
    runs: Sequence[tuple[Callable[[torch.Tensor], torch.Tensor], list[Window]]],
    lr: torch.Tensor,
    scale: int,
    emit: Emit,
    batch: int = 4,
    device: torch.device | str = "cpu",
    blend: int = 0,
) -> None:
    """Run every ``(fn, tiles)`` of ``runs`` over ``lr`` (1x3xhxw, CPU), one row of tiles at a time, and
    pass each finished band of HR rows, top to bottom, to ``emit(first_row, rows)`` (1x3xRxW float).

    Only one strip (a tile row, plus the ``blend`` band shared with the next) is held in float, so
    the output can be kept in 8 bits by ``emit``; tiles of one shape in a row run batched.
    """
    _, c, h, w = lr.shape
    rows = sorted({t.core[:2] for _, tiles in runs for t in tiles})
    carry: tuple[torch.Tensor, torch.Tensor | None] | None = None
    for y0, y1 in rows:
        top = (max(y0 - blend, 0) if y0 > 0 else 0) * scale  # where this row's ramps start (see _ramp)
        bottom = (min(y1 + blend, h) if y1 < h else h) * scale
        out = torch.zeros(1, c, bottom - top, w * scale)
        weights = torch.zeros(1, 1, bottom - top, w * scale) if blend else None
        if carry is not None:  # the band the previous row shares with this one
            out[:, :, : carry[0].shape[2]] += carry[0]
            if weights is not None:
                weights[:, :, : carry[0].shape[2]] += carry[1]
        for fn, tiles in runs:
            row = [t for t in tiles if t.core[:2] == (y0, y1)]
            if row:
                run_windows(fn, lr, scale, row, out, batch, device, blend, weights, top)
        done = ((y1 - blend) if y1 < h else h) * scale - top  # rows no later tile reaches
        final = out[:, :, :done] if weights is None else out[:, :, :done] / weights[:, :, :done]
        emit(top, final)
        # only the shared band outlives the strip: two strips are never held at once
        carry = (out[:, :, done:].clone(), None if weights is None else weights[:, :, done:].clone())
        del out, weights, final


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
