"""The HKDSR distillation loss and the head pre-training loss (methods.md 4.1 and 4.5).

Intermediate SR outputs are read as taps of ``HeadedSR`` (``heads.0``, ``heads.1``, ...); the final
output is the branch's SR.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdsr import Batch, Loss, Needs, Outputs
from kdsr_hkdsr.acf import ACF
from kdsr_hkdsr.fsm import DEFAULT_BLOCK, FSM, random_crop_box


def _crop(x: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    top, left, h, w = box
    return x[..., top : top + h, left : left + w]


class HKDSRLoss(Loss):
    """``w_l1 L1(S, HR) + sum_mid [w_fsm_mid FSM + w_acf_mid ACF] + w_fsm_final FSM + w_acf_final ACF``.

    The teacher's intermediate outputs are blended with its final one, ``blend T_mid + (1 - blend) T``,
    as the official teacher does (``tea=True``). One ACF (its own gates) per output.
    """

    def __init__(
        self,
        taps: tuple[str, ...],
        w_l1: float,
        w_fsm_mid: float,
        w_acf_mid: float,
        w_fsm_final: float,
        w_acf_final: float,
        teacher_blend: float,
        fsm: FSM,
        fsm_crop: int | None,
    ) -> None:
        super().__init__()
        self.taps = taps
        self.needs = Needs(teacher=True, student_taps=taps, teacher_taps=taps)
        self.w_l1, self.w_fsm, self.w_acf = w_l1, (w_fsm_mid, w_fsm_final), (w_acf_mid, w_acf_final)
        self.teacher_blend = teacher_blend
        self.fsm, self.fsm_crop = fsm, fsm_crop
        self.acf = nn.ModuleList(ACF() for _ in range(len(taps) + 1))

    def pairs(self, student: Outputs, teacher: Outputs) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(student, teacher) SR outputs: the intermediate ones (teacher blended), then the final one."""
        b = self.teacher_blend
        mids = [(student.taps[t], b * teacher.taps[t] + (1 - b) * teacher.sr) for t in self.taps]
        return [*mids, (student.sr, teacher.sr)]

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        assert teacher is not None
        hr = batch.hr
        total = self.w_l1 * F.l1_loss(student.sr, hr)
        pairs = self.pairs(student, teacher)
        final = len(pairs) - 1
        box = random_crop_box(hr.shape[-2], hr.shape[-1], self.fsm_crop) if any(self.w_fsm) else None
        hr_bands = self.fsm.hr_bands(_crop(hr, box)) if box is not None else []
        for i, (s, t) in enumerate(pairs):
            w_fsm, w_acf = self.w_fsm[i == final], self.w_acf[i == final]
            if w_fsm:
                total = total + w_fsm * self.fsm(_crop(s, box), _crop(t, box), hr_bands)
            if w_acf:
                total = total + w_acf * self.acf[i](s, t, hr)
        return total


def hkdsr(
    taps: list[str] = ["heads.0", "heads.1"],  # noqa: B006 - options schema default, never mutated
    w_l1: float = 1.0,
    w_fsm_mid: float = 0.8,
    w_acf_mid: float = 0.5,
    w_fsm_final: float = 3.2,
    w_acf_final: float = 1.0,
    teacher_blend: float = 0.6,
    wavelet: str = "haar",
    wavelet_mode: str = "zero",
    fsm_crop: int | None = None,
    fsm_block_elements: int = DEFAULT_BLOCK,
) -> Loss:
    """HKDSR: L1 + wavelet FSM + adaptive channel fusion on intermediate and final SR outputs (x3/x4 weights)."""
    if not 0.0 <= teacher_blend <= 1.0:
        raise ValueError(f"teacher_blend must be in [0, 1], got {teacher_blend}")
    if fsm_crop is not None and fsm_crop < 2:
        raise ValueError(f"fsm_crop must be at least 2 HR pixels, got {fsm_crop}")
    if fsm_block_elements < 1:
        raise ValueError(f"fsm_block_elements must be positive, got {fsm_block_elements}")
    fsm = FSM(wavelet, wavelet_mode, fsm_block_elements)
    return HKDSRLoss(tuple(taps), w_l1, w_fsm_mid, w_acf_mid, w_fsm_final, w_acf_final, teacher_blend, fsm, fsm_crop)


class HeadsL1(Loss):
    """Sum over the intermediate heads of L1(head output, HR): the official head pre-training loss."""

    def __init__(self, taps: tuple[str, ...]) -> None:
        super().__init__()
        self.taps = taps
        self.needs = Needs(student_taps=taps)

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        return sum((F.l1_loss(student.taps[t], batch.hr) for t in self.taps), batch.hr.new_zeros(()))


def hkdsr_heads_l1(taps: list[str] = ["heads.0", "heads.1"]) -> Loss:  # noqa: B006 - never mutated
    """HKDSR head pre-training: sum of L1(intermediate SR, HR) over the heads (train with a frozen backbone)."""
    if not taps:
        raise ValueError("hkdsr_heads_l1 needs at least one head tap")
    return HeadsL1(tuple(taps))
