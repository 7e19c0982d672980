"""RCAN: parameter counts of the official code, its checkpoint layouts (official and BasicSR).

The official layout is written from the key names of yulunzhang/RCAN ``RCAN_TestCode/code/model/rcan.py``
(mirrored by EDSR-PyTorch ``src/model/rcan.py``): ``sub_mean``/``add_mean``, ``head.0``,
``body.{g}.body.{b}.body.{0,2}`` (RCAB convs), ``body.{g}.body.{b}.body.3.conv_du.{0,2}`` (channel attention),
``body.{g}.body.{n_resblocks}`` (group conv), ``body.{n_resgroups}``, ``tail.0.{2k}``, ``tail.1``. BasicSR's from
``basicsr/archs/rcan_arch.py``: ``conv_first``, ``body.{g}.residual_group.{b}.rcab.{0,2}``,
``...rcab.3.attention.{1,3}``, ``body.{g}.conv``, ``conv_after_body``, ``upsample.{2k}``, ``conv_last``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import kdsr
from kdsr_zoo import rcan as R
from zoo_testing import conv, conv_shapes, load_via_file, n_params, random_state

MEAN = torch.tensor(R.DIV2K_MEAN).view(1, 3, 1, 1)


# RCAN x4 = 15,592,379: the official code's count, e.g. "RCAN_ori ... params: 15592379.0" in third-party
# profiling logs and spandrel-based benchmark tables; methods.md section 1.1 (15.44 M / 15.63 M / 15.59 M for
# x2 / x3 / x4; 15.59 M also in FAKD's table). From the layer shapes: 15,592,355 in convs + 24 in the two
# MeanShift 1x1 convs, which the official code leaves trainable. x2/x3/x8 differ only in the upsampler.
@pytest.mark.parametrize(
    ("scale", "expected"), [(2, 15_444_667), (3, 15_629_307), (4, 15_592_379), (8, 15_740_091)]
)
def test_params_match_official(scale: int, expected: int) -> None:
    assert n_params(R.rcan, scale) == expected


def test_frozen_mean_is_edsr_pytorch_count() -> None:
    assert n_params(R.rcan, 4, trainable_mean=False) == 15_592_355
    model = R.rcan(2, n_resgroups=1, n_resblocks=1, n_feats=16, trainable_mean=False)
    assert {"sub_mean.weight", "add_mean.bias"} <= set(model.state_dict())


def test_option_errors() -> None:
    with pytest.raises(kdsr.KdsrError, match="reduction"):
        R.rcan(2, n_feats=8, reduction=16)
    with pytest.raises(kdsr.KdsrError, match="scale 6"):
        R.rcan(6)


def _upsampler_convs(scale: int, c: int) -> list[tuple[int, int]]:
    return [(0, 9 * c)] if scale == 3 else [(2 * k, 4 * c) for k in range(int(math.log2(scale)))]


def official_layout(g: int, b: int, c: int, r: int, scale: int) -> dict[str, tuple[int, ...]]:
    shapes = {"sub_mean.weight": (3, 3, 1, 1), "sub_mean.bias": (3,), "add_mean.weight": (3, 3, 1, 1), "add_mean.bias": (3,)}
    shapes |= conv_shapes("head.0", 3, c)
    for i in range(g):
        for j in range(b):
            p = f"body.{i}.body.{j}.body"
            shapes |= conv_shapes(f"{p}.0", c, c) | conv_shapes(f"{p}.2", c, c)
            shapes |= conv_shapes(f"{p}.3.conv_du.0", c, c // r, 1) | conv_shapes(f"{p}.3.conv_du.2", c // r, c, 1)
        shapes |= conv_shapes(f"body.{i}.body.{b}", c, c)
    shapes |= conv_shapes(f"body.{g}", c, c)
    for idx, c_out in _upsampler_convs(scale, c):
        shapes |= conv_shapes(f"tail.0.{idx}", c, c_out)
    return shapes | conv_shapes("tail.1", c, 3)


def basicsr_layout(g: int, b: int, c: int, r: int, scale: int) -> dict[str, tuple[int, ...]]:
    shapes = conv_shapes("conv_first", 3, c)
    for i in range(g):
        for j in range(b):
            p = f"body.{i}.residual_group.{j}.rcab"
            shapes |= conv_shapes(f"{p}.0", c, c) | conv_shapes(f"{p}.2", c, c)
            shapes |= conv_shapes(f"{p}.3.attention.1", c, c // r, 1) | conv_shapes(f"{p}.3.attention.3", c // r, c, 1)
        shapes |= conv_shapes(f"body.{i}.conv", c, c)
    shapes |= conv_shapes("conv_after_body", c, c)
    for idx, c_out in _upsampler_convs(scale, c):
        shapes |= conv_shapes(f"upsample.{idx}", c, c_out)
    return shapes | conv_shapes("conv_last", c, 3)


def _ca(sd, p1: str, p2: str, x: torch.Tensor) -> torch.Tensor:
    y = x.mean(dim=(2, 3), keepdim=True)
    return x * torch.sigmoid(conv(sd, p2, F.relu(conv(sd, p1, y))))


def _upsample(sd, prefix: str, x: torch.Tensor, scale: int, c: int) -> torch.Tensor:
    for idx, c_out in _upsampler_convs(scale, c):
        x = F.pixel_shuffle(conv(sd, f"{prefix}.{idx}", x), math.isqrt(c_out // c))
    return x


def official_forward(sd, x, g: int, b: int, c: int, scale: int) -> torch.Tensor:
    x = conv(sd, "head.0", conv(sd, "sub_mean", x * 255))
    res = x
    for i in range(g):
        h = res
        for j in range(b):
            p = f"body.{i}.body.{j}.body"
            h = h + _ca(sd, f"{p}.3.conv_du.0", f"{p}.3.conv_du.2", conv(sd, f"{p}.2", F.relu(conv(sd, f"{p}.0", h))))
        res = res + conv(sd, f"body.{i}.body.{b}", h)
    res = conv(sd, f"body.{g}", res) + x
    return conv(sd, "add_mean", conv(sd, "tail.1", _upsample(sd, "tail.0", res, scale, c))) / 255


def basicsr_forward(sd, x, g: int, b: int, c: int, scale: int) -> torch.Tensor:
    x = conv(sd, "conv_first", (x - MEAN) * 255)
    res = x
    for i in range(g):
        h = res
        for j in range(b):
            p = f"body.{i}.residual_group.{j}.rcab"
            h = h + _ca(sd, f"{p}.3.attention.1", f"{p}.3.attention.3", conv(sd, f"{p}.2", F.relu(conv(sd, f"{p}.0", h))))
        res = res + conv(sd, f"body.{i}.conv", h)
    res = conv(sd, "conv_after_body", res) + x
    return conv(sd, "conv_last", _upsample(sd, "upsample", res, scale, c)) / 255 + MEAN


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize(("layout", "forward"), [(official_layout, official_forward), (basicsr_layout, basicsr_forward)])
def test_official_layouts_load_strictly_and_match(layout, forward, scale: int, tmp_path) -> None:
    g, b, c, r = 2, 2, 16, 4
    sd = random_state(layout(g, b, c, r, scale))
    if "sub_mean.weight" in sd:  # official checkpoints carry their (trained) mean shift: use random values
        sd["sub_mean.weight"] = torch.eye(3).view(3, 3, 1, 1) + sd["sub_mean.weight"]
        sd["add_mean.weight"] = torch.eye(3).view(3, 3, 1, 1) + sd["add_mean.weight"]
    model = R.rcan(scale, n_resgroups=g, n_resblocks=b, n_feats=c, reduction=r).eval()
    load_via_file(model, sd, tmp_path, R.load_official)
    x = torch.rand(1, 3, 9, 11, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(model(x), forward(sd, x, g, b, c, scale), atol=1e-5)


@pytest.mark.parametrize("layout", [official_layout, basicsr_layout])
def test_wrong_scale_is_one_line_error(layout, tmp_path) -> None:
    sd = random_state(layout(1, 1, 16, 4, 2))
    with pytest.raises(kdsr.KdsrError) as err:
        load_via_file(R.rcan(3, n_resgroups=1, n_resblocks=1, n_feats=16, reduction=4), sd, tmp_path, R.load_official)
    message = str(err.value)
    assert "\n" not in message
    assert "tail.0.0.weight" in message and "scale" in message.split("do not fit", 1)[1]
