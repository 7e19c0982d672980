"""RCAN (Zhang et al., "Image Super-Resolution Using Very Deep Residual Channel Attention Networks", ECCV 2018).

Re-implemented from the structure of the official code (yulunzhang/RCAN, ``RCAN_TestCode/code/model/rcan.py``,
which EDSR-PyTorch's ``src/model/rcan.py`` mirrors); submodules carry its names, so the released
``RCAN_BIX{2,3,4,8}.pt`` files load as they are. ``load_official`` also converts BasicSR's ``RCAN`` layout
(``conv_first``, ``body.g.residual_group.b.rcab``, ``attention``...).

Parameter count: RCAN x4 = 15,592,379, the official code's count. That count includes the 24 values of the
two MeanShift 1x1 convs: the official ``MeanShift`` sets ``requires_grad`` on the module instead of on its
parameters, so they stay trainable (and were trained). ``trainable_mean=True`` (default) keeps that; with
``False`` they are frozen buffers, as in EDSR-PyTorch's copy of RCAN (15,592,355). The state-dict keys are
the same either way.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kdsr import KdsrError, Tap

DIV2K_MEAN = (0.4488, 0.4371, 0.4040)  # RGB mean of DIV2K 1-800 (DIV2K+Flickr2K: 0.4690, 0.4490, 0.4036)


def _conv(c_in: int, c_out: int, kernel: int = 3) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2)


def _check_scale(scale: int) -> None:
    if not (scale == 3 or (scale >= 2 and scale & (scale - 1) == 0)):
        raise KdsrError(f"RCAN supports scale 2, 3, 4 or 8 (powers of two and 3); got scale {scale}")


class MeanShift(nn.Module):
    """Adds ``sign * rgb_range * mean`` per channel with a 1x1 conv (reference keys ``weight``/``bias``).

    ``trainable`` makes them parameters, as the official RCAN code effectively does; otherwise buffers.
    """

    def __init__(self, rgb_range: float, rgb_mean: Sequence[float], sign: int, trainable: bool) -> None:
        super().__init__()
        n = len(rgb_mean)
        weight = torch.eye(n).view(n, n, 1, 1)
        bias = sign * rgb_range * torch.tensor(list(rgb_mean), dtype=torch.float32)
        if trainable:
            self.weight, self.bias = nn.Parameter(weight), nn.Parameter(bias)
        else:
            self.register_buffer("weight", weight)
            self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias)


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
        self.body = nn.Sequential(_conv(n_feats, n_feats), nn.ReLU(), _conv(n_feats, n_feats), CALayer(n_feats, reduction))
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) * self.res_scale


class ResidualGroup(nn.Module):
    """``n_resblocks`` RCABs and a conv, with a skip over the whole group."""

    def __init__(self, n_feats: int, reduction: int, res_scale: float, n_resblocks: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *[RCAB(n_feats, reduction, res_scale) for _ in range(n_resblocks)], _conv(n_feats, n_feats)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Upsampler(nn.Sequential):
    """Sub-pixel upsampler: (conv to 4C, pixel shuffle 2) per factor of two, or conv to 9C + shuffle 3."""

    def __init__(self, scale: int, n_feats: int) -> None:
        layers: list[nn.Module] = []
        if scale == 3:
            layers += [_conv(n_feats, 9 * n_feats), nn.PixelShuffle(3)]
        else:
            for _ in range(scale.bit_length() - 1):
                layers += [_conv(n_feats, 4 * n_feats), nn.PixelShuffle(2)]
        super().__init__(*layers)


class RCAN(nn.Module):
    """RCAN: head conv, ``n_resgroups`` residual groups of RCABs + conv with a global skip, sub-pixel tail.

    Input and output are in [0, 1]; inside, images are scaled to ``rgb_range`` (255 for the official
    weights) and the mean is subtracted/added by ``sub_mean``/``add_mean``, as in the reference.

    Feature taps (N = batch, C = ``n_feats``, h x w = LR size, s = scale):

    * ``head``: head conv output, N x C x h x w;
    * ``body.i`` for i < ``n_resgroups``: output of residual group i, N x C x h x w;
    * ``body``: body output (after its last conv) before the global skip add, N x C x h x w;
    * ``upsampler.in``: upsampler input (body + head), N x C x h x w;
    * ``sr``: the SR output in [0, 1], N x 3 x sh x sw.

    Single blocks are reachable by submodule path, e.g. ``body.3.body.7`` (RCAB 7 of group 3).
    """

    def __init__(
        self,
        scale: int,
        n_resgroups: int = 10,
        n_resblocks: int = 20,
        n_feats: int = 64,
        reduction: int = 16,
        res_scale: float = 1.0,
        rgb_range: float = 255.0,
        n_colors: int = 3,
        rgb_mean: Sequence[float] = DIV2K_MEAN,
        trainable_mean: bool = True,
    ) -> None:
        super().__init__()
        _check_scale(scale)
        if len(rgb_mean) != n_colors:
            raise KdsrError(f"RCAN: rgb_mean has {len(rgb_mean)} values but n_colors is {n_colors}; give one per channel")
        if n_feats < reduction:
            raise KdsrError(f"RCAN: n_feats ({n_feats}) must be at least reduction ({reduction}) for channel attention")
        self.scale, self.n_resgroups, self.n_resblocks, self.rgb_range = scale, n_resgroups, n_resblocks, rgb_range
        self.sub_mean = MeanShift(rgb_range, rgb_mean, -1, trainable_mean)
        self.add_mean = MeanShift(rgb_range, rgb_mean, 1, trainable_mean)
        self.head = nn.Sequential(_conv(n_colors, n_feats))
        self.body = nn.Sequential(
            *[ResidualGroup(n_feats, reduction, res_scale, n_resblocks) for _ in range(n_resgroups)],
            _conv(n_feats, n_feats),
        )
        self.tail = nn.Sequential(Upsampler(scale, n_feats), _conv(n_feats, n_colors))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.sub_mean(x * self.rgb_range))
        x = self.tail(self.body(x) + x)  # out-of-place: the ``body`` tap keeps the pre-skip value
        return self.add_mean(x) / self.rgb_range

    def feature_taps(self) -> dict[str, Tap]:
        taps = {"head": Tap(self.head)}
        taps.update({f"body.{i}": Tap(self.body[i]) for i in range(self.n_resgroups)})
        taps["body"] = Tap(self.body)
        taps["upsampler.in"] = Tap(self.tail[0], kind="input")
        taps["sr"] = Tap(self)
        return taps


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


def load_official(module: RCAN, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official RCAN / EDSR-PyTorch ``.pt`` (same names as this module) or BasicSR ``RCAN`` -> this layout.

    BasicSR normalises with ``(x - mean) * img_range`` and keeps the mean out of its state dict; that equals
    this module's mean shift at its defaults (``rgb_range`` 255, DIV2K mean), which are filled in.
    """
    state = dict(state)
    if "conv_first.weight" in state:  # BasicSR
        b, g = module.n_resblocks, module.n_resgroups
        rules = [
            (r"^conv_first\.", "head.0."),
            (r"^body\.(\d+)\.residual_group\.(\d+)\.rcab\.3\.attention\.1\.", r"body.\1.body.\2.body.3.conv_du.0."),
            (r"^body\.(\d+)\.residual_group\.(\d+)\.rcab\.3\.attention\.3\.", r"body.\1.body.\2.body.3.conv_du.2."),
            (r"^body\.(\d+)\.residual_group\.(\d+)\.rcab\.", r"body.\1.body.\2.body."),
            (r"^body\.(\d+)\.conv\.", rf"body.\1.body.{b}."),
            (r"^conv_after_body\.", f"body.{g}."),
            (r"^upsample\.", "tail.0."),
            (r"^conv_last\.", "tail.1."),
        ]
        state = _rename(state, rules)
    own = module.state_dict()
    for key in own:  # layouts without mean-shift tensors use the module's own
        if key.startswith(("sub_mean.", "add_mean.")) and key not in state:
            state[key] = own[key].detach().clone()
    return state


def rcan(
    scale: int,
    n_resgroups: int = 10,
    n_resblocks: int = 20,
    n_feats: int = 64,
    reduction: int = 16,
    res_scale: float = 1.0,
    rgb_range: float = 255.0,
    n_colors: int = 3,
    rgb_mean: tuple[float, ...] = DIV2K_MEAN,
    trainable_mean: bool = True,
) -> RCAN:
    """RCAN (Zhang et al. 2018): 10 residual groups x 20 channel-attention blocks, 64 channels; x2/x3/x4/x8."""
    return RCAN(scale, n_resgroups, n_resblocks, n_feats, reduction, res_scale, rgb_range, n_colors, rgb_mean, trainable_mean)


def register_backbones(register) -> None:  # noqa: ANN001 - kdsr's register callable
    register("rcan", rcan, load_official=load_official)
