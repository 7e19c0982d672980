"""Branches (what a run trains or distils from) and feature taps (what losses look at).

A branch is a network plus the keyword arguments of its forward call: an independent student is
``Branch(model)``; a width of a weight-shared network is ``Branch(net, {"width": 0.25})``. Taps
are forward hooks installed only for the forward pass that needs them and removed right after.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from kdsr.errors import KdsrError, did_you_mean


@dataclass
class Branch:
    """A network and how to call it. ``trainable=False`` marks a frozen teacher."""

    model: nn.Module
    kwargs: dict[str, Any] = field(default_factory=dict)
    trainable: bool = True

    def __call__(self, lr: torch.Tensor) -> torch.Tensor:
        return self.model(lr, **self.kwargs)


@dataclass(frozen=True)
class Tap:
    """A named feature: the output (or input) of one submodule."""

    module: nn.Module
    kind: Literal["output", "input"] = "output"


def feature_taps(model: nn.Module) -> dict[str, Tap]:
    """The taps a backbone declares (``model.feature_taps()``), or none."""
    fn = getattr(model, "feature_taps", None)
    return dict(fn()) if callable(fn) else {}


def resolve_tap(model: nn.Module, name: str) -> Tap:
    """A declared tap by name, else any submodule path (``body.3``) as an output tap."""
    declared = feature_taps(model)
    if name in declared:
        return declared[name]
    try:
        return Tap(model.get_submodule(name))
    except AttributeError:
        raise KdsrError(
            f"{type(model).__name__} has no feature tap '{name}'{did_you_mean(name, declared)}; "
            f"declared taps: {', '.join(declared) or 'none'} (any submodule path also works)"
        ) from None


_TAPPED: weakref.WeakKeyDictionary[nn.Module, int] = weakref.WeakKeyDictionary()


def is_tapped(module: nn.Module) -> bool:
    """Whether a running ``capture`` records this module: lets a network skip work nobody reads
    (e.g. training-only intermediate heads)."""
    return _TAPPED.get(module, 0) > 0


@contextlib.contextmanager
def capture(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Record the named taps during the forward passes run inside the block.

    A module called several times keeps its last call's value.
    """
    store: dict[str, torch.Tensor] = {}
    handles, modules = [], []
    try:
        for name in dict.fromkeys(names):
            tap = resolve_tap(model, name)
            if tap.kind == "output":
                handles.append(tap.module.register_forward_hook(_saver(store, name, output=True)))
            else:
                handles.append(tap.module.register_forward_pre_hook(_saver(store, name, output=False)))
            _TAPPED[tap.module] = _TAPPED.get(tap.module, 0) + 1
            modules.append(tap.module)
        yield store
    finally:
        for h in handles:
            h.remove()
        for m in modules:
            _TAPPED[m] -= 1


def _saver(store: dict[str, torch.Tensor], name: str, output: bool):
    def hook(module, args, out=None):  # noqa: ANN001 - torch hook signature
        value = out if output else args[0]
        store[name] = value[0] if isinstance(value, (tuple, list)) else value

    if output:
        return hook
    return lambda module, args: hook(module, args)


def unique_modules(branches: dict[str, Branch], trainable: bool = True) -> dict[str, nn.Module]:
    """Distinct networks behind the branches, named after the first branch that uses each."""
    seen: dict[int, str] = {}
    out: dict[str, nn.Module] = {}
    for name, branch in branches.items():
        if branch.trainable != trainable or id(branch.model) in seen:
            continue
        seen[id(branch.model)] = name
        out[name] = branch.model
    return out
