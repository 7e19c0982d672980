"""Peak memory of x4 inference to a 3840x2160 output with EDSR-baseline on CPU: tiled vs whole image.

Each variant runs in its own process; the peak resident set size (ru_maxrss of the child) is the
figure. Usage: python bench/memory_infer.py [--tile 128] [--overlap 16] [--out bench/results/memory_infer.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import sys, time, torch
from kdsr.plugins import registry
from kdsr.tiling import tiled_sr
mode, tile, overlap = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
model = registry("backbone").create("edsr_baseline", {}, scale=4).eval()
lr = torch.rand(1, 3, 540, 960)
t0 = time.perf_counter()
with torch.inference_mode():
    out = model(lr) if mode == "whole" else tiled_sr(model, lr, 4, tile=tile, overlap=overlap, batch=4)
print(time.perf_counter() - t0, tuple(out.shape))
"""


def run(mode: str, tile: int, overlap: int) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run([sys.executable, "-c", CHILD, mode, str(tile), str(overlap)], capture_output=True, text=True, check=True)
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    seconds, shape = proc.stdout.strip().split(" ", 1)
    return {"mode": mode, "peak_rss_gib": peak_kib / 2**20, "seconds": float(seconds), "output": shape, "monotone_max_before_gib": before / 2**20}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tile", type=int, default=128)
    p.add_argument("--overlap", type=int, default=16)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "memory_infer.json")
    args = p.parse_args()
    import torch

    # ru_maxrss of children is a running maximum: measure the smaller (tiled) first
    rows = [run("tiled", args.tile, args.overlap), run("whole", args.tile, args.overlap)]
    result = {
        "what": "EDSR-baseline x4, LR 960x540 -> HR 3840x2160, fp32, CPU, torch.inference_mode",
        "tile": args.tile,
        "overlap": args.overlap,
        "rows": rows,
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(), "torch": torch.__version__},
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "date": time.strftime("%Y-%m-%d"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    for r in rows:
        print(f"{r['mode']:6s} peak RSS {r['peak_rss_gib']:.2f} GiB, {r['seconds']:.1f} s, output {r['output']}")


if __name__ == "__main__":
    main()
