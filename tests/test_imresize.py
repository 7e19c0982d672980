"""kdsr's imresize equals MATLAB's imresize definition, evaluated independently with NumPy loops."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from kdsr.data import bicubic_downscale, bicubic_upscale, imresize, read_image, to_float

SET5 = Path("/work/shared/data/sr/Set5")


def _cubic(x: float) -> float:
    ax = abs(x)
    if ax <= 1:
        return 1.5 * ax**3 - 2.5 * ax**2 + 1
    if ax <= 2:
        return -0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2
    return 0.0


def _matlab_1d(v: np.ndarray, out_len: int, scale: float, antialias: bool) -> np.ndarray:
    """imresize.m ``contributions`` + ``resizeAlongDim`` for one line, written out pixel by pixel."""
    n = len(v)
    aa = antialias and scale < 1
    width = 4.0 / scale if aa else 4.0
    kernel = (lambda t: scale * _cubic(scale * t)) if aa else _cubic
    aux = list(range(1, n + 1)) + list(range(n, 0, -1))  # MATLAB's symmetric index table, 1-based
    out = np.zeros(out_len)
    for x in range(1, out_len + 1):
        u = x / scale + 0.5 * (1 - 1 / scale)
        left = math.floor(u - width / 2)
        taps = [left + j for j in range(math.ceil(width) + 2)]
        w = [kernel(u - t) for t in taps]
        total = sum(w)
        out[x - 1] = sum(wj / total * v[aux[(t - 1) % (2 * n)] - 1] for wj, t in zip(w, taps))
    return out


def matlab_imresize(img: np.ndarray, scale: float, antialias: bool = True) -> np.ndarray:
    """Reference for a CxHxW float64 array: rows first, then columns (MATLAB's order for equal scales)."""
    c, h, w = img.shape
    oh, ow = math.ceil(h * scale), math.ceil(w * scale)
    tmp = np.zeros((c, oh, w))
    out = np.zeros((c, oh, ow))
    for k in range(c):
        for j in range(w):
            tmp[k, :, j] = _matlab_1d(img[k, :, j], oh, scale, antialias)
        for i in range(oh):
            out[k, i, :] = _matlab_1d(tmp[k, i, :], ow, scale, antialias)
    return out


@pytest.mark.parametrize(("scale", "shape"), [(1 / 2, (13, 17)), (1 / 3, (12, 19)), (1 / 4, (16, 21)), (2, (7, 9))])
def test_matches_matlab_definition(scale: float, shape: tuple[int, int]) -> None:
    img = np.random.default_rng(0).random((3, *shape))
    ours = imresize(torch.from_numpy(img), scale=scale).numpy()
    ref = matlab_imresize(img, scale)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() < 1e-6


@pytest.mark.parametrize("s", [2, 3, 4])
def test_bicubic_downscale_is_matlab_one_over_s(s: int) -> None:
    img = torch.rand(3, 6 * s, 5 * s, dtype=torch.float64, generator=torch.Generator().manual_seed(s))
    lr = bicubic_downscale(img, s)
    assert lr.shape == (3, 6, 5)
    assert (lr - torch.from_numpy(matlab_imresize(img.numpy(), 1 / s))).abs().max() < 1e-6


def test_constant_image_is_exact() -> None:
    img = torch.full((2, 3, 10, 14), 0.3, dtype=torch.float64)
    for out in (bicubic_downscale(img, 3), bicubic_upscale(img, 2), imresize(img, size=(7, 31))):
        assert (out - 0.3).abs().max() < 1e-12


def test_sizes_dtypes_and_no_clamp() -> None:
    x = torch.rand(3, 11, 20)
    assert imresize(x, scale=0.5).shape == (3, 6, 10)  # ceil, as MATLAB
    assert imresize(x, scale=1 / 3).shape == (3, 4, 7)
    assert imresize(x[None], size=(5, 9)).shape == (1, 3, 5, 9)
    assert imresize(x, scale=0.5).dtype == torch.float32
    assert imresize(x.double(), scale=2).dtype == torch.float64
    step = torch.zeros(1, 8, 8)
    step[..., 4:] = 1.0
    up = bicubic_upscale(step, 2)
    assert up.min() < 0 and up.max() > 1  # bicubic overshoot is kept; callers clip
    assert torch.equal(imresize(x, scale=1), x)


def test_antialias_off_matches_matlab_definition() -> None:
    img = np.random.default_rng(1).random((2, 9, 11))
    ours = imresize(torch.from_numpy(img), scale=0.5, antialias=False).numpy()
    assert np.abs(ours - matlab_imresize(img, 0.5, antialias=False)).max() < 1e-6


def test_known_matlab_output() -> None:
    # imresize(reshape(0:15, 4, 4)', 0.5, 'bicubic', 'AntiAliasing', false) as printed by MATLAB/Octave
    img = torch.arange(16, dtype=torch.float64).reshape(1, 4, 4)
    out = imresize(img, scale=0.5, antialias=False)
    assert torch.allclose(out[0], torch.tensor([[2.1875, 4.3125], [10.6875, 12.8125]], dtype=torch.float64))


@pytest.mark.skipif(not SET5.is_dir(), reason="shared SR data not present")
def test_real_image_crop_matches_reference() -> None:
    hr = to_float(read_image(SET5 / "butterfly.png")).double()[:, 100:148, 60:96]
    lr = bicubic_downscale(hr, 4)
    assert (lr - torch.from_numpy(matlab_imresize(hr.numpy(), 1 / 4))).abs().max() < 1e-6
    full = bicubic_downscale(to_float(read_image(SET5 / "butterfly.png")), 4)
    assert full.shape == (3, 64, 64)
