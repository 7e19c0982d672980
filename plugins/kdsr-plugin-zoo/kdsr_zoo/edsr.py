"""EDSR (Lim et al., "Enhanced Deep Residual Networks for Single Image Super-Resolution", CVPRW 2017).

Re-implemented from the structure of the reference code (sanghyun-son/EDSR-PyTorch, ``src/model/edsr.py``
and ``src/model/common.py``); submodules carry the reference names, so its released ``.pt`` files load
as they are. ``load_official`` also converts BasicSR's ``EDSR`` layout (``conv_first``, ``body.N.conv1``...).

Parameter counts (``sum(p.numel() for p in model.parameters())``), equal to the reference's trainable count:
EDSR-baseline x4 1,517,571 and EDSR x4 43,089,923. The reference's MeanShift is a frozen 1x1 conv; here it
holds buffers instead of frozen parameters, so it is in the state dict under the reference keys
(``sub_mean.weight``/``.bias``) but not in ``parameters()`` and never reaches an optimiser (+24 values if
counted).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kdsr import KdsrError, Tap

DIV2K_MEAN = (0.4488, 0.4371, 0.4040)  # RGB mean of DIV2K 1-800, as in the reference


def _conv(c_in: int, c_out: int, kernel: int = 3) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2)


def _check_scale(arch: str, scale: int) -> None:
    """The reference upsampler supports powers of two and 3; anything else is a config error."""
    if not (scale == 3 or (scale >= 2 and scale & (scale - 1) == 0)):
        raise KdsrError(f"{arch} supports scale 2, 3, 4 or 8 (powers of two and 3); got scale {scale}")


class MeanShift(nn.Module):
    """Adds ``sign * rgb_range * mean`` per channel: the reference's frozen 1x1 conv, kept as buffers.

    Buffers named ``weight``/``bias`` keep the reference state-dict keys while staying out of
    ``parameters()`` (the reference freezes them), so parameter counts and optimisers match it.
    """

    def __init__(self, rgb_range: float, rgb_mean: Sequence[float], sign: int) -> None:
        super().__init__()
        n = len(rgb_mean)
        self.register_buffer("weight", torch.eye(n).view(n, n, 1, 1))
        self.register_buffer("bias", sign * rgb_range * torch.tensor(list(rgb_mean), dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias)


class ResBlock(nn.Module):
    """conv-ReLU-conv, scaled by ``res_scale`` and added to the input (no batch norm)."""

    def __init__(self, n_feats: int, res_scale: float) -> None:
        super().__init__()
        # Not in-place: a tap on any submodule (e.g. ``body.0.body.0``) must see its own output unchanged.
        self.body = nn.Sequential(_conv(n_feats, n_feats), nn.ReLU(), _conv(n_feats, n_feats))
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) * self.res_scale


class Upsampler(nn.Sequential):
    """Sub-pixel upsampler: (conv to 4C, pixel shuffle 2) per factor of two, or conv to 9C + shuffle 3."""

    def __init__(self, scale: int, n_feats: int) -> None:
        layers: list[nn.Module] = []
        if scale == 3:
            layers += [_conv(n_feats, 9 * n_feats), nn.PixelShuffle(3)]
        else:
            for _ in range(int(math.log2(scale))):
                layers += [_conv(n_feats, 4 * n_feats), nn.PixelShuffle(2)]
        super().__init__(*layers)


class EDSR(nn.Module):
    """EDSR: head conv, ``n_resblocks`` residual blocks + conv with a global skip, sub-pixel tail.

    Input and output are in [0, 1]; inside, images are scaled to ``rgb_range`` (255 for the official
    weights) and the DIV2K mean is subtracted/added by ``sub_mean``/``add_mean``, as in the reference.

    Feature taps (N = batch, C = ``n_feats``, h x w = LR size, s = scale):

    * ``head``: head conv output, N x C x h x w;
    * ``body.i`` for i < ``n_resblocks``: output of residual block i, N x C x h x w;
    * ``body``: body output (after its last conv) before the global skip add, N x C x h x w;
    * ``upsampler.in``: upsampler input (body + head), N x C x h x w;
    * ``sr``: the SR output in [0, 1], N x 3 x sh x sw.
    """

    def __init__(
        self,
        scale: int,
        n_resblocks: int,
        n_feats: int,
        res_scale: float,
        rgb_range: float = 255.0,
        n_colors: int = 3,
        rgb_mean: Sequence[float] = DIV2K_MEAN,
    ) -> None:
        super().__init__()
        _check_scale("EDSR", scale)
        if len(rgb_mean) != n_colors:
            raise KdsrError(f"EDSR: rgb_mean has {len(rgb_mean)} values but n_colors is {n_colors}; give one per channel")
        self.scale, self.n_resblocks, self.rgb_range = scale, n_resblocks, rgb_range
        self.sub_mean = MeanShift(rgb_range, rgb_mean, sign=-1)
        self.add_mean = MeanShift(rgb_range, rgb_mean, sign=1)
        self.head = nn.Sequential(_conv(n_colors, n_feats))
        self.body = nn.Sequential(
            *[ResBlock(n_feats, res_scale) for _ in range(n_resblocks)], _conv(n_feats, n_feats)
        )
        self.tail = nn.Sequential(Upsampler(scale, n_feats), _conv(n_feats, n_colors))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.sub_mean(x * self.rgb_range))
        x = self.tail(self.body(x) + x)  # out-of-place: the ``body`` tap keeps the pre-skip value
        return self.add_mean(x) / self.rgb_range

    def feature_taps(self) -> dict[str, Tap]:
        taps = {"head": Tap(self.head)}
        taps.update({f"body.{i}": Tap(self.body[i]) for i in range(self.n_resblocks)})
        taps["body"] = Tap(self.body)
        taps["upsampler.in"] = Tap(self.tail[0], kind="input")
        taps["sr"] = Tap(self)
        return taps


# ---------------------------------------------------------------- official checkpoints

def _rename(state: dict[str, torch.Tensor], rules: Sequence[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Apply the first matching ``(regex, replacement)`` rule to each key; unmatched keys stay."""
    out = {}
    for key, value in state.items():
        for pattern, repl in rules:
            new, n = re.subn(pattern, repl, key)
            if n:
                key = new
                break
        out[key] = value
    return out


def _fill_mean_shift(module: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Layouts without mean-shift tensors (BasicSR keeps the mean as a plain attribute) use the module's own."""
    own = module.state_dict()
    for key in own:
        if key.startswith(("sub_mean.", "add_mean.")) and key not in state:
            state[key] = own[key].clone()
    return state


def load_official(module: EDSR, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """EDSR-PyTorch ``.pt`` (same names as this module) or BasicSR ``EDSR`` state dict -> this module's layout.

    BasicSR normalises with ``(x - mean) * img_range`` and keeps the mean out of its state dict; that equals
    this module's mean shift at its default ``rgb_range`` 255 and DIV2K mean, which are filled in.
    """
    if "conv_first.weight" in state:  # BasicSR
        n = module.n_resblocks
        state = _rename(
            state,
            [
                (r"^conv_first\.", "head.0."),
                (r"^body\.(\d+)\.conv1\.", r"body.\1.body.0."),
                (r"^body\.(\d+)\.conv2\.", r"body.\1.body.2."),
                (r"^conv_after_body\.", f"body.{n}."),
                (r"^upsample\.", "tail.0."),
                (r"^conv_last\.", "tail.1."),
            ],
        )
    return _fill_mean_shift(module, dict(state))


# ---------------------------------------------------------------- registered variants

def edsr(
    scale: int,
    n_resblocks: int = 32,
    n_feats: int = 256,
    res_scale: float = 0.1,
    rgb_range: float = 255.0,
    n_colors: int = 3,
    rgb_mean: tuple[float, ...] = DIV2K_MEAN,
) -> EDSR:
    """EDSR (Lim et al. 2017), full model: 32 residual blocks x 256 channels, residual scaling 0.1; x2/x3/x4/x8."""
    return EDSR(scale, n_resblocks, n_feats, res_scale, rgb_range, n_colors, rgb_mean)


def edsr_baseline(
    scale: int,
    n_resblocks: int = 16,
    n_feats: int = 64,
    res_scale: float = 1.0,
    rgb_range: float = 255.0,
    n_colors: int = 3,
    rgb_mean: tuple[float, ...] = DIV2K_MEAN,
) -> EDSR:
    """EDSR-baseline (Lim et al. 2017): 16 residual blocks x 64 channels, no residual scaling; x2/x3/x4/x8."""
    return EDSR(scale, n_resblocks, n_feats, res_scale, rgb_range, n_colors, rgb_mean)


def register_backbones(register) -> None:  # noqa: ANN001 - kdsr's register callable
    register("edsr", edsr, load_official=load_official)
    register("edsr_baseline", edsr_baseline, load_official=load_official)
