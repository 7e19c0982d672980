"""MATLAB-compatible bicubic ``imresize`` in torch.

The SR literature's LR images (DIV2K ``LR_bicubic``, the benchmark LR sets) were made with MATLAB
``imresize(hr, 1/s)``: a Keys cubic kernel (a = -0.5), antialiased when downscaling (kernel stretched by
1/scale), symmetric edge handling. PIL, OpenCV and ``F.interpolate`` all differ from it, and LR made
with them shifts PSNR against published numbers, so kdsr reproduces MATLAB's ``contributions`` exactly.

Each axis becomes one dense (out x in) weight matrix, built once per (in, out, scale) in float64 and
applied with a matmul over the last two dims.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor

_KERNEL_WIDTH = 4.0  # support of the cubic kernel: [-2, 2]


def _cubic(x: Tensor) -> Tensor:
    """Keys cubic convolution kernel with a = -0.5 (MATLAB ``cubic``)."""
    ax = x.abs()
    ax2, ax3 = ax * ax, ax * ax * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))
    return near + far


@lru_cache(maxsize=32)  # a 2040 -> 1020 matrix is 16 MB; DIV2K has many distinct sizes
def _weights(in_size: int, out_size: int, scale: float, antialias: bool) -> Tensor:
    """The (out_size x in_size) float64 matrix equal to MATLAB's ``contributions`` for one axis.

    MATLAB keeps P = ceil(kernel_width) + 2 taps per output pixel at mirrored input indices; taps that
    land on the same input pixel after mirroring add up here, and all-zero taps contribute nothing, so
    dropping them (as MATLAB does) needs no special case.
    """
    if antialias and scale < 1:
        width = _KERNEL_WIDTH / scale
        kernel = lambda t: scale * _cubic(scale * t)  # noqa: E731
    else:
        width = _KERNEL_WIDTH
        kernel = _cubic
    x = torch.arange(1, out_size + 1, dtype=torch.float64)  # 1-based, as MATLAB
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = torch.floor(u - width / 2)
    taps = math.ceil(width) + 2
    idx = left[:, None] + torch.arange(taps, dtype=torch.float64)[None, :]
    w = kernel(u[:, None] - idx)
    w = w / w.sum(dim=1, keepdim=True)
    # symmetric padding: aux = [1..n, n..1], indexed cyclically (0-based below)
    period = 2 * in_size
    m = (idx.long() - 1) % period
    src = torch.where(m < in_size, m, period - 1 - m)
    mat = torch.zeros(out_size, in_size, dtype=torch.float64)
    mat.scatter_add_(1, src, w)
    return mat


@lru_cache(maxsize=32)
def _weights_on(
    in_size: int, out_size: int, scale: float, antialias: bool, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """``_weights`` cast and moved once, so per-step calls (e.g. bicubic upsampling on GPU) copy nothing."""
    return _weights(in_size, out_size, scale, antialias).to(device=device, dtype=dtype)


def _resize(x: Tensor, out_hw: tuple[int, int], scale_hw: tuple[float, float], antialias: bool) -> Tensor:
    if not x.is_floating_point():
        raise TypeError(f"imresize needs a float tensor, got {x.dtype}; convert with kdsr.data.to_float")
    if x.dim() < 2:
        raise ValueError(f"imresize needs a (..., H, W) tensor, got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    (oh, ow), (sh, sw) = out_hw, scale_hw
    if oh != h or sh != 1:
        wh = _weights_on(h, oh, sh, antialias, x.dtype, x.device)
        x = torch.matmul(wh, x)
    if ow != w or sw != 1:
        ww = _weights_on(w, ow, sw, antialias, x.dtype, x.device)
        x = torch.matmul(x, ww.T)
    return x


def imresize(
    x: Tensor,
    scale: float | None = None,
    size: tuple[int, int] | None = None,
    antialias: bool = True,
) -> Tensor:
    """Resize float (..., H, W) tensors like MATLAB ``imresize(x, scale)`` / ``imresize(x, [h w])``, bicubic.

    Give exactly one of ``scale`` (output ``ceil(H*scale) x ceil(W*scale)``, as MATLAB) or ``size``
    (then each axis uses scale = out/in). The dtype is kept and nothing is clamped: bicubic overshoots
    [0, 1] near edges and callers decide whether to clip or quantise.
    """
    if (scale is None) == (size is None):
        raise ValueError("imresize: give exactly one of scale= or size=")
    h, w = x.shape[-2:]
    if scale is not None:
        if scale <= 0:
            raise ValueError(f"imresize: scale must be positive, got {scale}")
        out = (math.ceil(h * scale), math.ceil(w * scale))
        return _resize(x, out, (float(scale), float(scale)), antialias)
    oh, ow = (int(s) for s in size)  # type: ignore[union-attr]
    if oh <= 0 or ow <= 0:
        raise ValueError(f"imresize: size must be positive, got {size}")
    return _resize(x, (oh, ow), (oh / h, ow / w), antialias)


def bicubic_downscale(hr: Tensor, scale: int) -> Tensor:
    """The literature's LR: MATLAB ``imresize(hr, 1/scale)``, antialiased (HR should be mod-cropped)."""
    h, w = hr.shape[-2:]
    out = (-(-h // scale), -(-w // scale))  # ceil in integers, immune to 1/scale rounding
    return _resize(hr, out, (1 / scale, 1 / scale), antialias=True)


def bicubic_upscale(lr: Tensor, scale: float) -> Tensor:
    """MATLAB ``imresize(lr, scale)``: the bicubic baseline and the input of bicubic-residual losses."""
    return imresize(lr, scale=scale)
