"""Engine overhead: kdsr's training step against a hand-written loop doing the same maths.

Both run in this process on the same batch, alternating step by step so machine noise hits both
alike; the figure is the ratio of median step times. Data loading is excluded from both. Cases:

- ``output_kd``: EDSR-baseline teacher 64x16 (frozen) -> student 32x8, x4, batch 16, LR patch 24;
- ``csd``: CSD on a CSSR-Net (EDSR 64x8, widths 1.0 and 0.25, the quality suite's job): two branches of
  one network, L1 on both, 200 x contrastive loss through VGG-19 with K = 10 bicubic negatives, x4,
  batch 16, LR patch 12. The bare loop writes CSD's formula out by hand with the same VGG module.

Usage: python bench/speed_engine.py [--cases output_kd csd] [--steps 30]
Writes results/speed_engine.json.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchlib import write_result
from kdsr.config import parse_config
from kdsr.engine.build import build_stage
from kdsr.engine.context import RunContext
from kdsr.engine.trainer import StageTrainer

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
    "csd": {
        "batch": 16,
        "lr_patch": 12,
        "stage": {
            "student": {
                "constructor": "cssr",
                "options": {"backbone": "edsr_baseline", "options": {"n_feats": 64, "n_resblocks": 8}, "widths": [1.0, 0.25]},
            },
            "losses": [
                {"name": "l1", "student": "w1.0"},
                {"name": "l1", "student": "w0.25"},
                {"name": "csd", "student": "w0.25", "teacher": "w1.0", "weight": 200, "options": {"num_negatives": 10}},
            ],
        },
    },
}


def kdsr_trainer(case: dict[str, Any], tmp: Path) -> StageTrainer:
    config = parse_config({"scale": 4, "out_dir": str(tmp), "stages": [{"name": "bench", "steps": 1, **case["stage"]}]})
    torch.manual_seed(0)
    stage = build_stage(config, 0, {})
    return StageTrainer(RunContext(config, tmp, torch.device("cpu")), stage, None, None, None, None)


def bare_output_kd(tr: StageTrainer) -> Callable[[torch.Tensor, torch.Tensor], float]:
    student = copy.deepcopy(tr.stage.branches["student"].model)
    teacher = copy.deepcopy(tr.stage.branches["teacher"].model)
    opt = torch.optim.Adam(student.parameters(), lr=1e-4)

    def step(lr: torch.Tensor, hr: torch.Tensor) -> float:
        with torch.no_grad():
            t = teacher(lr)
        s = student(lr)
        loss = 0.5 * F.l1_loss(s, hr) + 0.5 * F.l1_loss(s, t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def bare_csd(tr: StageTrainer) -> Callable[[torch.Tensor, torch.Tensor], float]:
    net = copy.deepcopy(tr.stage.branches["w1.0"].model)
    vgg = next(t.loss.features for t in tr.stage.terms if hasattr(t.loss, "features"))
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    layer_weights, k = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0), 10

    def step(lr: torch.Tensor, hr: torch.Tensor) -> float:
        full = net(lr, width=1.0)
        slim = net(lr, width=0.25)
        bicubic = F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False)
        anchor = vgg(slim * 255.0)
        with torch.no_grad():
            positive = vgg(full * 255.0)
            negative = vgg(bicubic[:k] * 255.0)
        cl = 0.0
        for w, a, p, n in zip(layer_weights, anchor, positive, negative):
            cl = cl + w * (a - p).abs().mean() / (sum((a - n[i : i + 1]).abs().mean() for i in range(k)) + 1e-7)
        loss = F.l1_loss(full, hr) + F.l1_loss(slim, hr) + 200.0 * cl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


BARE = {"output_kd": bare_output_kd, "csd": bare_csd}


def measure(name: str, steps: int) -> dict[str, Any]:
    case = CASES[name]
    with tempfile.TemporaryDirectory() as tmp:
        tr = kdsr_trainer(case, Path(tmp))
        bare = BARE[name](tr)
        g = torch.Generator().manual_seed(0)
        b, p = case["batch"], case["lr_patch"]
        lr = torch.rand(b, 3, p, p, generator=g)
        hr = torch.rand(b, 3, p * 4, p * 4, generator=g)
        times: dict[str, list[float]] = {"kdsr": [], "bare": []}
        for i in range(steps + 3):
            for who in ("kdsr", "bare") if i % 2 == 0 else ("bare", "kdsr"):
                t0 = time.perf_counter()
                if who == "kdsr":
                    tr.train_step(lr, hr, i)
                else:
                    bare(lr, hr)
                if i >= 3:  # warm-up
                    times[who].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {"case": case, "median_step_s": med, "overhead": med["kdsr"] / med["bare"] - 1.0, "steps": steps}
    print(f"{name}: kdsr {med['kdsr']:.3f} s/step, bare {med['bare']:.3f} s/step, overhead {out['overhead']:+.1%}", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--steps", type=int, default=30)
    args = p.parse_args()
    results = {name: measure(name, args.steps) for name in args.cases}
    write_result("speed_engine", {"threads": torch.get_num_threads(), "cases": results})


if __name__ == "__main__":
    main()
