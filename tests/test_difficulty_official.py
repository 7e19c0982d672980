"""Dynamic-CSD's difficulty score follows the official ``calc_psnr``: its Y constants on the difference over
rgb_range (benchmark mode) and its RGB mode with shave = scale + 6, selectable on the policies."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdsr.errors import KdsrError
from kdsr.inference import official_calc_psnr, redegradation_psnr
from kdsr.plugins import registry


def official_score(lr255: torch.Tensor, scale: int, benchmark: bool) -> float:
    """``dynamic_test.py: evaluate`` + ``utility.calc_psnr`` written out on a [0, 255] image (rgb_range 255)."""
    llr = F.interpolate(lr255, scale_factor=1.0 / scale, mode="bicubic").clamp(min=0, max=255)
    lbic = F.interpolate(llr, scale_factor=scale, mode="bicubic").clamp(0, 255).round()
    crop_h, crop_w = lr255.shape[-2] - lbic.shape[-2], lr255.shape[-1] - lbic.shape[-1]
    lhr = lr255[..., crop_h // 2 : lr255.shape[-2] - (crop_h - crop_h // 2), crop_w // 2 : lr255.shape[-1] - (crop_w - crop_w // 2)]
    diff = (lbic - lhr) / 255
    if benchmark:
        shave = scale
        coeffs = torch.tensor([65.738, 129.057, 25.064], dtype=diff.dtype).view(1, 3, 1, 1) / 256
        diff = (diff * coeffs).sum(dim=1)
    else:
        shave = scale + 6
    return -10 * math.log10(diff[..., shave:-shave, shave:-shave].pow(2).mean().item())


def image(h: int, w: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    smooth = F.interpolate(torch.rand(1, 3, h // 4, w // 4, generator=g, dtype=torch.float64), size=(h, w), mode="bilinear")
    noisy = (smooth + 0.05 * torch.randn(1, 3, h, w, generator=g, dtype=torch.float64)).clamp(0, 1)
    return noisy.mul(255).round()  # an 8-bit image, as the official loader gives


@pytest.mark.parametrize("benchmark", [True, False])
@pytest.mark.parametrize(("scale", "h", "w"), [(2, 40, 44), (3, 41, 38), (4, 48, 50)])
def test_score_is_the_official_one(benchmark, scale, h, w):
    lr255 = image(h, w, seed=scale)
    ours = redegradation_psnr(lr255 / 255, scale, benchmark=benchmark)
    assert ours == pytest.approx(official_score(lr255, scale, benchmark), abs=1e-9)


def test_benchmark_mode_uses_the_official_y_constants():
    """The BT.601 constants kdsr.metrics uses (65.481 / 255 + 16) differ in the 6th digit: the score must not."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(1, 3, 20, 20, generator=g, dtype=torch.float64), torch.rand(1, 3, 20, 20, generator=g, dtype=torch.float64)
    diff = (b - a)[..., 2:-2, 2:-2]
    y = diff[:, 0] * 65.738 / 256 + diff[:, 1] * 129.057 / 256 + diff[:, 2] * 25.064 / 256
    assert official_calc_psnr(b, a, 2) == pytest.approx(-10 * math.log10(y.pow(2).mean().item()), abs=1e-12)
    rgb = diff[..., 6:-6, 6:-6].pow(2).mean().item()  # RGB mode: shave 2 + 6 = 8 of the 20x20 image
    assert official_calc_psnr(b, a, 2, benchmark=False) == pytest.approx(-10 * math.log10(rgb), abs=1e-12)


def test_policies_take_the_rgb_mode():
    lr = image(40, 40, seed=7) / 255
    for name, options in (("difficulty", {"thresholds": [30.0]}), ("budget", {"budget": 0.5, "calibration": "unused", "measure": "redegradation"})):
        policy = registry("policy").create(name, {**options, "benchmark": False})
        policy.scale = 2
        assert policy.score(lr) == redegradation_psnr(lr, 2, benchmark=False) != redegradation_psnr(lr, 2)
    default = registry("policy").create("difficulty", {"thresholds": [30.0]})
    default.scale = 2
    assert default.score(lr) == redegradation_psnr(lr, 2)
    with pytest.raises(KdsrError, match="benchmark"):
        registry("policy").create("difficulty", {"thresholds": [1.0], "measure": "gradient", "benchmark": False})
