"""Evaluation: every branch (and bicubic) on every eval set, scored on 8-bit outputs.

An image a metric cannot score (e.g. smaller than SSIM's 11x11 window after shaving) is skipped
with a warning naming it, for every branch alike, so one odd file never aborts an evaluation that
comes after hours of training; the means cover the images that were scored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import logging
from dataclasses import dataclass

import torch
from kdsr.branches import Branch
from kdsr.data import bicubic_upscale, quantize, to_float
from kdsr.errors import KdsrError
from kdsr.metrics import BICUBIC
from kdsr.progress import Progress
from kdsr.runtime import FP32, Runtime, prepare

log = logging.getLogger("kdsr")


@dataclass
class EvalSet:
    """A named set of (name, lr_uint8, hr_uint8) pairs."""

    label: str
    pairs: Sequence[tuple[str, torch.Tensor, torch.Tensor]]


Metric = Callable[[torch.Tensor, torch.Tensor, int], float]


def self_ensemble(fn: Callable[[torch.Tensor], torch.Tensor], lr: torch.Tensor) -> torch.Tensor:
    """Average of the 8 flips/rotations (the '+' of EDSR+ and CSD's Table 1)."""
    outs = []
    for k in range(4):
        for flip in (False, True):
            x = torch.rot90(lr, k, (-2, -1))
            x = x.flip(-1) if flip else x
            y = fn(x)
            y = y.flip(-1) if flip else y
            outs.append(torch.rot90(y, -k, (-2, -1)))
    return torch.stack(outs).mean(0)


@torch.no_grad()
def super_resolve(branch: Callable[[torch.Tensor], torch.Tensor], lr: torch.Tensor, device: torch.device, ensemble: bool = False) -> torch.Tensor:
    """SR of one LR image (3xhxw float) as a quantised 3xHxW float tensor on the CPU."""
    x = lr.unsqueeze(0).to(device)
    y = self_ensemble(branch, x) if ensemble else branch(x)
    return quantize(y[0].float().cpu())


def evaluate(
    branches: dict[str, Branch],
    sets: Sequence[EvalSet],
    metrics: dict[str, Metric],
    scale: int,
    device: torch.device,
    bicubic: bool = True,
    ensemble: bool = False,
    progress: bool = True,
    runtime: Runtime = FP32,
) -> dict[str, dict[str, dict[str, float]]]:
    """``{branch: {set: {metric: mean}}}``; branch ``bicubic`` is MATLAB-bicubic upscaling. Branches run
    through the inference engine (:func:`kdsr.runtime.prepare`) under ``runtime``."""
    results: dict[str, dict[str, dict[str, float]]] = {}
    models = {m: m.training for m in {id(b.model): b.model for b in branches.values()}.values()}
    for m in models:
        m.eval()
    try:
        copies: dict = {}
        runners = {n: prepare(b, runtime, device, copies) for n, b in branches.items()}
        names = ([BICUBIC] if bicubic else []) + list(branches)
        total = sum(len(s.pairs) for s in sets) * len(names)
        bar = Progress(total, "eval", "image", enabled=progress, leave=False)
        skipped: set[tuple[str, str]] = set()  # (set, image): unscorable, left out for every branch
        for name in names:
            for eval_set in sets:
                sums, n = dict.fromkeys(metrics, 0.0), 0
                for image, lr_u8, hr_u8 in eval_set.pairs:
                    if (eval_set.label, image) in skipped:
                        bar.update(1)
                        continue
                    lr, hr = to_float(lr_u8), to_float(hr_u8)
                    if name == BICUBIC:
                        sr = quantize(bicubic_upscale(lr, scale).clamp(0, 1))
                    else:
                        sr = super_resolve(runners[name], lr, device, ensemble)
                    try:
                        scores = {m: fn(sr, hr, scale) for m, fn in metrics.items()}
                    except KdsrError as exc:
                        log.warning("eval set '%s': skipping image '%s' (%s)", eval_set.label, image, exc)
                        skipped.add((eval_set.label, image))
                        bar.update(1)
                        continue
                    for m, v in scores.items():
                        sums[m] += v
                    n += 1
                    bar.update(1)  # after the image: the rate and ETA count finished work
                if n == 0 and eval_set.pairs:
                    log.warning("eval set '%s': no image could be scored; it has no results", eval_set.label)
                    continue
                results.setdefault(name, {})[eval_set.label] = {m: v / max(n, 1) for m, v in sums.items()}
        bar.close()
    finally:
        for m, was_training in models.items():
            m.train(was_training)
    return results


@torch.no_grad()
def sample_crops(
    branches: dict[str, Branch], eval_set: EvalSet, scale: int, device: torch.device, lr_size: int = 48
) -> dict[str, torch.Tensor]:
    """Centre crops (3xHxW in [0, 1]) of the first image of ``eval_set``: HR, bicubic and each branch's SR.

    The branches see only the ``lr_size`` LR crop, so the crop costs a few forward passes of a patch
    (its border lacks context: for looking at, not for scoring).
    """
    _, lr_u8, hr_u8 = eval_set.pairs[0]
    lr, hr = to_float(lr_u8), to_float(hr_u8)
    h, w = lr.shape[-2:]
    ch, cw = min(lr_size, h), min(lr_size, w)
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = lr[:, top : top + ch, left : left + cw]
    out = {
        "hr": hr[:, top * scale : (top + ch) * scale, left * scale : (left + cw) * scale],
        BICUBIC: quantize(bicubic_upscale(crop, scale).clamp(0, 1)),
    }
    models = {id(b.model): b.model for b in branches.values()}
    modes = {k: m.training for k, m in models.items()}
    try:
        for m in models.values():
            m.eval()
        for name, branch in branches.items():
            out[name] = super_resolve(branch, crop, device)
    finally:
        for k, m in models.items():
            m.train(modes[k])
    return out
