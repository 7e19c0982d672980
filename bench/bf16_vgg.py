"""What the csd loss's ``vgg_precision: bf16`` does to CSD's loss and gradient, over several seeds (issue 16).

Per seed: a CSSR-Net student (EDSR-baseline 64 ch x 8 blocks, widths 1.0 and 0.25, x4, random init from
that seed, built through kdsr's registry), one batch of 16 real LR/HR crops (LR 24 px, T91 from the
shared data, else the scikit-image photos kdsr embeds), and the csd loss (K = 10, official layer weights,
0.25 branch the anchor, 1.0 branch the detached positive) computed with ``vgg_precision`` fp32 and bf16
on the same network outputs. Recorded: both loss values and their relative difference; the cosine
similarity of the two gradients w.r.t. all student parameters (flattened) and w.r.t. the anchor SR image;
the parameter gradients' relative error ||g_bf16 - g_fp32|| / ||g_fp32|| and relative norm difference
(||g_bf16|| - ||g_fp32||) / ||g_fp32||; mean / min / max over seeds.

VGG-19 is random unless ``--vgg-weights FILE`` (an ImageNet state dict) is given: no ImageNet file can be
fetched here. On a CPU without bf16 units bf16 is emulated: the numbers are numerics only (no timing).
Runs on one thread, so it can share a machine with a training job.

Usage: python bench/bf16_vgg.py [--seeds 5] [--vgg-weights FILE]
Writes results/bf16_vgg.json and .md.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchlib import write_result
from kdsr import Batch, Outputs
from kdsr.data import ImageFolder, SkimageSamples, SRPairs, TrainPatches
from kdsr.plugins import registry
from kdsr.runtime import cpu_has_bf16

T91 = Path("/work/shared/data/sr/T91")
SCALE, BATCH, LR_PATCH, K = 4, 16, 24, 10
STUDENT = {"backbone": "edsr_baseline", "options": {"n_feats": 64, "n_resblocks": 8}, "widths": [1.0, 0.25]}
METRICS = ("loss_rel_diff", "param_grad_cosine", "anchor_grad_cosine", "param_grad_rel_err", "param_grad_rel_norm_diff")


def patches() -> tuple[TrainPatches, str]:
    """Real crops: T91 when the shared data is here, else scikit-image's bundled photos."""
    source, name = (ImageFolder(T91), str(T91)) if T91.is_dir() else (SkimageSamples(), "scikit-image photos")
    return TrainPatches(SRPairs(source, SCALE), LR_PATCH, BATCH, seed=0), name


def csd_loss(precision: str, vgg_weights: Path | None) -> Any:
    options: dict[str, Any] = {"num_negatives": K, "vgg_precision": precision}
    if vgg_weights is not None:
        options["vgg_weights"] = str(vgg_weights)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random-VGG warning: said once in the output instead
        return registry("loss").create("csd", options)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0))


def one_seed(seed: int, lr: torch.Tensor, hr: torch.Tensor, losses: dict[str, Any]) -> dict[str, Any]:
    torch.manual_seed(seed)
    branches = registry("student").create("cssr", STUDENT, teacher=None, scale=SCALE)
    params = list(branches["w1.0"].model.parameters())
    bicubic = F.interpolate(lr, scale_factor=SCALE, mode="bicubic", align_corners=False)  # as the trainer makes it
    teacher = Outputs(branches["w1.0"](lr))
    student = Outputs(branches["w0.25"](lr))
    out: dict[str, Any] = {"seed": seed}
    grads = {}
    for precision, loss in losses.items():
        t0 = time.perf_counter()
        value = loss(student, teacher, Batch(lr, hr, bicubic))
        g = torch.autograd.grad(value, [student.sr, *params], retain_graph=True, allow_unused=True)
        flat = torch.cat([(gi if gi is not None else torch.zeros_like(p)).flatten() for gi, p in zip(g[1:], params)])
        grads[precision] = (g[0], flat)
        out[f"loss_{precision}"] = float(value.detach())
        out[f"seconds_{precision}"] = time.perf_counter() - t0  # emulated bf16 on this CPU: not a speed figure
    (a32, p32), (a16, p16) = grads["fp32"], grads["bf16"]
    n32, n16 = float(p32.double().norm()), float(p16.double().norm())
    out["loss_rel_diff"] = (out["loss_bf16"] - out["loss_fp32"]) / abs(out["loss_fp32"])
    out["param_grad_cosine"] = cosine(p16, p32)
    out["anchor_grad_cosine"] = cosine(a16, a32)
    out["param_grad_rel_err"] = float((p16.double() - p32.double()).norm()) / n32
    out["param_grad_rel_norm_diff"] = (n16 - n32) / n32
    out["param_grad_norm_fp32"] = n32
    return out


def summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    return {m: {"mean": statistics.fmean(r[m] for r in rows), "min": min(r[m] for r in rows), "max": max(r[m] for r in rows)} for m in METRICS}


def markdown(result: dict[str, Any]) -> str:
    vgg = result["vgg_weights"] or "RANDOM VGG-19 (no ImageNet file can be fetched here; pass --vgg-weights)"
    lines = [
        f"# csd loss: vgg_precision bf16 vs fp32 ({len(result['seeds'])} seeds)", "",
        f"CSSR-Net EDSR-baseline 64 ch x 8 blocks, widths 1.0 (positive, detached) and 0.25 (anchor), x{SCALE}, random init per seed; "
        f"batch {BATCH} of LR {LR_PATCH} px crops from {result['data']} (batch drawn per seed); K = {K}, official layer weights. "
        f"VGG: {vgg}.", "",
        f"bf16 here is {'native' if result['bf16_native'] else 'EMULATED (this CPU has no AMX / AVX512-BF16)'}: "
        f"the figures are numerics only; times are not a speed claim. {result['threads']} thread (a training job shares the machine).", "",
        "| seed | loss fp32 | loss bf16 | loss rel. diff | cos(grad params) | cos(grad anchor SR) | grad rel. error | grad rel. norm diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["seeds"]:
        lines.append(
            f"| {r['seed']} | {r['loss_fp32']:.6f} | {r['loss_bf16']:.6f} | {r['loss_rel_diff']:+.2e} | {r['param_grad_cosine']:.6f} | "
            f"{r['anchor_grad_cosine']:.6f} | {r['param_grad_rel_err']:.2e} | {r['param_grad_rel_norm_diff']:+.2e} |"
        )
    lines += ["", "| metric | mean | min | max |", "|---|---|---|---|"]
    lines += [f"| {m} | {s['mean']:.3e} | {s['min']:.3e} | {s['max']:.3e} |" for m, s in result["summary"].items()]
    lines += ["", "grad rel. error: ||g_bf16 - g_fp32|| / ||g_fp32||; grad rel. norm diff: (||g_bf16|| - ||g_fp32||) / ||g_fp32|| "
              "(parameter gradients of the csd term alone)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=5, help="seeds 0 .. N-1")
    p.add_argument("--vgg-weights", type=Path, help="an ImageNet VGG-19 state dict (torchvision or timm); default random")
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f"bench/bf16_vgg.py: 1 thread (shares the machine with other jobs); bf16 native: {cpu_has_bf16()}"
          f"{'' if cpu_has_bf16() else ' (emulated: numerics only, no timing claims)'}", flush=True)
    if args.vgg_weights is None:
        print("VGG-19 has RANDOM weights (pass --vgg-weights FILE for ImageNet ones)", flush=True)
    data, source = patches()
    losses = {precision: csd_loss(precision, args.vgg_weights) for precision in ("fp32", "bf16")}
    rows = []
    for seed in range(args.seeds):
        lr, hr = data.batch(seed)
        row = one_seed(seed, lr, hr, losses)
        rows.append(row)
        print(f"seed {seed}: loss {row['loss_fp32']:.6f} / {row['loss_bf16']:.6f} ({row['loss_rel_diff']:+.2e}), "
              f"cos params {row['param_grad_cosine']:.6f}, cos anchor {row['anchor_grad_cosine']:.6f}, "
              f"grad rel err {row['param_grad_rel_err']:.2e}", flush=True)
    result = {
        "threads": torch.get_num_threads(), "bf16_native": cpu_has_bf16(), "data": source,
        "vgg_weights": str(args.vgg_weights) if args.vgg_weights else None,
        "student": STUDENT, "scale": SCALE, "batch": BATCH, "lr_patch": LR_PATCH, "num_negatives": K,
        "seeds": rows, "summary": summary(rows),
    }
    write_result("bf16_vgg", result, markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
