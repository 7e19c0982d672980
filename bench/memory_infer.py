"""Peak memory of x4 inference to a 3840x2160 output with EDSR-baseline on CPU: tiled vs whole image.

Each variant runs in its own process; the peak resident set size (ru_maxrss of the child) is the
figure. Usage: python bench/memory_infer.py [--tile 128] [--overlap 16]; writes results/memory_infer.json.
"""

from __future__ import annotations

import argparse
import sys

from benchlib import python_child, write_result

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
    res = python_child(CHILD, mode, str(tile), str(overlap))
    if res["rc"] != 0:
        sys.exit(f"the {mode} inference child failed (exit {res['rc']})")
    seconds, shape = res["stdout"].strip().split(" ", 1)
    return {"mode": mode, "peak_rss_gib": res["peak_rss_gib"], "seconds": float(seconds), "output": shape}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tile", type=int, default=128)
    p.add_argument("--overlap", type=int, default=16)
    args = p.parse_args()
    rows = [run("tiled", args.tile, args.overlap), run("whole", args.tile, args.overlap)]
    what = "EDSR-baseline x4, LR 960x540 -> HR 3840x2160, fp32, CPU, torch.inference_mode"
    write_result("memory_infer", {"what": what, "tile": args.tile, "overlap": args.overlap, "rows": rows})
    for r in rows:
        print(f"{r['mode']:6s} peak RSS {r['peak_rss_gib']:.2f} GiB, {r['seconds']:.1f} s, output {r['output']}")


if __name__ == "__main__":
    main()
