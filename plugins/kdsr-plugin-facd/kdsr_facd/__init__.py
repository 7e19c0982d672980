"""kdsr-plugin-facd: feature distillation for kdsr: FitNet-style FD, FAKD and FACD.

Losses ``fd``, ``fakd`` and ``facd``; each reads feature taps of the student and the frozen teacher.
"""

from __future__ import annotations

from kdsr import hookimpl
from kdsr_facd.facd import facd
from kdsr_facd.fakd import fakd
from kdsr_facd.fd import fd

KDSR_PLUGIN_API = 1  # the kdsr plugin API this plugin targets (kdsr.PLUGIN_API)


@hookimpl
def register_losses(register) -> None:  # noqa: ANN001 - kdsr's register callable
    register("fd", fd)
    register("fakd", fakd)
    register("facd", facd)
