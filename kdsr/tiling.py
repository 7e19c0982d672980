"""Tiled super-resolution of any image size with bounded memory.

The LR image is cut into core tiles; each is run inside a window that adds ``overlap`` LR pixels
of context on every side (windows are shifted inwards at the borders, so all windows share one
shape and are batched). Only each window's core is kept (or, with ``blend``, its core widened by a
cross-fade band). For a CNN whose receptive-field radius is at most ``overlap`` (``overlap - blend``
when blending) the stitched result equals whole-image inference; for windowed transformers and
global-pooling attention (RCAN) it is a close approximation.
Only the window batch lives on the device; the HR output buffer stays on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Window:
    """One tile: its core (what it contributes) and the window it is computed in, in LR pixels."""

    core: tuple[int, int, int, int]  # y0, y1, x0, x1
    window: tuple[int, int, int, int]


def _axis(size: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """(core0, core1, win0, win1) along one axis; windows all have length min(size, tile + 2*overlap)."""
    win = min(size, tile + 2 * overlap)
    out = []
    for c0 in range(0, size, tile):
        c1 = min(c0 + tile, size)
        w0 = min(max(c0 - overlap, 0), size - win)
        out.append((c0, c1, w0, w0 + win))
    return out


def windows(h: int, w: int, tile: int, overlap: int) -> list[Window]:
    """The tiling of an h x w LR image."""
    if tile < 1 or overlap < 0:
        raise ValueError(f"tile must be >= 1 and overlap >= 0, got tile={tile}, overlap={overlap}")
    return [
        Window((y0, y1, x0, x1), (wy0, wy1, wx0, wx1))
        for (y0, y1, wy0, wy1) in _axis(h, tile, overlap)
        for (x0, x1, wx0, wx1) in _axis(w, tile, overlap)
    ]


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
) -> None:
    """Super-resolve ``tiles`` of ``lr`` (1x3xhxw, CPU) with ``fn`` into ``out``.

    ``blend == 0`` pastes each core. ``blend > 0`` (at most the overlap) instead accumulates each tile
    over its core widened by ``blend`` LR pixels, weighted by linear ramps, into ``out`` and the
    weight sum into ``weights`` (1x1xHxW): divide once every tile is in. Seams between tiles served
    by different branches are then cross-faded instead of cut.
    """
    h, w = lr.shape[-2:]
    for group in _batches(tiles, batch):
        x = torch.cat([lr[..., t.window[0] : t.window[1], t.window[2] : t.window[3]] for t in group]).to(device)
        y = fn(x).float().cpu()
        for t, sr in zip(group, y):
            (y0, y1, x0, x1), (wy0, _, wx0, _) = t.core, t.window
            if blend == 0:
                oy, ox = (y0 - wy0) * scale, (x0 - wx0) * scale
                out[0, :, y0 * scale : y1 * scale, x0 * scale : x1 * scale] = sr[
                    :, oy : oy + (y1 - y0) * scale, ox : ox + (x1 - x0) * scale
                ]
                continue
            ty, wy = _ramp(y0, y1, h, blend, scale)
            tx, wx = _ramp(x0, x1, w, blend, scale)
            weight = wy[:, None] * wx[None, :]
            oy, ox = ty - wy0 * scale, tx - wx0 * scale
            patch = sr[:, oy : oy + len(wy), ox : ox + len(wx)]
            out[0, :, ty : ty + len(wy), tx : tx + len(wx)] += patch * weight
            weights[0, 0, ty : ty + len(wy), tx : tx + len(wx)] += weight


def tiled_sr(
    fn: Callable[[torch.Tensor], torch.Tensor],
    lr: torch.Tensor,
    scale: int,
    tile: int = 128,
    overlap: int = 16,
    batch: int = 4,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """SR of ``lr`` (1x3xhxw) tile by tile; returns the 1x3x(h*s)x(w*s) result on the CPU."""
    _, c, h, w = lr.shape
    out = torch.empty(1, c, h * scale, w * scale)
    run_windows(fn, lr.cpu(), scale, windows(h, w, tile, overlap), out, batch, device)
    return out
