"""The one inference path: even tiles bounded by a pixel budget, strips stitched into a uint8 image,
channels_last runners that leave the caller's network alone, latency measured on that path."""

from __future__ import annotations

import copy

import numpy as np
import torch

from kdsr import Branch
from kdsr.data import read_image, write_image
from kdsr.inference import Choice, Router
from kdsr.metrics import quantize
from kdsr.plugins import registry
from kdsr.runtime import TorchRunner
from kdsr.tiling import WINDOW_PIXELS, plan_tile, stitch, window_pixels, windows


def tiny(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return registry("backbone").create("edsr_baseline", {"n_feats": 8, "n_resblocks": 2}, scale=2).eval()


def test_plan_tile_fits_the_budget_with_the_fewest_pixels():
    assert plan_tile(180, 320, 16) == (180, 320)  # a 1280x720 output at x4 is one window
    for h, w in [(540, 960), (2160, 3840), (37, 1000)]:
        tiles = windows(h, w, plan_tile(h, w, 16), 16)
        assert all(window_pixels(t) <= WINDOW_PIXELS for t in tiles)
        planned = sum(window_pixels(t) for t in tiles)
        assert planned < sum(window_pixels(t) for t in windows(h, w, 128, 16))  # the old fixed 128 px tiles
    tiles = windows(540, 960, plan_tile(540, 960, 16), 16)
    assert sum(window_pixels(t) for t in tiles) / (540 * 960) < 1.2
    assert plan_tile(10, 10, 2, max_pixels=36) == (2, 2)  # 6x6 windows: the only ones that fit
    assert plan_tile(10, 10, 2, max_pixels=16) == (1, 1)  # none fits: the smallest tiles


def test_stitched_strips_with_blending_equal_the_whole_image():
    """Rows of tiles are stitched strip by strip, the cross-fade band carried into the next strip:
    with one network everywhere (two runs over alternate tiles) the result is the whole-image output."""
    model = tiny()
    lr = torch.rand(1, 3, 37, 29, generator=torch.Generator().manual_seed(1))
    tiles = windows(37, 29, 12, 12)
    out = torch.full((1, 3, 74, 58), float("nan"))
    bands = []

    def emit(row, rows):
        bands.append((row, rows.shape[2]))
        out[:, :, row : row + rows.shape[2]] = rows

    stitch([(model, tiles[0::2]), (model, tiles[1::2])], lr, 2, emit, batch=2, blend=4)
    assert [r for r, _ in bands] == sorted(r for r, _ in bands) and sum(n for _, n in bands) == 74
    with torch.no_grad():
        assert (out - model(lr)).abs().max().item() <= 1e-5


def test_router_writes_uint8_equal_to_the_quantised_whole_image(tmp_path):
    model = tiny()
    lr = torch.rand(1, 3, 37, 29, generator=torch.Generator().manual_seed(2))
    full = registry("policy").create("full")
    with torch.no_grad():
        whole = quantize(model(lr))[0]
    for tile in (8, "auto", None):
        routed = Router({"m": Branch(model)}, [Choice("m", 1.0)], full, 2, tile=tile, overlap=8)(lr)
        assert routed.image.dtype == np.uint8 and routed.image.shape == (74, 58, 3)
        # channels_last convolutions round differently: one 8-bit level at most, on few pixels
        assert (routed.sr[0] - whole).abs().max().item() <= 1 / 255 + 1e-6
        assert (routed.sr[0] != whole).float().mean().item() < 0.01
    write_image(tmp_path / "sr.png", routed.image)
    assert torch.equal(read_image(tmp_path / "sr.png"), torch.from_numpy(routed.image).permute(2, 0, 1))


def test_auto_tiles_run_a_small_image_as_one_window():
    model = tiny()
    router = Router({"m": Branch(model)}, [Choice("m", 1.0)], registry("policy").create("full"), 2, tile="auto")
    routed = router(torch.rand(1, 3, 40, 50))
    assert routed.tiles["m"] == 1 and routed.overhead == 0.0


def test_torch_runner_is_channels_last_and_leaves_the_network_alone():
    model = tiny().train()
    runner = TorchRunner(Branch(model))
    x = torch.rand(2, 3, 12, 16)
    y = runner(x)
    assert model.training and all(p.is_contiguous() for p in model.parameters())
    assert not y.requires_grad
    with torch.no_grad():
        assert torch.allclose(y, model.eval()(x), atol=1e-5)
    conv = next(m for m in runner.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_pixel_shuffles_run_as_channels_last_copies_computing_the_same():
    """Conv -> [activation] -> PixelShuffle runs become the conv with reordered filters and a channels_last
    shuffle: the same output in either memory layout; grouped convs and networks without a run are left."""
    from kdsr.runtime import ChannelsLastShuffle, shuffle_channels_last

    torch.manual_seed(0)
    nets = [
        torch.nn.Sequential(torch.nn.Conv2d(4, 8 * 4, 3, padding=1), torch.nn.PixelShuffle(2), torch.nn.Conv2d(8, 2 * 9, 3, padding=1), torch.nn.ReLU(), torch.nn.PixelShuffle(3)),
        torch.nn.Sequential(torch.nn.Conv2d(4, 8, 1), torch.nn.Conv2d(8, 8 * 4, 3, padding=1, groups=2), torch.nn.PixelShuffle(2)),
    ]
    x = torch.rand(2, 4, 5, 7)
    with torch.no_grad():
        expected = [net(x) for net in nets]
        fast = shuffle_channels_last(copy.deepcopy(nets[0]))
        assert [type(m) for m in fast if not isinstance(m, torch.nn.Conv2d)] == [ChannelsLastShuffle, torch.nn.ReLU, ChannelsLastShuffle]
        for layout in (torch.contiguous_format, torch.channels_last):
            y = fast.to(memory_format=layout)(x.contiguous(memory_format=layout))
            assert (y - expected[0]).abs().max().item() <= 1e-6
        assert shuffle_channels_last(copy.deepcopy(nets[1])) is None  # grouped: reordering would mix the groups
    runner = TorchRunner(Branch(tiny()))
    assert sum(isinstance(m, ChannelsLastShuffle) for m in runner.model.modules()) == 1  # the x2 tail
    y = runner(torch.rand(1, 3, 9, 10))
    assert y.is_contiguous(memory_format=torch.channels_last)


def test_profile_latency_times_the_inference_path():
    from kdsr.report import profile_branch

    row = profile_branch(Branch(tiny()), 2, (32, 32), latency_hr_size=(32, 32), repeats=1)
    assert row["latency_s"] > 0 and row["runtime"] == "fp32"


def test_a_width_of_a_switchable_network_runs_as_its_plain_network():
    """A CSSR-Net 0.25 branch runs its own contiguous 16-channel weights, not slices of the 64-channel ones."""
    torch.manual_seed(0)
    shared = registry("student").create("cssr", {"backbone": "edsr_baseline", "widths": [1.0, 0.25]}, teacher=None, scale=2)
    branch = shared["w0.25"]
    runner = TorchRunner(branch)
    assert runner.kwargs == {}
    narrow = registry("backbone").create("edsr_baseline", {"n_feats": 16}, scale=2)
    assert sum(p.numel() for p in runner.model.parameters()) == sum(p.numel() for p in narrow.parameters())
    x = torch.rand(1, 3, 11, 13)
    with torch.no_grad():
        assert (runner(x) - branch(x)).abs().max().item() <= 1e-4


def test_per_patch_routing_merges_patches_of_one_branch():
    """A per-patch policy that sends every patch to one branch computes one whole-image window (no
    context overhead), and its output is that of the unmerged patches (same network)."""
    from kdsr.inference import Policy

    class PerPatch(Policy):
        per_patch = True

        def select(self, lr, choices):
            return "m"

    model = tiny()
    lr = torch.rand(1, 3, 37, 29, generator=torch.Generator().manual_seed(4))
    merged = Router({"m": Branch(model)}, [Choice("m", 1.0)], PerPatch(), 2, tile=8, overlap=8)(lr)
    cells = Router({"m": Branch(model)}, [Choice("m", 1.0)], PerPatch(), 2, tile=8, overlap=8, merge=False)(lr)
    assert merged.tiles["m"] == cells.tiles["m"] == 20 and merged.overhead == 0.0 and cells.overhead > 1
    assert merged.pixels["m"] == 37 * 29 and merged.full_pixels == 37 * 29
    assert np.abs(merged.image.astype(int) - cells.image.astype(int)).max() <= 1
