"""kdsr: plugin-based knowledge distillation for efficient single-image super-resolution.

The public API lives here: what plugins are written against, and for users of trained networks
``kdsr.load`` (a run's branch or a weights file as an ``nn.Module``) and ``kdsr.upscale`` (one image
with it; see :mod:`kdsr.api`). Everything else is internal.
"""

from kdsr import allocator

# Freed CPU tensors reused and large ones on transparent huge pages (KDSR_ALLOCATOR: reuse by default,
# thp, default; see kdsr/allocator.py): must run before torch's first allocation.
allocator.configure()

__version__ = "0.1.0"
PLUGIN_API = 1  # bumped when a hook or a public type changes incompatibly

from kdsr.bounds import Channels, Count, Fraction, Positive  # noqa: E402
from kdsr.branches import Branch, Tap, capture, feature_taps, is_tapped, resolve_tap  # noqa: E402
from kdsr.errors import KdsrError  # noqa: E402
from kdsr.hookspecs import hookimpl  # noqa: E402
from kdsr.losses import Batch, Loss, Needs, Outputs  # noqa: E402
from kdsr.plain import PlainNetwork  # noqa: E402

__all__ = [
    "Batch",
    "Branch",
    "Channels",
    "Count",
    "Fraction",
    "KdsrError",
    "Loss",
    "Needs",
    "Outputs",
    "PLUGIN_API",
    "PlainNetwork",
    "Positive",
    "Tap",
    "capture",
    "feature_taps",
    "hookimpl",
    "is_tapped",
    "load",
    "resolve_tap",
    "upscale",
]


def __getattr__(name: str):
    """``load`` / ``upscale`` are imported on first use: they pull in the engine, which plugins must not wait for."""
    if name in ("load", "upscale"):
        from kdsr import api

        return getattr(api, name)
    raise AttributeError(f"module 'kdsr' has no attribute '{name}'")
