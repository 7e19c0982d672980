"""Builtin student constructor: an independent network from the backbone registry."""

from __future__ import annotations

from typing import Any

from torch import nn

from kdsr.branches import Branch
from kdsr.errors import KdsrError, PluginError
from kdsr.hookspecs import hookimpl


def independent(
    teacher: nn.Module | None, scale: int, backbone: str, options: dict[str, Any] | None = None, name: str = "student"
) -> dict[str, Branch]:
    """An independent student network (any registered backbone, e.g. a thinner or shallower one).

    A bad ``backbone`` / ``options`` is raised as ``ValueError`` with its path inside the student's
    options, so the engine reports it under the stage it is about (``stages[i].student.options: ...``)."""
    from kdsr.plugins import registry

    try:
        registry("backbone").get(backbone, where="backbone")
        model = registry("backbone").create(backbone, options, where="options", scale=scale)
    except PluginError:
        raise  # a bug in the backbone's plugin, which the message names; nothing in the config to fix
    except KdsrError as exc:
        raise ValueError(str(exc)) from None
    return {name: Branch(model)}


@hookimpl
def register_students(register) -> None:
    register("independent", independent)
