"""RCAN (Zhang et al., "Image Super-Resolution Using Very Deep Residual Channel Attention Networks", ECCV 2018).

Re-implemented from the structure of the official code (yulunzhang/RCAN, ``RCAN_TestCode/code/model/rcan.py``,
which EDSR-PyTorch's ``src/model/rcan.py`` mirrors); submodules carry its names, so the released
``RCAN_BIX{2,3,4,8}.pt`` files load as they are. ``load_official`` also converts BasicSR's ``RCAN`` layout
(``conv_first``, ``body.g.residual_group.b.rcab``, ``attention``...) and CSD's slimmable RCAN (``head_conv``,
``caLayer``, ``body_conv``, ``upsampler.blocks.k``, ``tail_conv``).

Parameter count: RCAN x4 = 15,592,379, the official code's count. That count includes the 24 values of the
two MeanShift 1x1 convs: the official ``MeanShift`` sets ``requires_grad`` on the module instead of on its
parameters, so they stay trainable (and were trained). ``trainable_mean=True`` (default) keeps that; with
``False`` they are frozen buffers, as in EDSR-PyTorch's copy of RCAN (15,592,355). The state-dict keys are
the same either way.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from kdsr import Channels, Count, KdsrError, Positive
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

__all__ = ["DIV2K_MEAN", "RCAN", "load_official", "rcan"]


class CALayer(nn.Module):
    """Channel attention: global average pool, squeeze by ``reduction``, excite, sigmoid gate."""

    def __init__(self, n_feats: int, reduction: int) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        squeezed = n_feats // reduction
        self.conv_du = nn.Sequential(
            nn.Conv2d(n_feats, squeezed, 1), nn.ReLU(), nn.Conv2d(squeezed, n_feats, 1), nn.Sigmoid()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.conv_du(self.avg_pool(x))


class RCAB(nn.Module):
    """Residual channel-attention block: conv-ReLU-conv-CA added to the input.

    ``res_scale`` scales the residual as in BasicSR; the official code ignores it, which is the same at
    its only used value, 1.
    """

    def __init__(self, n_feats: int, reduction: int, res_scale: float) -> None:
        super().__init__()
        # Not in-place: a tap on any submodule must see its own output unchanged.
        self.body = nn.Sequential(conv(n_feats, n_feats), nn.ReLU(), conv(n_feats, n_feats), CALayer(n_feats, reduction))
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) * self.res_scale


class ResidualGroup(nn.Module):
    """``n_resblocks`` RCABs and a conv, with a skip over the whole group."""

    def __init__(self, n_feats: int, reduction: int, res_scale: float, n_resblocks: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *[RCAB(n_feats, reduction, res_scale) for _ in range(n_resblocks)], conv(n_feats, n_feats)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class RCAN(ResidualSR):
    """RCAN: head conv, ``n_resgroups`` residual groups of RCABs + conv with a global skip, sub-pixel tail.

    Forward and feature taps are :class:`kdsr_zoo.common.ResidualSR`'s; ``body.i`` is residual group i.
    Single blocks are reachable by submodule path, e.g. ``body.3.body.7`` (RCAB 7 of group 3).
    """

    def __init__(
        self,
        scale: int,
        n_resgroups: Count = 10,
        n_resblocks: Count = 20,
        n_feats: Channels = 64,
        reduction: Count = 16,
        res_scale: Positive = 1.0,
        rgb_range: Positive = 255.0,
        n_colors: Count = 3,
        rgb_mean: Sequence[float] = DIV2K_MEAN,
        trainable_mean: bool = True,
    ) -> None:
        super().__init__()
        check_scale("RCAN", scale)
        check_mean("RCAN", rgb_mean, n_colors)
        if n_feats < reduction:
            raise KdsrError(f"RCAN: n_feats ({n_feats}) must be at least reduction ({reduction}) for channel attention")
        self.scale, self.n_resgroups, self.n_resblocks, self.rgb_range = scale, n_resgroups, n_resblocks, rgb_range
        self.sub_mean = MeanShift(rgb_range, rgb_mean, -1, trainable_mean)
        self.add_mean = MeanShift(rgb_range, rgb_mean, 1, trainable_mean)
        self.head = nn.Sequential(conv(n_colors, n_feats))
        self.body = nn.Sequential(
            *[ResidualGroup(n_feats, reduction, res_scale, n_resblocks) for _ in range(n_resgroups)],
            conv(n_feats, n_feats),
        )
        self.tail = nn.Sequential(Upsampler(scale, n_feats), conv(n_feats, n_colors))


def load_official(module: RCAN, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official RCAN / EDSR-PyTorch ``.pt`` (same names as this module), BasicSR ``RCAN`` or CSD's
    slimmable RCAN -> this layout.

    * BasicSR normalises with ``(x - mean) * img_range`` and keeps the mean out of its state dict; that
      equals this module's mean shift at its defaults (``rgb_range`` 255, DIV2K mean), which are filled in.
    * CSD (``Booooooooooo/CSD``, ``PyTorch version/model/rcan.py``, classes ``RCAN``/``RCAB``/``CALayer``):
      ``head_conv``, RCAB convs ``body.0/body.1`` and ``caLayer.conv_du.0/1``, group conv ``conv``,
      ``body_conv``, ``upsampler.blocks.k``, ``tail_conv``; the same maths at full width.
    """
    b, g = module.n_resblocks, module.n_resgroups
    group_conv = (r"^body\.(\d+)\.conv\.", rf"body.\1.body.{b}.")
    basicsr = [
        (r"^body\.(\d+)\.residual_group\.(\d+)\.rcab\.3\.attention\.1\.", r"body.\1.body.\2.body.3.conv_du.0."),
        (r"^body\.(\d+)\.residual_group\.(\d+)\.rcab\.3\.attention\.3\.", r"body.\1.body.\2.body.3.conv_du.2."),
        (r"^body\.(\d+)\.residual_group\.(\d+)\.rcab\.", r"body.\1.body.\2.body."),
        group_conv,
    ]
    rcab = r"^body\.(\d+)\.body\.(\d+)\."
    csd = [
        (rcab + r"body\.1\.", r"body.\1.body.\2.body.2."),
        (rcab + r"caLayer\.conv_du\.0\.", r"body.\1.body.\2.body.3.conv_du.0."),
        (rcab + r"caLayer\.conv_du\.1\.", r"body.\1.body.\2.body.3.conv_du.2."),
        group_conv,
    ]
    return convert(module, state, [basicsr_layout(g, basicsr), csd_layout("head_conv", g, csd)])


def rcan(
    scale: int,
    n_resgroups: Count = 10,
    n_resblocks: Count = 20,
    n_feats: Channels = 64,
    reduction: Count = 16,
    res_scale: Positive = 1.0,
    rgb_range: Positive = 255.0,
    n_colors: Count = 3,
    rgb_mean: tuple[float, ...] = DIV2K_MEAN,
    trainable_mean: bool = True,
) -> RCAN:
    """RCAN (Zhang et al. 2018): 10 residual groups x 20 channel-attention blocks, 64 channels; x2/x3/x4/x8."""
    return RCAN(scale, n_resgroups, n_resblocks, n_feats, reduction, res_scale, rgb_range, n_colors, rgb_mean, trainable_mean)


def register_backbones(register) -> None:  # noqa: ANN001 - kdsr's register callable
    register("rcan", rcan, load_official=load_official)
