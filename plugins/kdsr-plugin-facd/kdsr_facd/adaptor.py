"""Adaptors that map a student feature to the teacher's width (FitNet's regressor, FACD's "DR" head).

Neither width is known when a loss is built: they come from the features of the first batch. The
adaptor is therefore a lazy module (``torch.nn.modules.lazy.LazyModuleMixin``) whose weights are
created on its first call from the student feature's channels and the teacher's; kdsr makes that
call in a no-grad pass on the first batch before it builds the optimiser, so the adaptor is
trained and checkpointed with the student.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedParameter

from kdsr import KdsrError


class LazyAdaptor(LazyModuleMixin, nn.Module):
    """``layers`` = 1: a 1x1 conv C_s -> C_t; ``layers`` = 2: 1x1 conv C_s -> C_t, ReLU, 1x1 conv C_t -> C_t."""

    def __init__(self, layers: int = 1) -> None:
        super().__init__()
        if layers not in (1, 2):
            raise ValueError(f"adaptor layers must be 1 or 2, got {layers}")
        self.layers = layers
        self.weight = UninitializedParameter()
        self.bias = UninitializedParameter()
        if layers == 2:
            self.weight2 = UninitializedParameter()
            self.bias2 = UninitializedParameter()

    def initialize_parameters(self, x: torch.Tensor, channels: int) -> None:  # type: ignore[override]
        """Create the weights for ``x``'s width and ``channels`` outputs; Conv2d's default init."""
        if not self.has_uninitialized_params():
            return
        with torch.no_grad():
            shapes = [(channels, x.shape[1])] + ([(channels, channels)] if self.layers == 2 else [])
            names = [("weight", "bias"), ("weight2", "bias2")]
            for (c_out, c_in), (w, b) in zip(shapes, names):
                weight, bias = getattr(self, w), getattr(self, b)
                weight.materialize((c_out, c_in, 1, 1), device=x.device, dtype=x.dtype)
                bias.materialize((c_out,), device=x.device, dtype=x.dtype)
                nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
                nn.init.uniform_(bias, -1 / math.sqrt(c_in), 1 / math.sqrt(c_in))

    def forward(self, x: torch.Tensor, channels: int) -> torch.Tensor:
        y = F.conv2d(x, self.weight, self.bias)
        if self.layers == 2:
            y = F.conv2d(F.relu(y), self.weight2, self.bias2)
        return y

    def extra_repr(self) -> str:
        return f"layers={self.layers}"


class SameWidth(nn.Module):
    """No adaptor: the student feature is used as it is, which needs equal widths."""

    def forward(self, x: torch.Tensor, channels: int) -> torch.Tensor:
        if x.shape[1] != channels:
            raise KdsrError(
                f"student feature has {x.shape[1]} channels but the teacher's has {channels}; "
                "set the adaptor layers option to 1 or 2 to learn a 1x1 mapping"
            )
        return x


def make_adaptor(layers: int) -> nn.Module:
    """0: none (equal widths); 1: 1x1 conv; 2: 1x1 conv + ReLU + 1x1 conv."""
    if layers == 0:
        return SameWidth()
    return LazyAdaptor(layers)
