"""kdsr-plugin-hkdsr: HKDSR (Xie et al., Neurocomputing 2023), hybrid distillation from intermediate SR heads.

Provides the student constructor and backbone ``hkdsr`` (a zoo backbone + intermediate SR heads)
and the losses ``hkdsr`` (L1 + wavelet FSM + adaptive channel fusion) and ``hkdsr_heads_l1`` (head
pre-training). See README.md.
"""

from __future__ import annotations

from kdsr import hookimpl
from kdsr_hkdsr.losses import hkdsr as hkdsr_loss
from kdsr_hkdsr.losses import hkdsr_heads_l1
from kdsr_hkdsr.model import hkdsr_backbone, hkdsr_student, load_official

KDSR_PLUGIN_API = 1  # the kdsr plugin API this plugin targets (kdsr.PLUGIN_API)


@hookimpl
def register_backbones(register) -> None:  # noqa: ANN001 - kdsr's register callable
    register("hkdsr", hkdsr_backbone, load_official=load_official)


@hookimpl
def register_students(register) -> None:  # noqa: ANN001
    register("hkdsr", hkdsr_student)


@hookimpl
def register_losses(register) -> None:  # noqa: ANN001
    register("hkdsr", hkdsr_loss)
    register("hkdsr_heads_l1", hkdsr_heads_l1)
