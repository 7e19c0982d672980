"""Evaluation: every branch (and bicubic) on every eval set, scored on 8-bit outputs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm import tqdm

from kdsr.branches import Branch
from kdsr.data import bicubic_upscale, quantize, to_float


@dataclass
class EvalSet:
    """A named set of (name, lr_uint8, hr_uint8) pairs."""

    label: str
    pairs: Sequence[tuple[str, torch.Tensor, torch.Tensor]]


Metric = Callable[[torch.Tensor, torch.Tensor, int], float]
BICUBIC = "bicubic"


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
def super_resolve(branch: Branch, lr: torch.Tensor, device: torch.device, ensemble: bool = False) -> torch.Tensor:
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
) -> dict[str, dict[str, dict[str, float]]]:
    """``{branch: {set: {metric: mean}}}``; branch ``bicubic`` is MATLAB-bicubic upscaling."""
    results: dict[str, dict[str, dict[str, float]]] = {}
    models = {m: m.training for m in {id(b.model): b.model for b in branches.values()}.values()}
    for m in models:
        m.eval()
    try:
        names = ([BICUBIC] if bicubic else []) + list(branches)
        total = sum(len(s.pairs) for s in sets) * len(names)
        bar = tqdm(total=total, desc="eval", leave=False, disable=None if progress else True)
        for name in names:
            for eval_set in sets:
                sums = dict.fromkeys(metrics, 0.0)
                for _, lr_u8, hr_u8 in eval_set.pairs:
                    lr, hr = to_float(lr_u8), to_float(hr_u8)
                    if name == BICUBIC:
                        sr = quantize(bicubic_upscale(lr, scale).clamp(0, 1))
                    else:
                        sr = super_resolve(branches[name], lr, device, ensemble)
                    for m, fn in metrics.items():
                        sums[m] += fn(sr, hr, scale)
                    bar.update(1)
                n = max(len(eval_set.pairs), 1)
                results.setdefault(name, {})[eval_set.label] = {m: v / n for m, v in sums.items()}
        bar.close()
    finally:
        for m, was_training in models.items():
            m.train(was_training)
    return results
