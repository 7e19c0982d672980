"""IMDN (Hui et al., ACM MM 2019, arXiv:1909.11856) and its real-time variant IMDN_RTC.

Faithful to the reference implementation (Zheng222/IMDN ``model/architecture.py`` and
``model/block.py``): same maths, and IMDN keeps the reference's module names, so its official
checkpoints (``checkpoints/IMDN_x{2,3,4}.pth``) load as they are (a DataParallel ``module.`` prefix
is stripped). IMDN_RTC uses IMDN's names instead of the reference's nested ``model.*`` Sequential;
``load_official`` renames ``checkpoints/model_RTC.pth``. The networks work on RGB in [0, 1] with no
mean shift, as the reference test script feeds them.

IMDN_AS (the reference's "any scale" model) is not registered: it maps a bicubic-upsampled image
to an image of the same size (two stride-2 convs, then x4 pixel shuffle), which does not fit a
backbone's LR -> scale x LR contract.

Activations run out of place (the reference uses in-place LeakyReLU): same results, and a feature
tap on a conv output is never overwritten by the activation that follows it.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from kdsr import Channels, Count, Fraction, KdsrError, Tap

SCALES = (2, 3, 4)  # official IMDN checkpoints: x2, x3, x4 (IMDN_RTC: x2)
NEG_SLOPE = 0.05  # LeakyReLU slope used throughout the reference
CCA_REDUCTION = 16


def conv(in_ch: int, out_ch: int, kernel_size: int) -> nn.Conv2d:
    """A 'same'-padded conv with bias (the reference's ``conv_layer``)."""
    return nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2)


def upsampler(in_ch: int, scale: int) -> nn.Sequential:
    """One conv to 3 * scale^2 channels and a pixel shuffle (the reference's ``pixelshuffle_block``)."""
    return nn.Sequential(conv(in_ch, 3 * scale**2, 3), nn.PixelShuffle(scale))


class CCALayer(nn.Module):
    """Contrast-aware channel attention: gate channels by (std + mean) of each feature map."""

    def __init__(self, channels: int, reduction: int = CCA_REDUCTION) -> None:
        super().__init__()
        self.conv_du = nn.Sequential(
            nn.Conv2d(channels, channels // reduction, 1),
            nn.ReLU(),
            nn.Conv2d(channels // reduction, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(2, 3), keepdim=True)
        std = (x - mean).pow(2).mean(dim=(2, 3), keepdim=True).sqrt()  # population std, as the reference
        return x * self.conv_du(std + mean)


class IMDModule(nn.Module):
    """Information multi-distillation block: three rounds of split-off ("distil") a quarter of the
    channels and refine the rest, concat the distilled parts, fuse with a 1x1 conv and a skip.

    ``attention=False`` gives the reference's ``IMDModule_speed`` (no CCA, 1x1 fusion only), used by
    IMDN_RTC. The fusion conv ``c5`` takes the 4 x distilled concatenated channels; the reference
    writes ``in_channels`` there, the same number for rate 1/4 and widths divisible by 4 (its only
    working settings), so other rates and widths work here instead of failing.
    """

    def __init__(self, channels: int, distillation_rate: float = 0.25, attention: bool = True) -> None:
        super().__init__()
        self.distilled = int(channels * distillation_rate)
        self.remaining = channels - self.distilled
        self.c1 = conv(channels, channels, 3)
        self.c2 = conv(self.remaining, channels, 3)
        self.c3 = conv(self.remaining, channels, 3)
        self.c4 = conv(self.remaining, self.distilled, 3)
        self.act = nn.LeakyReLU(NEG_SLOPE)
        self.c5 = conv(self.distilled * 4, channels, 1)
        self.cca = CCALayer(self.distilled * 4) if attention else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        split = (self.distilled, self.remaining)
        d1, r1 = torch.split(self.act(self.c1(x)), split, dim=1)
        d2, r2 = torch.split(self.act(self.c2(r1)), split, dim=1)
        d3, r3 = torch.split(self.act(self.c3(r2)), split, dim=1)
        out = torch.cat([d1, d2, d3, self.c4(r3)], dim=1)
        if self.cca is not None:
            out = self.cca(out)
        return self.c5(out) + x


class _DistillationNet(nn.Module):
    """What IMDN and IMDN_RTC share: blocks named ``IMDB1`` ... and the shared tap vocabulary."""

    block_names: list[str]
    fea_conv: nn.Conv2d
    LR_conv: nn.Conv2d
    upsampler: nn.Sequential

    @property
    def blocks(self) -> list[IMDModule]:
        return [getattr(self, name) for name in self.block_names]

    def feature_taps(self) -> dict[str, Tap]:
        taps = {"head": Tap(self.fea_conv)}
        taps.update({f"body.{i}": Tap(block) for i, block in enumerate(self.blocks)})
        taps["body"] = Tap(self.LR_conv)
        taps["upsampler.in"] = Tap(self.upsampler, kind="input")
        return taps


class IMDN(_DistillationNet):
    """IMDN: a 3x3 head conv, IMDB modules whose outputs are all concatenated and fused (1x1 conv +
    LeakyReLU, then 3x3 conv), a global skip, and a conv + pixel-shuffle upsampler.

    Feature taps (all N x nf x h x w at the LR size):

    * ``head``: output of ``fea_conv``.
    * ``body.0`` ... ``body.{n-1}``: output of each IMDB module (``IMDB1`` ... ``IMDB{n}``).
    * ``body``: output of ``LR_conv``, the fused deep features before the global skip add.
    * ``upsampler.in``: input of ``upsampler`` (body + head).
    """

    def __init__(self, scale: int, nf: int = 64, num_modules: int = 6, distillation_rate: float = 0.25) -> None:
        super().__init__()
        self.scale = scale
        self.fea_conv = conv(3, nf, 3)
        self.block_names = [f"IMDB{i + 1}" for i in range(num_modules)]  # the reference's attribute names
        for name in self.block_names:
            self.add_module(name, IMDModule(nf, distillation_rate))
        self.c = nn.Sequential(nn.Conv2d(nf * num_modules, nf, 1), nn.LeakyReLU(NEG_SLOPE))
        self.LR_conv = conv(nf, nf, 3)
        self.upsampler = upsampler(nf, scale)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        head = self.fea_conv(lr)
        outs, x = [], head
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        body = self.LR_conv(self.c(torch.cat(outs, dim=1)))
        return self.upsampler(body + head)


class IMDN_RTC(_DistillationNet):  # noqa: N801 - the reference's name
    """IMDN_RTC (winner of the RTC 2019 SR challenge): a head conv, speed-oriented IMDB modules (no
    attention, no concatenation of all block outputs), a 1x1 conv, a global skip, conv + pixel shuffle.

    The reference nests all of this in one ``model`` Sequential (``model.0``, ``model.1.sub.i``,
    ``model.2``); here the parts carry IMDN's names and ``load_official`` renames the keys.

    Feature taps (all N x nf x h x w at the LR size):

    * ``head``: output of ``fea_conv``.
    * ``body.0`` ... ``body.{n-1}``: output of each IMDB module (``IMDB1`` ... ``IMDB{n}``).
    * ``body``: output of ``LR_conv`` (1x1), the deep features before the global skip add.
    * ``upsampler.in``: input of ``upsampler`` (body + head).
    """

    def __init__(self, scale: int, nf: int = 12, num_modules: int = 5) -> None:
        super().__init__()
        self.scale = scale
        self.fea_conv = conv(3, nf, 3)
        self.block_names = [f"IMDB{i + 1}" for i in range(num_modules)]
        for name in self.block_names:
            self.add_module(name, IMDModule(nf, attention=False))
        self.LR_conv = conv(nf, nf, 1)
        self.upsampler = upsampler(nf, scale)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        head = self.fea_conv(lr)
        x = head
        for block in self.blocks:
            x = block(x)
        return self.upsampler(self.LR_conv(x) + head)


def rtc_key(key: str, num_modules: int) -> str:
    """The kdsr name of a reference IMDN_RTC key (``model.0`` / ``model.1.sub.i`` / ``model.2``)."""
    if key.startswith("model.0."):
        return "fea_conv." + key[len("model.0.") :]
    if key.startswith("model.2."):
        return "upsampler.0." + key[len("model.2.") :]
    match = re.fullmatch(r"model\.1\.sub\.(\d+)\.(.+)", key)
    if match:
        i, rest = int(match.group(1)), match.group(2)
        return f"IMDB{i + 1}.{rest}" if i < num_modules else f"LR_conv.{rest}"
    return key


def _check(name: str, scale: int, nf: int, num_modules: int, distillation_rate: float, cca: bool) -> None:
    if scale not in SCALES:
        raise KdsrError(f"backbone '{name}' supports scale {', '.join(map(str, SCALES))}, not {scale}")
    if num_modules < 1:
        raise KdsrError(f"backbone '{name}': num_modules must be at least 1 (got {num_modules})")
    distilled = int(nf * distillation_rate)
    if not 0 < distilled < nf:
        raise KdsrError(
            f"backbone '{name}': nf {nf} x distillation_rate {distillation_rate} must give 1..nf-1 distilled channels"
        )
    if cca and distilled * 4 < CCA_REDUCTION:
        raise KdsrError(
            f"backbone '{name}': nf {nf} is too narrow for the channel attention (needs 4 x distilled >= {CCA_REDUCTION})"
        )


def imdn(scale: int, nf: Channels = 64, num_modules: Count = 6, distillation_rate: Fraction = 0.25) -> IMDN:
    """IMDN lightweight SR (6 IMDB modules, 64 channels, distillation rate 1/4), x2/x3/x4.

    Defaults are the reference's ``architecture.IMDN`` used for the official x2/x3/x4 checkpoints.
    """
    _check("imdn", scale, nf, num_modules, distillation_rate, cca=True)
    return IMDN(scale, nf, num_modules, distillation_rate)


def imdn_rtc(scale: int, nf: Channels = 12, num_modules: Count = 5) -> IMDN_RTC:
    """IMDN_RTC real-time SR (5 attention-free IMDB modules, 12 channels), x2/x3/x4 (official weights: x2).

    Defaults are the reference's ``architecture.IMDN_RTC`` (checkpoint ``model_RTC.pth``, x2).
    """
    _check("imdn_rtc", scale, nf, num_modules, 0.25, cca=False)
    return IMDN_RTC(scale, nf, num_modules)


def load_official(module: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a reference IMDN / IMDN_RTC checkpoint onto kdsr's module.

    IMDN's names are already the reference's; a DataParallel ``module.`` prefix is stripped (the
    reference's loader removes it key by key). IMDN_RTC's nested ``model.*`` names are renamed (see
    ``rtc_key``). A checkpoint for another scale is reported as such.
    """
    out = {k.removeprefix("module."): v for k, v in state.items()}
    if isinstance(module, IMDN_RTC):
        out = {rtc_key(k, len(module.block_names)): v for k, v in out.items()}
    weight = out.get("upsampler.0.weight")
    scale = getattr(module, "scale", None)
    if weight is not None and scale is not None:
        found = math.isqrt(weight.shape[0] // 3)
        if found * found * 3 == weight.shape[0] and found != scale:
            raise KdsrError(
                f"weights do not fit {type(module).__name__} x{scale}: the checkpoint is for another scale, x{found} "
                f"(check `scale`: set it to {found}, or use the x{scale} checkpoint)"
            )
    return out


def register_backbones(register) -> None:  # noqa: ANN001 - kdsr's Register callable
    register("imdn", imdn, load_official=load_official)
    register("imdn_rtc", imdn_rtc, load_official=load_official)
