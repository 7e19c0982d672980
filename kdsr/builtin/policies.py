"""Builtin inference policies: the full (most expensive) branch, or a fixed one."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kdsr.errors import KdsrError, did_you_mean
from kdsr.hookspecs import hookimpl
from kdsr.inference import Choice, Policy


class Full(Policy):
    def select(self, lr: torch.Tensor, choices: Sequence[Choice]) -> str:
        return max(choices, key=lambda c: c.macs).name


class Fixed(Policy):
    def __init__(self, branch: str | None, width: float | None) -> None:
        self.branch, self.width = branch, width

    def select(self, lr: torch.Tensor, choices: Sequence[Choice]) -> str:
        names = [c.name for c in choices]
        if self.branch is not None:
            if self.branch not in names:
                raise KdsrError(
                    f"policy fixed: no branch '{self.branch}'{did_you_mean(self.branch, names)}; branches: {', '.join(names)}"
                )
            return self.branch
        for c in choices:
            if c.width is not None and abs(c.width - self.width) < 1e-9:
                return c.name
        widths = sorted(c.width for c in choices if c.width is not None)
        raise KdsrError(f"policy fixed: no branch of width {self.width}; widths available: {widths or 'none'}")


def full() -> Policy:
    """Always run the most expensive branch (the full model)."""
    return Full()


def fixed(branch: str | None = None, width: float | None = None) -> Policy:
    """Always run one branch, named or by width."""
    if (branch is None) == (width is None):
        raise ValueError("policy fixed needs exactly one of 'branch' or 'width'")
    return Fixed(branch, width)


@hookimpl
def register_policies(register) -> None:
    register("full", full)
    register("fixed", fixed)
