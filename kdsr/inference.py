"""Inference policies: which branch serves a given input.

A policy sees the LR input and the candidate branches (with their cost) and names one. The
engine runs it per image (or, with tiling, per patch).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Choice:
    """A branch a policy may pick, with its Multi-Adds at the reference output size and its width."""

    name: str
    macs: int
    width: float | None = None


class Policy:
    """Base class: override ``select``."""

    def select(self, lr: torch.Tensor, choices: Sequence[Choice]) -> str:  # pragma: no cover
        raise NotImplementedError
