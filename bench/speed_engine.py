"""Engine overhead: kdsr's training step against a hand-written loop doing the same maths.

Both run in this process on the same batch, alternating step by step so machine noise hits both
alike; the figure is the ratio of median step times. Data loading is excluded from both.
Usage: python bench/speed_engine.py [--steps 30] [--out bench/results/speed_engine.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from kdsr.config import parse_config
from kdsr.engine.build import build_stage
from kdsr.engine.context import RunContext
from kdsr.engine.trainer import StageTrainer

SETUP = {
    "scale": 4,
    "batch": 16,
    "lr_patch": 24,
    "teacher": {"n_feats": 64, "n_resblocks": 16},
    "student": {"n_feats": 32, "n_resblocks": 8},
}


def kdsr_trainer(tmp: Path) -> StageTrainer:
    config = parse_config(
        {
            "scale": SETUP["scale"],
            "out_dir": str(tmp),
            "stages": [
                {
                    "name": "kd",
                    "steps": 1,
                    "teacher": {"backbone": "edsr_baseline", "options": SETUP["teacher"]},
                    "student": {"backbone": "edsr_baseline", "options": SETUP["student"]},
                    "losses": [{"name": "output_kd", "options": {"alpha": 0.5}}],
                }
            ],
        }
    )
    torch.manual_seed(0)
    stage = build_stage(config, 0, {})
    return StageTrainer(RunContext(config, tmp, torch.device("cpu")), stage, None, None, None, None)


def bare_step(student, teacher, opt, lr, hr) -> float:
    with torch.no_grad():
        t = teacher(lr)
    s = student(lr)
    loss = 0.5 * F.l1_loss(s, hr) + 0.5 * F.l1_loss(s, t)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "speed_engine.json")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tr = kdsr_trainer(Path(tmp))
        student = copy.deepcopy(tr.stage.branches["student"].model)
        teacher = copy.deepcopy(tr.stage.branches["teacher"].model)
        opt = torch.optim.Adam(student.parameters(), lr=1e-4)
        g = torch.Generator().manual_seed(0)
        s, b = SETUP["scale"], SETUP["batch"]
        lr = torch.rand(b, 3, SETUP["lr_patch"], SETUP["lr_patch"], generator=g)
        hr = torch.rand(b, 3, SETUP["lr_patch"] * s, SETUP["lr_patch"] * s, generator=g)
        times = {"kdsr": [], "bare": []}
        for i in range(args.steps + 3):
            for name in ("kdsr", "bare") if i % 2 == 0 else ("bare", "kdsr"):
                t0 = time.perf_counter()
                if name == "kdsr":
                    tr.train_step(lr, hr, i)
                else:
                    bare_step(student, teacher, opt, lr, hr)
                if i >= 3:  # warm-up
                    times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "what": "output-KD training step, EDSR-baseline teacher 64x16 (frozen) -> student 32x8, x4, batch 16, LR patch 24, fp32",
        "setup": SETUP,
        "median_step_s": med,
        "overhead": med["kdsr"] / med["bare"] - 1.0,
        "steps": args.steps,
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(), "torch": torch.__version__},
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "date": time.strftime("%Y-%m-%d"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"kdsr {med['kdsr']:.3f} s/step, bare {med['bare']:.3f} s/step, overhead {result['overhead']:+.1%}")


if __name__ == "__main__":
    main()
