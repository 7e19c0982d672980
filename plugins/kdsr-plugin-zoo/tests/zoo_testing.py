"""Helpers shared by the zoo's tests: the registry as the plugin fills it, counts, weight round trips."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import kdsr_zoo
from kdsr.weights import load_weights, save_weights


@dataclass
class Registered:
    name: str
    factory: Callable[..., nn.Module]
    load_official: Callable[[nn.Module, dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None


def zoo_backbones() -> dict[str, Registered]:
    """Everything ``kdsr_zoo.register_backbones`` registers, by name (the hook called directly)."""
    found: dict[str, Registered] = {}

    def register(name: str, factory: Callable[..., nn.Module], load_official: Any = None, **_: Any) -> None:
        assert name not in found, f"backbone '{name}' registered twice"
        found[name] = Registered(name, factory, load_official)

    kdsr_zoo.register_backbones(register=register)
    return found


def n_params(factory: Callable[..., nn.Module], scale: int, **options: Any) -> int:
    """Parameter count without allocating or initialising weights (meta device)."""
    with torch.device("meta"):
        model = factory(scale, **options)
    return sum(p.numel() for p in model.parameters())


def random_state(shapes: Mapping[str, tuple[int, ...]], seed: int = 0, std: float = 0.05) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * std for k, s in shapes.items()}


def conv_shapes(prefix: str, c_in: int, c_out: int, k: int = 3, groups: int = 1) -> dict[str, tuple[int, ...]]:
    """Weight and bias shapes of one ``nn.Conv2d`` under ``prefix``."""
    return {f"{prefix}.weight": (c_out, c_in // groups, k, k), f"{prefix}.bias": (c_out,)}


def load_via_file(model: nn.Module, state: Mapping[str, torch.Tensor], tmp_path: Path, convert=None, name: str = "w") -> None:
    """Write ``state`` as safetensors and load it the way ``kdsr`` does (strict, converter if keys differ)."""
    path = tmp_path / f"{name}.safetensors"
    save_weights(dict(state), path)
    load_weights(model, path, convert=convert)


def conv(sd: Mapping[str, torch.Tensor], key: str, x: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """Apply the conv stored under ``key`` in a reference-layout state dict ('same' padding)."""
    w = sd[f"{key}.weight"]
    return F.conv2d(x, w, sd[f"{key}.bias"], padding=w.shape[-1] // 2, groups=groups)
