"""Builtin HR -> LR degradations."""

from __future__ import annotations

from kdsr.data import bicubic_downscale
from kdsr.data.pairs import Degrade
from kdsr.hookspecs import Register, hookimpl


def bicubic() -> Degrade:
    """MATLAB imresize bicubic with antialiasing: the LR of DIV2K and the SR benchmarks."""
    return bicubic_downscale


@hookimpl
def register_degradations(register: Register) -> None:
    register("bicubic", bicubic)
