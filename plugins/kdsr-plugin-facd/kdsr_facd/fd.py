"""FD: FitNet-style feature distillation (Romero et al., ICLR 2015) as SR KD code uses it.

At each pair of taps the student feature passes a learned 1x1 adaptor to the teacher's width (the
FitNet regressor) and is pulled to the teacher feature with L1 (the usual choice in SR KD code) or
L2 (FitNet's). The per-tap distances are averaged over the taps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from kdsr import Batch, Loss, Needs, Outputs
from kdsr_facd.adaptor import make_adaptor
from kdsr_facd.taps import DEFAULT_TAPS, tap_pairs



class FeatureDistillation(Loss):
    """mean over taps of d(adaptor(F_S), F_T), d = mean absolute (l1) or mean squared (l2) difference."""

    def __init__(
        self,
        student_taps: Sequence[str],
        teacher_taps: Sequence[str] | None,
        distance: Literal["l1", "l2"],
        adaptor_layers: int,
    ) -> None:
        super().__init__()
        self.student_taps, self.teacher_taps = tap_pairs(student_taps, teacher_taps)
        self.needs = Needs(teacher=True, student_taps=self.student_taps, teacher_taps=self.teacher_taps)
        self.distance = distance
        self.adaptors = nn.ModuleList(make_adaptor(adaptor_layers) for _ in self.student_taps)

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        assert teacher is not None
        dist = F.l1_loss if self.distance == "l1" else F.mse_loss
        terms = []
        for adaptor, s_name, t_name in zip(self.adaptors, self.student_taps, self.teacher_taps):
            target = teacher.taps[t_name]
            terms.append(dist(adaptor(student.taps[s_name], target.shape[1]), target))
        return torch.stack(terms).mean()


def fd(
    student_taps: tuple[str, ...] = DEFAULT_TAPS,
    teacher_taps: tuple[str, ...] | None = None,
    distance: Literal["l1", "l2"] = "l1",
    adaptor_layers: int = 1,
) -> Loss:
    """FitNet-style feature distillation: L1/L2 between 1x1-adapted student and teacher features, mean over taps.

    ``teacher_taps`` defaults to ``student_taps``; ``adaptor_layers`` 0 compares raw features (equal
    widths only), 1 adds a 1x1 conv to the teacher's width, 2 a 1x1 conv + ReLU + 1x1 conv.
    """
    if adaptor_layers not in (0, 1, 2):
        raise ValueError(f"adaptor_layers must be 0, 1 or 2, got {adaptor_layers}")
    return FeatureDistillation(student_taps, teacher_taps, distance, adaptor_layers)
