"""Peak memory (and time) of x4 inference with EDSR-baseline on the CPU through kdsr's inference path.

Cases, each in its own process (the figure is that child's peak RSS, ``ru_maxrss``):

* ``engine 4K``: LR 960x540 -> 3840x2160 by the router ``kdsr infer`` uses (automatic tiles, uint8
  output, PNG written from it), beside ``whole 4K``: one forward pass of the whole image (no PNG);
* ``engine 16K``: LR 3840x2160 -> 15360x8640, PNG written (issue 16's target: <= 2.5 GB peak RSS).

Usage: python bench/memory_infer.py [--overlap 16] [--tile auto|N] [--quick]; ``--quick`` runs tiny
sizes to check the script. Writes results/memory_infer.json (results/memory_infer_quick.json).
"""

from __future__ import annotations

import argparse
import sys

from benchlib import python_child, write_result

CHILD = r"""
import sys, tempfile, time, torch
from pathlib import Path
from kdsr import Branch
from kdsr.api import router_for
from kdsr.data import write_image
from kdsr.plugins import registry
mode, h, w, tile, overlap = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
tile = tile if tile == "auto" else int(tile)
torch.manual_seed(0)
model = registry("backbone").create("edsr_baseline", {}, scale=4).eval()
lr = torch.rand(1, 3, h, w)
t0 = time.perf_counter()
if mode == "whole":
    with torch.inference_mode():
        out = model(lr)
    shape, seconds, write_s = tuple(out.shape[-2:]), time.perf_counter() - t0, 0.0
else:
    routed = router_for(Branch(model), 4, tile, overlap)(lr)
    seconds = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        t1 = time.perf_counter()
        write_image(Path(tmp) / "sr.png", routed.image)
        write_s = time.perf_counter() - t1
    shape = routed.image.shape[:2]
print(seconds, write_s, f"{shape[1]}x{shape[0]}")
"""

CASES = {  # name: (mode, LR height, LR width)
    "engine 4K": ("engine", 540, 960),
    "whole 4K": ("whole", 540, 960),
    "engine 16K": ("engine", 2160, 3840),
}
QUICK = {"engine tiny": ("engine", 54, 96), "whole tiny": ("whole", 54, 96)}


def run(name: str, mode: str, h: int, w: int, tile: str, overlap: int) -> dict:
    res = python_child(CHILD, mode, str(h), str(w), tile, str(overlap))
    if res["rc"] != 0:
        sys.exit(f"the '{name}' inference child failed (exit {res['rc']})")
    seconds, write_s, output = res["stdout"].strip().splitlines()[-1].split(" ")
    return {"case": name, "mode": mode, "lr": f"{w}x{h}", "output": output, "peak_rss_gib": res["peak_rss_gib"],
            "seconds": float(seconds), "png_write_s": float(write_s)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tile", default="auto", help="router tile (default auto, as kdsr infer)")
    p.add_argument("--overlap", type=int, default=16)
    p.add_argument("--quick", action="store_true", help="tiny sizes: check the script, measure nothing")
    args = p.parse_args()
    rows = [run(name, *case, args.tile, args.overlap) for name, case in (QUICK if args.quick else CASES).items()]
    by = {r["case"]: r for r in rows}
    result = {
        "what": "EDSR-baseline x4, fp32, CPU; engine = kdsr's router (uint8 output, PNG written), whole = one forward pass",
        "tile": args.tile,
        "overlap": args.overlap,
        "rows": rows,
    }
    if "engine 4K" in by:
        result["tiled_over_whole_4k"] = by["engine 4K"]["seconds"] / by["whole 4K"]["seconds"]
        result["peak_16k_gib"] = by["engine 16K"]["peak_rss_gib"]
        result["targets"] = {"tiled_over_whole_4k": "<= 1.1", "peak_16k_gib": "<= 2.5 (2.33 GiB = 2.5 GB)"}
    write_result("memory_infer_quick" if args.quick else "memory_infer", result)
    for r in rows:
        print(f"{r['case']:11s} {r['lr']:>9s} -> {r['output']:>11s}: peak RSS {r['peak_rss_gib']:.2f} GiB, "
              f"{r['seconds']:.1f} s (+ PNG {r['png_write_s']:.1f} s)")


if __name__ == "__main__":
    main()
