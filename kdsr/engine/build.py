"""Turn validated config sections into objects, through the plugin registries.

Every error names the config path it came from (``stages[1].losses[0]``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdsr.branches import Branch
from kdsr.config import DatasetSpec, LossSpec, ModelSpec, RunConfig, StageConfig
from kdsr.data import SRPairs
from kdsr.engine.evaluate import EvalSet
from kdsr.errors import KdsrError, did_you_mean
from kdsr.losses import Loss
from kdsr.plugins import registry
from kdsr.registry import Entry
from kdsr.weights import load_weights


@dataclass
class Term:
    """One weighted loss term bound to its branches."""

    label: str
    loss: Loss
    weight: float
    student: str
    teacher: str | None


@dataclass
class Stage:
    """What one stage trains: its branches (teacher frozen) and its loss terms."""

    config: StageConfig
    branches: dict[str, Branch]
    terms: list[Term] = field(default_factory=list)

    @property
    def trainable(self) -> dict[str, Branch]:
        return {n: b for n, b in self.branches.items() if b.trainable}


def candidate_branches(stages: dict[str, Stage]) -> dict[str, Branch]:
    """The branches a policy chooses from: the trained branches of the run's last finished stage (eval mode)."""
    last = list(stages.values())[-1]
    return {n: Branch(b.model.eval(), b.kwargs) for n, b in last.trainable.items()}


def build_dataset(spec: DatasetSpec, where: str):
    return registry("dataset").create(spec.name, spec.options, where=f"{where}.options")


def dataset_label(spec: DatasetSpec) -> str:
    if spec.label:
        return spec.label
    root = spec.options.get("root") or spec.options.get("hr_root")
    return Path(str(root)).name if root else spec.name


def build_degradation(config: RunConfig):
    d = config.data.degradation
    return registry("degradation").create(d.name, d.options, where="data.degradation.options")


def build_pairs(config: RunConfig, spec: DatasetSpec, where: str) -> SRPairs:
    return SRPairs(build_dataset(spec, where), config.scale, build_degradation(config), cache=config.data.cache)


def build_eval_sets(config: RunConfig) -> list[EvalSet]:
    sets, labels = [], []
    for i, spec in enumerate(config.data.eval):
        label = dataset_label(spec)
        if label in labels:
            label = f"{label}_{i}"
        labels.append(label)
        sets.append(EvalSet(label, build_pairs(config, spec, f"data.eval[{i}]")))
    return sets


def build_metrics(config: RunConfig) -> dict[str, Any]:
    """``{label: metric}``; the label says which variant runs (see ``kdsr.config.MetricSpec``)."""
    out: dict[str, Any] = {}
    for i, spec in enumerate(config.eval.metrics):
        where = f"eval.metrics[{i}]"
        metric = registry("metric").create(spec.name, spec.options, where=f"{where}.options")
        label = spec.label or variant_label(registry("metric").get(spec.name, where), spec.options, where)
        if label in out:
            raise KdsrError(f"{where}: a second metric reported as '{label}'; remove it or give it another 'label'")
        out[label] = metric
    return out


def variant_label(entry: Entry, options: dict[str, Any], where: str) -> str:
    """``name``, or ``name[k=v,...]`` listing the options that differ from the factory's defaults."""
    chosen = entry.validate(options, where)
    defaults = {n: p.default for n, p in entry.option_fields().items()}
    changed = [f"{k}={_plain(v)}" for k, v in chosen.items() if k in options and v != defaults.get(k)]
    return f"{entry.name}[{','.join(changed)}]" if changed else entry.name


def _plain(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def build_backbone(spec: ModelSpec, scale: int, where: str, load: bool = True) -> nn.Module:
    """The backbone of ``spec`` (or the one its weights file describes); ``load=False`` only checks that its
    weights fit (works on the meta device)."""
    if spec.backbone is None:
        spec = described_spec(spec, scale, where)
    entry = registry("backbone").get(spec.backbone, where=f"{where}.backbone")
    model = registry("backbone").create(spec.backbone, spec.options, where=f"{where}.options", scale=scale)
    if spec.weights is not None:
        load_weights(model, spec.weights, entry.extra.get("load_official"), check_only=not load)
    return model


def described_spec(spec: ModelSpec, scale: int, where: str) -> ModelSpec:
    """``spec`` with the backbone and options its ``weights`` file describes (kdsr metadata)."""
    from kdsr.plain import describe

    if not spec.weights.is_file():
        raise KdsrError(f"{where}.weights: '{spec.weights}' does not exist; check the path")
    found = describe(spec.weights)
    if found is None:
        raise KdsrError(
            f"{where}.weights: '{spec.weights}' does not say which network it is (no kdsr metadata); "
            f"add 'backbone:' (and 'options:') for it"
        )
    if found.scale != scale:
        raise KdsrError(f"{where}.weights: '{spec.weights}' is a x{found.scale} {found.backbone}, the run is x{scale}; use weights for x{scale}")
    return spec.model_copy(update={"backbone": found.backbone, "options": found.options})


def resolve_model(spec: ModelSpec, scale: int, where: str, finished: dict[str, Stage], load: bool = True) -> Branch:
    """A network from the registry, or a copy of a branch trained by an earlier stage."""
    if spec.from_stage is None:
        return Branch(build_backbone(spec, scale, where, load))
    stage = finished[spec.from_stage]  # existence checked by the config validator
    names = list(stage.trainable)
    name = spec.branch or names[0]
    if name not in stage.trainable:
        raise KdsrError(
            f"{where}.branch: stage '{spec.from_stage}' has no trained branch '{name}'"
            f"{did_you_mean(name, names)}; its branches: {', '.join(names)}"
        )
    src = stage.trainable[name]
    return Branch(copy.deepcopy(src.model), dict(src.kwargs))


def build_stage(config: RunConfig, index: int, finished: dict[str, Stage], load: bool = True, losses: bool = True) -> Stage:
    """Build a stage's branches and losses with validated options (``load=False``: no weight files read;
    ``losses=False``: the branches alone, as inference needs them: no VGG built, no loss warnings)."""
    sc = config.stages[index]
    where = f"stages[{index}]"
    branches: dict[str, Branch] = {}
    teacher_model = None
    if sc.teacher is not None:
        # a forked RNG: the student's initial weights depend on the seed alone, not on whether a teacher came first
        with torch.random.fork_rng(devices=[]):
            teacher = resolve_model(sc.teacher, config.scale, f"{where}.teacher", finished, load)
        teacher.model.eval().requires_grad_(False)
        teacher.trainable = False
        branches["teacher"] = teacher
        teacher_model = teacher.model
    students = registry("student").create(
        sc.student.constructor, sc.student.options, where=f"{where}.student.options", teacher=teacher_model, scale=config.scale
    )
    if not isinstance(students, dict) or not students or not all(isinstance(b, Branch) for b in students.values()):
        raise KdsrError(f"{where}.student: constructor '{sc.student.constructor}' did not return a dict of kdsr.Branch")
    for name, branch in students.items():
        if name in branches:
            raise KdsrError(f"{where}.student: constructor '{sc.student.constructor}' returned a branch named '{name}', which is reserved")
        branches[name] = branch
    if sc.student.init is not None:
        init_student(sc.student.init, students, config.scale, f"{where}.student.init", finished, load)
    stage = Stage(sc, branches)
    if not losses:
        return stage
    stage.terms = [build_term(spec, stage, f"{where}.losses[{j}]") for j, spec in enumerate(sc.losses)]
    for j, (spec, term) in enumerate(zip(sc.losses, stage.terms)):
        try:
            term.loss.check_config(config, sc)
        except ValueError as exc:
            raise KdsrError(f"{where}.losses[{j}]: loss '{spec.name}': {exc}") from None
    labels = [t.label for t in stage.terms]
    for t in stage.terms:
        if labels.count(t.label) > 1:
            t.label = f"{t.label}[{t.student}]" if t.teacher is None else f"{t.label}[{t.teacher}->{t.student}]"
    return stage


def init_student(
    spec: ModelSpec, students: dict[str, Branch], scale: int, where: str, finished: dict[str, Stage], load: bool = True
) -> None:
    modules = {id(b.model): b.model for b in students.values()}
    if len(modules) != 1:
        raise KdsrError(f"{where}: 'init' needs a single student network, the constructor built {len(modules)}")
    target = next(iter(modules.values()))
    source = resolve_model(spec, scale, where, finished, load).model
    try:
        target.load_state_dict(source.state_dict(), strict=True)
    except RuntimeError as exc:
        raise KdsrError(f"{where}: initial weights do not fit the student ({str(exc).splitlines()[0]})") from None


def build_term(spec: LossSpec, stage: Stage, where: str) -> Term:
    loss = registry("loss").create(spec.name, spec.options, where=f"{where}.options")
    if not isinstance(loss, Loss):
        raise KdsrError(f"{where}: loss '{spec.name}' did not build a kdsr.Loss (got {type(loss).__name__}); fix the plugin")
    names = list(stage.branches)
    if spec.student not in stage.branches:
        raise KdsrError(f"{where}.student: no branch '{spec.student}'{did_you_mean(spec.student, names)}; branches: {', '.join(names)}")
    teacher = spec.teacher
    if loss.needs.teacher:
        teacher = teacher or "teacher"
        if teacher not in stage.branches:
            raise KdsrError(
                f"{where}: loss '{spec.name}' needs a teacher branch but the stage has no '{teacher}'"
                f"{did_you_mean(teacher, names)}; add 'teacher:' to the stage or set 'teacher:' on the loss"
            )
    elif teacher is not None:
        raise KdsrError(f"{where}.teacher: loss '{spec.name}' does not use a teacher; remove 'teacher'")
    return Term(spec.label or spec.name, loss, spec.weight, spec.student, teacher)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise KdsrError(f"device '{name}' is not a torch device; use auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise KdsrError(f"device '{name}' requested but CUDA is not available; use device=cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise KdsrError(f"device '{name}': this machine has {torch.cuda.device_count()} CUDA device(s); use cuda:0 .. cuda:{torch.cuda.device_count() - 1} or auto")
    if device.type not in ("cpu", "cuda"):
        backend = getattr(torch, device.type, None) or getattr(torch.backends, device.type, None)
        if not (backend is not None and hasattr(backend, "is_available") and backend.is_available()):
            raise KdsrError(f"device '{name}' is not available on this machine; use auto, cpu or cuda[:N]")
    return device


def check_config(config: RunConfig) -> None:
    """Resolve every plugin name and option of ``config`` without training or reading weights.

    Networks are built on the meta device, so even large teachers cost no memory.
    """
    pick_device(config.device)
    for i, spec in enumerate([config.data.train, *config.data.eval]):
        build_dataset(spec, "data.train" if i == 0 else f"data.eval[{i - 1}]")
    build_degradation(config)
    build_metrics(config)
    finished: dict[str, Stage] = {}
    with torch.device("meta"):
        for i, sc in enumerate(config.stages):
            finished[sc.name] = build_stage(config, i, finished, load=False)
