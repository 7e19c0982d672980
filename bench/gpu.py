"""Issue 16's measurements on a CUDA GPU, in one process: run it whenever a GPU machine is lent.

* ``paths``: EDSR-baseline x4 to 1280x720, every width (CSSR-Net branches 1.0 / 0.5 / 0.25 and independent
  networks, ``speed_infer.models``): a plain eager call in fp32 / fp16 / bf16 autocast, each contiguous and
  channels_last; kdsr's inference engine (``kdsr.runtime.prepare``: the runner alone, GPU tensor in and
  out; and the router as ``kdsr infer`` runs it: CPU LR in, uint8 image out) in fp32 and bf16 (the
  engine offers no fp16); ``torch.compile`` (default mode) of the engine's fp32 channels_last network.
  Fractions of the matmul peak measured in the same run (fp32 rows against the TF32 peak when cuDNN may
  use TF32, torch's default).
* ``widths``: speed-up of the 0.5 / 0.25 branches over full width (router fp32) against their Multi-Adds ratio.
* ``tiled_4k``: the router's automatic tiles at a 3840x2160 output against one whole-image pass (fp32, bf16).
* ``csd_paper``: CSD's paper-recipe training step, kdsr's variants beside the official trainer's structure
  (``speed_engine.measure`` on the GPU).

Timings synchronise CUDA around every call (``kdsr.profiling.measure_latency``, ``speed_engine.measure``).
Never needed by tests. ``--quick --device cpu`` runs the same code at tiny sizes on the CPU to check the
script (results/gpu_quick.json; its numbers mean nothing).

Usage: python bench/gpu.py [--repeats 10] [--paper-steps 10] | --quick --device cpu
Writes results/gpu.json and gpu.md.
"""

from __future__ import annotations

import argparse
import copy
import sys
from contextlib import nullcontext
from typing import Any

import torch

from benchlib import write_result
from kdsr.api import router_for
from kdsr.branches import Branch
from kdsr.profiling import lr_size_for, measure_latency, profile_macs
from kdsr.report import BranchModule
from kdsr.runtime import Runtime, inference_copy, prepare
from speed_engine import CASES, measure
from speed_infer import HR, HR_4K, WIDTHS, attempt, latency, models, width_ratios

AUTOCAST = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
ENGINE = ("fp32", "bf16")  # the precisions kdsr.runtime offers on torch
NO_CUDA = "bench/gpu.py needs a CUDA GPU (torch.cuda.is_available() is False); run it on a GPU machine, or --quick --device cpu to check the script"


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int, repeats: int) -> float:
    """Multiply-adds per second of an n x n x n matmul (median, CUDA synchronised)."""
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    return n**3 / measure_latency(lambda x: torch.mm(x, b), a, repeats=repeats, warmup=2).median_s


def peaks(device: torch.device, n: int, repeats: int) -> dict[str, float]:
    out = {name: matmul_peak(dtype or torch.float32, device, n, repeats) for name, dtype in AUTOCAST.items()}
    if device.type == "cuda":
        before = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            out["tf32"] = matmul_peak(torch.float32, device, n, repeats)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = before
    return out


def fp32_peak_name(device: torch.device) -> str:
    """The peak fp32 convolutions compete with: TF32 where cuDNN is allowed it (torch's default)."""
    return "tf32" if device.type == "cuda" and torch.backends.cudnn.allow_tf32 else "fp32"


def eager(branch: Branch, device: torch.device, precision: str, channels_last: bool) -> Any:
    """The branch's network called as it is, on ``device``, optionally channels_last / under autocast."""
    module = copy.deepcopy(BranchModule(branch)).eval().to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    module.to(memory_format=fmt)
    dtype = AUTOCAST[precision]
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()

    def run(x: torch.Tensor) -> torch.Tensor:
        with autocast:
            return module(x.contiguous(memory_format=fmt))

    return run


def compiled(branch: Branch, device: torch.device) -> Any:
    """``torch.compile`` (default mode) of the network the engine runs (fp32, channels_last)."""
    net, kwargs = inference_copy(branch, device)
    fn = torch.compile(net)
    return lambda x: fn(x.contiguous(memory_format=torch.channels_last), **kwargs)


def router(branch: Branch, scale: int, device: torch.device, precision: str, tile: Any = "auto") -> Any:
    """What ``kdsr infer`` runs (CPU LR in, uint8 image out), synchronised since its input is on the CPU."""
    routed = router_for(branch, scale, tile, device=device, runtime=Runtime(precision))
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    def run(x: torch.Tensor) -> Any:
        out = routed(x)
        sync()
        return out

    return run


def measure_paths(scale: int, hr: tuple[int, int], device: torch.device, repeats: int, peak: dict[str, float],
                  widths: tuple[float, ...], compile_models: int) -> list[dict[str, Any]]:
    x_cpu = torch.rand(1, 3, *lr_size_for(hr, scale))
    x = x_cpu.to(device)
    rows = []
    for i, (label, width, branch) in enumerate(models(scale, widths)):
        macs = profile_macs(BranchModule(branch), x.shape[-2:]).total
        s: dict[str, Any] = {}
        for precision in AUTOCAST:
            for cl in (False, True):
                key = f"eager_{precision}{'_cl' if cl else ''}"
                s[key] = attempt(f"{label} {key}", lambda: {"s": latency(eager(branch, device, precision, cl), x, repeats)})
        for precision in ENGINE:
            s[f"runner_{precision}"] = attempt(f"{label} runner {precision}", lambda: {"s": latency(prepare(branch, Runtime(precision), device), x, repeats)})
            s[f"router_{precision}"] = attempt(f"{label} router {precision}", lambda: {"s": latency(router(branch, scale, device, precision), x_cpu, repeats)})
        if i < compile_models:
            s["compile_fp32_cl"] = attempt(f"{label} compile", lambda: {"s": latency(compiled(branch, device), x, repeats)})
        lat = {k: v["s"] for k, v in s.items() if "s" in v}
        row: dict[str, Any] = {"model": label, "width": width, "macs": macs, "latency_s": lat,
                               "skipped": {k: v["skipped"] for k, v in s.items() if "skipped" in v}}
        if "router_fp32" in lat:
            row["engine_s"] = lat["router_fp32"]  # kdsr infer's default path: what speed_infer.width_ratios compares
        row["fraction_of_peak"] = {k: macs / v / peak[_peak_of(k, device)] for k, v in lat.items()}
        rows.append(row)
        print(f"{label:22s} " + "  ".join(f"{k} {v * 1e3:.2f} ms" for k, v in lat.items()), flush=True)
    return rows


def _peak_of(variant: str, device: torch.device) -> str:
    for precision in ("fp16", "bf16"):
        if precision in variant:
            return precision
    return fp32_peak_name(device)


def tiled_4k(scale: int, hr: tuple[int, int], device: torch.device, repeats: int) -> dict[str, Any]:
    branch = next(b for label, w, b in models(scale) if label.startswith("edsr_baseline") and w == 1.0)
    x = torch.rand(1, 3, *lr_size_for(hr, scale))
    out: dict[str, Any] = {"hr": list(hr)}
    for precision in ENGINE:
        def one() -> dict[str, Any]:
            r: dict[str, Any] = {}
            for name, tile in (("whole", None), ("tiled", "auto")):
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                run = router(branch, scale, device, precision, tile)
                r[f"{name}_s"] = latency(run, x, repeats)
                if device.type == "cuda":
                    r[f"{name}_peak_gpu_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            r["ratio"], r["tiles"] = r["tiled_s"] / r["whole_s"], run(x).tiles["model"]
            print(f"4K {precision}: tiled {r['tiled_s']:.3f} s / whole {r['whole_s']:.3f} s = {r['ratio']:.2f} ({r['tiles']} tiles)", flush=True)
            return r

        out[precision] = attempt(f"tiled 4K {precision}", one)
    return out


def markdown(result: dict[str, Any]) -> str:
    rows, pk = result["paths"], result["matmul_peak_macs_per_s"]
    lines = [f"# Issue 16 on {result['device_name']} (x{result['scale']}, {result['hr'][1]}x{result['hr'][0]} output)", "",
             "Matmul peak (G Multi-Adds/s): " + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in pk.items())
             + f". cuDNN TF32: {result['flags']['cudnn_allow_tf32']}, cuDNN benchmark: {result['flags']['cudnn_benchmark']}.", "",
             "Latency (ms) per path and model (eager: the network called as it is; runner: `kdsr.runtime.prepare`, "
             "GPU tensors; router: `kdsr infer`'s path, CPU LR in, uint8 out; cl: channels_last):", "",
             "| path | " + " | ".join(r["model"] for r in rows) + " |", "|---|" + "---|" * len(rows)]
    variants = list(dict.fromkeys(k for r in rows for k in (*r["latency_s"], *r["skipped"])))
    for v in variants:
        cells = [f"{r['latency_s'][v] * 1e3:.2f} ({r['fraction_of_peak'][v]:.0%})" if v in r["latency_s"] else ("skipped" if v in r["skipped"] else "-") for r in rows]
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    lines += ["", "(in brackets: fraction of the matmul peak of that precision)", "",
              "| branch | speed-up | Multi-Adds ratio | speed-up / ratio |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['speedup']:.2f} | {v['macs_ratio']:.2f} | {v['speedup_over_macs_ratio']:.2f} |" for k, v in result["widths"].items()]
    t = result["tiled_4k"]
    lines += ["", f"Tiled / whole at {t['hr'][1]}x{t['hr'][0]} (router, EDSR-baseline 64 ch):", ""]
    for precision in ENGINE:
        r = t[precision]
        lines.append(f"- {precision}: " + (f"{r['tiled_s']:.3f} s / {r['whole_s']:.3f} s = {r['ratio']:.2f} ({r['tiles']} tiles)"
                                           if "ratio" in r else f"skipped: {r['skipped']}"))
    c = result["csd_paper"]
    lines += ["", f"CSD paper step (batch {c['case']['batch']}, LR {c['case']['lr_patch']}, median of {c['steps']} steps), vs {c['baseline']}:", "",
              "| variant | s/step | ratio |", "|---|---|---|"]
    lines += [f"| {k} | {v:.3f} | {c['ratio_to_baseline'].get(k, 1.0):.2f} |" for k, v in c["median_step_s"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda[:N]; cpu only with --quick")
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--paper-steps", type=int, default=10, help="measured CSD paper steps per variant")
    p.add_argument("--quick", action="store_true", help="tiny sizes: check the script, measure nothing")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type != "cuda" and not args.quick:
        print(f"bench/gpu.py measures on CUDA; --device {args.device} is only for --quick (a check of the script)", file=sys.stderr)
        sys.exit(2)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        sys.exit(2)
    quick = args.quick
    hr, hr_4k, repeats = ((32, 48), (64, 96), 1) if quick else (HR, HR_4K, args.repeats)
    widths = (1.0, 0.25) if quick else WIDTHS
    peak = peaks(device, 256 if quick else 8192, 2 if quick else 10)
    print("matmul peak " + ", ".join(f"{k} {v / 1e9:.0f} G" for k, v in peak.items()), flush=True)
    rows = measure_paths(args.scale, hr, device, repeats, peak, widths, compile_models=1 if quick else 2 * len(widths))
    # --quick: CSD's paper step at small patches (the same variants, seconds instead of minutes)
    paper = {**CASES["csd_paper"], "lr_patch": 12} if quick else None
    result: dict[str, Any] = {
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (--quick check)",
        "scale": args.scale, "hr": list(hr), "quick": quick, "threads": torch.get_num_threads(),
        "flags": {"cudnn_allow_tf32": torch.backends.cudnn.allow_tf32, "cudnn_benchmark": torch.backends.cudnn.benchmark,
                  "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32},
        "matmul_peak_macs_per_s": peak, "fp32_peak": fp32_peak_name(device), "paths": rows,
        "widths": width_ratios([r for r in rows if "engine_s" in r]),
        "tiled_4k": tiled_4k(args.scale, hr_4k, device, repeats),
        "csd_paper": measure("csd_paper", 1 if quick else args.paper_steps, warmup=1 if quick else 2, device=str(device), case=paper),
    }
    write_result("gpu_quick" if quick else "gpu", result, markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
