"""kdsr: plugin-based knowledge distillation for efficient single-image super-resolution.

The public API that plugins are written against lives here; everything else is internal.
"""

__version__ = "0.1.0"
PLUGIN_API = 1  # bumped when a hook or a public type changes incompatibly

from kdsr.branches import Branch, Tap, capture, feature_taps, is_tapped, resolve_tap  # noqa: E402
from kdsr.errors import KdsrError  # noqa: E402
from kdsr.hookspecs import hookimpl  # noqa: E402
from kdsr.losses import Batch, Loss, Needs, Outputs  # noqa: E402

__all__ = [
    "Batch",
    "Branch",
    "KdsrError",
    "Loss",
    "Needs",
    "Outputs",
    "PLUGIN_API",
    "Tap",
    "capture",
    "feature_taps",
    "hookimpl",
    "is_tapped",
    "resolve_tap",
]
