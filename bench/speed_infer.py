"""Inference latency per backbone and width at a 1280x720 output, against the machine's matmul peak.

The peak is measured here (best of several large ``torch.mm`` calls, fp32 and bf16) because it is the
physical limit a convolution can reach on this CPU; a model's achieved rate is its fvcore Multi-Adds
divided by its median latency, reported as a fraction of that peak.

Models: EDSR-baseline (64 x 16, x4) at widths 1.0 / 0.75 / 0.5 / 0.25, both as a weight-shared CSSR-Net
branch (what a switchable model runs) and as an independent network of that width; then the other zoo
backbones at their default sizes. Variants for the EDSR widths: fp32, bf16 (autocast), channels_last,
``torch.compile`` (skipped with a reason where it fails); the other backbones run fp32 only.

Usage: python bench/speed_infer.py [--scale 4] [--repeats 3] [--no-compile] [--backbones carn imdn ...]
Writes results/speed_infer.json and .md; run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from typing import Any

import torch
from torch import nn

from benchlib import RESULTS, write_result
from kdsr.branches import Branch
from kdsr.plugins import registry
from kdsr.profiling import lr_size_for, measure_latency, profile_macs
from kdsr.report import BranchModule

HR = (720, 1280)
WIDTHS = (1.0, 0.75, 0.5, 0.25)
OTHER_BACKBONES = ("carn", "carn_m", "imdn", "imdn_rtc", "swinir_light")


def matmul_peak(dtype: torch.dtype, n: int = 4096, repeats: int = 5) -> float:
    """Best achieved multiply-adds per second of an n x n x n matmul (the CPU's practical peak)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return n**3 / best


def _timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def edsr_models(scale: int) -> list[tuple[str, float, nn.Module]]:
    backbones, students = registry("backbone"), registry("student")
    torch.manual_seed(0)
    shared = students.create("cssr", {"backbone": "edsr_baseline", "widths": list(WIDTHS)}, teacher=None, scale=scale)
    out = []
    for w in WIDTHS:
        out.append((f"cssr edsr_baseline w{w}", w, BranchModule(shared[f"w{w}"]).eval()))
        net = backbones.create("edsr_baseline", {"n_feats": int(64 * w)}, scale=scale).eval()
        out.append((f"edsr_baseline {int(64 * w)} ch", w, net))
    return out


def variant(model: nn.Module, name: str) -> tuple[nn.Module, contextlib.AbstractContextManager, torch.memory_format]:
    if name == "bf16":
        return model, torch.autocast("cpu", dtype=torch.bfloat16), torch.contiguous_format
    if name == "channels_last":
        return model.to(memory_format=torch.channels_last), contextlib.nullcontext(), torch.channels_last
    if name == "compile":
        return torch.compile(model), contextlib.nullcontext(), torch.contiguous_format
    return model, contextlib.nullcontext(), torch.contiguous_format


def measure(label: str, model: nn.Module, var: str, scale: int, repeats: int, peaks: dict[str, float], hr: tuple[int, int] = HR) -> dict[str, Any]:
    lr_size = lr_size_for(hr, scale)
    macs = profile_macs(model, lr_size).total
    x = torch.rand(1, 3, *lr_size)
    run_model, ctx, fmt = variant(model, var)
    x = x.contiguous(memory_format=fmt)
    row: dict[str, Any] = {"model": label, "variant": var, "macs": macs}
    try:
        t0 = time.perf_counter()
        with ctx:
            lat = measure_latency(run_model, x, repeats=repeats, warmup=1)
        row["first_call_and_timing_s"] = time.perf_counter() - t0
    except Exception as exc:  # compile backends fail in many ways; record why and go on
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        print(f"{label:32s} {var:13s} failed: {row['error']}", flush=True)
        return row
    finally:
        model.to(memory_format=torch.contiguous_format)  # the next variant starts from the default layout
    peak = peaks["bf16" if var == "bf16" else "fp32"]
    row.update(latency_s=lat.median_s, p90_s=lat.p90_s, macs_per_s=macs / lat.median_s, fraction_of_peak=macs / lat.median_s / peak)
    print(f"{label:32s} {var:13s} {lat.median_s:7.3f} s  {macs / 1e9:7.1f} G  {row['fraction_of_peak']:6.1%} of peak", flush=True)
    return row


def markdown(result: dict[str, Any]) -> str:
    p = result["matmul_peak_macs_per_s"]
    lines = [
        f"# Inference latency at {result['hr_size'][1]}x{result['hr_size'][0]} output (x{result['scale']}, batch 1, {result['threads']} threads)",
        "",
        f"Matmul peak measured here: fp32 {p['fp32'] / 1e9:.0f} G Multi-Adds/s, bf16 {p['bf16'] / 1e9:.0f} G Multi-Adds/s.",
        "",
        "| model | variant | Multi-Adds (G) | latency (s) | achieved G Multi-Adds/s | % of matmul peak |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['variant']} | {r['macs'] / 1e9:.1f} | failed: {r['error']} | - | - |")
        else:
            lines.append(
                f"| {r['model']} | {r['variant']} | {r['macs'] / 1e9:.1f} | {r['latency_s']:.3f} | {r['macs_per_s'] / 1e9:.1f} | {r['fraction_of_peak']:.1%} |"
            )
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for prefix, style in (("cssr", "-o"), ("edsr_baseline", "--s")):
        for var in result["variants"]:
            pts = sorted((r["width"], r["latency_s"]) for r in result["rows"] if r.get("width") and r["model"].startswith(prefix) and r["variant"] == var and "error" not in r)
            if pts:
                ax.plot(*zip(*pts), style, label=f"{'CSSR branch' if prefix == 'cssr' else 'independent'} {var}")
    ax.set_xlabel("width")
    ax.set_ylabel(f"latency (s) at {result['hr_size'][1]}x{result['hr_size'][0]} output")
    ax.set_yscale("log")
    ax.set_title(f"EDSR-baseline x{result['scale']}: latency vs width")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--hr", type=int, nargs=2, default=HR, metavar=("H", "W"), help="output size (default 720 1280)")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--backbones", nargs="*", default=list(OTHER_BACKBONES))
    args = p.parse_args()
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(f"matmul peak: fp32 {peaks['fp32'] / 1e9:.0f} G, bf16 {peaks['bf16'] / 1e9:.0f} G Multi-Adds/s", flush=True)
    variants = ["fp32", "bf16", "channels_last"] + ([] if args.no_compile else ["compile"])
    rows = []
    for label, width, model in edsr_models(args.scale):
        for var in variants:
            rows.append({**measure(label, model, var, args.scale, args.repeats, peaks, tuple(args.hr)), "width": width})
    for name in args.backbones:
        torch.manual_seed(0)
        model = registry("backbone").create(name, {}, scale=args.scale).eval()
        rows.append(measure(name, model, "fp32", args.scale, args.repeats, peaks, tuple(args.hr)))
    result = {"scale": args.scale, "hr_size": tuple(args.hr), "threads": torch.get_num_threads(), "variants": variants, "matmul_peak_macs_per_s": peaks, "rows": rows}
    write_result("speed_infer", result, markdown(result))
    plot(result, RESULTS / "speed_infer_latency_vs_width.png")
    print(markdown(result))


if __name__ == "__main__":
    main()
