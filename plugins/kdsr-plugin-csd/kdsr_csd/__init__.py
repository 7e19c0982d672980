"""kdsr-plugin-csd: Contrastive self-distillation (CSD), CSSR-Net channel-split students and Pro-CSD for kdsr."""

from __future__ import annotations

from kdsr import hookimpl

from kdsr_csd.loss import ContrastiveLoss, csd
from kdsr_csd.narrow import BackboneSpec
from kdsr_csd.slim import make_slimmable
from kdsr_csd.students import branch_name, cssr

KDSR_PLUGIN_API = 1  # the kdsr plugin API this plugin targets (kdsr.PLUGIN_API)
__all__ = ["BackboneSpec", "ContrastiveLoss", "branch_name", "csd", "cssr", "make_slimmable"]


@hookimpl
def register_students(register) -> None:  # noqa: ANN001 - kdsr's register callable
    register("cssr", cssr)


@hookimpl
def register_losses(register) -> None:  # noqa: ANN001 - kdsr's register callable
    register("csd", csd)
