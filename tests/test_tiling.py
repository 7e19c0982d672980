"""Tiled inference equals whole-image inference for CNNs with enough overlap."""

from __future__ import annotations

import pytest
import torch

from kdsr import tiling
from kdsr.plugins import registry
from kdsr.tiling import Window, forward_passes, merge, run_windows, stitch, tiled_sr, window_pixels, windows


def test_windows_cover_the_image_once_with_even_cores():
    for h, w, tile, overlap in [(37, 53, 16, 4), (10, 10, 16, 4), (33, 17, 8, 0)]:
        cover = torch.zeros(h, w, dtype=torch.int32)
        tiles = windows(h, w, tile, overlap)
        heights = {t.core[1] - t.core[0] for t in tiles}
        widths = {t.core[3] - t.core[2] for t in tiles}
        assert max(heights) - min(heights) <= 1 and max(widths) - min(widths) <= 1  # no thin last tile
        assert len(tiles) == -(-h // tile) * -(-w // tile) and max(heights | widths) <= tile
        for t in tiles:
            y0, y1, x0, x1 = t.core
            wy0, wy1, wx0, wx1 = t.window
            assert wy0 <= y0 < y1 <= wy1 and wx0 <= x0 < x1 <= wx1
            # one window shape, the largest core plus its context (shifted inwards at the borders)
            assert (wy1 - wy0, wx1 - wx0) == (min(h, max(heights) + 2 * overlap), min(w, max(widths) + 2 * overlap))
            assert y0 - wy0 >= min(overlap, y0) and wy1 - y1 >= min(overlap, h - y1)
            cover[y0:y1, x0:x1] += 1
        assert (cover == 1).all()


def test_even_split_spares_the_thin_last_tile():
    """B100's x4 LR (120x80) in 48 px patches: 3x2 cores of 40 px in 56 px windows, not 48/48/24 x 48/32 in 64 px ones."""
    tiles = windows(80, 120, 48, 8)
    assert {t.core[1] - t.core[0] for t in tiles} == {40} and {t.core[3] - t.core[2] for t in tiles} == {40}
    assert {(t.window[1] - t.window[0], t.window[3] - t.window[2]) for t in tiles} == {(56, 56)}
    assert len(tiles) * 56 * 56 / (80 * 120) - 1 == pytest.approx(0.96)  # the overlap's extra compute, was 1.56


@pytest.mark.parametrize(
    "name, options, overlap",
    [
        ("edsr_baseline", {"n_feats": 8, "n_resblocks": 2}, 8),  # 7 3x3 convs at LR: radius 7
        ("rcan", {"n_resgroups": 2, "n_resblocks": 1, "n_feats": 16}, 12),
        ("carn", {}, 12),
    ],
)
def test_tiled_equals_whole_image(name, options, overlap):
    torch.manual_seed(0)
    model = registry("backbone").create(name, options, scale=2).eval()
    # RCAN's channel attention pools over its whole input, so a tile's statistics differ from the
    # image's: tiling is not exact for RCAN in principle; with these weights the gap stays < 1e-5.
    lr = torch.rand(1, 3, 37, 29)
    with torch.no_grad():
        whole = model(lr)
        tiled = tiled_sr(model, lr, 2, tile=16, overlap=overlap, batch=3)
    assert tiled.shape == whole.shape
    assert (tiled - whole).abs().max().item() <= 1e-5


def test_blended_stitching_is_a_partition_of_unity():
    """Cross-faded seams: with one network everywhere, blending reproduces whole-image inference."""
    from kdsr.tiling import run_windows

    torch.manual_seed(0)
    model = registry("backbone").create("edsr_baseline", {"n_feats": 8, "n_resblocks": 2}, scale=2).eval()
    lr = torch.rand(1, 3, 37, 29)
    tiles = windows(37, 29, 12, 12)  # context beyond the blend band (12 - 4) covers the radius (~8)
    out, weights = torch.zeros(1, 3, 74, 58), torch.zeros(1, 1, 74, 58)
    run_windows(model, lr, 2, tiles, out, batch=4, blend=4, weights=weights)
    assert torch.allclose(weights, torch.ones_like(weights))
    with torch.no_grad():
        assert (out / weights - model(lr)).abs().max().item() <= 1e-5


def test_merge_joins_neighbours_of_one_branch_and_the_stitch_equals_the_whole_image():
    """Cells routed to one branch run as one window each region; with one network behind both keys the
    cross-faded result is still the whole-image output, and fewer pixels are computed."""
    torch.manual_seed(0)
    model = registry("backbone").create("edsr_baseline", {"n_feats": 8, "n_resblocks": 2}, scale=2).eval()
    lr = torch.rand(1, 3, 37, 53, generator=torch.Generator().manual_seed(3))
    cells = windows(37, 53, 10, 10)
    groups = {"a": cells[0::3], "b": [t for i, t in enumerate(cells) if i % 3]}
    merged = merge(groups, 37, 53, 10)
    assert sum(map(len, merged.values())) < len(cells)
    assert sum(window_pixels(t) for ts in merged.values() for t in ts) < sum(window_pixels(t) for t in cells)
    cores = sorted(t.core for ts in merged.values() for t in ts)  # the merged cores tile the image exactly once
    covered = torch.zeros(37, 53, dtype=torch.int32)
    for y0, y1, x0, x1 in cores:
        covered[y0:y1, x0:x1] += 1
    assert bool((covered == 1).all())
    out = torch.full((1, 3, 74, 106), float("nan"))

    def emit(row, rows):
        out[:, :, row : row + rows.shape[2]] = rows

    stitch([(model, merged["a"]), (model, merged["b"])], lr, 2, emit, batch=3, blend=4)
    with torch.no_grad():
        assert (out - model(lr)).abs().max().item() <= 5e-5  # float rounding of other window shapes


@pytest.mark.parametrize("tile", [12, 5])
def test_stitch_with_or_without_a_weight_sum_equals_the_whole_image(tile):
    """Cores at least twice the cross-fade: the ramps sum to 1, so stitch copies each core's own pixels and
    multiplies only the ramps (no weight sum to divide by); thinner cores (tile 5 < 2 x 4) keep the weight
    sum. Either way, one network everywhere gives the whole-image output."""
    from kdsr.tiling import unit_ramps

    torch.manual_seed(0)
    model = registry("backbone").create("edsr_baseline", {"n_feats": 8, "n_resblocks": 2}, scale=2).eval()
    lr = torch.rand(1, 3, 37, 29, generator=torch.Generator().manual_seed(5))
    tiles = windows(37, 29, tile, 12)
    assert unit_ramps(tiles, 4) == (tile == 12)
    out = torch.full((1, 3, 74, 58), float("nan"))

    def emit(row, rows):
        out[:, :, row : row + rows.shape[2]] = rows

    stitch([(model, tiles[0::2]), (model, tiles[1::2])], lr, 2, emit, batch=3, blend=4)
    with torch.no_grad():
        assert (out - model(lr)).abs().max().item() <= 1e-5


def test_merge_respects_its_bounds():
    cells = windows(100, 100, 10, 4)
    one = merge({"a": cells}, 100, 100, 4)["a"]
    assert one == [Window((0, 100, 0, 100), (0, 100, 0, 100))]  # one key everywhere: the whole image, if it fits
    capped = merge({"a": cells}, 100, 100, 4, max_pixels=40 * 40, max_height=20)["a"]
    assert all(window_pixels(t) <= 40 * 40 and t.core[1] - t.core[0] <= 20 for t in capped)
    assert sum((t.core[1] - t.core[0]) * (t.core[3] - t.core[2]) for t in capped) == 100 * 100


@pytest.mark.parametrize("batch", [1, 3, 16])
def test_forward_passes_counts_the_passes_run_windows_and_stitch_make(batch, monkeypatch):
    lr = torch.rand(1, 3, 30, 44, generator=torch.Generator().manual_seed(0))
    tiles = windows(30, 44, 8, 2)  # cores of two sizes per axis: windows of several shapes
    calls = []

    def fn(x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        return torch.nn.functional.interpolate(x, scale_factor=2)

    run_windows(fn, lr, 2, tiles, torch.zeros(1, 3, 60, 88), batch, pixels=200)
    assert len(calls) == forward_passes(tiles, batch, 200)
    calls.clear()
    rows = {}
    stitch([(fn, tiles)], lr, 2, lambda row, band: rows.update({row: band}), batch, blend=1, pixels=200)
    assert len(calls) == forward_passes(tiles, batch, 200) and list(rows) == [0]  # a small output: one band
    whole = torch.cat(list(rows.values()), dim=2)
    calls.clear()
    rows.clear()
    monkeypatch.setattr(tiling, "STITCH_BAND_PIXELS", 0)  # a large output: a row of tiles at a time
    stitch([(fn, tiles)], lr, 2, lambda row, band: rows.update({row: band.clone()}), batch, blend=1, pixels=200)
    assert len(calls) == forward_passes(tiles, batch, 200, by_row=True) and len(rows) > 1
    assert torch.equal(torch.cat(list(rows.values()), dim=2), whole)
