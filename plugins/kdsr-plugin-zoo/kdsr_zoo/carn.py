"""CARN and CARN-M (Ahn et al., "Fast, Accurate, and Lightweight Super-Resolution with Cascading Residual
Network", ECCV 2018).

Re-implemented from the structure of the official code (nmhkahn/CARN-pytorch, ``carn/model/carn.py``,
``carn_m.py``, ``ops.py``) with its module names, so the released checkpoints load. Those checkpoints
(``checkpoint/carn.pth``, ``carn_m.pth``) are multi-scale models holding one upsampler per scale
(``upsample.up2/up3/up4``); ``load_official`` keeps the one for the model's scale when the model is
single-scale (the default), or loads all three into ``multi_scale=True``.

Parameter counts (``parameters()``; the frozen MeanShift convs are buffers, +24 if counted):

* single-scale, this module's default: CARN x2/x3/x4/x8 964,163 / 1,148,803 / 1,111,875 / 1,259,587;
  CARN-M (group 4) 257,027 / 303,427 / 294,147 / 331,267. These are what a model for one scale holds
  (CARN-pytorch issue #47: 1112K CARN and 294K CARN-M at x4, the author explaining the paper's figure).
* ``multi_scale=True``, the paper's figure (all three upsamplers, the same for every scale): CARN
  1,591,939 (paper: 1,592K); CARN-M 414,787 (paper: 412K, i.e. 2.8K less; this structure, which reproduces
  the paper's 32.5G Multi-Adds for CARN-M x4, has 2,755 biases, so the paper's figure may leave biases out).

Input and output are in [0, 1], as in the reference (its mean shift adds/subtracts the DIV2K mean unscaled).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kdsr import Channels, Count, KdsrError, Tap
from kdsr_zoo.common import cascade, cascade_taps, fill_mean_shift

DIV2K_MEAN = (0.4488, 0.4371, 0.4040)


class _Shifter(nn.Module):
    """The reference's frozen 1x1 conv, as buffers (``shifter.weight``/``shifter.bias``)."""

    def __init__(self, bias: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("weight", torch.eye(3).view(3, 3, 1, 1))
        self.register_buffer("bias", torch.tensor(list(bias), dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias)


class MeanShift(nn.Module):
    """Subtracts (``sub``) or adds the RGB mean of images in [0, 1]."""

    def __init__(self, mean: Sequence[float], sub: bool) -> None:
        super().__init__()
        self.shifter = _Shifter([-m if sub else m for m in mean])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shifter(x)


class BasicBlock(nn.Module):
    """conv + ReLU (used here as the 1x1 cascading fusions)."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 1) -> None:
        super().__init__()
        # ReLUs are not in-place anywhere: a tap on any submodule must see its own output unchanged.
        self.body = nn.Sequential(nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class ResidualBlock(nn.Module):
    """CARN's residual block: conv-ReLU-conv, add the input, ReLU."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + x)


class EResidualBlock(nn.Module):
    """CARN-M's efficient residual block: grouped conv-ReLU-grouped conv-ReLU-1x1 conv, add, ReLU."""

    def __init__(self, c: int, group: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1, groups=group),
            nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=1, groups=group),
            nn.ReLU(),
            nn.Conv2d(c, c, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + x)


class _UpsampleBlock(nn.Module):
    """(conv to 4C, ReLU, pixel shuffle 2) per factor of two, or conv to 9C, ReLU, shuffle 3."""

    def __init__(self, c: int, scale: int, group: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if scale == 3:
            layers += [nn.Conv2d(c, 9 * c, 3, padding=1, groups=group), nn.ReLU(), nn.PixelShuffle(3)]
        else:
            for _ in range(scale.bit_length() - 1):
                layers += [nn.Conv2d(c, 4 * c, 3, padding=1, groups=group), nn.ReLU(), nn.PixelShuffle(2)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class UpsampleBlock(nn.Module):
    """One upsampler (``up``) or, multi-scale, one per scale (``up2``, ``up3``, ``up4``) of which one runs."""

    def __init__(self, c: int, scale: int, multi_scale: bool, group: int) -> None:
        super().__init__()
        self.scale, self.multi_scale = scale, multi_scale
        if multi_scale:
            self.up2 = _UpsampleBlock(c, 2, group)
            self.up3 = _UpsampleBlock(c, 3, group)
            self.up4 = _UpsampleBlock(c, 4, group)
        else:
            self.up = _UpsampleBlock(c, scale, group)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, f"up{self.scale}" if self.multi_scale else "up")(x)


class Block(nn.Module):
    """Cascading block: three residual blocks, each output concatenated onto the running stack and fused by 1x1.

    CARN-M (``mobile``) runs one efficient residual block (``b1``) three times, sharing its weights.
    """

    def __init__(self, c: int, mobile: bool, group: int) -> None:
        super().__init__()
        self.mobile = mobile
        if mobile:
            self.b1 = EResidualBlock(c, group)
        else:
            self.b1, self.b2, self.b3 = ResidualBlock(c), ResidualBlock(c), ResidualBlock(c)
        self.c1, self.c2, self.c3 = BasicBlock(2 * c, c), BasicBlock(3 * c, c), BasicBlock(4 * c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blocks = (self.b1, self.b1, self.b1) if self.mobile else (self.b1, self.b2, self.b3)
        return cascade(x, blocks, (self.c1, self.c2, self.c3))


class CARN(nn.Module):
    """CARN / CARN-M: entry conv, three cascading blocks with global cascading 1x1 fusions, upsampler, exit conv.

    Input and output are in [0, 1]. There is no global skip: ``body`` and ``upsampler.in`` are one tensor.

    Feature taps (N = batch, C = ``n_feats``, h x w = LR size, s = scale):

    * ``head``: entry conv output, N x C x h x w;
    * ``body.i`` for i in 0, 1, 2: output of cascading stage i, i.e. of the global 1x1 fusion ``c{i+1}``
      that follows block ``b{i+1}`` (the raw block outputs are the submodule paths ``b1``, ``b2``, ``b3``),
      N x C x h x w;
    * ``body``: output of the last stage, N x C x h x w (the same tensor as ``body.2``);
    * ``upsampler.in``: upsampler input, N x C x h x w (the same tensor again);
    * ``sr``: the SR output in [0, 1], N x 3 x sh x sw.
    """

    def __init__(self, scale: int, mobile: bool, n_feats: int = 64, group: int = 1, multi_scale: bool = False) -> None:
        super().__init__()
        allowed = (2, 3, 4) if multi_scale else (2, 3, 4, 8)
        if scale not in allowed:
            kind = "multi-scale " if multi_scale else ""
            raise KdsrError(f"{kind}CARN supports scale {', '.join(map(str, allowed))}; got scale {scale}")
        if n_feats % group:
            raise KdsrError(f"CARN: n_feats ({n_feats}) must be divisible by group ({group})")
        c = n_feats
        self.scale, self.multi_scale, self.mobile = scale, multi_scale, mobile
        self.sub_mean = MeanShift(DIV2K_MEAN, sub=True)
        self.add_mean = MeanShift(DIV2K_MEAN, sub=False)
        self.entry = nn.Conv2d(3, c, 3, padding=1)
        self.b1, self.b2, self.b3 = (Block(c, mobile, group) for _ in range(3))
        self.c1, self.c2, self.c3 = BasicBlock(2 * c, c), BasicBlock(3 * c, c), BasicBlock(4 * c, c)
        self.upsample = UpsampleBlock(c, scale, multi_scale, group)
        self.exit = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.entry(self.sub_mean(x))
        x = cascade(x, (self.b1, self.b2, self.b3), (self.c1, self.c2, self.c3))
        return self.add_mean(self.exit(self.upsample(x)))

    def feature_taps(self) -> dict[str, Tap]:
        return cascade_taps(self, self.entry, (self.c1, self.c2, self.c3), self.upsample)


# Keys only one CARN variant's files hold, to name the right backbone when a file is loaded into another.
_VARIANT_MARKERS = {
    "carn": "b1.b2.body.0.weight",  # three distinct residual blocks per cascading block
    "carn_m": "b1.b1.body.4.weight",  # one shared efficient residual block, ending in a 1x1 conv
    "csd_carn": "b1.b1.conv1.weight",  # CSD's re-implementation (ResidualBlock conv1/conv2)
}


def check_variant(name: str, state: dict[str, torch.Tensor]) -> None:
    """A file of another CARN variant is a one-line error naming the backbone that loads it
    (e.g. CARN-M weights given to ``carn``: use ``carn_m``), not a list of mismatching keys."""
    found = [v for v, key in _VARIANT_MARKERS.items() if key in state]
    if found and name not in found:
        raise KdsrError(f"these are {found[0]} weights, not {name} weights; use backbone '{found[0]}'")


def load_official(module: CARN, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CARN-pytorch checkpoint -> this module: a multi-scale file's ``upsample.up{scale}`` becomes
    ``upsample.up`` of a single-scale model (the other scales' upsamplers are dropped on purpose).
    A file of another CARN variant (CARN / CARN-M / CSD's CARN) is refused naming the right backbone."""
    check_variant("carn_m" if module.mobile else "carn", state)
    state = dict(state)
    prefix = f"upsample.up{module.scale}."
    if not module.multi_scale and any(k.startswith(prefix) for k in state):
        state = {
            k.replace(prefix, "upsample.up.", 1): v
            for k, v in state.items()
            if k.startswith(prefix) or not k.startswith("upsample.up")
        }
    return fill_mean_shift(module, state)


def carn(scale: int, n_feats: Channels = 64, multi_scale: bool = False) -> CARN:
    """CARN (Ahn et al. 2018): 3 cascading blocks of 3 residual blocks, 64 channels; x2/x3/x4/x8."""
    return CARN(scale, mobile=False, n_feats=n_feats, group=1, multi_scale=multi_scale)


def carn_m(scale: int, n_feats: Channels = 64, group: Count = 4, multi_scale: bool = False) -> CARN:
    """CARN-M (Ahn et al. 2018): mobile CARN with shared grouped efficient residual blocks; x2/x3/x4/x8."""
    return CARN(scale, mobile=True, n_feats=n_feats, group=group, multi_scale=multi_scale)


def register_backbones(register) -> None:  # noqa: ANN001 - kdsr's register callable
    register("carn", carn, load_official=load_official)
    register("carn_m", carn_m, load_official=load_official)
