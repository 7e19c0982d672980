"""Networks whose output tiles change (global pooling over the input) are found, and tiled inference
warns about them: IMDN's contrast-aware channel attention (a functional mean/std over H, W), RCAN's
channel attention (AdaptiveAvgPool2d), SwinIR's corner-aligned windows (declared by the backbone)."""

from __future__ import annotations

import logging

import torch
from torch import nn

from kdsr.branches import Branch
from kdsr.inference import Choice, Router
from kdsr.plugins import registry
from kdsr.tiling import tiled_sr, tiles_change_output

TINY = {
    "edsr_baseline": {"n_feats": 8, "n_resblocks": 1},
    "carn": {"n_feats": 8},
    "rcan": {"n_resgroups": 1, "n_resblocks": 1, "n_feats": 16, "reduction": 4},
    "imdn": {"nf": 16, "num_modules": 1},
    "swinir_light": {"embed_dim": 12, "depths": (2,), "num_heads": (2,), "window_size": 4},
}


def build(name: str, std: float = 0.05) -> nn.Module:
    torch.manual_seed(0)
    model = registry("backbone").create(name, TINY[name], scale=2)
    for p in model.parameters():
        nn.init.normal_(p, std=std)
    return model.eval()


class StdGate(nn.Module):
    """A conv whose output is gated by each channel's standard deviation over the image."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.shuffle(y * torch.sigmoid(torch.std(y, dim=(-2, -1), keepdim=True)))


def test_global_pooling_is_found_in_any_form() -> None:
    assert tiles_change_output(build("edsr_baseline")) is None
    assert tiles_change_output(build("carn")) is None
    assert "AdaptiveAvgPool2d" in tiles_change_output(build("rcan"))
    assert "mean over dim (2, 3)" in tiles_change_output(build("imdn"))
    assert "window" in tiles_change_output(build("swinir_light"))
    assert "std over dim (-2, -1)" in tiles_change_output(StdGate())
    declared = build("edsr_baseline")
    declared.tiles_change_output = "my reason"
    assert tiles_change_output(declared) == "my reason"


def test_what_is_found_is_what_tiles_change() -> None:
    """The check agrees with the stitched result: a CNN without global pooling tiles exactly (overlap
    beyond its receptive field), IMDN does not (weights large enough for its attention to matter)."""
    lr = torch.rand(1, 3, 48, 56, generator=torch.Generator().manual_seed(0))
    for name, exact in (("edsr_baseline", True), ("imdn", False)):
        model = build(name, std=0.2)
        with torch.no_grad():
            whole = model(lr)
        tiled = tiled_sr(model, lr, 2, tile=8, overlap=8)
        assert torch.allclose(tiled, whole, rtol=1e-5, atol=1e-5) == exact, name
        assert (tiles_change_output(model) is None) == exact, name


def test_router_warns_when_tiles_change_the_output(caplog) -> None:
    branches = {"imdn": Branch(build("imdn")), "edsr": Branch(build("edsr_baseline"))}
    choices = [Choice("imdn", 2.0), Choice("edsr", 1.0)]
    full = registry("policy").create("full")
    with caplog.at_level(logging.WARNING, logger="kdsr"):
        router = Router(branches, choices, full, 2, tile=8, overlap=4)
    assert set(router.describe()["tiling_changes_output"]) == {"imdn"}
    (record,) = [r for r in caplog.records if "change the output" in r.getMessage()]
    assert "branch 'imdn'" in record.getMessage() and "--tile 0" in record.getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kdsr"):
        whole = Router(branches, choices, full, 2, tile=None)
    assert not whole.describe()["tiling_changes_output"] and not caplog.records
