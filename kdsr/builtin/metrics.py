"""Builtin metrics: PSNR and SSIM (methods.md §6), by default on the BT.601 Y channel shaving ``scale`` pixels.

Options select the common variants: ``y_channel: false`` scores RGB; ``shave`` is a number of pixels,
``scale`` (default, the benchmark protocol) or ``scale+6`` (EDSR's DIV2K validation, used with RGB).
A variant is reported under a label naming its options, e.g. ``psnr[y_channel=false,shave=scale+6]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Literal

from pydantic import Field
from torch import Tensor

from kdsr import metrics
from kdsr.hookspecs import Register, hookimpl

Metric = Callable[[Tensor, Tensor, int], float]
ShaveOption = Annotated[int, Field(ge=0)] | Literal["scale", "scale+6"]


def psnr(y_channel: bool = True, shave: ShaveOption = "scale") -> Metric:
    """PSNR in dB on the BT.601 Y channel (or RGB), shaving `scale` border pixels (or `shave`: pixels, `scale+6`)."""
    metrics.border(shave, 1)  # a bad value fails when the metric is built, not at the first image

    def metric(sr: Tensor, hr: Tensor, scale: int) -> float:
        return metrics.psnr(sr, hr, metrics.border(shave, scale), y_channel)

    return metric


def ssim(y_channel: bool = True, shave: ShaveOption = "scale") -> Metric:
    """SSIM (11x11 Gaussian window, sigma 1.5) on the BT.601 Y channel (or RGB), shaving `scale` border pixels (or `shave`)."""
    metrics.border(shave, 1)

    def metric(sr: Tensor, hr: Tensor, scale: int) -> float:
        return metrics.ssim(sr, hr, metrics.border(shave, scale), y_channel)

    return metric


@hookimpl
def register_metrics(register: Register) -> None:
    register("psnr", psnr)
    register("ssim", ssim)
