"""Every hook in kdsr/hookspecs.py has a docstring and is documented, with its signature, in CONTRIBUTING.md."""

from __future__ import annotations

import inspect

import pytest

from kdsr import hookspecs
from tests.conftest import ROOT

HOOKS = sorted(name for name, fn in vars(hookspecs).items() if callable(fn) and hasattr(fn, "kdsr_spec"))


def test_hookspecs_are_found() -> None:
    assert {"register_losses", "register_backbones", "after_step"} <= set(HOOKS)


@pytest.mark.parametrize("name", HOOKS)
def test_hook_has_a_docstring_and_is_in_contributing(name: str) -> None:
    fn = getattr(hookspecs, name)
    assert inspect.getdoc(fn), f"hook {name} needs a docstring in kdsr/hookspecs.py"
    signature = f"`{name}({', '.join(inspect.signature(fn).parameters)})`"
    assert signature in (ROOT / "CONTRIBUTING.md").read_text(), f"add {signature} to CONTRIBUTING.md's hook reference"
