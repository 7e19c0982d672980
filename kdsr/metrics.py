"""PSNR and SSIM as the SR literature computes them (methods.md §6), so numbers compare with papers.

* Y channel of MATLAB ``rgb2ycbcr`` (ITU-R BT.601, [16, 235] scale, not rounded), peak 255;
* ``shave`` pixels cut from every border before scoring (``scale`` on the benchmark sets);
* SSIM of MATLAB ``ssim.m`` as used by EDSR / BasicSR: 11x11 Gaussian window (sigma 1.5), 'valid'
  filtering, K1 = 0.01, K2 = 0.03, L = 255, mean of the SSIM map (per channel in RGB mode);
* float64 throughout. Inputs are 3xHxW float tensors in [0, 1]; the SR output is expected to be
  quantised to 8 bits already (``quantize``), as the literature scores saved images.

RGB mode (``y_channel=False``, e.g. EDSR's DIV2K validation) uses the three channels on [0, 255]:
PSNR from the MSE over all channels, SSIM as the mean of the per-channel SSIMs.

``border`` resolves the shave of a metric option: a number of pixels, ``"scale"`` (the benchmark
protocol) or ``"scale+6"`` (EDSR-PyTorch's habit on DIV2K validation, ``src/utility.py`` ``calc_psnr``,
which also scores RGB there).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from kdsr.errors import KdsrError

Y_WEIGHTS = (65.481, 128.553, 24.966)  # R, G, B weights of BT.601 Y for RGB in [0, 1]
Y_OFFSET = 16.0
PEAK = 255.0
BICUBIC = "bicubic"  # the baseline's name among a run's scored models (results, report rows)
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03
Shave = int | Literal["scale", "scale+6"]


def border(shave: Shave, scale: int) -> int:
    """Pixels cut from each border: ``shave`` itself, ``scale`` for ``"scale"``, ``scale + 6`` for ``"scale+6"``."""
    if shave == "scale":
        return scale
    if shave == "scale+6":
        return scale + 6
    if isinstance(shave, bool) or not isinstance(shave, int) or shave < 0:
        raise KdsrError(f"shave must be a number of pixels >= 0, 'scale' or 'scale+6', got {shave!r}")
    return shave


def rgb_to_y(img: Tensor) -> Tensor:
    """BT.601 luma on the [16, 235] scale of RGB in [0, 1]: 3xHxW -> 1xHxW, Nx3xHxW -> Nx1xHxW; not rounded."""
    if img.dim() not in (3, 4) or img.shape[-3] != 3:
        raise KdsrError(f"rgb_to_y needs a 3xHxW or Nx3xHxW RGB image, got shape {tuple(img.shape)}")
    r, g, b = img.unbind(-3)
    y = Y_OFFSET + Y_WEIGHTS[0] * r + Y_WEIGHTS[1] * g + Y_WEIGHTS[2] * b
    return y.unsqueeze(-3)


def quantize(x: Tensor) -> Tensor:
    """Clamp to [0, 1] and round to the 8-bit grid, as saving the SR output to PNG would."""
    return x.clamp(0, 1).mul(255).round().div(255)


def psnr(sr: Tensor, hr: Tensor, shave: int, y_channel: bool = True) -> float:
    """PSNR in dB against peak 255; ``float('inf')`` when the shaved images are identical (MSE 0)."""
    a, b = _prepare(sr, hr, shave, y_channel, "psnr", min_size=1)
    mse = torch.mean((a - b) ** 2).item()
    if mse == 0:
        return float("inf")
    return 10.0 * math.log10(PEAK**2 / mse)


def ssim(sr: Tensor, hr: Tensor, shave: int, y_channel: bool = True) -> float:
    """Mean SSIM (1.0 for identical images); needs at least 11x11 pixels left after shaving."""
    x, y = _prepare(sr, hr, shave, y_channel, "ssim", min_size=SSIM_WINDOW)
    mu_x, mu_y = _gaussian_filter(x), _gaussian_filter(y)
    var_x = _gaussian_filter(x * x) - mu_x**2
    var_y = _gaussian_filter(y * y) - mu_y**2
    cov = _gaussian_filter(x * y) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * PEAK) ** 2, (SSIM_K2 * PEAK) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean().item()  # equal-size maps: the mean over channels of the per-channel means


def _gaussian_filter(x: Tensor) -> Tensor:
    """Separable 11x11 Gaussian (sigma 1.5, sums to 1) of ...xHxW float64, 'valid' part only.

    Written as 11 shifted multiply-adds per axis rather than ``conv2d``: the same correlation, but
    float64 convolution has no fast CPU kernel (this is ~4x faster on a 2K image, equal to 1e-12).
    """
    half = SSIM_WINDOW // 2
    t = torch.arange(-half, half + 1, dtype=torch.float64)
    g = torch.exp(-(t**2) / (2 * SSIM_SIGMA**2))
    taps = (g / g.sum()).tolist()
    for dim in (-1, -2):
        n = x.shape[dim] - SSIM_WINDOW + 1
        out = x.narrow(dim, 0, n) * taps[0]
        for k in range(1, SSIM_WINDOW):
            out.add_(x.narrow(dim, k, n), alpha=taps[k])
        x = out
    return x


def _prepare(sr: Tensor, hr: Tensor, shave: int, y_channel: bool, what: str, min_size: int) -> tuple[Tensor, Tensor]:
    """Both images as float64 CxHxW on [0, 255] (Y or RGB), shaved."""
    if not isinstance(sr, Tensor) or not isinstance(hr, Tensor):
        raise KdsrError(f"{what}: SR and HR must be tensors, got {type(sr).__name__} and {type(hr).__name__}")
    if sr.shape != hr.shape:
        raise KdsrError(
            f"{what}: SR and HR shapes differ: SR {tuple(sr.shape)} vs HR {tuple(hr.shape)}; "
            "mod-crop the HR image to the scale so that SR = scale x LR matches it"
        )
    if sr.dim() != 3 or (y_channel and sr.shape[0] != 3):
        want = "3xHxW RGB" if y_channel else "CxHxW"
        raise KdsrError(f"{what}: expected a {want} image, got shape {tuple(sr.shape)}")
    if isinstance(shave, bool) or not isinstance(shave, int) or shave < 0:
        raise KdsrError(f"{what}: shave must be a non-negative integer, got {shave!r}")
    h, w = sr.shape[-2:]
    if h - 2 * shave < min_size or w - 2 * shave < min_size:
        raise KdsrError(
            f"{what}: a {h}x{w} image shaved by {shave} px per border leaves less than {min_size}x{min_size} pixels"
        )
    out = []
    for img in (sr, hr):
        img = img.detach().to(device="cpu", dtype=torch.float64)
        img = rgb_to_y(img) if y_channel else img * PEAK
        out.append(img[:, shave : h - shave, shave : w - shave])
    return out[0], out[1]
