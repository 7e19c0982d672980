"""What a loss is: a module that declares its needs and computes from what the engine ran.

The engine runs each needed branch once per step with the union of the taps every loss asked
for, then calls each loss with the student branch's outputs, the teacher branch's outputs (or
``None``) and the batch. Losses are ``nn.Module``s so trainable parts (adaptors, gates) join
the optimiser and the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # annotations only: the config module is not needed to define a loss
    from kdsr.config import RunConfig, StageConfig


@dataclass(frozen=True)
class Needs:
    """What a loss reads. Taps name features of the student/teacher branch (see ``kdsr.Tap``)."""

    teacher: bool = False
    student_taps: tuple[str, ...] = ()
    teacher_taps: tuple[str, ...] = ()
    bicubic: bool = False


@dataclass
class Outputs:
    """One branch's forward pass: its SR output and the taps that were asked for."""

    sr: torch.Tensor
    taps: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class Batch:
    """A training batch: LR and HR patches in [0, 1]; ``bicubic`` is LR upsampled when a loss needs it."""

    lr: torch.Tensor
    hr: torch.Tensor
    bicubic: torch.Tensor | None = None


class Loss(nn.Module):
    """Base class of every loss. Override ``needs`` (class attribute or property) and ``forward``.

    ``caveats``: sentences a reader of the results must see, e.g. that the loss ran with random
    feature weights; set on the instance by the factory (``loss.caveats = ("...",)``). The report
    prints them next to the numbers of every model the loss trained, in report.md and report.json.
    """

    needs: Needs = Needs()
    caveats: tuple[str, ...] = ()

    def check_config(self, config: RunConfig, stage: StageConfig) -> None:
        """Refuse, before anything runs, a config this loss cannot train with; ``kdsr validate`` calls it too.

        Raise ``ValueError`` naming the setting and the fix, e.g. CSD's negatives need
        ``data.batch_size >= num_negatives``. ``stage`` is the loss's own stage. Default: accept.
        """

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError
