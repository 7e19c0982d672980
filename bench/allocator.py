"""What the default ``KDSR_ALLOCATOR=reuse`` (kdsr/allocator.py: glibc keeps freed tensors' memory) is worth
over ``thp`` (huge pages, glibc's malloc defaults; kdsr's default before the dynamic bench's time fractions):
the same jobs under each, each in its own process, the two settings alternating so that a drift of the
machine hits both.

Jobs (CPU, 2 threads, EDSR-baseline x4), in this order, so inference meets glibc as a fresh ``kdsr infer``
process does (a training step first would have tuned glibc's mmap threshold):
* ``infer``: median forward pass under inference mode to a 1280x720 output, 64 and 16 channels (the
  zoo's strips on), page faults per forward;
* ``patch``: single 52x52 LR windows of a 16-channel network (a routed 48 px patch with its context);
* ``tiled 4K``: kdsr's router over a 960x540 LR (automatic tiles, 8-bit output); peak RSS so far;
* ``train``: median training step (L1, Adam) at batch 16, LR 48 px, at 64 and at 16 channels; peak RSS.

Usage: python bench/allocator.py [--pairs 3] [--quick]. Writes results/allocator.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

from benchlib import python_child, write_result

CHILD = r"""
import json, resource, statistics, sys, time
import kdsr, torch
from kdsr import Branch, allocator
from kdsr.api import router_for
from kdsr.plugins import registry
quick = sys.argv[1] == "1"
torch.manual_seed(0)
out = {"mallopt": allocator.state["mallopt"]}
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
# inference first, as in a fresh `kdsr infer` process (a training step before it would tune glibc's thresholds)
for ch in (64, 16):
    net = registry("backbone").create("edsr_baseline", {"n_feats": ch}, scale=4).eval().to(memory_format=torch.channels_last)
    lr = torch.rand(1, 3, 18 if quick else 180, 32 if quick else 320).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        for _ in range(2):
            net(lr)
        times, f0 = [], faults()
        for _ in range(3 if quick else 9):
            t0 = time.perf_counter()
            net(lr)
            times.append(time.perf_counter() - t0)
    out[f"infer {ch} ch s"] = statistics.median(times)
    out[f"infer {ch} ch faults"] = (faults() - f0) / len(times)
# what per-patch routing runs: single 52x52 LR windows (a 48 px patch and its context) of a narrow branch
net = registry("backbone").create("edsr_baseline", {"n_feats": 16}, scale=4).eval().to(memory_format=torch.channels_last)
patch = torch.rand(1, 3, 52, 52).contiguous(memory_format=torch.channels_last)
with torch.inference_mode():
    for _ in range(3):
        net(patch)
    times = []
    for _ in range(5 if quick else 30):
        t0 = time.perf_counter()
        net(patch)
        times.append(time.perf_counter() - t0)
out["patch 52 px 16 ch ms"] = statistics.median(times) * 1e3
net = registry("backbone").create("edsr_baseline", {}, scale=4).eval()
router = router_for(Branch(net), 4, "auto", 16)
lr = torch.rand(1, 3, 54 if quick else 540, 96 if quick else 960)
router(lr)
t0 = time.perf_counter()
router(lr)
out["tiled 4K s"] = time.perf_counter() - t0
out["peak_rss_infer_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
for ch in (64, 16):
    net = registry("backbone").create("edsr_baseline", {"n_feats": ch}, scale=4)
    opt = torch.optim.Adam(net.parameters(), 1e-4)
    x, y = torch.rand(16, 3, 12 if quick else 48, 12 if quick else 48), None
    times = []
    for _ in range(3 if quick else 8):
        t0 = time.perf_counter()
        sr = net(x)
        y = torch.rand_like(sr) if y is None else y
        loss = (sr - y).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    out[f"train {ch} ch s"] = statistics.median(times[1:])
out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(json.dumps(out))
"""

SETTINGS = {"reuse": {"KDSR_ALLOCATOR": "reuse"}, "thp": {"KDSR_ALLOCATOR": "thp"}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=3, help="alternating (reuse, thp) process pairs")
    p.add_argument("--quick", action="store_true", help="tiny sizes: check the script, measure nothing")
    args = p.parse_args()
    runs: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    for i in range(args.pairs):
        for name in (SETTINGS if i % 2 == 0 else reversed(SETTINGS)):  # alternate which goes first
            res = python_child(CHILD, "1" if args.quick else "0", env=SETTINGS[name])
            if res["rc"] != 0:
                sys.exit(f"the '{name}' child failed (exit {res['rc']})")
            runs[name].append(json.loads(res["stdout"].strip().splitlines()[-1]))
            print(name, runs[name][-1], flush=True)
    keys = [k for k in runs["reuse"][0] if k != "mallopt"]
    med = {name: {k: statistics.median(r[k] for r in rs) for k in keys} for name, rs in runs.items()}
    rows = ["| job | reuse (default) | thp | thp / reuse |", "|---|---|---|---|"]
    for k in keys:
        a, b = med["reuse"][k], med["thp"][k]
        rows.append(f"| {k} | {a:.4g} | {b:.4g} | {b / a:.2f} |" if a else f"| {k} | {a:.4g} | {b:.4g} | - |")
    md = f"# Allocator: the default KDSR_ALLOCATOR=reuse vs thp ({args.pairs} alternating process pairs, medians)\n\n" + "\n".join(rows) + "\n"
    write_result("allocator_quick" if args.quick else "allocator", {"pairs": args.pairs, "runs": runs, "median": med}, md)
    print(md)


if __name__ == "__main__":
    main()
