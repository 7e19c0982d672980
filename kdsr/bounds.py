"""Bounded option types for factory signatures, so a value out of range fails when the config is validated.

The registry builds each factory's options model from its signature (``kdsr.registry``), pydantic
``Annotated`` constraints included: with ``n_feats: Channels = 64`` a config's ``n_feats: 0`` or
``n_feats: 1000000`` is a one-line error from ``kdsr validate``, not a crash after the run started.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

Channels = Annotated[int, Field(ge=1, le=4096)]
"""A feature width (channels of a layer): at least 1; 4096 is far above any SR network's."""

Count = Annotated[int, Field(ge=1, le=1024)]
"""How many of something a network stacks (blocks, groups, modules, heads): at least one."""

Fraction = Annotated[float, Field(gt=0, le=1)]
"""A share in (0, 1], e.g. IMDN's distillation rate."""

Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
"""A positive finite number (ranges, scales of residuals)."""
