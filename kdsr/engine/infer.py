"""Inference with a finished run (or one network from a weights file): route images or tiles to its
branches with a policy. Networks are loaded by :mod:`kdsr.models`."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from kdsr.branches import Branch
from kdsr.data import IMAGE_EXTENSIONS, list_images, read_image, to_float, write_image
from kdsr.engine.build import pick_device
from kdsr.engine.restore import evaluate_models
from kdsr.errors import KdsrError
from kdsr.inference import Choice, Router, TimeShare, budget_check
from kdsr.models import Models, load_run, open_models, reported_macs
from kdsr.plugins import registry
from kdsr.progress import Progress
from kdsr.profiling import macs_per_lr_pixel
from kdsr.runtime import FP32, Runtime


def choices_for(branches: dict[str, Branch], scale: int, counted: dict[str, float] | None = None) -> list[Choice]:
    """Each branch's Multi-Adds per LR pixel (fvcore, at the 1280x720 reference output), cheapest first;
    ``counted``: those already known (a run's report, :attr:`kdsr.models.Models.macs_per_pixel`)."""
    from kdsr.report import BranchModule

    known = counted or {}

    def per_pixel(name: str, b: Branch) -> float:
        return known[name] if name in known else macs_per_lr_pixel(BranchModule(b), scale)

    choices = [Choice(name, per_pixel(name, b), b.kwargs.get("width")) for name, b in branches.items()]
    return sorted(choices, key=lambda c: c.macs_per_pixel)


def with_candidates(models: Models, also: Sequence[Path] = (), all_stages: bool = False) -> Models:
    """``models`` with more branches to route over: every finished stage's trained branches (``all_stages``,
    named ``stage/branch``) and those of ``also``, other runs or exported students (a file's network is named
    after the file, a run's branches ``run:branch``). All must have one scale: a policy mixes their patches."""
    if not also and not all_stages:
        return models
    candidates, macs = dict(models.candidates), dict(models.macs_per_pixel)
    if all_stages and models.config is not None:
        config, stages = load_run(models.source)
        candidates = {f"{s}/{n}": Branch(b.model.eval(), b.kwargs) for s, st in stages.items() for n, b in st.trainable.items()}
        macs = {f"{s}/{n}": m for (s, n), m in reported_macs(models.source, config, stages).items()}
    for path in also:
        other = with_candidates(open_models(path), all_stages=all_stages)
        if other.scale != models.scale:
            raise KdsrError(
                f"branches of different scales: '{models.source}' is x{models.scale}, '{path}' is x{other.scale}; route networks of one scale"
            )
        for name, branch in other.candidates.items():
            key = name if other.config is None else f"{Path(path).name}:{name}"
            if key in candidates:
                raise KdsrError(f"two candidate branches are named '{key}' ('{path}' adds it again); rename one of the files")
            candidates[key] = branch
            if name in other.macs_per_pixel:
                macs[key] = other.macs_per_pixel[name]
    return replace(models, candidates=candidates, macs_per_pixel=macs)


def make_router(
    models: Models | Path,
    policy: str = "full",
    options: dict[str, Any] | None = None,
    tile: int | str | None = 128,
    overlap: int = 16,
    batch: int | None = None,
    runtime: Runtime = FP32,
) -> Router:
    """A router over the candidate branches of ``models`` (a run or a weights file, see :func:`open_models`),
    running them under ``runtime``."""
    if not isinstance(models, Models):
        models = open_models(models)
    device = pick_device(models.device)
    branches = models.candidates
    for b in branches.values():
        b.model.to(device)
    chosen = registry("policy").create(policy, options, where="--policy-option")
    choices = choices_for(branches, models.scale, models.macs_per_pixel)
    return Router(branches, choices, chosen, models.scale, tile, overlap, batch, device, runtime)


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
    images, failed, time_share = [], [], TimeShare()
    bar = Progress(len(files), "infer", "image")
    for path in files:
        try:
            lr = to_float(read_image(path)).unsqueeze(0)
        except KdsrError as exc:  # one bad image must not cost the others
            failed.append({"input": str(path), "error": str(exc)})
            bar.update(1)
            continue
        t0 = time.perf_counter()
        routed = router(lr)
        seconds = time.perf_counter() - t0
        target = out_dir / f"{path.stem}.png"
        write_image(target, routed.image)
        time_share.add(routed)
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
        bar.update(1)
    bar.close()
    macs_fraction = sum(i["macs"] for i in images) / max(sum(i["full_macs"] for i in images), 1.0)
    time_share = time_share.fraction
    summary = {
        "policy": type(router.policy).__name__.lower(),
        "router": router.describe(),
        "images": images,
        "macs_fraction": macs_fraction,
        "time_fraction": time_share,  # priced by measured branch timings (Router.time_prices) + the policy's measured time
        "budget": budget_check(router.policy, macs_fraction, time_share),
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


def tradeoff(
    run_dir: Path,
    calibration: Path,
    budgets: list[float],
    folders: list[Path] | None = None,
    tile: int | str | None = 128,
    overlap: int = 16,
    measure: str | Sequence[str] = "learned",
    grid: int = 20,
    cost: str = "macs",
) -> dict[str, Any]:
    """PSNR against Multi-Adds and time fractions: every fixed branch, and the budget policy at each budget
    for each ``measure`` (several: one curve each).

    The budget policy is calibrated on ``calibration`` (keep it apart from the eval sets) and evaluated on
    the run's eval sets (or ``folders``); time fractions are priced by the router's measured branch
    latencies. Writes ``tradeoff.json`` and ``tradeoff.png`` into the run directory and adds the trade-off
    table and plot to its ``report.md``.
    """
    models = open_models(run_dir)
    if models.config is None:
        raise KdsrError(f"'{run_dir}' is a weights file; the trade-off compares the branches of a run directory")
    measures = [measure] if isinstance(measure, str) else list(measure)
    points: list[dict[str, Any]] = []
    for name in models.candidates:
        router = make_router(models, "fixed", {"branch": name}, tile, overlap)
        (scores,) = evaluate_models(models, folders or [], router=router).values()
        points.append({"kind": "fixed", "branch": name, "label": f"fixed {name}", "scores": scores})
    for m in measures:
        for b in budgets:
            options = {"budget": b, "calibration": str(calibration), "measure": m, "grid": grid, "cost": cost}
            router = make_router(models, "budget", options, tile, overlap)
            (scores,) = evaluate_models(models, folders or [], router=router).values()
            label = f"budget {b:g}" + (f" {m}" if len(measures) > 1 else "")
            points.append({"kind": "budget", "budget": b, "measure": m, "label": label, "scores": scores, "expected": router.policy.expected})
    result = {"run": str(run_dir), "calibration": str(calibration), "tile": tile, "overlap": overlap, "cost": cost, "points": points}
    (run_dir / "tradeoff.json").write_text(json.dumps(result, indent=1))
    from kdsr.report import add_tradeoff_to_report, plot_tradeoff

    plot_tradeoff(result, run_dir / "tradeoff.png")
    add_tradeoff_to_report(run_dir, result)
    return result
