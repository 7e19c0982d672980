"""Helpers for the CSD plugin's tests: independent narrow networks built from weight slices."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from kdsr.plugins import registry

Index = Callable[[str, torch.Tensor, torch.Size], torch.Tensor]


def prefix_slice(key: str, full: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The leading slice of ``full`` with ``shape``: what CSD's prefix slicing uses."""
    return full[tuple(slice(0, s) for s in shape)]


def narrow_copy(net: nn.Module, backbone: str, options: dict, scale: int, index: Index = prefix_slice) -> nn.Module:
    """An independent zoo network built with ``options`` whose every tensor is cut out of ``net``'s."""
    small = registry("backbone").create(backbone, options, scale=scale).to(torch.float64)
    full = net.state_dict()
    small.load_state_dict({k: index(k, full[k], v.shape).clone() for k, v in small.state_dict().items()})
    return small


class TinyFeatures(nn.Module):
    """A 5-level conv feature pyramid standing in for VGG-19 (same contract: images -> 5 feature maps)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        chans = [3, 4, 5, 6, 7, 8]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(chans, chans[1:]))
        for c in self.convs:
            c.weight.data = torch.randn(c.weight.shape, generator=g, dtype=torch.float64) * 0.01
            c.bias.data = torch.zeros(c.bias.shape, dtype=torch.float64)
        self.requires_grad_(False)
        self.calls: list[int] = []  # batch size of every call

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.calls.append(x.shape[0])
        out = []
        for i, conv in enumerate(self.convs):
            x = torch.relu(conv(x))
            out.append(x)
            if i < 3:
                x = nn.functional.max_pool2d(x, 2)
        return out
