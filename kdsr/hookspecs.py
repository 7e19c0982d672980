"""The plugin contract: every hook kdsr calls, one docstring each.

Registration hooks follow one shape (as in simonw/llm): kdsr calls ``register_<kind>(register)``
once at start-up and the plugin calls ``register(name, factory)`` for each thing it provides.
The factory's typed keyword arguments *are* its options schema: kdsr validates the ``options:``
mapping of a config against them (unknown keys, wrong types) before calling it.

Builtin plugins (``kdsr.builtin``) implement the same hooks as external ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:
    from kdsr.config import RunConfig
    from kdsr.engine.context import RunContext

hookspec = pluggy.HookspecMarker("kdsr")
hookimpl = pluggy.HookimplMarker("kdsr")

Register = Callable[..., None]


@hookspec
def register_backbones(register: Register) -> None:
    """Register SR architectures usable as teacher or student.

    ``register(name, factory, load_official=None)`` where ``factory(scale: int, **options) -> nn.Module``.
    The module maps an LR batch in [0, 1] to an SR batch in [0, 1] and may define
    ``feature_taps() -> dict[str, kdsr.Tap]`` naming its intermediate features (``head``, ``body.0``...,
    ``body``, ``upsampler.in``). ``load_official(module, state_dict) -> state_dict`` converts the reference
    implementation's checkpoint layout to the module's own.
    """


@hookspec
def register_students(register: Register) -> None:
    """Register student constructors.

    ``register(name, factory)`` where ``factory(teacher: nn.Module | None, scale: int, **options)
    -> dict[str, kdsr.Branch]`` returns the trainable branches (e.g. an independent small network,
    or several widths of one weight-shared network). A network shared by several branches may define
    ``branch_params(**branch.kwargs) -> int`` so reports count only the parameters a branch uses;
    Multi-Adds are traced per branch with its kwargs.
    """


@hookspec
def register_losses(register: Register) -> None:
    """Register reconstruction and distillation losses.

    ``register(name, factory)`` where ``factory(**options) -> kdsr.Loss``. A loss declares what it needs
    (``Loss.needs``) so the engine runs only those forward passes and taps, once per step. Its
    parameters (adaptors, gates) are trained and checkpointed with the student; lazy modules
    (``nn.LazyConv2d``) are materialised by one no-grad pass on the first batch before the
    optimiser is built.
    """


@hookspec
def register_policies(register: Register) -> None:
    """Register inference policies that choose which branch serves an input.

    ``register(name, factory)`` where ``factory(**options) -> kdsr.Policy``.
    """


@hookspec
def register_datasets(register: Register) -> None:
    """Register image sources.

    ``register(name, factory)`` where ``factory(**options) -> Sequence[kdsr.data.Sample]``: full
    HR images (uint8, 3xHxW) with a name and, for paired sets, the matching LR image. kdsr mod-crops,
    degrades, caches and cuts patches itself.
    """


@hookspec
def register_metrics(register: Register) -> None:
    """Register image-quality metrics.

    ``register(name, factory)`` where ``factory(**options) -> Callable[[sr, hr, scale], float]`` and
    ``sr``/``hr`` are 3xHxW float tensors in [0, 1], ``sr`` already quantised to 8 bits.
    """


@hookspec
def register_degradations(register: Register) -> None:
    """Register HR -> LR degradations.

    ``register(name, factory)`` where ``factory(**options) -> Callable[[hr, scale], lr]`` on 3xHxW
    float tensors in [0, 1].
    """


@hookspec
def configure(config: RunConfig) -> None:
    """Called once with the validated config before anything is built."""


@hookspec
def before_step(run: RunContext, step: int) -> None:
    """Called before each training step of the current stage."""


@hookspec
def after_step(run: RunContext, step: int, losses: dict[str, float]) -> None:
    """Called after each optimiser step with the step's loss terms (floats, already weighted)."""


@hookspec
def after_eval(run: RunContext, step: int, results: dict[str, Any]) -> None:
    """Called after each evaluation with ``{branch: {set: {metric: value}}}``."""


@hookspec
def end_run(run: RunContext, report: dict[str, Any]) -> None:
    """Called once when the run has written its report."""
