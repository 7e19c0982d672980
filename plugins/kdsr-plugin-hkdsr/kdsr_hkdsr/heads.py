"""Intermediate SR heads on a backbone (HKDSR's ``RCAN_ft``, methods.md 4.1).

``HeadedSR`` wraps a zoo backbone (kept as ``self.backbone`` so its parameter names, prefixed with
``backbone.``, stay those of the backbone) and owns one head per tapped body feature. A head is the
official one: a 3x3 conv on the tapped feature, plus the backbone's ``head`` feature (global skip),
an EDSR/RCAN sub-pixel upsampler, a 3x3 conv to RGB, and the backbone's own output mapping
(``add_mean``, divided by ``rgb_range``), so every head emits SR in [0, 1] like the backbone.

The forward returns the backbone's final SR. Each head's output is the output of the submodule
``heads.i``, so losses read intermediate SR outputs as taps (``heads.0``, ``heads.1``). Heads run only
while some tap is recorded on them (a loss asked for them); otherwise (evaluation, profiling,
inference, Multi-Adds tracing) the wrapper costs exactly the backbone, and reports count only its
parameters (``branch_params``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from kdsr import KdsrError, PlainNetwork, Tap, capture, feature_taps, is_tapped

_BODY_TAP = re.compile(r"body\.(\d+)")


def _conv(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, padding=1)


class Upsampler(nn.Sequential):
    """Sub-pixel upsampler of EDSR/RCAN: (conv to 4C, shuffle 2) per factor two, or conv to 9C, shuffle 3."""

    def __init__(self, scale: int, channels: int) -> None:
        if scale == 3:
            layers: list[nn.Module] = [_conv(channels, 9 * channels), nn.PixelShuffle(3)]
        elif scale >= 1 and scale & (scale - 1) == 0:
            layers = [m for _ in range(int(math.log2(scale))) for m in (_conv(channels, 4 * channels), nn.PixelShuffle(2))]
        else:
            raise ValueError(f"HKDSR heads support scale 1, 2, 3, 4 or 8; got {scale}")
        super().__init__(*layers)


class IntermediateHead(nn.Module):
    """conv(feature) + skip -> upsampler -> conv to RGB -> ``to_image`` (the backbone's output mapping)."""

    def __init__(self, channels: int, skip_channels: int, scale: int, colors: int = 3) -> None:
        super().__init__()
        if channels != skip_channels:
            raise ValueError(f"a head's tapped feature has {channels} channels but the 'head' feature {skip_channels}")
        self.pre = _conv(channels, channels)
        self.upsampler = Upsampler(scale, channels)
        self.to_rgb = _conv(channels, colors)

    def forward(self, feature: torch.Tensor, skip: torch.Tensor, to_image: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        return to_image(self.to_rgb(self.upsampler(self.pre(feature) + skip)))


def default_taps(backbone: nn.Module) -> list[str]:
    """Body taps after 30% and 70% of the body's blocks (rounded): groups 3 and 7 of RCAN's 10, as official."""
    n = sum(1 for name in feature_taps(backbone) if _BODY_TAP.fullmatch(name))
    if n == 0:
        raise ValueError(f"{type(backbone).__name__} declares no 'body.i' taps; give the head taps explicitly (heads: [...])")
    picks = [max(0, int(frac * n + 0.5) - 1) for frac in (0.3, 0.7)]
    return [f"body.{i}" for i in dict.fromkeys(picks)]


class HeadedSR(nn.Module):
    """A backbone plus HKDSR intermediate SR heads at named backbone taps."""

    def __init__(
        self,
        backbone: nn.Module,
        scale: int,
        taps: Sequence[str] | None = None,
        backbone_name: str | None = None,
        backbone_options: dict[str, Any] | None = None,
    ) -> None:
        """``backbone_name``/``backbone_options``: the registered backbone and options that built ``backbone``
        (known for a new backbone, not for a copy of a teacher); ``to_plain`` needs them."""
        super().__init__()
        if not hasattr(backbone, "add_mean"):
            raise ValueError(
                f"HKDSR heads need a backbone with an 'add_mean' output mapping (EDSR, RCAN, CARN); "
                f"{type(backbone).__name__} has none"
            )
        declared = feature_taps(backbone)
        taps = list(taps) if taps is not None else default_taps(backbone)
        for name in [*taps, "head"]:
            if name not in declared:
                raise ValueError(f"{type(backbone).__name__} has no tap '{name}'; its taps: {', '.join(declared)}")
        self.backbone = backbone
        self.backbone_name = backbone_name
        self.backbone_options = dict(backbone_options or {})
        self.scale = scale
        self.taps = taps
        self.rgb_range = float(getattr(backbone, "rgb_range", 1.0))
        channels = self._tap_channels([*taps, "head"])
        self.heads = nn.ModuleList(IntermediateHead(channels[t], channels["head"], scale) for t in taps)

    def _tap_channels(self, names: list[str]) -> dict[str, int]:
        """Channel count of each tap: ``out_channels`` of the last conv inside the tapped module (the
        feature a residual block or group emits keeps its last conv's width)."""
        declared = feature_taps(self.backbone)
        channels = {}
        for name in names:
            convs = [m for m in declared[name].module.modules() if isinstance(m, nn.Conv2d)]
            if declared[name].kind != "output" or not convs:
                raise ValueError(f"tap '{name}' is not a module output ending in a convolution; heads cannot attach to it")
            channels[name] = convs[-1].out_channels
        return channels

    def to_image(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's mapping from its output space to an image in [0, 1]."""
        return self.backbone.add_mean(x) / self.rgb_range

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Under a jit trace (fvcore's Multi-Adds count, which hooks every module) only the deployable
        # network counts; otherwise the heads run when a loss tapped them.
        if torch.jit.is_tracing() or not any(is_tapped(h) for h in self.heads):
            return self.backbone(x)
        with capture(self.backbone, [*self.taps, "head"]) as feats:
            sr = self.backbone(x)
        for tap, head in zip(self.taps, self.heads):
            head(feats[tap], feats["head"], self.to_image)
        return sr

    def to_plain(self) -> PlainNetwork:
        """The deployable network: the backbone with its weights, the heads (training only) dropped."""
        if self.backbone_name is None:
            raise KdsrError(
                f"this HKDSR network wraps a copy of the stage's teacher ({type(self.backbone).__name__}), whose registered "
                f"backbone it does not know; load its final weights as that backbone with `weights:` instead"
            )
        state = {k: v.detach().clone() for k, v in self.backbone.state_dict().items()}
        return PlainNetwork(self.backbone_name, dict(self.backbone_options), self.scale, state)

    def branch_params(self) -> int:
        """Parameters used at inference (kdsr's reports): the backbone's; the heads only serve training."""
        return sum(p.numel() for p in self.backbone.parameters())

    def feature_taps(self) -> dict[str, Tap]:
        """The backbone's taps under their own names, ``heads.i`` (intermediate SR outputs) and ``sr``."""
        taps = {n: t for n, t in feature_taps(self.backbone).items() if n != "sr"}
        taps.update({f"heads.{i}": Tap(h) for i, h in enumerate(self.heads)})
        taps["sr"] = Tap(self)
        return taps
