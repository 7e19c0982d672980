"""Factories that build ``HeadedSR``: as a student constructor and as a registered backbone.

* Student constructor ``hkdsr``: heads on a new backbone from the registry (the HKDSR student, trained
  from scratch with its heads), or on a copy of the stage's teacher (head pre-training: load the full
  teacher as ``teacher:``, ``freeze_backbone: true``, train only the heads with ``hkdsr_heads_l1``).
  A later stage distils from it with ``teacher: {from_stage: <that stage>}``.
* Backbone ``hkdsr``: the same network by name, so a saved HKDSR teacher (``checkpoints/<stage>/
  final.safetensors``: ``backbone.*`` + ``heads.*``) loads in another run with ``weights:``; a plain
  checkpoint of the inner backbone (e.g. official ``RCAN_BIX4.pt``) also loads, the heads keeping
  their initialisation.

Either network exports as its plain backbone (``HeadedSR.to_plain``: the heads only serve training), and
a run's final weights of the student (``student.backbone.*`` + ``student.heads.*``) load as that backbone
with ``weights:`` (``kdsr.weights.strip_run_prefix`` takes the backbone's keys out of the file).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from kdsr import Branch
from kdsr.plugins import registry
from kdsr.weights import strip_run_prefix
from kdsr_hkdsr.heads import HeadedSR


def _build_backbone(name: str, options: dict[str, Any] | None, scale: int) -> nn.Module:
    """The inner backbone, its options checked against its own bounds; errors are reported under the
    config entry of this factory (``Registry.create_inner``)."""
    return registry("backbone").create_inner(name, options, scale=scale)


def _check_heads(heads: list[str] | None) -> None:
    """At least one head, each tap once (that each tap exists, ``HeadedSR`` checks)."""
    if heads is None:
        return
    if not heads:
        raise ValueError("heads: [] attaches no head; list at least one tap (e.g. [body.2, body.6]) or omit heads for the default")
    twice = next((t for i, t in enumerate(heads) if t in heads[:i]), None)
    if twice is not None:
        raise ValueError(f"heads lists tap '{twice}' twice; give each tap once")


def hkdsr_student(
    teacher: nn.Module | None,
    scale: int,
    backbone: str | None = None,
    options: dict[str, Any] | None = None,
    heads: list[str] | None = None,
    freeze_backbone: bool = False,
    name: str = "student",
) -> dict[str, Branch]:
    """HKDSR network with intermediate SR heads: a new backbone, or the teacher's copy (head pre-training)."""
    _check_heads(heads)
    if backbone is None:
        if teacher is None:
            raise ValueError("without 'backbone' the heads go on a copy of the teacher, but the stage has no teacher")
        if isinstance(teacher, HeadedSR):
            raise ValueError("the teacher already has HKDSR heads; give 'backbone' to build a new student")
        if options:
            raise ValueError("'options' apply to a new 'backbone'; the teacher's copy keeps its own")
        net = copy.deepcopy(teacher)
    else:
        net = _build_backbone(backbone, options, scale)
    net.train().requires_grad_(not freeze_backbone)
    return {name: Branch(HeadedSR(net, scale, heads, backbone_name=backbone, backbone_options=options))}


def hkdsr_backbone(
    scale: int, backbone: str = "rcan", options: dict[str, Any] | None = None, heads: list[str] | None = None
) -> HeadedSR:
    """A registered backbone with HKDSR intermediate SR heads (to load a saved HKDSR teacher by name)."""
    _check_heads(heads)
    return HeadedSR(_build_backbone(backbone, options, scale), scale, heads, backbone_name=backbone, backbone_options=options)


def load_official(module: HeadedSR, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A checkpoint of the inner backbone (any layout its own ``load_official`` accepts) -> this layout;
    the heads keep the module's current weights."""
    if all(k.split(".")[1:2] in (["backbone"], ["heads"]) for k in state):
        state = strip_run_prefix(state)  # a kdsr run's final weights: student.backbone.…
    if any(k.startswith(("backbone.", "heads.")) for k in state):
        return state  # this layout; kdsr reports whatever does not fit
    inner = state
    if module.backbone_name is not None:
        convert = registry("backbone").get(module.backbone_name).extra.get("load_official")
        if convert is not None:
            inner = convert(module.backbone, dict(state))
    out = {f"backbone.{k}": v for k, v in inner.items()}
    out.update({k: v.detach().clone() for k, v in module.state_dict().items() if k.startswith("heads.")})
    return out
