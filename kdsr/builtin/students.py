"""Builtin student constructor: an independent network from the backbone registry."""

from __future__ import annotations

from typing import Any

from torch import nn

from kdsr.branches import Branch
from kdsr.hookspecs import hookimpl


def independent(
    teacher: nn.Module | None, scale: int, backbone: str, options: dict[str, Any] | None = None, name: str = "student"
) -> dict[str, Branch]:
    """An independent student network (any registered backbone, e.g. a thinner or shallower one).

    A bad ``backbone`` / ``options`` is reported under the stage it is about (``Registry.create_inner``)."""
    from kdsr.plugins import registry

    return {name: Branch(registry("backbone").create_inner(backbone, options, scale=scale))}


@hookimpl
def register_students(register) -> None:
    register("independent", independent)
