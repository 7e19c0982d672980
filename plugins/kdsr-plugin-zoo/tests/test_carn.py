"""CARN / CARN-M: parameter counts (single- and multi-scale), the official checkpoint layout.

The layout is written from the key names of nmhkahn/CARN-pytorch (``carn/model/carn.py``, ``carn_m.py``,
``ops.py``; the released ``checkpoint/*.pth`` are built with ``multi_scale=True`` by ``carn/sample.py``):
``sub_mean.shifter``/``add_mean.shifter`` (frozen 1x1 convs), ``entry``, ``b{k}.b{j}.body.{0,2}`` (CARN residual
blocks) or ``b{k}.b1.body.{0,2,4}`` (CARN-M's one shared efficient block, grouped 3x3 convs), ``b{k}.c{j}.body.0``
and ``c{j}.body.0`` (1x1 fusions), ``upsample.up{2,3,4}.body.{0,3}`` (conv + ReLU + pixel shuffle), ``exit``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import kdsr
from kdsr_zoo import carn as C
from zoo_testing import conv, conv_shapes, load_via_file, n_params, random_state

MEAN = torch.tensor(C.DIV2K_MEAN).view(1, 3, 1, 1)


# Single-scale counts (what one model for one scale holds; the default here): CARN-pytorch issue #47, the
# author confirming 1112K (CARN x4) and 294K (CARN-M x4, group 4); methods.md section 1.1 (CSD's single-scale
# CARN: 0.96 M / 1.15 M / 1.11 M at x2 / x3 / x4). Exact values from the layer shapes of CARN-pytorch's ops.py.
@pytest.mark.parametrize(
    ("name", "scale", "expected"),
    [
        ("carn", 2, 964_163),
        ("carn", 3, 1_148_803),
        ("carn", 4, 1_111_875),
        ("carn", 8, 1_259_587),
        ("carn_m", 2, 257_027),
        ("carn_m", 3, 303_427),
        ("carn_m", 4, 294_147),
        ("carn_m", 8, 331_267),
    ],
)
def test_single_scale_params(name: str, scale: int, expected: int) -> None:
    assert n_params(getattr(C, name), scale) == expected


# Multi-scale (x2, x3 and x4 upsamplers held together), the figure of the paper's tables: CARN 1,592K, which
# this matches; CARN-M 412K, 2.8K below this structure's 414,787 -- the same structure that reproduces the
# paper's 32.5G Multi-Adds for CARN-M x4 (CARN-pytorch issue #42); its 2,755 biases would explain the gap.
@pytest.mark.parametrize(("name", "expected"), [("carn", 1_591_939), ("carn_m", 414_787)])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_multi_scale_params(name: str, expected: int, scale: int) -> None:
    assert n_params(getattr(C, name), scale, multi_scale=True) == expected


def test_option_errors() -> None:
    with pytest.raises(kdsr.KdsrError, match="scale 2, 3, 4; got scale 8"):
        C.carn(8, multi_scale=True)
    with pytest.raises(kdsr.KdsrError, match="divisible"):
        C.carn_m(2, n_feats=18, group=4)


def official_layout(mobile: bool, c: int, group: int) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for m in ("sub_mean", "add_mean"):
        shapes |= {f"{m}.shifter.weight": (3, 3, 1, 1), f"{m}.shifter.bias": (3,)}
    shapes |= conv_shapes("entry", 3, c)
    for k in (1, 2, 3):
        if mobile:
            shapes |= conv_shapes(f"b{k}.b1.body.0", c, c, 3, group) | conv_shapes(f"b{k}.b1.body.2", c, c, 3, group)
            shapes |= conv_shapes(f"b{k}.b1.body.4", c, c, 1)
        else:
            for j in (1, 2, 3):
                shapes |= conv_shapes(f"b{k}.b{j}.body.0", c, c) | conv_shapes(f"b{k}.b{j}.body.2", c, c)
        for j in (1, 2, 3):
            shapes |= conv_shapes(f"b{k}.c{j}.body.0", (j + 1) * c, c, 1)
    for j in (1, 2, 3):
        shapes |= conv_shapes(f"c{j}.body.0", (j + 1) * c, c, 1)
    shapes |= conv_shapes("upsample.up2.body.0", c, 4 * c, 3, group)
    shapes |= conv_shapes("upsample.up3.body.0", c, 9 * c, 3, group)
    shapes |= conv_shapes("upsample.up4.body.0", c, 4 * c, 3, group) | conv_shapes("upsample.up4.body.3", c, 4 * c, 3, group)
    return shapes | conv_shapes("exit", c, 3)


def official_forward(sd, x: torch.Tensor, mobile: bool, group: int, scale: int) -> torch.Tensor:
    def cascade(h, prefix: str, blocks):
        stack = out = h
        for j, block in enumerate(blocks, start=1):
            stack = torch.cat([stack, block(out)], dim=1)
            out = F.relu(conv(sd, f"{prefix}c{j}.body.0", stack))
        return out

    def residual(p: str):
        if mobile:
            return lambda h: F.relu(
                conv(sd, f"{p}.body.4", F.relu(conv(sd, f"{p}.body.2", F.relu(conv(sd, f"{p}.body.0", h, group)), group))) + h
            )
        return lambda h: F.relu(conv(sd, f"{p}.body.2", F.relu(conv(sd, f"{p}.body.0", h))) + h)

    h = conv(sd, "entry", conv(sd, "sub_mean.shifter", x))
    stages = []
    for k in (1, 2, 3):
        names = ("b1", "b1", "b1") if mobile else ("b1", "b2", "b3")
        stages.append(lambda t, k=k, names=names: cascade(t, f"b{k}.", [residual(f"b{k}.{n}") for n in names]))
    h = cascade(h, "", stages)
    for idx in (0, 3) if scale == 4 else (0,):
        w = sd[f"upsample.up{scale}.body.{idx}.weight"]
        h = F.pixel_shuffle(F.relu(conv(sd, f"upsample.up{scale}.body.{idx}", h, group)), 3 if scale == 3 else 2)
        assert w.shape[0] == h.shape[1] * (9 if scale == 3 else 4)
    return conv(sd, "add_mean.shifter", conv(sd, "exit", h))


@pytest.mark.parametrize("multi_scale", [False, True])
@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("name", ["carn", "carn_m"])
def test_official_checkpoint_loads_and_matches(name: str, scale: int, multi_scale: bool, tmp_path) -> None:
    mobile, c = name == "carn_m", 8
    group = 4 if mobile else 1
    sd = random_state(official_layout(mobile, c, group))
    for m, sign in (("sub_mean", -1), ("add_mean", 1)):
        sd[f"{m}.shifter.weight"] = torch.eye(3).view(3, 3, 1, 1)
        sd[f"{m}.shifter.bias"] = sign * MEAN.flatten()
    model = getattr(C, name)(scale, n_feats=c, multi_scale=multi_scale).eval()
    load_via_file(model, sd, tmp_path, C.load_official)
    x = torch.rand(1, 3, 9, 11, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(model(x), official_forward(sd, x, mobile, group, scale), atol=1e-5)


def test_official_checkpoint_has_no_x8(tmp_path) -> None:
    sd = random_state(official_layout(False, 8, 1))
    with pytest.raises(kdsr.KdsrError) as err:
        load_via_file(C.carn(8, n_feats=8), sd, tmp_path, C.load_official)
    assert "\n" not in str(err.value) and "upsample.up" in str(err.value)
