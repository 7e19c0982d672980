"""Rebuild networks from a finished run or from a weights file: the one home of loading.

``kdsr eval``, ``kdsr infer``, ``kdsr export`` and the Python API (``kdsr.load``) all come here. A run
directory gives its stages with their final weights; a branch of it becomes a plain network through
``to_plain`` (:mod:`kdsr.plain`) or, for an independent student, through the backbone its config names.
A weights file gives one network: its backbone comes from the file's own description, or from
``backbone`` / ``scale`` / ``options`` for a foreign file (official ``.pth`` / ``.pt``), whose layout
the backbone's ``load_official`` converts.

Imports flow one way: this module uses ``kdsr.engine.build`` and reads run directories through
:mod:`kdsr.rundir`; the evaluation and inference verbs use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdsr.branches import Branch
from kdsr.config import RunConfig, load_config
from kdsr.engine.build import Stage, build_stage, candidate_branches
from kdsr.errors import KdsrError, did_you_mean
from kdsr.plain import Description, Exportable, PlainNetwork, describe
from kdsr.plugins import registry
from kdsr.profiling import HR_720P, lr_size_for
from kdsr.report import BranchModule, report_rows, row_label
from kdsr.rundir import PROGRESS, RESOLVED, load_final, read_progress, read_report
from kdsr.weights import load_weights

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".ckpt", ".bin")
RUNTIME_FORMATS = {"onnx": ("an ONNX", "onnxruntime"), "torchscript": ("a TorchScript", "torch.jit.load")}  # exports kdsr writes but does not load


# ---------------------------------------------------------------- runs


def load_run(run_dir: Path) -> tuple[RunConfig, dict[str, Stage]]:
    """The run's config and its finished stages (their branches, no loss terms) with their final weights loaded."""
    run_dir = Path(run_dir)
    resolved = run_dir / RESOLVED
    if not resolved.exists():
        raise KdsrError(
            f"'{run_dir}' is not a kdsr run directory (no {RESOLVED}); pass the out_dir of a `kdsr run` or a weights file"
        )
    config = load_config(resolved)
    done = read_progress(run_dir)["done"]
    if not done:
        raise KdsrError(f"run '{run_dir}' has no finished stage yet ({PROGRESS}); finish it with `kdsr run ... --resume`")
    stages: dict[str, Stage] = {}
    for i, sc in enumerate(config.stages):
        if sc.name not in done:
            break
        torch.manual_seed(config.seed + i)
        stage = build_stage(config, i, stages, losses=False)  # inference needs the trained branches only
        load_final(run_dir, sc.name, stage.branches)
        stages[sc.name] = stage
    return config, stages


def pick_branch(run_dir: Path, stages: dict[str, Stage], branch: str | None, stage: str | None) -> tuple[str, str]:
    """(stage, branch) names: ``stage`` defaults to the last finished one, ``branch`` to its only (or first)
    trained branch; unknown names are one-line errors listing the choices."""
    if stage is None:
        stage = list(stages)[-1]
    elif stage not in stages:
        names = list(stages)
        raise KdsrError(
            f"run '{run_dir}' has no finished stage '{stage}'{did_you_mean(stage, names)}; finished stages: {', '.join(names)}"
        )
    trained = list(stages[stage].trainable)
    if branch is None:
        branch = trained[0]
    elif branch not in trained:
        raise KdsrError(
            f"stage '{stage}' of run '{run_dir}' has no trained branch '{branch}'{did_you_mean(branch, trained)}; "
            f"its branches: {', '.join(trained)}"
        )
    return stage, branch


def plain_branch(config: RunConfig, stage: Stage, name: str) -> PlainNetwork:
    """A trained branch as a plain registered backbone with its own weights (what ``kdsr export`` writes).

    The branch module's ``to_plain(**kwargs)`` says what it is; an independent student is the backbone its
    config names. Anything else cannot leave its run, and the error says what the plugin must add.
    """
    branch = stage.branches[name]
    student = stage.config.student
    if isinstance(branch.model, Exportable):
        plain = branch.model.to_plain(**branch.kwargs)
        if not isinstance(plain, PlainNetwork):
            raise KdsrError(f"{type(branch.model).__name__}.to_plain returned {type(plain).__name__}, not kdsr.plain.PlainNetwork; fix the plugin")
        return plain
    if _independent(stage, name):
        options = dict(student.options)
        return PlainNetwork(options["backbone"], dict(options.get("options") or {}), config.scale, branch.model.state_dict())
    raise KdsrError(
        f"branch '{name}' of stage '{stage.config.name}' is a {type(branch.model).__name__} built by student constructor "
        f"'{student.constructor}', not a plain backbone; its plugin must implement to_plain (see kdsr/plain.py) to export it"
    )


def _independent(stage: Stage, name: str) -> bool:
    """The branch is the backbone the stage's ``independent`` student constructor built."""
    return stage.config.student.constructor == "independent" and not stage.branches[name].kwargs


def has_plain(stage: Stage, name: str) -> bool:
    """Whether :func:`plain_branch` can rebuild the branch as a plain backbone."""
    return isinstance(stage.branches[name].model, Exportable) or _independent(stage, name)


# ---------------------------------------------------------------- files


def network_of(path: Path, backbone: str | None = None, scale: int | None = None, options: dict[str, Any] | None = None) -> Description:
    """What network a weights file holds: its own description, or the given backbone / scale / options.

    Given values must agree with a description (a file never silently becomes another network)."""
    path = Path(path)
    found = describe(path)
    if found is None:
        if backbone is None or scale is None:
            raise KdsrError(
                f"weights '{path}' do not say which network they are (no kdsr metadata); "
                f"pass --backbone NAME --scale S [--option k=v] (Python: backbone=, scale=, options=)"
            )
        return Description(backbone, dict(options or {}), int(scale), {})
    given = {"backbone": backbone, "scale": scale, "option": options or None}  # keyed by their CLI flags
    for flag, value in given.items():
        own = {"backbone": found.backbone, "scale": found.scale, "option": found.options}[flag]
        if value is not None and (value if flag != "option" else {**own, **value}) != own:
            raise KdsrError(
                f"weights '{path}' are {found.backbone} x{found.scale} with options {found.options} (their metadata), "
                f"not {flag} {value}; drop --{flag} or use weights for that network"
            )
    return found


def load_file(path: Path, backbone: str | None = None, scale: int | None = None, options: dict[str, Any] | None = None) -> tuple[nn.Module, Description]:
    """The network in a weights file, strictly loaded (official layouts converted), in eval mode."""
    path = Path(path)
    net = network_of(path, backbone, scale, options)
    fmt = "onnx" if path.suffix == ".onnx" else net.meta.get("format")
    if fmt in RUNTIME_FORMATS:
        label, runtime = RUNTIME_FORMATS[fmt]
        raise KdsrError(f"'{path}' is {label} export; run it with {runtime}, or give kdsr the .safetensors export")
    entry = registry("backbone").get(net.backbone, where="backbone")
    model = registry("backbone").create(net.backbone, net.options, where="options", scale=net.scale)
    load_weights(model, path, entry.extra.get("load_official"))
    return model.eval(), net


# ---------------------------------------------------------------- what eval and infer work on


@dataclass
class Models:
    """A run's models, or one network from a file, ready for ``kdsr eval`` / ``kdsr infer``."""

    source: Path
    scale: int
    rows: dict[str, Branch]  # what ``kdsr eval`` scores: a run's report rows, or the file's network
    candidates: dict[str, Branch]  # what a policy chooses from: the last finished stage's trained branches
    config: RunConfig | None  # the run's config; None for a weights file
    device: str = "auto"
    # candidates' Multi-Adds per LR pixel at a 1280x720 output where the run's report or the export's
    # metadata counted them (kdsr.engine.infer.choices_for counts the others)
    macs_per_pixel: dict[str, float] = field(default_factory=dict)


def open_models(source: Path, backbone: str | None = None, scale: int | None = None, options: dict[str, Any] | None = None) -> Models:
    """A run directory or a weights file as :class:`Models`; ``backbone`` / ``scale`` / ``options`` only
    for a file."""
    source = Path(source)
    if source.is_dir():
        if backbone is not None or scale is not None or options:
            raise KdsrError(f"--backbone/--scale/--option describe a weights file; '{source}' is a run directory, drop them")
        config, stages = load_run(source)
        candidates = candidate_branches(stages)
        last = list(stages)[-1]
        counted = reported_macs(source, config, stages)
        macs = {name: counted[last, name] for name in candidates if (last, name) in counted}
        return Models(source, config.scale, report_rows(stages), candidates, config, config.device, macs)
    if not source.is_file():
        raise KdsrError(f"'{source}' does not exist; give a run directory or a weights file ({', '.join(WEIGHT_SUFFIXES)})")
    model, net = load_file(source, backbone, scale, options)
    branch = Branch(model)
    counted = {} if net.macs_per_lr_pixel is None else {source.stem: net.macs_per_lr_pixel}  # an export's own count
    return Models(source, net.scale, {source.stem: branch}, {source.stem: branch}, None, macs_per_pixel=counted)


def reported_macs(run_dir: Path, config: RunConfig, stages: dict[str, Stage]) -> dict[tuple[str, str], float]:
    """Multi-Adds per LR pixel of each trained ``(stage, branch)``, as the run's ``report.json`` counted
    them, where it counted them at a 1280x720 output (the convention routing prices branches at): reading
    them saves counting again on the meta device, about 0.5 s a branch and a 1 s import of torch._dynamo
    (its elementwise ops' meta kernels) at the start of every ``kdsr infer``. Empty without such a report."""
    report = read_report(run_dir)
    if report is None or tuple(config.profile.hr_size) != HR_720P:
        return {}
    h, w = lr_size_for(HR_720P, config.scale)
    rows = report.get("models", {})
    out = {}
    for name, stage in stages.items():
        for branch in stage.trainable:
            macs = rows.get(row_label(name, branch, len(stage.trainable)), {}).get("macs")
            if isinstance(macs, (int, float)) and macs > 0:
                out[name, branch] = macs / (h * w)
    return out


# ---------------------------------------------------------------- the public API


def load(
    path_or_run: str | Path,
    branch: str | None = None,
    stage: str | None = None,
    *,
    backbone: str | None = None,
    scale: int | None = None,
    options: dict[str, Any] | None = None,
) -> nn.Module:
    """A trained network as a plain ``nn.Module`` in eval mode, on the CPU: ``model(lr) -> sr``.

    ``path_or_run``: a run directory (``branch`` / ``stage`` pick the network; default: the last stage's
    first trained branch) or a weights file (an export is self-describing; a foreign checkpoint needs
    ``backbone`` and ``scale``, and ``options`` unless the defaults fit). A run's branch is rebuilt as its
    plain backbone (a CSSR width at its narrow width); a branch that cannot be, is returned as a module
    that calls it with its keyword arguments.
    """
    path = Path(path_or_run)
    if not path.is_dir():
        if branch is not None or stage is not None:
            raise KdsrError(f"branch/stage pick a network of a run directory; '{path}' is a file, drop them")
        return load_file(path, backbone, scale, options)[0]
    if backbone is not None or scale is not None or options:
        raise KdsrError(f"backbone/scale/options describe a weights file; '{path}' is a run directory, drop them")
    config, stages = load_run(path)
    stage, branch = pick_branch(path, stages, branch, stage)
    if has_plain(stages[stage], branch):
        return plain_branch(config, stages[stage], branch).build()
    return BranchModule(stages[stage].branches[branch]).eval()
