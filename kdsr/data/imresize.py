"""MATLAB's bicubic ``imresize`` in torch, byte-identical to MATLAB's on uint8 images.

The SR literature's LR images (DIV2K ``LR_bicubic``, the benchmark LR sets) were made with MATLAB
``imresize(hr, 1/s)`` on uint8 images: a Keys cubic kernel (a = -0.5), antialiased when downscaling (kernel
stretched by 1/scale), symmetric edge handling, one dimension at a time (the one with the smaller scale
first, rows first on a tie: ``dimensionOrder``), and, because the input is uint8, each pass's result
rounded half away from zero and saturated to uint8 before the next. PIL, OpenCV and ``F.interpolate`` all
differ from it, and LR made with them shifts PSNR against published numbers.

kdsr reproduces MATLAB's ``contributions`` exactly and has two ways of applying them:

* uint8 input (MATLAB's uint8 path): every pass is summed tap by tap in float64, in MATLAB's tap order,
  and rounded to uint8, so the LR equals MATLAB's byte for byte (tested on Set5 x2/x3/x4 LR made in MATLAB);
* float input (MATLAB's double path): each axis is one dense (out x in) matrix applied with a matmul in the
  input's dtype, nothing rounded or clamped. Rounding its result once (ties to even) gives the same LR
  except for 10-15% of pixels that differ by 1-2 levels.
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


@lru_cache(maxsize=32)
def _contributions(in_size: int, out_size: int, scale: float, antialias: bool) -> tuple[Tensor, Tensor]:
    """MATLAB's ``contributions`` for one axis: (out_size x P) 0-based input indices and float64 weights.

    P = ceil(kernel_width) + 2 taps per output pixel, indices mirrored at the edges (MATLAB's
    ``aux = [1..n, n..1]``), each row normalised to sum 1, tap columns that are zero for every output dropped.
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
    idx = left[:, None] + torch.arange(math.ceil(width) + 2, dtype=torch.float64)[None, :]
    w = kernel(u[:, None] - idx)
    w = w / w.sum(dim=1, keepdim=True)
    period = 2 * in_size
    m = (idx.long() - 1) % period
    src = torch.where(m < in_size, m, period - 1 - m)
    keep = (w != 0).any(dim=0)
    return src[:, keep], w[:, keep]


@lru_cache(maxsize=32)  # a 2040 -> 1020 matrix is 16 MB; DIV2K has many distinct sizes
def _weights(in_size: int, out_size: int, scale: float, antialias: bool) -> Tensor:
    """The (out_size x in_size) float64 matrix of ``_contributions``: taps on the same input pixel add up."""
    src, w = _contributions(in_size, out_size, scale, antialias)
    mat = torch.zeros(out_size, in_size, dtype=torch.float64)
    mat.scatter_add_(1, src, w)
    return mat


@lru_cache(maxsize=32)
def _weights_on(
    in_size: int, out_size: int, scale: float, antialias: bool, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """``_weights`` cast and moved once, so per-step calls (e.g. bicubic upsampling on GPU) copy nothing."""
    return _weights(in_size, out_size, scale, antialias).to(device=device, dtype=dtype)


def _order(scale_hw: tuple[float, float]) -> tuple[int, int]:
    """MATLAB ``dimensionOrder``: the axis with the smaller scale first; rows first on a tie (stable sort)."""
    return (0, 1) if scale_hw[0] <= scale_hw[1] else (1, 0)


def _round_uint8(v: Tensor) -> Tensor:
    """MATLAB's double -> uint8 conversion: round half away from zero, saturate to [0, 255]."""
    return (torch.sign(v) * torch.floor(v.abs() + 0.5)).clamp_(0, 255)


def _pass_uint8(x: Tensor, axis: int, src: Tensor, w: Tensor) -> Tensor:
    """One ``resizeAlongDim`` of a float64 image holding uint8 values: taps summed in MATLAB's order, rounded."""
    line = x.movedim(axis, 0).contiguous()  # taps then gather whole (C, W) or (C, H) slabs
    w = w.view(*w.shape, *([1] * (line.dim() - 1)))
    acc = line[src[:, 0]] * w[:, 0]
    for t in range(1, src.shape[1]):
        acc += line[src[:, t]] * w[:, t]
    return _round_uint8(acc).movedim(0, axis)


def _resize(x: Tensor, out_hw: tuple[int, int], scale_hw: tuple[float, float], antialias: bool) -> Tensor:
    if x.dtype != torch.uint8 and not x.is_floating_point():
        raise TypeError(f"imresize needs a uint8 or float tensor, got {x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"imresize needs a (..., H, W) tensor, got shape {tuple(x.shape)}")
    uint8 = x.dtype == torch.uint8
    if uint8:
        x = x.to(torch.float64)
    for axis in _order(scale_hw):
        size, out, scale = x.shape[axis - 2], out_hw[axis], scale_hw[axis]
        if out == size and scale == 1:
            continue
        if uint8:
            src, w = _contributions(size, out, scale, antialias)
            x = _pass_uint8(x, axis - 2, src.to(x.device), w.to(x.device))
        else:
            mat = _weights_on(size, out, scale, antialias, x.dtype, x.device)
            x = torch.matmul(mat, x) if axis == 0 else torch.matmul(x, mat.T)
    return x.to(torch.uint8) if uint8 else x


def imresize(
    x: Tensor,
    scale: float | None = None,
    size: tuple[int, int] | None = None,
    antialias: bool = True,
) -> Tensor:
    """Resize (..., H, W) tensors like MATLAB ``imresize(x, scale)`` / ``imresize(x, [h w])``, bicubic.

    Give exactly one of ``scale`` (output ``ceil(H*scale) x ceil(W*scale)``, as MATLAB) or ``size``
    (then each axis uses scale = out/in). The dtype is kept, as MATLAB keeps the class: uint8 gives uint8,
    rounded after each axis exactly as MATLAB; float gives float, nothing clamped (bicubic overshoots [0, 1]
    near edges and callers decide whether to clip or quantise).
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
    """MATLAB ``imresize(hr, 1/scale)``, antialiased (HR should be mod-cropped); uint8 or float as ``imresize``."""
    h, w = hr.shape[-2:]
    out = (-(-h // scale), -(-w // scale))  # ceil in integers, immune to 1/scale rounding
    return _resize(hr, out, (1 / scale, 1 / scale), antialias=True)


def bicubic_degrade(hr: Tensor, scale: int, uint8: bool = True) -> Tensor:
    """kdsr's default degradation: the literature's LR of a float HR in [0, 1] that holds an 8-bit image.

    ``uint8`` (default): MATLAB's imresize on the uint8 image, so the LR is byte-identical to the LR files
    the literature ships (returned as float, values k/255). False: the float path, which the caller rounds
    once (1-2 levels off MATLAB on 10-15% of pixels).
    """
    if not uint8:
        return bicubic_downscale(hr, scale)
    pixels = hr.clamp(0, 1).mul(255).round().to(torch.uint8)
    return bicubic_downscale(pixels, scale).to(hr.dtype).div_(255)


def bicubic_upscale(lr: Tensor, scale: float) -> Tensor:
    """MATLAB ``imresize(lr, scale)``: the bicubic baseline and the input of bicubic-residual losses."""
    return imresize(lr, scale=scale)
