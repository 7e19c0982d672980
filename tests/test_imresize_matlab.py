"""LR byte-identical to MATLAB's: imresize on uint8 resizes one axis at a time (smaller scale first, rows on a
tie) and rounds half away from zero to uint8 after each; the float path stays an option."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kdsr.data import ImageFolder, SRPairs, bicubic_downscale, imresize, mod_crop, quantize, read_image, to_float
from kdsr.plugins import registry

SR = Path("/work/shared/data/sr")
NAMES = ("baby", "bird", "butterfly", "head", "woman")
needs_data = pytest.mark.skipif(not (SR / "matlab_lr" / "Set5").is_dir(), reason="MATLAB LR reference not present")


def matlab_lr(name: str, s: int) -> torch.Tensor:
    img = np.array(Image.open(SR / "matlab_lr" / "Set5" / f"x{s}" / f"{name}x{s}.bmp").convert("RGB"))
    return torch.from_numpy(img).permute(2, 0, 1).contiguous()


@needs_data
@pytest.mark.parametrize("s", [2, 3, 4])
def test_default_lr_is_byte_identical_to_matlab(s):
    pairs = SRPairs(ImageFolder(SR / "Set5"), s)  # SRPairs' default degradation
    by_name = {name: lr for name, lr, _ in pairs}
    assert sorted(by_name) == sorted(NAMES)
    for name in NAMES:
        assert torch.equal(by_name[name], matlab_lr(name, s)), name
    # the config's default degradation ('bicubic' without options) and imresize on the uint8 HR itself
    hr = mod_crop(read_image(SR / "Set5" / "butterfly.png"), s)
    degrade = registry("degradation").create("bicubic")
    assert torch.equal(quantize(degrade(to_float(hr), s)), to_float(matlab_lr("butterfly", s)))
    assert torch.equal(imresize(hr, scale=1 / s), matlab_lr("butterfly", s))
    # equal scales: MATLAB resizes rows first; columns first (= rows first on the transposed image) is off
    columns_first = imresize(hr.transpose(-1, -2), scale=1 / s).transpose(-1, -2)
    assert (columns_first != matlab_lr("butterfly", s)).float().mean() > 0.05


@needs_data
def test_float_path_is_an_option_and_is_not_matlab():
    s, name = 4, "butterfly"
    hr = mod_crop(read_image(SR / "Set5" / f"{name}.png"), s)
    float_path = registry("degradation").create("bicubic", {"uint8": False})
    lr = quantize(float_path(to_float(hr), s)).mul(255).round().to(torch.uint8)
    assert torch.equal(float_path(to_float(hr), s), bicubic_downscale(to_float(hr), s))
    off = (lr.int() - matlab_lr(name, s).int()).abs()
    assert 0.05 < (off > 0).float().mean() < 0.25 and off.max() <= 2


def cubic(x: float) -> float:
    ax = abs(x)
    if ax <= 1:
        return 1.5 * ax**3 - 2.5 * ax**2 + 1
    return -0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2 if ax <= 2 else 0.0


def resize_line(v: list[float], out_len: int, scale: float) -> list[int]:
    """imresize.m ``contributions`` + ``resizeAlongDim`` on one uint8 line, then MATLAB's uint8 rounding."""
    n, aa = len(v), scale < 1
    width = 4.0 / scale if aa else 4.0
    aux = list(range(n)) + list(range(n - 1, -1, -1))
    out = []
    for x in range(1, out_len + 1):
        u = x / scale + 0.5 * (1 - 1 / scale)
        taps = [math.floor(u - width / 2) + j for j in range(math.ceil(width) + 2)]
        w = [scale * cubic(scale * (u - t)) if aa else cubic(u - t) for t in taps]
        value = sum(wj / sum(w) * v[aux[(t - 1) % (2 * n)]] for wj, t in zip(w, taps))
        out.append(min(max(math.floor(value + 0.5), 0), 255))  # value >= 0 after the clamp: half away from zero
    return out


def reference(img: np.ndarray, oh: int, ow: int, rows_first: bool) -> np.ndarray:
    c, h, w = img.shape
    x = img.astype(np.float64)
    for axis in ((1, 2) if rows_first else (2, 1)):
        if axis == 1:
            x = np.stack([np.stack([resize_line(list(x[k, :, j]), oh, oh / h) for j in range(x.shape[2])], 1) for k in range(c)])
        else:
            x = np.stack([np.stack([resize_line(list(x[k, i, :]), ow, ow / w) for i in range(x.shape[1])], 0) for k in range(c)])
    return x.astype(np.uint8)


@pytest.mark.parametrize(("size", "rows_first"), [((7, 19), True), ((15, 9), False)])
def test_axis_order_follows_the_scales(size, rows_first):
    """MATLAB's ``dimensionOrder``: the axis with the smaller scale first (7/23 < 19/31: rows; 9/31 < 15/23: columns)."""
    img = np.random.default_rng(1).integers(0, 256, (3, 23, 31), dtype=np.uint8)
    ours = imresize(torch.from_numpy(img), size=size).numpy()
    assert ours.dtype == np.uint8
    np.testing.assert_array_equal(ours, reference(img, *size, rows_first))
    assert (reference(img, *size, not rows_first) != ours).any()  # the order is visible in the bytes


def test_equal_scales_resize_rows_first():
    img = np.random.default_rng(2).integers(0, 256, (3, 16, 20), dtype=np.uint8)
    ours = bicubic_downscale(torch.from_numpy(img), 4).numpy()
    np.testing.assert_array_equal(ours, reference(img, 4, 5, rows_first=True))
    assert (reference(img, 4, 5, rows_first=False) != ours).any()


def test_ties_round_half_away_from_zero():
    """x2 upscaling weights are multiples of 1/128, so some outputs are exactly k + 0.5: MATLAB rounds them up."""
    line = torch.from_numpy(np.random.default_rng(3).integers(0, 256, (1, 1, 64), dtype=np.uint8))
    exact = imresize(line.double(), scale=2)  # a single row: the row pass is exact, so this is the column pass
    ties = exact.frac() == 0.5
    assert ties.any()
    expected = torch.floor(exact + 0.5).clamp(0, 255)
    assert torch.equal(imresize(line, scale=2).double(), expected)
    assert not torch.equal(expected[ties], torch.round(exact[ties]))  # ties-to-even would differ


def test_uint8_and_float_inputs_keep_their_dtype():
    x = torch.randint(0, 256, (3, 12, 10), dtype=torch.uint8)
    assert imresize(x, scale=0.5).dtype == torch.uint8
    assert imresize(x.float() / 255, scale=0.5).dtype == torch.float32
    with pytest.raises(TypeError, match="uint8 or float"):
        imresize(x.int(), scale=0.5)
