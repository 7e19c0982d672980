"""ACF, the adaptive channel fusion of HKDSR (official ``AdaptLoss_gt``, methods.md 4.4).

Per RGB channel c, a gate (1x1 conv 2->32, ReLU, 1x1 conv 32->2, sigmoid, softmax over the two
sources) reads [HR_c, T_c] and gives per-pixel weights (a_c, b_c); the target is a_c HR_c + b_c T_c
and the loss is L1(S, target). As in the official code, each channel has its own gate (three gates,
not one shared), one ACF module is built per SR output, and the target is not detached: the gates
are trained by the same loss the student minimises.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ChannelGate(nn.Module):
    """Per-pixel softmax weights of two sources of one channel: N x 2 x H x W -> N x 2 x H x W."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(2, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, 2, 1), nn.Sigmoid())

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        return F.softmax(self.body(pair), dim=1)


class ACF(nn.Module):
    """Fuses HR and the teacher's output per channel and pulls the student's output to the fusion."""

    def __init__(self, channels: int = 3, hidden: int = 32) -> None:
        super().__init__()
        self.gates = nn.ModuleList(ChannelGate(hidden) for _ in range(channels))

    def fuse(self, hr: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """The fused target a_c HR_c + b_c T_c, channel by channel."""
        fused = []
        for c, gate in enumerate(self.gates):
            pair = torch.stack([hr[:, c], teacher[:, c]], dim=1)
            w = gate(pair)
            fused.append(w[:, 0] * hr[:, c] + w[:, 1] * teacher[:, c])
        return torch.stack(fused, dim=1)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(student, self.fuse(hr, teacher))
