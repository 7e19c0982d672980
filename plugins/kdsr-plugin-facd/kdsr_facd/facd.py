"""FACD: feature-domain adaptive contrastive distillation (Moon, Kim, Jeong, Kim; IEEE Access 2023).

A reconstruction from the abstract and the official framework figure: the code was never released.
At each pair of taps (early, middle, last body block before the global skip) the student feature
passes the "DR" head (a 1x1 conv to the teacher's width, optionally + ReLU + 1x1 conv) and becomes
the anchor; the teacher feature of the same patch is the positive and the teacher features of the
other patches in the batch are the negatives. Only patches that pass the adaptive rule (default: the
teacher's SR is closer to HR than the student's) are distilled. The figure's reconstruction term
L1(S, HR) + output KD is left to the builtin ``l1``/``output_kd`` losses in the config.

    L = mean over taps of (1/N) * sum_i m_i * l_i,   l_i = InfoNCE (default) or distance ratio.

See the plugin README for what is from the paper and what is our reading.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from kdsr import Batch, KdsrError, Loss, Needs, Outputs
from kdsr_facd.adaptor import make_adaptor
from kdsr_facd.contrast import distance_ratio, distil_mask, embed, info_nce
from kdsr_facd.taps import DEFAULT_TAPS, tap_pairs

if TYPE_CHECKING:
    from kdsr.config import RunConfig, StageConfig



class FACD(Loss):
    """Adaptive feature-domain contrastive distillation, mean over taps of the masked per-patch loss."""

    def __init__(
        self,
        student_taps: Sequence[str],
        teacher_taps: Sequence[str] | None,
        dr_layers: int,
        form: Literal["infonce", "ratio"],
        temperature: float,
        representation: Literal["pooled", "position"],
        negatives: Literal["teacher", "student"],
        adaptive: Literal["teacher_better", "always"],
        margin: float,
    ) -> None:
        super().__init__()
        self.student_taps, self.teacher_taps = tap_pairs(student_taps, teacher_taps)
        self.needs = Needs(teacher=True, student_taps=self.student_taps, teacher_taps=self.teacher_taps)
        self.dr = nn.ModuleList(make_adaptor(dr_layers) for _ in self.student_taps)
        self.form, self.temperature, self.representation = form, temperature, representation
        self.negatives, self.adaptive, self.margin = negatives, adaptive, margin

    def per_patch(self, student_feat: torch.Tensor, teacher_feat: torch.Tensor, dr: nn.Module) -> torch.Tensor:
        """The contrastive loss of each batch item at one tap (length N), before the adaptive mask."""
        anchor = embed(dr(student_feat, teacher_feat.shape[1]), self.representation)
        positive = embed(teacher_feat, self.representation)
        negatives = positive if self.negatives == "teacher" else anchor.detach()
        if self.form == "infonce":
            return info_nce(anchor, positive, negatives, self.temperature)
        return distance_ratio(anchor, positive, negatives)

    def check_config(self, config: RunConfig, stage: StageConfig) -> None:
        """Refuse a batch of one before the run starts (the negatives are the other patches of the batch)."""
        if config.data.batch_size < 2:
            raise ValueError(f"needs data.batch_size >= 2 (the negatives are the other patches of the batch), got {config.data.batch_size}")

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        assert teacher is not None
        n = len(batch.hr)
        if n < 2:
            raise KdsrError("facd needs batch_size >= 2: the negatives are the other patches of the batch")
        mask = distil_mask(student.sr, teacher.sr, batch.hr, self.adaptive, self.margin)
        terms = [
            (self.per_patch(student.taps[s], teacher.taps[t], dr) * mask).sum() / n
            for dr, s, t in zip(self.dr, self.student_taps, self.teacher_taps)
        ]
        return torch.stack(terms).mean()


def facd(
    student_taps: tuple[str, ...] = DEFAULT_TAPS,
    teacher_taps: tuple[str, ...] | None = None,
    dr_layers: int = 1,
    form: Literal["infonce", "ratio"] = "infonce",
    temperature: float = 0.1,
    representation: Literal["pooled", "position"] = "pooled",
    negatives: Literal["teacher", "student"] = "teacher",
    adaptive: Literal["teacher_better", "always"] = "teacher_better",
    margin: float = 0.0,
) -> Loss:
    """FACD (Moon et al. 2023, reconstructed): per-patch adaptive contrastive distillation of DR(student) features.

    Anchor DR(F_S) of patch i, positive F_T of patch i, negatives the teacher features of the other
    patches; InfoNCE with ``temperature`` (or CSD's distance ratio, ``form: ratio``) over spatially
    pooled (or per-position) L2-normalised features; patches are distilled only where the teacher's
    SR beats the student's L1 to HR by more than ``margin`` (``adaptive: always`` distils all).
    ``dr_layers``: 0 none (equal widths), 1 a 1x1 conv, 2 1x1 conv + ReLU + 1x1 conv.
    """
    if dr_layers not in (0, 1, 2):
        raise ValueError(f"dr_layers must be 0, 1 or 2, got {dr_layers}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return FACD(student_taps, teacher_taps, dr_layers, form, temperature, representation, negatives, adaptive, margin)
