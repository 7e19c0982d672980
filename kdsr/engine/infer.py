"""Inference with a finished run: route images or tiles to its branches with a policy."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from kdsr.branches import Branch
from kdsr.data import IMAGE_EXTENSIONS, list_images, read_image, to_float, write_image
from kdsr.engine.build import Stage, pick_device
from kdsr.engine.restore import load_run
from kdsr.errors import KdsrError
from kdsr.inference import Choice, Router
from kdsr.plugins import registry
from kdsr.profiling import lr_size_for, profile_macs

REFERENCE_HR = (720, 1280)


def candidate_branches(stages: dict[str, Stage]) -> dict[str, Branch]:
    """The branches a policy chooses from: the trained branches of the run's last finished stage."""
    last = list(stages.values())[-1]
    return {n: Branch(b.model.eval(), b.kwargs) for n, b in last.trainable.items()}


def choices_for(branches: dict[str, Branch], scale: int) -> list[Choice]:
    """Each branch's Multi-Adds per LR pixel (fvcore, at the 1280x720 reference output)."""
    from kdsr.report import BranchModule

    h, w = lr_size_for(REFERENCE_HR, scale)
    return [
        Choice(name, profile_macs(BranchModule(b), (h, w)).total / (h * w), b.kwargs.get("width"))
        for name, b in branches.items()
    ]


def make_router(
    run_dir: Path,
    policy: str = "full",
    options: dict[str, Any] | None = None,
    tile: int | None = 128,
    overlap: int = 16,
    batch: int = 4,
) -> tuple[Any, Router]:
    config, stages = load_run(run_dir)
    device = pick_device(config.device)
    branches = candidate_branches(stages)
    for b in branches.values():
        b.model.to(device)
    chosen = registry("policy").create(policy, options, where="--policy-option")
    return config, Router(branches, choices_for(branches, config.scale), chosen, config.scale, tile, overlap, batch, device)


def collect_inputs(inputs: list[Path]) -> list[Path]:
    files: list[Path] = []
    for p in inputs:
        if p.is_dir():
            files += list_images(p)
        elif p.is_file():
            if p.suffix.lower() not in IMAGE_EXTENSIONS:
                raise KdsrError(f"input '{p}' is not an image ({', '.join(sorted(IMAGE_EXTENSIONS))})")
            files.append(p)
        else:
            raise KdsrError(f"input '{p}' does not exist; give image files or folders")
    return files


def infer(router: Router, inputs: list[Path], out_dir: Path) -> dict[str, Any]:
    """Super-resolve every input image into ``out_dir`` (PNG) and write ``infer.json``."""
    files = collect_inputs(inputs)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".kdsr-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise KdsrError(f"output folder '{out_dir}' is not writable ({exc.strerror or exc}); choose another --out") from None
    images, failed = [], []
    for path in tqdm(files, desc="infer", disable=None):
        try:
            lr = to_float(read_image(path)).unsqueeze(0)
        except KdsrError as exc:  # one bad image must not cost the others
            failed.append({"input": str(path), "error": str(exc)})
            continue
        t0 = time.perf_counter()
        routed = router(lr)
        seconds = time.perf_counter() - t0
        target = out_dir / f"{path.stem}.png"
        write_image(target, routed.sr[0])
        images.append(
            {
                "input": str(path),
                "output": str(target),
                "branches": dict(routed.tiles),
                "macs": routed.macs,
                "full_macs": routed.full_macs,
                "macs_fraction": routed.fraction,
                "tiling_overhead": routed.overhead,
                "seconds": seconds,
            }
        )
    summary = {
        "policy": type(router.policy).__name__.lower(),
        "router": router.describe(),
        "images": images,
        "macs_fraction": sum(i["macs"] for i in images) / max(sum(i["full_macs"] for i in images), 1.0),
        "seconds": sum(i["seconds"] for i in images),
        "failed": failed,
    }
    (out_dir / "infer.json").write_text(json.dumps(summary, indent=1))
    if failed:
        raise KdsrError(
            f"{len(failed)} of {len(files)} input(s) could not be read, first: {failed[0]['error']}; "
            f"the other {len(images)} were written to '{out_dir}' (see infer.json)"
        )
    return summary


@torch.no_grad()
def evaluate_policy(router: Router, sets, metrics, scale: int) -> dict[str, dict[str, float]]:
    """PSNR/SSIM of routed outputs per set, with the mean Multi-Adds fraction spent."""
    from kdsr.data import quantize

    out: dict[str, dict[str, float]] = {}
    for eval_set in sets:
        sums = dict.fromkeys(metrics, 0.0)
        macs = full = 0.0
        for _, lr_u8, hr_u8 in eval_set.pairs:
            routed = router(to_float(lr_u8))
            sr = quantize(routed.sr[0])
            for m, fn in metrics.items():
                sums[m] += fn(sr, to_float(hr_u8), scale)
            macs, full = macs + routed.macs, full + routed.full_macs
        n = max(len(eval_set.pairs), 1)
        out[eval_set.label] = {**{m: v / n for m, v in sums.items()}, "macs_fraction": macs / full if full else 1.0}
    return out


def tradeoff(
    run_dir: Path,
    calibration: Path,
    budgets: list[float],
    folders: list[Path] | None = None,
    tile: int | None = 128,
    overlap: int = 16,
    measure: str = "redegradation",
) -> dict[str, Any]:
    """PSNR vs Multi-Adds fraction: every fixed branch, and the budget policy at each budget.

    The budget policy is calibrated on ``calibration`` (keep it apart from the eval sets) and
    evaluated on the run's eval sets (or ``folders``). Writes ``tradeoff.json`` and ``tradeoff.png``
    into the run directory and adds the trade-off table and plot to its ``report.md``.
    """
    from kdsr.engine.restore import evaluate_run

    config, stages = load_run(run_dir)
    names = list(candidate_branches(stages))
    points: list[dict[str, Any]] = []
    for name in names:
        router = make_router(run_dir, "fixed", {"branch": name}, tile, overlap)[1]
        (scores,) = evaluate_run(run_dir, folders or [], router=router).values()
        points.append({"kind": "fixed", "branch": name, "scores": scores})
    for b in budgets:
        options = {"budget": b, "calibration": str(calibration), "measure": measure}
        router = make_router(run_dir, "budget", options, tile, overlap)[1]
        (scores,) = evaluate_run(run_dir, folders or [], router=router).values()
        points.append({"kind": "budget", "budget": b, "scores": scores, "expected": router.policy.expected})
    result = {"run": str(run_dir), "calibration": str(calibration), "tile": tile, "overlap": overlap, "points": points}
    (run_dir / "tradeoff.json").write_text(json.dumps(result, indent=1))
    from kdsr.report import add_tradeoff_to_report, plot_tradeoff

    plot_tradeoff(result, run_dir / "tradeoff.png")
    add_tradeoff_to_report(run_dir, result)
    return result
