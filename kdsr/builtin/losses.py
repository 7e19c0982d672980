"""Builtin losses: reconstruction (L1, Charbonnier) and output knowledge distillation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdsr.hookspecs import hookimpl
from kdsr.losses import Batch, Loss, Needs, Outputs


class L1(Loss):
    """Mean absolute error to the HR ground truth."""

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        return F.l1_loss(student.sr, batch.hr)


class Charbonnier(Loss):
    """sqrt((S - HR)^2 + eps^2), a differentiable L1 (LapSRN)."""

    def __init__(self, eps: float = 1e-3) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        return torch.sqrt((student.sr - batch.hr) ** 2 + self.eps**2).mean()


class OutputKD(Loss):
    """(1 - alpha) * L1(S, HR) + alpha * L1(S, T): the student regresses GT and the teacher's SR."""

    needs = Needs(teacher=True)

    def __init__(self, alpha: float = 0.5) -> None:
        super().__init__()
        self.alpha = alpha

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        assert teacher is not None
        kd = F.l1_loss(student.sr, teacher.sr)
        if self.alpha == 1.0:
            return kd
        return (1 - self.alpha) * F.l1_loss(student.sr, batch.hr) + self.alpha * kd


def l1() -> Loss:
    """L1 reconstruction loss against the HR image."""
    return L1()


def charbonnier(eps: float = 1e-3) -> Loss:
    """Charbonnier reconstruction loss sqrt((S-HR)^2 + eps^2)."""
    return Charbonnier(eps)


def output_kd(alpha: float = 0.5) -> Loss:
    """Output KD: (1-alpha)*L1(S,HR) + alpha*L1(S,T) (FAKD's baseline uses alpha 0.5)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"output_kd alpha must be in [0, 1], got {alpha}")
    return OutputKD(alpha)


@hookimpl
def register_losses(register) -> None:
    register("l1", l1)
    register("charbonnier", charbonnier)
    register("output_kd", output_kd)
