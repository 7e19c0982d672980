"""EDSR (Lim et al., "Enhanced Deep Residual Networks for Single Image Super-Resolution", CVPRW 2017).

Re-implemented from the structure of the reference code (sanghyun-son/EDSR-PyTorch, ``src/model/edsr.py``
and ``src/model/common.py``); submodules carry the reference names, so its released ``.pt`` files load
as they are. ``load_official`` also converts BasicSR's ``EDSR`` layout (``conv_first``, ``body.N.conv1``...)
and CSD's slimmable EDSR (``head``, ``body_conv``, ``upsampler.blocks.k``, ``tail_conv``).

Parameter counts (``sum(p.numel() for p in model.parameters())``), equal to the reference's trainable count:
EDSR-baseline x4 1,517,571 and EDSR x4 43,089,923. The reference's MeanShift is a frozen 1x1 conv; here it
holds buffers instead of frozen parameters, so it is in the state dict under the reference keys
(``sub_mean.weight``/``.bias``) but not in ``parameters()`` and never reaches an optimiser (+24 values if
counted).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from kdsr import Channels, Count, Positive

from kdsr_zoo.common import (
    DIV2K_MEAN,
    MeanShift,
    ResidualSR,
    Upsampler,
    basicsr_layout,
    check_mean,
    check_scale,
    conv,
    convert,
    csd_layout,
)

__all__ = ["DIV2K_MEAN", "EDSR", "ResBlock", "edsr", "edsr_baseline", "load_official"]


class ResBlock(nn.Module):
    """conv-ReLU-conv, scaled by ``res_scale`` and added to the input (no batch norm)."""

    def __init__(self, n_feats: int, res_scale: float) -> None:
        super().__init__()
        # Not in-place: a tap on any submodule (e.g. ``body.0.body.0``) must see its own output unchanged.
        self.body = nn.Sequential(conv(n_feats, n_feats), nn.ReLU(), conv(n_feats, n_feats))
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.add(x, self.body(x), alpha=self.res_scale)  # one pass: x + res_scale * body(x)


class EDSR(ResidualSR):
    """EDSR: head conv, ``n_resblocks`` residual blocks + conv with a global skip, sub-pixel tail.

    Forward and feature taps are :class:`kdsr_zoo.common.ResidualSR`'s; ``body.i`` is residual block i.
    """

    def __init__(
        self,
        scale: int,
        n_resblocks: int,
        n_feats: int,
        res_scale: float,
        rgb_range: Positive = 255.0,
        n_colors: Count = 3,
        rgb_mean: Sequence[float] = DIV2K_MEAN,
    ) -> None:
        super().__init__()
        check_scale("EDSR", scale)
        check_mean("EDSR", rgb_mean, n_colors)
        self.scale, self.n_resblocks, self.rgb_range = scale, n_resblocks, rgb_range
        self.sub_mean = MeanShift(rgb_range, rgb_mean, sign=-1)
        self.add_mean = MeanShift(rgb_range, rgb_mean, sign=1)
        self.head = nn.Sequential(conv(n_colors, n_feats))
        self.body = nn.Sequential(*[ResBlock(n_feats, res_scale) for _ in range(n_resblocks)], conv(n_feats, n_feats))
        self.tail = nn.Sequential(Upsampler(scale, n_feats), conv(n_feats, n_colors))


# ---------------------------------------------------------------- official checkpoints


def load_official(module: EDSR, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """EDSR-PyTorch ``.pt`` (same names as this module), BasicSR ``EDSR`` or CSD's slimmable EDSR -> this layout.

    * BasicSR normalises with ``(x - mean) * img_range`` and keeps the mean out of its state dict; that
      equals this module's mean shift at its default ``rgb_range`` 255 and DIV2K mean, which are filled in.
    * CSD (``Booooooooooo/CSD``, ``PyTorch version/model/edsr.py``, class ``EDSR``): ``head``,
      ``body.i.conv1/conv2``, ``body_conv``, ``upsampler.blocks.k``, ``tail_conv``; the same maths as
      EDSR-PyTorch at full width, so a CSD-trained file also loads as a CSSR-Net (``cssr`` over ``edsr``).
    """
    n = module.n_resblocks
    blocks = [(r"^body\.(\d+)\.conv1\.", r"body.\1.body.0."), (r"^body\.(\d+)\.conv2\.", r"body.\1.body.2.")]
    return convert(module, state, [basicsr_layout(n, blocks), csd_layout("head", n, blocks)])


# ---------------------------------------------------------------- registered variants

def edsr(
    scale: int,
    n_resblocks: Count = 32,
    n_feats: Channels = 256,
    res_scale: Positive = 0.1,
    rgb_range: Positive = 255.0,
    n_colors: Count = 3,
    rgb_mean: tuple[float, ...] = DIV2K_MEAN,
) -> EDSR:
    """EDSR (Lim et al. 2017), full model: 32 residual blocks x 256 channels, residual scaling 0.1; x2/x3/x4/x8."""
    return EDSR(scale, n_resblocks, n_feats, res_scale, rgb_range, n_colors, rgb_mean)


def edsr_baseline(
    scale: int,
    n_resblocks: Count = 16,
    n_feats: Channels = 64,
    res_scale: Positive = 1.0,
    rgb_range: Positive = 255.0,
    n_colors: Count = 3,
    rgb_mean: tuple[float, ...] = DIV2K_MEAN,
) -> EDSR:
    """EDSR-baseline (Lim et al. 2017): 16 residual blocks x 64 channels, no residual scaling; x2/x3/x4/x8."""
    return EDSR(scale, n_resblocks, n_feats, res_scale, rgb_range, n_colors, rgb_mean)


def register_backbones(register) -> None:  # noqa: ANN001 - kdsr's register callable
    register("edsr", edsr, load_official=load_official)
    register("edsr_baseline", edsr_baseline, load_official=load_official)
