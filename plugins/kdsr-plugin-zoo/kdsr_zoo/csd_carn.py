"""CSD's CARN (Wang et al., "Towards Compact Single Image Super-Resolution via Contrastive
Self-distillation", IJCAI 2021): the CARN that CSD's CARN results were trained and measured on.

Re-implemented from ``Booooooooooo/CSD``, ``PyTorch version/model/carn.py`` (classes ``CARN``, ``Block``,
``BasicBlock``) and ``model/common.py`` (``ResidualBlock``, ``Upsampler``, ``MeanShift``). It is not
nmhkahn's CARN (the zoo's ``carn``), and differs from it in three ways that change every output:

* a residual block is ``x + conv(relu(conv(x)))``, with no ReLU after the add;
* the upsampler is conv + pixel shuffle without ReLU (CSD's ``common.Upsampler``);
* the mean shift works in the 0..``rgb_range`` range (255), like EDSR's, instead of on [0, 1].

The cascades, the 1x1 fusions with ReLU (``BasicBlock``) and the module names are the same as CSD's, so a
bare CSD CARN state dict loads through ``load_official`` (only ``upsample.blocks.k`` is renamed). As a
CSSR-Net (``cssr`` over ``csd_carn``) the official slicing is ``concat_slicing: prefix``: CSD's
``SlimModule`` slices a fusion conv's input to the leading ``int(k * C * w)`` channels of the
concatenation (methods.md 1.1).

Scales 2, 3, 4: CSD's upsampler builds ``scale // 2`` conv+shuffle(2) stages, which is x2 and x4 but not x8.
"""

from __future__ import annotations

import torch
from torch import nn

from kdsr import Channels, Positive, Tap
from kdsr_zoo.carn import check_variant
from kdsr_zoo.common import DIV2K_MEAN, MeanShift, Upsampler, cascade, cascade_taps, check_scale, conv, convert, csd_upsampler_rule

__all__ = ["CSDCARN", "csd_carn", "load_official"]


class ResidualBlock(nn.Module):
    """CSD's ``common.ResidualBlock`` at ``res_scale`` 1: ``x + conv2(relu(conv1(x)))``."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.act, self.conv2 = conv(c, c), nn.ReLU(), conv(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.act(self.conv1(x)))


class BasicBlock(nn.Module):
    """1x1 fusion conv + ReLU (CSD's ``carn.BasicBlock`` as CARN uses it)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv, self.act = conv(c_in, c_out, 1), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class Block(nn.Module):
    """Cascading block: three residual blocks, each output concatenated onto the stack and fused by 1x1."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.b1, self.b2, self.b3 = ResidualBlock(c), ResidualBlock(c), ResidualBlock(c)
        self.c1, self.c2, self.c3 = BasicBlock(2 * c, c), BasicBlock(3 * c, c), BasicBlock(4 * c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cascade(x, (self.b1, self.b2, self.b3), (self.c1, self.c2, self.c3))


class CSDCARN(nn.Module):
    """CSD's CARN: entry conv, three cascading blocks with global 1x1 fusions, upsampler, exit conv.

    Input and output are in [0, 1]; inside, images are scaled to ``rgb_range`` and the DIV2K mean is
    subtracted/added there, as CSD does. No global skip: ``body`` and ``upsampler.in`` are one tensor.

    Feature taps (N = batch, C = ``n_feats``, h x w = LR size, s = scale), as for ``carn``:

    * ``head``: entry conv output, N x C x h x w;
    * ``body.i`` for i in 0, 1, 2: output of the global fusion ``c{i+1}`` after block ``b{i+1}``, N x C x h x w;
    * ``body``: output of the last stage (the same tensor as ``body.2``), N x C x h x w;
    * ``upsampler.in``: upsampler input (the same tensor again), N x C x h x w;
    * ``sr``: the SR output in [0, 1], N x 3 x sh x sw.
    """

    def __init__(self, scale: int, n_feats: int = 64, rgb_range: float = 255.0) -> None:
        super().__init__()
        check_scale("csd_carn", scale, (2, 3, 4))
        c = n_feats
        self.scale, self.rgb_range = scale, rgb_range
        self.sub_mean = MeanShift(rgb_range, DIV2K_MEAN, sign=-1)
        self.add_mean = MeanShift(rgb_range, DIV2K_MEAN, sign=1)
        self.entry = conv(3, c)
        self.b1, self.b2, self.b3 = Block(c), Block(c), Block(c)
        self.c1, self.c2, self.c3 = BasicBlock(2 * c, c), BasicBlock(3 * c, c), BasicBlock(4 * c, c)
        self.upsample = Upsampler(scale, c)
        self.exit = conv(c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.entry(self.sub_mean(x, pre=self.rgb_range))
        x = cascade(x, (self.b1, self.b2, self.b3), (self.c1, self.c2, self.c3))
        return self.add_mean(self.exit(self.upsample(x)), post=1.0 / self.rgb_range)

    def feature_taps(self) -> dict[str, Tap]:
        return cascade_taps(self, self.entry, (self.c1, self.c2, self.c3), self.upsample)


def load_official(module: CSDCARN, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CSD's CARN state dict (bare, or unwrapped from its trainer's ``model_state_dict``) -> this module:
    ``upsample.blocks.k`` becomes ``upsample.{2k}``; every other name is CSD's own. A CARN-pytorch
    file (``carn``, ``carn_m``) is refused naming its backbone."""
    check_variant("csd_carn", state)
    return convert(module, state, [("upsample.blocks.0.weight", [csd_upsampler_rule("upsample", "upsample")])])


def csd_carn(scale: int, n_feats: Channels = 64, rgb_range: Positive = 255.0) -> CSDCARN:
    """CSD's own CARN (Wang et al. 2021, Booooooooooo/CSD), 64 channels; x2/x3/x4.

    Unlike ``carn`` (nmhkahn's): no ReLU after residual adds or in the upsampler, mean shift in 0..255.
    """
    return CSDCARN(scale, n_feats, rgb_range)


def register_backbones(register) -> None:  # noqa: ANN001 - kdsr's register callable
    register("csd_carn", csd_carn, load_official=load_official)
