"""kdsr-plugin-zoo: SR architectures, one self-contained file each.

Each architecture module exposes ``register_backbones(register)``; this package hooks them all.
"""

from __future__ import annotations

import importlib

from kdsr import hookimpl

ARCHITECTURES = ("edsr", "rcan", "carn", "csd_carn", "swinir", "imdn")
KDSR_PLUGIN_API = 1  # the kdsr plugin API this plugin targets (kdsr.PLUGIN_API)


@hookimpl
def register_backbones(register) -> None:
    for name in ARCHITECTURES:
        importlib.import_module(f"kdsr_zoo.{name}").register_backbones(register)
