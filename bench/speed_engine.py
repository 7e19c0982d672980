"""Engine overhead and CSD's step cost: kdsr's training step against hand-written loops doing the same maths.

Every variant of a case runs in this process on the same batch, in rotating order step by step so machine
noise hits all alike; figures are ratios of median step times to the case's baseline. Data loading is
excluded. Cases:

- ``output_kd``: EDSR-baseline teacher 64x16 (frozen) -> student 32x8, x4, batch 16, LR patch 24; baseline
  ``bare``, a hand-written loop (the ratio is the engine's overhead);
- ``csd``: CSD on a CSSR-Net (EDSR 64x8, widths 1.0 and 0.25, the quality suite's job): two branches of
  one network, L1 on both, 200 x contrastive loss through VGG-19 with K = 10 bicubic negatives, x4,
  batch 16, LR patch 12; baseline ``bare``, CSD's formula written out by hand with the same VGG module;
- ``csd_paper``: the official CSD recipe's step (EDSR 64x16, widths 1.0 + 0.25, x4, batch 16, LR patch 48,
  K = 10, lambda_CL 200); baseline ``official``, a loop with the official trainer's structure (every
  VGG pass under autograd, the positive detached after its pass, negatives ``lr[randperm(K)]``
  upsampled); variants kdsr as configured by default, with ``channels_last: true``, and with that plus
  the csd loss's ``vgg_precision: bf16``. design.md's target: kdsr's CSD step at most 0.5x the official
  one. Slow: about 25 s per step and variant, so it measures ``--paper-steps`` (3) after 2 warm-up steps.

Usage: python bench/speed_engine.py [--cases output_kd csd csd_paper] [--steps 30] [--paper-steps 3]
Writes results/speed_engine.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchlib import RESULTS, provenance, write_result
from kdsr.config import parse_config
from kdsr.engine.build import build_stage
from kdsr.engine.context import RunContext
from kdsr.engine.trainer import StageTrainer

Step = Callable[[torch.Tensor, torch.Tensor, int], object]

def cssr_csd_stage(n_resblocks: int, **csd_options: Any) -> dict[str, Any]:
    """CSD's stage: one CSSR-Net (EDSR 64 ch, widths 1.0 and 0.25), L1 on both branches, 200 x CL."""
    backbone = {"backbone": "edsr_baseline", "options": {"n_feats": 64, "n_resblocks": n_resblocks}}
    return {
        "student": {"constructor": "cssr", "options": {**backbone, "widths": [1.0, 0.25]}},
        "losses": [
            {"name": "l1", "student": "w1.0"},
            {"name": "l1", "student": "w0.25"},
            {"name": "csd", "student": "w0.25", "teacher": "w1.0", "weight": 200, "options": {"num_negatives": 10, **csd_options}},
        ],
    }


CASES: dict[str, dict[str, Any]] = {
    "output_kd": {
        "batch": 16,
        "lr_patch": 24,
        "stage": {
            "teacher": {"backbone": "edsr_baseline", "options": {"n_feats": 64, "n_resblocks": 16}},
            "student": {"backbone": "edsr_baseline", "options": {"n_feats": 32, "n_resblocks": 8}},
            "losses": [{"name": "output_kd", "options": {"alpha": 0.5}}],
        },
    },
    "csd": {"batch": 16, "lr_patch": 12, "stage": cssr_csd_stage(8)},
    "csd_paper": {"batch": 16, "lr_patch": 48, "stage": cssr_csd_stage(16)},
}


def kdsr_trainer(case: dict[str, Any], tmp: Path, device: torch.device = torch.device("cpu"), **stage_options: Any) -> StageTrainer:
    stage_cfg = {"name": "bench", "steps": 1, **case["stage"], **stage_options}
    config = parse_config({"scale": 4, "out_dir": str(tmp), "stages": [stage_cfg]})
    torch.manual_seed(0)
    stage = build_stage(config, 0, {})
    return StageTrainer(RunContext(config, tmp, device), stage, None, None, None, None)


def kdsr_step(tr: StageTrainer) -> Step:
    return lambda lr, hr, i: tr.train_step(lr, hr, i)


def bare_output_kd(tr: StageTrainer) -> Step:
    student = copy.deepcopy(tr.stage.branches["student"].model)
    teacher = copy.deepcopy(tr.stage.branches["teacher"].model)
    opt = torch.optim.Adam(student.parameters(), lr=1e-4)

    def step(lr: torch.Tensor, hr: torch.Tensor, i: int) -> float:
        with torch.no_grad():
            t = teacher(lr)
        s = student(lr)
        loss = 0.5 * F.l1_loss(s, hr) + 0.5 * F.l1_loss(s, t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def bare_csd(tr: StageTrainer, official: bool = False) -> Step:
    """CSD's step written out by hand. ``official``: the official trainer's structure (VGG passes under
    autograd, positive detached afterwards, negatives a shuffle of the first K LR patches)."""
    net = copy.deepcopy(tr.stage.branches["w1.0"].model)
    vgg = next(t.loss.features for t in tr.stage.terms if hasattr(t.loss, "features")).to(tr.device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    layer_weights, k = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0), 10

    def step(lr: torch.Tensor, hr: torch.Tensor, i: int) -> float:
        full = net(lr, width=1.0)
        slim = net(lr, width=0.25)
        anchor = vgg(slim * 255.0)
        if official:
            negatives = F.interpolate(lr[torch.randperm(k)], scale_factor=4, mode="bicubic", align_corners=False)
            positive = [f.detach() for f in vgg(full * 255.0)]
            negative = vgg(negatives * 255.0)
        else:
            with torch.no_grad():
                negatives = F.interpolate(lr[:k], scale_factor=4, mode="bicubic", align_corners=False)
                positive = vgg(full * 255.0)
                negative = vgg(negatives * 255.0)
        cl = 0.0
        for w, a, p, n in zip(layer_weights, anchor, positive, negative):
            cl = cl + w * (a - p).abs().mean() / (sum((a - n[j : j + 1]).abs().mean() for j in range(k)) + 1e-7)
        loss = F.l1_loss(full, hr) + F.l1_loss(slim, hr) + 200.0 * cl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def variants(name: str, case: dict[str, Any], tmp: Path, device: torch.device) -> tuple[str, dict[str, Step]]:
    """The case's baseline name and its step functions, baseline included."""
    tr = kdsr_trainer(case, tmp, device)
    if name == "output_kd":
        return "bare", {"kdsr": kdsr_step(tr), "bare": bare_output_kd(tr)}
    if name == "csd":
        return "bare", {"kdsr": kdsr_step(tr), "bare": bare_csd(tr)}
    channels_last = kdsr_trainer(case, tmp, device, channels_last=True)
    bf16_vgg = kdsr_trainer({**case, "stage": cssr_csd_stage(16, vgg_precision="bf16")}, tmp, device, channels_last=True)
    return "official", {
        "kdsr": kdsr_step(tr),
        "kdsr_channels_last": kdsr_step(channels_last),
        "kdsr_channels_last_bf16_vgg": kdsr_step(bf16_vgg),
        "official": bare_csd(tr, official=True),
    }


def measure(name: str, steps: int, warmup: int = 2, device: str = "cpu", case: dict[str, Any] | None = None) -> dict[str, Any]:
    """``case``: the case's settings (default ``CASES[name]``), e.g. smaller patches to check a script."""
    case, dev = case or CASES[name], torch.device(device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    with tempfile.TemporaryDirectory() as tmp:
        baseline, fns = variants(name, case, Path(tmp), dev)
        g = torch.Generator().manual_seed(0)
        b, p = case["batch"], case["lr_patch"]
        lr = torch.rand(b, 3, p, p, generator=g).to(dev)
        hr = torch.rand(b, 3, p * 4, p * 4, generator=g).to(dev)
        times: dict[str, list[float]] = {who: [] for who in fns}
        order = list(fns)
        for i in range(steps + warmup):
            for who in order[i % len(order) :] + order[: i % len(order)]:  # rotate who goes first
                sync()
                t0 = time.perf_counter()
                fns[who](lr, hr, i)
                sync()
                if i >= warmup:
                    times[who].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = {k: v / med[baseline] for k, v in med.items() if k != baseline}
    out = {"case": case, "baseline": baseline, "median_step_s": med, "ratio_to_baseline": ratio, "steps": steps, "device": str(dev)}
    if baseline == "bare":
        out["overhead"] = ratio["kdsr"] - 1.0
    shown = ", ".join(f"{k} {v:.3f}" for k, v in med.items())
    print(f"{name}: s/step {shown}; vs {baseline}: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratio.items()), flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--steps", type=int, default=30, help="measured steps per variant")
    p.add_argument("--paper-steps", type=int, default=3, help="measured steps per variant of csd_paper (~25 s each)")
    args = p.parse_args()
    path = RESULTS / "speed_engine.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    keep = {k: old[k] for k in ("machine", "commit", "dirty_tree", "date") if k in old}
    results = {name: {**keep, **case} for name, case in old.get("cases", {}).items()}  # cases not measured again stay, with their provenance
    for name in args.cases:
        results[name] = {**measure(name, args.paper_steps if name == "csd_paper" else args.steps), **provenance()}
    write_result("speed_engine", {"threads": torch.get_num_threads(), "cases": results})


if __name__ == "__main__":
    main()
