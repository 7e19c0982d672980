"""Builtin HR -> LR degradations."""

from __future__ import annotations

from kdsr.data import bicubic_degrade, bicubic_downscale
from kdsr.data.pairs import Degrade
from kdsr.hookspecs import Register, hookimpl


def bicubic(uint8: bool = True) -> Degrade:
    """MATLAB imresize bicubic with antialiasing: the LR of DIV2K and the SR benchmarks.

    ``uint8`` (default): as MATLAB on the 8-bit HR, rounded after each axis, so the LR equals MATLAB's byte
    for byte; false: one float resize, rounded once (1-2 levels off on 10-15% of pixels).
    """
    return bicubic_degrade if uint8 else bicubic_downscale


@hookimpl
def register_degradations(register: Register) -> None:
    register("bicubic", bicubic)
