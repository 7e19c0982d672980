"""Builtin student constructor: an independent network from the backbone registry."""

from __future__ import annotations

from typing import Any

from torch import nn

from kdsr.branches import Branch
from kdsr.hookspecs import hookimpl


def independent(
    teacher: nn.Module | None, scale: int, backbone: str, options: dict[str, Any] | None = None, name: str = "student"
) -> dict[str, Branch]:
    """An independent student network (any registered backbone, e.g. a thinner or shallower one)."""
    from kdsr.plugins import registry

    model = registry("backbone").create(backbone, options, where="student.options", scale=scale)
    return {name: Branch(model)}


@hookimpl
def register_students(register) -> None:
    register("independent", independent)
