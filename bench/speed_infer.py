"""Issue 16's inference targets in one run: EDSR-baseline x4 to 1280x720 through kdsr's inference path.

Measured here, in one process, against the fp32 peak measured in the same run: the best of several
4096^3 ``torch.mm`` or of a wide channels_last 3x3 convolution, whichever is faster (on an AVX-512 AMD
EPYC oneDNN's convolutions outrun the matmul, which is then no limit):

* ``paths``: each width (a CSSR-Net branch, what a switchable model runs, and an independent network
  of that width) on the default path (``kdsr.runtime``: channels_last, inference_mode, through the
  router as ``kdsr infer`` runs it), beside the plain eager call it replaces and TorchScript freezing
  (conv + ReLU fusion) for reference. Target: full width >= 70% of the peak.
* ``widths``: speed-up of the 0.5 / 0.25 branches over full width against their Multi-Adds ratio
  (targets >= 0.8x and >= 0.7x of it).
* ``tiled_4k``: the router's automatic tiles at a 3840x2160 output against one whole-image pass
  (target <= 1.1; peak memory: bench/memory_infer.py).
* ``precision``: bf16 (where the CPU has AMX / AVX512-BF16) and int8 (onnxruntime's quantiser,
  calibrated on ``--calibration``) speed-up over fp32 per width; with ``--run RUN_DIR`` (a trained
  multi-width run, e.g. from bench/quality.py) also the PSNR delta on ``--sets`` (target int8 within 0.1 dB).
* ``backends``: onnxruntime / OpenVINO latency per width beside torch.

Usage: python bench/speed_infer.py [--repeats 5] [--calibration DIR] [--run RUN_DIR --sets DIR ...] [--quick]
``--quick`` runs tiny sizes to check the script (numbers meaningless). Writes results/speed_infer.json
(results/speed_infer_quick.json) and .md; run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import kdsr  # noqa: F401 - before torch, so its allocator setting (kdsr/__init__.py) applies
import torch

from benchlib import RESULTS, provenance, write_result
from kdsr.api import router_for
from kdsr.branches import Branch
from kdsr.errors import KdsrError
from kdsr.plugins import registry
from kdsr.profiling import lr_size_for, measure_latency, profile_macs
from kdsr.report import BranchModule
from kdsr.runtime import Runtime, check_runtime, cpu_has_bf16

HR, HR_4K = (720, 1280), (2160, 3840)
WIDTHS = (1.0, 0.5, 0.25)
SETS = ("Set5", "Set14", "B100")
SHARED = Path("/work/shared/data/sr")


def conv_peak(channels: int = 128, side: int = 128, repeats: int = 5) -> float:
    """Best achieved fp32 multiply-adds per second of a wide 3x3 convolution, channels_last (oneDNN).

    On some CPUs oneDNN's convolutions outrun torch's matmul (an AMD EPYC with AVX-512 here: 1.3-1.5x), so
    the matmul alone is no peak for them; the reference is the larger of the two."""
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1).eval().to(memory_format=torch.channels_last)
    x = torch.randn(1, channels, side, side).contiguous(memory_format=torch.channels_last)
    macs = side * side * channels * channels * 9
    with torch.inference_mode():
        conv(x)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            conv(x)
            best = min(best, time.perf_counter() - t0)
    return macs / best


def matmul_peak(dtype: torch.dtype, n: int = 4096, repeats: int = 5) -> float:
    """Best achieved multiply-adds per second of an n x n x n matmul (the CPU's practical peak)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return n**3 / best


def models(scale: int, widths: tuple[float, ...] = WIDTHS) -> list[tuple[str, float, Branch]]:
    """(label, width, branch): CSSR-Net branches of one weight-shared EDSR-baseline, and independent ones."""
    torch.manual_seed(0)
    shared = registry("student").create("cssr", {"backbone": "edsr_baseline", "widths": list(widths)}, teacher=None, scale=scale)
    out = []
    for w in widths:
        out.append((f"cssr w{w}", w, shared[f"w{w}"]))
        net = registry("backbone").create("edsr_baseline", {"n_feats": int(64 * w)}, scale=scale).eval()
        out.append((f"edsr_baseline {int(64 * w)} ch", w, Branch(net)))
    return out


def latency(fn: Any, x: torch.Tensor, repeats: int) -> float:
    return measure_latency(fn, x, repeats=repeats, warmup=1).median_s


def engine(branch: Branch, scale: int, runtime: Runtime = Runtime(), tile: Any = "auto") -> Any:
    """What ``kdsr infer`` runs: the router over one branch (automatic tiles, uint8 output)."""
    return router_for(branch, scale, tile, runtime=runtime)


def frozen(branch: Branch, x: torch.Tensor) -> Any:
    """TorchScript trace + freeze of a channels_last copy (oneDNN conv + ReLU / add fusion)."""
    module = copy.deepcopy(BranchModule(branch)).eval().to(memory_format=torch.channels_last)
    xc = x.contiguous(memory_format=torch.channels_last)
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        fn = torch.jit.freeze(torch.jit.trace(module, xc))
    return lambda t: fn(t.contiguous(memory_format=torch.channels_last))


def attempt(what: str, fn: Any) -> dict[str, Any]:
    """``fn()``'s row, or the reason it could not run (a missing package, an unsupported CPU)."""
    try:
        return fn()
    except (KdsrError, RuntimeError, ImportError) as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        print(f"{what}: skipped ({reason})", flush=True)
        return {"skipped": reason}


def measure_paths(rows: list, scale: int, hr: tuple[int, int], repeats: int, peak: float, widths: tuple[float, ...]) -> None:
    """Every model's eager / engine / frozen latency, in rounds: each round times every model once, so a
    neighbour's burst on a shared machine hits all of them, not one model's figures (medians of the rounds)."""
    x = torch.rand(1, 3, *lr_size_for(hr, scale))
    calls: dict[tuple[str, str], Any] = {}
    meta: dict[str, dict[str, Any]] = {}
    for label, width, branch in models(scale, widths):
        meta[label] = {"model": label, "width": width, "macs": profile_macs(BranchModule(branch), x.shape[-2:]).total}
        calls[label, "eager_s"] = lambda t, m=BranchModule(branch).eval(): m(t)
        calls[label, "engine_s"] = engine(branch, scale)
        fn = attempt(f"{label} freeze", lambda b=branch: {"fn": frozen(b, x)})
        if "fn" in fn:
            calls[label, "freeze_s"] = fn["fn"]
        else:
            meta[label]["freeze_skipped"] = fn["skipped"]
    times: dict[tuple[str, str], list[float]] = {key: [] for key in calls}
    for _ in range(repeats):
        for key, fn in calls.items():
            times[key].append(latency(fn, x, 1))
    for label, row in meta.items():
        row.update({kind: statistics.median(v) for (who, kind), v in times.items() if who == label})
        row["engine_fraction_of_peak"] = row["macs"] / row["engine_s"] / peak
        rows.append(row)
        print(f"{label:22s} eager {row['eager_s']:.3f} s  engine {row['engine_s']:.3f} s ({row['engine_fraction_of_peak']:.0%} of peak)", flush=True)


def width_ratios(rows: list) -> dict[str, Any]:
    out = {}
    for prefix in ("cssr", "edsr_baseline"):
        mine = {r["width"]: r for r in rows if r["model"].startswith(prefix)}
        full = mine[1.0]
        for w in (0.5, 0.25):
            if w in mine:
                speedup, macs_ratio = full["engine_s"] / mine[w]["engine_s"], full["macs"] / mine[w]["macs"]
                out[f"{prefix} w{w}"] = {"speedup": speedup, "macs_ratio": macs_ratio, "speedup_over_macs_ratio": speedup / macs_ratio}
    return out


def tiled_4k(scale: int, hr: tuple[int, int], repeats: int) -> dict[str, Any]:
    branch = next(b for label, w, b in models(scale) if label.startswith("edsr_baseline") and w == 1.0)
    x = torch.rand(1, 3, *lr_size_for(hr, scale))
    whole = latency(engine(branch, scale, tile=None), x, repeats)
    router = engine(branch, scale)
    tiled = latency(router, x, repeats)
    tiles = router(x).tiles["model"]
    return {"hr": list(hr), "whole_s": whole, "tiled_s": tiled, "ratio": tiled / whole, "tiles": tiles}


def measure_precision(
    rows: list, scale: int, hr: tuple[int, int], repeats: int, calibration: Path, backends: list[str], widths: tuple[float, ...]
) -> list:
    x = torch.rand(1, 3, *lr_size_for(hr, scale))
    out = []
    runtimes = [Runtime("bf16"), Runtime("int8", "onnxruntime", calibration)]
    runtimes += [Runtime("fp32", b) for b in backends] + [Runtime("int8", "openvino", calibration)] * ("openvino" in backends)
    fp32 = {r["model"]: r["engine_s"] for r in rows}
    for label, width, branch in models(scale, widths):
        for rt in runtimes:
            def row() -> dict[str, Any]:
                check_runtime(rt)
                s = latency(engine(branch, scale, rt), x, repeats)
                return {"s": s, "speedup_over_fp32": fp32[label] / s}

            r = {"model": label, "width": width, "runtime": rt.label, **attempt(f"{label} {rt.label}", row)}
            if "s" in r:
                print(f"{label:22s} {rt.label:18s} {r['s']:.3f} s  x{r['speedup_over_fp32']:.2f} vs fp32", flush=True)
            out.append(r)
    return out


def quality(run: Path, sets: list[Path], calibration: Path) -> dict[str, Any]:
    """PSNR of each lower precision against fp32 on ``sets`` with a trained run's models."""
    from kdsr.engine.restore import evaluate_models
    from kdsr.models import open_models

    models_ = open_models(run)
    out: dict[str, Any] = {}
    for rt in (Runtime("bf16"), Runtime("int8", "onnxruntime", calibration), Runtime("int8", "openvino", calibration)):
        res = attempt(f"quality {rt.label}", lambda: {"scores": evaluate_models(models_, sets, runtime=rt)})
        out[rt.label] = {k: v for k, v in res.get("scores", res).items() if k.endswith(f"[{rt.label}]") or k == "skipped"}
    return out


PARTS = ("paths", "tiled", "precision", "quality")


def previous(name: str, parts: list[str]) -> dict[str, Any]:
    """The existing result's parts that this run does not measure again (all of it when every part is measured)."""
    path = RESULTS / f"{name}.json"
    if set(parts) == set(PARTS) or not path.is_file():
        return {}
    stale = provenance().keys()  # this run's provenance replaces the old one; parts keep their own commit
    return {k: v for k, v in json.loads(path.read_text()).items() if k not in stale}


def default_calibration(tmp: Path) -> Path:
    """T91 (a training set, never scored) when it is here, else a few synthetic images."""
    if (SHARED / "T91").is_dir():
        return SHARED / "T91"
    from kdsr.testing import make_image_folder

    make_image_folder(tmp / "cal", n=8, size=(96, 96), seed=0)
    return tmp / "cal"


def markdown(result: dict[str, Any]) -> str:
    """The parts the result holds (a partial run may lack some)."""
    lines = [f"# Inference at {result['hr'][1]}x{result['hr'][0]} (x{result['scale']}, {result['threads']} threads)", "",
             f"Peak fp32 (the larger of a square matmul and a wide 3x3 convolution): {result['peak_macs_per_s'] / 1e9:.0f} G Multi-Adds/s "
             f"(matmul {result['matmul_peak_macs_per_s'] / 1e9:.0f} G, convolution {result['conv_peak_macs_per_s'] / 1e9:.0f} G)."]
    if "paths" in result:
        lines += ["", "| model | Multi-Adds (G) | eager (s) | engine (s) | freeze (s) | engine % of peak |", "|---|---|---|---|---|---|"]
        for r in result["paths"]:
            freeze = f"{r['freeze_s']:.3f}" if "freeze_s" in r else "-"
            lines.append(f"| {r['model']} | {r['macs'] / 1e9:.1f} | {r['eager_s']:.3f} | {r['engine_s']:.3f} | {freeze} | {r['engine_fraction_of_peak']:.1%} |")
        lines += ["", "| branch | speed-up | Multi-Adds ratio | speed-up / ratio |", "|---|---|---|---|"]
        lines += [f"| {k} | {v['speedup']:.2f} | {v['macs_ratio']:.2f} | {v['speedup_over_macs_ratio']:.2f} |" for k, v in result["widths"].items()]
    if "tiled_4k" in result:
        t = result["tiled_4k"]
        lines += ["", f"Tiled / whole at {t['hr'][1]}x{t['hr'][0]}: {t['tiled_s']:.2f} s / {t['whole_s']:.2f} s = {t['ratio']:.2f} ({t['tiles']} tiles)."]
    if "precision" in result:
        lines += ["", "| model | runtime | latency (s) | speed-up over fp32 |", "|---|---|---|---|"]
        for r in result["precision"]:
            cell = f"{r['s']:.3f} | {r['speedup_over_fp32']:.2f}" if "s" in r else f"skipped: {r['skipped']} | -"
            lines.append(f"| {r['model']} | {r['runtime']} | {cell} |")
    if result.get("quality"):
        lines += ["", "PSNR (dB, the run's metric) of each lower precision minus fp32, trained run's branches:", "",
                  "| model | set | fp32 - precision delta (dB) |", "|---|---|---|"]
        for label, models_ in result["quality"].items():
            if "skipped" in models_:
                lines.append(f"| {label} | - | skipped: {models_['skipped']} |")
                continue
            for model, sets in models_.items():
                lines += [f"| {model} | {name} | {scores['psnr_delta']:+.3f} |" for name, scores in sets.items() if "psnr_delta" in scores]
    if result.get("parts_measured_at"):
        lines += ["", "Measured at commit: " + ", ".join(f"{k} {v[:7]}" for k, v in result["parts_measured_at"].items()) + "."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--calibration", type=Path, help="int8 calibration images (default: T91 from the shared data, else synthetic)")
    p.add_argument("--backends", nargs="*", default=["onnxruntime", "openvino"])
    p.add_argument("--run", type=Path, help="a trained multi-width run: PSNR deltas of bf16 / int8 on --sets")
    p.add_argument("--sets", type=Path, nargs="*", default=[SHARED / s for s in SETS])
    p.add_argument("--parts", nargs="*", choices=PARTS, default=list(PARTS),
                   help="what to measure (default all); a partial run updates those parts of the existing result file")
    p.add_argument("--quick", action="store_true", help="tiny sizes: check the script, measure nothing")
    args = p.parse_args()
    hr, hr_4k, repeats = ((32, 48), (64, 96), 1) if args.quick else (HR, HR_4K, args.repeats)
    widths = (1.0, 0.25) if args.quick else WIDTHS
    mm, cv = matmul_peak(torch.float32, 512 if args.quick else 4096), conv_peak(32 if args.quick else 128, 32 if args.quick else 128)
    peak = max(mm, cv)
    print(f"peak fp32 {peak / 1e9:.0f} G Multi-Adds/s (matmul {mm / 1e9:.0f} G, 3x3 conv {cv / 1e9:.0f} G); bf16 native: {cpu_has_bf16()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        calibration = args.calibration or default_calibration(Path(tmp))
        name = "speed_infer_quick" if args.quick else "speed_infer"
        result: dict[str, Any] = previous(name, args.parts)
        result.update({"scale": args.scale, "hr": list(hr), "threads": torch.get_num_threads(), "quick": args.quick,
                       "matmul_peak_macs_per_s": mm, "conv_peak_macs_per_s": cv, "peak_macs_per_s": peak, "bf16_native": cpu_has_bf16(), "calibration": str(calibration)})
        if "paths" in args.parts or "precision" in args.parts:  # precision's speed-ups are over these fp32 rows
            rows: list = []
            measure_paths(rows, args.scale, hr, repeats, peak, widths)
            result.update(paths=rows, widths=width_ratios(rows))
        if "tiled" in args.parts:
            result["tiled_4k"] = tiled_4k(args.scale, hr_4k, repeats)
        if "precision" in args.parts:  # --quick: one width checks each runtime's path (every export takes a while)
            result["precision"] = measure_precision(rows, args.scale, hr, repeats, calibration, args.backends, widths[-1:] if args.quick else widths)
        if "quality" in args.parts and args.run is not None:
            result["quality"] = quality(args.run, args.sets, calibration)
        measured = [*args.parts, *(["paths"] if "precision" in args.parts else [])]  # precision re-measures the fp32 rows
        result["parts_measured_at"] = {**result.get("parts_measured_at", {}), **{part: provenance()["commit"] for part in measured}}
    result["targets"] = {"full_fraction_of_peak": ">= 0.70", "w0.5 speedup_over_macs_ratio": ">= 0.8",
                         "w0.25 speedup_over_macs_ratio": ">= 0.7", "tiled_4k ratio": "<= 1.1", "int8 psnr_delta": ">= -0.1 dB"}
    write_result(name, result, markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
