"""Builtin metrics: PSNR and SSIM on the BT.601 Y channel with a ``scale``-pixel shave (methods.md §6)."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from kdsr import metrics
from kdsr.errors import KdsrError
from kdsr.hookspecs import Register, hookimpl

Metric = Callable[[Tensor, Tensor, int], float]


def psnr(y_channel: bool = True, shave: int | None = None) -> Metric:
    """PSNR in dB on the BT.601 Y channel, shaving `scale` border pixels (the SR benchmark protocol)."""
    _check_shave(shave)

    def metric(sr: Tensor, hr: Tensor, scale: int) -> float:
        return metrics.psnr(sr, hr, scale if shave is None else shave, y_channel)

    return metric


def ssim(y_channel: bool = True, shave: int | None = None) -> Metric:
    """SSIM (11x11 Gaussian window, sigma 1.5) on the BT.601 Y channel, shaving `scale` border pixels."""
    _check_shave(shave)

    def metric(sr: Tensor, hr: Tensor, scale: int) -> float:
        return metrics.ssim(sr, hr, scale if shave is None else shave, y_channel)

    return metric


def _check_shave(shave: int | None) -> None:
    if shave is not None and shave < 0:
        raise KdsrError(f"metric option shave must be >= 0 (or unset to shave `scale` pixels), got {shave}")


@hookimpl
def register_metrics(register: Register) -> None:
    register("psnr", psnr)
    register("ssim", ssim)
