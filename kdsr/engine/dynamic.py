"""The report's dynamic-inference measurement: a budget policy routing patches over the final branches.

A switchable network is worth its branches only if routing spends less where images are easy
(Dynamic-CSD; ARM's calibrated thresholds). This measures what the run's own branches buy: the
``budget`` policy, calibrated on a few *training* images (never the eval sets), routes each LR patch
of the eval sets; PSNR, Multi-Adds and wall-clock time are compared with the full branch as it deploys
alone: one whole-image pass (memory-bounded tiles only where an image is too large for one).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch

from kdsr.branches import Branch
from kdsr.builtin.policies import Budget, Full
from kdsr.data import quantize, to_float
from kdsr.config import RunConfig
from kdsr.engine.build import Stage, build_eval_sets, build_metrics, build_pairs, candidate_branches
from kdsr.engine.evaluate import EvalSet, Metric
from kdsr.inference import Router

# Calibrating runs every branch on each image; training images are small, so 32 cost seconds. On a
# 3000-step Pro-CSD EDSR (bench/dynamic.py's run) a budget of 0.53 spent 0.25-0.33 of the Multi-Adds on
# Set5 / Set14 / B100 when calibrated on 4 T91 images, 0.34-0.46 on 32; the report says when it is missed.
CALIBRATION_IMAGES = 32


def measure_dynamic(
    branches: dict[str, Branch],
    eval_sets: Sequence[EvalSet],
    calibration: Sequence[tuple[str, torch.Tensor, torch.Tensor]],
    metrics: dict[str, Metric],
    scale: int,
    device: torch.device,
    budget: float | None = None,
    tile: int = 64,
    overlap: int = 16,
) -> dict[str, Any]:
    """Per eval set: the policy's PSNR (and the full branch's whole-image pass's), Multi-Adds and
    time fractions of the full branch, and the share of patches each branch served.

    ``budget`` (Multi-Adds fraction of the full branch) defaults to halfway between the cheapest
    branch and the full one, so it is reachable whatever the widths."""
    from kdsr.engine.infer import choices_for

    choices = choices_for(branches, scale)
    if budget is None:
        cheapest = min(c.macs_per_pixel for c in choices) / max(c.macs_per_pixel for c in choices)
        budget = round((1 + cheapest) / 2, 2)
    policy = Budget(budget, calibration, "redegradation", "patch", grid=None)  # grid fitted to the few images  # type: ignore[arg-type]
    routed = Router(branches, choices, policy, scale, tile, overlap, device=device)
    full = Router(branches, choices, Full(), scale, "auto", overlap, device=device)  # whole images where they fit
    psnr = next((fn for label, fn in metrics.items() if label.startswith("psnr")), None) or next(iter(metrics.values()))
    sets: dict[str, Any] = {}
    for eval_set in eval_sets:
        if not eval_set.pairs:
            continue
        first = to_float(eval_set.pairs[0][1])
        full(first)  # warm-up: the first calls pay allocations
        routed(first)
        scores, full_scores, patches = [], [], Counter()
        macs = full_macs = t_policy = t_full = 0.0
        for _, lr_u8, hr_u8 in eval_set.pairs:
            lr, hr = to_float(lr_u8), to_float(hr_u8)
            t0 = time.perf_counter()
            out = routed(lr)
            t1 = time.perf_counter()
            ref = full(lr)
            t2 = time.perf_counter()
            t_policy, t_full = t_policy + t1 - t0, t_full + t2 - t1
            scores.append(psnr(quantize(out.sr[0]), hr, scale))
            full_scores.append(psnr(quantize(ref.sr[0]), hr, scale))
            macs, full_macs = macs + out.macs, full_macs + ref.macs
            patches.update(out.tiles)
        n = sum(patches.values())
        sets[eval_set.label] = {
            "psnr": sum(scores) / len(scores),
            "full_psnr": sum(full_scores) / len(full_scores),
            "macs_fraction": macs / full_macs if full_macs else 1.0,
            "time_fraction": t_policy / t_full if t_full else 1.0,
            "patches": {c.name: patches.get(c.name, 0) / n for c in sorted(choices, key=lambda c: c.macs_per_pixel)},
        }
    return {
        "policy": "budget",
        "budget": budget,
        "measure": "redegradation",
        "per": "patch",
        "tile": tile,
        "overlap": overlap,
        "calibration": f"{len(calibration)} training image(s)",
        "expected": policy.expected,
        "sets": sets,
    }


def dynamic_inference(config: RunConfig, stages: dict[str, Stage], device: torch.device) -> dict[str, Any] | None:
    """The report's section: the budget policy over the final stage's branches, calibrated on the first
    ``CALIBRATION_IMAGES`` training images (:func:`measure_dynamic`); None for one branch or no eval set."""
    branches = candidate_branches(stages)
    if len(branches) < 2 or not config.data.eval:
        return None
    for b in branches.values():
        b.model.to(device)
    train = build_pairs(config, config.data.train, "data.train")
    calibration = [train[i] for i in range(min(CALIBRATION_IMAGES, len(train)))]
    result = measure_dynamic(branches, build_eval_sets(config), calibration, build_metrics(config), config.scale, device)
    result["stage"] = list(stages)[-1]
    return result
